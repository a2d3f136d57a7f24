// Service worker: keep the app shell for poor connections and show Web Push notifications.
const SHELL = "mimamori-shell-v1";
self.addEventListener("install", (e) => {
  e.waitUntil(caches.open(SHELL).then((c) => c.addAll(["/static/app.css", "/static/app.js", "/static/icon.svg"])));
  self.skipWaiting();
});
self.addEventListener("activate", (e) => { e.waitUntil(self.clients.claim()); });
self.addEventListener("fetch", (e) => {
  const url = new URL(e.request.url);
  if (e.request.method === "GET" && url.pathname.startsWith("/static/")) {
    e.respondWith(caches.match(e.request).then((hit) => hit || fetch(e.request)));
  }
});
self.addEventListener("push", (e) => {
  let data = {};
  try { data = e.data ? e.data.json() : {}; } catch (err) { data = { title: "見守り", body: e.data ? e.data.text() : "" }; }
  const url = data.url || (data.incident_id ? "/alerts/" + data.incident_id : "/");
  e.waitUntil(self.registration.showNotification(data.title || "見守り", {
    body: data.body || "", data: { url: url }, requireInteraction: !!data.urgent, tag: data.incident_id ? "incident-" + data.incident_id : undefined,
  }));
});
self.addEventListener("notificationclick", (e) => {
  e.notification.close();
  e.waitUntil(self.clients.openWindow(e.notification.data && e.notification.data.url || "/"));
});
