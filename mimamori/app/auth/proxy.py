"""Who the client is, and whether it came over HTTPS, behind the documented TLS reverse proxy.

Issue 17: the app took the TCP peer as the client. Behind the proxy (another container) every user
then shared the proxy's address (one sign-in throttle bucket for everyone), the session cookie never
got ``Secure`` (the proxy speaks plain HTTP to the app) and no HSTS was sent; and uvicorn's own
``proxy_headers`` believed the *leftmost* X-Forwarded-For from a loopback peer, which a client writes
itself (rotating it bypassed the throttle).

Now only peers listed in ``MIMAMORI_TRUSTED_PROXIES`` (comma-separated addresses or CIDRs; empty = no
proxy) are believed: the client is the rightmost X-Forwarded-For address that is not a trusted proxy
(what the proxy itself appended), the scheme is the proxy's X-Forwarded-Proto. The app's own server
runs with ``proxy_headers`` off so the peer is the real TCP peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.requests import Request

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted(text: str | None) -> tuple[Net, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in (text or "").split(",") if part.strip())


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, nets: Iterable[Net]) -> bool:
    return ip is not None and any(ip in net for net in nets)


def _nets(request: Request) -> tuple[Net, ...]:
    return getattr(request.app.state, "trusted_proxies", ())


def _peer(request: Request) -> str:
    client = request.scope.get("client")
    return str(client[0]) if client else "unknown"


def client_address(request: Request) -> str:
    """The client's address: the TCP peer, unless that is a trusted proxy (then see the module doc)."""
    peer = _peer(request)
    nets = _nets(request)
    if not nets or not _trusted(_ip(peer), nets):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            return peer  # garbage the proxy passed on: do not guess
        if not _trusted(ip, nets):
            return str(ip)
    return str(_ip(hops[0])) if hops else peer


def is_https(request: Request) -> bool:
    """Whether the browser's connection is HTTPS (directly, or to a trusted proxy that says so)."""
    if request.url.scheme == "https":
        return True
    if _trusted(_ip(_peer(request)), _nets(request)):
        proto = request.headers.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
        return proto == "https"
    return False


def address_in(address: str, nets: Iterable[Net]) -> bool:
    """Is this client address (as ``client_address`` gives it) in one of the networks?"""
    return _trusted(_ip(address), nets)
