"""The daily "all fine" note and the weekly trend, in plain Japanese: one line per home (issue 16).

Families ask first of all for a short daily 「元気です」; a note is never a list of raw events. The note
compares today, up to the hour it is written, with the same hours of the home's own earlier days, from
the 15-minute activity counts the database keeps (``activity_15m``):

    佐藤さん: いつも通りです（朝7時10分から動きがあります）
    佐藤さん: いつもより静かです（朝9時40分から動きがあります）
    佐藤さん: 今日はまだ動きがありません

Pure: no I/O, no clock. The caller gives the counts per local day (96 slots of 15 minutes, local time
of the home) and the slot the note is written at.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from mimamori.kernel import contract

SLOTS_PER_DAY = 96
SLOT_MINUTES = 15
# Days of the home's own past a comparison needs before it says "usual" or "quieter".
MIN_HISTORY_DAYS = 3
HISTORY_DAYS = 28
# Quieter: today's activity so far below this share of the usual for the same hours.
QUIETER_SHARE = 0.5
# A late start: the first activity this many minutes after the usual first activity.
LATE_START_MIN = 120
# Nights: activity between midnight and 5 a.m.
NIGHT_SLOTS = range(5 * 60 // SLOT_MINUTES)
# "Moving since" is the morning's first activity: real residents get up at night (a toilet at 1:15 is not
# the start of their day; measured on the UCI ADL homes, mimamori/bench/notes.py).
MORNING_SLOT = 4 * 60 // SLOT_MINUTES
# Quiet lately: nothing in the last two hours, a window that had activity on most of the home's days.
RECENT_SLOTS = 2 * 60 // SLOT_MINUTES
RECENT_USUAL_SHARE = 0.8


@dataclass(frozen=True)
class Note:
    kind: str  # usual | quieter | quiet_lately | late_start | none_yet | learning | not_reporting | being_checked | weekly
    text: str


def clock_words(slot: int) -> str:
    """A slot's start as people say it: 朝7時10分, 午後1時5分, 夜8時, 深夜2時30分."""
    minutes = slot * SLOT_MINUTES
    hour, minute = divmod(minutes, 60)
    return clock_words_at(hour, minute)


def clock_words_at(hour: int, minute: int) -> str:
    if hour < 4:
        part, shown = "深夜", hour
    elif hour < 11:
        part, shown = "朝", hour
    elif hour < 13:
        part, shown = "昼", hour
    elif hour < 18:
        part, shown = "午後", hour - 12
    else:
        part, shown = "夜", hour - 12
    return f"{part}{shown}時" + (f"{minute}分" if minute else "")


def first_active_slot(counts: Sequence[int], upto: int, start: int = 0) -> int | None:
    for slot in range(start, min(upto, len(counts))):
        if counts[slot] > 0:
            return slot
    return None


def morning_slot(counts: Sequence[int], upto: int) -> int | None:
    """The day's first activity from 4 a.m. on (the night's trips are not the start of a day); before 4 a.m.
    or with nothing since, the first of the day."""
    return first_active_slot(counts, upto, MORNING_SLOT) if upto > MORNING_SLOT else None


def daily_note(name: str, today: date, now_slot: int, days: Mapping[date, Sequence[int]], *,
               reporting: bool = True, being_checked: bool = False, first_activity: tuple[int, int] | None = None) -> Note:
    """The note for one home, written at ``now_slot`` (0–95) of ``today``.

    ``days`` holds the activity counts per local day (today and earlier days; missing days had no
    activity or no devices). ``reporting``: the home's devices have been heard from recently (a home
    whose devices are silent is not called quiet). ``being_checked``: a welfare alert is open — the note
    then says the team is on it rather than guess. ``first_activity``: the exact local (hour, minute) of
    today's first activity when the caller has it (the slot's start otherwise).
    """
    who = f"{name}さん"
    if being_checked:
        return Note("being_checked", f"{who}: いつもより静かなため、見守りチームが確認しています")
    if not reporting:
        return Note("not_reporting", f"{who}: センサーから連絡が届いていません（機器の電源や通信を確認してください）")
    today_counts = list(days.get(today, ()))
    upto = max(1, min(now_slot, SLOTS_PER_DAY))
    first = morning_slot(today_counts, upto)
    if first is None:
        first = first_active_slot(today_counts, upto)
    if first is None:
        return Note("none_yet", f"{who}: 今日はまだ動きがありません")
    exact = first_activity and first_activity[0] * 60 // SLOT_MINUTES + first_activity[1] // SLOT_MINUTES == first
    since = clock_words_at(*first_activity) if first_activity and exact else clock_words(first)
    moving = f"{since}から動きがあります"
    past = [list(days[d]) for d in sorted(days) if today - timedelta(days=HISTORY_DAYS) <= d < today]
    past = [c for c in past if sum(c) > 0]
    if len(past) < MIN_HISTORY_DAYS:
        return Note("learning", f"{who}: {moving}（ふだんの様子はまだ学習中です）")
    so_far = sum(today_counts[:upto])
    usual = statistics.median(sum(c[:upto]) for c in past)
    recent = range(max(0, upto - RECENT_SLOTS), upto)
    if not any(today_counts[s] for s in recent) and first < recent.start:
        usually_busy = sum(1 for c in past if any(c[s] for s in recent)) / len(past)
        if usually_busy >= RECENT_USUAL_SHARE:
            return Note("quiet_lately", f"{who}: {since}から動きがありましたが、ここ2時間ほど動きがありません")
    usual_firsts = [s for c in past if (s := morning_slot(c, SLOTS_PER_DAY) or first_active_slot(c, SLOTS_PER_DAY)) is not None]
    usual_first = statistics.median(usual_firsts) if usual_firsts else first
    if usual > 0 and so_far < QUIETER_SHARE * usual:
        return Note("quieter", f"{who}: いつもより静かです（{moving}）")
    if (first - usual_first) * SLOT_MINUTES >= LATE_START_MIN:
        return Note("late_start", f"{who}: いつもより遅い朝でした（{moving}）")
    return Note("usual", f"{who}: いつも通りです（{moving}）")


def weekly_note(name: str, last_day: date, days: Mapping[date, Sequence[int]]) -> Note:
    """The week ending ``last_day`` against the three weeks before it: activity up or down, and nights
    with activity after midnight more or less often. Plain words; a change under 20 % is "the same"."""
    who = f"{name}さん"

    def week(end: date) -> list[list[int]]:
        return [list(days.get(end - timedelta(days=i), ())) for i in range(7)]

    this = week(last_day)
    before = [week(last_day - timedelta(days=7 * k)) for k in (1, 2, 3)]
    before = [w for w in before if sum(map(sum, w)) > 0]
    total = sum(map(sum, this))
    if total == 0:
        return Note("weekly", f"{who}（今週）: 動きの記録がありません")
    if not before:
        return Note("weekly", f"{who}（今週）: 記録を始めたばかりです。来週から先週との比較をお伝えします")
    usual_total = statistics.mean(sum(map(sum, w)) for w in before)
    change = (total - usual_total) / usual_total if usual_total else 0.0
    if change <= -0.2:
        activity = f"いつもより動きが少なめでした（{round(-change * 100)}%減）"
    elif change >= 0.2:
        activity = f"いつもより活発でした（{round(change * 100)}%増）"
    else:
        activity = "いつもと同じくらい動いていました"

    def nights(w: list[list[int]]) -> int:
        return sum(1 for c in w if c and any(c[s] > 0 for s in NIGHT_SLOTS if s < len(c)))

    night_now = nights(this)
    night_usual = statistics.mean(nights(w) for w in before)
    if night_now >= night_usual + 2:
        night = f"。夜中に起きた日が増えています（7日中{night_now}日、ふだんは{round(night_usual)}日）"
    elif night_now <= night_usual - 2:
        night = f"。夜中に起きた日は減りました（7日中{night_now}日）"
    else:
        night = ""
    return Note("weekly", f"{who}（今週）: {activity}{night}")


# -- the database read (the I/O edge; the words above stay pure) ---------------------------------------------

READ_SQL = """
SELECT (a.bucket AT TIME ZONE h.timezone)::date AS day,
       ((extract(hour FROM a.bucket AT TIME ZONE h.timezone) * 60
         + extract(minute FROM a.bucket AT TIME ZONE h.timezone)) / 15)::int AS slot,
       a.events
  FROM activity_15m a JOIN households h USING (household_id)
 WHERE a.household_id = %(hid)s
   AND a.bucket >= ((%(today)s::date - %(days)s::int)::timestamp AT TIME ZONE h.timezone)
   AND a.bucket < %(now)s
"""


@dataclass(frozen=True)
class HomeActivity:
    name: str
    today: date
    now_slot: int
    days: dict[date, list[int]]
    first_activity: tuple[int, int] | None
    reporting: bool
    being_checked: bool

    def note(self) -> Note:
        return daily_note(self.name, self.today, self.now_slot, self.days, reporting=self.reporting,
                          being_checked=self.being_checked, first_activity=self.first_activity)


def read_home(conn: object, household_id: str, now_epoch: float, *, reporting_within_h: float = 6.0) -> HomeActivity:
    """Everything the note needs for one home at ``now_epoch``, from the database, in the home's own
    time zone: activity counts per 15 minutes over the last four weeks, today's first activity, whether
    its devices have been heard from, and whether a welfare alert is open."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    cur = conn.cursor()  # type: ignore[attr-defined]
    name, tz = cur.execute("SELECT display_name, timezone FROM households WHERE household_id = %s",
                           (household_id,)).fetchone()
    now = datetime.fromtimestamp(now_epoch, UTC)
    local = now.astimezone(ZoneInfo(tz))
    today = local.date()
    days: dict[date, list[int]] = {}
    for day_, slot, events in cur.execute(READ_SQL, {"hid": household_id, "today": today, "days": HISTORY_DAYS,
                                                     "now": now}).fetchall():
        days.setdefault(day_, [0] * SLOTS_PER_DAY)[slot] += int(events)
    midnight = datetime(today.year, today.month, today.day, tzinfo=ZoneInfo(tz))
    first = cur.execute(
        "SELECT min(time) FROM events WHERE household_id = %s AND time >= %s AND time <= %s"
        " AND kind = ANY(%s)", (household_id, midnight, now, sorted(contract.ACTIVITY_KINDS))).fetchone()[0]
    first_local = (first.astimezone(ZoneInfo(tz)).hour, first.astimezone(ZoneInfo(tz)).minute) if first else None
    heard = cur.execute(
        "SELECT max(s.last_seen_at) FROM device_state s JOIN devices d USING (device_id) WHERE d.household_id = %s",
        (household_id,)).fetchone()[0]
    reporting = heard is not None and (now - heard).total_seconds() <= reporting_within_h * 3600
    checked = cur.execute(
        "SELECT 1 FROM incidents WHERE household_id = %s AND kind = 'inactivity' AND status IN ('open', 'claimed')",
        (household_id,)).fetchone() is not None
    return HomeActivity(name, today, local.hour * 4 + local.minute // SLOT_MINUTES, days, first_local, reporting, checked)
