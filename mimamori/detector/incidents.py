"""The detector's incident rows: what each alarm's row says (rule, score, evidence) and the writing of a
tick's incidents, one open per household and kind (the area outage per area). The alert engine picks
new ones up through the trigger hand-off of ``mimamori.kernel.contract`` (``incidents_opened_notify``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg

from mimamori.detector import metrics
from mimamori.detector import model as m
from mimamori.detector.fleet import Fleet
from mimamori.kernel import contract


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def incident_evidence(fleet: Fleet, state: m.FleetState, sc: m.Scores, r: int, kind: str, asked_first: np.ndarray,
                      ) -> tuple[str | None, float | None, dict[str, Any]]:
    """What the incident row says: the rule, a score, and the evidence (``episode`` names what is alarming)."""
    iso = lambda x: _ts(float(x)).isoformat() if np.isfinite(x) else None  # noqa: E731
    # ``episode`` names what is alarming (this silence, this light since then, these devices), so an
    # incident a watcher closed is not reopened for the same episode.
    if kind == contract.INACTIVITY:
        return (f"model:{m.RULES[sc.inactivity_rule[r]]}", float(sc.inactivity_score[r]),
                {"episode": f"silence:{iso(sc.silence_start[r])}",
                 "silence_start": iso(sc.silence_start[r]), "expected_activity_by": iso(sc.expected_by[r]),
                 "alarm_at": iso(sc.alarm_at[r]), "score": float(sc.inactivity_score[r]), "rule": m.RULES[sc.inactivity_rule[r]],
                 # the faster threshold of a home whose resident is asked first (the watcher's "why")
                 "asked_first": bool(asked_first[r]) if r < len(asked_first) else False})
    if kind == contract.LONG_ON:
        sw = int(sc.long_on_switch[r])
        cols = np.flatnonzero(state.dev_switch[r] == sw)
        device = fleet.devices[r][int(cols[0])] if len(cols) else None
        return ("model:long_on", float(sc.long_on_hours[r]),
                {"episode": f"on:{device}:{iso(sc.long_on_since[r])}",
                 "device": device, "on_since": iso(sc.long_on_since[r]), "on_hours": float(sc.long_on_hours[r]),
                 "silence_start": iso(sc.silence_start[r]), "expected_activity_by": iso(sc.expected_by[r])})
    devices = [fleet.devices[r][c] for c in np.flatnonzero(sc.offline_devices[r]) if c < len(fleet.devices[r])]
    return ("heartbeat_timeout" if not sc.gateway_offline[r] else "gateway_last_will", float(len(devices)),
            {"episode": "offline:" + ",".join(devices) + (":gateway" if sc.gateway_offline[r] else ""),
             "devices": devices, "gateway_offline": bool(sc.gateway_offline[r])})

def write_incidents(conn: psycopg.Connection, fleet: Fleet, state: m.FleetState, sc: m.Scores, now: float, *,
                    asked_first: np.ndarray) -> dict[str, int]:
    """Open, update and close this tick's incidents in one transaction (idempotent: the partial unique
    indexes of migration 0004 + ON CONFLICT); returns the counts for the metrics.
    """
    conditions = {contract.INACTIVITY: sc.inactivity, contract.LONG_ON: sc.long_on, contract.DEVICE_OFFLINE: sc.device_offline}
    opened = updated = closed = 0
    opened_by_kind = dict.fromkeys(metrics.INCIDENT_KINDS, 0)
    closed_by_kind = dict.fromkeys(metrics.INCIDENT_KINDS, 0)
    open_rows = {(h, k): (i, s) for i, h, k, s in conn.execute(
        "SELECT incident_id, household_id, kind, status FROM incidents WHERE status IN ('open', 'claimed') AND household_id IS NOT NULL")}
    # Episodes a watcher (or the coordinator) already closed recently: not reopened.
    done = {(h, k, e) for h, k, e in conn.execute(
        """SELECT household_id, kind, evidence->>'episode' FROM incidents
           WHERE status IN ('resolved', 'cancelled') AND household_id IS NOT NULL AND closed_at > %s""",
        (_ts(now - 7 * 86400),))}
    with conn.transaction():
        for kind, cond in conditions.items():
            for r in np.flatnonzero(cond).tolist():
                rule, score, evidence = incident_evidence(fleet, state, sc, r, kind, asked_first)
                hid = fleet.households[r]
                if (hid, kind, evidence["episode"]) in done and (hid, kind) not in open_rows:
                    continue
                res = conn.execute(
                    """INSERT INTO incidents (household_id, area, kind, opened_at, updated_at, rule, score, evidence)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                       ON CONFLICT (household_id, kind) WHERE status IN ('open', 'claimed') AND household_id IS NOT NULL
                       DO UPDATE SET updated_at = EXCLUDED.updated_at, score = EXCLUDED.score,
                                     evidence = incidents.evidence || EXCLUDED.evidence
                       RETURNING (xmax = 0)""",
                    (hid, fleet.areas[r], kind, _ts(now), _ts(now), rule, score, json.dumps(evidence)),
                ).fetchone()
                if res and res[0]:
                    opened += 1
                    opened_by_kind[kind] += 1
                else:
                    updated += 1
            # Conditions that cleared: an unclaimed incident closes itself (a claimed one waits for its
            # watcher, and so does one whose resident asked for help: a switch reached is no all-clear).
            for (hid, k), (incident_id, status) in open_rows.items():
                r = fleet.row_of.get(hid)
                if k != kind or status != "open" or r is None or cond[r]:
                    continue
                outcome = contract.ACTIVITY_RESUMED if kind in contract.WELFARE_KINDS else contract.AUTO_CLOSED
                done_now = conn.execute(
                    "UPDATE incidents SET status = 'resolved', closed_at = %s, updated_at = %s, outcome = %s"
                    " WHERE incident_id = %s AND status = 'open' AND NOT (evidence ? 'help_asked_at')",
                    (_ts(now), _ts(now), outcome, incident_id),
                ).rowcount
                closed += done_now
                closed_by_kind[kind] += done_now
        # Area outages: one incident per area.
        areas_out = sorted({fleet.areas[r] for r in np.flatnonzero(sc.area_outage) if fleet.areas[r]})
        for area in areas_out:
            down = int(sum(1 for r in np.flatnonzero(sc.gateway_offline) if fleet.areas[r] == area))
            res = conn.execute(
                """INSERT INTO incidents (household_id, area, kind, opened_at, updated_at, rule, score, evidence)
                   VALUES (NULL, %s, 'area_outage', %s, %s, 'gateways_offline', %s, %s)
                   ON CONFLICT (area) WHERE status IN ('open', 'claimed') AND kind = 'area_outage'
                   DO UPDATE SET updated_at = EXCLUDED.updated_at, score = EXCLUDED.score, evidence = EXCLUDED.evidence
                   RETURNING (xmax = 0)""",
                (area, _ts(now), _ts(now), float(down), json.dumps({"gateways_offline": down})),
            ).fetchone()
            opened += int(bool(res and res[0]))
            opened_by_kind[contract.AREA_OUTAGE] += int(bool(res and res[0]))
        cur = conn.execute(
            """UPDATE incidents SET status = 'resolved', closed_at = %s, updated_at = %s, outcome = 'auto_closed'
               WHERE kind = 'area_outage' AND status = 'open' AND NOT (area = ANY(%s::text[]))""",
            (_ts(now), _ts(now), areas_out),
        )
        closed += cur.rowcount
        closed_by_kind[contract.AREA_OUTAGE] += cur.rowcount
    open_by_kind = {k: int(n) for k, n in conn.execute(
        "SELECT kind, count(*) FROM incidents WHERE status IN ('open', 'claimed') GROUP BY kind")}
    return {"opened": opened, "updated": updated, "closed": closed, "open": sum(open_by_kind.values()),
            "opened_by_kind": opened_by_kind, "closed_by_kind": closed_by_kind, "open_by_kind": open_by_kind}
