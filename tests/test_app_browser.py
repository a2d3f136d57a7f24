"""Browser tests in real headless Chromium on a phone-sized viewport: a watcher signs in, an alert
appears live without reloading (Server-Sent Events), they claim and resolve it; a coordinator pairs
a device. Accessibility basics are checked on every page visited. Screenshots: test-artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from mimamori.kernel.clock import as_datetime
from support.web import PASSWORD, login_name, served
from test_app_live import listeners

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PHONE = {"width": 390, "height": 844}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

# Body text ≥ 18 px, every control labelled, text contrast ≥ 4.5:1 (WCAG AA) against its background.
A11Y_JS = """
() => {
  const problems = [];
  const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  const body = parseFloat(getComputedStyle(document.body).fontSize);
  if (body < 18) problems.push('body font ' + body);
  document.querySelectorAll('p, li, td, th, label, button, input, select, textarea, a, span, time, strong').forEach((el) => {
    if (el.closest('svg') || !visible(el)) return;
    const fs = parseFloat(getComputedStyle(el).fontSize);
    if (fs < 18) problems.push('small text ' + el.tagName + ' ' + fs + 'px: ' + el.textContent.trim().slice(0, 30));
  });
  document.querySelectorAll('input:not([type=hidden]), select, textarea').forEach((el) => {
    if (!((el.labels && el.labels.length) || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')))
      problems.push('unlabelled control ' + (el.id || el.name));
  });
  document.querySelectorAll('button, a').forEach((el) => {
    if (visible(el) && !el.textContent.trim() && !el.getAttribute('aria-label')) problems.push('unnamed ' + el.tagName);
  });
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = (c) => { const a = c.slice(0, 3).map((v) => { v /= 255;
                                                             return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
                       return 0.2126 * a[0] + 0.7152 * a[1] + 0.0722 * a[2]; };
  const bg = (el) => { for (; el; el = el.parentElement) { const c = rgb(getComputedStyle(el).backgroundColor);
                         if (c.length < 4 || c[3] > 0) return c; } return [255, 255, 255]; };
  document.querySelectorAll('body *').forEach((el) => {
    if (el.closest('svg') || !visible(el)) return;
    const hasText = Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!hasText) return;
    const l1 = lum(rgb(getComputedStyle(el).color)), l2 = lum(bg(el));
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    if (ratio < 4.5) problems.push('contrast ' + ratio.toFixed(2) + ' ' + el.tagName + ': ' + el.textContent.trim().slice(0, 30));
  });
  return problems;
}
"""


@contextmanager
def phone(extra_args: tuple[str, ...] = (), init_script: str | None = None) -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed (apt-get install -y chromium fonts-noto-cjk)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=[*CHROMIUM_ARGS, *extra_args])
        context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True,
                                      locale="ja-JP", timezone_id="Asia/Tokyo", service_workers="block")
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        page.set_default_timeout(10_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()


def check_a11y(page: object, name: str) -> None:
    problems = page.evaluate(A11Y_JS)  # type: ignore[attr-defined]
    assert not problems, f"{name}: {problems[:10]}"


def shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"app_{name}.png"), full_page=True)  # type: ignore[attr-defined]


def sign_in(page: object, base: str, person_id: str) -> None:
    page.goto(f"{base}/login")  # type: ignore[attr-defined]
    check_a11y(page, "login")
    page.fill("#login", login_name(person_id))  # type: ignore[attr-defined]
    page.fill("#password", PASSWORD)  # type: ignore[attr-defined]
    page.click("button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_url(lambda u: "/login" not in u)  # type: ignore[attr-defined]


def test_watcher_sees_alert_live_then_claims_and_resolves(world) -> None:
    url, clock, _ = world
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM incidents")
    with served(url, clock) as base, phone() as page:
        sign_in(page, base, "watcher_a")
        assert page.locator(".hh").count() == 1 and page.locator(".alert-card").count() == 0
        check_a11y(page, "home")
        shot(page, "1_home_calm")
        page.evaluate("window.__sameDocument = true")
        page.wait_for_function("window.mimamoriLive && window.mimamoriLive.readyState === 1")
        # The detector opens an incident; the page must show it without reloading.
        with psycopg.connect(url, autocommit=True) as conn:
            now = as_datetime(clock.now())
            incident_id = conn.execute(
                "INSERT INTO incidents (household_id, kind, opened_at, updated_at, rule) VALUES ('h1', 'inactivity', %s, %s,"
                " 'test') RETURNING incident_id", (now, now)).fetchone()[0]
        page.wait_for_selector(f".alert-card[data-incident='{incident_id}']", timeout=10_000)
        assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
        assert len(listeners(url)) == 1, "live updates come from the one LISTEN connection"
        assert "確認が必要" in page.inner_text("#home-live")
        check_a11y(page, "home with alert")
        shot(page, "2_home_alert_live")
        page.click(f".alert-card[data-incident='{incident_id}']")
        page.wait_for_selector("#btn-claim")
        check_a11y(page, "alert")
        shot(page, "3_alert")
        page.click("#btn-claim")
        page.wait_for_selector("#incident-status:has-text('向かっています')")
        page.fill("#note", "元気でした。電球が切れていただけ。")
        shot(page, "4_alert_claimed")
        page.click("#btn-fine")
        page.wait_for_selector("#incident-status:has-text('解決')")
        assert "元気でした" in page.inner_text(".timeline")
        check_a11y(page, "alert resolved")
        shot(page, "5_alert_resolved")
        page.goto(f"{base}/households/h1")
        page.wait_for_selector("svg.heatmap")
        check_a11y(page, "household")
        shot(page, "6_household")
    with psycopg.connect(url) as conn:
        status, outcome, claimed_by, note = conn.execute(
            "SELECT status, outcome, claimed_by, outcome_note FROM incidents WHERE incident_id = %s", (incident_id,)).fetchone()
    assert (status, outcome, claimed_by) == ("resolved", "fine", "watcher_a") and note.startswith("元気")


def test_coordinator_pairs_a_device(world) -> None:
    url, clock, _ = world
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO gateways (gateway_id) VALUES ('gw-new')")
        conn.execute("INSERT INTO devices (device_id, gateway_id, first_seen_at) VALUES ('bulb-0042', 'gw-new', %s)",
                     (as_datetime(clock.now() - 3600),))
        conn.execute("INSERT INTO events (time, device_id, seq, kind) SELECT %s - g * interval '5 minutes', 'bulb-0042', g,"
                     " 'on' FROM generate_series(1, 5) g", (as_datetime(clock.now()),))
    with served(url, clock) as base, phone() as page:
        sign_in(page, base, "coord_a")
        check_a11y(page, "coordinator home")
        page.goto(f"{base}/coord")
        check_a11y(page, "coordinator area")
        shot(page, "7_coordinator")
        page.goto(f"{base}/coord/devices")
        # Chromium on Linux has no BarcodeDetector: no scan button, a plain notice, and typing works
        assert page.evaluate("'BarcodeDetector' in window") is False
        assert page.locator("#scan-btn").is_hidden() and page.locator("#scan-unavailable").is_visible()
        assert "QRコードを読み取れません" in page.inner_text("#scan-unavailable")
        page.click(".pick-device[data-device='bulb-0042']")
        assert page.input_value("#device-id") == "bulb-0042"
        page.fill("#device-id", "")
        page.type("#device-id", "bulb-0042")
        page.select_option("#pair-household", "h2")
        page.select_option("#pair-kind", "bulb")
        page.fill("#pair-room", "台所")
        check_a11y(page, "pairing")
        shot(page, "8_pairing")
        page.click("#pair-submit")
        page.wait_for_url(f"{base}/households/h2**")
        assert "台所" in page.inner_text("main")
        shot(page, "9_paired")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT household_id FROM devices WHERE device_id = 'bulb-0042'").fetchone()[0] == "h2"
        assert conn.execute("SELECT count(*) FROM events WHERE device_id = 'bulb-0042' AND household_id = 'h2'").fetchone()[0] == 5


def test_resident_sees_own_data_and_pauses_watching(world) -> None:
    url, clock, _ = world
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM incidents")
    with served(url, clock) as base, phone() as page:
        sign_in(page, base, "resident_1")
        page.wait_for_selector("svg.heatmap")
        check_a11y(page, "resident")
        # Dates for a Japanese reader: the page is lang="ja" and the browser a ja-JP one, yet headless
        # Chromium still draws the date control as mm/dd/yyyy (it follows the UI language, not the
        # page's), so the chosen date is written out in 年月日 beside it.
        assert page.evaluate("document.documentElement.lang") == "ja"
        assert page.evaluate("navigator.language") == "ja-JP"
        assert page.inner_text("#away-until-text") == "日付を選んでください"
        page.locator("#away-until").scroll_into_view_if_needed()
        page.locator("form:has(#away-until)").screenshot(path=str(ARTIFACTS / "app_10a_date_empty_ja.png"))
        page.fill("#away-until", "2026-01-30")
        assert page.inner_text("#away-until-text") == "2026年1月30日（金）"
        page.locator("form:has(#away-until)").screenshot(path=str(ARTIFACTS / "app_10b_date_chosen_ja.png"))
        page.click("#pause-submit")
        page.wait_for_selector(".badge-away")
        assert "2026年1月30日" in page.inner_text("main")
        page.click("a[hreflang=en]")
        page.wait_for_selector("text=Who viewed, and when")
        assert page.evaluate("document.documentElement.lang") == "en"
        assert "Away until 2026-01-30" in page.inner_text("main")
        assert page.inner_text("#away-until-text") == "Choose a date"
        page.fill("#away-until", "2026-02-03")
        assert page.inner_text("#away-until-text") == "Tue 3 February 2026"
        check_a11y(page, "resident in English")
        shot(page, "10_resident_en")


# A camera for the page: Chromium's fake capture device playing a Y4M file (left half black, right
# half white). Chromium on Linux has no BarcodeDetector, so a stand-in (below) plays the decoder: it
# reads the live frame from the <video> through a canvas and only "sees" the code when the camera's
# picture is there. What is tested for real: camera permission and stream, the video element, when
# the page asks the detector, extracting the id from a URL-shaped code, stopping the camera.
STAND_IN_DETECTOR = """
window.BarcodeDetector = class {
  static getSupportedFormats() { return Promise.resolve(['qr_code']); }
  constructor(opts) { window.__detectorFormats = opts.formats; window.__detectCalls = 0; }
  detect(video) {
    window.__detectCalls++;
    const c = document.createElement('canvas'); c.width = 64; c.height = 48;
    const g = c.getContext('2d'); g.drawImage(video, 0, 0, 64, 48);
    const left = g.getImageData(8, 24, 1, 1).data[0], right = g.getImageData(56, 24, 1, 1).data[0];
    window.__seen = [left, right];
    return Promise.resolve(left < 60 && right > 200 ? [{ rawValue: ' https://mimamori.example/d/bulb-0077 ' }] : []);
  }
};
"""


def _y4m(path: Path, width: int = 320, height: int = 240, frames: int = 3) -> Path:
    y = bytes([16] * (width // 2) + [235] * (width // 2)) * height
    chroma = bytes([128]) * ((width // 2) * (height // 2))
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + y + chroma + chroma)
    return path


def test_pairing_page_reads_the_device_id_from_the_camera(world, tmp_path: Path) -> None:
    url, clock, _ = world
    camera = _y4m(tmp_path / "label.y4m")
    args = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}")
    with served(url, clock) as base, phone(args, STAND_IN_DETECTOR) as page:
        sign_in(page, base, "coord_a")
        page.goto(f"{base}/coord/devices")
        assert page.locator("#scan-unavailable").is_hidden()
        page.click("#scan-btn")
        page.wait_for_function("() => document.getElementById('device-id').value !== ''")
        assert page.input_value("#device-id") == "bulb-0077"
        assert page.evaluate("window.__seen[0] < 60 && window.__seen[1] > 200")  # the file's picture
        assert page.evaluate("window.__detectorFormats") == ["qr_code"]
        assert page.evaluate("document.getElementById('scan-video').srcObject.getTracks()"
                             ".every((t) => t.readyState === 'ended')"), "the camera was left on"
        assert page.locator("#scan-video").is_hidden() and page.locator("#scan-btn").is_visible()
        check_a11y(page, "pairing after a scan")
        shot(page, "8b_pairing_scanned")
        # the camera refused (permission denied, or no camera): a notice, and the id field has the focus
        page.add_init_script("navigator.mediaDevices.getUserMedia = () =>"
                             " Promise.reject(new DOMException('denied', 'NotAllowedError'));")
        page.goto(f"{base}/coord/devices")
        page.click("#scan-btn")
        page.wait_for_selector("#scan-no-camera:not([hidden])")
        assert page.locator("#scan-btn").is_hidden() and page.locator("#scan-unavailable").is_hidden()
        assert page.evaluate("document.activeElement.id") == "device-id"
        check_a11y(page, "pairing without camera")
