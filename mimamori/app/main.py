"""The web app: ``create_app`` builds the FastAPI application (JSON API with OpenAPI under /api,
server-rendered pages, SSE, PWA); ``run_app`` serves it with uvicorn until ``stop`` is set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mimamori.app import metrics
from mimamori.app.api import include_routers
from mimamori.app.auth.csrf import CsrfFailed
from mimamori.app.auth.proxy import address_in, client_address, is_https, parse_trusted
from mimamori.app.households.service import LOGGED_VIEWS, log_view
from mimamori.app.i18n import request_locale, translate
from mimamori.app.live.hub import LiveHub
from mimamori.app.pwa import vapid_public_key
from mimamori.kernel.clock import Clock, SystemClock
from mimamori.kernel.config import Settings
from mimamori.kernel.db import make_pool
from mimamori.kernel.errors import MimamoriError, NotAuthenticated
from mimamori.kernel.observability import readiness, register_readiness, render_metrics, unregister_readiness
from mimamori.kernel.signing import signer

log = logging.getLogger(__name__)
CallNext = Callable[[Request], Awaitable[Response]]
STATIC = Path(__file__).parent / "static"


#: Served only to ``MIMAMORI_OPS_NETWORKS`` (see ``operator_paths``).
OPERATOR_PATHS = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def _wants_json(request: Request) -> bool:
    path = request.url.path
    return path.startswith("/api") or path == "/live" or "application/json" in request.headers.get("accept", "")


def create_app(settings: Settings, *, database_url: str, clock: Clock | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = make_pool(database_url, min_size=1, max_size=8, name="mimamori-app")
        app.state.live = LiveHub(database_url, app.state.pool, app.state.clock)
        register_readiness("app", lambda: database_ready(app.state.pool))
        try:
            yield
        finally:
            unregister_readiness("app")
            app.state.stopping.set()
            app.state.live.stop()
            app.state.pool.close()

    app = FastAPI(title="mimamori", version="0.1.0", lifespan=lifespan,
                  description="見守り: households, alerts, devices and privacy for watchers, coordinators and residents.")
    app.state.settings = settings
    app.state.clock = clock or SystemClock()
    app.state.stopping = threading.Event()
    app.state.vapid_public_key = vapid_public_key(settings)
    app.state.csrf_signer = signer(settings, "csrf")
    app.state.trusted_proxies = parse_trusted(settings.trusted_proxies)

    @app.exception_handler(MimamoriError)
    async def app_error(request: Request, exc: MimamoriError) -> Response:
        reason = exc.detail.get("reason")
        if _wants_json(request):
            body = {"detail": exc.message, "code": exc.code}
            if reason:
                body["reason"] = str(reason)
            return JSONResponse(body, status_code=exc.status_code)
        if isinstance(exc, NotAuthenticated):
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        from mimamori.app.templating import render

        locale = request_locale(request)
        message = translate(locale, f"err_{exc.code}")
        if isinstance(exc, CsrfFailed) and reason:
            message = f"{message} ({translate(locale, f'csrf_reason_{reason}')})"
        return render(request, "error.html", status_code=exc.status_code, message=message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if _wants_json(request):
            # The errors without the input they echo: a NaN or Infinity in a JSON body cannot be encoded
            # back (a 500, issue 17), and the request need not be reflected.
            errors = [{k: v for k, v in e.items() if k != "input"} for e in exc.errors()]
            try:
                return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)
            except ValueError:
                return JSONResponse({"detail": "invalid input", "code": "invalid"}, status_code=422)
        from mimamori.app.templating import render

        return render(request, "error.html", status_code=422, message=translate(request_locale(request), "err_invalid"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _wants_json(request) or exc.status_code not in (404, 405):
            return await http_exception_handler(request, exc)
        from mimamori.app.templating import render

        return render(request, "error.html", status_code=exc.status_code,
                      message=translate(request_locale(request), "err_not_found"))

    @app.exception_handler(psycopg.DataError)
    async def data_error(_request: Request, _exc: psycopg.DataError) -> Response:
        # e.g. NUL bytes or out-of-range values that slipped past validation: the input's fault.
        return JSONResponse({"detail": "invalid input", "code": "invalid"}, status_code=422)

    ops_nets = None if settings.ops_networks.strip() == "*" else parse_trusted(settings.ops_networks)

    @app.middleware("http")
    async def operator_paths(request: Request, call_next: CallNext) -> Response:
        """/metrics and the API's schema and docs are the operator's (issue 17: they were public on the
        app's port): from ``MIMAMORI_OPS_NETWORKS`` only; anyone else gets the 404 of a path that is
        not there.
        """
        if ops_nets is not None and request.url.path in OPERATOR_PATHS and not address_in(client_address(request), ops_nets):
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return await call_next(request)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        response.headers.setdefault("x-content-type-options", "nosniff")
        response.headers.setdefault("x-frame-options", "DENY")
        response.headers.setdefault("referrer-policy", "same-origin")
        if is_https(request):  # issue 17: behind the documented TLS proxy too
            response.headers.setdefault("strict-transport-security", "max-age=31536000")
        if request.url.path.startswith(NO_LOGIN_LINK_PATHS):
            # the path is the key (a resident's answer link): no cache, shared or private, keeps the page
            response.headers["cache-control"] = "no-store"
            response.headers["referrer-policy"] = "no-referrer"
        response.headers.setdefault(
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'")
        return response

    @app.middleware("http")
    async def view_log(request: Request, call_next: CallNext) -> Response:
        """The one view-log point (issue 17): every successful read of a route that names a household
        (or an incident, or a safety check's household) is in the household's view log, whichever
        stage's router serves it; services that log with more detail (exports, pages) go first.
        """
        logged: set[str] = set()
        token = LOGGED_VIEWS.set(logged)
        try:
            response = await call_next(request)
        finally:
            LOGGED_VIEWS.reset(token)
        if request.method != "GET" or not 200 <= response.status_code < 300:
            return response
        params = request.scope.get("path_params") or {}
        person = request.scope.get("state", {}).get("person")
        if person is None or not ("household_id" in params or "incident_id" in params):
            return response
        route = getattr(request.scope.get("route"), "path", "") or request.url.path
        await run_in_threadpool(_log_route_view, app, person, params, route, logged)
        return response

    @app.middleware("http")
    async def count_requests(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        # The route's template (/households/{household_id}), never the raw path: bounded label values.
        route = request.scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        metrics.REQUESTS.labels(request.method, template, str(response.status_code)).inc()
        return response

    # Operations (not behind sign-in, not in the OpenAPI document): the same three paths as every
    # stage's ops server (mimamori.kernel.observability), on the app's own port.
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        ok, checks = readiness()
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks},
                            status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        body, content_type = render_metrics()
        return Response(body, media_type=content_type)

    include_routers(app)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


#: Pages whose URL is a single-use key (no login): resident checks, safety-check answers.
NO_LOGIN_LINK_PATHS = ("/r/", "/safety/a/")


def _log_route_view(app: FastAPI, person: Any, params: dict[str, Any], route: str, logged: set[str]) -> None:
    with app.state.pool.connection() as conn:
        conn.autocommit = True
        household_id = params.get("household_id")
        if household_id is None:
            try:
                incident_id = int(params["incident_id"])
            except (KeyError, TypeError, ValueError):
                return
            row = conn.execute("SELECT household_id FROM incidents WHERE incident_id = %s", (incident_id,)).fetchone()
            household_id = row[0] if row else None
        if household_id is None or household_id in logged:
            return
        if conn.execute("SELECT 1 FROM households WHERE household_id = %s", (household_id,)).fetchone() is None:
            return
        log_view(conn, app.state.clock, person, str(household_id), ("api " if route.startswith("/api") else "page ") + route[:180])


def database_ready(pool: ConnectionPool) -> bool:
    """The app's readiness: a pool connection answers within a couple of seconds."""
    with pool.connection(timeout=2) as conn:
        conn.autocommit = True
        return bool(conn.execute("SELECT 1").fetchone() == (1,))


def uvicorn_config(app: FastAPI, *, host: str, port: int) -> Any:
    """The app's server settings. ``proxy_headers`` off: uvicorn would believe the leftmost
    X-Forwarded-For of a loopback peer (a value the client writes); the app reads the headers of
    ``MIMAMORI_TRUSTED_PROXIES`` only (app.auth.proxy).
    """
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2,
                          proxy_headers=False)


def run_app(settings: Settings, *, database_url: str, host: str = "127.0.0.1", port: int = 8000,
            stop: threading.Event | None = None, clock: Clock | None = None) -> None:
    """Serve until ``stop`` is set (or Ctrl-C when run in the main thread)."""
    import uvicorn

    app = create_app(settings, database_url=database_url, clock=clock)
    server = uvicorn.Server(uvicorn_config(app, host=host, port=port))
    if stop is not None:
        def watch() -> None:
            stop.wait()
            app.state.stopping.set()
            server.should_exit = True

        threading.Thread(target=watch, name="app-stop", daemon=True).start()
    server.run()
