"""The household page's escalation-chain editor: the form parser (pure), the page against the real
app and PostgreSQL (save, refuse, re-render as typed, watchers refused), and one phone-sized browser
run (screenshot: test-artifacts/chain_editor.png).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from mimamori.alerts import policy
from mimamori.app.households.chain_form import (
    STEP_KINDS,
    apply_edit,
    parse_chain_form,
    rows_from_steps,
    steps_from_rows,
)
from mimamori.app.i18n import translate
from support.web import app_client, bearer, cookie_login, served

EVERY_KIND = [
    {"type": "notify", "tiers": [1, 2], "people": ["watcher_a"], "urgent": False},
    {"type": "wait", "minutes": 15},
    {"type": "notify_next", "tiers": [2]},
    {"type": "resident_check", "minutes": 2.5, "blinks": 4},
    {"type": "notify", "coordinator": True},
    {"type": "wait", "minutes": 30},
    {"type": "repeat", "times": 2},
    {"type": "claim_timeout", "minutes": 60, "grace_minutes": 20},
]


def form_of(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The fields a browser posts for these steps (as the page renders them)."""
    fields: dict[str, Any] = {}
    for i, s in enumerate(steps):
        kind = s["type"]
        fields[f"step-{i}-type"] = kind
        fields[f"step-{i}-urgent-shown"] = "1"
        if s.get("urgent", True):
            fields[f"step-{i}-urgent"] = "1"
        fields[f"step-{i}-tiers"] = [str(t) for t in s.get("tiers", [])]
        fields[f"step-{i}-people"] = list(s.get("people", []))
        if s.get("coordinator"):
            fields[f"step-{i}-coordinator"] = "1"
        for key in ("minutes", "blinks", "grace_minutes", "times"):
            if key in s:
                fields[f"step-{i}-{kind}-{key}"] = str(s[key])
    return fields


# --- the parser (pure) ---------------------------------------------------------------------------


@pytest.mark.unit
def test_every_step_kind_round_trips_through_the_form() -> None:
    assert {s["type"] for s in EVERY_KIND} == set(STEP_KINDS) == set(policy.STEP_FUNCTIONS)
    steps, errors = parse_chain_form(form_of(EVERY_KIND))
    assert errors == [] and steps == EVERY_KIND
    assert policy.validate_chain(steps) == EVERY_KIND  # what the engine stores is what was posted
    # and a stored chain shown as rows parses back to itself
    assert steps_from_rows(rows_from_steps(policy.validate_chain(EVERY_KIND))) == (EVERY_KIND, [])


@pytest.mark.parametrize(("change", "index", "key"), [
    ({"step-1-wait-minutes": "abc"}, 1, "chain_err_minutes"),
    ({"step-1-wait-minutes": "-5"}, 1, "chain_err_minutes"),
    ({"step-1-wait-minutes": str(policy.MAX_WAIT_MINUTES + 1)}, 1, "chain_err_minutes"),
    ({"step-3-resident_check-blinks": "2.5"}, 3, "chain_err_blinks"),
    ({"step-6-repeat-times": "11"}, 6, "chain_err_times"),
    ({"step-2-type": "teleport"}, 2, "chain_err_kind"),
    ({"step-2-tiers": []}, 2, "chain_err_who"),
    ({"step-0-tiers": ["12"]}, 0, "chain_err_tier"),
])
@pytest.mark.unit
def test_bad_input_names_the_step(change: dict[str, Any], index: int, key: str) -> None:
    _, errors = parse_chain_form({**form_of(EVERY_KIND), **change})
    assert [(e.index, e.key) for e in errors] == [(index, key)]
    assert f"手順 {index + 1}:" in translate("ja", errors[0].key, step=index + 1, **errors[0].values)
    assert f"Step {index + 1}:" in translate("en", errors[0].key, step=index + 1, **errors[0].values)


@pytest.mark.unit
def test_engine_rules_between_steps_name_the_step() -> None:
    _, errors = parse_chain_form(form_of([{"type": "notify", "tiers": [1]}, {"type": "repeat", "times": 2}]))
    assert [(e.index, e.key) for e in errors] == [(1, "chain_err_repeat_needs_wait")]
    twice = [{"type": "claim_timeout", "minutes": 5, "grace_minutes": 5}] * 2
    _, errors = parse_chain_form(form_of([{"type": "notify", "tiers": [1]}, *twice]))
    assert [(e.index, e.key) for e in errors] == [(2, "chain_err_one_claim_timeout")]
    _, errors = parse_chain_form({})
    assert [(e.index, e.key) for e in errors] == [(None, "chain_err_count")]


@pytest.mark.unit
def test_edit_buttons_move_add_and_remove() -> None:
    rows = rows_from_steps(EVERY_KIND[:3])
    assert [r["type"] for r in apply_edit(rows, "up-1")] == ["wait", "notify", "notify_next"]
    assert [r["type"] for r in apply_edit(rows, "down-1")] == ["notify", "notify_next", "wait"]
    assert [r["type"] for r in apply_edit(rows, "remove-0")] == ["wait", "notify_next"]
    added = apply_edit(rows, "add", "resident_check")
    assert added[-1]["type"] == "resident_check" and steps_from_rows(added)[1] == []
    for noop in ("up-0", "down-2", "remove-9", "bogus"):
        assert apply_edit(rows, noop) == rows


# --- the page, against the real app and PostgreSQL -----------------------------------------------


def _chain(c: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    r = c.get("/api/alerts/chains/h1", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["steps"]


@pytest.mark.integration
def test_coordinator_saves_the_structured_form(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as c:
        api = bearer(c, "coord_a")
        default = _chain(c, api)
        csrf = cookie_login(c, "coord_a")
        page = c.get("/households/h1").text
        assert 'id="chain-form"' in page and 'name="step-0-type"' in page and "上級者向け" in page
        # an edit button re-renders with the edit applied, and saves nothing
        r = c.post("/households/h1/chain", data={**form_of(EVERY_KIND), "csrf_token": csrf, "op": "add", "new_kind": "wait"})
        assert r.status_code == 200 and 'name="step-8-wait-minutes"' in r.text and "まだ保存されていません" in r.text
        assert _chain(c, api) == default
        # save
        r = c.post("/households/h1/chain", data={**form_of(EVERY_KIND), "csrf_token": csrf, "op": "save"},
                   follow_redirects=False)
        assert r.status_code == 303, r.text
        assert _chain(c, api) == EVERY_KIND
        # invalid: 422 with the reason next to the step, the input kept, nothing saved
        bad = {**form_of(EVERY_KIND), "step-1-wait-minutes": "99999", "step-5-wait-minutes": "45", "csrf_token": csrf,
               "op": "save"}
        r = c.post("/households/h1/chain", data=bad)
        assert r.status_code == 422
        assert 'id="step-1-error"' in r.text and f"手順 2: 分は0〜{policy.MAX_WAIT_MINUTES}の数で" in r.text
        assert 'value="99999"' in r.text and 'value="45"' in r.text
        assert _chain(c, api) == EVERY_KIND
        c.get("/lang/en", follow_redirects=False)
        r = c.post("/households/h1/chain", data={**bad, "step-3-type": "teleport"})
        assert r.status_code == 422 and "Step 4: choose what to do" in r.text and "Step 2: minutes must be" in r.text
        assert "Advanced: edit as JSON" in r.text and "Notify the next one in turn" in r.text
        c.get("/lang/ja", follow_redirects=False)
        # the advanced JSON is still accepted by the same endpoint
        r = c.post("/households/h1/chain", data={"csrf_token": csrf, "steps": '[{"type": "notify", "tiers": [2]}]'},
                   follow_redirects=False)
        assert r.status_code == 303 and _chain(c, api) == [{"type": "notify", "tiers": [2]}]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM alert_admin_log WHERE action = 'chain_set'").fetchone()[0] == 2


@pytest.mark.integration
def test_watcher_and_other_area_cannot_post_the_form(world) -> None:
    url, clock, _ = world
    form = {**form_of(EVERY_KIND), "op": "save"}
    with app_client(url, clock) as c:
        csrf = cookie_login(c, "watcher_a")
        assert 'id="chain-form"' not in c.get("/households/h1").text
        assert c.post("/households/h1/chain", data={**form, "csrf_token": csrf}).status_code == 403
        assert c.post("/households/h1/chain", data={**form, "op": "add", "csrf_token": csrf}).status_code == 403
    with app_client(url, clock) as c:
        csrf = cookie_login(c, "coord_b")  # coordinator of another area: the household does not exist for them
        assert c.post("/households/h1/chain", data={**form, "csrf_token": csrf}).status_code == 404
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM escalation_chains").fetchone()[0] == 0


# --- one phone-sized browser run -----------------------------------------------------------------


@pytest.mark.browser
def test_coordinator_edits_the_chain_on_a_phone(world) -> None:
    from test_app_browser import ARTIFACTS, check_a11y, phone, sign_in

    url, clock, _ = world
    with served(url, clock) as base, phone() as page:
        sign_in(page, base, "coord_a")
        page.goto(f"{base}/households/h1#chain-editor")
        assert page.locator("fieldset.chain-step").count() == len(policy.DEFAULT_CHAIN)
        assert page.locator(".chain-apply").first.is_hidden()  # JS shows the kind's fields itself
        # remove step 5 (notify the coordinator), then add a wait and set its minutes
        page.click("button[value='remove-4']")
        page.wait_for_selector("#chain-unsaved")
        page.select_option("#chain-new-kind", "wait")
        page.click("#chain-add")
        page.wait_for_selector("#step-6")
        page.fill("#step-6-wait-minutes", "20")
        # switching a kind shows its fields without a reload
        assert page.locator("#step-6-resident_check-blinks").is_hidden()
        page.select_option("#step-6-type", "resident_check")
        assert page.locator("#step-6-resident_check-blinks").is_visible()
        page.select_option("#step-6-type", "wait")
        check_a11y(page, "chain editor")
        page.locator("#step-6").scroll_into_view_if_needed()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chain_editor.png"))
        page.locator("#step-0").screenshot(path=str(ARTIFACTS / "chain_editor_notify.png"))
        page.click("#chain-save")
        page.wait_for_selector(".banner-info")
        steps = page.evaluate("fetch('/api/alerts/chains/h1').then((r) => r.json())")["steps"]
    expected = [dict(s) for s in policy.DEFAULT_CHAIN]
    del expected[4]
    expected.append({"type": "wait", "minutes": 20})
    assert steps == expected
