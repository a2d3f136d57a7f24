"""Ingest throughput: published → committed, against the same client stack with a null sink.

``run_ingest_bench(database_url, mqtt_url, events=200_000, publishers=2)``:

1. registers two persistent MQTT sessions (the ingest under test and a null-sink twin), each in a
   share group of its own, so every published event is queued once for each of them;
2. preloads the backlog from ``publishers`` separate processes (a pipelining QoS 1 publisher on
   a raw socket: one Python paho publisher only manages ~5k/s) and waits for every PUBACK;
3. drains the backlog with the null sink (same paho client, parsing, validation, batching and
   acks; the batch is dropped instead of written), then with the database sink; each is timed
   from its first received message to its last commit;
4. checks the database: every event stored exactly once.

The broker must have the queue limits lifted (deploy/mosquitto/mosquitto.conf).
"""

from __future__ import annotations

import multiprocessing
import resource
import select
import socket
import statistics
import struct
import threading
import time
import uuid
from typing import Any

import psycopg

from mimamori.ingest.consumer import IngestService
from mimamori.kernel import mqtt, protocol
from mimamori.kernel.config import Settings
from mimamori.kernel.mqtt import MqttUrl

BASE_TS_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(cid)) + cid  # 3.1.1, clean session
    return b"\x10" + _remaining_length(len(body)) + body


def _publish_packet(topic: bytes, payload: bytes, mid: int) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + payload
    return b"\x32" + _remaining_length(len(body)) + body  # PUBLISH, QoS 1


def publish_events(url: MqttUrl, prefix: str, first: int, count: int, devices: int, window: int = 4000) -> float:
    """Publish events ``first .. first+count-1`` (QoS 1, pipelined); return seconds taken.

    Event ``i`` belongs to device ``i % devices`` with seq ``i // devices``; the device time
    grows with ``i`` so that re-runs produce the same rows.
    """
    sock = socket.create_connection((url.host, url.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_connect_packet(f"{prefix}-pub-{first}"))
    if sock.recv(4)[:1] != b"\x20":
        raise RuntimeError("publisher: no CONNACK")
    kinds = ("on", "off", "motion", "open", "close")
    started = time.perf_counter()
    sent = acked = 0
    pending = b""
    chunk: list[bytes] = []
    while acked < count:
        while sent < count and sent - acked < window and len(chunk) < 500:
            i = first + sent
            device = f"{prefix}-d{i % devices}"
            event = protocol.Event(device, i // devices, BASE_TS_MS + i * 10, kinds[i % 5])
            topic = protocol.event_topic(f"{prefix}-gw{(i % devices) // 50}", device).encode()
            chunk.append(_publish_packet(topic, protocol.encode_event(event), (sent % 65535) + 1))
            sent += 1
        if chunk:
            sock.sendall(b"".join(chunk))
            chunk.clear()
        ready, _, _ = select.select([sock], [], [], 0 if sent < count and sent - acked < window else 5)
        if ready:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("publisher: broker closed the connection")
            pending += data
            whole = len(pending) // 4  # PUBACK: 0x40 0x02 mid mid
            acked += whole
            pending = pending[whole * 4 :]
    sock.sendall(b"\xe0\x00")
    sock.close()
    return time.perf_counter() - started


def publish_raw(url: MqttUrl, messages: list[tuple[bytes, bytes]], *, window: int = 2000, client_id: str | None = None) -> None:
    """Publish ``(topic, payload)`` pairs at QoS 1 as they are (no validation), pipelined, and wait
    for every PUBACK. For tests and benchmarks that need volume or malformed payloads."""
    sock = socket.create_connection((url.host, url.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_connect_packet(client_id or f"raw-pub-{uuid.uuid4().hex[:10]}"))
    if sock.recv(4)[:1] != b"\x20":
        raise RuntimeError("publisher: no CONNACK")
    sent = acked = 0
    pending = b""
    total = len(messages)
    while acked < total:
        chunk = []
        while sent < total and sent - acked < window and len(chunk) < 500:
            topic, payload = messages[sent]
            chunk.append(_publish_packet(topic, payload, (sent % 65535) + 1))
            sent += 1
        if chunk:
            sock.sendall(b"".join(chunk))
        ready, _, _ = select.select([sock], [], [], 0 if sent < total and sent - acked < window else 10)
        if not ready and not (sent < total and sent - acked < window):
            raise TimeoutError(f"publisher: {total - acked} PUBACKs missing")
        if ready:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("publisher: broker closed the connection")
            pending += data
            whole = len(pending) // 4
            acked += whole
            pending = pending[whole * 4 :]
    sock.sendall(b"\xe0\x00")
    sock.close()


def _publisher_process(args: tuple[MqttUrl, str, int, int, int]) -> float:
    return publish_events(*args)


def _register_session(url: MqttUrl, client_id: str, group: str, expiry_s: int = 3600) -> None:
    """Create a persistent session subscribed to the event filter in ``group``, then leave."""
    client = mqtt.make_client(url, client_id, clean_start=False)
    done = threading.Event()
    client.on_subscribe = lambda *a: done.set()
    client.on_connect = lambda c, *a: c.subscribe(protocol.shared(protocol.EVENT_FILTER, group), qos=1)
    mqtt.connect(client, url, clean_start=False, session_expiry_s=expiry_s)
    deadline = time.monotonic() + 10
    while not done.is_set() and time.monotonic() < deadline:
        client.loop(0.05)
    client.disconnect()
    client.loop(0.1)
    if not done.is_set():
        raise RuntimeError("could not subscribe")


def _drop_session(url: MqttUrl, client_id: str) -> None:
    client = mqtt.make_client(url, client_id)
    mqtt.connect(client, url, clean_start=True, session_expiry_s=0)
    client.loop(0.2)
    client.disconnect()
    client.loop(0.1)


class DrainStalled(RuntimeError):
    """The backlog stopped arriving before all of it came: the message says why and what to change."""


def _drain(service: IngestService, expected: int, timeout: float, stall_s: float = 10.0) -> dict[str, Any]:
    sizes: list[int] = []
    service.on_batch = lambda info: sizes.append(info["size"])
    thread = threading.Thread(target=service.run, name=f"bench-{service.sink}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    stats = service.stats
    last_received, last_progress = -1, time.monotonic()
    stalled = False
    while time.monotonic() < deadline:
        committed = stats.stored + stats.duplicates if service.sink == "database" else sum(sizes)
        if committed >= expected:
            break
        if stats.received != last_received:
            last_received, last_progress = stats.received, time.monotonic()
        elif time.monotonic() - last_progress >= stall_s and committed >= stats.received:
            stalled = True  # everything received is committed, and nothing more has come for stall_s
            break
        time.sleep(0.01)
    service.stop_event.set()
    thread.join(60)
    if stalled:
        raise DrainStalled(
            f"the {service.sink} sink received {stats.received:,} of {expected:,} messages, then nothing for "
            f"{stall_s:.0f} s: the broker dropped the rest of the backlog. A stock Mosquitto keeps at most "
            "1000 queued messages per client (max_queued_messages); set `max_queued_messages 10000000` and "
            "`max_queued_bytes 0` in mosquitto.conf (deploy/mosquitto/mosquitto.conf does), or leave "
            "--mqtt-url unset so that the benchmark starts a broker of its own with those limits lifted")
    elapsed = max(stats.last_commit_at - stats.first_message_at, 1e-9)
    return {
        "received": stats.received,
        "committed": stats.stored + stats.duplicates if service.sink == "database" else sum(sizes),
        "seconds": round(elapsed, 3),
        "events_per_s": round(expected / elapsed, 1),
        "batches": len(sizes),
        "batch_size_mean": round(statistics.fmean(sizes), 1) if sizes else 0,
        "batch_size_max": max(sizes, default=0),
        "db_errors": stats.db_errors,
        "timed_out": time.monotonic() >= deadline,
    }


def run_ingest_bench(
    database_url: str,
    mqtt_url: MqttUrl,
    *,
    events: int = 200_000,
    publishers: int = 2,
    devices: int = 1000,
    settings: Settings | None = None,
    timeout_s: float = 300.0,
    stall_s: float = 10.0,
) -> dict[str, Any]:
    """Measure ingest drain throughput; return a JSON-able dict (see module docstring)."""
    settings = settings or Settings()
    run = uuid.uuid4().hex[:8]
    prefix = f"bench{run}"
    sessions = {"null": (f"{prefix}-null", f"bench-null-{run}"), "database": (f"{prefix}-db", f"bench-db-{run}")}
    for client_id, group in sessions.values():
        _register_session(mqtt_url, client_id, group)

    # Preload from separate processes.
    per = [events // publishers + (1 if i < events % publishers else 0) for i in range(publishers)]
    starts = [sum(per[:i]) for i in range(publishers)]
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("fork")  # no threads run yet; spawn would re-import __main__
    with ctx.Pool(publishers) as pool:
        pool.map(_publisher_process, [(mqtt_url, prefix, s, n, devices) for s, n in zip(starts, per, strict=False)])
    preload_s = time.perf_counter() - t0

    results: dict[str, Any] = {}
    for sink in ("null", "database"):
        client_id, group = sessions[sink]
        service = IngestService(
            settings,
            database_url=database_url,
            mqtt_url=mqtt_url,
            client_id=client_id,
            sink=sink,  # type: ignore[arg-type]
            share_group=group,
            sweeper=None,
        )
        service.sweeper = None
        try:
            results[sink] = _drain(service, events, timeout_s, stall_s)
        finally:
            _drop_session(mqtt_url, client_id)

    with psycopg.connect(database_url) as conn:
        stored, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (device_id, seq)) FROM events WHERE device_id LIKE %s", (f"{prefix}-%",)
        ).fetchone()  # type: ignore[misc]

    db_rate = results["database"]["events_per_s"]
    null_rate = results["null"]["events_per_s"]
    return {
        "events": events,
        "publishers": publishers,
        "devices": devices,
        "preload_s": round(preload_s, 2),
        "preload_events_per_s": round(events / preload_s, 1),
        "events_per_s": db_rate,
        "null_sink_events_per_s": null_rate,
        "ratio": round(db_rate / null_rate, 3) if null_rate else None,
        "stored_rows": stored,
        "stored_exactly_once": stored == distinct == events,
        "batch_size_setting": settings.ingest_batch_size,
        "receive_maximum": settings.ingest_receive_maximum,
        "database": results["database"],
        "null_sink": results["null"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


if __name__ == "__main__":  # pragma: no cover - python -m mimamori.bench.ingest_bench DB_URL MQTT_URL [events]
    import json
    import sys

    print(json.dumps(run_ingest_bench(sys.argv[1], MqttUrl.parse(sys.argv[2]), events=int(sys.argv[3]) if len(sys.argv) > 3 else 200_000), indent=2))
