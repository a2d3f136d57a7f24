"""Authorization matrix: each role against each endpoint (API and pages). Scope is enforced in the
service layer, so a watcher can never read another team's household, by API or by page."""

from __future__ import annotations

import json

import pytest

from support.web import PEOPLE, app_client, bearer, cookie_login

pytestmark = pytest.mark.integration

ROLES = ("anon", *PEOPLE)
ALL = set(PEOPLE)
MANAGERS_NORTH = {"oper", "coord_a"}
TEAM_H1 = {"oper", "coord_a", "watcher_a", "resident_1"}

# (method, path, json body, who may) — h1 is in area "north", on watcher_a's team, resident_1's home.
# "may" means the request passes authorization (any status but 401/403/404); everyone else is refused.
API = [
    ("GET", "/api/me", None, ALL),
    ("GET", "/api/households", None, ALL),
    ("POST", "/api/households", {"display_name": "新しい家", "area": "north"}, MANAGERS_NORTH),
    ("GET", "/api/households/h1", None, TEAM_H1),
    ("GET", "/api/households/h1/team", None, TEAM_H1),
    ("POST", "/api/households/h1/team", {"person_id": "watcher_a", "tier": 2}, MANAGERS_NORTH),
    ("DELETE", "/api/households/h1/team/watcher_b", None, MANAGERS_NORTH),
    ("POST", "/api/households/h1/away", {"until": "2026-01-25"}, TEAM_H1),
    ("DELETE", "/api/households/h1/away", None, TEAM_H1),
    ("GET", "/api/households/h1/chain", None, {"oper", "coord_a", "watcher_a"}),
    ("PUT", "/api/households/h1/chain", {"steps": [{"type": "notify", "tiers": [1]}]}, MANAGERS_NORTH),
    ("GET", "/api/households/h1/views", None, {"oper", "coord_a", "resident_1"}),
    ("GET", "/api/households/h1/consents", None, TEAM_H1),
    ("GET", "/api/households/h1/export?request_note=asked+by+phone", None, {"oper", "coord_a", "resident_1"}),
    ("GET", "/api/households/h1/export.csv?request_note=asked+by+phone", None, {"oper", "coord_a", "resident_1"}),
    ("POST", "/api/households/h1/delete", {"confirm_name": "not the name"}, MANAGERS_NORTH),
    ("GET", "/api/incidents/{h1}", None, {"oper", "coord_a", "watcher_a"}),
    ("POST", "/api/incidents/{h1}/comment", {"body": "見に行きます"}, {"oper", "coord_a", "watcher_a"}),
    ("POST", "/api/incidents/{h1}/claim", None, {"oper", "coord_a", "watcher_a"}),
    ("POST", "/api/incidents/{h1}/resolve", {"outcome": "fine"}, {"oper", "coord_a", "watcher_a"}),
    ("GET", "/api/devices/unpaired", None, {"oper", "coord_a", "coord_b"}),
    ("GET", "/api/devices/problems", None, {"oper", "coord_a", "coord_b"}),
    ("POST", "/api/devices/pair", {"device_id": "bulb-h1", "household_id": "h1"}, MANAGERS_NORTH),
    ("POST", "/api/invitations", {"role": "watcher", "display_name": "近所", "household_id": "h1"}, MANAGERS_NORTH),
    ("POST", "/api/invitations", {"role": "coordinator", "display_name": "市", "area": "east"}, {"oper"}),
    # Cross-area (issue 17): the people and devices of the north, against the south's coordinator and the
    # other team's watcher. A person's channels, quiet hours and admin log: themselves, their area's
    # coordinator, the operator.
    ("GET", "/api/alerts/people/watcher_a/channels", None, {"oper", "coord_a", "watcher_a"}),
    ("PUT", "/api/alerts/people/watcher_a/quiet-hours", {"start": "22:00", "end": "06:00"}, {"oper", "coord_a", "watcher_a"}),
    ("GET", "/api/alerts/audit/watcher_a", None, {"oper", "coord_a", "watcher_a"}),
    ("GET", "/api/alerts/people/resident_1/channels", None, {"oper", "coord_a", "resident_1"}),
    ("POST", "/api/alerts/people/resident_1/channels", {"kind": "email", "target": "r1@example.jp"}, {"oper", "coord_a", "resident_1"}),
    ("GET", "/api/alerts/audit/h1", None, MANAGERS_NORTH),
    ("GET", "/api/alerts/chains/h1", None, {"oper", "coord_a", "watcher_a"}),
    ("POST", "/api/devices/bulb-h1/gateway", {"gateway_id": "gw-h1"}, MANAGERS_NORTH),
]

PAGES = [
    ("/households/h1", TEAM_H1),
    ("/households/h1/views", {"oper", "coord_a", "resident_1"}),
    ("/households/h1/export.json?request_note=asked+by+phone", {"oper", "coord_a", "resident_1"}),
    ("/alerts/{h1}", {"oper", "coord_a", "watcher_a"}),
    ("/partials/alerts/{h1}", {"oper", "coord_a", "watcher_a"}),
    ("/coord", {"oper", "coord_a", "coord_b"}),
    ("/coord/devices", {"oper", "coord_a", "coord_b"}),
    ("/me", {"resident_1", "resident_2"}),
]


def test_api_matrix(world) -> None:
    url, clock, ids = world
    failures = []
    with app_client(url, clock) as c:
        headers = {role: ({} if role == "anon" else bearer(c, role)) for role in ROLES}
        for method, path, body, allowed in API:
            path = path.replace("{h1}", str(ids["h1"]))
            for role in ROLES:
                r = c.request(method, path, json=body, headers=headers[role])
                refused = r.status_code in (401, 403, 404)
                if role == "anon" and r.status_code != 401:
                    failures.append(f"anon {method} {path} -> {r.status_code}")
                elif (role in allowed) == refused or r.status_code >= 500:
                    failures.append(f"{role} {method} {path} -> {r.status_code} {r.text[:80]}")
    assert not failures, "\n".join(failures)


def test_page_matrix(world) -> None:
    url, clock, ids = world
    failures = []
    for role in ROLES:
        with app_client(url, clock) as c:
            if role != "anon":
                cookie_login(c, role)
            for path, allowed in PAGES:
                path = path.replace("{h1}", str(ids["h1"]))
                r = c.get(path, follow_redirects=False)
                if role == "anon":
                    ok = r.status_code == 303 and r.headers["location"].startswith("/login")
                else:
                    ok = r.status_code == 200 if role in allowed else r.status_code in (403, 404)
                if not ok:
                    failures.append(f"{role} GET {path} -> {r.status_code}")
                if role not in allowed and "田中 一郎" in r.text:
                    failures.append(f"{role} GET {path} leaked the household's name")
    assert not failures, "\n".join(failures)


def test_watcher_never_sees_another_team(world) -> None:
    url, clock, ids = world
    with app_client(url, clock) as c:
        a = bearer(c, "watcher_a")
        b = bearer(c, "watcher_b")
        assert [h["household_id"] for h in c.get("/api/households", headers=a).json()] == ["h1"]
        assert [h["household_id"] for h in c.get("/api/households", headers=b).json()] == ["h3"]
        assert [i["incident_id"] for i in c.get("/api/incidents", headers=a).json()] == [ids["h1"]]
        for path in ("/api/households/h3", "/api/households/h3/team", f"/api/incidents/{ids['h3']}",
                     "/api/households/h3/export", "/api/households/h3/chain"):
            assert c.get(path, headers=a).status_code == 404, path
        cookie_login(c, "watcher_a")
        home = c.get("/").text
        assert "田中 一郎" in home and "鈴木 次郎" not in home
        for path in ("/households/h3", f"/alerts/{ids['h3']}", f"/partials/alerts/{ids['h3']}"):
            r = c.get(path)
            assert r.status_code == 404 and "鈴木" not in r.text, path


def test_coordinator_limited_to_area(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as c:
        south = bearer(c, "coord_b")
        assert [h["household_id"] for h in c.get("/api/households", headers=south).json()] == ["h3"]
        assert c.get("/api/households/h1", headers=south).status_code == 404
        r = c.post("/api/households", headers=south, json={"display_name": "南の家"})
        assert r.status_code == 201
        created = r.json()["household_id"]
        assert created in [h["household_id"] for h in c.get("/api/households", headers=south).json()]
        assert c.get(f"/api/households/{created}", headers=bearer(c, "coord_a")).status_code == 404


# Field-level rule: address and phone numbers (household_contacts, people.phone) are for the
# household's team and its own resident; others who may view the household see only "registered".
CONTACT_VALUES = ("north 1-2-3", "076-000-0000", "090-7777-0001", "090-7777-0002")
SEES_CONTACT_H1 = {"watcher_a", "resident_1"}
CONTACT_API = ["/api/households/h1", "/api/households/h1/team"]
CONTACT_PAGES = ["/households/h1"]


def _give_people_phones(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE people SET phone = '090-7777-0001' WHERE person_id = 'watcher_a'")
        conn.execute("UPDATE people SET phone = '090-7777-0002' WHERE person_id = 'resident_1'")


def _leaked(text: str) -> list[str]:
    return [v for v in CONTACT_VALUES if v in text]


def test_contact_details_field_matrix(world) -> None:
    """Every role × every API and page read of h1: the team and the resident get the values, the area
    coordinator and the operator get "registered" only, everyone else gets nothing at all."""
    url, clock, _ = world
    _give_people_phones(url)
    failures = []
    with app_client(url, clock) as c:
        for role in PEOPLE:
            h = bearer(c, role)
            for path in CONTACT_API:
                r = c.get(path, headers=h)
                if role not in TEAM_H1:
                    if r.status_code != 404 or _leaked(r.text):
                        failures.append(f"{role} GET {path} -> {r.status_code} {_leaked(r.text)}")
                    continue
                assert r.status_code == 200, (role, path, r.text)
                leaked = _leaked(r.text)
                if role in SEES_CONTACT_H1 and "076-000-0000" not in r.text and path.endswith("h1"):
                    failures.append(f"{role} GET {path} lacks the household's phone")
                if role not in SEES_CONTACT_H1 and leaked:
                    failures.append(f"{role} GET {path} received {leaked}")
            detail = c.get("/api/households/h1", headers=h).json()
            if role in TEAM_H1:
                contact = detail["contact"]
                expect_visible = role in SEES_CONTACT_H1
                if contact["registered"] is not True or contact["has_phone"] is not True or contact["has_address"] is not True:
                    failures.append(f"{role}: contact not marked registered: {contact}")
                if contact["visible"] != expect_visible or (contact["phone"] is None) == expect_visible:
                    failures.append(f"{role}: contact visibility wrong: {contact}")
                member = next(m for m in detail["team"] if m["person_id"] == "watcher_a")
                if member["phone_registered"] is not True or (member["phone"] is None) == expect_visible:
                    failures.append(f"{role}: team phone visibility wrong: {member}")
    for role in PEOPLE:
        with app_client(url, clock) as c:
            cookie_login(c, role)
            for path in CONTACT_PAGES:
                r = c.get(path)
                leaked = _leaked(r.text)
                if role in SEES_CONTACT_H1:
                    if r.status_code != 200 or "076-000-0000" not in r.text or "north 1-2-3" not in r.text:
                        failures.append(f"{role} GET {path} page lacks the contact details")
                elif leaked:
                    failures.append(f"{role} GET {path} page showed {leaked}")
                elif role in TEAM_H1 and "登録済み" not in r.text:
                    failures.append(f"{role} GET {path} page does not say the contact is registered")
    assert not failures, "\n".join(failures)


def test_coordinator_on_the_team_sees_contact(world) -> None:
    """It is team membership that grants the values, not the role."""
    url, clock, _ = world
    with app_client(url, clock) as c:
        oper = bearer(c, "oper")
        assert "076-000-0000" not in c.get("/api/households/h1", headers=oper).text
        r = c.post("/api/households/h1/team", headers=oper, json={"person_id": "coord_a", "tier": 2})
        assert r.status_code == 204, r.text
        assert c.get("/api/households/h1", headers=bearer(c, "coord_a")).json()["contact"]["phone"] == "076-000-0000"
        assert "076-000-0000" not in c.get("/api/households/h1", headers=oper).text


def test_export_is_the_residents_complete_copy_and_is_logged(world) -> None:
    """Decision (app/README.md, "Export"): an export is the resident's copy of their data, complete
    with contact values. The resident takes it as is; a coordinator or operator acting for them must
    say which request it answers, and the export shows in the resident's view log with that note."""
    url, clock, _ = world
    _give_people_phones(url)
    with app_client(url, clock) as c:
        coord = bearer(c, "coord_a")
        for path in ("/api/households/h1/export", "/api/households/h1/export.csv"):
            r = c.get(path, headers=coord)  # no request named: refused, nothing exported
            assert r.status_code == 422 and not _leaked(r.text), (path, r.text)
            assert c.get(path + "?request_note=%20%20", headers=coord).status_code == 422
        note = "1月21日 ご本人から電話で依頼"
        for role in ("resident_1", "oper", "coord_a"):
            query = "" if role == "resident_1" else f"?request_note={note}"
            exported = c.get(f"/api/households/h1/export{query}", headers=bearer(c, role)).json()
            assert exported["contact"][0]["phone"] == "076-000-0000", role
            assert exported["contact"][0]["address"] == "north 1-2-3", role
            assert exported["residents"][0]["phone"] == "090-7777-0002", role
            assert "(registered)" not in json.dumps(exported, ensure_ascii=False)
            assert exported["resident_contacts"] == [] and exported["resident_check_answers"] == []  # present, empty here
        csv_text = c.get(f"/api/households/h1/export.csv?request_note={note}", headers=coord).text
        assert "076-000-0000" in csv_text and "north 1-2-3" in csv_text
        # ... while the coordinator's ordinary reads keep the team-only rule
        assert not _leaked(c.get("/api/households/h1", headers=coord).text)
        views = c.get("/api/households/h1/views", headers=bearer(c, "resident_1")).json()
        exports = [(v["viewer_name"], v["what"], v["purpose"]) for v in views if v["what"].startswith("export")]
        assert exports == [("name-coord_a", "export_csv", note), ("name-coord_a", "export_json", note),
                           ("name-oper", "export_json", note)]  # the resident's own export is no "view"
        # a watcher of the team may not export at all
        assert c.get(f"/api/households/h1/export?request_note={note}", headers=bearer(c, "watcher_a")).status_code == 403
    with app_client(url, clock) as c:
        cookie_login(c, "resident_1")
        me = c.get("/me").text
        assert note in me and "書き出し（CSV）" in me
    with app_client(url, clock) as c:
        cookie_login(c, "coord_a")
        page = c.get("/households/h1").text
        assert 'id="request-note"' in page and "required" in page.split('id="request-note"')[1].split(">")[0]
