"""The thin JSON routers, with ``current_person`` stood in for by a header (a test double of the app's sign-in)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from mimamori.alerts import views
from mimamori.alerts.models import Actor
from mimamori.kernel.clock import ManualClock
from mimamori.kernel.db import make_pool
from mimamori.kernel.errors import MimamoriError
from support.town import open_incident, seed_town

pytestmark = pytest.mark.integration


@pytest.fixture
def client(pg_url: str) -> Iterator[TestClient]:
    app = FastAPI()
    app.state.pool = make_pool(pg_url, max_size=2, name="alerts-views-test")
    app.state.clock = ManualClock()
    app.include_router(views.alerts_api)
    # the host's one error handler (the app's, in app.main): a kind of mimamori.kernel.errors answers its status
    app.add_exception_handler(MimamoriError, lambda _request, exc: JSONResponse(
        {"detail": exc.message, "code": exc.code}, status_code=exc.status_code))  # type: ignore[attr-defined]

    def test_person(x_person: str = Header()) -> Actor:  # stands in for app.auth.current_person
        with psycopg.connect(pg_url) as conn:
            row = conn.execute("SELECT role, area FROM people WHERE person_id = %s", (x_person,)).fetchone()
        assert row is not None
        return Actor(x_person, row[0], row[1])

    with TestClient(app) as c:
        assert c.get("/api/alerts").status_code == 401  # nobody signed in by a host: refuses, never guesses
        app.dependency_overrides[views.current_person] = test_person
        yield c
    app.state.pool.close()


def test_claim_comment_resolve_and_chains_over_http(client: TestClient, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        town = seed_town(conn, None)
        other = seed_town(conn, None)
        iid = open_incident(conn, town.household_id, 1_767_225_600.0)
    me = {"X-Person": town.tier1[0]}
    outsider = {"X-Person": other.tier1[0]}
    assert [a["incident_id"] for a in client.get("/api/alerts", headers=me).json()] == [iid]
    assert client.get("/api/alerts", headers=outsider).json() == []
    assert client.post(f"/api/alerts/{iid}/claim", headers=outsider).status_code == 404
    r = client.post(f"/api/alerts/{iid}/claim", headers=me)
    assert r.status_code == 200 and r.json()["status"] == "claimed"
    assert client.post(f"/api/alerts/{iid}/claim", headers={"X-Person": town.tier1[1]}).status_code == 409
    assert client.post(f"/api/alerts/{iid}/comment", headers=me, json={"text": "向かっています"}).status_code == 201
    assert client.post(f"/api/alerts/{iid}/resolve", headers=me, json={"outcome": "bogus"}).status_code == 422
    r = client.post(f"/api/alerts/{iid}/resolve", headers=me, json={"outcome": "fine", "note": "元気でした"})
    assert r.json()["outcome"] == "fine"
    trail = client.get(f"/api/alerts/{iid}/timeline", headers=me).json()
    assert [e["action"] for e in trail] == ["claimed", "comment", "resolved"]
    assert all(e["channel"] == "api" for e in trail)
    coord = {"X-Person": town.coordinator}
    chain = [{"type": "notify", "tiers": [1]}, {"type": "wait", "minutes": 10}, {"type": "notify", "coordinator": True}]
    assert client.put(f"/api/alerts/chains/{town.household_id}", headers=me, json=chain).status_code == 403
    assert client.put(f"/api/alerts/chains/{town.household_id}", headers=coord, json=[{"type": "x"}]).status_code == 422
    assert client.put(f"/api/alerts/chains/{town.household_id}", headers=coord, json=chain).json()["steps"] == chain
    assert client.get(f"/api/alerts/chains/{town.household_id}", headers=me).json()["source"] == "household"
    r = client.post(f"/api/alerts/people/{town.tier1[0]}/channels", headers=me,
                    json={"kind": "apprise", "target": "ntfy://ntfy.sh/mimamori-test"})
    assert r.status_code == 201
    assert client.post(f"/api/alerts/people/{town.tier1[1]}/channels", headers=me,
                       json={"kind": "apprise", "target": "ntfy://x"}).status_code == 404  # not someone else's
    assert client.put(f"/api/alerts/people/{town.tier1[0]}/quiet-hours", headers=me,
                      json={"start": "22:00", "end": "07:00"}).status_code == 204
    assert client.put(f"/api/alerts/people/{town.tier1[0]}/quiet-hours", headers=me,
                      json={"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus"}).status_code == 422
    assert client.get("/api/alerts/99999999999999999999", headers=me).status_code == 422
    # settings changes are audited too (who, when, what, channel), without secrets from URLs
    log = client.get(f"/api/alerts/audit/{town.household_id}", headers=coord).json()
    assert [(e["action"], e["actor"], e["channel"]) for e in log] == [("chain_set", town.coordinator, "api")]
    assert client.get(f"/api/alerts/audit/{town.household_id}", headers=me).status_code == 403
    log = client.get(f"/api/alerts/audit/{town.tier1[0]}", headers=me).json()
    assert [e["action"] for e in log] == ["channel_added", "quiet_hours_set"]
    assert "mimamori-test" not in str(log)
    assert client.post(f"/api/alerts/{iid}/comment", headers=me, json={"text": "a\u0000b"}).status_code == 422
