"""The daily note on real homes' logs: how often it would tell a family "quieter than usual" or "a late
morning" on an ordinary day, and what it says when the day stops (issue 16).

A note that worries a family on ordinary days is worse than no note. For each day of a log after a week
of history, the note is written as the service would write it at the given hours. Then the same day is
cut at 10:00, as if the resident collapsed then, and the afternoon notes are written again. The
evaluation reports the kinds of note, with examples of their words.

    python -m mimamori.bench.notes uci_adl:../shared/data/uci_adl_binary/OrdonezA_Sensors.txt [...] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import date, timedelta
from typing import Any

import numpy as np

from mimamori.alerts.daily_note import SLOT_MINUTES, SLOTS_PER_DAY, daily_note, weekly_note
from mimamori.bench.casas import home_name, parse_spec, read_log
from mimamori.detector import model as m

ACTIVITY = (m.EV_ON, m.EV_OFF, m.EV_MOTION, m.EV_OPEN, m.EV_CLOSE)
HISTORY_DAYS = 7
CUT_HOUR = 10
WORRIED = ("quieter", "quiet_lately", "late_start", "none_yet")


def day_counts(times: np.ndarray) -> dict[date, list[int]]:
    """Activity per local day and 15-minute slot (the logs' times are local wall clock read as UTC)."""
    days: dict[date, list[int]] = {}
    epoch = date(1970, 1, 1)
    for t in times:
        day = epoch + timedelta(days=int(t // 86400))
        slot = int((t % 86400) // (SLOT_MINUTES * 60))
        days.setdefault(day, [0] * SLOTS_PER_DAY)[slot] += 1
    return days


def _first(counts: list[int], upto: int) -> int | None:
    return next((s for s in range(upto) if counts[s] > 0), None)


def evaluate_home(spec: str, hours: tuple[int, ...] = (12, 18)) -> dict[str, Any]:
    fmt, path = parse_spec(spec)
    log = read_log(fmt, path)
    active = np.isin(log.kind, ACTIVITY)
    days = day_counts(log.time[active])
    ordered = sorted(days)
    judged = [d for d in ordered[HISTORY_DAYS:] if d != ordered[-1]]  # the last day of a log is cut short
    kinds: dict[int, Counter[str]] = {h: Counter() for h in hours}
    cut_kinds: dict[int, Counter[str]] = {h: Counter() for h in hours if h > CUT_HOUR}
    examples: dict[str, str] = {}
    name = home_name(spec).removesuffix("_Sensors")
    for d in judged:
        history = {k: v for k, v in days.items() if k < d}
        for h in hours:
            note = daily_note(name, d, h * 4, {**history, d: days[d]})
            kinds[h][note.kind] += 1
            examples.setdefault(note.kind, note.text)
            if h > CUT_HOUR:  # the same day, nothing after 10:00
                cut = [c if s < CUT_HOUR * 4 else 0 for s, c in enumerate(days[d])]
                after = daily_note(name, d, h * 4, {**history, d: cut})
                cut_kinds[h][after.kind] += 1
                examples.setdefault(f"cut_{after.kind}", after.text)
    weekly = [weekly_note(name, ordered[i], days).text for i in range(13, len(ordered) - 1, 7)]
    return {
        "home": home_name(spec), "days_judged": len(judged),
        "ordinary_days": {f"{h}:00": dict(kinds[h]) for h in hours},
        "worried_on_ordinary_days": {f"{h}:00": round(sum(kinds[h][k] for k in WORRIED)
                                                      / max(1, len(judged)), 3) for h in hours},
        "day_stopped_at_10": {f"{h}:00": dict(cut_kinds[h]) for h in cut_kinds},
        "examples": examples, "weekly": weekly,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimamori.bench.notes", description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+", help="FORMAT:PATH (casas, uci_adl, csv), one home each")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = {"homes": [evaluate_home(spec) for spec in args.specs]}
    if args.json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    else:
        for home in result["homes"]:
            sys.stdout.write(json.dumps(home, ensure_ascii=False, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
