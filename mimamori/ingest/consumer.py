"""The ingest process: MQTT → validate → batch → one transaction → ack.

Threads:

- the network thread owns the paho client: it reads, classifies each message (pure), fills the
  current batch, hands full (or old enough) batches to the writers, writes the PUBACKs of
  committed batches in one burst, publishes resend commands, and reconnects;
- ``db_writers`` (default 2) database threads, one connection each, write one batch per
  transaction (retrying with backoff while the database is away, never acking meanwhile); the
  first also runs the gap sweeper on its clock.

Memory stays bounded: the broker never has more than ``ingest_receive_maximum`` unacknowledged
messages out to us (MQTT v5 flow control), and on MQTT 3.1.1 the network thread stops reading
while that many messages await their commit.

Why ~530 lines: the network thread and the writers share one piece of bookkeeping (which messages
are held, committed, acknowledged), kept in this one class; what stands alone is apart: the session
and counters (``session.py``), the database writes (``store.py``), the metrics (``metrics.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

import psycopg
from paho.mqtt.enums import MQTTErrorCode

from mimamori.kernel import mqtt, protocol
from mimamori.kernel.clock import Clock, SystemClock
from mimamori.kernel.config import Settings
from mimamori.kernel.mqtt import MqttUrl
from mimamori.kernel.observability import register_readiness, unregister_readiness

from . import metrics, store
from .batch import Batch
from .client import IngestClient
from .session import IngestStats, default_client_id, identity_of
from .sweeper import GapSweeper
from .validate import TOPIC_CACHE_SIZE, Classifier, DeadLetter, DeadLetterBudget, fast_event

log = logging.getLogger(__name__)

Sink = Literal["database", "null"]


class IngestService:
    def __init__(
        self,
        settings: Settings,
        *,
        database_url: str | None,
        mqtt_url: MqttUrl,
        clock: Clock | None = None,
        client_id: str | None = None,
        index: int = 0,
        on_batch: Callable[[dict], None] | None = None,
        sink: Sink = "database",
        sweeper: GapSweeper | None = None,
        drain_timeout_s: float = 30.0,
        share_group: str = protocol.INGEST_SHARE_GROUP,
        db_writers: int = 2,
    ) -> None:
        if sink == "database" and not database_url:
            raise ValueError("database_url is required")
        self.settings = settings
        self.database_url = database_url
        self.mqtt_url = mqtt_url
        self.clock = clock or SystemClock()
        self.client_id = client_id or default_client_id(settings, index, identity_of(database_url) if sink == "database" else None)
        self.on_batch = on_batch
        self.sink = sink
        self.sweeper = sweeper if sweeper is not None else (GapSweeper(self.clock) if sink == "database" else None)
        self.drain_timeout_s = drain_timeout_s
        self.share_group = share_group
        #: Batches written concurrently, each on its own connection: a commit mostly waits (WAL
        #: flush, scheduling), and another batch can be written meanwhile.
        self.db_writers = max(1, db_writers)
        self.stats = IngestStats()
        self._known = store.KnownRows()
        self.classifier = Classifier()
        self.dead_letter_budget = DeadLetterBudget()  # per source; over it, dead letters are only counted
        self._event_topics: dict[bytes, tuple[str, str]] = {}  # event topic -> (gateway, device)

        self.batch_size = settings.ingest_batch_size
        self.max_wait_s = settings.ingest_batch_max_wait_s
        self.receive_maximum = settings.ingest_receive_maximum
        # Messages received but not yet acknowledged, beyond which we stop reading (3.1.1 brokers
        # have no receive maximum; on v5 the broker stops first).
        self.max_unacked = max(self.receive_maximum, 2 * self.batch_size)

        self.stop_event = threading.Event()
        #: Set once the broker has confirmed our subscriptions (on every (re)connect).
        self.subscribed = threading.Event()
        self._abort_db = threading.Event()  # give up retrying the database (shutdown timed out)
        self._to_db: queue.Queue[Batch | None] = queue.Queue()
        self._done: deque[tuple[int, list[int]]] = deque()  # (generation, packet ids) to ack
        self._outbox: deque[tuple[str, bytes]] = deque()  # commands to publish
        self._unacked = 0  # messages handed to the DB thread, not yet acked (network thread only)
        self._pending_lock = threading.Lock()
        self._generation = 0
        self._connected = False
        self._draining = False
        self._batch = Batch()
        self._batch_opened = 0.0
        self.protocol = mqtt.MQTTv5
        self.client: IngestClient | None = None
        #: Device time (epoch ms) of the newest event stored by this process (the lag metric).
        self._newest_stored_ms = 0
        #: time.monotonic() of the last successful / failed database write (readiness).
        self._db_ok_at = 0.0
        self._db_error_at = 0.0
        self._db_probe_lock = threading.Lock()
        self._db_probe_at = -1e9
        self._db_probe_ok = False

    # --- MQTT ---------------------------------------------------------------------------------

    def _make_client(self) -> IngestClient:
        self.protocol = mqtt.negotiate_protocol(self.mqtt_url, self.settings.mqtt_protocol)
        client = mqtt.make_client(
            self.mqtt_url,
            self.client_id,
            protocol=self.protocol,
            manual_ack=True,
            clean_start=False,
            client_class=IngestClient,
        )
        if not isinstance(client, IngestClient):
            raise TypeError("mqtt.make_client ignored client_class")  # a bug, not bad input
        client.on_raw_publish = self._on_raw_publish
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = lambda *_args: self.subscribed.set()
        mqtt.connect(
            client,
            self.mqtt_url,
            clean_start=False,
            session_expiry_s=self.settings.ingest_session_expiry_s,
            receive_maximum=self.receive_maximum,
            asynchronous=True,
        )
        return client

    def _filters(self) -> list[str]:
        filters = [protocol.EVENT_FILTER, protocol.STATUS_FILTER, protocol.HEARTBEAT_FILTER]
        if self.protocol == mqtt.MQTTv5:
            return [protocol.shared(f, self.share_group) for f in filters]
        return filters  # 3.1.1 (amqtt): no shared subscriptions, one ingest process

    def _on_connect(self, client, _userdata, flags, reason_code, _properties) -> None:  # noqa: ANN001 - paho's callback
        if reason_code.is_failure:
            log.warning("MQTT connect refused: %s", reason_code)
            return
        self._hand_off()  # what we hold belongs to the old connection (its acks are void now)
        self._generation += 1
        self._connected = True
        self.stats.connects += 1
        client.subscribe([(f, 1) for f in self._filters()])
        log.info("ingest connected to %s as %s (session present: %s)", self.mqtt_url, self.client_id, flags.session_present)

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:  # noqa: ANN001 - paho's callback
        self._connected = False
        self.subscribed.clear()
        if not self.stop_event.is_set():
            log.warning("ingest disconnected from broker: %s", reason_code)

    def _on_raw_publish(self, topic: bytes, payload: bytes, mid: int, qos: int, _retain: bool) -> None:
        if self._draining:
            return  # stopping: not taken, not acked; the session delivers it again next time
        stats = self.stats
        if not stats.received:
            stats.first_message_at = time.monotonic()
        stats.received += 1
        batch = self._batch
        if not batch.received:
            self._batch_opened = time.monotonic()
            batch.generation = self._generation
        if not qos:
            mid = 0
        event_topic = self._event_topics.get(topic)
        if event_topic is None:
            parsed = self.classifier.topic(topic)
            if type(parsed) is protocol.Topic and parsed.channel == "event":
                event_topic = self._event_topics[topic] = (parsed.gateway_id, parsed.device_id)  # type: ignore[assignment]
                if len(self._event_topics) > TOPIC_CACHE_SIZE:
                    self._event_topics.clear()
        event = fast_event(payload, event_topic[1]) if event_topic is not None else None
        if event is not None:
            batch.add_event(event_topic[0], event, mid)  # type: ignore[index]
        else:
            item = self.classifier.classify(topic, payload)
            if type(item) is DeadLetter:
                kept = self.dead_letter_budget.admit(item, self.clock.now())
                if not kept:
                    metrics.DEAD_LETTERS_NOT_KEPT.labels(item.reason).inc()
                    batch.add_ack_only(mid)
                else:
                    batch.dead_letters.extend(kept[:-1])  # the summary of those not kept before it
                    batch.add(kept[-1], mid)
            else:
                batch.add(item, mid)
        if batch.received >= self.batch_size:
            self._hand_off()

    def _hand_off(self) -> None:
        batch = self._batch
        if not batch.received:
            return
        self._batch = Batch(self._generation)
        with self._pending_lock:
            self._unacked += batch.received
        metrics.MESSAGES_RECEIVED.inc(batch.received)
        self._to_db.put(batch)

    def _after_io(self, client: IngestClient) -> None:
        self._send_acks(client)
        outbox = self._outbox
        while outbox and self._connected:
            topic, payload = outbox.popleft()
            client.publish(topic, payload, qos=1)
            self.stats.resend_requests += 1
            metrics.RESEND_REQUESTS.inc()
        if self._batch.received and time.monotonic() - self._batch_opened >= self.max_wait_s:
            self._hand_off()

    def _network_loop(self) -> None:
        client = self.client
        if client is None:
            raise RuntimeError("the MQTT client is not made yet")
        backoff = 0.1
        need_connect = True
        while not self.stop_event.is_set():
            if need_connect:
                try:
                    client.reconnect()
                    need_connect = False
                    backoff = 0.1
                except OSError as exc:
                    log.warning("broker unreachable (%s); retrying in %.1fs", exc, backoff)
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
            if self._unacked >= self.max_unacked:
                # Back-pressure: keep the connection alive (pings, acks) but read nothing new.
                rc = client.loop_write()
                if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    rc = client.loop_misc()
                self.stop_event.wait(0.005)
            else:
                timeout = 0.005 if (self._unacked or self._batch.received) else 0.1
                rc = client.loop(timeout)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._connected = False
                need_connect = True
                self.stop_event.wait(min(backoff, 1.0))
                continue
            self._after_io(client)

    def _drain_and_disconnect(self) -> None:
        """Graceful stop: commit what we hold, ack it, then leave (the session keeps the rest)."""
        client = self.client
        if client is None:
            return  # never connected: nothing held
        self._hand_off()
        # Keep reading (unread bytes at close() would make the kernel reset the connection, and the
        # broker could drop our last PUBACKs) but take nothing new.
        self._draining = True
        deadline = time.monotonic() + self.drain_timeout_s
        while self._unacked and time.monotonic() < deadline and self._connected:
            rc = client.loop(0.01)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            self._send_acks(client)
        if self._unacked:
            log.warning("ingest stopping with %d messages not committed; the broker will redeliver them", self._unacked)
        if self._connected:
            # Give the last PUBACKs a moment: measured with Mosquitto 2.0, PUBACKs written just
            # before DISCONNECT were sometimes not applied (the messages came back next session).
            linger_until = time.monotonic() + 0.2
            while time.monotonic() < linger_until:
                if client.loop(0.02) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                self._send_acks(client)
            client.disconnect()
            for _ in range(50):  # let DISCONNECT reach the socket
                if client.loop(0.01) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break

    def _send_acks(self, client: IngestClient) -> None:
        """PUBACK the committed batches of this connection (older generations died with theirs)."""
        done = self._done
        while done:
            generation, mids = done.popleft()
            if generation == self._generation and self._connected:
                client.ack_many(mids)
                self.stats.acked += len(mids)

    # --- database ------------------------------------------------------------------------------

    def _connect_db(self) -> psycopg.Connection:
        conn = psycopg.connect(self.database_url, connect_timeout=5, application_name=f"mimamori-ingest {self.client_id}")  # type: ignore[arg-type]
        store.prepare(conn)
        return conn

    def _db_loop(self, sweeps: bool) -> None:
        conn: psycopg.Connection | None = None
        try:
            while True:
                try:
                    batch = self._to_db.get(timeout=0.5)
                except queue.Empty:
                    if sweeps:
                        conn = self._maybe_sweep(conn)
                    continue
                if batch is None:
                    break
                conn = self._commit_with_retry(conn, batch)
                if sweeps:
                    conn = self._maybe_sweep(conn)
        finally:
            if conn is not None and not conn.closed:
                conn.close()

    def _commit_with_retry(self, conn: psycopg.Connection | None, batch: Batch) -> psycopg.Connection | None:
        backoff = 0.1
        while True:
            if self._abort_db.is_set():
                return conn
            try:
                if self.sink == "null":
                    result = store.BatchResult(stored=0, duplicates=0, dead_letters=len(batch.dead_letters), heartbeats=0)
                else:
                    if conn is None or conn.closed:
                        conn = self._connect_db()
                    started = time.perf_counter()
                    try:
                        result = store.write_batch(conn, batch, self.clock.now(), self._known)
                        metrics.COMMIT_LATENCY.observe(time.perf_counter() - started)
                    except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError, psycopg.InternalError) as exc:
                        log.error("batch refused by the database (%s); isolating its messages", exc)  # noqa: TRY400 - expected, no traceback
                        self._known.clear()
                        result = store.write_batch_singly(conn, batch, self.clock.now())
                break
            except (psycopg.Error, OSError) as exc:
                self.stats.db_errors += 1
                self._db_error_at = time.monotonic()
                metrics.DATABASE_ERRORS.inc()
                log.warning("database unavailable (%s); retrying in %.1fs", str(exc).strip()[:200], backoff)
                if conn is not None:
                    with contextlib.suppress(Exception):  # closing a broken connection may fail too
                        conn.close()
                conn = None
                self._abort_db.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self._committed(batch, result)
        return conn

    def _committed(self, batch: Batch, result: store.BatchResult) -> None:
        with self._pending_lock:  # several writer threads
            self._count_commit(batch, result)
        if self.on_batch is not None:
            try:
                self.on_batch(
                    {
                        "size": batch.received,
                        "stored": result.stored,
                        "duplicates": result.duplicates,
                        "dead_letters": result.dead_letters,
                        "heartbeats": result.heartbeats,
                        "totals": self.stats.snapshot(),
                    }
                )
            except Exception:
                log.exception("on_batch callback failed")

    def _count_commit(self, batch: Batch, result: store.BatchResult) -> None:
        stats = self.stats
        stats.stored += result.stored
        stats.duplicates += result.duplicates
        stats.dead_letters += result.dead_letters
        stats.heartbeats += result.heartbeats
        stats.batches += 1
        stats.last_batch_size = batch.received
        if batch.newest_ts_ms:
            stats.lag_s = max(0.0, self.clock.now() - batch.newest_ts_ms / 1000.0)
        stats.last_commit_at = self._db_ok_at = time.monotonic()
        if batch.newest_ts_ms and (result.stored or result.heartbeats) and batch.newest_ts_ms > self._newest_stored_ms:
            self._newest_stored_ms = batch.newest_ts_ms
        self._done.append((batch.generation, batch.acks))
        self._unacked -= batch.received
        metrics.count_batch(batch, result)

    # --- observability ---------------------------------------------------------------------------

    @property
    def unacked_messages(self) -> int:
        """Messages handed to the database writer and not yet committed and acknowledged."""
        return self._unacked

    def lag_now(self) -> float | None:
        """Seconds from the device time of the newest event stored by this process to now (service
        clock); None before the first.
        """
        if not self._newest_stored_ms:
            return None
        return max(0.0, self.clock.now() - self._newest_stored_ms / 1000.0)

    def ready(self) -> bool:
        """Readiness: subscribed to the broker, and the database reachable (the writers' last outcome;
        a fresh probe, at most every few seconds, when they have been idle).
        """
        return self.subscribed.is_set() and self._database_reachable()

    def _database_reachable(self, fresh_s: float = 5.0) -> bool:
        if self.sink != "database":
            return True
        if self._db_error_at > self._db_ok_at:
            return False  # the writers are retrying a batch right now
        if time.monotonic() - self._db_ok_at < fresh_s:
            return True
        with self._db_probe_lock:  # idle writers: probe, and remember the answer a few seconds
            if time.monotonic() - self._db_probe_at >= fresh_s:
                try:
                    with psycopg.connect(self.database_url, connect_timeout=2) as conn:  # type: ignore[arg-type]
                        conn.execute("SELECT 1")
                    self._db_probe_ok = True
                except (psycopg.Error, OSError):
                    self._db_probe_ok = False
                self._db_probe_at = time.monotonic()
            return self._db_probe_ok

    def _maybe_sweep(self, conn: psycopg.Connection | None) -> psycopg.Connection | None:
        if self.sweeper is None or self.sink != "database" or not self.sweeper.due():
            return conn
        try:
            if conn is None or conn.closed:
                conn = self._connect_db()
            self._outbox.extend(self.sweeper.sweep(conn))
        except (psycopg.Error, OSError) as exc:
            log.warning("gap sweep failed: %s", exc)
            if conn is not None and not conn.closed:
                conn.close()
            conn = None
        return conn

    # --- run ------------------------------------------------------------------------------------

    def run(self) -> None:
        """Block until ``stop_event`` is set; then flush, ack and disconnect."""
        backoff = 0.1
        while self.client is None:
            try:
                self.client = self._make_client()  # probes the broker for v5 first
            except OSError as exc:
                log.warning("broker unreachable (%s); retrying in %.1fs", exc, backoff)
                if self.stop_event.wait(backoff):
                    return
                backoff = min(backoff * 2, 5.0)
        writers = [
            threading.Thread(target=self._db_loop, args=(i == 0,), name=f"ingest-db-{i}", daemon=True)
            for i in range(self.db_writers)
        ]
        for thread in writers:
            thread.start()
        metrics.track(self)
        register_readiness("ingest", self.ready)
        try:
            self._network_loop()
            self._drain_and_disconnect()
        finally:
            unregister_readiness("ingest")
            metrics.untrack(self)
            if self._unacked:
                self._abort_db.set()  # the database is away: stop retrying, the broker keeps the rest
            for _ in writers:
                self._to_db.put(None)
            for thread in writers:
                thread.join(timeout=10)
            log.info("ingest stopped: %s", self.stats.snapshot())


def run_ingest(
    settings: Settings,
    *,
    database_url: str,
    mqtt_url: MqttUrl,
    stop: threading.Event | None = None,
    on_batch: Callable[[dict], None] | None = None,
    clock: Clock | None = None,
    client_id: str | None = None,
    index: int = 0,
    stats: IngestStats | None = None,
    service: list[IngestService] | None = None,
) -> None:
    """Run one ingest consumer until ``stop`` is set (or SIGTERM/SIGINT in the main thread).

    ``client_id`` defaults to ``settings.ingest_client_id`` or ``mimamori-ingest-<host>-<index>``:
    fixed, so that a restart resumes the persistent session. ``on_batch`` is called from a database
    writer thread after each commit. ``stats``: an ``IngestStats`` the
    service updates in place (counters for metrics). ``service``: if given, the running
    ``IngestService`` is appended to it.
    """
    svc = IngestService(settings, database_url=database_url, mqtt_url=mqtt_url, clock=clock, client_id=client_id, index=index,
                        on_batch=on_batch)
    if stats is not None:
        svc.stats = stats
    if service is not None:
        service.append(svc)
    if stop is not None:
        svc.stop_event = stop
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: svc.stop_event.set())
    try:
        svc.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)  # type: ignore[arg-type]


if __name__ == "__main__":  # pragma: no cover - `python -m mimamori.ingest.consumer` for quick manual runs
    logging.basicConfig(level=os.environ.get("MIMAMORI_LOG_LEVEL", "INFO"))
    s = Settings()
    run_ingest(s, database_url=s.database_url or "", mqtt_url=MqttUrl.parse(s.mqtt_url or "mqtt://127.0.0.1:1883"))
