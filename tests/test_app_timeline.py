"""The team timeline in words: every action the alert engine and the safety check can write has a
Japanese and an English sentence (found by reading the engines' source, so a new action without a
text fails here), people are named only where the reader may see them, raw codes never show. (The
alert page's timeline and the chain editor are checked in test_app_api.py, on its seeded world.)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import mimamori.app.safety  # noqa: F401  (merges the safety check's strings)
from mimamori.app.i18n import MESSAGES
from mimamori.app.incidents.timeline import action_key, chain_step_text, describe
from support.web import app_client, cookie_login

ROOT = Path(__file__).parent.parent
#: Every module of the two engines (they split their services into service, engine, records, links ...).
ENGINE_FILES = tuple(sorted(p.relative_to(ROOT).as_posix() for stage in ("alerts", "safety") for p in (ROOT / "mimamori" / stage).glob("*.py")))


def _const(node: ast.AST) -> list[str] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        a, b = _const(node.body), _const(node.orelse)
        return a + b if a is not None and b is not None else None
    return None


def _fstring_prefix(node: ast.AST) -> str | None:
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def engine_actions() -> tuple[set[str], set[str]]:
    """(timeline actions, safety audit actions) the engines can write, read from their source."""
    from mimamori.safety.models import ANSWERS, ON_BEHALF_ANSWERS

    expansions = {  # the f-string actions, and the values their placeholder takes
        "answered_": set(ANSWERS) | set(ON_BEHALF_ANSWERS),
        "recognised_": {"safe", "sign_of_life"},  # safety.recognise: a verdict other than no_answer
    }
    timeline: set[str] = set()
    audit: set[str] = set()
    reasons: set[str] = set()  # across files: the writer and its callers may live in different modules
    for rel in ENGINE_FILES:
        path = ROOT / rel
        if not path.exists():
            continue
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        for node in ast.walk(tree):
            # _tell_team_needs_help(..., reason="needs_help"): timeline action f"safety_{reason}"
            if isinstance(node, ast.FunctionDef) and node.name == "_tell_team_needs_help":
                for arg, default in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True):
                    if arg.arg == "reason" and default is not None:
                        reasons |= set(_const(default) or [])
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            for kw in node.keywords:
                if name == "_tell_team_needs_help" and kw.arg == "reason":
                    reasons |= set(_const(kw.value) or [])
            if name in ("_timeline", "add_timeline") and len(node.args) > 4:
                if isinstance(node.args[4], ast.Attribute) and node.args[4].attr == "action":
                    continue  # a policy.Log's action: found below, where the policy builds them
                found = _const(node.args[4])
                assert found is not None, f"{rel}:{node.lineno}: a timeline action that is not a literal"
                timeline |= set(found)
            elif name == "Log" and node.args:
                found = _const(node.args[0])
                assert found is not None, f"{rel}:{node.lineno}"
                timeline |= set(found)
            elif name in ("_audit", "audit") and len(node.args) > 5:
                found = _const(node.args[5])
                if found is None:
                    prefix = _fstring_prefix(node.args[5])
                    assert prefix in expansions, f"{rel}:{node.lineno}: an audit action this test cannot expand"
                    found = [prefix + v for v in expansions[prefix]]
                audit |= set(found)
            elif name == "execute" and node.args and "INSERT INTO incident_timeline" in (_const(node.args[0]) or [""])[0]:
                sql = (_const(node.args[0]) or [""])[0]
                literal = re.findall(r"VALUES\s*\([^)]*?'([a-z_]+)'", sql)
                timeline |= set(literal)
                if not literal:  # the action is a parameter: an f-string over the reasons
                    prefixes = [_fstring_prefix(a) for a in ast.walk(node.args[1]) if isinstance(a, ast.JoinedStr)]
                    assert prefixes and prefixes[0] == "safety_", f"{rel}:{node.lineno}"
                    timeline.add("safety_{reason}")
    if "safety_{reason}" in timeline:
        timeline.remove("safety_{reason}")
        assert reasons, "no reasons found for safety_{reason}"
        timeline |= {f"safety_{r}" for r in reasons}
    return timeline, audit


@pytest.mark.unit
def test_the_scan_finds_the_engines_actions() -> None:
    timeline, audit = engine_actions()
    # a sample of each kind of writer, so a broken scan cannot pass by finding nothing
    assert {"claimed", "notified", "unreachable", "delivered", "blinked", "claim_expired"} <= timeline
    assert {"nobody_to_notify", "repeat", "escalation_finished"} <= timeline            # policy.Log
    assert {"safety_check_opened", "safety_needs_help", "safety_no_answer", "safety_check_closed"} <= timeline
    assert {"started", "answered_safe", "answered_sign_of_life", "recognised_safe", "team_alerted"} <= audit


@pytest.mark.unit
def test_every_engine_action_has_words_in_both_languages() -> None:
    timeline, audit = engine_actions()
    from mimamori.alerts.resident import ANSWERS as RESIDENT_ANSWERS

    # the resident's answer reads by the answer given (its data), one text per answer
    entries = [{"action": a, "data": {}} for a in timeline - {"resident_answered"}]
    entries += [{"action": "resident_answered", "data": {"answer": answer}} for answer in RESIDENT_ANSWERS]
    missing = sorted(f"{e['action']} {e['data']}" for e in entries if action_key(e) == "tl_unknown")
    assert not missing, f"timeline actions without a text in mimamori/app/i18n.py (tl_<action>): {missing}"
    missing = sorted(a for a in audit if f"safety_audit_{a}" not in MESSAGES)
    assert not missing, f"safety audit actions without a text (safety_audit_<action>): {missing}"
    names = {"p1": "佐藤 花子"}
    for action in timeline:
        for data in ({}, {"person_id": "p1", "people": ["p1"], "recipient": "p1", "reason": "claim_expired",
                          "outcome": "fine", "round": 2, "until": 1_769_000_000.0}):
            for body in (None, "no channel besides the app", "every channel failed"):
                entry = {"action": action, "data": data, "body": body, "channel": "email"}
                ja, en = describe("ja", entry, names), describe("en", entry, names)
                assert ja and en and "{" not in ja + en, (action, ja, en)
                assert action not in ja or action == "line", (action, ja)  # never the raw code
                assert not re.search(r"[A-Za-z]{4,}", ja.replace("LINE", "")), (action, ja)  # Japanese only


@pytest.mark.unit
def test_names_reasons_and_unknown_actions() -> None:
    names = {"w1": "見守り 太郎"}
    notified = {"action": "notified", "data": {"people": ["w1", "stranger"]}, "channel": "system"}
    assert describe("ja", notified, names) == "見守り 太郎さん、ほか1名に知らせました"
    assert describe("en", notified, names) == "notified 見守り 太郎, 1 more"
    unreachable = {"action": "unreachable", "body": "no channel besides the app", "data": {"person_id": "w1"}}
    assert "アプリ以外の連絡手段がありません" in describe("ja", unreachable, names)
    assert "見守り 太郎" in describe("ja", unreachable, names)
    assert describe("ja", {**unreachable, "data": {"person_id": "stranger"}}, names).startswith("担当の方")
    # The engine now records the reason as a code in the data; the body is only an English note.
    coded = {"action": "unreachable", "body": "whatever the note says", "data": {"person_id": "w1", "reason": "all_failed"}}
    assert "どの連絡手段でも届きませんでした" in describe("ja", coded, names)
    assert "アプリ以外" in describe("ja", {**coded, "data": {"person_id": "w1", "reason": "no_channel"}}, names)
    unknown = {"action": "some_future_action", "data": {}}
    assert describe("ja", unknown, names) == "（その他の記録）"
    assert describe("en", unknown, names) == "(another recorded step)"
    paused = {"action": "escalation_paused", "data": {"reason": "area_outage"}}
    assert "通信障害" in describe("ja", paused, names)
    assert "claim expired" in describe("en", {"action": "escalation_resumed", "data": {"reason": "claim_expired"}}, {})


@pytest.mark.unit
def test_chain_steps_in_words_include_claim_timeout() -> None:
    step = {"type": "claim_timeout", "minutes": 60, "grace_minutes": 20}
    assert "60分" in chain_step_text("ja", step) and "20分" in chain_step_text("ja", step)
    assert "60 minutes" in chain_step_text("en", step)
    assert chain_step_text("ja", {"type": "notify", "tiers": [1]}) == "1番目の連絡先に知らせる"
    assert "unknown step" in chain_step_text("en", {"type": "teleport"})


@pytest.mark.integration
def test_watchers_see_their_households_safety_follow_ups(world) -> None:
    from support.web import bearer

    url, clock, _ids = world
    with app_client(url, clock) as c:
        coord, wa, wb = (bearer(c, p) for p in ("coord_a", "watcher_a", "watcher_b"))
        r = c.post("/api/safety/checks", json={"message": "地震がありました。無事ですか？", "area": "north"}, headers=coord)
        assert r.status_code == 201, r.text
        cid = r.json()["check_id"]
        r = c.post(f"/api/safety/checks/{cid}/households/h1/claim", headers=coord)  # the coordinator goes to h1
        assert r.status_code == 200, r.text
        follow_up = r.json()["incident_id"]
        listed = {i["incident_id"]: i for i in c.get("/api/alerts", headers=wa).json()}
        assert follow_up in listed and listed[follow_up]["kind"] == "safety_check"
        assert follow_up not in {i["incident_id"] for i in c.get("/api/alerts", headers=wb).json()}  # not h3's team
        cookie_login(c, "watcher_a")
        home = c.get("/").text
        assert f'href="/safety/{cid}/h/h1" data-incident="{follow_up}"' in home and "安否確認" in home
        alert = c.get(f"/alerts/{follow_up}").text
        assert "安否確認: 田中 一郎" in alert and f'href="/safety/{cid}/h/h1"' in alert
        # the safety household page's team timeline, in words
        page = c.get(f"/safety/{cid}/h/h1").text
        assert "安否確認の対応を始めました" in page and "name-coord_a</strong> さんが向かいます" in page
        assert "safety_check_opened" not in page
        # closed by the check: no longer in the list
        assert c.post(f"/api/safety/checks/{cid}/close", headers=coord).status_code == 200
        assert follow_up not in {i["incident_id"] for i in c.get("/api/alerts", headers=wa).json()}
