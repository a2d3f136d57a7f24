"""End to end: an area safety check over 200 simulated homes, on the real services.

Real Mosquitto, the real ingest, the safety worker and the web app (uvicorn) on PostgreSQL; the
homes' residents are simulated (``firmware_sim.safety``): asked by a blink on their bulb's command
topic, some switch a bulb twice (safe), some once, some walk past a sensor, some switch twice but
too slowly (sign of life), some answer by their personal link (safe / need help), some homes' gateways
went offline in a power cut (unreachable; a few answer by link anyway), the rest stay silent.
Their events travel as a gateway's: broker → ingest → ``events``. The board's counts must be exactly
right and update live in headless Chromium (phone viewport) without a reload; a double toggle is
recognised within a few seconds of its events arriving; messages to a throttled channel kind keep
to its rate.
"""

from __future__ import annotations

import json
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import psycopg
import pytest
import requests

from mimamori.app.auth.service import hash_password
from mimamori.firmware_sim.fleet import fleet_manifest, register_manifest
from mimamori.firmware_sim.safety import Home, SafetyResidents
from mimamori.ingest.consumer import run_ingest
from mimamori.kernel.clock import SystemClock
from mimamori.kernel.config import Settings
from mimamori.kernel.embedded import EmbeddedBroker
from mimamori.kernel.mqtt import MqttUrl
from mimamori.kernel.outbox import LinkSealer
from mimamori.kernel.signing import secret_key
from mimamori.safety.models import SafetySettings
from mimamori.safety.worker import run_safety_worker
from support.web import served
from test_app_browser import A11Y_JS

pytestmark = pytest.mark.e2e
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PASSWORD = "correct horse 1"
HOMES = 200
WINDOW_S = 3.0
WEBHOOK_RATE = 4.0
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

# (first index, last index + 1, behaviour, expected board state, how the home answers)
PLAN = [
    (0, 60, "double_toggle", "safe", "bulb"),
    (60, 90, "silent", "safe", "link_safe"),
    (90, 100, "silent", "needs_help", "link_help"),
    (100, 120, "single_toggle", "sign_of_life", "bulb"),
    (120, 135, "motion", "sign_of_life", "bulb"),
    (135, 145, "spread_toggles", "sign_of_life", "bulb"),
    (145, 170, "silent", "unreachable", "offline"),
    (170, 175, "silent", "safe", "offline_link"),
    (175, 200, "silent", "no_answer", None),
]


class _Hook(BaseHTTPRequestHandler):
    arrivals: ClassVar[list[tuple[float, dict]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        _Hook.arrivals.append((time.monotonic(), json.loads(body or b"{}")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _seed(url: str, manifest: dict, hook_port: int) -> tuple[list[str], list[str]]:
    """The town (households, gateways, devices), an operator who signs in, a resident for each home
    that answers by link, and 12 watchers whose channel is a webhook (a throttled kind).
    """
    homes = manifest["households"]
    link_homes = [homes[k]["household_id"] for lo, hi, _b, _s, how in PLAN if how and "link" in how for k in range(lo, hi)]
    watched = [homes[k]["household_id"] for k in range(175, 187)]
    with psycopg.connect(url, autocommit=True) as conn:
        register_manifest(conn, manifest)
        with conn.transaction():
            conn.execute("INSERT INTO people (person_id, display_name, role) VALUES ('oper', '市役所 防災課', 'operator')")
            conn.execute("INSERT INTO accounts (person_id, login, password_hash, created_at, password_changed_at)"
                         " VALUES ('oper', 'oper', %s, now(), now())", (hash_password(PASSWORD),))
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO people (person_id, display_name, role, household_id) VALUES (%s, %s, 'resident', %s)",
                                [(f"res-{h}", f"住人 {h}", h) for h in link_homes])
                cur.executemany("INSERT INTO people (person_id, display_name, role) VALUES (%s, %s, 'watcher')",
                                [(f"w-{h}", f"見守り {h}") for h in watched])
                cur.executemany("INSERT INTO household_watchers (household_id, person_id) VALUES (%s, %s)",
                                [(h, f"w-{h}") for h in watched])
                cur.executemany("INSERT INTO person_channels (person_id, kind, target) VALUES (%s, 'apprise', %s)",
                                [(f"w-{h}", f"json://127.0.0.1:{hook_port}/hook") for h in watched])
                # each link resident's message (their personal link) goes to an address; the link is read
                # from the message as queued (sealed, issue 17): the mail server is not the subject here
                cur.executemany("INSERT INTO person_channels (person_id, kind, target) VALUES (%s, 'email', %s)",
                                [(f"res-{h}", f"res-{h}@example.org") for h in link_homes])
            # three homes where someone else lives too: they sort after those living alone
            for k in (176, 177, 178):
                conn.execute("INSERT INTO safety_household_profiles (household_id, lives_alone, updated_at) VALUES (%s, false, now())",
                             (homes[k]["household_id"],))
    return link_homes, watched


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_safety_check_over_200_homes_end_to_end(pg_url: str, own_broker: EmbeddedBroker, tmp_path: Path) -> None:
    started_test = time.monotonic()
    manifest = fleet_manifest(HOMES, seed=5)
    homes = manifest["households"]
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.arrivals = []
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    link_homes, watched = _seed(pg_url, manifest, hook.server_address[1])
    expected: dict[str, str] = {}
    sim_homes = []
    for lo, hi, behaviour, state, _how in PLAN:
        for k in range(lo, hi):
            h = homes[k]
            bulbs = [d["device_id"] for d in h["devices"] if d["kind"] in ("bulb", "plug")]
            sensors = [(d["device_id"], d["kind"]) for d in h["devices"] if d["kind"] in ("motion", "door")]
            assert bulbs or behaviour == "silent", h
            expected[h["household_id"]] = state
            sim_homes.append(Home(h["household_id"], h["gateway_id"], bulbs, sensors, behaviour))  # type: ignore[arg-type]
    want = {s: sum(1 for v in expected.values() if v == s) for s in ("safe", "needs_help", "sign_of_life", "unreachable", "no_answer")}
    assert want == {"safe": 95, "needs_help": 10, "sign_of_life": 45, "unreachable": 25, "no_answer": 25}

    url = MqttUrl.parse(own_broker.url)
    settings = Settings(database_url=pg_url, mqtt_url=own_broker.url, data_dir=tmp_path / "data", secret_key="test-secret")
    stop = threading.Event()
    clock = SystemClock()
    cfg = SafetySettings(double_toggle_window_s=WINDOW_S, poll_s=0.3,
                         rates={"mqtt": 500.0, "webhook": WEBHOOK_RATE, "default": 5.0})
    threads = [
        threading.Thread(target=run_ingest, kwargs={"settings": settings, "database_url": pg_url, "mqtt_url": url, "stop": stop,
                                                        "client_id": "safety-e2e-ingest"}, daemon=True),
        threading.Thread(target=run_safety_worker, args=(settings,),
                         kwargs={"database_url": pg_url, "mqtt_url": url, "clock": clock, "stop": stop, "safety_settings": cfg},
                         daemon=True),
    ]
    for t in threads:
        t.start()
    residents = SafetyResidents(url, sim_homes, gap_s=0.4, spread_s=WINDOW_S + 1.0, react_after_s=1.5)
    offline = [homes[k]["gateway_id"] for k in range(145, 175)]
    try:
        residents.set_online([h["gateway_id"] for h in homes if h["gateway_id"] not in offline])
        residents.set_online(offline, online=False)  # a partial power cut: their last wills
        with psycopg.connect(pg_url, autocommit=True) as conn:
            _wait(lambda: conn.execute("SELECT count(*) FROM gateways WHERE status = 'offline'").fetchone()[0] == len(offline),
                  20, "gateway statuses through the ingest")
        with served(pg_url, clock) as base, _Phone() as page:  # type: ignore[arg-type]
            page.goto(f"{base}/login")
            page.fill("#login", "oper")
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(lambda u: "/login" not in u)
            api = _Api(base)
            token = api.post("/api/auth/login", json={"login": "oper", "password": PASSWORD}).json()["token"]
            auth = {"authorization": f"Bearer {token}"}
            r = api.post("/api/safety/checks", headers=auth,
                         json={"message": "震度6弱の地震がありました。無事ですか？", "household_ids": [h["household_id"] for h in homes]})
            assert r.status_code == 201, r.text
            check_id = r.json()["check_id"]
            t_start = time.monotonic()
            page.goto(f"{base}/safety/{check_id}")
            page.wait_for_selector("#count-total")
            assert page.inner_text("#count-total") == "200"
            first_safe = int(page.inner_text("#count-safe"))
            assert first_safe < want["safe"]
            page.evaluate("window.__sameDocument = true")
            # the board is live (LISTEN/NOTIFY → /live → fragment): switch its 30 s fallback poll off, so
            # every update below must come from the live stream
            assert page.evaluate("typeof window.mimamoriSafetyFallback") == "number"
            page.evaluate("""() => { clearInterval(window.mimamoriSafetyFallback); window.__liveUpdates = 0;
                document.addEventListener('live:updated', () => { window.__liveUpdates += 1; }); }""")
            _shot(page, "1_board_started")

            # residents answering by their personal link (from their message), no login
            sealer = LinkSealer(secret_key(Settings()))
            with psycopg.connect(pg_url) as conn:
                links = {h: sealer.open(sealed) for h, sealed in conn.execute(
                    """SELECT payload->>'household_id', payload->>'sealed_link' FROM outbox
                       WHERE source = 'safety' AND payload ? 'sealed_link'""").fetchall()}
            assert set(links) == set(link_homes)
            by_phone = homes[60]["household_id"]  # this resident opens the link on a phone
            resident = page.context.new_page()
            resident.goto(links[by_phone])
            resident.wait_for_selector("#btn-safe")
            assert not resident.evaluate(A11Y_JS)
            _shot(resident, "4_answer_link")
            resident.click("#btn-safe")
            resident.wait_for_selector("#answer-done")
            _shot(resident, "5_answer_done")
            resident.close()
            def answer_link(k: int, how: str) -> None:
                hid = homes[k]["household_id"]
                path = links[hid].split("/safety/a/", 1)[1]
                with requests.Session() as phone_browser:
                    form = phone_browser.get(f"{base}/safety/a/{path}", timeout=30)
                    assert form.status_code == 200
                    done = phone_browser.post(f"{base}/safety/a/{path}", timeout=30,
                                              data={"answer": "needs_help" if how == "link_help" else "safe",
                                                    "check_id": check_id, "household_id": hid})
                    assert done.status_code == 200, done.text

            with ThreadPoolExecutor(8) as pool:  # residents answer at the same time
                for f in [pool.submit(answer_link, k, how) for lo, hi, _b, _s, how in PLAN for k in range(lo, hi)
                          if how in ("link_safe", "link_help", "offline_link") and homes[k]["household_id"] != by_phone]:
                    f.result()

            # the board catches up by itself (live updates, no poll), exactly, well before the 30 s fallback
            t_answered = time.monotonic()
            js = " && ".join(f"document.querySelector('#count-{s}').textContent.trim() === '{n}'" for s, n in want.items())
            page.wait_for_function(f"() => {js}", timeout=15_000)
            t_board = time.monotonic() - t_start
            board_after_answers = time.monotonic() - t_answered
            live_updates = page.evaluate("window.__liveUpdates")
            assert live_updates > 0 and board_after_answers < 15.0
            assert page.evaluate("window.__sameDocument") is True, "the board reloaded"
            board = api.get(f"/api/safety/checks/{check_id}/board", headers=auth).json()
            got = {h["household_id"]: h["state"] for h in board["households"]}
            assert got == expected
            # ordered by risk: needs help, then no answer (living alone first), unreachable, sign of life, safe
            order = [h["state"] for h in board["households"]]
            assert order == sorted(order, key=["needs_help", "no_answer", "unreachable", "sign_of_life", "safe"].index)
            no_answer = [h for h in board["households"] if h["state"] == "no_answer"]
            assert [h["lives_alone"] for h in no_answer][-3:] == [False] * 3 and all(h["lives_alone"] for h in no_answer[:-3])
            hows = {h["household_id"]: h["how"] for h in board["households"]}
            assert all(hows[homes[k]["household_id"]] == "double_toggle" for k in range(60))
            assert not page.evaluate(A11Y_JS)
            page.click(".sc-filters summary")
            page.select_option("#f-state", "no_answer")
            page.click(".sc-filter button")
            page.wait_for_selector(".sc-card.b-no_answer")
            assert page.locator(".sc-card").count() == 25
            _shot(page, "2_board_filtered_no_answer")
            page.goto(f"{base}/safety/{check_id}")
            page.wait_for_selector("#count-safe")
            _shot(page, "3_board_final")
            # the team: "I'll go" for the most urgent home (needs help, first on the board)
            first = page.locator(".sc-card").first
            assert first.get_attribute("data-state") == "needs_help"
            first.locator("button").click()
            page.wait_for_selector("text=市役所 防災課さんが向かっています")
            assert not page.evaluate(A11Y_JS)
            _shot(page, "6_household_claimed")

            csv_text = api.get(f"/api/safety/checks/{check_id}/export.csv", headers=auth).content.decode("utf-8-sig")
            assert len(csv_text.strip().splitlines()) == 2 + HOMES
            api.session.close()

        # recognition latency: from the completing switch's publish to the recorded answer
        with psycopg.connect(pg_url) as conn:
            recognised = {r[0]: float(r[1]) for r in conn.execute(
                """SELECT household_id, (data->>'recognised_at')::float8 FROM safety_audit
                   WHERE check_id = %s AND action = 'recognised_safe'""", (check_id,))}
            blinks_sent = conn.execute("SELECT count(*) FROM safety_deliveries WHERE check_id = %s AND channel = 'mqtt'"
                                       " AND status = 'sent'", (check_id,)).fetchone()[0]
            switchable = conn.execute("""SELECT count(*) FROM devices WHERE kind = 'bulb' AND blink_allowed IS NOT FALSE
                                         OR kind = 'plug' AND blink_allowed""").fetchone()[0]  # plugs only when allowed
        latencies = [recognised[homes[k]["household_id"]] - residents.published[homes[k]["household_id"]][-1][2]
                     for k in range(60)]
        assert set(recognised) == {homes[k]["household_id"] for k in range(60)}
        assert blinks_sent == switchable
        assert all(residents.blinks_received[h.household_id] >= 1 for h in sim_homes if h.bulbs)
        p50, worst = statistics.median(latencies), max(latencies)
        assert worst < 5.0, latencies
        # throttled: 12 webhook messages at 4/s (burst 4) take at least ~2 s
        # the throttle may still hold the last few when the board is done: wait for them, then for their rows
        _wait(lambda: len(_Hook.arrivals) >= len(watched), 15, "webhook messages")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            def webhooks_sent() -> int:
                return conn.execute("SELECT count(*) FROM outbox WHERE check_id = %s AND throttle_key = 'webhook'"
                                    " AND status = 'sent'", (check_id,)).fetchone()[0]
            _wait(lambda: webhooks_sent() >= len(watched), 15, "webhook deliveries recorded as sent")
            hooks_sent = webhooks_sent()
        span = _Hook.arrivals[-1][0] - _Hook.arrivals[0][0]
        assert hooks_sent == len(watched) and span >= (len(watched) - WEBHOOK_RATE) / WEBHOOK_RATE - 0.3, span
        assert "/safety/" in _Hook.arrivals[0][1].get("message", "")
        (ARTIFACTS / "safety_e2e.json").write_text(json.dumps({
            "homes": HOMES, "counts": want, "recognition_latency_p50_s": round(p50, 3),
            "recognition_latency_max_s": round(worst, 3), "board_exact_after_s": round(t_board, 2),
            "board_exact_after_last_answer_s": round(board_after_answers, 2), "board_live_updates": live_updates,
            "board_fallback_poll": "off (live only)",
            "webhook_span_s": round(span, 2), "test_wall_s": round(time.monotonic() - started_test, 1)}, indent=2))
        print(f"recognition latency p50 {p50:.2f}s max {worst:.2f}s; board exact after {t_board:.1f}s")
    finally:
        stop.set()
        residents.close()
        hook.shutdown()
        hook.server_close()
        for t in threads:
            t.join(20)


class _Api:
    """requests (installed with Apprise) against the served app, with a base URL."""

    def __init__(self, base: str) -> None:
        self.base, self.session = base, requests.Session()

    def get(self, path: str, **kw):  # type: ignore[no-untyped-def]
        return self.session.get(self.base + path, timeout=30, **kw)

    def post(self, path: str, **kw):  # type: ignore[no-untyped-def]
        return self.session.post(self.base + path, timeout=30, **kw)


class _Phone:
    """Headless Chromium on a phone-sized viewport (Japanese locale)."""

    def __enter__(self):  # type: ignore[no-untyped-def]
        sync_api = pytest.importorskip("playwright.sync_api")
        exe = shutil.which("chromium")
        if exe is None:
            pytest.fail("chromium is not installed (apt-get install -y chromium fonts-noto-cjk)")
        self.pw = sync_api.sync_playwright().start()
        self.browser = self.pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        self.context = self.browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                                is_mobile=True, has_touch=True, locale="ja-JP", service_workers="block")
        page = self.context.new_page()
        page.set_default_timeout(15_000)
        return page

    def __exit__(self, *exc: object) -> None:
        self.context.close()
        self.browser.close()
        self.pw.stop()


def _shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"safety_{name}.png"), full_page=False)
