// The safety board refreshes its fragment every 2 s (no reload, no framework).
(function () {
  "use strict";
  var el = document.querySelector("[data-safety-live]");
  if (!el) { return; }
  var busy = false;
  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(el.getAttribute("data-safety-live"), { credentials: "same-origin", headers: { "accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null && html !== el.innerHTML) { el.innerHTML = html; } })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  window.setInterval(refresh, 2000);
})();
