"""What the gateway makes of a captured home (``mimamori gateway replay``) or a live one
(``mimamori gateway listen``): the adapters' ``Summary`` of each message, one JSON object a line.

Input (replay): one JSON object a line, ``{"topic": ..., "payload": ..., "retain": false}``, payload as
text (a JSON value is taken as its text). An optional ``"time"`` (epoch seconds or ms) says when it
arrived; without it the device's own timestamps and boot windows prove nothing (lines are taken as a
minute apart, and ``last_seen``/boot checks are off).

Without ``fresh`` the memory starts as a running gateway's that has seen these devices before: a
state report of a device whose last state is unknown counts as a change. With ``fresh``, as a gateway
started for the first time: the first-report rule of ``gateway.dialects.base`` decides.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from .adapters import DEFAULT_LAYOUT, Layout, normalise
from .dialects.base import Summary

FIELDS: Final = ("topic", "outcome", "kind", "device_name", "channel", "device_id", "reason")
_START_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z, the clock of an untimed replay
_STEP_MS: Final = 60_000


def row(topic: str | None, summary: Summary | None) -> dict[str, Any]:
    s = summary or Summary("ignored", reason="no_summary")
    return {"topic": topic, "outcome": s.outcome, "kind": s.kind, "device_name": s.device_name,
            "channel": s.channel, "device_id": s.device_id, "reason": s.reason}


def _payload(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if value is None:
        return b""
    return json.dumps(value, separators=(",", ":")).encode()


def _time_ms(value: object) -> int | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return int(value if value > 1e11 else value * 1000)
    return None


def replay(lines: Iterable[str], *, fresh: bool = False, layout: Layout = DEFAULT_LAYOUT) -> Iterator[dict[str, Any]]:
    memory: dict[str, str] = {}
    clock = _START_MS
    for line in lines:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
            topic = msg["topic"]
            if not isinstance(topic, str):
                raise TypeError("topic")  # noqa: TRY301
        except (ValueError, KeyError, TypeError) as exc:
            yield row(None, Summary("rejected", reason=f"bad_line: {type(exc).__name__}"))
            continue
        at = _time_ms(msg.get("time"))
        clock = at if at is not None else clock + _STEP_MS
        out = normalise(topic, _payload(msg.get("payload")), now_ms=clock, memory=memory, retained=bool(msg.get("retain")),
                        layout=layout, assume_known=not fresh, clock_trusted=at is not None)
        memory.update(out.memory_updates)
        yield row(topic, out.summary)


def totals(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(r["outcome"] for r in rows))


def listen(local_url: str, minutes: float, emit: Callable[[dict[str, Any]], None], *, layout: Layout = DEFAULT_LAYOUT,
           stop: threading.Event | None = None) -> dict[str, int]:
    """Subscribe to the home's broker as the gateway would and ``emit`` each message's row for
    ``minutes``, with a fresh memory (as a gateway just installed) and the real clock."""
    import paho.mqtt.client as paho

    from mimamori.kernel import mqtt

    url = mqtt.MqttUrl.parse(local_url)
    memory: dict[str, str] = {}
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    stop = stop or threading.Event()
    client = mqtt.make_client(url, f"mimamori-listen-{int(time.time())}", protocol=mqtt.MQTTv311, clean_start=True)

    def on_connect(c: paho.Client, userdata: object, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            c.subscribe([(t, 0) for t in layout.subscriptions()])

    def on_message(c: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with lock:
            out = normalise(message.topic, message.payload, now_ms=int(time.time() * 1000), memory=memory,
                            retained=bool(message.retain), layout=layout)
            memory.update(out.memory_updates)
            r = row(message.topic, out.summary)
            counts[r["outcome"]] += 1
            emit(r)

    client.on_connect = on_connect
    client.on_message = on_message
    mqtt.connect(client, url, asynchronous=True)
    client.loop_start()
    try:
        stop.wait(max(0.0, minutes) * 60.0)
    finally:
        client.disconnect()
        client.loop_stop()
    return dict(counts)
