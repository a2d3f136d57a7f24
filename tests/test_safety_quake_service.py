"""Earthquake bulletins → safety checks on a real PostgreSQL (mimamori/safety/quake_service.py, `safety feed`):
the right areas' checks start, once per quake over repeated and corrected bulletins and re-deliveries;
drills, tests, weak quakes and cancellations start none; propose-mode areas get a proposal their
coordinator sees and can accept; every document's decisions are recorded with why."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import typer
from typer.testing import CliRunner

from mimamori.cli.quake import safety_app
from mimamori.kernel.clock import ManualClock
from mimamori.kernel.config import Settings
from mimamori.kernel.signing import signer
from mimamori.safety import quake, quake_service, service
from mimamori.safety.models import Actor, Forbidden, InvalidInput

pytestmark = [pytest.mark.integration]
DATA = Path(__file__).parent / "data" / "quake"
T0 = 1_249_934_940.0  # 2009-08-11 05:09 JST
OPER = Actor("oper", "operator")
TOKYO_COORD = Actor("coord-tokyo", "coordinator", "tokyo")


def doc(name: str) -> bytes:
    return (DATA / name).read_bytes()


SURUGA_1 = doc("32-35_07_01_100915_VXSE51.xml")
SURUGA_2 = doc("32-35_07_02_100915_VXSE51.xml")
# A correction of the second bulletin: only Head/InfoType differs (no real 訂正 intensity bulletin was found, SOURCES.md)
SURUGA_2_CORRECTED = SURUGA_2.replace("<InfoType>発表</InfoType>".encode(), "<InfoType>訂正</InfoType>".encode())
# JMA drills and tests are the same documents with Control/Status 訓練/試験; a new EventID so it is not the quake above
SURUGA_DRILL = SURUGA_1.replace("<Status>通常</Status>".encode(), "<Status>訓練</Status>".encode()).replace(
    b"20090811050711", b"20090901100000")
SURUGA_TEST = SURUGA_DRILL.replace("<Status>訓練</Status>".encode(), "<Status>試験</Status>".encode())
TAMURA_1 = doc("20210216233339_0_VXSE53_010000.xml")
IBURI = doc("p2pquake_551_20180906_DetailScale.json")


@pytest.fixture
def links(tmp_path: Path) -> service.Links:
    return service.Links(signer(Settings(secret_key="k", data_dir=tmp_path), "safety-answer"), "http://x")


def _seed(conn: psycopg.Connection, clock: ManualClock) -> None:
    conn.execute("INSERT INTO people (person_id, display_name, role) VALUES ('oper', 'op', 'operator')")
    conn.execute("INSERT INTO people (person_id, display_name, role, area) VALUES ('coord-tokyo', '東京の調整役', 'coordinator', 'tokyo')")
    conn.execute("""INSERT INTO people (person_id, display_name, role, area)
                    VALUES ('coord-shizuoka', '静岡の調整役', 'coordinator', 'shizuoka-chubu')""")
    for area, n in (("shizuoka-chubu", 3), ("nagano-nanbu", 2), ("tokyo", 2), ("tamura", 1), ("atsuma", 1)):
        for i in range(n):
            conn.execute("INSERT INTO households (household_id, display_name, area) VALUES (%s, %s, %s)",
                         (f"{area}-{i}", f"{area}の家{i}", area))
    quake_service.set_area(conn, OPER, area="shizuoka-chubu", region_codes=["442"], clock=clock)
    quake_service.set_area(conn, OPER, area="nagano-nanbu", region_codes=["422"], threshold="5弱", clock=clock)
    quake_service.set_area(conn, TOKYO_COORD, area="tokyo", region_names=["東京都２３区"], threshold="4", mode="propose",
                           clock=clock)
    quake_service.set_area(conn, OPER, area="tamura", municipality_codes=["0721100"], municipality_names=["田村市"],
                           clock=clock)
    quake_service.set_area(conn, OPER, area="atsuma", municipality_names=["厚真町"], clock=clock)
    quake_service.set_area(conn, OPER, area="empty", region_codes=["443"], clock=clock)  # no households


def _checks(conn: psycopg.Connection) -> list[tuple[str, int]]:
    return [(r[0], r[1]) for r in conn.execute(
        """SELECT c.area, count(a.household_id) FROM safety_checks c JOIN safety_answers a USING (check_id)
           GROUP BY c.check_id, c.area ORDER BY c.check_id""")]


def _by_area(result: dict[str, object]) -> dict[str | None, str]:
    return {d["area"]: d["decision"] for d in result["decisions"]}  # type: ignore[attr-defined, index]


def test_bulletins_start_each_area_once(pg_url: str, links: service.Links) -> None:
    clock = ManualClock(T0)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        _seed(conn, clock)

        first = quake_service.feed(conn, SURUGA_1, clock=clock, links=links)
        assert _by_area(first) == {"shizuoka-chubu": "start", "nagano-nanbu": "below", "tokyo": "propose",
                                   "tamura": "not_affected", "atsuma": "not_affected", "empty": "failed"}
        assert _checks(conn) == [("shizuoka-chubu", 3)]
        empty = next(d for d in first["decisions"] if d["area"] == "empty")
        assert "no households" in empty["why"] and empty["check_id"] is None
        # started by the system: no person behind it
        row = conn.execute("SELECT started_by, message FROM safety_checks").fetchone()
        assert row is not None and row[0] is None and "震度6弱" in row[1]
        assert conn.execute("SELECT actor FROM safety_audit WHERE action = 'started'").fetchone() == (None,)

        clock.advance(15)
        again = quake_service.feed(conn, SURUGA_1, clock=clock, links=links)   # the same document delivered twice
        assert again["duplicate"] is True and _by_area(again) == _by_area(first)
        second = quake_service.feed(conn, SURUGA_2, clock=clock, links=links)  # a later bulletin of the same quake
        assert _by_area(second)["shizuoka-chubu"] == "already" and _by_area(second)["nagano-nanbu"] == "start"
        assert _by_area(second)["tokyo"] == "already"
        clock.advance(60)
        corrected = quake_service.feed(conn, SURUGA_2_CORRECTED, clock=clock, links=links)
        assert {a: d for a, d in _by_area(corrected).items() if d != "not_affected"} == {
            "shizuoka-chubu": "already", "nagano-nanbu": "already", "tokyo": "already", "empty": "failed"}
        assert _checks(conn) == [("shizuoka-chubu", 3), ("nagano-nanbu", 2)]
        # the area's coordinator was told once that the system started the check
        told = conn.execute("""SELECT person_id, title FROM notifications WHERE notice = 'quake_check_started'""").fetchall()
        assert told == [("coord-shizuoka", "地震: shizuoka-chubuで震度6弱 — 安否確認を自動で始めました")]

        # the record: every document, every area's decision and why
        assert conn.execute("SELECT count(*) FROM quake_documents WHERE quake_id = 'jma:20090811050711'").fetchone() == (3,)
        rows = conn.execute("""SELECT d.kind, q.area, q.decision, q.why FROM quake_decisions q
                               JOIN quake_documents d USING (document_id) WHERE q.area = 'nagano-nanbu'
                               ORDER BY q.decision_id""").fetchall()
        assert [r[2] for r in rows] == ["below", "start", "already"] and "震度4" in rows[0][3]


def test_drills_tests_weak_and_cancelled_start_nothing(pg_url: str, links: service.Links) -> None:
    clock = ManualClock(T0)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        _seed(conn, clock)
        for data, expected in ((SURUGA_DRILL, "drill"), (SURUGA_TEST, "drill")):
            result = quake_service.feed(conn, data, clock=clock, links=links)
            assert _by_area(result) == {None: expected} and "never pages" in result["decisions"][0]["why"]
        weak = quake_service.feed(conn, TAMURA_1, clock=clock, links=links)  # 田村市 震度1
        assert _by_area(weak)["tamura"] == "below"
        cancel = quake_service.feed(conn, doc("32-39_05_12_100915_VXSE53.xml"), clock=clock, links=links)
        assert _by_area(cancel) == {None: "cancelled"}
        assert _checks(conn) == []
        assert conn.execute("SELECT count(*) FROM notifications").fetchone() == (0,)


def test_propose_mode_and_cancellation_withdraws(pg_url: str, links: service.Links) -> None:
    clock = ManualClock(T0)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        _seed(conn, clock)
        quake_service.feed(conn, SURUGA_1, clock=clock, links=links)
        # the coordinator of the area is told, in the app
        note = conn.execute("SELECT person_id, notice, title FROM notifications WHERE notice = 'quake_proposal'").fetchall()
        assert note == [("coord-tokyo", "quake_proposal", "地震: tokyoで震度4 — 安否確認を始めますか？")]
        (proposal,) = quake_service.list_proposals(conn, TOKYO_COORD)
        assert (proposal["area"], proposal["scale"], proposal["check_id"]) == ("tokyo", 40, None)
        assert quake_service.list_proposals(conn, Actor("c2", "coordinator", "elsewhere")) == []
        with pytest.raises(Forbidden):
            quake_service.accept_proposal(conn, Actor("c2", "coordinator", "elsewhere"), proposal["quake_id"], "tokyo",
                                          clock=clock, links=links)
        check_id = quake_service.accept_proposal(conn, TOKYO_COORD, proposal["quake_id"], "tokyo", clock=clock, links=links)
        assert conn.execute("SELECT area, started_by FROM safety_checks WHERE check_id = %s", (check_id,)).fetchone() == (
            "tokyo", "coord-tokyo")
        with pytest.raises(InvalidInput, match="accepted"):
            quake_service.accept_proposal(conn, TOKYO_COORD, proposal["quake_id"], "tokyo", clock=clock, links=links)

    # a withdrawn bulletin withdraws its open proposals (the published 取消 sample, pointed at this quake)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DELETE FROM quake_actions")
        quake_service.feed(conn, SURUGA_2, clock=clock, links=links)
        assert [p["area"] for p in quake_service.list_proposals(conn, OPER)] == ["tokyo"]
        cancel = doc("32-39_05_12_100915_VXSE53.xml").replace(b"20100227153529", b"20090811050711")
        result = quake_service.feed(conn, cancel, clock=clock, links=links)
        assert "1 proposal(s) withdrawn" in result["decisions"][0]["why"]
        assert quake_service.list_proposals(conn, OPER) == []


def test_p2pquake_station_starts_its_municipality(pg_url: str, links: service.Links) -> None:
    clock = ManualClock(T0)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        _seed(conn, clock)
        result = quake_service.feed(conn, IBURI, clock=clock, links=links)
        atsuma = next(d for d in result["decisions"] if d["area"] == "atsuma")
        assert (atsuma["decision"], atsuma["intensity"]) == ("start", "5弱以上（未入電）")
        assert atsuma["matched"] == ["厚真町鹿沼:5弱以上（未入電）"]
        assert _checks(conn) == [("atsuma", 1)]


def test_bad_document_and_bad_area_settings_record_nothing(pg_url: str, links: service.Links) -> None:
    clock = ManualClock(T0)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        _seed(conn, clock)
        with pytest.raises(quake.QuakeDocumentError):
            quake_service.feed(conn, SURUGA_1[:200], clock=clock, links=links)
        assert conn.execute("SELECT count(*) FROM quake_documents").fetchone() == (0,)
        with pytest.raises(InvalidInput):
            quake_service.set_area(conn, OPER, area="x", municipality_codes=["12345"], clock=clock)
        with pytest.raises(InvalidInput):
            quake_service.set_area(conn, OPER, area="x", municipality_codes=["0721100"], threshold="8", clock=clock)
        with pytest.raises(Forbidden):
            quake_service.set_area(conn, TOKYO_COORD, area="tamura", municipality_codes=["0721100"], clock=clock)


def test_cli_feed_dry_run_then_for_real(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIMAMORI_DATA_DIR", str(tmp_path))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        _seed(conn, ManualClock(T0))
    path = DATA / "32-35_07_01_100915_VXSE51.xml"
    root = typer.Typer()  # as the lead wires it: `mimamori safety feed`
    root.add_typer(safety_app, name="safety")
    runner = CliRunner()
    late = runner.invoke(root, ["safety", "feed", "--file", str(path), "--dry-run", "--json", "--database-url", pg_url])
    assert late.exit_code == 0, late.output  # a 2009 bulletin read today pages nobody
    assert _by_area(json.loads(late.stdout.strip().splitlines()[-1])) == {None: "stale"}
    dry = runner.invoke(root, ["safety", "feed", "--file", str(path), "--dry-run", "--replay", "--json", "--database-url",
                               pg_url])
    assert dry.exit_code == 0, dry.output
    out = json.loads(dry.stdout.strip().splitlines()[-1])
    assert out["dry_run"] is True and _by_area(out)["shizuoka-chubu"] == "start"
    assert out["document"]["max_intensity"] == "6弱"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM quake_documents").fetchone() == (0,)
        assert _checks(conn) == []
    real = runner.invoke(root, ["safety", "feed", "--file", str(path), "--replay", "--json", "--database-url", pg_url])
    assert real.exit_code == 0, real.output
    out = json.loads(real.stdout.strip().splitlines()[-1])
    started = next(d for d in out["decisions"] if d["area"] == "shizuoka-chubu")
    assert started["decision"] == "start" and isinstance(started["check_id"], int)
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<Report>")
    refused = runner.invoke(root, ["safety", "feed", "--file", str(bad), "--json", "--database-url", pg_url])
    assert refused.exit_code == 2 and "not well-formed" in refused.stdout


def test_two_bulletins_of_one_quake_at_once_start_one_check(pg_url: str, links: service.Links) -> None:
    clock = ManualClock(T0)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        _seed(conn, clock)
    barrier = threading.Barrier(2)

    def read(data: bytes) -> dict[str, object]:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            barrier.wait()
            return quake_service.feed(conn, data, clock=clock, links=links)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(read, [SURUGA_1, SURUGA_2]))
    decisions = sorted(_by_area(r)["shizuoka-chubu"] for r in results)
    assert decisions == ["already", "start"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert sorted(_checks(conn)) == [("nagano-nanbu", 2), ("shizuoka-chubu", 3)]


def test_cli_area_settings(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIMAMORI_DATA_DIR", str(tmp_path))
    root = typer.Typer()
    root.add_typer(safety_app, name="safety")
    runner = CliRunner()
    ok = runner.invoke(root, ["safety", "area", "tamura", "--code", "0721100", "--name", "田村市", "--threshold", "1",
                              "--mode", "propose", "--json", "--database-url", pg_url])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout.strip().splitlines()[-1]) == {
        "area": "tamura", "municipality_codes": ["0721100"], "municipality_names": ["田村市"], "region_codes": [],
        "region_names": [], "threshold": "1", "mode": "propose"}
    bad = runner.invoke(root, ["safety", "area", "tamura", "--code", "721100", "--json", "--database-url", pg_url])
    assert bad.exit_code == 2 and "not a valid municipality code" in bad.stdout
    fed = runner.invoke(root, ["safety", "feed", "--file", str(DATA / "20210216233339_0_VXSE53_010000.xml"), "--dry-run",
                               "--replay", "--json", "--database-url", pg_url])
    assert fed.exit_code == 0, fed.output
    assert _by_area(json.loads(fed.stdout.strip().splitlines()[-1])) == {"tamura": "propose"}


def test_a_bulletin_read_hours_late_pages_nobody_unless_replayed(pg_url: str, links: service.Links) -> None:
    clock = ManualClock(T0 + 4 * 3600)  # the feed caught up after an outage, or an archive is fed in
    with psycopg.connect(pg_url, autocommit=True) as conn:
        _seed(conn, clock)
        late = quake_service.feed(conn, SURUGA_1, clock=clock, links=links)
        assert _by_area(late) == {None: "stale"} and "4.0 h" in late["decisions"][0]["why"]
        assert _checks(conn) == []
        replayed = quake_service.feed(conn, SURUGA_2, clock=clock, links=links, replay=True)  # on purpose
        assert _by_area(replayed)["shizuoka-chubu"] == "start"
