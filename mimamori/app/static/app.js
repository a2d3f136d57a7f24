// Small vanilla JS: live fragments over Server-Sent Events, confirmations, device picking,
// the service worker and Web Push. No framework, no CDN.
(function () {
  "use strict";
  var live = document.querySelectorAll("[data-live]");
  // One fetch per fragment at a time: changes arriving meanwhile cause one more fetch afterwards.
  function refreshOne(el) {
    if (el.__liveBusy) { el.__liveAgain = true; return; }
    el.__liveBusy = true;
    fetch(el.getAttribute("data-live"), { credentials: "same-origin", headers: { "accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html !== null && html !== el.innerHTML) { el.innerHTML = html; }
        if (html !== null) { el.dispatchEvent(new CustomEvent("live:updated", { bubbles: true })); }
      })
      .catch(function () {})
      .then(function () {
        el.__liveBusy = false;
        if (el.__liveAgain) { el.__liveAgain = false; refreshOne(el); }
      });
  }
  function refresh() { live.forEach(refreshOne); }
  window.mimamoriRefresh = refresh;
  if (live.length && window.EventSource) {
    var es = new EventSource("/live");
    var first = true;
    es.addEventListener("hello", function () { if (!first) { refresh(); } first = false; });
    es.addEventListener("change", refresh);
    es.addEventListener("signed_out", function () { es.close(); window.location.href = "/login"; });
    window.mimamoriLive = es;
  }
  // Date inputs: write the chosen date out in the page's language (the native control follows the
  // device's UI language, which may show mm/dd/yyyy to a Japanese reader).
  var WEEKDAYS = { ja: ["日", "月", "火", "水", "木", "金", "土"], en: ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"] };
  var MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
                "October", "November", "December"];
  function spellDate(value, lang) {
    var m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value || "");
    if (!m) { return null; }
    var y = +m[1], mo = +m[2], d = +m[3];
    var wd = new Date(Date.UTC(y, mo - 1, d)).getUTCDay();
    if (lang === "ja") { return y + "年" + mo + "月" + d + "日（" + WEEKDAYS.ja[wd] + "）"; }
    return WEEKDAYS.en[wd] + " " + d + " " + MONTHS[mo - 1] + " " + y;
  }
  document.querySelectorAll("output.date-text").forEach(function (out) {
    var input = document.getElementById(out.getAttribute("for"));
    if (!input) { return; }
    var lang = (document.documentElement.lang || "ja").slice(0, 2);
    var show = function () { out.textContent = spellDate(input.value, lang) || out.getAttribute("data-empty"); };
    input.addEventListener("input", show);
    input.addEventListener("change", show);
    show();
  });
  window.mimamoriSpellDate = spellDate;
  // Chain editor: show only the fields of each step's chosen kind (without JS, a button re-renders).
  document.documentElement.classList.add("js");
  function showKindFields(select) {
    var step = select.closest(".chain-step");
    if (!step) { return; }
    step.setAttribute("data-kind", select.value);
    step.querySelectorAll("[data-kinds]").forEach(function (el) {
      el.hidden = el.getAttribute("data-kinds").split(" ").indexOf(select.value) < 0;
    });
  }
  document.addEventListener("change", function (e) {
    if (e.target.classList && e.target.classList.contains("chain-kind")) { showKindFields(e.target); }
  });
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) { e.preventDefault(); }
  });
  document.addEventListener("click", function (e) {
    var t = e.target.closest ? e.target.closest(".pick-device") : null;
    if (t) { var input = document.getElementById("device-id"); if (input) { input.value = t.getAttribute("data-device"); input.focus(); } }
  });
  // Pairing: read a device's QR code with the camera where the browser can (BarcodeDetector:
  // Chrome on Android and macOS; not Chromium on Linux, Firefox or Safari). Elsewhere the page says
  // so plainly (the notice is in the HTML, shown unless scanning is possible) and typing the id works.
  var scanBtn = document.getElementById("scan-btn");
  var idInput = document.getElementById("device-id");
  function scanFallback(noticeId) {
    ["scan-unavailable", "scan-no-camera"].forEach(function (id) {
      var el = document.getElementById(id); if (el) { el.hidden = id !== noticeId; }
    });
    if (scanBtn) { scanBtn.hidden = true; }
    if (idInput) { idInput.focus(); }
  }
  function deviceIdFrom(raw) {  // a bare id, or a URL ending in it
    return (raw || "").trim().split(/[\/?#=]/).filter(Boolean).pop() || "";
  }
  window.mimamoriDeviceIdFrom = deviceIdFrom;
  if (scanBtn && "BarcodeDetector" in window && navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    Promise.resolve(window.BarcodeDetector.getSupportedFormats ? window.BarcodeDetector.getSupportedFormats() : ["qr_code"])
      .then(function (formats) {
        if (formats.indexOf("qr_code") < 0) { return; }
        document.getElementById("scan-unavailable").hidden = true;
        scanBtn.hidden = false;
        scanBtn.addEventListener("click", startScan);
      }).catch(function () {});
  }
  function startScan() {
    var video = document.getElementById("scan-video");
    var stopBtn = document.getElementById("scan-stop");
    var detector = new window.BarcodeDetector({ formats: ["qr_code"] });
    navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } }).then(function (stream) {
      var running = true;
      video.srcObject = stream; video.hidden = false; stopBtn.hidden = false; scanBtn.hidden = true;
      video.play().catch(function () {});
      var stop = function () {
        running = false;
        stream.getTracks().forEach(function (t) { t.stop(); });
        video.hidden = true; stopBtn.hidden = true; scanBtn.hidden = false;
      };
      stopBtn.onclick = stop;
      var tick = function () {
        if (!running) { return; }
        if (video.readyState < 2) { window.setTimeout(tick, 100); return; }
        detector.detect(video).then(function (codes) {
          var id = codes.length ? deviceIdFrom(codes[0].rawValue) : "";
          if (id) { idInput.value = id; stop(); idInput.focus(); } else { window.setTimeout(tick, 250); }
        }).catch(function () { window.setTimeout(tick, 500); });
      };
      tick();
    }).catch(function () { scanFallback("scan-no-camera"); });
  }
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("/sw.js").then(function (reg) { setupPush(reg); }).catch(function () {});
  }
  function b64ToBytes(s) {
    var pad = "=".repeat((4 - (s.length % 4)) % 4);
    var raw = atob((s + pad).replace(/-/g, "+").replace(/_/g, "/"));
    var out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { out[i] = raw.charCodeAt(i); }
    return out;
  }
  function setupPush(reg) {
    var key = document.querySelector('meta[name="vapid-public-key"]');
    var csrf = document.querySelector('meta[name="csrf-token"]');
    var box = document.getElementById("push-box");
    if (!key || !csrf || !box || !("PushManager" in window)) { return; }
    box.hidden = false;
    document.getElementById("push-enable").addEventListener("click", function () {
      reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: b64ToBytes(key.content) })
        .then(function (sub) {
          var j = sub.toJSON();
          return fetch("/api/push/subscriptions", { method: "POST", credentials: "same-origin",
            headers: { "content-type": "application/json", "x-csrf-token": csrf.content },
            body: JSON.stringify({ endpoint: j.endpoint, keys: j.keys }) });
        })
        .then(function () { box.hidden = true; })
        .catch(function () {});
    });
  }
})();
