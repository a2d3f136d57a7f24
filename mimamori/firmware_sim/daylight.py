"""The resident's calendar and daylight: local days (time zone, weekday, day of year) and sunrise and
sunset, which decide when a room is dark enough for its light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

DEFAULT_TIMEZONE = "Asia/Tokyo"


TOKYO_LAT_DEG = 35.68


TOKYO_LON_DEG = 139.69


@dataclass(frozen=True, slots=True)
class LocalDay:
    midnight: float  # epoch s of local 00:00
    weekday: int  # 0 = Monday
    week: int  # weeks since the epoch, for "every n weeks"
    sunrise_h: float  # local hours
    sunset_h: float


@lru_cache(maxsize=64)
def _local_days_cached(tz: str, first_date_ord: int, n: int) -> tuple[LocalDay, ...]:
    zone = ZoneInfo(tz)
    days = []
    for i in range(n):
        date = datetime.fromordinal(first_date_ord + i)
        midnight = date.replace(tzinfo=zone)
        utc_offset_h = midnight.utcoffset().total_seconds() / 3600.0  # type: ignore[union-attr]
        doy = date.timetuple().tm_yday
        sunrise, sunset = sun_times(doy, utc_offset_h)
        days.append(LocalDay(midnight.timestamp(), date.weekday(), (first_date_ord + i) // 7, sunrise, sunset))
    return tuple(days)


def local_days(start: float, end: float, tz: str = DEFAULT_TIMEZONE) -> tuple[LocalDay, ...]:
    """Local days from the day before ``start`` (the night before) to the day containing ``end``."""
    zone = ZoneInfo(tz)
    first = datetime.fromtimestamp(start, zone).date() - timedelta(days=1)
    last = datetime.fromtimestamp(end, zone).date()
    return _local_days_cached(tz, first.toordinal(), last.toordinal() - first.toordinal() + 1)


def sun_times(day_of_year: int, utc_offset_h: float, lat_deg: float = TOKYO_LAT_DEG, lon_deg: float = TOKYO_LON_DEG) -> tuple[float, float]:
    """Approximate local sunrise and sunset hours (NOAA-style, within a few minutes)."""
    g = 2 * math.pi / 365 * (day_of_year - 1)
    decl = (0.006918 - 0.399912 * math.cos(g) + 0.070257 * math.sin(g)
            - 0.006758 * math.cos(2 * g) + 0.000907 * math.sin(2 * g))
    eqtime_min = 229.18 * (0.000075 + 0.001868 * math.cos(g) - 0.032077 * math.sin(g)
                           - 0.014615 * math.cos(2 * g) - 0.040849 * math.sin(2 * g))
    lat = math.radians(lat_deg)
    cos_ha = (math.cos(math.radians(90.833)) - math.sin(lat) * math.sin(decl)) / (math.cos(lat) * math.cos(decl))
    ha_h = math.degrees(math.acos(max(-1.0, min(1.0, cos_ha)))) / 15.0
    noon_h = 12.0 - eqtime_min / 60.0 - lon_deg / 15.0 + utc_offset_h
    return noon_h - ha_h, noon_h + ha_h
