"""Commands from the service in each device's own language. Pure: ``plan`` turns one command into
timed local publications; the gateway (``service.run_gateway``) sends them and checks the echo.

A ``blink`` (resident check, safety check) becomes, for a device the adapters have heard from
(their ``route|<device>`` memory says how to reach it):

- Zigbee2MQTT: ``<base>/<name>/set`` ``{"state":"OFF"}`` then ``{"state":"ON"}`` (``state_<ep>`` for an
  endpoint) — zigbee2mqtt.io "MQTT Topics and Messages", ``/set``;
- Tasmota: ``cmnd/<topic>/POWER<n>`` ``OFF``/``ON`` per the device's FullTopic — tasmota.github.io
  Commands, ``Power``;
- Shelly Gen2+: ``<prefix>/rpc`` ``{"method":"Switch.Set","params":{"id":0,"on":false}}``
  (``Light.Set`` for lights) — shelly-api-docs Gen2 "RPC channels" / Switch;
- Shelly Gen1: ``shellies/<id>/relay/<i>/command`` ``off``/``on`` (``light/<i>/command``).

``times`` blinks: the opposite of the known state, then the state again, ``step_s`` apart, so the
light ends as it was. When the state is not known, toggle pairs (``TOGGLE``, ``Switch.Toggle``,
``toggle``) end where they started without knowing it. A device listed as never to be switched, or a
plug (Z2M ``bridge/devices``) without ``switch_ok`` in the command, is refused.

The state reports the device sends while blinking are its echo: ``plan`` returns memory entries
(``<device>|sent`` = until when) that make the adapters take them as ``our_command``, not as the
resident, and record ``<device>|echoed``; ``confirmed`` reads that back.
Devices with no route are native mimamori devices: the command goes as it came to
``mimamori/local/<device>/cmd``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from mimamori.kernel import protocol
from mimamori.kernel.protocol import Command

from .dialects import native

STEP_S: Final = 1.0
ECHO_MARGIN_S: Final = 10.0  # reports this long after the last step are still the echo
MAX_BLINKS: Final = 10
_RPC_IDS = itertools.count(1)
_GEN2_METHODS: Final = {"switch": "Switch", "light": "Light", "rgb": "RGB", "rgbw": "RGBW", "cct": "CCT"}


@dataclass(frozen=True, slots=True)
class Step:
    at_s: float  # seconds after the first step
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Plan:
    dialect: str
    steps: tuple[Step, ...] = ()
    refused: str | None = None
    memory: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0


def route_of(device_id: str, memory: Mapping[str, str]) -> dict[str, Any] | None:
    raw = memory.get(f"route|{device_id}")
    if raw is None:
        return None
    try:
        route = json.loads(raw)
    except ValueError:
        return None
    return route if isinstance(route, dict) else None


def plan(device_id: str, command: Command, memory: Mapping[str, str], *, now_ms: int,
         never_switch: Collection[str] = (), step_s: float = STEP_S) -> Plan:
    route = route_of(device_id, memory)
    if route is None:
        return Plan(native.NAME, (Step(0.0, native.command_topic(device_id), protocol.encode_command(command)),))
    dialect = str(route.get("d"))
    if command.cmd != "blink":
        return Plan(dialect, refused=f"unsupported_command:{command.cmd}")
    if device_id in never_switch:
        return Plan(dialect, refused="never_switch")
    if memory.get(f"plug|{device_id}") == "1" and not command.args.get("switch_ok"):
        return Plan(dialect, refused="plug")
    times = max(1, min(MAX_BLINKS, int(command.args.get("times", 3) or 3)))
    state = memory.get(f"{device_id}|state")
    if state in ("on", "off"):
        original = state == "on"
        wanted: list[bool | None] = [not original, original] * times
    else:
        wanted = [None] * (2 * times)  # toggle pairs
    encode = _ENCODERS.get(dialect)
    if encode is None:
        return Plan(dialect, refused="unknown_dialect")
    steps = tuple(Step(i * step_s, *encode(route, on)) for i, on in enumerate(wanted))
    duration = steps[-1].at_s
    until = now_ms + int((duration + ECHO_MARGIN_S) * 1000)
    return Plan(dialect, steps, None, {f"{device_id}|sent": str(until), f"{device_id}|blink_at": str(now_ms)}, duration)


def confirmed(device_id: str, memory: Mapping[str, str]) -> bool:
    """The device answered the last blink with a state report (an echo since it was sent)."""
    echoed, sent = memory.get(f"{device_id}|echoed"), memory.get(f"{device_id}|blink_at")
    return echoed is not None and sent is not None and echoed.isdigit() and sent.isdigit() and int(echoed) >= int(sent)


def _z2m(route: Mapping[str, Any], on: bool | None) -> tuple[str, bytes]:
    key = "state" if not route.get("ep") else f"state_{route['ep']}"
    value = "TOGGLE" if on is None else ("ON" if on else "OFF")
    return f"{route['base']}/{route['name']}/set", json.dumps({key: value}).encode()


def _tasmota(route: Mapping[str, Any], on: bool | None) -> tuple[str, bytes]:
    prefix = str(route.get("full") or "%prefix%/%topic%/").replace("%prefix%", "cmnd")
    for token in ("%topic%", "%hostname%", "%id%"):
        prefix = prefix.replace(token, str(route["topic"]))
    return f"{prefix.rstrip('/')}/POWER{route.get('relay') or ''}", b"TOGGLE" if on is None else (b"ON" if on else b"OFF")


def _shelly(route: Mapping[str, Any], on: bool | None) -> tuple[str, bytes]:
    method = _GEN2_METHODS.get(str(route.get("comp")), "Switch")
    params: dict[str, Any] = {"id": int(route.get("id", 0))}
    if on is not None:
        params["on"] = on
    body = {"id": next(_RPC_IDS), "src": "mimamori", "method": f"{method}.{'Toggle' if on is None else 'Set'}", "params": params}
    return f"{route['prefix']}/rpc", json.dumps(body).encode()


def _shelly_gen1(route: Mapping[str, Any], on: bool | None) -> tuple[str, bytes]:
    word = b"toggle" if on is None else (b"on" if on else b"off")
    return f"{route['prefix']}/{route.get('comp', 'relay')}/{int(route.get('id', 0))}/command", word


_ENCODERS: Final = {"zigbee2mqtt": _z2m, "tasmota": _tasmota, "shelly": _shelly, "shelly_gen1": _shelly_gen1}
