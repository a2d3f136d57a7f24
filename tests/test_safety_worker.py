"""The worker's recognition pass on a real PostgreSQL (no broker): new events of households in open
checks are judged once they are stored, also when their batch committed after the cursor moved
(look-back); a person's answer is never overridden; a closed check is no longer followed; a blink is
queued for every bulb (a plug only when allowed); replays change nothing.
"""

from __future__ import annotations

import psycopg
import pytest

from mimamori.kernel.clock import ManualClock, as_datetime
from mimamori.kernel.config import Settings
from mimamori.kernel.signing import signer
from mimamori.safety import engine, records, service
from mimamori.safety.models import Actor

pytestmark = [pytest.mark.integration]
T0 = 1_767_225_600.0
OPER = Actor("oper", "operator")


def _seed(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO people (person_id, display_name, role) VALUES ('oper', 'op', 'operator')")
    for i in range(1, 5):
        conn.execute("INSERT INTO households (household_id, display_name, area) VALUES (%s, %s, 'north')", (f"h{i}", f"家{i}"))
        conn.execute("INSERT INTO gateways (gateway_id, household_id, status) VALUES (%s, %s, 'online')", (f"gw{i}", f"h{i}"))
        conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES (%s, %s, %s, 'bulb')",
                     (f"b{i}", f"gw{i}", f"h{i}"))
        conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES (%s, %s, %s, 'motion')",
                     (f"m{i}", f"gw{i}", f"h{i}"))
    conn.execute("INSERT INTO devices (device_id, gateway_id, household_id, kind) VALUES ('p1', 'gw1', 'h1', 'plug')")


def _event(conn: psycopg.Connection, device: str, seq: int, t: float, kind: str, received: float) -> None:
    hid = "h" + device[1:]
    conn.execute("INSERT INTO events (time, household_id, device_id, seq, kind, received_at) VALUES (%s, %s, %s, %s, %s, %s)",
                 (as_datetime(t), hid, device, seq, kind, as_datetime(received)))


def _states(conn: psycopg.Connection, cid: int) -> dict[str, tuple[str, str | None]]:
    return {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT household_id, state, how FROM safety_answers WHERE check_id = %s", (cid,))}


def test_recognition_pass(pg_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(T0)
    links = records.Links(signer(Settings(secret_key="k", data_dir=tmp_path), "safety-answer"), "http://x")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        _seed(conn)
        _event(conn, "b1", 0, T0 - 5, "off", T0 - 5)  # before the check: counts for nothing
        cid = service.start_check(conn, OPER, message="地震", area="north", clock=clock, links=links)
        blinks = conn.execute("SELECT recipient FROM safety_deliveries WHERE check_id = %s AND channel = 'mqtt' ORDER BY 1",
                              (cid,)).fetchall()
        # the plug is not switched: plugs blink only with devices.blink_allowed (a heater, a fridge: issue 13)
        assert [b[0] for b in blinks] == ["device:b1", "device:b2", "device:b3", "device:b4"]
        cursor, changed = engine.recognise_new_events(conn, clock, None)
        assert changed == 0 and _states(conn, cid)["h1"] == ("no_answer", None)

        clock.advance(5)
        _event(conn, "b1", 1, T0 + 3, "on", T0 + 4)       # with the one before the start: not a double toggle
        _event(conn, "m2", 0, T0 + 3, "motion", T0 + 4)
        _event(conn, "b3", 0, T0 + 2, "off", T0 + 4)
        _event(conn, "b3", 1, T0 + 3, "on", T0 + 4)        # a double toggle
        cursor, changed = engine.recognise_new_events(conn, clock, cursor)
        assert changed == 3
        assert _states(conn, cid) == {"h1": ("sign_of_life", "activity"), "h2": ("sign_of_life", "activity"),
                                      "h3": ("safe", "double_toggle"), "h4": ("no_answer", None)}
        assert engine.recognise_new_events(conn, clock, cursor)[1] == 0  # a replay changes nothing

        # h4 says it needs help; a later double toggle does not turn that into "safe"
        service.answer_in_app(conn, OPER, cid, "h4", "needs_help", note="電話で確認", clock=clock)
        clock.advance(5)
        # this batch committed late: its received_at is before the cursor, within the look-back
        late = cursor - 2.0
        _event(conn, "b1", 2, T0 + 8, "off", late)        # with seq 1 (on at +3): 5 s apart -> double toggle
        _event(conn, "b4", 0, T0 + 8, "off", late)
        _event(conn, "b4", 1, T0 + 9, "on", late)
        cursor, changed = engine.recognise_new_events(conn, clock, cursor, lookback_s=5.0)
        assert changed == 1
        assert _states(conn, cid)["h1"] == ("safe", "double_toggle")
        assert _states(conn, cid)["h4"] == ("needs_help", "on_behalf")
        last = conn.execute("SELECT last_activity_at FROM safety_answers WHERE check_id = %s AND household_id = 'h4'",
                            (cid,)).fetchone()[0]
        assert last == as_datetime(T0 + 9)

        # closed: no longer followed
        service.close_check(conn, OPER, cid, clock=clock)
        _event(conn, "b2", 0, T0 + 20, "off", T0 + 21)
        _event(conn, "b2", 1, T0 + 21, "on", T0 + 21)
        assert engine.recognise_new_events(conn, clock, cursor)[1] == 0
        assert _states(conn, cid)["h2"] == ("sign_of_life", "activity")
        pending = conn.execute("SELECT count(*) FROM safety_deliveries WHERE check_id = %s AND status = 'pending'",
                               (cid,)).fetchone()[0]
        assert pending == 0  # closing dropped the unsent blinks
        audit = [r[0] for r in conn.execute("SELECT action FROM safety_audit WHERE check_id = %s AND household_id = 'h3'", (cid,))]
        assert audit == ["recognised_safe"]
