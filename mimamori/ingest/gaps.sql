-- Missing events to ask gateways to resend (used by ingest.sweeper, one process at a time).
--
-- Devices considered: those whose device_state changed since %(since)s (ingest's clock, i.e. real
-- reception time: device clocks may be anything, e.g. a simulation's). For each, its newest
-- %(depth)s events by seq are read through the events_identity index (device_id, seq, ...).
-- Two kinds of holes:
--   1. gaps: consecutive stored seqs a < b with b > a + 1 -> seqs a+1 .. b-1 are missing. Only
--      gaps whose upper event was received before %(settled)s are reported: batches commit out of
--      order for a moment, so a fresh gap may still fill by itself.
--   2. tails: a heartbeat said the device has used seq up to reported_seq, but the highest stored
--      seq (max_seq) is lower -> seqs max_seq+1 .. reported_seq (max_seq NULL: from 0). No grace
--      here (a device sending only heartbeats keeps its row fresh); a premature request only costs
--      a resend that dedup absorbs.
-- Each row is one resend command; ranges are capped at %(max_range)s seqs (the rest is asked for
-- on a later sweep), rows at %(limit)s. Devices without a known gateway cannot be asked.
WITH active AS (
    SELECT device_id, max_seq, reported_seq
    FROM device_state
    WHERE updated_at >= %(since)s
),
recent AS (
    SELECT a.device_id, e.seq, e.received_at,
           lag(e.seq) OVER (PARTITION BY a.device_id ORDER BY e.seq) AS prev_seq
    FROM active a
    CROSS JOIN LATERAL (
        SELECT ev.seq, ev.received_at
        FROM events ev
        WHERE ev.device_id = a.device_id
        ORDER BY ev.seq DESC
        LIMIT %(depth)s
    ) e
),
gaps AS (
    SELECT device_id, prev_seq + 1 AS from_seq, seq - 1 AS to_seq
    FROM recent
    WHERE prev_seq IS NOT NULL AND seq > prev_seq + 1 AND received_at < %(settled)s
),
tails AS (
    SELECT device_id, COALESCE(max_seq + 1, 0) AS from_seq, reported_seq AS to_seq
    FROM active
    WHERE reported_seq IS NOT NULL AND reported_seq > COALESCE(max_seq, -1)
)
SELECT h.device_id, d.gateway_id, h.from_seq, LEAST(h.to_seq, h.from_seq + %(max_range)s - 1) AS to_seq
FROM (SELECT * FROM gaps UNION ALL SELECT * FROM tails) h
JOIN devices d ON d.device_id = h.device_id
WHERE d.gateway_id IS NOT NULL
ORDER BY h.device_id, h.from_seq
LIMIT %(limit)s
