"""Prometheus metrics of the gateway stage (default registry; served by ``mimamori.kernel.observability``).

Read at scrape time from the live ``Gateway`` objects (a collector), never counted in the publish
path: a simulator drives hundreds of gateways in one process, and the uplink thread stays free of
metric locks. One series per gateway (label ``gateway``); a stopped gateway's series disappear, and
a new ``Gateway`` on the same outbox starts its counters again (Prometheus treats it as a restart),
except the eviction counters, which the outbox persists.

| metric | type | meaning |
| --- | --- | --- |
| ``mimamori_gateway_outbox_depth`` | gauge | events stored but not yet acknowledged by the broker |
| ``mimamori_gateway_replay_window_rows`` | gauge | acknowledged events kept to serve ``resend`` |
| ``mimamori_gateway_inflight_messages`` | gauge | QoS 1 publishes awaiting PUBACK |
| ``mimamori_gateway_connected`` | gauge | 1 while connected to the service's broker |
| ``mimamori_gateway_events_published_total`` | counter | event publishes, including republishes after a reconnect |
| ``mimamori_gateway_events_acked_total`` | counter | PUBACKs committed to the outbox |
| ``mimamori_gateway_events_resent_total`` | counter | events resent on the service's request |
| ``mimamori_gateway_events_resent_after_reconnect_total`` | counter | events re-published because a broker PUBACKed |
| | | them within the settling window after a reconnect (it may have had no subscriber) |
| ``mimamori_gateway_reconnects_total`` | counter | successful connections after the first |
| ``mimamori_gateway_evictions_total{what}`` | counter | outbox rows dropped because it was full (``window``, ``heartbeats``, ``pending``) |
| ``mimamori_gateway_local_rejected_total`` | counter | local-link messages the adapters refused |
| ``mimamori_gateway_commands_rejected_total`` | counter | malformed commands from the service |
| ``mimamori_gateway_commands_refused_total`` | counter | commands not sent to a device (never-switch, a plug, unsupported) |
| ``mimamori_gateway_blinks_confirmed_total`` | counter | blinks the device's own state reports echoed |
| ``mimamori_gateway_blinks_unconfirmed_total`` | counter | blinks sent that no state report echoed |
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

EVICTIONS = ("window", "heartbeats", "pending")


class Gateway(Protocol):
    """What the collector reads of a running ``gateway.service.Gateway`` (described here, not imported:
    the service imports this module, and metrics must not import the service back).
    """

    @property
    def gateway_id(self) -> str: ...
    @property
    def connected(self) -> bool: ...
    @property
    def stats(self) -> dict[str, Any]: ...


_live: weakref.WeakSet[Gateway] = weakref.WeakSet()
_live_lock = threading.Lock()


def track(gateway: Gateway) -> None:
    with _live_lock:
        _live.add(gateway)


def untrack(gateway: Gateway) -> None:
    with _live_lock:
        _live.discard(gateway)


def live_gateways() -> list[Gateway]:
    with _live_lock:
        return list(_live)


def all_connected() -> bool:
    """Readiness of a gateway process: every running gateway is connected to the broker."""
    gateways = live_gateways()
    return bool(gateways) and all(g.connected for g in gateways)


#: (key in ``Gateway.stats``, metric name, help) per gauge and per counter, one series per gateway.
_GAUGES = (
    ("outbox_depth", "mimamori_gateway_outbox_depth", "Events stored but not yet acknowledged by the broker."),
    ("replay_window", "mimamori_gateway_replay_window_rows", "Acknowledged events kept to serve resend requests."),
    ("inflight", "mimamori_gateway_inflight_messages", "QoS 1 publishes awaiting PUBACK."),
    ("connected", "mimamori_gateway_connected", "1 while connected to the service's broker."),
)
_COUNTERS = (
    ("published", "mimamori_gateway_events_published", "Event publishes, including republishes after a reconnect."),
    ("acked", "mimamori_gateway_events_acked", "PUBACKs committed to the outbox."),
    ("resent", "mimamori_gateway_events_resent", "Events resent on the service's request."),
    ("resent_after_reconnect", "mimamori_gateway_events_resent_after_reconnect",
     "Events re-published because they were PUBACKed within the settling window after a reconnect."),
    ("reconnects", "mimamori_gateway_reconnects", "Successful connections after the first."),
    ("rejected_local", "mimamori_gateway_local_rejected", "Local-link messages the adapters refused."),
    ("rejected_commands", "mimamori_gateway_commands_rejected", "Malformed commands from the service."),
    ("commands_refused", "mimamori_gateway_commands_refused", "Commands not sent to a device (never-switch, a plug, unsupported)."),
    ("blinks_confirmed", "mimamori_gateway_blinks_confirmed", "Blinks the device's own state reports echoed."),
    ("blinks_unconfirmed", "mimamori_gateway_blinks_unconfirmed", "Blinks sent that no state report echoed."),
)


class GatewayCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        gauges = {key: GaugeMetricFamily(name, text, labels=["gateway"]) for key, name, text in _GAUGES}
        counters = {key: CounterMetricFamily(name, text, labels=["gateway"]) for key, name, text in _COUNTERS}
        evictions = CounterMetricFamily("mimamori_gateway_evictions", "Outbox rows dropped because the outbox was full.",
                                        labels=["gateway", "what"])
        for gw in live_gateways():
            try:
                stats: dict[str, Any] = gw.stats
            except Exception:  # noqa: BLE001, S112 - a gateway closing under our feet: skip it this scrape
                continue
            label = [gw.gateway_id]
            for key, family in gauges.items():
                family.add_metric(label, float(stats.get(key, 0)))
            for key, cfamily in counters.items():
                cfamily.add_metric(label, float(stats.get(key, 0)))
            for what in EVICTIONS:
                evictions.add_metric([gw.gateway_id, what], float(stats.get(f"evicted_{what}", 0)))
        yield from gauges.values()
        yield from counters.values()
        yield evictions


COLLECTOR = GatewayCollector()
REGISTRY.register(COLLECTOR)
