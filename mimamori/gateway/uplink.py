"""The gateway's uplink: outbox → MQTT QoS 1 → the service; commands back down.

Why one file of ~580 lines: it is one class whose thread owns every piece of connection state (the
paho client, the in-flight map, the resend queue), and splitting that state across files would make
the "only the gateway thread touches it" rule hard to see. What has state of its own is apart:
``outbox.py`` (durable rows), ``settling.py`` (the window after a reconnect), ``waiter.py`` (poll and
wake-up), ``service.py`` (the home gateway process around it).

Concurrency model (chosen so a simulator can run hundreds of gateways in one process):
one thread per ``Gateway`` drives its own paho client through paho's external-loop API
(``socket()``, ``loop_read``/``loop_write``/``loop_misc``) with one ``select`` over the broker socket
and a wake-up socketpair. Callers' threads only write to the outbox and poke the wake-up socket;
every paho call happens on the gateway's thread, so the in-flight map needs no lock and a PUBACK
can never overtake the bookkeeping of its PUBLISH.

Reliability model: the outbox is the only source of truth. Each connection is a fresh clean
session (a fresh paho client); after (re)connecting, every pending row is republished in order.
Duplicates on the wire are expected and harmless, since ``(device_id, seq)`` identifies an event.
At most ``max_inflight`` QoS 1 messages await PUBACK at any time.

Settling window after a reconnect (``mimamori/gateway/settling.py``): a broker that restarted may PUBACK and
drop what is published before the service has subscribed again, so rows published in the first
``settle_s`` real seconds after a reconnect are re-published once that window has passed.

Reconnects: exponential backoff with full jitter (``uniform(0, min(cap, base * 2**attempt))``,
real time, cap 30 s by default). Network waits are real time; protocol time (event and heartbeat
timestamps, the heartbeat period, the replay window) comes from the ``Clock``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Self

import paho.mqtt.client as paho

from mimamori.kernel import mqtt, protocol
from mimamori.kernel.clock import Clock, now_ms
from mimamori.kernel.protocol import Command, Event

from . import adapters, metrics
from .adapters import Reading
from .outbox import Outbox
from .settling import SettlingWindow
from .waiter import SocketWaiter

log = logging.getLogger(__name__)

_OK = paho.MQTT_ERR_SUCCESS
_PRUNE_EVERY_S = 10.0  # real seconds between replay-window prunes
_MAX_RESEND_QUEUE = 100_000
_ACK_BATCH = 256
_ACK_LINGER_S = 0.02


class Gateway:
    """One home's (or area's) uplink. See the module docstring for the model."""

    def __init__(
        self,
        gateway_id: str,
        uplink: mqtt.MqttUrl,
        outbox_path: str | Path,
        *,
        clock: Clock,
        protocol: int | None = None,
        heartbeat_s: float = 60.0,
        on_delivered: Callable[[Event], None] | None = None,
        on_command: Callable[[str, Command], None] | None = None,
        max_inflight: int = 256,
        reconnect_base_s: float = 0.25,
        reconnect_cap_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        keepalive_s: int = 30,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        outbox_max_rows: int = 1_000_000,
        replay_window_s: float = 24 * 3600.0,
        replay_rows_per_device: int = 10_000,
        settle_s: float = 30.0,
        layout: adapters.Layout = adapters.DEFAULT_LAYOUT,
    ) -> None:
        self.gateway_id = protocol_check_gateway(gateway_id)
        self.layout = layout
        self.uplink = uplink
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self.on_delivered = on_delivered
        self.on_command = on_command
        self.max_inflight = max(1, max_inflight)
        self.reconnect_base_s = reconnect_base_s
        self.reconnect_cap_s = reconnect_cap_s
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self._protocol = protocol
        self.outbox = Outbox(
            outbox_path,
            clock=clock,
            max_rows=outbox_max_rows,
            window_s=replay_window_s,
            window_rows_per_device=replay_rows_per_device,
            synchronous=synchronous,
        )
        self._memory = self.outbox.memory()
        self._local_lock = threading.Lock()
        self._rng = random.Random()  # noqa: S311 - reconnect jitter, not a secret
        self._stats = {
            "published": 0, "acked": 0, "resent": 0, "resent_after_reconnect": 0,
            "rejected_local": 0, "rejected_commands": 0, "reconnects": 0,
            "commands_refused": 0, "blinks_confirmed": 0, "blinks_unconfirmed": 0,
        }
        self._progress = threading.Condition()
        self._waiter = SocketWaiter()
        self._stop_evt = threading.Event()
        self._mode: Literal["run", "stop", "kill"] = "run"
        self._stop_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._closed = False
        # Connection state, touched only by the gateway thread:
        self._client: paho.Client | None = None
        self._connected = False
        self._refused = False
        self._connect_started = 0.0
        self._ever_connected = False
        self._inflight: dict[int, tuple[int | None, Event]] = {}  # mid -> (outbox row id, event)
        self._last_id = 0  # highest pending row id published on this connection
        self._resend_queue: deque[tuple[int, Event]] = deque()
        self._acks: deque[tuple[str, bytes]] = deque(maxlen=1000)  # (device, payload), any thread appends
        self._delivered: list[tuple[int | None, Event]] = []
        self._ack_due = 0.0
        self._status_mid: int | None = None
        self._status_acked = False
        self._next_heartbeat = 0.0
        self._next_prune = 0.0
        # Rows PUBACKed after a reconnect that may still be lost (mimamori/gateway/settling.py).
        self.settling = SettlingWindow(self.outbox, settle_s, self.gateway_id)

    # -- public API ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("gateway already started")
        if self._closed:
            raise RuntimeError("gateway is closed")
        self._thread = threading.Thread(target=self._run, name=f"gateway-{self.gateway_id}", daemon=True)
        self._thread.start()
        metrics.track(self)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful: publish retained ``offline``, wait for its PUBACK (bounded), DISCONNECT.
        Pending events stay in the outbox for the next start.
        """
        self._finish("stop", timeout)

    def kill(self) -> None:
        """Simulate power loss: drop TCP without DISCONNECT so the broker fires the last will.
        The outbox file keeps everything committed; a new Gateway on it resumes.
        """
        self._finish("kill", 5.0)

    def submit(self, reading: Reading) -> Event:
        """Store durably, then publish asynchronously."""
        event = self.outbox.submit(reading)
        self._wake()
        return event

    def submit_many(self, readings: list[Reading]) -> list[Event]:
        """Like ``submit`` for several readings, with one commit (cheaper for simulators)."""
        events = self.outbox.submit_many(readings)
        self._wake()
        return events

    def handle_local(self, topic: str, payload: bytes, retained: bool = False) -> list[Event]:
        """One message from the home's broker, through the adapters. Never raises. ``retained``:
        the broker's retain flag (a retained state is a sync, not a switch).
        """
        with self._local_lock:
            outcome = adapters.normalise(topic, payload, now_ms=now_ms(self.clock), memory=self._memory, retained=retained,
                                         layout=self.layout)
            if outcome.rejection is not None:
                self._stats["rejected_local"] += 1
                log.debug("gateway %s rejected local %s: %s %s", self.gateway_id, topic, outcome.rejection.reason, outcome.rejection.detail)
                return []
            if not outcome.readings and not outcome.memory_updates:
                return []
            try:
                events = self.outbox.submit_many(outcome.readings, outcome.memory_updates)
            except ValueError as exc:
                self._stats["rejected_local"] += 1
                log.warning("gateway %s rejected local %s: %s", self.gateway_id, topic, exc)
                return []
            self._memory.update(outcome.memory_updates)
        if events:
            self._wake()
        return events

    def publish_ack(self, device_id: str, ack: dict[str, Any]) -> None:
        """Tell the service what became of a command (``protocol.ack_topic``); sent when connected,
        dropped if not (like commands, a stale answer is worth nothing).
        """
        self._acks.append((device_id, json.dumps(ack, separators=(",", ":")).encode()))
        self._wake()

    def remember(self, updates: dict[str, str]) -> None:
        """Persist adapter memory entries that come from elsewhere (the downlink's echo window)."""
        if not updates:
            return
        with self._local_lock:
            self.outbox.submit_many([], updates)
            self._memory.update(updates)

    def memory_snapshot(self) -> dict[str, str]:
        with self._local_lock:
            return dict(self._memory)

    def local_subscriptions(self) -> list[str]:
        """What to subscribe to on the home's broker: the layout's topics, and the base topic of any
        Zigbee2MQTT this home revealed (``<base>/bridge/state``) without it being configured.
        """
        subs = list(self.layout.subscriptions())
        with self._local_lock:
            found = [k[len("z2mbase|"):] for k in self._memory if k.startswith("z2mbase|")]
        return subs + [f"{base}/#" for base in sorted(found) if f"{base}/#" not in subs]

    @property
    def outbox_depth(self) -> int:
        return self.outbox.depth

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._stats)
        out["outbox_depth"] = self.outbox.depth
        out["replay_window"] = self.outbox.window_rows
        out["inflight"] = len(self._inflight)
        out["connected"] = self._connected
        out.update(self.outbox.counters)
        return out

    def count(self, stat: str) -> None:
        """Count one occurrence of ``stat`` (e.g. ``commands_refused``) in ``stats`` and the metrics."""
        self._stats[stat] += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait (real time) until every pending event is PUBACKed. True if the outbox emptied."""
        deadline = time.monotonic() + timeout
        with self._progress:
            while self.outbox.depth > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(min(remaining, 0.5))
        return True

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle ----------------------------------------------------------------------------

    def _finish(self, mode: Literal["stop", "kill"], timeout: float) -> None:
        if self._closed:
            return
        metrics.untrack(self)
        if self._thread is not None:
            self._mode = mode
            self._stop_deadline = time.monotonic() + max(0.0, timeout)
            self._stop_evt.set()
            self._wake()
            self._thread.join(timeout + 1.0)
            if self._thread.is_alive():
                log.error("gateway %s thread did not stop within %.1fs", self.gateway_id, timeout)
        self._closed = True
        self.outbox.close()
        self._waiter.close()

    def _wake(self) -> None:
        self._waiter.wake()

    # -- the gateway thread -------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0  # consecutive failures; reset by a successful CONNACK
        while not self._stop_evt.is_set():
            try:
                if self._client is None:
                    if not self._connect():
                        attempt = self._backoff(attempt)
                    continue
                if not self._step(self._tick()):
                    self._drop_connection("connection lost")
                    attempt = self._backoff(attempt)
                elif self._connected:
                    attempt = 0
                    self._pump()
                elif self._refused or time.monotonic() - self._connect_started > self.connect_timeout_s:
                    self._drop_connection("connection refused" if self._refused else "no CONNACK")
                    attempt = self._backoff(attempt)
            except Exception:  # a bug or a full disk must not end the thread: the outbox keeps everything
                log.exception("gateway %s: unexpected error; reconnecting", self.gateway_id)
                self._drop_connection("internal error")
                attempt = self._backoff(attempt)
        try:
            if self._mode == "kill":
                self._abort_socket()
            else:
                self._graceful_disconnect()
        except Exception:
            log.exception("gateway %s: error while stopping", self.gateway_id)
            self._abort_socket()
        finally:
            self._client = None
            self._connected = False

    def _backoff(self, attempt: int) -> int:
        """Exponential backoff with full jitter, in real time; interrupted by stop/kill."""
        delay = self._rng.uniform(0.0, min(self.reconnect_cap_s, self.reconnect_base_s * 2 ** min(attempt, 30)))
        self._stop_evt.wait(delay)
        return attempt + 1

    def _tick(self) -> float:
        if self._delivered:
            return max(0.0, min(0.25, self._ack_due - time.monotonic()))
        return 0.25

    def _step(self, timeout: float) -> bool:
        """One wait (``mimamori/gateway/waiter.py``) + paho read/write/misc. False when the connection is gone."""
        client = self._client
        if client is None:
            raise RuntimeError("no broker connection")  # a bug: only called while connected
        sock = client.socket()
        if sock is None:
            return False
        try:
            events = self._waiter.wait(sock.fileno(), want_write=client.want_write(), timeout_s=timeout)
        except (OSError, ValueError):
            return False
        rc = _OK
        if events & (select.POLLIN | select.POLLERR | select.POLLHUP):
            rc = client.loop_read()
        if rc == _OK and client.want_write():
            rc = client.loop_write()
        if rc == _OK:
            rc = client.loop_misc()
        return rc == _OK

    def _connect(self) -> bool:
        """Open a fresh clean session. True when the TCP connection and CONNECT went out."""
        try:
            if self._protocol is None:
                self._protocol = mqtt.negotiate_protocol(self.uplink, timeout=self.connect_timeout_s)
            client = mqtt.make_client(self.uplink, f"mimamori-gw-{self.gateway_id}", protocol=self._protocol)
            client.max_inflight_messages_set(self.max_inflight + 16)  # ours + status/subscribe headroom
            client.connect_timeout = self.connect_timeout_s
            client.will_set(protocol.status_topic(self.gateway_id), protocol.STATUS_OFFLINE, qos=1, retain=True)
            client.on_connect = self._on_connect
            client.on_publish = self._on_publish
            client.on_message = self._on_message
            self._refused = False
            self._connected = False
            self._connect_started = time.monotonic()
            mqtt.connect(client, self.uplink, keepalive=self.keepalive_s, clean_start=True)
        except (OSError, ValueError) as exc:
            log.info("gateway %s: cannot connect to %s: %s", self.gateway_id, self.uplink, exc)
            return False
        self._client = client
        return True

    def _drop_connection(self, why: str) -> None:
        if self._connected:
            log.warning("gateway %s: %s; will reconnect", self.gateway_id, why)
        try:
            self._collect_acks()
        except Exception:  # those rows stay pending and are sent again: duplicates, not losses
            log.exception("gateway %s: could not record acknowledgements", self.gateway_id)
            self._delivered.clear()
        self._abort_socket()
        self._client = None
        self._connected = False
        # Resends still in flight go back to the queue; pending rows are republished from the outbox.
        for row_id, event in reversed([v for v in self._inflight.values() if v[0] is not None and v[0] < 0]):
            self._resend_queue.appendleft((row_id, event))
        self._inflight.clear()
        self._last_id = 0
        self._waiter.forget_socket()

    def _abort_socket(self) -> None:
        """Close the TCP connection without an MQTT DISCONNECT (the broker then publishes the will)."""
        client = self._client
        sock = client.socket() if client is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._client = None  # paho's __del__ releases the rest

    def _graceful_disconnect(self) -> None:
        client = self._client
        if client is None or not self._connected:
            self._abort_socket()
            return
        self._collect_acks()
        if self.settling.settling or self.settling.replay_pending:
            # Stopping within the window (or during its replay): re-publish now, best effort (the
            # service has likely subscribed again by now); the range stays recorded for the next start.
            if self.settling.settling:
                self.settling.close(self._last_id)
            while self.settling.replay_pending and time.monotonic() < self._stop_deadline:
                self._replay_unconfirmed(client, self.max_inflight - len(self._inflight), final=True)
                if not self._step(0.05):
                    self._abort_socket()
                    return
            self._collect_acks()
        self._status_acked = False
        self._status_mid = client.publish(protocol.status_topic(self.gateway_id), protocol.STATUS_OFFLINE, qos=1, retain=True).mid
        while not self._status_acked and time.monotonic() < self._stop_deadline:
            if not self._step(0.05):
                break
        self._collect_acks()
        if client.socket() is not None:
            client.disconnect()
            deadline = time.monotonic() + 1.0
            while client.want_write() and client.socket() is not None and time.monotonic() < deadline:
                client.loop_write()
        self._abort_socket()

    # -- paho callbacks (run on the gateway thread) -------------------------------------------

    def _on_connect(self, client: paho.Client, _userdata: object, _flags: Any, reason_code: Any, _properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("gateway %s: broker refused connection: %s", self.gateway_id, reason_code)
            self._refused = True
            return
        self._connected = True
        if self._ever_connected:
            self._stats["reconnects"] += 1
            self.settling.open()
        self._ever_connected = True
        self._last_id = 0
        client.subscribe(protocol.command_filter(self.gateway_id), qos=1)
        client.publish(protocol.status_topic(self.gateway_id), protocol.STATUS_ONLINE, qos=1, retain=True)
        self._next_heartbeat = self.clock.now()
        log.info("gateway %s connected to %s (outbox %d pending)", self.gateway_id, self.uplink, self.outbox.depth)

    def _on_publish(self, _client: paho.Client, _userdata: object, mid: int, _reason_code: Any, _properties: Any) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is not None:
            if not self._delivered:
                self._ack_due = time.monotonic() + _ACK_LINGER_S
            self._delivered.append(entry)
        elif mid == self._status_mid:
            self._status_acked = True

    def _on_message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        try:
            topic = protocol.parse_topic(message.topic)
        except protocol.ProtocolError:
            topic = None
        if topic is None or topic.channel != "cmd" or topic.gateway_id != self.gateway_id or topic.device_id is None:
            # Not ours: amqtt 0.12.1 delivers other gateways' retained status on subscribe.
            log.debug("gateway %s: ignoring %s", self.gateway_id, message.topic)
            return
        try:
            command = protocol.decode_command(message.payload)
        except protocol.ProtocolError as exc:
            self._stats["rejected_commands"] += 1
            log.warning("gateway %s: bad command on %s: %s", self.gateway_id, message.topic, exc)
            return
        if command.cmd == "resend":
            self._queue_resend(topic.device_id, command.args["from_seq"], command.args["to_seq"])
        elif self.on_command is not None:
            try:
                self.on_command(topic.device_id, command)
            except Exception:
                log.exception("gateway %s: on_command failed", self.gateway_id)

    def _replay_unconfirmed(self, client: paho.Client, room: int, *, final: bool = False) -> int:
        room, sent = self.settling.replay(lambda row_id, event: self._publish(client, row_id, event), room, final=final)
        self._stats["resent_after_reconnect"] += sent
        return room

    def _queue_resend(self, device_id: str, from_seq: int, to_seq: int) -> None:
        room = _MAX_RESEND_QUEUE - len(self._resend_queue)
        rows = self.outbox.replay(device_id, from_seq, to_seq, limit=max(0, room))
        # Negative row ids mark resends: their PUBACK still acks the row if it was pending.
        self._resend_queue.extend((-row_id, event) for row_id, event in rows)
        held = {e.seq for _, e in rows}
        missing = (to_seq - from_seq + 1) - len(held)
        log.info("gateway %s: resend %s %d..%d: %d queued, %d not held", self.gateway_id, device_id, from_seq, to_seq, len(rows), missing)

    # -- work between network steps -----------------------------------------------------------

    def _collect_acks(self, force: bool = True) -> None:
        """Commit delivered rows. Unforced, commits are batched (``_ACK_BATCH`` rows or
        ``_ACK_LINGER_S``): one commit per PUBACK would double the outbox's write load, and a crash
        in between only means a few duplicates on the wire.
        """
        if not self._delivered:
            return
        if not force and len(self._delivered) < _ACK_BATCH and time.monotonic() < self._ack_due:
            return
        batch, self._delivered = self._delivered, []
        self.outbox.ack(abs(row_id) for row_id, _ in batch if row_id is not None)
        self._stats["acked"] += len(batch)
        if self.on_delivered is not None:
            for _, event in batch:
                try:
                    self.on_delivered(event)
                except Exception:
                    log.exception("gateway %s: on_delivered failed", self.gateway_id)
        with self._progress:  # after the callbacks, so a woken flush() usually finds them done
            self._progress.notify_all()

    def _pump(self) -> None:
        self._collect_acks(force=False)
        client = self._client
        if client is None:
            raise RuntimeError("no broker connection")  # a bug: only called while connected
        room = self.max_inflight - len(self._inflight)
        if self.settling.passed():
            self.settling.close(self._last_id)
        if not self.settling.settling:  # resends published while settling could be dropped the same way
            while room > 0 and self._resend_queue:
                row_id, event = self._resend_queue.popleft()
                if not self._publish(client, row_id, event):
                    self._resend_queue.appendleft((row_id, event))
                    return
                self._stats["resent"] += 1
                room -= 1
            if room > 0 and self.settling.replay_hi:
                room = self._replay_unconfirmed(client, room)
        if room > 0 and self.outbox.depth > 0 and self._last_id < self.outbox.last_id:
            sent_all = True
            for row_id, event in self.outbox.pending(room, after_id=self._last_id):
                if not self._publish(client, row_id, event):
                    sent_all = False
                    break
                self._last_id = row_id
            self.settling.published_up_to(self._last_id)
            if not sent_all:
                return
        while self._acks:
            device_id, payload = self._acks.popleft()
            client.publish(protocol.ack_topic(self.gateway_id, device_id), payload, qos=1)
        now = self.clock.now()
        if now >= self._next_heartbeat:
            # Keep the cadence; after a jump of the clock (or a long outage) resume from now.
            self._next_heartbeat += self.heartbeat_s
            if self._next_heartbeat <= now:
                self._next_heartbeat = now + self.heartbeat_s
            payload = protocol.encode_gateway_heartbeat(
                now_ms(self.clock), self.outbox.depth, published=self._stats["published"], reconnects=self._stats["reconnects"]
            )
            client.publish(protocol.heartbeat_topic(self.gateway_id), payload, qos=0)
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + _PRUNE_EVERY_S
            self.outbox.prune()

    def _publish(self, client: paho.Client, row_id: int, event: Event) -> bool:
        info = client.publish(protocol.event_topic(self.gateway_id, event.device_id), protocol.encode_event(event), qos=1)
        # Registered in paho either way; on failure the connection is going down and will be redone.
        self._inflight[info.mid] = (row_id, event)
        self._stats["published"] += 1
        return info.rc == _OK


def protocol_check_gateway(gateway_id: str) -> str:
    return protocol.check_id(gateway_id, "gateway")
