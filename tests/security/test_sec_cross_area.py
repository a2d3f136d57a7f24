"""Issue 17, finding 4 (high): a coordinator of another area takes over a watcher's channels.

``add_to_team`` accepted any watcher, and the person rule then let that coordinator list the watcher's
channels with full targets (Slack tokens, Web Push keys), add an attacker's address, disable the
watcher's own channels and set quiet hours 00:00-23:59. One rule now decides who manages a person
(``alerts.service.managed_people_sql``), and ``add_to_team`` applies it too.

h1, h2 are in the north (coord_a); h3 in the south (coord_b); watcher_b is on h3's team.
"""

from __future__ import annotations

import psycopg
import pytest

from support.web import app_client, bearer

pytestmark = [pytest.mark.integration, pytest.mark.security]

SLACK = "slack://TokenA/TokenB/TokenC/#secret"


def test_a_coordinator_cannot_put_another_areas_watcher_on_a_team(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as c:
        coord_a = bearer(c, "coord_a")
        r = c.post("/api/households/h1/team", json={"person_id": "watcher_b", "tier": 1}, headers=coord_a)
        assert r.status_code == 404, r.text
        # their own area's watcher: yes
        r = c.post("/api/households/h2/team", json={"person_id": "watcher_a", "tier": 1}, headers=coord_a)
        assert r.status_code in (200, 201, 204), r.text
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT household_id FROM household_watchers WHERE person_id = 'watcher_b'").fetchall() == [("h3",)]


def test_a_coordinator_cannot_reach_another_areas_watchers_channels(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as c:
        wb = bearer(c, "watcher_b")
        r = c.post("/api/alerts/people/watcher_b/channels", json={"kind": "apprise", "target": SLACK}, headers=wb)
        assert r.status_code == 201, r.text
        cid = r.json()["channel_id"]
        coord_a = bearer(c, "coord_a")
        attempts = [
            ("GET", "/api/alerts/people/watcher_b/channels", None),
            ("POST", "/api/alerts/people/watcher_b/channels", {"kind": "email", "target": "attacker@example.com"}),
            ("DELETE", f"/api/alerts/people/watcher_b/channels/{cid}", None),
            ("PUT", "/api/alerts/people/watcher_b/quiet-hours", {"start": "00:00", "end": "23:59"}),
            ("GET", "/api/alerts/audit/watcher_b", None),
        ]
        for method, path, body in attempts:
            r = c.request(method, path, json=body, headers=coord_a)
            assert r.status_code in (403, 404), (method, path, r.status_code, r.text)
            assert "TokenA" not in r.text
        # Even after the operator put watcher_b on a north team too (a watcher of two areas), the north
        # coordinator does not manage them: only they themselves and the operator do.
        r = c.post("/api/households/h1/team", json={"person_id": "watcher_b", "tier": 2}, headers=bearer(c, "oper"))
        assert r.status_code in (200, 201, 204), r.text
        for who in ("coord_a", "coord_b"):
            r = c.get("/api/alerts/people/watcher_b/channels", headers=bearer(c, who))
            assert r.status_code == 404, (who, r.text)
        assert c.get("/api/alerts/people/watcher_b/channels", headers=bearer(c, "oper")).status_code == 200
        assert c.get("/api/alerts/people/watcher_b/channels", headers=bearer(c, "watcher_b")).status_code == 200
        # coord_a still manages the north's own watcher (the rule is not just "nobody").
        r = c.get("/api/alerts/people/watcher_a/channels", headers=bearer(c, "coord_a"))
        assert r.status_code == 200, r.text
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT enabled FROM person_channels WHERE person_id = 'watcher_b'").fetchall() == [(True,)]
        assert conn.execute("SELECT count(*) FROM person_alert_rules WHERE person_id = 'watcher_b'").fetchone() == (0,)


def test_a_coordinator_cannot_see_or_pair_another_areas_unpaired_device(world) -> None:
    """Low finding: a device reported by a south home's gateway is the south's to pair."""
    url, clock, _ = world
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (device_id, gateway_id, first_seen_at) VALUES ('plug-s', 'gw-h3', now())")
        conn.execute("INSERT INTO gateways (gateway_id) VALUES ('gw-new')")
        conn.execute("INSERT INTO devices (device_id, gateway_id, first_seen_at) VALUES ('plug-new', 'gw-new', now())")
    with app_client(url, clock) as c:
        north, south = bearer(c, "coord_a"), bearer(c, "coord_b")
        assert "plug-s" not in [d["device_id"] for d in c.get("/api/devices/unpaired", headers=north).json()]
        assert "plug-new" in [d["device_id"] for d in c.get("/api/devices/unpaired", headers=north).json()]
        r = c.post("/api/devices/pair", json={"device_id": "plug-s", "household_id": "h1"}, headers=north)
        assert r.status_code == 404, r.text
        assert "plug-s" in [d["device_id"] for d in c.get("/api/devices/unpaired", headers=south).json()]
        assert c.post("/api/devices/pair", json={"device_id": "plug-s", "household_id": "h3"}, headers=south).status_code == 200
        assert c.post("/api/devices/pair", json={"device_id": "plug-new", "household_id": "h1"}, headers=north).status_code == 200


def test_a_coordinator_cannot_invite_into_another_area(world) -> None:
    url, clock, _ = world
    with app_client(url, clock) as c:
        north = bearer(c, "coord_a")
        r = c.post("/api/invitations", json={"role": "watcher", "display_name": "近所", "area": "south"}, headers=north)
        assert r.status_code in (403, 404), r.text
        r = c.post("/api/invitations", json={"role": "watcher", "display_name": "近所"}, headers=north)
        assert r.status_code in (200, 201), r.text
        r = c.post("/api/invitations", json={"role": "watcher", "display_name": "近所", "household_id": "h3"}, headers=north)
        assert r.status_code in (403, 404), r.text
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT area FROM invitations").fetchall() == [("north",)]
