"""Evaluation harness: metrics on a small simulated fleet, the CASAS reader and replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mimamori.bench import eval as ev
from mimamori.bench.casas import read_casas, replay_from_casas
from mimamori.detector import model as m

pytestmark = pytest.mark.unit

H = 3600.0


def test_metrics_match_alerts_to_incidents_and_count_false_ones() -> None:
    rp = ev.Replay(start=0.0, end=40 * 86400.0, device_kinds=np.zeros((2, 1), np.int8), area=np.array([0, 0], np.int32),
                   tz_offset_s=np.zeros(2, np.int32), arrival=np.zeros(0), hh=np.zeros(0, np.int64), dev=np.zeros(0, np.int64),
                   t=np.zeros(0), kind=np.zeros(0, np.int8), learning_end=10 * 86400.0)
    rp.incidents = [
        {"kind": "collapse", "start": 20 * 86400.0, "end": None, "welfare": True, "details": {}, "hh": 0, "area": 0},
        {"kind": "bulb_failure", "start": 25 * 86400.0, "end": None, "welfare": False, "details": {}, "hh": 1, "area": 0},
        {"kind": "trip_away", "start": 30 * 86400.0, "end": 33 * 86400.0, "welfare": False, "details": {"away_mode_set": True},
         "hh": 1, "area": 0},
    ]
    log = ev.AlertLog()
    log.opened = [
        ("inactivity", 0, 20 * 86400.0 + 2 * H),  # detects the collapse in 2 h
        ("inactivity", 1, 31 * 86400.0),  # during a planned trip: false
        ("inactivity", 1, 25 * 86400.0 + H),  # a welfare alert for a dead bulb: false
        ("device_offline", 1, 25 * 86400.0 + 3 * H),  # the dead bulb, 3 h
        ("long_on", 0, 5 * 86400.0),  # in the learning period: not counted
    ]
    # An unannounced night with family: 35 d 15:00 to 36 d 13:00 for household 1, and one before learning ended.
    rp.nights_away = [(1, 35 * 86400.0 + 15 * H, 36 * 86400.0 + 13 * H), (1, 2 * 86400.0, 3 * 86400.0)]
    log.opened.append(("inactivity", 1, 36 * 86400.0 + 2 * H))  # false: the resident is away
    r = ev.metrics(rp, log)
    assert r["recall"] == 1.0 and r["incidents"] == 2
    assert r["median_delay_h"] == pytest.approx(2.5)
    assert r["false_alerts"] == 3
    assert r["unannounced_nights_away"] == {"nights": 1, "nights_alerted": 1, "false_alerts": 1}
    # when the false welfare alerts were raised, in the household's local hour (here UTC, then UTC+9)
    assert r["false_welfare_by_local_hour"][:3] == [1, 1, 1] and r["false_welfare_waking_hours_07_22"] == 0
    night = ev.metrics(rp, log, resident_check=ev.ResidentCheck(1.0))["team"]  # 00-03 h: nobody answers
    assert night["spared_by_the_resident"] == 0 and night["false_alerts"] == 3
    rp.tz_offset_s = np.full(2, 9 * 3600, np.int32)
    r9 = ev.metrics(rp, log)
    assert r9["false_welfare_by_local_hour"][9:12] == [1, 1, 1] and r9["false_welfare_waking_hours_07_22"] == 3
    # the team's view when the resident is asked first: waking-hour alerts can be answered, and the
    # collapse (2 h) reaches the team 10 minutes later
    day = ev.metrics(rp, log, resident_check=ev.ResidentCheck(1.0, minutes=10))
    assert day["team"]["spared_by_the_resident"] == 3 and day["team"]["false_alerts_per_household_month"] == 0
    assert day["team"]["welfare"]["median_delay_h"] == pytest.approx(2 + 10 / 60, abs=0.01)
    assert day["median_delay_h"] == r9["median_delay_h"] and "team" not in r9  # the system's own figures unchanged
    none = ev.metrics(rp, log, resident_check=ev.ResidentCheck(0.0))["team"]
    assert none["spared_by_the_resident"] == 0
    # with the simulator's ground truth: asleep at home nobody answers, even at 09:00; away in waking
    # hours, or awake at home at any hour, they can
    def presence(state: int) -> list:
        return [(np.array([0.0]), np.array([0], np.int8)), (np.array([0.0]), np.array([state], np.int8))]
    rp.presence = presence(ev.PRESENT_ASLEEP)
    assert ev.metrics(rp, log, resident_check=ev.ResidentCheck(1.0))["team"]["spared_by_the_resident"] == 0
    rp.presence = presence(ev.AWAY)
    assert ev.metrics(rp, log, resident_check=ev.ResidentCheck(1.0))["team"]["spared_by_the_resident"] == 3
    rp.tz_offset_s = np.zeros(2, np.int32)  # 00-03 h: away means asleep somewhere; awake at home still answers
    assert ev.metrics(rp, log, resident_check=ev.ResidentCheck(1.0))["team"]["spared_by_the_resident"] == 0
    rp.presence = presence(ev.PRESENT_AWAKE)
    assert ev.metrics(rp, log, resident_check=ev.ResidentCheck(1.0))["team"]["spared_by_the_resident"] == 3
    rp.presence = None
    rp.tz_offset_s = np.zeros(2, np.int32)
    del log.opened[-1]
    rp.nights_away = []
    r = ev.metrics(rp, log)
    assert r["false_alerts"] == 2
    assert r["false_alerts_per_household_month"] == pytest.approx(2 / (2 * 30 / 30))
    assert r["per_kind"]["collapse"]["median_delay_h"] == 2.0


@pytest.mark.slow
def test_small_fleet_evaluation_runs_detector_and_baselines() -> None:
    r = ev.run_eval(30, 35, 11)
    assert set(r) >= {"detector", "baselines", "run"}
    assert set(r["baselines"]) == {"hello_light_24h", "kanazawa_8h_on_24h_off", "no_activity_12h", "no_activity_24h"}
    for sysr in [r["detector"], *r["baselines"].values()]:
        for key in ("recall", "median_delay_h", "p90_delay_h", "false_alerts_per_household_month", "per_kind"):
            assert key in sysr
    assert r["detector"]["recall"] >= r["baselines"]["kanazawa_8h_on_24h_off"]["recall"]
    nights = r["detector"]["unannounced_nights_away"]
    assert nights["nights"] > 0 and nights["nights_alerted"] <= nights["nights"] and nights["false_alerts"] >= nights["nights_alerted"]


def write_casas(path: Path) -> None:
    """Three weeks of a small home in CASAS format, with the usual dirt."""
    rng = np.random.default_rng(1)
    lines = []
    day0 = np.datetime64("2010-11-01T00:00:00")
    for d in range(21):
        for hour in range(7, 22):
            t = day0 + np.timedelta64(d * 86400 + hour * 3600 + int(rng.integers(0, 3000)), "s")
            lines.append(f"{str(t).replace('T', ' ')}.000001 Kitchen M001 ON Meal_Preparation begin")
            lines.append(f"{str(t + np.timedelta64(30, 's')).replace('T', ' ')}.000001 M001 OFF")
        on = day0 + np.timedelta64(d * 86400 + 18 * 3600, "s")
        lines.append(f"{str(on).replace('T', ' ')}.5 LivingLight ON")
        lines.append(f"{str(on + np.timedelta64(4 * 3600, 's')).replace('T', ' ')}.5 LivingLight OFF")
        lines.append(f"{str(on + np.timedelta64(60, 's')).replace('T', ' ')} D001 OPEN")
    lines[10], lines[11] = lines[11], lines[10]  # out of order
    lines += ["garbage", "2010-11-02 10:00:00.1 T001 21.5", "2010-11-02 99:00:00.1 M001 ON", "2010-11-02 10:00:00.1 M001 ONc"]
    path.write_text("\n".join(lines) + "\n")


def test_casas_reader_copes_with_dirty_logs(tmp_path: Path) -> None:
    p = tmp_path / "casas.txt"
    write_casas(p)
    log = read_casas(str(p))
    assert log.malformed == 2 and log.skipped_values == 1 and log.odd_values_repaired == 1 and log.unsorted >= 1
    assert np.all(np.diff(log.time) >= 0)
    kinds = dict(zip(log.sensors, log.sensor_kinds, strict=True))
    assert kinds == {"M001": m.DEV_MOTION, "LivingLight": m.DEV_BULB, "D001": m.DEV_DOOR}


def test_casas_replay_detects_cuts(tmp_path: Path) -> None:
    p = tmp_path / "casas.txt"
    write_casas(p)
    rp, info = replay_from_casas(str(p), cuts=6)
    assert info["cuts"] == 6 and rp.n == 7
    r = ev.evaluate(rp)
    assert r["detector"]["recall"] == 1.0
    assert r["detector"]["median_delay_h"] < r["baselines"]["kanazawa_8h_on_24h_off"]["median_delay_h"]
    bulbs, _ = replay_from_casas(str(p), bulbs_only=True, cuts=4)
    assert set(np.unique(bulbs.device_kinds[bulbs.device_kinds >= 0])) == {m.DEV_BULB}


def test_casas_columns_are_read_by_position_never_by_a_first_letter(tmp_path: Path) -> None:
    # With a location column, sensor names that begin like a value (Closet) or like a door (Dishwasher,
    # DiningRoom) are sensors; a door is what reports OPEN/CLOSE (or is named in the map).
    p = tmp_path / "loc.txt"
    p.write_text("\n".join([  # noqa: FLY002 - one log record a line, one with a comment
        "2011-06-20 08:01:02.5 Bedroom Closet ON",
        "2011-06-20 08:01:09.5 Bedroom Closet OFF",
        "2011-06-20 08:02:00 Kitchen Dishwasher ON",
        "2011-06-20 08:03:00 Dining DiningRoom ON Eating begin",
        "2011-06-20 08:04:00 Entry FrontDoor OPEN",
        "2011-06-20 08:04:30 Entry FrontDoor CLOSE",
        "2011-06-20 08:05:00 Entry FrontDoor CLOSEx",  # a typo: repaired in the value column only
        "2011-06-20 08:06:00 Living LivingLight ON",
        "2011-06-20 08:07:00 Back D017 ON",
    ]) + "\n")
    log = read_casas(str(p))
    kinds = dict(zip(log.sensors, log.sensor_kinds, strict=True))
    assert kinds == {"Closet": m.DEV_MOTION, "Dishwasher": m.DEV_MOTION, "DiningRoom": m.DEV_MOTION, "FrontDoor": m.DEV_DOOR,
                     "LivingLight": m.DEV_BULB, "D017": m.DEV_MOTION}
    assert log.odd_values_repaired == 1 and log.malformed == 0
    assert list(log.kind[: 1]) == [m.EV_MOTION] and (log.kind[np.array(log.sensors)[log.sensor] == "FrontDoor"] != m.EV_MOTION).all()
    mapped = read_casas(str(p), door_names={"D017"})
    assert dict(zip(mapped.sensors, mapped.sensor_kinds, strict=True))["D017"] == m.DEV_DOOR
    # Without a location column (the value is the 4th column): same kinds.
    q = tmp_path / "noloc.txt"
    q.write_text("2011-06-20 08:01:02 Closet ON\n2011-06-20 08:02:00 Dishwasher ON\n2011-06-20 08:04:00 D001 OPEN\n"
                 "2011-06-20 08:05:00 D001 CLOSE\n2011-06-20 08:06:00 D002 ON\n")
    log = read_casas(str(q))
    assert dict(zip(log.sensors, log.sensor_kinds, strict=True)) == {"Closet": m.DEV_MOTION, "Dishwasher": m.DEV_MOTION, "D001": m.DEV_DOOR,
                                                        "D002": m.DEV_MOTION}


UCI_LINES = """Start time          \tEnd time            \tLocation\tType\t\tPlace
--------------------\t--------------------\t--------\t--------\t-----
2011-11-28 02:27:59\t\t2011-11-28 10:18:11\t\tBed\t\t\tPressure\tBedroom
2011-11-28 10:21:44\t\t2011-11-28 10:23:31\t\tBasin\t\tPIR\t\t\tBathroom
2011-11-28 10:34:23\t\t2011-11-28 10:34:41\t\tFridge\t\tMagnetic\tKitchen
2011-11-28 13:09:31\t\t2011-11-28 13:09:35\t\tMaindoor\tMagnetic\tEntrance
2011-11-28 13:05:07\t\t2011-11-28 13:06:31\t\tToilet\t\tFlush\t\tBathroom
2011-11-28 25:05:07\t\t2011-11-28 13:06:31\t\tToilet\t\tFlush\t\tBathroom
"""


def test_uci_adl_reader_takes_both_ends_of_human_intervals_and_the_main_door(tmp_path: Path) -> None:
    from mimamori.bench.casas import read_uci_adl

    p = tmp_path / "uci.txt"
    p.write_text(UCI_LINES)
    log = read_uci_adl(str(p))
    kinds = dict(zip(log.sensors, log.sensor_kinds, strict=True))
    assert kinds["Maindoor Entrance"] == m.DEV_DOOR and kinds["Fridge Kitchen"] == m.DEV_MOTION and kinds["Bed Bedroom"] == m.DEV_MOTION
    assert log.malformed == 1 and log.unsorted >= 1 and np.all(np.diff(log.time) >= 0)
    names = np.array(log.sensors)[log.sensor]
    assert (names == "Basin Bathroom").sum() == 1  # a PIR's end is only its timer
    assert (names == "Bed Bedroom").sum() == 2 and (names == "Toilet Bathroom").sum() == 2
    assert list(log.kind[names == "Maindoor Entrance"]) == [m.EV_OPEN, m.EV_CLOSE]


@pytest.mark.slow
def test_csv_log_reader_and_a_replay_of_several_homes(tmp_path: Path) -> None:
    from mimamori.bench.casas import read_csv_log

    rng = np.random.default_rng(3)
    lines = ["time,sensor,value,kind"]
    day0 = np.datetime64("2020-01-06T00:00:00")
    for d in range(14):
        for hour in range(7, 23):
            t = day0 + np.timedelta64(d * 86400 + hour * 3600 + int(rng.integers(0, 3000)), "s")
            lines.append(f"{t},hall,ON,motion")
        lines.append(f"{day0 + np.timedelta64(d * 86400 + 18 * 3600, 's')},lamp,ON,bulb")
        lines.append(f"{day0 + np.timedelta64(d * 86400 + 22 * 3600 + 600, 's')},lamp,OFF,bulb")
    lines.append("not a time,hall,ON")
    a = tmp_path / "a.csv"
    a.write_text("\n".join(lines) + "\n")
    log = read_csv_log(str(a))
    assert dict(zip(log.sensors, log.sensor_kinds, strict=True)) == {"hall": m.DEV_MOTION, "lamp": m.DEV_BULB} and log.malformed == 1
    c = tmp_path / "c.txt"
    write_casas(c)
    r = ev.run_replay([f"csv:{a}", f"casas:{c}"], cuts=4, watch_quality=False)
    assert [h["home"] for h in r["homes"]] == ["a", "c"]
    assert set(r["baselines"]) == {"hello_light_24h", "kanazawa_8h_on_24h_off", "no_activity_12h", "no_activity_24h"}
    pooled = r["detector"]
    assert pooled["welfare"]["incidents"] == 8 and "team" in pooled and pooled["team"]["answer_rate"] == 0.7
    assert r["across_homes"]["detector"]["min_home_recall"] is not None
    rows = ev.replay_rows(r)
    assert rows[-1]["home"] == "all (pooled)" and {row["home"] for row in rows} == {"a", "c", "all (pooled)"}
    with pytest.raises(ValueError, match="expected FORMAT:PATH"):
        ev.run_replay(["nope:x"])


def test_a_home_with_more_sensors_than_devices_keeps_all_its_activity(tmp_path: Path) -> None:
    lines = []
    day0 = np.datetime64("2010-11-01T00:00:00")
    for d in range(10):
        for s in range(20):  # 20 motion sensors, the later ones rarely
            for k in range(20 - s):
                t = day0 + np.timedelta64(d * 86400 + 8 * 3600 + s * 1800 + k * 60, "s")
                lines.append(f"{str(t).replace('T', ' ')} M{s:03d} ON")
        t = day0 + np.timedelta64(d * 86400 + 18 * 3600, "s")
        lines.append(f"{str(t).replace('T', ' ')} D001 OPEN")
        lines.append(f"{str(t).replace('T', ' ')}.5 LivingLight ON")
    p = tmp_path / "many.txt"
    p.write_text("\n".join(lines) + "\n")
    rp, info = replay_from_casas(str(p), cuts=2)
    assert info["devices_used"] == m.MAX_DEVICES and info["sensors_folded"] == 20 + 2 - m.MAX_DEVICES
    kinds = set(rp.device_kinds[0][rp.device_kinds[0] >= 0].tolist())
    assert kinds == {m.DEV_MOTION, m.DEV_DOOR, m.DEV_BULB}  # the rare door and bulb are kept
    # every motion event is still there (the rare sensors report through a kept one)
    assert int((rp.hh == rp.n - 1).sum()) == info["events_used"] == len(lines)
