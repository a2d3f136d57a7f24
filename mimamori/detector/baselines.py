"""The fixed rules of today's watch-over bulbs, kept in the code as baselines (pure numpy).

- ``hello_light_24h`` (Hello Light): once a day at 09:00 local time, alarm if no bulb was switched
  in the 24 hours before. The alarm stands until a bulb is switched again.
- ``kanazawa_8h_on_24h_off`` (Kanazawa City trial, 2021): alarm when a bulb stayed on 8 hours
  straight (long-on), or no bulb was switched for 24 hours (inactivity).

- ``no_activity_12h`` / ``no_activity_24h``: what sensor-based services sell: alarm when no
  sensor of the home (switch, motion, door) saw any activity for 12 / 24 hours.

The bulb rules see only bulb switches (``on``/``off`` of bulb devices), as the products do, and know nothing
of away mode or device health.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mimamori.detector.model import ACTIVITY_CODES, DEV_BULB, DEV_NONE, EV_OFF, EV_ON

H = 3600.0
BASELINES = ("hello_light_24h", "kanazawa_8h_on_24h_off", "no_activity_12h", "no_activity_24h")


@dataclass
class BaselineAlarms:
    inactivity: np.ndarray  # bool[H]
    long_on: np.ndarray  # bool[H]


class _BulbState:
    def __init__(self, device_kinds: np.ndarray, start: float) -> None:
        self.is_bulb = device_kinds == DEV_BULB
        h, d = device_kinds.shape
        # Before the first switch the rules count from the start of watching.
        self.last_switch = np.full(h, float(start))
        self.on_since = np.full((h, d), np.nan)

    def observe(self, hh: np.ndarray, dev: np.ndarray, t: np.ndarray, kind: np.ndarray) -> np.ndarray:
        """Bulb switches in time order; returns the households that switched."""
        hh, dev, t, kind = (np.asarray(a) for a in (hh, dev, t, kind))
        m = ((kind == EV_ON) | (kind == EV_OFF)) & self.is_bulb[hh, dev]
        if not m.any():
            return np.zeros(0, np.int64)
        hh, dev, t, kind = hh[m], dev[m], t[m], kind[m]
        order = np.argsort(t, kind="stable")
        hh, dev, t, kind = hh[order], dev[order], t[order], kind[order]
        np.maximum.at(self.last_switch, hh, t)
        for r, c, ts, k in zip(hh.tolist(), dev.tolist(), t.tolist(), kind.tolist(), strict=True):
            if k == EV_ON:
                if np.isnan(self.on_since[r, c]):
                    self.on_since[r, c] = ts
            else:
                self.on_since[r, c] = np.nan
        return np.unique(hh)


class HelloLight24h:
    """Checked daily at 09:00 local: no bulb switch in the 24 h before → alarm (until the next switch)."""

    name = "hello_light_24h"

    def __init__(self, device_kinds: np.ndarray, start: float, tz_offset_s: np.ndarray | int = 9 * 3600, check_hour: float = 9.0) -> None:
        self.bulbs = _BulbState(device_kinds, start)
        self.tz = np.broadcast_to(np.asarray(tz_offset_s, np.float64), (device_kinds.shape[0],))
        self.check_s = check_hour * H
        self.alarm = np.zeros(device_kinds.shape[0], bool)
        self.last_check = np.full(device_kinds.shape[0], float(start))

    def observe(self, hh: np.ndarray, dev: np.ndarray, t: np.ndarray, kind: np.ndarray) -> None:
        switched = self.bulbs.observe(hh, dev, t, kind)
        self.alarm[switched] = False

    def check(self, now: float) -> BaselineAlarms:
        local_now = now + self.tz
        day = np.floor((local_now - self.check_s) / 86400.0)
        check_at = day * 86400.0 + self.check_s - self.tz  # the latest 09:00 local at or before now
        due = check_at > self.last_check
        fire = due & (self.bulbs.last_switch < check_at - 24 * H)
        self.alarm |= fire
        self.last_check = np.where(due, check_at, self.last_check)
        return BaselineAlarms(self.alarm.copy(), np.zeros_like(self.alarm))


class Kanazawa8hOn24hOff:
    """A bulb on 8 h straight → long-on alarm; no bulb switched for 24 h → inactivity alarm."""

    name = "kanazawa_8h_on_24h_off"

    def __init__(self, device_kinds: np.ndarray, start: float, on_h: float = 8.0, off_h: float = 24.0) -> None:
        self.bulbs = _BulbState(device_kinds, start)
        self.on_s = on_h * H
        self.off_s = off_h * H

    def observe(self, hh: np.ndarray, dev: np.ndarray, t: np.ndarray, kind: np.ndarray) -> None:
        self.bulbs.observe(hh, dev, t, kind)

    def check(self, now: float) -> BaselineAlarms:
        inactive = now - self.bulbs.last_switch >= self.off_s
        with np.errstate(invalid="ignore"):
            long_on = ((now - self.bulbs.on_since) >= self.on_s).any(axis=1)
        return BaselineAlarms(inactive, long_on)


class NoActivity:
    """No resident-caused event from any device for ``hours`` → inactivity alarm (no long-on)."""

    def __init__(self, device_kinds: np.ndarray, start: float, hours: float) -> None:
        self.name = f"no_activity_{hours:g}h"
        self.present = device_kinds != DEV_NONE
        self.last = np.full(device_kinds.shape[0], float(start))
        self.after_s = hours * H

    def observe(self, hh: np.ndarray, dev: np.ndarray, t: np.ndarray, kind: np.ndarray) -> None:
        hh, dev, t, kind = (np.asarray(a) for a in (hh, dev, t, kind))
        m = np.isin(kind, ACTIVITY_CODES) & self.present[hh, dev]
        np.maximum.at(self.last, hh[m], t[m])

    def check(self, now: float) -> BaselineAlarms:
        inactive = now - self.last >= self.after_s
        return BaselineAlarms(inactive, np.zeros_like(inactive))


def make_baseline(name: str, device_kinds: np.ndarray, start: float,
                  tz_offset_s: np.ndarray | int = 9 * 3600) -> HelloLight24h | Kanazawa8hOn24hOff | NoActivity:
    if name == "hello_light_24h":
        return HelloLight24h(device_kinds, start, tz_offset_s)
    if name == "kanazawa_8h_on_24h_off":
        return Kanazawa8hOn24hOff(device_kinds, start)
    if name == "no_activity_12h":
        return NoActivity(device_kinds, start, 12.0)
    if name == "no_activity_24h":
        return NoActivity(device_kinds, start, 24.0)
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
