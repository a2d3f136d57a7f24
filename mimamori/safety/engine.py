"""The safety worker's side (psycopg, no HTTP): recognising answers in new events of households in open
checks (``recognise_new_events``, judged by the pure ``safety.recognise``).
"""

from __future__ import annotations

import psycopg

from mimamori.kernel.clock import Clock, as_datetime
from mimamori.safety import metrics, recognise
from mimamori.safety.records import _epoch, _rows, audit


def open_households(conn: psycopg.Connection) -> dict[str, list[tuple[int, float]]]:
    """Household -> [(check_id, started_at)] of open checks."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in _rows(conn, """SELECT a.household_id, c.check_id, c.started_at FROM safety_answers a
                            JOIN safety_checks c ON c.check_id = a.check_id WHERE c.closed_at IS NULL"""):
        out.setdefault(r["household_id"], []).append((int(r["check_id"]), r["started_at"].timestamp()))
    return out


def recognise_new_events(conn: psycopg.Connection, clock: Clock, cursor: float | None, *, lookback_s: float = 5.0,
                         window_s: float = recognise.DOUBLE_TOGGLE_WINDOW_S) -> tuple[float | None, int]:
    """Look at events received since ``cursor`` (minus ``lookback_s``, for batches that committed
    late) for households in open checks; re-judge those households from all their events since
    their check started (``recognise.recognise``) and record upgrades (no answer → sign of life →
    safe by double toggle). Returns (new cursor, households whose answer changed).
    """
    metrics.PASSES.inc()
    since_received = None if cursor is None else cursor - lookback_s  # None: first pass, everything of open checks
    open_hh = _rows(conn, """SELECT a.check_id, a.household_id, a.state, a.how, a.last_activity_at, c.started_at
                             FROM safety_answers a JOIN safety_checks c ON c.check_id = a.check_id
                             WHERE c.closed_at IS NULL""")
    if not open_hh:  # nothing to follow: the next check starts from its own start time
        return None, 0
    hids = sorted({r["household_id"] for r in open_hh})
    earliest = min(r["started_at"] for r in open_hh)
    touched = _rows(conn, """SELECT household_id, max(received_at) AS m FROM events
                             WHERE household_id = ANY(%s) AND time >= %s AND kind IN ('on','off','motion','open','close')
                             AND (%s::timestamptz IS NULL OR received_at > %s::timestamptz)
                             GROUP BY household_id""",
                    (hids, earliest, as_datetime(since_received) if since_received is not None else None,
                     as_datetime(since_received) if since_received is not None else None))
    newest = max((r["m"] for r in touched), default=None)
    new_cursor = max(filter(None, [cursor, _epoch(newest)]), default=None)
    if not touched:
        return new_cursor, 0
    touched_ids = [r["household_id"] for r in touched]
    received = {r["household_id"]: _epoch(r["m"]) for r in touched}
    events: dict[str, list[recognise.Ev]] = {}
    for r in _rows(conn, """SELECT e.household_id, extract(epoch FROM e.time)::float8 AS t, e.device_id, e.kind, e.seq
                            FROM events e WHERE e.household_id = ANY(%s) AND e.time >= %s
                            AND e.kind IN ('on','off','motion','open','close')""", (touched_ids, earliest)):
        events.setdefault(r["household_id"], []).append(recognise.Ev(r["t"], r["device_id"], r["kind"], int(r["seq"])))
    switchable: dict[str, set[str]] = {}
    for r in _rows(conn, "SELECT household_id, device_id FROM devices WHERE household_id = ANY(%s) AND kind IN ('bulb','plug')",
                   (touched_ids,)):
        switchable.setdefault(r["household_id"], set()).add(r["device_id"])
    changed = 0
    # stamped once the events are read (the pass began before): the answer is known from now on
    now = clock.now()
    with conn.transaction():
        for a in open_hh:
            hid = a["household_id"]
            if hid not in events:
                continue
            # devices never paired with a kind are taken as switchable when they sent on/off
            verdict = recognise.recognise(events[hid], since=a["started_at"].timestamp(),
                                          switchable=switchable.get(hid) or None, window_s=window_s)
            if verdict.last_activity is not None and (a["last_activity_at"] is None
                                                      or verdict.last_activity > a["last_activity_at"].timestamp()):
                conn.execute("""UPDATE safety_answers SET last_activity_at = %s, updated_at = %s
                                WHERE check_id = %s AND household_id = %s""",
                             (as_datetime(verdict.last_activity), as_datetime(now), a["check_id"], hid))
            if not recognise.upgrades(a["state"], a["how"], verdict.state):
                continue
            how = "double_toggle" if verdict.state == "safe" else "activity"
            cur = conn.execute("""UPDATE safety_answers SET state = %s, how = %s, answered_at = %s, device_id = %s,
                                         updated_at = %s
                                  WHERE check_id = %s AND household_id = %s AND state = %s
                                  AND (how IS NULL OR how IN ('activity', 'double_toggle'))""",
                               (verdict.state, how, as_datetime(verdict.at or now), verdict.device_id, as_datetime(now),
                                a["check_id"], hid, a["state"]))
            if cur.rowcount:
                changed += 1
                metrics.ANSWERS_RECOGNISED.labels(verdict.state).inc()
                if received.get(hid) is not None:
                    metrics.RECOGNITION_LATENCY.observe(max(0.0, now - received[hid]))
                audit(conn, a["check_id"], hid, now, None, f"recognised_{verdict.state}", "mqtt",
                       {"how": how, "device_id": verdict.device_id, "at": verdict.at, "recognised_at": now})
    return new_cursor, changed
