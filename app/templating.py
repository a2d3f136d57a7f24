"""Server-rendered pages: one Jinja2 environment; every string goes through ``t`` (app.i18n)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse

from app.i18n import MESSAGES, request_locale, translate

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
DISPLAY_TZ = ZoneInfo("Asia/Tokyo")


def _zone(tz: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(tz) if tz else DISPLAY_TZ
    except Exception:
        return DISPLAY_TZ


def _day(value: date, locale: str) -> str:
    # Never a bare 01/02: Japanese readers get 年月日, others ISO (year first, no month/day order to guess).
    if locale == "ja":
        return f"{value.year}年{value.month}月{value.day}日"
    return value.isoformat()


def fmt_dt(value: datetime | None, tz: str | None = None, locale: str = "ja") -> str:
    if value is None:
        return ""
    local = value.astimezone(_zone(tz))
    return f"{_day(local.date(), locale)} {local:%H:%M}"


def fmt_date(value: datetime | date | None, tz: str | None = None, locale: str = "ja") -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = value.astimezone(_zone(tz)).date()
    return _day(value, locale)


def fmt_until(value: datetime | None, tz: str | None = None, locale: str = "ja") -> str:
    """The last day of a period that ends at midnight ("until 30 Jan" ends at 31 Jan 00:00)."""
    return fmt_date(value - timedelta(seconds=1), tz, locale) if value is not None else ""


def page_context(request: Request, **ctx: Any) -> dict[str, Any]:
    locale = request_locale(request)
    person = getattr(request.state, "person", None)

    def t(key: str, **values: object) -> str:
        return translate(locale, key, **values)

    def t_entry(entry: dict[str, Any], names: dict[str, str] | None = None) -> str:
        """A team-timeline entry in words (app.incidents.timeline), with a person's own note after it."""
        from app.incidents.timeline import describe, person_body

        text = describe(locale, entry, names or {})
        body = person_body(entry)
        return f"{text}: {body}" if body else text

    def t_step(step: dict[str, Any]) -> str:
        from app.incidents.timeline import chain_step_text

        return chain_step_text(locale, step)

    def t_why(incident: dict[str, Any]) -> list[str]:
        """Why the detector raised this incident, in sentences (app.incidents.why)."""
        from app.incidents.why import explain

        return explain(locale, incident, incident.get("devices") or {})

    def t_audit(action: str) -> str:
        """A safety check's audit action in words (a generic text for one without its own)."""
        key = f"safety_audit_{action}"
        return translate(locale, key if key in MESSAGES else "tl_unknown")

    outages: list[dict[str, Any]] = []
    if person is not None:
        from app.devices.service import area_outages

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
