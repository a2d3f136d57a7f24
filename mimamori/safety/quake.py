"""Earthquake bulletins → one model → which areas' safety checks to start (pure core, no I/O).

Two feeds, one model (``QuakeReport``):

- JMA 防災情報XML earthquake documents: 震度速報 (VXSE51: intensities per 細分区域, the region level)
  and 震源・震度情報 (VXSE53: per municipality, ``Body/Intensity/Observation/Pref/Area/City`` with a
  7-digit ``Code`` and ``MaxInt``). ``Control/Status`` 通常/訓練/試験 → real/drill/test;
  ``Head/InfoType`` 発表/訂正/取消 → issued/corrected/cancelled; ``Head/EventID`` ties the bulletins
  of one quake. Intensities in the body are ``1 2 3 4 5- 5+ 6- 6+ 7``; a city whose stations did not
  report but is estimated at 5弱 or more carries ``Condition`` 震度５弱以上未入電 instead of ``MaxInt``.
- P2PQuake JSON API, code 551: ``issue.type`` (ScalePrompt = 震度速報 by region, DetailScale = per
  station, ...), ``issue.correct``, ``earthquake.maxScale``, ``points[].addr/scale/pref/isArea``.

Intensities are kept on P2PQuake's integer scale, which orders them: 10=震度1, 20=2, 30=3, 40=4,
45=5弱, 46=5弱以上と推定（震度未入電）, 50=5強, 55=6弱, 60=6強, 70=7 (https://www.p2pquake.net/develop/json_api_v2/).

``decide`` says, per area, what one document does: start the area's check, propose it to the
coordinator, or nothing — and why. At most one action per (quake, area) over all its bulletins:
the caller passes the areas already acted on for this quake.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Literal
from xml.etree import ElementTree as ET  # DTDs and entities are refused before parsing: see _parse_xml

from mimamori.kernel import errors

Status = Literal["real", "drill", "test"]
InfoType = Literal["issued", "corrected", "cancelled"]
Mode = Literal["start", "propose"]
Decision = Literal["start", "propose", "already", "below", "not_affected", "drill", "cancelled", "stale"]

#: A bulletin read this long after it was issued pages nobody: a replayed archive, a feed that caught up
#: after an outage. An operator may still replay one on purpose (``feed --replay``).
STALE_AFTER_S = 3 * 3600.0
_JST = timezone(timedelta(hours=9))

#: P2PQuake's scale numbers and their names; 46 is "5弱 or more, not yet reported".
SCALE_NAMES: Final[Mapping[int, str]] = {
    10: "1", 20: "2", 30: "3", 40: "4", 45: "5弱", 46: "5弱以上（未入電）", 50: "5強", 55: "6弱", 60: "6強", 70: "7",
}
UNREPORTED_5_LOWER: Final = 46
DEFAULT_THRESHOLD: Final = 45  # 震度5弱

_JMA_INT: Final[Mapping[str, int]] = {
    "1": 10, "2": 20, "3": 30, "4": 40, "5-": 45, "5+": 50, "6-": 55, "6+": 60, "7": 70,
}
_THRESHOLD_NAMES: Final[Mapping[str, int]] = {
    **{name: scale for scale, name in SCALE_NAMES.items() if scale != UNREPORTED_5_LOWER},
    **_JMA_INT,
}
_STATUS: Final[Mapping[str, Status]] = {"通常": "real", "訓練": "drill", "試験": "test"}
_INFO_TYPE: Final[Mapping[str, InfoType]] = {"発表": "issued", "訂正": "corrected", "取消": "cancelled"}
_UNREPORTED_CONDITION: Final = "震度５弱以上未入電"
P2PQUAKE_EARTHQUAKE_CODE: Final = 551
MAX_DOCUMENT_BYTES: Final = 5_000_000  # the largest real VXSE53 is a few hundred kB


class QuakeDocumentError(errors.InvalidInput, ValueError):
    """A document that is not a readable JMA earthquake bulletin or P2PQuake 551 record."""


@dataclass(frozen=True)
class Place:
    """One intensity of a document: a municipality (JMA City), a region (細分区域) or a station."""

    kind: Literal["city", "region", "station"]
    name: str
    code: str | None
    pref: str | None
    scale: int


@dataclass(frozen=True)
class QuakeReport:
    source: Literal["jma", "p2pquake"]
    kind: str                   # VXSE51 / VXSE53 / ScalePrompt / DetailScale / ...
    quake_id: str               # ties repeated and corrected bulletins of one quake
    document_id: str            # SHA-256 of the bytes: the same document delivered twice is one
    status: Status
    info_type: InfoType
    issued_at: str              # as the document says it (ISO 8601 for JMA, JST "Y/m/d H:M:S" for P2PQuake)
    title: str
    max_scale: int | None
    places: tuple[Place, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "kind": self.kind, "quake_id": self.quake_id, "document_id": self.document_id,
            "status": self.status, "info_type": self.info_type, "issued_at": self.issued_at, "title": self.title,
            "max_intensity": scale_name(self.max_scale), "places": len(self.places),
        }


@dataclass(frozen=True)
class AreaRule:
    """How an area is found in bulletins and what a strong enough quake does there.

    ``municipality_codes``: JMA 市町村等 codes (7 digits, VXSE53 ``City/Code``); ``municipality_names``:
    the JMA municipality names (``City/Name``, e.g. 田村市, 福島伊達市), which P2PQuake's station names
    begin with; ``region_codes`` / ``region_names``: optional 細分区域 (e.g. 442 / 静岡県中部) so that
    the first 震度速報, which names regions only, can act before the municipal intensities arrive.
    """

    area: str
    municipality_codes: frozenset[str] = frozenset()
    municipality_names: frozenset[str] = frozenset()
    region_codes: frozenset[str] = frozenset()
    region_names: frozenset[str] = frozenset()
    threshold: int = DEFAULT_THRESHOLD
    mode: Mode = "start"


@dataclass(frozen=True)
class AreaDecision:
    area: str | None            # None: the decision is about the whole document (drill, cancel)
    decision: Decision
    why: str
    scale: int | None = None
    matched: tuple[str, ...] = field(default=())

    @property
    def acts(self) -> bool:
        return self.decision in ("start", "propose")

    def as_json(self) -> dict[str, Any]:
        return {"area": self.area, "decision": self.decision, "why": self.why, "intensity": scale_name(self.scale),
                "matched": list(self.matched)}


def scale_name(scale: int | None) -> str | None:
    return None if scale is None else SCALE_NAMES.get(scale, str(scale))


def parse_threshold(value: str | int) -> int:
    """``"5弱"``, ``"5-"``, ``"６弱"`` or a P2PQuake number (45) → the scale number."""
    if isinstance(value, int):
        if value in SCALE_NAMES and value != UNREPORTED_5_LOWER:
            return value
        raise ValueError(f"unknown intensity {value!r}; one of {sorted(k for k in SCALE_NAMES if k != UNREPORTED_5_LOWER)}")
    text = value.strip().translate(_FULLWIDTH).removeprefix("震度")
    if text.isdigit() and int(text) in SCALE_NAMES:
        return parse_threshold(int(text))
    if text in _THRESHOLD_NAMES:
        return _THRESHOLD_NAMES[text]
    raise ValueError(f"unknown intensity {value!r}; e.g. 4, 5弱, 5強, 6弱, 6強, 7")


_FULLWIDTH: Final = str.maketrans("０１２３４５６７８９", "0123456789")


# =============================================================================================
# Parsing
# =============================================================================================


def parse(data: bytes) -> QuakeReport:
    """Read a JMA earthquake XML document or a P2PQuake 551 JSON record."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise QuakeDocumentError(f"document of {len(data)} bytes is larger than {MAX_DOCUMENT_BYTES}")
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<"):
        return parse_jma(data)
    if head.startswith(b"{"):
        return parse_p2pquake(data)
    raise QuakeDocumentError("neither XML (JMA) nor a JSON object (P2PQuake)")


def _document_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(elem: ET.Element | None, name: str) -> ET.Element | None:
    if elem is None:
        return None
    for c in elem:
        if _local(c.tag) == name:
            return c
    return None


def _children(elem: ET.Element | None, name: str) -> list[ET.Element]:
    return [] if elem is None else [c for c in elem if _local(c.tag) == name]


def _text(elem: ET.Element | None, name: str) -> str:
    c = _child(elem, name)
    return (c.text or "").strip() if c is not None else ""


def _parse_xml(data: bytes) -> ET.Element:
    # JMA documents never declare a DTD or entities; refusing them keeps entity expansion attacks out
    # without a defusedxml dependency.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise QuakeDocumentError("a JMA document has no DOCTYPE or ENTITY declarations")
    try:
        return ET.fromstring(data)  # noqa: S314 -- DTDs and entities refused above
    except ET.ParseError as exc:
        raise QuakeDocumentError(f"not well-formed XML: {exc}") from exc


def _jma_scale(text: str, *, where: str) -> int:
    scale = _JMA_INT.get(text.strip())
    if scale is None:
        raise QuakeDocumentError(f"unknown intensity {text!r} at {where}")
    return scale


def _jma_place_scale(elem: ET.Element, where: str) -> int | None:
    # "5弱 or more, not reported" wins over a MaxInt of the stations that did report: the silent ones
    # may have shaken hardest
    if _text(elem, "Condition") == _UNREPORTED_CONDITION:
        return UNREPORTED_5_LOWER
    max_int = _text(elem, "MaxInt")
    return _jma_scale(max_int, where=where) if max_int else None


def parse_jma(data: bytes) -> QuakeReport:
    root = _parse_xml(data)
    if _local(root.tag) != "Report":
        raise QuakeDocumentError(f"the root element is {_local(root.tag)}, not a JMA Report")
    control, head, body = _child(root, "Control"), _child(root, "Head"), _child(root, "Body")
    if control is None or head is None:
        raise QuakeDocumentError("a JMA Report has Control and Head")
    status_text = _text(control, "Status")
    status = _STATUS.get(status_text)
    if status is None:
        raise QuakeDocumentError(f"unknown Control/Status {status_text!r} (通常, 訓練 or 試験)")
    info_text = _text(head, "InfoType")
    info_type = _INFO_TYPE.get(info_text)
    if info_type is None:
        raise QuakeDocumentError(f"unknown Head/InfoType {info_text!r} (発表, 訂正 or 取消)")
    event_id = _text(head, "EventID")
    if not event_id:
        raise QuakeDocumentError("Head/EventID is missing: bulletins of one quake could not be tied together")
    control_title = _text(control, "Title")
    if control_title not in ("震度速報", "震源・震度に関する情報"):
        raise QuakeDocumentError(f"{control_title!r} is not an earthquake intensity bulletin (震度速報, 震源・震度に関する情報)")
    kind = "VXSE51" if control_title == "震度速報" else "VXSE53"
    places: list[Place] = []
    observation = _child(_child(body, "Intensity"), "Observation")
    for pref in _children(observation, "Pref"):
        pref_name = _text(pref, "Name")
        for region in _children(pref, "Area"):
            region_name, region_code = _text(region, "Name"), _text(region, "Code") or None
            scale = _jma_place_scale(region, f"Area {region_name}")
            if scale is not None:
                places.append(Place("region", region_name, region_code, pref_name, scale))
            for city in _children(region, "City"):
                city_name, city_code = _text(city, "Name"), _text(city, "Code") or None
                scale = _jma_place_scale(city, f"City {city_name}")
                if scale is not None:
                    places.append(Place("city", city_name, city_code, pref_name, scale))
    max_text = _text(observation, "MaxInt")
    max_scale = _jma_scale(max_text, where="Observation/MaxInt") if max_text else None
    if max_scale is None and places:
        max_scale = max(p.scale for p in places)
    return QuakeReport(
        source="jma", kind=kind, quake_id=f"jma:{event_id}", document_id=_document_id(data), status=status,
        info_type=info_type, issued_at=_text(head, "ReportDateTime"), title=_text(head, "Title"),
        max_scale=max_scale, places=tuple(places),
    )


_P2P_KINDS: Final = ("ScalePrompt", "Destination", "ScaleAndDestination", "DetailScale", "Foreign", "Other")


def _p2p_scale(value: Any, where: str) -> int | None:
    if value is None or value == -1:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QuakeDocumentError(f"{where} is not a number: {value!r}")
    scale = int(value)  # the API documents only the integer part as meaningful
    if scale not in SCALE_NAMES:
        raise QuakeDocumentError(f"{where} {value!r} is not a P2PQuake scale ({sorted(SCALE_NAMES)})")
    return scale


def parse_p2pquake(data: bytes) -> QuakeReport:
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuakeDocumentError(f"not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise QuakeDocumentError("a P2PQuake record is a JSON object")
    if record.get("code") != P2PQUAKE_EARTHQUAKE_CODE:
        raise QuakeDocumentError(f"P2PQuake code {record.get('code')!r} is not 551 (earthquake information)")
    issue, quake = record.get("issue"), record.get("earthquake")
    if not isinstance(issue, dict) or not isinstance(quake, dict):
        raise QuakeDocumentError("a 551 record has 'issue' and 'earthquake' objects")
    kind = issue.get("type")
    if kind not in _P2P_KINDS:
        raise QuakeDocumentError(f"unknown issue.type {kind!r}")
    origin = quake.get("time")
    if not isinstance(origin, str) or not origin:
        raise QuakeDocumentError("earthquake.time is missing: bulletins of one quake could not be tied together")
    correct = issue.get("correct", "None")
    places: list[Place] = []
    points = record.get("points") or []
    if not isinstance(points, list):
        raise QuakeDocumentError("points is not a list")
    for i, point in enumerate(points):
        if not isinstance(point, dict) or not isinstance(point.get("addr"), str):
            raise QuakeDocumentError(f"points[{i}] has no addr")
        scale = _p2p_scale(point.get("scale"), f"points[{i}].scale")
        if scale is None:
            continue
        pref = point.get("pref") if isinstance(point.get("pref"), str) else None
        places.append(Place("region" if point.get("isArea") else "station", point["addr"], None, pref, scale))
    return QuakeReport(
        # P2PQuake carries no JMA EventID; the origin time (to the minute, as JMA states it) ties the
        # bulletins of one quake together.
        source="p2pquake", kind=str(kind), quake_id=f"p2pquake:{origin}", document_id=_document_id(data),
        status="real", info_type="issued" if correct in ("None", "Unknown", None) else "corrected",
        issued_at=str(issue.get("time", "")), title=str(kind),
        max_scale=_p2p_scale(quake.get("maxScale"), "earthquake.maxScale"), places=tuple(places),
    )


# =============================================================================================
# Deciding
# =============================================================================================


def _matches(rule: AreaRule, place: Place) -> bool:
    if place.kind == "city":
        return (place.code is not None and place.code in rule.municipality_codes) or place.name in rule.municipality_names
    if place.kind == "region":
        return (place.code is not None and place.code in rule.region_codes) or place.name in rule.region_names
    # a P2PQuake station: its name begins with the JMA municipality name (厚真町鹿沼 → 厚真町)
    return any(place.name.startswith(name) for name in rule.municipality_names)


def reaches(scale: int, threshold: int) -> bool:
    """Whether an intensity reaches a threshold. "5弱 or more, not reported" reaches every threshold: a
    station that could not report after a strong quake is a reason to check, not to wait."""
    return scale == UNREPORTED_5_LOWER or scale >= threshold


def area_places(report: QuakeReport, rule: AreaRule) -> list[Place]:
    """The document's places in the area: its municipalities (or P2PQuake stations in them) when the
    document names any, else its regions (a 震度速報 names regions only)."""
    fine = [p for p in report.places if p.kind != "region" and _matches(rule, p)]
    return fine or [p for p in report.places if p.kind == "region" and _matches(rule, p)]


def issued_epoch(report: QuakeReport) -> float | None:
    """When the bulletin was issued (epoch seconds), from JMA's ISO 8601 ``ReportDateTime`` or P2PQuake's
    ``time`` (JST, "YYYY/MM/DD HH:MM:SS[.fff]"); None when the document does not say."""
    text = (report.issued_at or "").strip()
    try:
        if report.source == "p2pquake":
            moment = datetime.strptime(text.split(".")[0], "%Y/%m/%d %H:%M:%S").replace(tzinfo=_JST)
        else:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=_JST)
    except ValueError:
        return None
    return moment.timestamp()


def decide(report: QuakeReport, rules: Iterable[AreaRule], acted: Mapping[str, str], *,
           now: float | None = None) -> list[AreaDecision]:
    """What this document does for each area. ``acted``: area → "start"/"propose" for the areas this
    quake already acted on (from earlier bulletins); they are never acted on twice. ``now``: the
    service's time; a bulletin issued more than ``STALE_AFTER_S`` before it pages nobody (None: a replay,
    judged as if read when issued)."""
    issued = issued_epoch(report)
    if now is not None and issued is not None and now - issued > STALE_AFTER_S:
        hours = (now - issued) / 3600
        return [AreaDecision(None, "stale", f"issued {hours:.1f} h before it was read: a late or replayed bulletin "
                                            "pages nobody")]
    if report.status != "real":
        what = "訓練 (drill)" if report.status == "drill" else "試験 (test)"
        return [AreaDecision(None, "drill", f"{what} bulletin: never pages anyone")]
    if report.info_type == "cancelled":
        return [AreaDecision(None, "cancelled", "取消: the bulletin is withdrawn; a check already started stays open "
                                                "for its coordinator to close, open proposals are withdrawn")]
    decisions: list[AreaDecision] = []
    for rule in rules:
        places = area_places(report, rule)
        if not places:
            decisions.append(AreaDecision(rule.area, "not_affected", "no intensity reported for the area's places"))
            continue
        scale = max(p.scale for p in places)
        matched = tuple(dict.fromkeys(f"{p.name}:{scale_name(p.scale)}" for p in places))
        label = f"震度{scale_name(scale)}"
        if rule.area in acted:
            done = "started" if acted[rule.area] == "start" else "proposed"
            decisions.append(AreaDecision(rule.area, "already", f"{label}; a check was already {done} for this quake",
                                          scale, matched))
        elif not any(reaches(p.scale, rule.threshold) for p in places):
            decisions.append(AreaDecision(rule.area, "below", f"{label} is below the area's threshold "
                                                              f"震度{scale_name(rule.threshold)}", scale, matched))
        else:
            corrected = " (訂正)" if report.info_type == "corrected" else ""
            decisions.append(AreaDecision(rule.area, rule.mode, f"{label}{corrected} reaches the area's threshold "
                                                                f"震度{scale_name(rule.threshold)}", scale, matched))
    return decisions


def check_message(decision: AreaDecision) -> str:
    """The message of an automatically started check (Japanese: it goes to the residents)."""
    return (f"地震がありました（{decision.area}で震度{scale_name(decision.scale)}）。"
            "無事ですか？電球のスイッチを2回切り替えるか、届いたリンクのボタンで教えてください。")
