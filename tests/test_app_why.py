"""Why an alert was raised, in words on the alert page (mimamori/app/incidents/why.py)."""

from __future__ import annotations

import json

import psycopg
import pytest

from mimamori.app.incidents.why import explain
from support.web import app_client, cookie_login

SILENCE = {"silence_start": "2026-01-20T13:18:00+00:00", "expected_activity_by": "2026-01-20T22:30:00+00:00",
           "alarm_at": "2026-01-21T02:00:00+00:00", "score": 3.0, "rule": "routine"}


@pytest.mark.unit
def test_inactivity_says_since_when_usually_by_when_and_which_rule() -> None:
    ja = explain("ja", {"kind": "inactivity", "rule": "model:routine", "evidence": SILENCE})
    assert ja == ["2026年1月20日 22:18から、明かりやセンサーに生活の動きがありません。",
                  "この家では、ふだんは2026年1月21日 07:30までに動きがあります。",
                  "毎日決まった時間帯（夕方の明かりなど）に、今日は動きがありませんでした。"]
    en = explain("en", {"kind": "inactivity", "rule": "model:hard_cap", "evidence": SILENCE})
    assert en[0] == "No sign of life from the lights or sensors since 2026-01-20 22:18." and en[-1] == "Nothing for 24 hours."
    # A learned "usually by" later than the alarm (the safety net fired first) is not claimed.
    late = {**SILENCE, "expected_activity_by": "2026-01-21T09:00:00+00:00"}
    assert not any("ふだん" in line for line in explain("ja", {"kind": "inactivity", "rule": "model:hard_cap", "evidence": late}))
    # a home that asks its resident first decided sooner: said so
    asked = explain("ja", {"kind": "inactivity", "rule": "model:model", "evidence": {**SILENCE, "asked_first": True}})
    assert asked[-1] == "ご本人に先に確認するお宅のため、いつもより早めに判断しました。"
    assert not any("早めに" in line for line in ja)


@pytest.mark.unit
def test_long_on_device_and_area_alerts_name_what_the_detector_saw() -> None:
    devices = {"bulb-1": {"room": "居間", "kind": "bulb"}}
    long_on = {"kind": "long_on", "rule": "model:long_on",
               "evidence": {"device": "bulb-1", "on_since": "2026-01-20T08:05:00+00:00", "silence_start": "2026-01-20T11:40:00+00:00"}}
    assert explain("ja", long_on, devices) == ["居間の電球が2026年1月20日 17:05からついたままです。",
                                                "2026年1月20日 20:40から、ほかに動きがありません。"]
    assert explain("en", long_on, {})[0] == "The unknown (bulb-1) has been on since 2026-01-20 17:05."
    gateway = {"kind": "device_offline", "evidence": {"devices": ["bulb-1"], "gateway_offline": True}}
    assert explain("ja", gateway, devices) == ["家の中継機（ゲートウェイ）と通信できません。"]
    dead = {"kind": "device_offline", "evidence": {"devices": ["bulb-1"], "gateway_offline": False}}
    assert explain("ja", dead, devices) == ["応答しない機器: 居間の電球"]
    assert "停電" in explain("ja", {"kind": "area_outage", "evidence": {}})[0]
    assert explain("ja", {"kind": "safety_check", "evidence": {"safety_check_id": 1}}) == []
    assert explain("ja", {"kind": "inactivity", "evidence": {"silence_start": "not a time"}}) == []


@pytest.mark.integration
def test_the_alert_page_shows_why(world) -> None:
    url, clock, ids = world
    evidence = {"device": "bulb-h1", "on_since": "2026-01-20T08:05:00+00:00", "silence_start": "2026-01-20T11:40:00+00:00"}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE incidents SET kind = 'long_on', rule = 'model:long_on', evidence = %s WHERE incident_id = %s",
                     (json.dumps(evidence), ids["h1"]))
    with app_client(url, clock) as c:
        cookie_login(c, "watcher_a")
        page = c.get(f"/alerts/{ids['h1']}").text
        assert "なぜ知らせたか" in page and "居間の電球が2026年1月20日 17:05からついたままです。" in page


@pytest.mark.unit
def test_every_detector_rule_has_a_sentence() -> None:
    from mimamori.app.i18n import translate
    from mimamori.app.incidents.why import RULE_TEXTS
    from mimamori.detector import model as m

    for rule in m.RULES:
        if rule == "none":
            continue
        key = RULE_TEXTS[f"model:{rule}"]
        assert translate("ja", key) != key and translate("en", key) != key
