"""The safety check's pages and its JSON API, wired into the app by one call: ``include(app)``
(overrides ``safety.views.current_person`` with the app's signed-in person, mounts
``safety.views``' routers and the pages of ``app.safety.views``, and merges the strings of
``app.safety.i18n`` into the app's one i18n dictionary)."""

from __future__ import annotations

from fastapi import FastAPI

from app.i18n import MESSAGES
from app.safety.i18n import SAFETY_MESSAGES

for _key, _pair in SAFETY_MESSAGES.items():
    MESSAGES.setdefault(_key, _pair)


def include(app: FastAPI) -> None:
    import safety.views as safety_views
    from app.auth import current_person
    from app.safety import views as pages

    app.dependency_overrides[safety_views.current_person] = current_person
    app.include_router(safety_views.safety_api)
    app.include_router(safety_views.answer_api)
    app.include_router(pages.pages)
