// Small vanilla JS: live fragments over Server-Sent Events, confirmations, device picking,
// the service worker and Web Push. No framework, no CDN.
(function () {
  "use strict";
  var live = document.querySelectorAll("[data-live]");
  function refresh() {
    live.forEach(function (el) {
      fetch(el.getAttribute("data-live"), { credentials: "same-origin", headers: { "accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) { el.innerHTML = html; el.dispatchEvent(new CustomEvent("live:updated", { bubbles: true })); } })
        .catch(function () {});
    });
  }
  if (live.length && window.EventSource) {
    var es = new EventSource("/live");
    var first = true;
    es.addEventListener("hello", function () { if (!first) { refresh(); } first = false; });
    es.addEventListener("change", refresh);
    es.addEventListener("signed_out", function () { es.close(); window.location.href = "/login"; });
    window.mimamoriLive = es;
  }
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) { e.preventDefault(); }
  });
  document.addEventListener("click", function (e) {
    var t = e.target.closest ? e.target.closest(".pick-device") : null;
    if (t) { var input = document.getElementById("device-id"); if (input) { input.value = t.getAttribute("data-device"); input.focus(); } }
  });
  // Pairing: read a device's QR code with the camera where the browser can (BarcodeDetector).
  var scanBtn = document.getElementById("scan-btn");
  if (scanBtn && "BarcodeDetector" in window && navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    scanBtn.hidden = false;
    scanBtn.addEventListener("click", function () {
      var video = document.getElementById("scan-video");
      var detector = new window.BarcodeDetector({ formats: ["qr_code", "code_128", "data_matrix"] });
      navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } }).then(function (stream) {
        video.srcObject = stream; video.hidden = false; video.play();
        var stop = function () { stream.getTracks().forEach(function (t) { t.stop(); }); video.hidden = true; };
        var tick = function () {
          detector.detect(video).then(function (codes) {
            if (codes.length) {
              var raw = codes[0].rawValue.trim();
              var id = raw.split(/[\/?#=]/).filter(Boolean).pop();  // a bare id, or a URL ending in it
              document.getElementById("device-id").value = id; stop();
            } else { window.setTimeout(tick, 250); }
          }).catch(function () { window.setTimeout(tick, 500); });
        };
        tick();
      }).catch(function () { scanBtn.hidden = true; });
    });
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
