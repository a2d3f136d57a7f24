"""Server-rendered pages: one Jinja2 environment; every string goes through ``t`` (app.i18n), every date
through ``app.formatting``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse

from mimamori.app.devices.service import area_outages
from mimamori.app.formatting import fmt_date, fmt_dt, fmt_until
from mimamori.app.i18n import MESSAGES, request_locale, translate
from mimamori.app.incidents.timeline import chain_step_text, describe, person_body
from mimamori.app.incidents.why import explain

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def page_context(request: Request, **ctx: Any) -> dict[str, Any]:
    locale = request_locale(request)
    person = getattr(request.state, "person", None)

    def t(key: str, **values: object) -> str:
        return translate(locale, key, **values)

    def t_entry(entry: dict[str, Any], names: dict[str, str] | None = None) -> str:
        """A team-timeline entry in words (app.incidents.timeline), with a person's own note after it."""
        text = describe(locale, entry, names or {})
        body = person_body(entry)
        return f"{text}: {body}" if body else text

    def t_step(step: dict[str, Any]) -> str:
        return chain_step_text(locale, step)

    def t_why(incident: dict[str, Any]) -> list[str]:
        """Why the detector raised this incident, in sentences (app.incidents.why)."""
        return explain(locale, incident, incident.get("devices") or {})

    def t_audit(action: str) -> str:
        """A safety check's audit action in words (a generic text for one without its own)."""
        key = f"safety_audit_{action}"
        return translate(locale, key if key in MESSAGES else "tl_unknown")

    outages: list[dict[str, Any]] = []
    if person is not None:
        with request.app.state.pool.connection() as conn:
            conn.autocommit = True
            outages = area_outages(conn, person)
    base = {
        "request": request, "locale": locale, "person": person, "csrf": getattr(request.state, "csrf", None),
        "t": t, "t_entry": t_entry, "t_audit": t_audit, "t_step": t_step, "t_why": t_why, "outages": outages,
        "fmt_dt": lambda value, tz=None: fmt_dt(value, tz, locale),
        "fmt_date": lambda value, tz=None: fmt_date(value, tz, locale),
        "fmt_until": lambda value, tz=None: fmt_until(value, tz, locale),
        "vapid_public_key": request.app.state.vapid_public_key,
        "flash": translate(locale, request.query_params["msg"]) if request.query_params.get("msg") in MESSAGES else None,
    }
    base.update(ctx)
    return base


def render(request: Request, name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, page_context(request, **ctx), status_code=status_code)
