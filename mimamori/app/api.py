"""Every router of the web app in one place (Netflix Dispatch's ``api.py``): the app's own domains and
the stages' JSON APIs (``alerts.views``, ``safety.views``), in the order they are matched.

The stages' routers are included behind the app's authentication (``AUTHENTICATED``): it signs the
person in (cookie session with its CSRF check, or a Bearer token) and puts them on
``request.state.person``, which the stages' own ``current_person`` reads. No stub, no
``dependency_overrides``. The no-login routes (a resident's answer link, a safety answer link, the PWA
files, sign-in) carry their own credential or need none.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

import mimamori.alerts.views as alerts_api
import mimamori.safety.views as safety_api
from mimamori.app import pwa
from mimamori.app.auth import views as auth_views
from mimamori.app.auth.deps import current_person
from mimamori.app.contacts import views as contact_views
from mimamori.app.devices import views as device_views
from mimamori.app.households import views as household_views
from mimamori.app.incidents import resident_views
from mimamori.app.incidents import views as incident_views
from mimamori.app.line import views as line_views
from mimamori.app.live import views as live_views
from mimamori.app.notes import views as note_views
from mimamori.app.privacy import views as privacy_views
from mimamori.app.safety import views as safety_pages

#: Runs before a stage's endpoint: signs the person in, or answers 401 (pages: the sign-in redirect).
AUTHENTICATED = [Depends(current_person)]


def include_routers(app: FastAPI) -> None:
    for module in (auth_views, household_views, device_views, privacy_views):
        app.include_router(module.api)
        app.include_router(module.pages)
    app.include_router(incident_views.pages)  # the alerts' JSON API is the engine's, below
    app.include_router(incident_views.notifications)
    app.include_router(resident_views.pages)  # the resident's answer to a resident check (no login)
    app.include_router(contact_views.pages)  # where each person's alerts go
    app.include_router(live_views.router)  # /live and /api/alerts/notifications/stream (before /api/alerts/{id})
    app.include_router(pwa.router)
    app.include_router(line_views.api)  # LINE's webhook (its signature is the credential) and the person's LINE link
    app.include_router(note_views.api)  # the daily note's opt-in (issue 16)
    app.include_router(alerts_api.alerts_api, dependencies=AUTHENTICATED)
    app.include_router(safety_api.safety_api, dependencies=AUTHENTICATED)
    app.include_router(safety_api.answer_api)  # no login: the signed single-use link is the credential
    app.include_router(safety_pages.pages)
