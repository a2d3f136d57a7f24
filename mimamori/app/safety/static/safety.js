// The safety board is live: app.js refreshes its fragment ([data-live]) when the app's live stream
// (/live, LISTEN/NOTIFY) says an answer, a claim or a gateway status of a household the viewer may
// see has changed. This slow poll is only a fallback (a stream that silently stalled).
(function () {
  "use strict";
  var FALLBACK_MS = 30000;
  var el = document.querySelector("[data-live][data-safety-board]");
  if (!el) { return; }
  window.mimamoriSafetyFallback = window.setInterval(function () {
    if (!document.hidden && window.mimamoriRefresh) { window.mimamoriRefresh(); }
  }, FALLBACK_MS);
})();
