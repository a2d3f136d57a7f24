"""The service's LINE channel settings, read without importing LINE's SDK (``alerts.line`` does that, and it
takes most of a second: workers import it only when LINE is set up)."""

from __future__ import annotations

from typing import Any


def line_settings(settings: Any) -> Any:
    """``alerts.line.LineSettings`` from ``MIMAMORI_LINE_*``, or None when LINE is not set up."""
    if settings.line_channel_secret is None or settings.line_access_token is None:
        return None
    from mimamori.alerts.line import LineSettings

    return LineSettings(settings.line_access_token.get_secret_value(), settings.line_channel_secret.get_secret_value(),
                        api_base=settings.line_api_base, monthly_push_budget=settings.line_monthly_push_budget)


def line_sender(settings: Any, *, database_url: str, clock: Any) -> Any:
    """The outbox's LINE sender (``alerts.line.LineSender``) when LINE is set up, else None."""
    line = line_settings(settings)
    if line is None:
        return None
    from mimamori.alerts.line import LineSender

    return LineSender(line, database_url=database_url, clock=clock)
