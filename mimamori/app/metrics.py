"""The web app's Prometheus metrics (default registry, served at ``/metrics`` with every other stage's)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REQUESTS = Counter("mimamori_app_requests_total", "HTTP requests answered, by route template and status",
                   ["method", "route", "status"])
SSE_CLIENTS = Gauge("mimamori_app_sse_clients", "Server-Sent-Events streams open now")
LOGIN_FAILURES = Counter("mimamori_app_login_failures_total", "Refused sign-ins, by reason",
                         ["reason"])  # wrong_login, rate_limited, csrf
CSRF_FAILURES = Counter("mimamori_app_csrf_failures_total", "Requests refused for CSRF, by reason", ["reason"])
LIVE_NOTIFICATIONS = Counter("mimamori_app_live_notifications_total",
                             "NOTIFY payloads received by the live listener")
LIVE_RECONNECTS = Counter("mimamori_app_live_reconnects_total",
                          "Times the live listener lost its database connection and connected again")
LIVE_CONNECTED = Gauge("mimamori_app_live_listener_connected", "1 while the live listener is listening")
