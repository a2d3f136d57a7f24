"""The gateway's uplink: outbox → MQTT QoS 1 → the service; commands back down.

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

Settling window after a reconnect: a PUBACK only says the broker took the message. Mosquitto
2.0.11 does not restore shared subscriptions after a restart, so until the ingest has subscribed
again it PUBACKs and drops what the gateways publish (found by ``mimamori chaos --faults
broker_restart``: a third of the events published then were lost). So after a connection that
follows a *lost* one (not the first connection of the process), every row published during the
first ``settle_s`` real seconds counts as unconfirmed although it was PUBACKed: the rows with ids
``lo..hi`` (``lo`` = the oldest row pending at the reconnect, ``hi`` = the newest row published
during the window) are re-published from the outbox (pending or replay window, heartbeats excluded)
once the window has passed, as resends (negative row ids, like the ``resend`` command). The state is
two row ids and a cursor per gateway, and the range is recorded in the outbox, so a broker that
restarts again during the window widens the range, and a stop or kill during it does not forget it:
a graceful stop re-publishes the range at once (best effort) and the next start re-publishes it
again. Resend requests wait until the window has passed (they would be dropped the same way).

Reconnects: exponential backoff with full jitter (``uniform(0, min(cap, base * 2**attempt))``,
real time, cap 30 s by default). Network waits are real time; protocol time (event and heartbeat
timestamps, the heartbeat period, the replay window) comes from the ``Clock``.
"""

from __future__ import annotations

import json
import logging
import random
import select
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho

from mimamori import mqtt, observability, protocol
from mimamori.clock import Clock, SystemClock, now_ms
from mimamori.config import Settings
from mimamori.protocol import Command, Event

from . import adapters, downlink, metrics
from .adapters import Reading
from .outbox import Outbox

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
        self.settle_s = max(0.0, settle_s)
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
        self._rng = random.Random()
        self._stats = {
            "published": 0, "acked": 0, "resent": 0, "resent_after_reconnect": 0,
            "rejected_local": 0, "rejected_commands": 0, "reconnects": 0,
            "commands_refused": 0, "blinks_confirmed": 0, "blinks_unconfirmed": 0,
        }
        self._progress = threading.Condition()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
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
        self._poller = select.poll()
        self._polled_fd = -1
        self._polled_mask = 0
        # Settling window (module docstring): row ids lo..hi are unconfirmed; replayed when
        # _settle_until (monotonic) has passed, from _replay_cursor (exclusive) up to _replay_hi.
        self._settle_until = 0.0
        self._settle_lo = 0
        self._settle_hi = 0
        self._replay_cursor = 0
        self._replay_hi = 0
        recorded = self.outbox.unconfirmed()
        if recorded is not None:  # a stop or kill during a window: re-publish once connected
            lo, hi = recorded
            self._replay_cursor, self._replay_hi = lo - 1, self.outbox.last_id if hi is None else hi

    # -- public API ---------------------------------------------------------------------------

    def start(self) -> Gateway:
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
        Pending events stay in the outbox for the next start."""
        self._finish("stop", timeout)

    def kill(self) -> None:
        """Simulate power loss: drop TCP without DISCONNECT so the broker fires the last will.
        The outbox file keeps everything committed; a new Gateway on it resumes."""
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
        the broker's retain flag (a retained state is a sync, not a switch)."""
        with self._local_lock:
            outcome = adapters.normalise(topic, payload, now_ms=now_ms(self.clock), memory=self._memory, retained=retained, layout=self.layout)
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
        dropped if not (like commands, a stale answer is worth nothing)."""
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
        Zigbee2MQTT this home revealed (``<base>/bridge/state``) without it being configured."""
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

    def __enter__(self) -> Gateway:
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
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (buffer full) or closing

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
        """One poll + paho read/write/misc. False when the connection is gone.

        ``poll``, not ``select``: a process running hundreds of gateways has file descriptors
        above 1024, which ``select`` cannot watch.
        """
        client = self._client
        assert client is not None
        sock = client.socket()
        if sock is None:
            return False
        try:
            fd = sock.fileno()
            if fd != self._polled_fd:
                self._poller = select.poll()
                self._poller.register(self._wake_r, select.POLLIN)
                self._poller.register(fd, select.POLLIN)
                self._polled_fd, self._polled_mask = fd, select.POLLIN
            mask = select.POLLIN | (select.POLLOUT if client.want_write() else 0)
            if mask != self._polled_mask:
                self._poller.modify(fd, mask)
                self._polled_mask = mask
            ready = dict(self._poller.poll(timeout * 1000.0))
        except (OSError, ValueError):
            return False
        if self._wake_r.fileno() in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        rc = _OK
        if ready.get(fd, 0) & (select.POLLIN | select.POLLERR | select.POLLHUP):
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
        self._polled_fd = -1

    def _abort_socket(self) -> None:
        """Close the TCP connection without an MQTT DISCONNECT (the broker then publishes the will)."""
        client = self._client
        sock = client.socket() if client is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._client = None  # paho's __del__ releases the rest

    def _graceful_disconnect(self) -> None:
        client = self._client
        if client is None or not self._connected:
            self._abort_socket()
            return
        self._collect_acks()
        if self._settle_until or self._replay_cursor < self._replay_hi:
            # Stopping within the window (or during its replay): re-publish now, best effort (the
            # service has likely subscribed again by now); the range stays recorded for the next start.
            if self._settle_until:
                self._close_settling_window()
            while self._replay_cursor < self._replay_hi and time.monotonic() < self._stop_deadline:
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

    def _on_connect(self, client: paho.Client, userdata: object, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("gateway %s: broker refused connection: %s", self.gateway_id, reason_code)
            self._refused = True
            return
        self._connected = True
        if self._ever_connected:
            self._stats["reconnects"] += 1
            self._open_settling_window()
        self._ever_connected = True
        self._last_id = 0
        client.subscribe(protocol.command_filter(self.gateway_id), qos=1)
        client.publish(protocol.status_topic(self.gateway_id), protocol.STATUS_ONLINE, qos=1, retain=True)
        self._next_heartbeat = self.clock.now()
        log.info("gateway %s connected to %s (outbox %d pending)", self.gateway_id, self.uplink, self.outbox.depth)

    def _on_publish(self, client: paho.Client, userdata: object, mid: int, reason_code: Any, properties: Any) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is not None:
            if not self._delivered:
                self._ack_due = time.monotonic() + _ACK_LINGER_S
            self._delivered.append(entry)
        elif mid == self._status_mid:
            self._status_acked = True

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
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

    def _open_settling_window(self) -> None:
        """A reconnect: what is published from now until ``settle_s`` has passed may be PUBACKed and
        dropped by a broker that lost the service's subscriptions. Widen the unconfirmed range to
        the oldest pending row (republished right away) and any replay not finished yet."""
        if self.settle_s <= 0:
            return
        first_pending = self.outbox.first_pending_id()
        lo = self.outbox.last_id + 1 if first_pending is None else first_pending
        hi = 0
        if self._settle_until:  # the broker went away again during the window
            lo, hi = min(lo, self._settle_lo), self._settle_hi
        if self._replay_cursor < self._replay_hi:  # a replay cut short: do it again after this window
            lo, hi = min(lo, self._replay_cursor + 1), max(hi, self._replay_hi)
        self._replay_cursor = self._replay_hi = 0
        self._settle_lo, self._settle_hi = lo, hi
        self._settle_until = time.monotonic() + self.settle_s
        self.outbox.set_unconfirmed(lo, None)
        log.info("gateway %s: settling for %.0fs; rows from %d count as unconfirmed", self.gateway_id, self.settle_s, lo)

    def _close_settling_window(self) -> None:
        """The window has passed (or we stop): schedule the re-publication of ``lo..hi``."""
        hi = max(self._settle_hi, self._last_id)
        self._settle_until = 0.0
        if hi >= self._settle_lo:
            self._replay_cursor, self._replay_hi = self._settle_lo - 1, hi
            self.outbox.set_unconfirmed(self._settle_lo, hi)
            log.info("gateway %s: re-publishing rows %d..%d sent while settling", self.gateway_id, self._settle_lo, hi)
        else:
            self.outbox.clear_unconfirmed()

    def _replay_unconfirmed(self, client: paho.Client, room: int, *, final: bool = False) -> int:
        """Publish the next unconfirmed rows as resends, within ``room``; returns the room left.
        When the range is done it is forgotten, except on the way out (``final``): the next start
        re-publishes it once more, since this stop may still fall within the window."""
        while room > 0 and self._replay_cursor < self._replay_hi:
            rows = self.outbox.rows_between(self._replay_cursor, self._replay_hi, min(room, 1000))
            if not rows:
                self._replay_cursor = self._replay_hi
                break
            for row_id, event in rows:
                # Negative row ids mark resends: their PUBACK still acks the row if it was pending.
                if not self._publish(client, -row_id, event):
                    return 0  # the connection is going down; this row is redone after the next window
                self._replay_cursor = row_id
                self._stats["resent_after_reconnect"] += 1
                room -= 1
        if self._replay_hi and self._replay_cursor >= self._replay_hi and not final:
            self._replay_cursor = self._replay_hi = 0
            self.outbox.clear_unconfirmed()
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
        in between only means a few duplicates on the wire."""
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
        assert client is not None
        room = self.max_inflight - len(self._inflight)
        if self._settle_until and time.monotonic() >= self._settle_until:
            self._close_settling_window()
        if not self._settle_until:  # resends published while settling could be dropped the same way
            while room > 0 and self._resend_queue:
                row_id, event = self._resend_queue.popleft()
                if not self._publish(client, row_id, event):
                    self._resend_queue.appendleft((row_id, event))
                    return
                self._stats["resent"] += 1
                room -= 1
            if room > 0 and self._replay_hi:
                room = self._replay_unconfirmed(client, room)
        if room > 0 and self.outbox.depth > 0 and self._last_id < self.outbox.last_id:
            sent_all = True
            for row_id, event in self.outbox.pending(room, after_id=self._last_id):
                if not self._publish(client, row_id, event):
                    sent_all = False
                    break
                self._last_id = row_id
            if self._settle_until:
                self._settle_hi = max(self._settle_hi, self._last_id)
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


# ---------------------------------------------------------------------------------------------
# `mimamori gateway`
# ---------------------------------------------------------------------------------------------


def _uplink_protocol(settings: Settings) -> int | None:
    return {"auto": None, "5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}[settings.mqtt_protocol]


def run_gateway(
    settings: Settings,
    *,
    gateway_id: str,
    local_url: str,
    outbox_path: Path,
    stop: threading.Event | None = None,
    clock: Clock | None = None,
    layout: adapters.Layout = adapters.DEFAULT_LAYOUT,
    never_switch: Collection[str] = (),
    blink_step_s: float = downlink.STEP_S,
) -> None:
    """Bridge the home's broker at ``local_url`` to the service until SIGINT/SIGTERM (or ``stop``
    is set, for embedding and tests), then stop gracefully.

    The outbox is fsynced on every commit (``synchronous=FULL``): a home gateway must survive
    power cuts, and a home's event rate makes the fsync cost irrelevant.
    """
    if not settings.mqtt_url:
        raise ValueError("the gateway needs the service's broker: set MIMAMORI_MQTT_URL (mqtt://host:1883)")
    stop = stop or threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    local_url_parsed = mqtt.MqttUrl.parse(local_url)
    gateway = Gateway(
        gateway_id,
        mqtt.url_from_settings(settings),  # credentials and CA file may come from the settings
        outbox_path,
        clock=clock or SystemClock(),
        protocol=_uplink_protocol(settings),
        heartbeat_s=settings.gateway_heartbeat_s,
        settle_s=settings.gateway_settle_s,
        synchronous="FULL",
        layout=layout,
    )
    subscribed: set[str] = set()
    # A persistent local session: the home broker queues device messages while we restart.
    local = mqtt.make_client(local_url_parsed, f"mimamori-gw-{gateway_id}-local", protocol=mqtt.MQTTv311, clean_start=False)

    def on_connect(client: paho.Client, userdata: object, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("local broker refused connection: %s", reason_code)
            return
        subscribed.clear()
        subscribed.update(gateway.local_subscriptions())
        client.subscribe([(t, 1) for t in sorted(subscribed)])
        log.info("gateway %s listening on %s", gateway_id, local_url_parsed)

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        # Returns after the outbox commit; paho sends the local PUBACK after this callback.
        gateway.handle_local(message.topic, message.payload, bool(message.retain))
        if message.topic.endswith("/bridge/state"):  # a Zigbee2MQTT base topic nobody configured?
            new = [t for t in gateway.local_subscriptions() if t not in subscribed]
            if new:
                subscribed.update(new)
                client.subscribe([(t, 1) for t in new])
                log.info("gateway %s: found Zigbee2MQTT at %s", gateway_id, ", ".join(new))

    timers: list[threading.Timer] = []

    def later(delay_s: float, fn: Callable[[], None]) -> None:
        timer = threading.Timer(delay_s, fn)
        timer.daemon = True
        timers[:] = [t for t in timers if t.is_alive()] + [timer]
        timer.start()

    def check_echo(device_id: str, dialect: str) -> None:
        ok = downlink.confirmed(device_id, gateway.memory_snapshot())
        gateway._stats["blinks_confirmed" if ok else "blinks_unconfirmed"] += 1
        log.info("gateway %s: blink of %s %s", gateway_id, device_id, "confirmed by its state reports" if ok else "sent, not confirmed")
        gateway.publish_ack(device_id, {"cmd": "blink", "confirmed": ok, "dialect": dialect})

    def on_command(device_id: str, command: Command) -> None:
        # In the device's own language (downlink.py); native devices get the command as it came.
        plan = downlink.plan(device_id, command, gateway.memory_snapshot(), now_ms=now_ms(gateway.clock),
                             never_switch=never_switch, step_s=blink_step_s)
        if plan.refused is not None:
            gateway._stats["commands_refused"] += 1
            log.warning("gateway %s: not sending %s to %s (%s): %s", gateway_id, command.cmd, device_id, plan.dialect, plan.refused)
            gateway.publish_ack(device_id, {"cmd": command.cmd, "confirmed": False, "dialect": plan.dialect, "refused": plan.refused})
            return
        gateway.remember(plan.memory)
        for step in plan.steps:
            if step.at_s <= 0:
                local.publish(step.topic, step.payload, qos=1)
            else:
                later(step.at_s, lambda step=step: local.publish(step.topic, step.payload, qos=1))
        if plan.dialect != "native":
            later(plan.duration_s + 3.0, lambda: check_echo(device_id, plan.dialect))

    gateway.on_command = on_command
    local.on_connect = on_connect
    local.on_message = on_message
    local.reconnect_delay_set(1, 30)
    # /metrics, /healthz and /readyz (ready = connected to the service's broker) on MIMAMORI_OPS_PORT.
    observability.register_readiness("gateway", metrics.all_connected)
    ops = observability.start_ops_server(settings)
    try:
        gateway.start()
        mqtt.connect(local, local_url_parsed, asynchronous=True)
        local.loop_start()
        stop.wait()
        log.info("gateway %s stopping", gateway_id)
    finally:
        for timer in timers:
            timer.cancel()
        local.disconnect()
        local.loop_stop()
        sock = local.socket()  # loop_stop may win the race against the DISCONNECT write
        if sock is not None:
            sock.close()
        gateway.stop()
        observability.unregister_readiness("gateway")
        if ops is not None:
            ops.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
