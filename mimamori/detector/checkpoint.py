"""The model's state, saved and loaded: per household one packed row, per shard one checkpoint.

Pure part (``state_format``, ``pack_rows``, ``unpack_rows``, ``copy_rows``): every numpy field of
``FleetState`` whose first axis is the household is a slice of a household's row, packed as the
concatenated bytes of those slices in declaration order. Nothing here names the model's fields, so
a field the model gains is saved too; a changed field list or dtype changes ``state_format``, and a
saved state of another format is not loaded (the service rebuilds from history instead).

I/O part (``save``, ``load``): the rows in ``detector_state`` and the shard's ``detector_checkpoints``
row, written in one transaction so the rows and the events cursor always agree (migration 0047).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, dataclass, fields
from datetime import datetime
from typing import Any

import numpy as np
import psycopg

from mimamori.detector import model as m


def fleet_fields(state: m.FleetState) -> list[str]:
    """Fleet-wide fields (one value for all households: the population priors), saved once per
    checkpoint. ``FleetState`` gives exactly those a default; per-household fields have none.
    """
    return [f.name for f in fields(state) if f.default is not MISSING or f.default_factory is not MISSING]
#: Bumped when the meaning of a field changes while its name, dtype and shape stay the same.
FORMAT_VERSION = 1


def household_fields(state: m.FleetState) -> list[str]:
    fleet = set(fleet_fields(state))
    names = []
    for f in fields(state):
        value = getattr(state, f.name)
        if f.name in fleet or not isinstance(value, np.ndarray):
            continue
        if value.shape[:1] != (state.n,):
            raise ValueError(f"FleetState.{f.name} has shape {value.shape}: per-household fields have the household first")
        names.append(f.name)
    return names


def state_format(state: m.FleetState) -> str:
    parts = [f"v{FORMAT_VERSION}"]
    for name in household_fields(state):
        arr = getattr(state, name)
        parts.append(f"{name}:{arr.dtype.str}:{'x'.join(map(str, arr.shape[1:]))}")
    for name in fleet_fields(state):
        arr = getattr(state, name)
        parts.append(f"{name}:{arr.dtype.str}:{'x'.join(map(str, arr.shape))}")
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:16]


def pack_rows(state: m.FleetState, rows: np.ndarray | None = None) -> np.ndarray:
    """uint8[len(rows), row_bytes]: the households' rows, packed."""
    idx = np.arange(state.n) if rows is None else np.asarray(rows, np.int64)
    parts = []
    for name in household_fields(state):
        arr = np.ascontiguousarray(getattr(state, name)[idx])
        width = arr.dtype.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64))
        parts.append(arr.view(np.uint8).reshape(len(idx), width))
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(idx), 0), np.uint8)


def unpack_rows(state: m.FleetState, rows: np.ndarray, packed: np.ndarray) -> None:
    """Write packed rows (as made by ``pack_rows`` on a state of the same format) into ``rows``."""
    idx = np.asarray(rows, np.int64)
    packed = np.ascontiguousarray(packed, np.uint8).reshape(len(idx), -1)
    offset = 0
    for name in household_fields(state):
        arr = getattr(state, name)
        width = arr.dtype.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64))
        chunk = np.ascontiguousarray(packed[:, offset:offset + width])
        arr[idx] = chunk.view(arr.dtype).reshape((len(idx), *arr.shape[1:]))
        offset += width
    if offset != packed.shape[1]:
        raise ValueError(f"packed rows are {packed.shape[1]} bytes, the state's rows {offset}")


def copy_rows(src: m.FleetState, src_rows: np.ndarray, dst: m.FleetState, dst_rows: np.ndarray) -> None:
    """Households carried from one state to another of the same format (a fleet re-laid out)."""
    if len(src_rows):
        unpack_rows(dst, dst_rows, pack_rows(src, src_rows))


def row_digests(packed: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in packed]


# ---------------------------------------------------------------------------------------------
# I/O
# ---------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    shard: str
    format: str
    epoch: float
    events_cursor: datetime | None
    seen_recent: set[tuple[str, int]]
    health_cursor: datetime | None
    last_prior_at: float | None
    prior: dict[str, np.ndarray]
    rows: dict[str, tuple[str, bytes]]  # household_id -> (layout, packed row)


def save(conn: psycopg.Connection, *, shard: str, state: m.FleetState, households: list[str], layouts: list[str],
         events_cursor: datetime | None, seen_recent: set[tuple[str, int]], health_cursor: datetime | None,
         last_prior_at: float | None, saved_digests: dict[str, bytes]) -> int:
    """Save the rows that changed since ``saved_digests`` (updated in place) and the checkpoint, in one
    transaction. Returns the number of household rows written.
    """
    packed = pack_rows(state)
    digests = row_digests(packed)
    changed = [i for i, (h, d) in enumerate(zip(households, digests, strict=True)) if saved_digests.get(h) != d + layouts[i].encode()]
    prior = {name: getattr(state, name) for name in fleet_fields(state)}
    prior_blob = json.dumps({k: [v.dtype.str, list(v.shape)] for k, v in prior.items()}).encode() + b"\n" + b"".join(
        np.ascontiguousarray(v).tobytes() for v in prior.values())
    with conn.transaction(), conn.cursor() as cur:
        if changed:
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS detector_state_in (household_id text, layout text, state bytea)"
                        " ON COMMIT DELETE ROWS")
            with cur.copy("COPY detector_state_in (household_id, layout, state) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "text", "bytea"])
                for i in changed:
                    copy.write_row((households[i], layouts[i], packed[i].tobytes()))
            cur.execute(
                """INSERT INTO detector_state (household_id, shard, layout, state, saved_at)
                   SELECT i.household_id, %s, i.layout, i.state, now() FROM detector_state_in i
                   JOIN households h USING (household_id)
                   ON CONFLICT (household_id) DO UPDATE SET shard = EXCLUDED.shard, layout = EXCLUDED.layout,
                       state = EXCLUDED.state, saved_at = now()""", (shard,))
        cur.execute(
            """INSERT INTO detector_checkpoints (shard, format, epoch, events_cursor, seen_recent, health_cursor,
                                                last_prior_at, prior, households, saved_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now())
               ON CONFLICT (shard) DO UPDATE SET format = EXCLUDED.format, epoch = EXCLUDED.epoch,
                   events_cursor = EXCLUDED.events_cursor, seen_recent = EXCLUDED.seen_recent,
                   health_cursor = EXCLUDED.health_cursor, last_prior_at = EXCLUDED.last_prior_at,
                   prior = EXCLUDED.prior, households = EXCLUDED.households, saved_at = now()""",
            (shard, state_format(state), state.epoch, events_cursor, json.dumps(sorted(seen_recent)), health_cursor,
             last_prior_at, prior_blob, len(households)))
    for i in changed:
        saved_digests[households[i]] = digests[i] + layouts[i].encode()
    return len(changed)


def _decode_prior(blob: bytes | None) -> dict[str, np.ndarray]:
    if not blob:
        return {}
    head, _, body = bytes(blob).partition(b"\n")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, (dtype, shape) in json.loads(head).items():
        dt = np.dtype(dtype)
        size = dt.itemsize * int(np.prod(shape, dtype=np.int64))
        out[name] = np.frombuffer(body[offset:offset + size], dt).reshape(shape).copy()
        offset += size
    return out


def load(conn: psycopg.Connection, shard: str, households: list[str]) -> Checkpoint | None:
    row = conn.execute(
        """SELECT format, epoch, events_cursor, seen_recent, health_cursor, last_prior_at, prior
           FROM detector_checkpoints WHERE shard = %s""", (shard,)).fetchone()
    if row is None:
        return None
    fmt, epoch, cursor, seen, health, last_prior, prior = row
    saved: dict[str, tuple[str, bytes]] = {}
    with conn.cursor() as cur:
        # Only rows saved with this shard's checkpoint: a row another shard saved goes with another cursor
        # (the fleet was re-sharded, or a household moved to another area) and is replayed instead.
        cur.execute("SELECT household_id, layout, state FROM detector_state WHERE household_id = ANY(%s) AND shard = %s",
                    (households, shard))
        for household_id, layout, blob in cur:
            saved[household_id] = (layout, bytes(blob))
    return Checkpoint(shard, fmt, float(epoch), cursor, {(d, int(s)) for d, s in seen}, health,
                      None if last_prior is None else float(last_prior), _decode_prior(prior), saved)


def saved_digests_of(cp: Checkpoint) -> dict[str, bytes]:
    """What ``save`` compares against, for rows just loaded unchanged."""
    return {h: hashlib.blake2b(blob, digest_size=16).digest() + layout.encode() for h, (layout, blob) in cp.rows.items()}


def describe(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The checkpoints, for operators (``mimamori detector status``)."""
    cols = ("shard", "format", "events_cursor", "households", "saved_at")
    return [dict(zip(cols, r, strict=True)) for r in conn.execute(
        "SELECT shard, format, events_cursor, households, saved_at FROM detector_checkpoints ORDER BY shard")]
