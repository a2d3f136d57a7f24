"""Write one batch in one transaction; pair a device with its household.

Per batch: COPY the events (device heartbeats included) into a temporary staging table, then a
handful of set-based statements register unknown gateways and devices, insert the events (the
``events_identity`` key drops re-deliveries), fold the batch into ``device_state``, and COPY the
dead letters. The caller commits and only then acknowledges the MQTT messages.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from mimamori.kernel import contract, protocol
from mimamori.kernel.clock import as_datetime
from mimamori.kernel.protocol import Event, ProtocolError

from .batch import Batch
from .validate import DeadLetter

# ``ON COMMIT DELETE ROWS``: the staging table is empty at the start of every batch.
CREATE_STAGE = """
CREATE TEMPORARY TABLE IF NOT EXISTS ingest_stage (
    gateway_id text NOT NULL,
    device_id  text NOT NULL,
    seq        bigint NOT NULL,
    ts_ms      bigint NOT NULL,
    kind       text NOT NULL,
    value      double precision
) ON COMMIT DELETE ROWS
"""

COPY_STAGE = "COPY ingest_stage (gateway_id, device_id, seq, ts_ms, kind, value) FROM STDIN"

# Every gateway row the batch touches, in one statement, in key order, before any other table: events
# (last_seen_at, refreshed at most every 10 s per gateway), retained online/offline statuses
# (status_changed_at moves only when the status changes; a NULL status_changed_at in the input means
# "no status in this batch") and gateway heartbeats (the newest ``ts`` wins). One statement in key
# order: two writers that touch the same gateways lock them in the same order and cannot deadlock
# (separate per-gateway statements in arrival order after the sorted ones did, measured by the fault
# suite: a deadlock every second or two with 100 gateways heartbeating).
UPSERT_GATEWAYS = """
INSERT INTO gateways AS g (gateway_id, status, status_changed_at, last_heartbeat, last_seen_at)
SELECT u.gateway_id, COALESCE(u.status, 'unknown'), CASE WHEN u.status IS NOT NULL THEN %(now)s::timestamptz END,
       u.heartbeat::jsonb, %(now)s::timestamptz
FROM unnest(%(ids)s::text[], %(statuses)s::text[], %(heartbeats)s::text[]) AS u(gateway_id, status, heartbeat)
ORDER BY u.gateway_id
ON CONFLICT (gateway_id) DO UPDATE SET
    status = CASE WHEN EXCLUDED.status_changed_at IS NOT NULL THEN EXCLUDED.status ELSE g.status END,
    status_changed_at = CASE WHEN EXCLUDED.status_changed_at IS NOT NULL AND g.status IS DISTINCT FROM EXCLUDED.status
                             THEN EXCLUDED.status_changed_at ELSE g.status_changed_at END,
    last_heartbeat = CASE WHEN EXCLUDED.last_heartbeat IS NOT NULL
                           AND (g.last_heartbeat IS NULL
                                OR (g.last_heartbeat->>'ts')::bigint <= (EXCLUDED.last_heartbeat->>'ts')::bigint)
                          THEN EXCLUDED.last_heartbeat ELSE g.last_heartbeat END,
    last_seen_at = GREATEST(g.last_seen_at, EXCLUDED.last_seen_at)
WHERE EXCLUDED.status_changed_at IS NOT NULL OR EXCLUDED.last_heartbeat IS NOT NULL
   OR g.last_seen_at IS NULL OR g.last_seen_at < EXCLUDED.last_seen_at - interval '10 seconds'
"""

# Unknown devices are registered unpaired (household NULL, kind NULL) for a coordinator to pair.
# An unpaired device that moved to another gateway follows it (resend commands go to its current
# gateway). A paired device is bound to its gateway (issue 17): only a device without a known gateway
# (paired before it ever reported) takes the publishing one; moving a paired device is a coordinator's
# act (``app.devices.service.move_device``), never a side effect of a publish. REJECT_FOREIGN has
# already removed the events a paired device's other gateways sent.
UPSERT_DEVICES = """
INSERT INTO devices AS d (device_id, gateway_id, first_seen_at)
SELECT device_id, (array_agg(gateway_id ORDER BY ts_ms DESC))[1], %(now)s::timestamptz
FROM ingest_stage GROUP BY device_id ORDER BY device_id
ON CONFLICT (device_id) DO UPDATE SET gateway_id = EXCLUDED.gateway_id
WHERE d.gateway_id IS DISTINCT FROM EXCLUDED.gateway_id AND (d.household_id IS NULL OR d.gateway_id IS NULL)
"""

# Issue 17: a gateway speaks only for its own devices. Messages (events and device heartbeats) for a
# device paired under another gateway leave the staging table and become dead letters
# (``foreign_device``) before anything else reads the stage: no event row, no device_state change, no
# move. The payload is the event re-encoded (the raw bytes are not staged). Runs for every batch
# (the KnownRows cache cannot know about a pairing made meanwhile); the devices primary key makes it
# an index probe per staged row.
REJECT_FOREIGN = """
WITH foreign_rows AS (
    DELETE FROM ingest_stage s USING devices d
    WHERE d.device_id = s.device_id AND d.household_id IS NOT NULL AND d.gateway_id IS NOT NULL
      AND d.gateway_id <> s.gateway_id
    RETURNING s.gateway_id, s.device_id, s.seq, s.ts_ms, s.kind, s.value, d.gateway_id AS bound_to
), dead AS (
    INSERT INTO dead_letters (received_at, topic, payload, reason, detail)
    SELECT %(now)s::timestamptz, %(topic_root)s || '/' || gateway_id || '/' || device_id || '/event',
           convert_to(json_build_object('v', 1, 'device', device_id, 'seq', seq, 'ts', ts_ms, 'kind', kind,
                                        'value', value)::text, 'UTF8'),
           'foreign_device', 'device ' || device_id || ' is paired under gateway ' || bound_to
    FROM foreign_rows ORDER BY device_id, seq
)
SELECT count(*) FILTER (WHERE kind <> 'heartbeat'), count(*) FROM foreign_rows
"""

# Key order, like the upserts: concurrent writers meeting the same duplicate wait, never deadlock.
# The household comes from the device's pairing at the time the event is stored (NULL if unpaired;
# pair_device back-fills it later). Duplicates, inside the batch or across batches, are dropped.
INSERT_EVENTS = """
INSERT INTO events (time, household_id, device_id, seq, kind, value, received_at)
SELECT timestamptz 'epoch' + s.ts_ms * interval '1 millisecond', d.household_id, s.device_id, s.seq,
       s.kind, s.value, %(now)s::timestamptz
FROM ingest_stage s LEFT JOIN devices d ON d.device_id = s.device_id
WHERE s.kind <> 'heartbeat'
ORDER BY s.device_id, s.seq
ON CONFLICT (device_id, seq, time) DO NOTHING
"""

# Rows are upserted in key order (ORDER BY) so that two ingest processes lock rows in the same order
# and cannot deadlock.
# Device time decides: the newest message wins each column, whatever order messages arrive in
# (resends arrive late). ``power`` follows the newest on/off event. No column is ever later than the
# batch's receipt (issue 17: a device clock a few minutes ahead must not put "last seen" in the future; CASE, not
# LEAST, which would turn a NULL column into the receipt time).
#: The kinds ``UPSERT_DEVICE_STATE`` folds into last activity and power, from the contract.
_DEVICE_STATE_KINDS = {"activity_kinds": sorted(contract.ACTIVITY_KINDS), "power_kinds": sorted(contract.POWER_KINDS)}
UPSERT_DEVICE_STATE = """
WITH agg AS (
    SELECT device_id,
           max(ts_ms) AS seen_ms,
           max(ts_ms) FILTER (WHERE kind = ANY(%(activity_kinds)s::text[])) AS activity_ms,
           max(ts_ms) FILTER (WHERE kind = 'heartbeat') AS heartbeat_ms,
           (array_agg(kind ORDER BY ts_ms DESC, seq DESC) FILTER (WHERE kind = ANY(%(power_kinds)s::text[])))[1] AS power,
           max(ts_ms) FILTER (WHERE kind = ANY(%(power_kinds)s::text[])) AS power_ms,
           max(seq) FILTER (WHERE kind <> 'heartbeat') AS max_seq,
           max(seq) FILTER (WHERE kind = 'heartbeat') AS reported_seq
    FROM ingest_stage GROUP BY device_id
)
INSERT INTO device_state AS ds (device_id, last_seen_at, last_activity_at, last_heartbeat_at,
                                power, power_since, max_seq, reported_seq, updated_at)
SELECT device_id,
       timestamptz 'epoch' + (CASE WHEN seen_ms > %(now_ms)s THEN %(now_ms)s ELSE seen_ms END) * interval '1 millisecond',
       timestamptz 'epoch' + (CASE WHEN activity_ms > %(now_ms)s THEN %(now_ms)s ELSE activity_ms END) * interval '1 millisecond',
       timestamptz 'epoch' + (CASE WHEN heartbeat_ms > %(now_ms)s THEN %(now_ms)s ELSE heartbeat_ms END) * interval '1 millisecond',
       power,
       timestamptz 'epoch' + (CASE WHEN power_ms > %(now_ms)s THEN %(now_ms)s ELSE power_ms END) * interval '1 millisecond',
       max_seq, reported_seq, %(now)s::timestamptz
FROM agg ORDER BY device_id
ON CONFLICT (device_id) DO UPDATE SET
    last_seen_at      = GREATEST(ds.last_seen_at, EXCLUDED.last_seen_at),
    last_activity_at  = GREATEST(ds.last_activity_at, EXCLUDED.last_activity_at),
    last_heartbeat_at = GREATEST(ds.last_heartbeat_at, EXCLUDED.last_heartbeat_at),
    power       = CASE WHEN EXCLUDED.power_since > ds.power_since OR ds.power_since IS NULL
                       THEN COALESCE(EXCLUDED.power, ds.power) ELSE ds.power END,
    power_since = CASE WHEN EXCLUDED.power_since > ds.power_since OR ds.power_since IS NULL
                       THEN COALESCE(EXCLUDED.power_since, ds.power_since) ELSE ds.power_since END,
    max_seq      = GREATEST(ds.max_seq, EXCLUDED.max_seq),
    reported_seq = GREATEST(ds.reported_seq, EXCLUDED.reported_seq),
    updated_at   = EXCLUDED.updated_at
"""

COPY_DEAD_LETTERS = "COPY dead_letters (received_at, topic, payload, reason, detail) FROM STDIN"
#: A dead letter keeps at most this much of its payload (enough to see what was wrong; a gateway
#: sending 64 KB junk messages would otherwise fill the table fast).
MAX_DEAD_LETTER_BYTES = 4096

@dataclass(frozen=True)
class BatchResult:
    stored: int  # new rows in events
    duplicates: int  # event rows dropped as already stored (in this batch or earlier)
    dead_letters: int  # bad payloads, and (issue 17) events refused here: future_ts, foreign_device
    heartbeats: int  # device heartbeats folded into device_state
    #: Dead letters this write made itself (not in ``batch.dead_letters``), by reason (issue 17).
    refused: dict[str, int] = field(default_factory=dict)


@dataclass
class KnownRows:
    """What this process knows is already in ``gateways``/``devices``, to skip those upserts.

    Only a hint: ``clear()`` it when the database refuses a batch (a row may have been deleted).
    """

    gateways: dict[str, float] = field(default_factory=dict)  # gateway -> when last_seen_at was set
    devices: dict[str, str] = field(default_factory=dict)  # device -> gateway

    def clear(self) -> None:
        self.gateways.clear()
        self.devices.clear()


#: Refresh gateways.last_seen_at from events at most this often per gateway.
GATEWAY_SEEN_REFRESH_S = 10.0


def prepare(conn: psycopg.Connection) -> None:
    """Per-connection setup (the staging table lives as long as the connection)."""
    conn.execute(CREATE_STAGE)
    conn.commit()


_NULL = "\\N"


def stage_text(events: Iterable[tuple[str, Event]]) -> str:
    """The COPY text of a batch's events. Ids are protocol-validated (``[A-Za-z0-9._:-]``) and
    kinds are fixed words, so nothing needs escaping.
    """
    return "".join(
        [
            f"{gw}\t{ev.device_id}\t{ev.seq}\t{ev.ts_ms}\t{ev.kind}\t{_NULL if ev.value is None else repr(ev.value)}\n"
            for gw, ev in events
        ]
    )


def split_future(batch: Batch, now: float) -> tuple[list[tuple[str, Event]], list[DeadLetter]]:
    """The batch's events whose device time is acceptable at ``now`` (the service clock), and dead
    letters (``future_ts``) for those dated beyond it plus ``protocol.MAX_CLOCK_AHEAD_MS``. Only
    walks the events when the batch's newest device time is too far ahead (rare).
    """
    events = list(batch.events.values())
    now_ms = int(now * 1000)
    if batch.newest_ts_ms <= now_ms + protocol.MAX_CLOCK_AHEAD_MS:
        return events, []
    kept: list[tuple[str, Event]] = []
    dead: list[DeadLetter] = []
    for gw, ev in events:
        try:
            protocol.check_device_time(ev.ts_ms, now_ms)
        except ProtocolError as exc:
            dead.append(DeadLetter(protocol.event_topic(gw, ev.device_id), protocol.encode_event(ev), exc.reason, exc.detail))
        else:
            kept.append((gw, ev))
    return kept, dead


def write_batch(conn: psycopg.Connection, batch: Batch, now: float, known: KnownRows | None = None) -> BatchResult:
    """Write ``batch`` and commit. Raises psycopg errors (the caller retries or isolates).

    Round trips: one COPY of the events, one COPY of dead letters (if any), then every statement
    and the COMMIT in one pipeline. Events dated too far past ``now`` and events for a device paired
    under another gateway become dead letters (issue 17).
    """
    now_dt: datetime = as_datetime(now)
    params = {"now": now_dt}
    events, future = split_future(batch, now)
    dead_letters = [*batch.dead_letters, *future]
    heartbeats = sum(1 for _, ev in events if ev.kind == "heartbeat")
    event_rows = len(events) - heartbeats
    need_gateways = need_devices = True
    if known is not None and events:
        devices = known.devices
        gateways = known.gateways
        need_devices = any(devices.get(ev.device_id) != gw for gw, ev in events)
        need_gateways = need_devices or any(
            now - gateways.get(gw, -1e18) >= GATEWAY_SEEN_REFRESH_S for gw in {gw for gw, _ in events}
        )
    events_cursor = reject_cursor = None
    try:
        with conn.cursor() as cur:
            if events:
                with cur.copy(COPY_STAGE) as copy:
                    copy.write(stage_text(events))
            if dead_letters:
                with cur.copy(COPY_DEAD_LETTERS) as copy:
                    copy.set_types(["timestamptz", "text", "bytea", "text", "text"])
                    for dl in dead_letters:
                        detail = dl.detail.replace("\x00", "\\x00") if dl.detail else None  # text rejects NUL
                        payload = dl.payload
                        if len(payload) > MAX_DEAD_LETTER_BYTES:  # issue 17: 64 KB per junk message was kept
                            detail = f"{detail or ''} (payload truncated from {len(payload)} bytes)".strip()
                            payload = payload[:MAX_DEAD_LETTER_BYTES]
                        copy.write_row((now_dt, dl.topic, payload, dl.reason, detail))
            with conn.pipeline():
                gateway_rows = _gateway_rows(events, batch, need_gateways)
                if gateway_rows:
                    ids = sorted(gateway_rows)
                    cur.execute(UPSERT_GATEWAYS, {"now": now_dt, "ids": ids,
                                                  "statuses": [gateway_rows[g][0] for g in ids],
                                                  "heartbeats": [gateway_rows[g][1] for g in ids]})
                if events:
                    reject_cursor = conn.cursor()
                    reject_cursor.execute(REJECT_FOREIGN, {"now": now_dt, "topic_root": protocol.ROOT})
                    if need_devices:
                        cur.execute(UPSERT_DEVICES, params)
                    if event_rows:
                        events_cursor = conn.cursor()
                        events_cursor.execute(INSERT_EVENTS, params)
                    cur.execute(UPSERT_DEVICE_STATE, {**params, "now_ms": int(now * 1000), **_DEVICE_STATE_KINDS})
                conn.commit()
        stored = events_cursor.rowcount if events_cursor is not None else 0
        foreign_events = foreign = 0
        if reject_cursor is not None:
            row = reject_cursor.fetchone()
            foreign_events, foreign = (int(row[0]), int(row[1])) if row else (0, 0)
    except BaseException:
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
        raise
    finally:
        for c in (events_cursor, reject_cursor):
            if c is not None:
                c.close()
    if known is not None and events:
        if need_devices:
            for gw, ev in events:
                known.devices[ev.device_id] = gw
        if need_gateways:
            for gw, _ in events:
                known.gateways[gw] = now
    refused = {reason: n for reason, n in (("future_ts", len(future)), ("foreign_device", foreign)) if n}
    return BatchResult(
        stored=stored,
        duplicates=event_rows - foreign_events - stored + batch.in_batch_duplicates,
        dead_letters=len(dead_letters) + foreign,
        heartbeats=heartbeats - (foreign - foreign_events),
        refused=refused,
    )


def _gateway_rows(events: list[tuple[str, Event]], batch: Batch,
                  with_event_gateways: bool) -> dict[str, tuple[str | None, str | None]]:
    """gateway_id -> (status or None, heartbeat JSON or None) of every gateway row to write."""
    rows: dict[str, tuple[str | None, str | None]] = {}
    if with_event_gateways:
        for gw, _ in events:
            rows[gw] = (None, None)
    for gw, status in batch.statuses.items():
        rows[gw] = (status, None)
    for gw, body in batch.gateway_heartbeats.items():
        rows[gw] = (rows.get(gw, (None, None))[0], json.dumps(body))
    return rows


PAIR_DEVICE = """
UPDATE devices SET household_id = %(household_id)s, kind = COALESCE(%(kind)s, kind),
                   room = COALESCE(%(room)s, room), paired_at = %(now)s
WHERE device_id = %(device_id)s
"""
REGISTER_DEVICE = """
INSERT INTO devices (device_id, household_id, kind, room, paired_at)
VALUES (%(device_id)s, %(household_id)s, %(kind)s, %(room)s, %(now)s)
ON CONFLICT (device_id) DO NOTHING
"""
# Events stored while the device was unpaired get the household now.
BACKFILL_EVENTS = "UPDATE events SET household_id = %(household_id)s WHERE device_id = %(device_id)s AND household_id IS NULL"


def pair_device(
    conn: psycopg.Connection,
    device_id: str,
    household_id: str,
    kind: str | None = None,
    room: str | None = None,
    *,
    now: float | None = None,
) -> int:
    """Attach a device (known or not yet seen) to a household; return how many stored events got
    the household. Runs in the caller's transaction (the caller commits).

    ``now`` (epoch seconds, from the caller's clock) stamps ``paired_at``; None uses the database's
    transaction time.
    """
    params = {
        "device_id": device_id,
        "household_id": household_id,
        "kind": kind,
        "room": room,
        "now": as_datetime(now) if now is not None else None,
    }
    with conn.cursor() as cur:
        if now is None:
            params["now"] = cur.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        cur.execute(PAIR_DEVICE, params)
        if cur.rowcount == 0:
            cur.execute(REGISTER_DEVICE, params)
        cur.execute(BACKFILL_EVENTS, params)
        return cur.rowcount


def write_batch_singly(conn: psycopg.Connection, batch: Batch, now: float) -> BatchResult:
    """Write item by item (after the database refused the batch as a whole); an item it refuses becomes a
    dead letter ``db_rejected``.
    """
    totals = [0, 0, 0, 0]
    for single in batch.singles():
        try:
            r = write_batch(conn, single, now)
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError, psycopg.InternalError) as exc:
            dl = Batch(batch.generation)
            dl.add(DeadLetter("", single.describe().encode(), "db_rejected", str(exc)[:200]))
            r = write_batch(conn, dl, now)
        for i, v in enumerate((r.stored, r.duplicates, r.dead_letters, r.heartbeats)):
            totals[i] += v
    totals[1] += batch.in_batch_duplicates
    return BatchResult(*totals)
