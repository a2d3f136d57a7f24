"""PWA: the manifest, the service worker (offline shell + Web Push display), and recording a
browser's push subscription as a ``person_channels`` row of kind ``webpush`` (the alerts stage sends).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from mimamori.alerts import service as alerts_service
from mimamori.app.auth.deps import CurrentPerson
from mimamori.app.db import Conn
from mimamori.app.i18n import request_locale, translate

log = logging.getLogger(__name__)
router = APIRouter(tags=["push"])
STATIC = Path(__file__).parent / "static"


@router.get("/manifest.webmanifest", include_in_schema=False)
def manifest(request: Request) -> Response:
    locale = request_locale(request)
    body = {
        "name": translate(locale, "app_name"), "short_name": translate(locale, "app_name"),
        "lang": locale, "start_url": "/", "scope": "/", "display": "standalone",
        "background_color": "#ffffff", "theme_color": "#1d4f91",
        "icons": [{"src": "/static/icon.svg", "sizes": "any", "type": "image/svg+xml", "purpose": "any maskable"}],
    }
    return Response(json.dumps(body, ensure_ascii=False), media_type="application/manifest+json")


@router.get("/sw.js", include_in_schema=False)
def service_worker() -> Response:
    # Served from the root so its scope covers the whole app.
    return Response((STATIC / "sw.js").read_text(encoding="utf-8"), media_type="text/javascript",
                    headers={"cache-control": "no-cache"})


def vapid_public_key(settings: object) -> str | None:
    """The applicationServerKey browsers subscribe with (base64url, uncompressed P-256 point):
    ``MIMAMORI_WEBPUSH_VAPID_PUBLIC_KEY``, else derived from the alert engine's
    ``MIMAMORI_ALERTS_VAPID_PRIVATE_KEY`` (PEM text, PEM file or base64url), else None (push off).
    """
    explicit = getattr(settings, "webpush_vapid_public_key", None) or os.environ.get("MIMAMORI_WEBPUSH_VAPID_PUBLIC_KEY")
    if explicit:
        return explicit.strip()
    private = os.environ.get("MIMAMORI_ALERTS_VAPID_PRIVATE_KEY")
    if not private:
        return None
    try:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        from py_vapid import Vapid02, b64urlencode

        if private.lstrip().startswith("-----BEGIN"):
            vapid = Vapid02.from_pem(private.strip().encode())
        elif Path(private).is_file():
            vapid = Vapid02.from_file(private)
        else:
            vapid = Vapid02.from_string(private)
        return b64urlencode(vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))
    except Exception:  # a bad key turns push off in the browser; the alerts stage reports it when sending
        log.warning("could not derive the VAPID public key; Web Push subscriptions are off", exc_info=True)
        return None


class PushKeys(BaseModel):
    p256dh: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_=-]+$")
    auth: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_=-]+$")


class PushSubscriptionIn(BaseModel):
    endpoint: str = Field(min_length=10, max_length=1000, pattern=r"^https://[^\s\x00]+$")
    keys: PushKeys


@router.post("/api/push/subscriptions", status_code=204, responses={401: {}, 403: {}})
def subscribe(body: PushSubscriptionIn, person: CurrentPerson, conn: Conn) -> Response:
    target = json.dumps({"endpoint": body.endpoint, "keys": body.keys.model_dump()}, separators=(",", ":"))
    alerts_service.add_channel(conn, person, person.person_id, "webpush", target, label="browser")
    return Response(status_code=204)
