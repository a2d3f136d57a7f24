"""A paho-mqtt 2 client tuned for draining many small QoS 1 messages.

Stock paho spends most of a small message's cost outside the application: three ``recv()``
system calls per packet (command byte, length, body), one ``select()`` per packet, an
``MQTTMessage`` plus a v5 ``Properties`` object per message, and one queued packet (a wake-up byte
and a ``send()``) per PUBACK. ``IngestClient`` keeps paho for everything else (connect, session,
keepalive, reconnect, subscribe, publish) and changes only that path:

- ``_sock_recv`` reads 64 KiB at a time and serves paho's small reads from the buffer, and
  ``_packet_read`` cuts whole packets straight out of that buffer (paho's own byte-by-byte reader
  is kept for packets that straddle two reads);
- ``loop_read`` keeps parsing packets until the socket would block (paho reads one per select);
- ``_handle_publish`` decodes QoS 0/1 PUBLISH packets in place and hands
  ``(topic, payload, mid, qos, retain)`` to ``on_raw_publish`` (no MQTTMessage, no Properties);
- ``ack_many`` writes the PUBACKs of a whole batch as one packet-queue entry (one ``send()``).

These override private paho methods (pinned ``paho-mqtt>=2.1,<3``); ``tests/test_ingest_client.py``
checks them against the installed paho. Only call ``ack_many`` / ``publish`` from the thread that
runs the loop.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

RawPublishHandler = Callable[[bytes, bytes, int, int, bool], None]

READ_SIZE = 65536
#: Packets parsed per loop_read before the loop gets a turn (only stops at a buffer boundary).
MAX_PACKETS_PER_READ = 5000

_PUBACK = 0x40
_puback = struct.Struct("!BBH").pack


class IngestClient(paho.Client):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._rbuf = b""
        self._rpos = 0
        #: Called for every QoS 0/1 PUBLISH instead of on_message: (topic, payload, mid, qos, retain).
        self.on_raw_publish: RawPublishHandler | None = None

    # --- buffered reads ---------------------------------------------------------------------

    def _sock_recv(self, bufsize: int) -> bytes:
        pos = self._rpos
        buf = self._rbuf
        if pos < len(buf):
            end = pos + bufsize
            self._rpos = end
            return buf[pos:end]
        data = super()._sock_recv(max(bufsize, READ_SIZE))
        if len(data) <= bufsize:
            self._rbuf = b""
            self._rpos = 0
            return data
        self._rbuf = data
        self._rpos = bufsize
        return data[:bufsize]

    def _buffered(self) -> bool:
        return self._rpos < len(self._rbuf)

    def _sock_close(self) -> None:
        self._rbuf = b""
        self._rpos = 0
        super()._sock_close()

    def reconnect(self) -> MQTTErrorCode:
        self._rbuf = b""
        self._rpos = 0
        return super().reconnect()

    def _packet_read(self) -> MQTTErrorCode:
        if self._in_packet["command"] != 0:  # paho's reader is halfway through a packet
            return super()._packet_read()
        buf = self._rbuf
        pos = self._rpos
        end_of_data = len(buf)
        if pos >= end_of_data:
            try:
                buf = paho.Client._sock_recv(self, READ_SIZE)  # noqa: SLF001
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if not buf:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            self._rbuf = buf
            self._rpos = pos = 0
            end_of_data = len(buf)
            with self._msgtime_mutex:
                self._last_bytes_received = time.monotonic()
        # Fixed header: command byte, then the remaining length (1-4 bytes, 7 bits each).
        i = pos + 1
        length = 0
        shift = 0
        while True:
            if i >= end_of_data or shift > 21:
                return self._slow_packet_read()
            byte = buf[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        end = i + length
        if end > end_of_data:
            return self._slow_packet_read()
        self._rpos = end
        packet = self._in_packet
        packet["command"] = buf[pos]
        packet["packet"] = buf[i:end]
        packet["remaining_length"] = length
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        packet["command"] = 0
        return rc

    def _slow_packet_read(self) -> MQTTErrorCode:
        """A packet not wholly in the buffer: paho's reader, fed from the buffer, finishes it."""
        self._in_packet = {
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(b""),
            "to_process": 0,
            "pos": 0,
        }
        return super()._packet_read()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        count = 0
        while True:
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN or self._sock is None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            count += 1
            # Never return with bytes left in our buffer: select() cannot see them.
            if count >= MAX_PACKETS_PER_READ and not self._buffered():
                return MQTTErrorCode.MQTT_ERR_SUCCESS

    # --- lean PUBLISH ------------------------------------------------------------------------

    def _handle_publish(self) -> MQTTErrorCode:
        handler = self.on_raw_publish
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if handler is None or qos > 1:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        topic_len = (packet[0] << 8) | packet[1]
        pos = 2 + topic_len
        topic = bytes(packet[2:pos])
        mid = 0
        if qos:
            mid = (packet[pos] << 8) | packet[pos + 1]
            pos += 2
        if self._protocol == paho.MQTTv5:
            # Skip the properties (a variable byte integer length, then the properties). We send no
            # Topic Alias Maximum, so the broker never replaces the topic by an alias.
            props_len = 0
            shift = 0
            while True:
                byte = packet[pos]
                pos += 1
                props_len |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
            pos += props_len
        payload = bytes(packet[pos:])
        handler(topic, payload, mid, qos, bool(header & 0x01))
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # --- acks in bursts ----------------------------------------------------------------------

    def ack_many(self, mids: Iterable[int]) -> MQTTErrorCode:
        """PUBACK every packet id in ``mids`` with a single queued write."""
        data = b"".join([_puback(_PUBACK, 2, mid) for mid in mids])
        if not data:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._packet_queue(_PUBACK, data, 0, 1)
