"""Heat watch (issue 16, item 4): indoor WBGT from a room's temperature and humidity, and when it has
stayed dangerous long enough, with the resident at home and awake, to ask them to cool the room.

Most heat-stroke deaths of older people in Japan happen at home, indoors. Cheap sensors on the same
networks as the bulbs report temperature and relative humidity; WBGT (暑さ指数) needs a globe
thermometer, so it is estimated. The Ministry of the Environment estimates WBGT from ordinary weather
elements with Ono et al. (2014), 日本生気象学会雑誌 50(4) 147–157 (wbgt.env.go.jp, "当サイトで提供する
暑さ指数について"):

    WBGT = 0.735·Ta + 0.0374·RH + 0.00292·Ta·RH + 7.619·SR − 4.557·SR² − 0.0572·WS − 4.064

Indoors there is no sun (SR = 0); the Society's 「日常生活における熱中症予防指針」 Ver.4 (2022) states its
indoor chart for no sun and a 0.2 m/s draught, which is what is used here. Levels are the guideline's:
注意 ≥ 21, 警戒 ≥ 25, 厳重警戒 ≥ 28, 危険 ≥ 31.

Pure: readings in, decisions out; no clock (times are given), no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

INDOOR_DRAUGHT_M_S = 0.2
LEVELS = ((31.0, "危険"), (28.0, "厳重警戒"), (25.0, "警戒"), (21.0, "注意"))
DEFAULT_THRESHOLD = 28.0          # 厳重警戒: the guideline's advice is to avoid heat exposure, cool the room
DEFAULT_SUSTAIN_S = 30 * 60       # dangerous for this long before anyone is asked
STALE_READING_S = 2 * 3600        # a sensor that has not reported for this long says nothing about now
AWAKE_WITHIN_S = 60 * 60          # the resident counts as awake with activity this recently


def indoor_wbgt(temperature_c: float, humidity_pct: float) -> float:
    """Estimated indoor WBGT (°C) from air temperature and relative humidity (no sun, 0.2 m/s)."""
    rh = min(max(humidity_pct, 0.0), 100.0)
    ta = temperature_c
    return 0.735 * ta + 0.0374 * rh + 0.00292 * ta * rh - 0.0572 * INDOOR_DRAUGHT_M_S - 4.064


def level(wbgt: float) -> str | None:
    """The guideline's word for a WBGT, or None below 注意."""
    for bound, word in LEVELS:
        if wbgt >= bound:
            return word
    return None


@dataclass(frozen=True)
class Reading:
    at: float              # epoch seconds
    temperature_c: float
    humidity_pct: float

    @property
    def wbgt(self) -> float:
        return indoor_wbgt(self.temperature_c, self.humidity_pct)


@dataclass(frozen=True)
class HeatDanger:
    since: float           # when the room became (and stayed) dangerous
    wbgt: float            # the latest estimate
    peak: float
    level: str


def sustained_danger(readings: Iterable[Reading], now: float, *, threshold: float = DEFAULT_THRESHOLD,
                     sustain_s: float = DEFAULT_SUSTAIN_S) -> HeatDanger | None:
    """The room has been at or above ``threshold`` continuously for ``sustain_s`` up to ``now``.

    A reading holds until the next one (sensors report on change, or every few minutes); a reading older
    than ``STALE_READING_S`` at ``now`` holds nothing. One reading below the threshold ends a spell."""
    ordered = sorted((r for r in readings if r.at <= now), key=lambda r: r.at)
    if not ordered or now - ordered[-1].at > STALE_READING_S:
        return None
    since: float | None = None
    peak = float("-inf")
    for r in ordered:
        if r.wbgt >= threshold:
            if since is None:
                since, peak = r.at, r.wbgt
            peak = max(peak, r.wbgt)
        else:
            since, peak = None, float("-inf")
    if since is None or now - since < sustain_s:
        return None
    latest = ordered[-1].wbgt
    return HeatDanger(since, latest, peak, level(latest) or "")


@dataclass(frozen=True)
class HeatDecision:
    action: str            # none | ask_resident | alert_team
    reason: str
    danger: HeatDanger | None = None


def decide(danger: HeatDanger | None, *, now: float, last_activity_at: float | None, away: bool,
           asked_at: float | None, answered: bool = False, answer_within_s: float = 15 * 60) -> HeatDecision:
    """What to do about a home's heat now: ask the resident first (a blink and 「エアコンをつけてください」),
    then the team if the danger lasts and nobody answered. Nobody is disturbed for an empty or sleeping
    home's heat: the resident is not at risk in a home they are away from, and waking a sleeper for a
    warm room at night is the family's call (the coordinator's area page still shows the home at risk)."""
    if danger is None:
        return HeatDecision("none", "not dangerous for long enough")
    if away:
        return HeatDecision("none", "the resident is away", danger)
    if last_activity_at is None or now - last_activity_at > AWAKE_WITHIN_S:
        return HeatDecision("none", "no sign the resident is up", danger)
    if answered:
        return HeatDecision("none", "the resident answered", danger)
    if asked_at is None:
        return HeatDecision("ask_resident", f"WBGT {danger.wbgt:.1f} ({danger.level}) since {danger.since:.0f}", danger)
    if now - asked_at >= answer_within_s:
        return HeatDecision("alert_team", "still dangerous and the resident did not answer", danger)
    return HeatDecision("none", "waiting for the resident's answer", danger)
