"""The model's online update: taking events and gateway status into ``FleetState``.

Pure numpy, no I/O, no clock (see ``detector.model``).
"""

from __future__ import annotations

import numpy as np

from mimamori.detector.model_params import (
    _FLAG_BLIND,
    _FLAG_DOOR,
    _FLAG_LIGHTS_OUT,
    _FLAG_MOVED_AFTER_DOOR,
    ACTIVITY_CODES,
    BIN_H,
    DEFAULT_PARAMS,
    DEV_DOOR,
    EV_BOOT,
    EV_CLOSE,
    EV_HEARTBEAT,
    EV_MOTION,
    EV_OFF,
    EV_ON,
    EV_OPEN,
    MAX_DEVICES,
    MAX_SWITCHES,
    N_BINS,
    N_ON_BLOCKS,
    ON_BLOCK_H,
    ON_EDGES_H,
    OUT_DOOR,
    OUT_EDGES_H,
    OUT_LIGHTS,
    SILENCE_EDGES_H,
    DetectorParams,
)
from mimamori.detector.model_state import FleetState, local_slot
from mimamori.detector.model_thresholds import _quantile, dark_silence_kind, on_thresholds, silence_thresholds

# ---------------------------------------------------------------------------------------------
# Online update
# ---------------------------------------------------------------------------------------------


def _decay(state: FleetState, rows: np.ndarray, day: np.ndarray, p: DetectorParams) -> None:
    """Bring the histograms of ``rows`` (unique) to ``day`` with the decay they missed."""
    day = day - int(state.epoch // 86400)  # int16 days since the epoch's day: 89 years of range
    gap = day - state.decay_day[rows]
    due = gap > 0
    if not due.any():
        return
    r = rows[due]
    f = (0.5 ** (gap[due] / p.half_life_days)).astype(np.float32)
    state.sil_hist[r] = (state.sil_hist[r].astype(np.float32) * f[:, None, None, None]).astype(np.float16)
    state.on_hist[r] = (state.on_hist[r].astype(np.float32) * f[:, None, None, None]).astype(np.float16)
    state.out_hist[r] = (state.out_hist[r].astype(np.float32) * f[:, None, None]).astype(np.float16)
    state.dev_activity[r] = (state.dev_activity[r].astype(np.float32) * f[:, None]).astype(np.float16)
    state.bin_days[r] = (state.bin_days[r].astype(np.float32) * f[:, None]).astype(np.float16)
    state.days_active[r] = (state.days_active[r].astype(np.float32) * f).astype(np.float16)
    state.over_tight[r] = (state.over_tight[r].astype(np.float32) * f).astype(np.float16)
    state.decay_day[r] = day[due]


def _add_exceedance(hist_flat: np.ndarray, base_index: np.ndarray, durations_h: np.ndarray, edges: np.ndarray, *, exposure: bool,
                    weight: np.ndarray | float = 1.0) -> None:
    """Add one silence/episode of each duration to the exceedance counts starting at ``base_index``
    (edge 0 too when ``exposure``: every episode is a trial).
    """
    w = np.broadcast_to(np.asarray(weight, np.float32), durations_h.shape)[:, None]
    mask = (((durations_h[:, None] >= edges[None, :]) & ((edges[None, :] > 0) | exposure)) * w).astype(np.float16)
    idx = base_index[:, None] + np.arange(len(edges))[None, :]
    np.add.at(hist_flat, idx.ravel(), mask.ravel())


def observe(
    state: FleetState,
    hh: np.ndarray,
    dev: np.ndarray,
    t: np.ndarray,
    kind: np.ndarray,
    p: DetectorParams = DEFAULT_PARAMS,
) -> None:
    """Learn from a batch of events (any order, any households): household row, device column,
    epoch seconds, EV_* code. Call with batches in time order (each batch after the previous).
    """
    if len(t) == 0:
        return
    hh = np.asarray(hh, np.int64)
    dev = np.asarray(dev, np.int64)
    t = np.asarray(t, np.float64)
    kind = np.asarray(kind, np.int64)
    order = np.lexsort((t, hh))
    hh, dev, t, kind = hh[order], dev[order], t[order], kind[order]

    # Device health: anything a device sends proves it is alive.
    rel = (t - state.epoch).astype(np.float32)
    key = hh * MAX_DEVICES + dev
    o = np.lexsort((t, key))
    last_idx = o[np.r_[key[o][1:] != key[o][:-1], True]]
    state.dev_last_seen.reshape(-1)[key[last_idx]] = rel[last_idx]
    state.dev_heartbeats.reshape(-1)[key[kind == EV_HEARTBEAT]] = True

    lit_after, lit_before = _lit_after_events(state, hh, dev, kind)
    _observe_switches(state, hh, dev, t, kind, p)
    act = np.isin(kind, ACTIVITY_CODES)
    if not act.any():
        return
    hh, dev, t, kind = hh[act], dev[act], t[act], kind[act]
    lit_after, lit_before = lit_after[act], lit_before[act]
    rows, first = np.unique(hh, return_index=True)
    local_day = ((t + state.tz_offset_s[hh]) // 86400).astype(np.int32)
    _decay(state, rows, local_day[first], p)

    # Activity share per device (for "are the offline devices the ones that carry the signal").
    np.add.at(state.dev_activity.reshape(-1), hh * MAX_DEVICES + dev, np.float16(1.0))

    same = np.r_[False, hh[1:] == hh[:-1]]
    # Light context at the start of the gap before each event: after the previous activity event.
    prev_lit = np.r_[False, lit_after[:-1]]
    prev_lit[~same] = lit_before[~same]
    prev_lit = prev_lit.astype(np.int64)

    # Exposure: each local hour with activity, once per light context an event left the home in
    # (each is a trial: the silence that follows such an event).
    hour_no = ((t + state.tz_offset_s[hh]) // 3600).astype(np.int64)
    ctx_after = lit_after.astype(np.int64)
    key = (hh * 2 + ctx_after) * (1 << 32) + hour_no
    _, first_idx = np.unique(key, return_index=True)
    new_hour = np.zeros(len(t), bool)
    new_hour[first_idx] = True
    new_hour &= hour_no > state.last_hour[hh, ctx_after]
    if new_hour.any():
        flat = ((hh[new_hour] * 2 + ctx_after[new_hour]) * 24 + hour_no[new_hour] % 24) * len(SILENCE_EDGES_H)
        np.add.at(state.sil_hist.reshape(-1), flat, np.float16(1.0))
    np.maximum.at(state.last_hour.reshape(-1), hh * 2 + ctx_after, hour_no.astype(np.int32))

    # Silences: the gap before each event (the first of a household's batch uses its last activity).
    prev = np.empty_like(t)
    prev[1:] = t[:-1]
    prev[~same] = state.last_activity[hh[~same]]
    starts_effective = prev.copy()
    # The daily routine: each (local day, 2-hour bin) with activity once, each active local day once.
    local_t = t + state.tz_offset_s[hh]
    local_prev = prev + state.tz_offset_s[hh]
    with np.errstate(invalid="ignore"):
        new_day = ~(np.floor(local_prev / 86400.0) == np.floor(local_t / 86400.0))  # NaN prev: new
        new_bin = new_day | ~(np.floor(local_prev / (BIN_H * 3600.0)) == np.floor(local_t / (BIN_H * 3600.0)))
    new_day &= prev <= t
    new_bin &= prev <= t  # a late arrival inside a stretch already counted is not a new day
    if new_bin.any():
        bins = ((local_t[new_bin] % 86400.0) // (BIN_H * 3600.0)).astype(np.int64)
        np.add.at(state.bin_days.reshape(-1), hh[new_bin] * N_BINS + bins, np.float16(1.0))
    # An active day is counted once it is over (at the first event of a later day): counted in the
    # morning, it would make every later bin of today look missed until the day's end.
    done_day = new_day & np.isfinite(prev)
    if done_day.any():
        # ... with the decay the bins of that day have had since (the histograms are already at today).
        age = np.floor(local_t[done_day] / 86400.0) - np.floor(local_prev[done_day] / 86400.0)
        np.add.at(state.days_active, hh[done_day], (0.5 ** (age / p.half_life_days)).astype(np.float16))
    learnable = np.isfinite(prev)
    # The first silence of each household in the batch may have been paused, blind or door-started.
    first_mask = ~same
    stored_flags = state.flags[hh]
    blind = (stored_flags & (_FLAG_BLIND | _FLAG_DOOR)) != 0  # a lights-out silence is learned: it says how long outings last
    learnable &= ~(first_mask & blind)
    # Inside the batch, a silence that began with a door event is not an at-home silence.
    out_after = _out_after_events(state, hh, dev, t, kind, same, p)
    door_start = same & np.r_[False, out_after[:-1]]
    learnable &= ~door_start
    gap_h = (t - prev) / 3600.0
    # Outings: how long this home's departures last (door: in the batch or stored; lights out: stored).
    unpaused = first_mask & ((stored_flags & _FLAG_BLIND) == 0) & np.isfinite(prev)
    out_door = door_start | (unpaused & ((stored_flags & _FLAG_DOOR) != 0))
    out_lights = unpaused & ~out_door & ((stored_flags & _FLAG_LIGHTS_OUT) != 0)
    for sel, kind_out in ((out_door, OUT_DOOR), (out_lights, OUT_LIGHTS)):
        if sel.any():
            base = (hh[sel] * 2 + kind_out) * len(OUT_EDGES_H)
            _add_exceedance(state.out_hist.reshape(-1), base, gap_h[sel].astype(np.float32), OUT_EDGES_H, exposure=True)
    rec = learnable & (gap_h >= p.silence_min_h)
    if rec.any():
        _, hour = local_slot(starts_effective[rec], state.tz_offset_s[hh[rec]])
        base = ((hh[rec] * 2 + prev_lit[rec]) * 24 + hour) * len(SILENCE_EDGES_H)
        # A silence that went past its alarm threshold can be learned with a smaller weight
        # (``anomalous_weight``), so a one-off does not blunt the detector for weeks; measured on the
        # simulator, full weight (1.0, the default) gave fewer false alerts at the same delays.
        alarmed = ~same[rec] & (gap_h[rec] > state.alarm_after_h[hh[rec]])
        weight = np.where(alarmed, p.anomalous_weight, 1.0)
        # Would the tight threshold have alarmed on it? (The home's own false-alert budget.)
        q_then = state.quantile_h[hh[rec]].astype(np.float32)
        tight_then = np.maximum(q_then + p.tight_margin_h + p.tight_margin_frac * q_then, p.min_alarm_h)
        over = ~same[rec] & (gap_h[rec] > tight_then)
        if over.any():
            np.add.at(state.over_tight, hh[rec][over], np.float16(1.0))
        _add_exceedance(state.sil_hist.reshape(-1), base, gap_h[rec].astype(np.float32), SILENCE_EDGES_H, exposure=False, weight=weight)

    # The new current silence of each household begins at its last event.
    last = np.r_[np.nonzero(hh[1:] != hh[:-1])[0], len(hh) - 1]
    r_last = hh[last]
    state.last_activity[r_last] = np.fmax(state.last_activity[r_last], t[last])  # late arrivals never move it back
    moved = state.flags[r_last] & _FLAG_MOVED_AFTER_DOOR  # updated by _out_after_events
    lights_out = _lights_out_departure(state, r_last, t[last], kind[last], lit_after[last], p)
    state.flags[r_last] = (np.where(out_after[last], _FLAG_DOOR, 0) | np.where(lights_out, _FLAG_LIGHTS_OUT, 0) | moved).astype(np.uint8)
    q, alarm, hist_n = silence_thresholds(state, r_last, state.last_activity[r_last], p)
    state.quantile_h[r_last] = q
    state.alarm_after_h[r_last] = alarm
    state.slot_history[r_last] = hist_n.astype(np.float16)
    out_kind = np.where(out_after[last], OUT_DOOR, OUT_LIGHTS)
    state.out_alarm_h[r_last] = outing_thresholds(state, r_last, out_kind, p).astype(np.float16)


def outing_thresholds(state: FleetState, rows: np.ndarray, out_kind: np.ndarray, p: DetectorParams = DEFAULT_PARAMS) -> np.ndarray:
    """Hours after a departure (``out_kind``: OUT_DOOR / OUT_LIGHTS) past which the outing is far
    beyond this home's usual ones: "not back".
    """
    own = state.out_hist[rows, out_kind].astype(np.float32)
    prior = state.prior_out[out_kind]
    q = _quantile(own, prior, OUT_EDGES_H, p.out_prior_strength, p.out_beta, p.tail_tau_h)
    return np.clip(q + p.out_margin_h + p.out_margin_frac * q, p.out_min_h, p.door_away_cap_h).astype(np.float32)


def _lights_out_departure(state: FleetState, rows: np.ndarray, t: np.ndarray, kind: np.ndarray, lit_after: np.ndarray,
                          p: DetectorParams) -> np.ndarray:
    """For each household's latest activity event: did it switch the last light off at an hour the
    home is usually lit while someone is up, and which is not its bedtime? Then the resident has
    probably gone out (the dark home is how leaving looks in a home with bulbs only).
    """
    out = np.zeros(len(rows), bool)
    cand = (kind == EV_OFF) & ~lit_after
    if not p.lights_out or not cand.any():
        return out
    r = rows[cand]
    _, hour = local_slot(t[cand], state.tz_offset_s[r])
    known, long = dark_silence_kind(state, r, hour, p)
    # Lit at this hour and the next (so not the morning, when daylight switches the lights off).
    usually_lit = np.ones(len(r), bool)
    for h in (hour, (hour + 1) % 24):
        lit_exposure = state.sil_hist[r, 1, h, 0].astype(np.float32)
        usually_lit &= lit_exposure >= p.lights_out_lit_share * (lit_exposure + state.sil_hist[r, 0, h, 0].astype(np.float32))
    out[cand] = usually_lit & known & ~long
    return out


def _out_after_events(state: FleetState, hh: np.ndarray, dev: np.ndarray, t: np.ndarray, kind: np.ndarray, same: np.ndarray,
                      p: DetectorParams) -> np.ndarray:
    """For activity events sorted by (household, time): did the resident probably go out by then?
    True when the household's latest front-door event is at most ``door_grace_s`` before the event
    and no motion sensor saw anyone since the door (lights switched off on the way out come just
    after the door). Only homes with motion sensors: there a return would be seen. Updates the
    stored door time and the "moved after the door" flag.
    """
    n = len(t)
    idx = np.arange(n)
    first = ~same
    hh_start = np.maximum.accumulate(np.where(first, idx, 0))
    is_door = (state.dev_kind[hh, dev] == DEV_DOOR) & np.isin(kind, (EV_OPEN, EV_CLOSE))
    is_motion = kind == EV_MOTION
    leaving = is_door
    if p.door_arrival_quiet_s > 0 and is_door.any():
        # A door after a quiet home is someone coming in, not going out (a resident who collapses
        # just inside the door must not be taken for out): quiet = no other activity before it.
        last_other = np.maximum.accumulate(np.where(~is_door, idx, -1))
        other_in_batch = (last_other >= hh_start) & (last_other < idx)
        before = np.where(other_in_batch, t[np.maximum(last_other, 0)], state.last_activity[hh])
        with np.errstate(invalid="ignore"):
            arrival = ~((t - before) < p.door_arrival_quiet_s)  # never active before: an arrival too
        leaving = is_door & ~arrival
    if p.door_not_at_bedtime and leaving.any():
        # A door at this home's bedtime (an hour from which its silences usually last the night) is
        # the bedroom or the lock for the night, not a departure: judged as the night it is.
        d = np.flatnonzero(leaving)
        _, hour = local_slot(t[d], state.tz_offset_s[hh[d]])
        leaving[d[dark_silence_kind(state, hh[d], hour, p)[1]]] = False
    last_door = np.maximum.accumulate(np.where(leaving, idx, -1))
    last_motion = np.maximum.accumulate(np.where(is_motion, idx, -1))
    door_in_batch = last_door >= hh_start
    motion_in_batch = last_motion >= hh_start
    stored_door = state.door_at[hh].astype(np.float64) + state.epoch
    stored_moved = (state.flags[hh] & _FLAG_MOVED_AFTER_DOOR) != 0
    door_time = np.where(door_in_batch, t[np.maximum(last_door, 0)], stored_door)
    moved = np.where(door_in_batch, last_motion > last_door, stored_moved | motion_in_batch)
    with np.errstate(invalid="ignore"):
        out = np.asarray(state.has_motion[hh] & ~moved & ((t - door_time) <= p.door_grace_s), dtype=bool)  # NaN door time: False
    last = np.r_[np.nonzero(hh[1:] != hh[:-1])[0], n - 1]
    r = hh[last]
    state.door_at[r] = (door_time[last] - state.epoch).astype(np.float32)
    state.flags[r] = np.where(moved[last], state.flags[r] | _FLAG_MOVED_AFTER_DOOR,
                              state.flags[r] & ~_FLAG_MOVED_AFTER_DOOR).astype(np.uint8)
    return out


def _lit_after_events(state: FleetState, hh: np.ndarray, dev: np.ndarray, kind: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(any switch on after each event, any switch on before the batch) for events sorted by
    (household, time); call before ``_observe_switches`` updates the stored switch states.
    """
    on_before = (~np.isnan(state.sw_on_since[hh])).sum(axis=1).astype(np.int64)
    sw = state.dev_switch[hh, dev].astype(np.int64)
    m = (sw >= 0) & np.isin(kind, (EV_ON, EV_OFF, EV_BOOT))
    delta = np.zeros(len(hh), np.int64)
    if m.any():
        idx = np.flatnonzero(m)
        key = hh[idx] * MAX_SWITCHES + sw[idx]
        o = np.argsort(key, kind="stable")  # keeps time order within a switch
        idx, key = idx[o], key[o]
        new = (kind[idx] == EV_ON).astype(np.int64)
        first = np.r_[True, key[1:] != key[:-1]]
        stored = (~np.isnan(state.sw_on_since.reshape(-1)[key])).astype(np.int64)
        delta[idx] = new - np.where(first, stored, np.r_[0, new[:-1]])
    cs = np.cumsum(delta)
    start = np.maximum.accumulate(np.where(np.r_[True, hh[1:] != hh[:-1]], np.arange(len(hh)), 0))
    after = on_before + cs - (cs[start] - delta[start])
    return after > 0, on_before > 0


def _observe_switches(state: FleetState, hh: np.ndarray, dev: np.ndarray, t: np.ndarray, kind: np.ndarray, p: DetectorParams) -> None:
    """On/off episodes per switchable device (vectorised). After an event the device is on iff the
    event was ``on``; an episode opens at the first ``on`` after off and closes at the next ``off``;
    a ``boot`` (power back, restart) forgets the state without recording an episode.
    """
    sw = state.dev_switch[hh, dev]
    m = (sw >= 0) & ((kind == EV_ON) | (kind == EV_OFF) | (kind == EV_BOOT))
    if not m.any():
        return
    hh, sw, t, kind = hh[m], sw[m].astype(np.int64), t[m], kind[m]
    key = hh * MAX_SWITCHES + sw
    order = np.lexsort((t, key))
    key, hh, sw, t, kind = key[order], hh[order], sw[order], t[order], kind[order]
    flat_since = state.sw_on_since.reshape(-1)
    stored = flat_since[key].astype(np.float64) + state.epoch  # NaN when off
    first = np.r_[True, key[1:] != key[:-1]]
    is_on = kind == EV_ON
    prev_on = np.where(first, ~np.isnan(stored), np.r_[False, is_on[:-1]])
    # Start time of the current on-run at each event (valid at run starts, forward-filled).
    start = np.where(is_on & ~prev_on, t, np.where(first & is_on & prev_on, stored, np.nan))
    valid = ~np.isnan(start)
    last_valid = np.maximum.accumulate(np.where(valid, np.arange(len(t)), 0))
    since = start[last_valid]
    since_before = np.where(first, stored, np.r_[np.nan, since[:-1]])
    closes = (kind == EV_OFF) & prev_on & ~np.isnan(since_before)
    if closes.any():
        r, s_, st = hh[closes], sw[closes], since_before[closes]
        dur_h = ((t[closes] - st) / 3600.0).astype(np.float32)
        ok = dur_h >= 0
        _, hour = local_slot(st[ok], state.tz_offset_s[r[ok]])
        base = ((r[ok] * MAX_SWITCHES + s_[ok]) * N_ON_BLOCKS + hour // ON_BLOCK_H) * len(ON_EDGES_H)
        _add_exceedance(state.on_hist.reshape(-1), base, dur_h[ok], ON_EDGES_H, exposure=True)
    last = np.r_[key[1:] != key[:-1], True]
    final_on = is_on[last]
    final_since = np.where(final_on, since[last], np.nan)
    changed = final_on & ~(since[last] == stored[last])
    flat_since[key[last]] = (final_since - state.epoch).astype(np.float32)
    if changed.any():
        r, s_ = hh[last][changed], sw[last][changed]
        state.sw_alarm_after_h[r, s_] = on_thresholds(state, r, s_, final_since[changed], p)


def observe_gateway(state: FleetState, hh: np.ndarray, t: np.ndarray, online: np.ndarray) -> None:
    """Gateway status changes (``online`` False = the last will fired), in time order."""
    for r, ts, up in zip(np.asarray(hh).tolist(), np.asarray(t).tolist(), np.asarray(online).tolist(), strict=True):
        if up:
            state.gateway_offline_since[r] = np.nan
        elif np.isnan(state.gateway_offline_since[r]):
            state.gateway_offline_since[r] = ts


