"""Thin routers: unpaired devices, pairing, device problems, area outages."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Path, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from mimamori.app.auth.deps import CurrentPerson
from mimamori.app.db import ClockDep, Conn
from mimamori.app.devices import service
from mimamori.app.households import service as households
from mimamori.app.i18n import request_locale, translate
from mimamori.app.models import ID_PATTERN, Id, Name
from mimamori.app.templating import render
from mimamori.kernel.access import require_manager
from mimamori.kernel.errors import MimamoriError

api = APIRouter(prefix="/api/devices", tags=["devices"])
pages = APIRouter(include_in_schema=False)


class PairIn(BaseModel):
    device_id: Id
    household_id: Id
    kind: Literal["bulb", "motion", "door", "plug"] | None = None
    room: Name | None = None
    #: The gateway a device not yet seen will report through (it is bound to it; issue 17).
    gateway_id: Id | None = None


@api.get("/unpaired", responses={401: {}, 403: {}})
def api_unpaired(person: CurrentPerson, conn: Conn) -> list[dict[str, Any]]:
    return service.list_unpaired(conn, person)


@api.post("/pair", responses={401: {}, 403: {}, 404: {}, 409: {}, 422: {}})
def api_pair(body: PairIn, person: CurrentPerson, conn: Conn, clock: ClockDep) -> dict[str, Any]:
    return service.pair_device(conn, clock, person, device_id=body.device_id, household_id=body.household_id,
                               kind=body.kind, room=body.room, gateway_id=body.gateway_id)


class MoveIn(BaseModel):
    gateway_id: Id
    reason: Annotated[str, Field(max_length=500)] = ""


@api.post("/{device_id}/gateway", responses={401: {}, 403: {}, 404: {}, 409: {}, 422: {}})
def api_move(device_id: Annotated[str, Path(pattern=ID_PATTERN)], body: MoveIn, person: CurrentPerson, conn: Conn,
             clock: ClockDep) -> dict[str, Any]:
    """Bind a paired device to another gateway: a coordinator's audited act (ingest never moves a
    paired device; issue 17).
    """
    return service.move_device(conn, clock, person, device_id=device_id, gateway_id=body.gateway_id, reason=body.reason)


class BlinkIn(BaseModel):
    #: true: may be switched for a check; false: never; null: by its kind (bulbs yes, plugs no).
    allowed: bool | None


@api.put("/{device_id}/blink", responses={401: {}, 403: {}, 404: {}, 422: {}})
def api_blink(device_id: Annotated[str, Path(pattern=ID_PATTERN)], body: BlinkIn, person: CurrentPerson,
              conn: Conn) -> dict[str, Any]:
    """Whether the service may blink this device (a plug powering a heater must never be switched)."""
    return service.set_blink_allowed(conn, person, device_id, body.allowed)


@pages.post("/coord/devices/{device_id}/blink")
def blink_submit(device_id: Annotated[str, Path(pattern=ID_PATTERN)], person: CurrentPerson, conn: Conn,
                 allowed: Annotated[Literal["yes", "no", "default"], Form()]) -> Response:
    result = service.set_blink_allowed(conn, person, device_id, {"yes": True, "no": False, "default": None}[allowed])
    return RedirectResponse(f"/households/{result['household_id']}?msg=saved", status_code=303)


@api.get("/problems", responses={401: {}, 403: {}})
def api_problems(person: CurrentPerson, conn: Conn, clock: ClockDep) -> list[dict[str, Any]]:
    return service.device_problems(conn, clock, person)


@api.get("/outages", responses={401: {}})
def api_outages(person: CurrentPerson, conn: Conn) -> list[dict[str, Any]]:
    return service.area_outages(conn, person)


@pages.get("/coord/devices")
def devices_page(request: Request, person: CurrentPerson, conn: Conn, clock: ClockDep,
                 device_id: str | None = None, error: str | None = None) -> Response:
    require_manager(person)
    return render(request, "devices.html", unpaired=service.list_unpaired(conn, person),
                  households=households.list_households(conn, clock, person, what="page /coord/devices (list)"),
                  device_id=device_id, error=error)


@pages.post("/coord/devices/pair")
def pair_submit(request: Request, person: CurrentPerson, conn: Conn, clock: ClockDep,
                device_id: Annotated[str, Form(pattern=ID_PATTERN)], household_id: Annotated[str, Form(pattern=ID_PATTERN)],
                kind: Annotated[str, Form()] = "", room: Annotated[str, Form(max_length=100)] = "") -> Response:
    try:
        result = service.pair_device(conn, clock, person, device_id=device_id, household_id=household_id,
                                     kind=kind or None, room=room or None)
    except MimamoriError as exc:
        locale = request_locale(request)
        return render(request, "devices.html", status_code=exc.status_code, unpaired=service.list_unpaired(conn, person),
                      households=households.list_households(conn, clock, person, what="page /coord/devices (list)"), device_id=device_id,
                      error=translate(locale, f"err_{exc.code}"))
    return RedirectResponse(f"/households/{household_id}?msg=saved&paired={result['device_id']}", status_code=303)
