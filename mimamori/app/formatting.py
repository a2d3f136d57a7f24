"""Dates and times as people read them (pure functions: pages, the team timeline and "why this alert"
share them without importing the page machinery).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DISPLAY_TZ = ZoneInfo("Asia/Tokyo")


def zone(tz: str | None) -> ZoneInfo:
    """A zone by name; none, an unknown or a malformed name: Japan's."""
    try:
        return ZoneInfo(tz) if tz else DISPLAY_TZ
    except (ZoneInfoNotFoundError, ValueError):  # an unknown or malformed zone name: Japan's
        return DISPLAY_TZ


def _day(value: date, locale: str) -> str:
    # Never a bare 01/02: Japanese readers get 年月日, others ISO (year first, no month/day order to guess).
    if locale == "ja":
        return f"{value.year}年{value.month}月{value.day}日"
    return value.isoformat()


def fmt_dt(value: datetime | None, tz: str | None = None, locale: str = "ja") -> str:
    if value is None:
        return ""
    local = value.astimezone(zone(tz))
    return f"{_day(local.date(), locale)} {local:%H:%M}"


def fmt_date(value: datetime | date | None, tz: str | None = None, locale: str = "ja") -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = value.astimezone(zone(tz)).date()
    return _day(value, locale)


def fmt_until(value: datetime | None, tz: str | None = None, locale: str = "ja") -> str:
    """The last day of a period that ends at midnight ("until 30 Jan" ends at 31 Jan 00:00)."""
    return fmt_date(value - timedelta(seconds=1), tz, locale) if value is not None else ""
