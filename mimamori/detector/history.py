"""Replay stored events into the model, a day at a time, without a Python object per event.

A full rebuild (the repair path) or a household re-laid out reads weeks of ``events``. Each day's
rows come from PostgreSQL as binary COPY of four fixed-width columns (household row, device column,
epoch seconds, kind code) and are parsed by numpy in one step, so memory stays at one day of the
fleet's events and the time goes to the model, not to building tuples. Like a tick, a replay takes
an event at its device time but never later than its receipt (a device clock ahead is not trusted).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg

from mimamori.detector import model as m

# One binary COPY tuple: int16 field count, then (int32 length, value) per field, big-endian.
_TUPLE = np.dtype([("n", ">i2"), ("l0", ">i4"), ("row", ">i4"), ("l1", ">i4"), ("col", ">i4"),
                   ("l2", ">i4"), ("t", ">f8"), ("l3", ">i4"), ("kind", ">i4")])
#: Up to this many devices, a replay reads them by key in one query (see ``replay``).
_FEW_DEVICES = 256
_HEADER = 19  # signature (11) + flags (4) + header extension length (4, zero)
_TRAILER = 2  # int16 -1

_SELECT = """
COPY (SELECT d.r, d.c, extract(epoch FROM least(e.time, e.received_at))::float8, (array_position(%s::text[], e.kind) - 1)::int4
      FROM events e JOIN pg_temp.detector_devices d ON d.device_id = e.device_id
      WHERE e.time >= %s AND e.time < %s AND e.household_id IS NOT NULL {extra})
TO STDOUT (FORMAT BINARY)
"""


def _parse(buf: bytes) -> np.ndarray:
    body = memoryview(buf)[_HEADER:len(buf) - _TRAILER]
    if len(body) % _TUPLE.itemsize:
        raise ValueError("unexpected COPY row layout")
    return np.frombuffer(body, _TUPLE)


def load_device_map(conn: psycopg.Connection, device_index: dict[str, tuple[int, int]]) -> None:
    """The devices to replay, with their (household row, column), as a temporary table."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS detector_devices (device_id text PRIMARY KEY, r int4, c int4)")
    conn.execute("TRUNCATE pg_temp.detector_devices")
    with conn.cursor().copy("COPY pg_temp.detector_devices (device_id, r, c) FROM STDIN") as copy:
        for device_id, (r, c) in device_index.items():
            copy.write_row((device_id, r, c))
    conn.execute("ANALYZE pg_temp.detector_devices")


def replay(conn: psycopg.Connection, state: m.FleetState, device_index: dict[str, tuple[int, int]], *,
           since: float, until_received: datetime | None, params: m.DetectorParams = m.DEFAULT_PARAMS,
           window_s: float = 86400.0) -> tuple[int, float | None]:
    """Observe every stored event of the given devices with ``time >= since`` (and received by
    ``until_received`` when given), in time order by day. Returns (events, newest device time).
    """
    if not device_index:
        return 0, None
    load_device_map(conn, device_index)
    few = len(device_index) <= _FEW_DEVICES
    bounds = conn.execute(
        "SELECT extract(epoch FROM min(e.time)), extract(epoch FROM max(e.time)) FROM events e"
        " WHERE e.time >= %s" + (" AND e.device_id = ANY(%s)" if few else ""),  # the time index answers this
        (datetime.fromtimestamp(since, UTC), *([list(device_index)] if few else []))).fetchone()
    if bounds is None or bounds[0] is None:
        return 0, None
    start, end = float(bounds[0]), float(bounds[1])
    extra, extra_args = ("AND e.received_at <= %s", (until_received,)) if until_received is not None else ("", ())
    read_s = window_s
    if few:
        # A few homes (a paired device, a new household): their rows by the (device_id, seq, time) key,
        # in one read, instead of scanning every day of the whole fleet's events.
        extra += " AND e.device_id = ANY(%s)"
        extra_args = (*extra_args, list(device_index))
        read_s = end - start + 1.0
    kinds = list(m.EVENT_KINDS)
    total = 0
    newest: float | None = None
    lo = start
    while lo <= end:
        hi = lo + read_s
        buf = bytearray()
        with conn.cursor() as cur, cur.copy(_SELECT.format(extra=extra),
                                            (kinds, datetime.fromtimestamp(lo, UTC),
                                             datetime.fromtimestamp(hi, UTC), *extra_args)) as copy:
            for block in copy:
                buf += block
        rows = _parse(bytes(buf)) if len(buf) > _HEADER + _TRAILER else np.zeros(0, _TUPLE)
        rows = rows[rows["kind"] >= 0]
        if len(rows):
            t = rows["t"].astype(np.float64)
            # The model decays its counts once per batch (to the batch's first day), so a batch must not
            # span more than a day: one read may hold weeks of a few homes.
            window = np.floor((t - start) / window_s).astype(np.int64)
            order = np.argsort(window, kind="stable")
            bounds_at = np.flatnonzero(np.diff(window[order])) + 1
            for part in np.split(order, bounds_at):
                m.observe(state, rows["row"][part].astype(np.int64), rows["col"][part].astype(np.int64), t[part],
                          rows["kind"][part].astype(np.int64), params)
            total += len(rows)
            newest = max(newest or -np.inf, float(t.max()))
        lo = hi
    return total, newest


def newest_received(conn: psycopg.Connection) -> datetime | None:
    """The arrival time of the newest stored event (the cursor a replay ends at)."""
    row = conn.execute("SELECT max(received_at) FROM events").fetchone()
    return None if row is None else row[0]


def seen_near(conn: psycopg.Connection, cursor: datetime | None, overlap_s: float) -> set[tuple[str, int]]:
    """Events received in the overlap before ``cursor``: the next tick re-reads that stretch and must
    not take them twice.
    """
    if cursor is None:
        return set()
    return {(d, int(s)) for d, s in conn.execute(
        "SELECT device_id, seq FROM events WHERE received_at > %s AND received_at <= %s",
        (cursor - timedelta(seconds=overlap_s), cursor))}
