"""The contacts page (連絡先): where a person's alerts go. Their own (``/contacts``), or, for their
area's coordinator, a resident's or watcher's (``/contacts/{person_id}``).
"""

from __future__ import annotations

from datetime import time
from typing import Annotated

from fastapi import APIRouter, Form, Path, Request, Response
from fastapi.responses import RedirectResponse

from mimamori.app.auth.deps import CurrentPerson
from mimamori.app.contacts import service
from mimamori.app.db import ClockDep, Conn
from mimamori.app.i18n import request_locale
from mimamori.app.models import ID_PATTERN
from mimamori.app.templating import render
from mimamori.kernel.errors import Conflict, InvalidInput

pages = APIRouter(include_in_schema=False)
PersonId = Annotated[str, Path(pattern=ID_PATTERN)]


def _page(request: Request, person: CurrentPerson, conn: Conn, person_id: str, *, error: str | None = None,
          typed: str = "", status_code: int = 200, tested: dict | None = None) -> Response:
    return render(request, "contacts.html", status_code=status_code, c=service.contacts(conn, person, person_id),
                  error=error, typed=typed, tested=tested)


@pages.get("/contacts")
def my_contacts(request: Request, person: CurrentPerson, conn: Conn) -> Response:
    return _page(request, person, conn, person.person_id)


@pages.get("/contacts/{person_id}")
def contacts_of(person_id: PersonId, request: Request, person: CurrentPerson, conn: Conn) -> Response:
    return _page(request, person, conn, person_id)


@pages.post("/contacts/{person_id}/email")
def add_email(person_id: PersonId, request: Request, person: CurrentPerson, conn: Conn, clock: ClockDep,
              address: Annotated[str, Form(max_length=254)]) -> Response:
    try:
        service.add_email(conn, clock, person, person_id, address)
    except InvalidInput as exc:  # the form again, with what was typed and why it is not an address
        return _page(request, person, conn, person_id, error=str(exc), typed=address, status_code=422)
    return RedirectResponse(f"/contacts/{person_id}?msg=saved", status_code=303)


def _time(text: str) -> time | None:
    try:
        return time.fromisoformat(text) if text else None
    except ValueError:
        raise InvalidInput("a time is HH:MM") from None


@pages.post("/contacts/{person_id}/quiet")
def quiet_hours(person_id: PersonId, person: CurrentPerson, conn: Conn, clock: ClockDep,
                start: Annotated[str, Form(max_length=8)] = "", end: Annotated[str, Form(max_length=8)] = "",
                clear: Annotated[str, Form(max_length=1)] = "") -> Response:
    if clear:
        service.set_quiet_hours(conn, clock, person, person_id, None, None)
    else:
        service.set_quiet_hours(conn, clock, person, person_id, _time(start), _time(end))
    return RedirectResponse(f"/contacts/{person_id}?msg=saved", status_code=303)


@pages.post("/contacts/{person_id}/{channel_id}/test")
def send_test(person_id: PersonId, channel_id: Annotated[int, Path(ge=1, le=2**62)], request: Request,
              person: CurrentPerson, conn: Conn, clock: ClockDep) -> Response:
    try:
        ok, why = service.send_test(conn, clock, person, person_id, channel_id, request_locale(request))
    except Conflict:
        return _page(request, person, conn, person_id, tested={"ok": False, "key": "contacts_test_wait"}, status_code=429)
    del why  # issue 17: a plain "failed"; the reason is in the server's log (it could map the network)
    return _page(request, person, conn, person_id,
                 tested={"ok": ok, "key": "contacts_test_sent" if ok else "contacts_test_failed"})


@pages.post("/contacts/{person_id}/{channel_id}/remove")
def remove(person_id: PersonId, channel_id: Annotated[int, Path(ge=1, le=2**62)], person: CurrentPerson, conn: Conn,
           clock: ClockDep) -> Response:
    service.remove(conn, clock, person, person_id, channel_id)
    return RedirectResponse(f"/contacts/{person_id}?msg=saved", status_code=303)
