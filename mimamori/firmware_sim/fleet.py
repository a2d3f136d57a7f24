"""The fleet runner: simulated homes through real gateways (``gateway.service.Gateway``) to a broker.

The streams are exactly those of the offline mode (``offline.simulate_household``); this module
feeds them, in global order of arrival at the gateways, to one ``Gateway`` per home through its
local link (``handle_local("mimamori/local/<device>/event", encode_event(event))``).

Time: with a finite ``speed`` the gateways run on a ``ScaledClock`` and each event is handed over
when that clock reaches it; with ``speed=None`` ("max") a ``ManualClock`` is set to each event's
time just before it is handed over (discrete-event), as fast as the gateways accept them. The
gateways' network waits are real time, so neither mode stalls them.

Faults: incidents ``gateway_power_loss`` / ``area_power_cut`` kill the home's gateway at their start
and start a new ``Gateway`` on the same outbox at their end; tests add their own ``GatewayFault``s.
While a home's gateway is down its devices keep their events and hand them over when it is back;
heartbeats due meanwhile are not buffered.
"""

from __future__ import annotations

import heapq
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psycopg

from mimamori.firmware_sim.devices import ACTIVITY_CODES, DEFAULT_HEARTBEAT_S, KIND_CODES
from mimamori.firmware_sim.homes import make_household
from mimamori.firmware_sim.incidents import IncidentPlan
from mimamori.firmware_sim.offline import DAY, DEFAULT_START, HouseholdStream, simulate_household
from mimamori.gateway.adapters import NATIVE_PREFIX
from mimamori.gateway.service import Gateway
from mimamori.kernel import protocol
from mimamori.kernel.clock import Clock, ManualClock, ScaledClock
from mimamori.kernel.mqtt import MqttUrl
from mimamori.kernel.protocol import Event

_ACTIVITY = frozenset(protocol.ACTIVITY_KINDS)


# ---------------------------------------------------------------------------------------------
# Registration manifest
# ---------------------------------------------------------------------------------------------


def fleet_manifest(households: int, seed: int, *, bulbs_only: bool = False) -> dict[str, Any]:
    """Households, gateways and devices (with kinds and rooms) of a simulated fleet."""
    homes = [make_household(k, seed, bulbs_only=bulbs_only) for k in range(households)]
    return {"seed": seed, "bulbs_only": bulbs_only, "households": [h.to_manifest() for h in homes]}


def register_manifest(conn: psycopg.Connection, manifest: dict[str, Any]) -> dict[str, int]:
    """Insert the manifest into ``households``, ``gateways``, ``devices``; idempotent."""
    homes = manifest["households"]
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO households (household_id, display_name, area, timezone) VALUES (%s, %s, %s, %s)
                   ON CONFLICT (household_id) DO UPDATE
                   SET display_name = excluded.display_name, area = excluded.area, timezone = excluded.timezone""",
            [(h["household_id"], h["display_name"], h["area"], h["timezone"]) for h in homes],
        )
        cur.executemany(
            """INSERT INTO gateways (gateway_id, household_id, area) VALUES (%s, %s, %s)
                   ON CONFLICT (gateway_id) DO UPDATE SET household_id = excluded.household_id, area = excluded.area""",
            [(h["gateway_id"], h["household_id"], h["area"]) for h in homes],
        )
        cur.executemany(
            """INSERT INTO devices (device_id, gateway_id, household_id, kind, room, paired_at) VALUES (%s, %s, %s, %s, %s, now())
                   ON CONFLICT (device_id) DO UPDATE
                   SET gateway_id = excluded.gateway_id, household_id = excluded.household_id, kind = excluded.kind,
                       room = excluded.room, paired_at = coalesce(devices.paired_at, excluded.paired_at)""",
            [(d["device_id"], h["gateway_id"], h["household_id"], d["kind"], d["room"]) for h in homes for d in h["devices"]],
        )
    return {"households": len(homes), "gateways": len(homes), "devices": sum(len(h["devices"]) for h in homes)}


# ---------------------------------------------------------------------------------------------
# Faults and report
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayFault:
    """``crash``: kill and immediately restart; ``restart``: graceful stop and restart;
    ``power_loss``: kill, and a new gateway on the same outbox ``down_s`` (simulated) later."""

    household: int
    at: float  # simulated epoch s
    kind: Literal["crash", "restart", "power_loss"] = "crash"
    down_s: float = 0.0


@dataclass
class FleetReport:
    households: int
    devices: int
    gateways: int
    seed: int
    sim_start: float
    sim_days: float
    speed: float | None
    events_generated: dict[str, int]
    activity_events_generated: int
    events_fed: int
    activity_events_published: int  # distinct (device_id, seq) of activity kinds PUBACKed
    heartbeats_published: int  # distinct (device_id, ts) of device heartbeats PUBACKed
    boots_published: int
    rejected_local: int
    gateway_restarts: int
    heartbeats_lost_gateway_down: int
    flushed: bool
    wall_s: float
    incidents: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------


class _Delivered:
    """Counts PUBACKed events once per identity; called from gateway threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.activity: set[tuple[str, int]] = set()
        self.heartbeats: set[tuple[str, int]] = set()
        self.boots: set[tuple[str, int]] = set()

    def __call__(self, event: Event) -> None:
        with self._lock:
            if event.kind in _ACTIVITY:
                self.activity.add((event.device_id, event.seq))
            elif event.kind == "heartbeat":
                self.heartbeats.add((event.device_id, event.ts_ms))
            elif event.kind == "boot":
                self.boots.add((event.device_id, event.seq))

    def counts(self) -> tuple[int, int, int]:
        with self._lock:
            return len(self.activity), len(self.heartbeats), len(self.boots)


def _merge_order(streams: Sequence[HouseholdStream]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(arrival, household, index) of every event, in order of arrival at the gateways."""
    arrival = np.concatenate([s.arrival for s in streams]) if streams else np.zeros(0)
    dev_time = np.concatenate([s.time for s in streams]) if streams else np.zeros(0)
    household = np.repeat(np.arange(len(streams)), [len(s.events) for s in streams])
    index = np.concatenate([np.arange(len(s.events)) for s in streams]) if streams else np.zeros(0, np.int64)
    order = np.lexsort((index, household, dev_time, arrival))
    return arrival[order], household[order], index[order]


def run_fleet(
    uplink: MqttUrl | str,
    *,
    households: int,
    days: float,
    speed: float | None,
    seed: int,
    workdir: Path,
    start: float | None = None,
    incidents: IncidentPlan | None = None,
    progress: Callable[[dict], None] | None = None,
    bulbs_only: bool = False,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    gateway_heartbeat_s: float = 60.0,
    faults: Sequence[GatewayFault] = (),
    on_feed: Callable[[str, Event], None] | None = None,
    flush_timeout_s: float = 120.0,
    gateway_protocol: int | None = None,
    linger_s: float = 0.0,
    streams: Sequence[HouseholdStream] | None = None,
    feed_from: float | None = None,
    clock: Clock | None = None,
) -> FleetReport:
    """Run ``households`` homes for ``days`` simulated days through real gateways; see module doc.

    ``streams``: the households' simulated streams when the caller made them already (the demo loads
    their first days straight into the database as history); ``feed_from``: events the devices made
    before this moment are not fed (they are that history) and the gateways start then; ``clock``:
    a clock to share with the service (else one of ``speed``, starting at the first fed moment).
    """
    if isinstance(uplink, str):
        uplink = MqttUrl.parse(uplink)
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive, or None for as fast as possible")
    wall0 = time.monotonic()
    t0 = DEFAULT_START if start is None else float(start)
    t1 = t0 + days * DAY
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if streams is None:
        streams = [simulate_household(k, seed, t0, t1, bulbs_only=bulbs_only, incidents=incidents, heartbeat_s=heartbeat_s)
                   for k in range(households)]
    elif len(streams) != households:
        raise ValueError(f"{len(streams)} streams given for {households} households")
    live_from = t0 if feed_from is None else float(feed_from)
    if gateway_protocol is None:
        from mimamori.kernel.mqtt import negotiate_protocol

        gateway_protocol = negotiate_protocol(uplink)

    # Control timeline: (time, order, household, action, mode). Gateways go down at a fault's
    # start and come back at its end (order: "down" before "up" at the same instant).
    controls: list[tuple[float, int, int, str, str]] = []
    for f in faults:
        mode = "stop" if f.kind == "restart" else "kill"
        controls.append((f.at, 0, f.household, "down", mode))
        controls.append((f.at + max(0.0, f.down_s if f.kind == "power_loss" else 0.0), 1, f.household, "up", ""))
    for k, s in enumerate(streams):
        for inc in s.incidents:
            if inc.kind in ("gateway_power_loss", "area_power_cut") and inc.end is not None:
                controls.append((inc.start, 0, k, "down", "kill"))
                controls.append((inc.end, 1, k, "up", ""))
    heapq.heapify(controls)

    manual: ManualClock | None = None
    if clock is None:
        if speed is None:
            clock = manual = ManualClock(live_from)
        else:
            clock = ScaledClock(live_from, speed)
    elif isinstance(clock, ManualClock):
        manual = clock

    delivered = _Delivered()
    gateways: list[Gateway | None] = []
    outboxes = [workdir / f"{s.info.gateway_id}.outbox.sqlite" for s in streams]

    def new_gateway(k: int) -> Gateway:
        return Gateway(
            streams[k].info.gateway_id, uplink, outboxes[k], clock=clock, protocol=gateway_protocol,
            heartbeat_s=gateway_heartbeat_s, on_delivered=delivered,
        ).start()

    counters = Counter()
    buffered: dict[int, list[tuple[str, bytes, Event]]] = {}
    topics = [[f"{NATIVE_PREFIX}{d}/event" for d in s.device_ids] for s in streams]

    def hand_over(k: int, topic: str, payload: bytes, event: Event) -> None:
        gw = gateways[k]
        if gw is None:  # gateway down: the device keeps it (heartbeats are not worth keeping)
            if event.kind == "heartbeat":
                counters["heartbeats_lost"] += 1
            else:
                buffered.setdefault(k, []).append((topic, payload, event))
            return
        if on_feed is not None:
            on_feed(streams[k].info.gateway_id, event)
        if not gw.handle_local(topic, payload):
            counters["rejected_local"] += 1
        counters["fed"] += 1

    def apply_controls(until: float) -> None:
        while controls and controls[0][0] <= until:
            t, _, k, action, mode = heapq.heappop(controls)
            advance(t)
            if action == "down" and gateways[k] is not None:
                gw = gateways[k]
                gateways[k] = None
                gw.kill() if mode == "kill" else gw.stop()  # type: ignore[union-attr]
            elif action == "up" and gateways[k] is None:
                gateways[k] = new_gateway(k)
                counters["restarts"] += 1
                for topic, payload, event in buffered.pop(k, []):
                    hand_over(k, topic, payload, event)

    def advance(t: float) -> None:
        if manual is not None:
            if t > manual.now():
                manual.set(t)
        else:
            wait = t - clock.now()
            if wait > 0:
                clock.sleep(wait)

    last_progress = 0.0
    arrival, hh_index, ev_index = _merge_order(streams)
    if feed_from is not None:
        live = arrival >= live_from
        arrival, hh_index, ev_index = arrival[live], hh_index[live], ev_index[live]
    total = len(arrival)

    def snapshot(sim_time: float) -> dict[str, Any]:
        act, hb, _ = delivered.counts()
        return {
            "households": households,
            "sim_time": sim_time,
            "sim_day": (sim_time - t0) / DAY,
            "events_fed": counters["fed"],
            "events_total": total,
            "activity_events_published": act,
            "heartbeats_published": hb,
            "outbox_depth": sum(g.outbox_depth for g in gateways if g is not None),
            "wall_s": round(time.monotonic() - wall0, 3),
        }

    try:
        gateways.extend(new_gateway(k) for k in range(households))
        if progress is not None:
            progress(snapshot(live_from))  # the gateways are up: a caller sharing the clock may speed it up
        for t, k, i in zip(arrival.tolist(), hh_index.tolist(), ev_index.tolist(), strict=False):
            apply_controls(t)
            advance(t)
            event = streams[k].protocol_event(i)
            hand_over(k, topics[k][int(streams[k].device[i])], protocol.encode_event(event), event)
            if progress is not None and time.monotonic() - last_progress > 0.5:
                last_progress = time.monotonic()
                progress(snapshot(t))
        apply_controls(float("inf"))
        advance(t1)
        deadline = time.monotonic() + flush_timeout_s
        flushed = all(g.flush(max(0.1, deadline - time.monotonic())) for g in gateways if g is not None)
        if linger_s > 0:
            # Real gateways stay on: the service may notice events the broker dropped (their seq is
            # missing) and ask for them again. A closing heartbeat per device says which seq each
            # device got to, so even a loss at the very end is noticed; then the gateways wait,
            # serving resend requests, before stopping.
            for k, stream in enumerate(streams):
                last_seq = np.full(len(stream.device_ids), -1, np.int64)
                np.maximum.at(last_seq, stream.device.astype(np.int64), stream.seq.astype(np.int64))
                for d, seq in enumerate(last_seq.tolist()):
                    if seq >= 0:
                        event = Event(stream.device_ids[d], int(seq), int(t1 * 1000), "heartbeat", None)
                        hand_over(k, topics[k][d], protocol.encode_event(event), event)
            time.sleep(linger_s)
            deadline = time.monotonic() + flush_timeout_s
            flushed = all(g.flush(max(0.1, deadline - time.monotonic())) for g in gateways if g is not None)
    finally:
        for g in gateways:
            if g is not None:
                g.stop()
    act, hb, boots = delivered.counts()
    generated = Counter()
    for s in streams:
        for code, n in enumerate(np.bincount(s.kind, minlength=len(KIND_CODES)).tolist()):
            generated[KIND_CODES[code]] += n
    report = FleetReport(
        households=households,
        devices=sum(len(s.info.devices) for s in streams),
        gateways=households,
        seed=seed,
        sim_start=t0,
        sim_days=days,
        speed=speed,
        events_generated={k: generated[k] for k in KIND_CODES},
        activity_events_generated=int(sum(int(np.isin(s.kind, ACTIVITY_CODES).sum()) for s in streams)),
        events_fed=counters["fed"],
        activity_events_published=act,
        heartbeats_published=hb,
        boots_published=boots,
        rejected_local=counters["rejected_local"],
        gateway_restarts=counters["restarts"],
        heartbeats_lost_gateway_down=counters["heartbeats_lost"],
        flushed=flushed,
        wall_s=round(time.monotonic() - wall0, 3),
        incidents=[inc.to_dict() for s in streams for inc in s.incidents],
    )
    if progress is not None:
        progress(snapshot(t1) | {"done": True})
    return report
