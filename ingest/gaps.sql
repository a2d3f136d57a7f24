-- Missing events to ask gateways to resend (used by ingest.sweeper, one process at a time).
--
-- Two kinds of holes, both per device:
--   1. gaps: among the device's events stored since %(since)s, consecutive seqs a < b with
--      b > a + 1 -> seqs a+1 .. b-1 are missing. Only gaps whose upper event was received before
--      %(settled)s are reported: batches commit out of order for a moment, so a fresh gap may
--      still fill by itself.
--   2. tail: the device's heartbeat said it has used seq up to reported_seq, but the highest stored
--      seq (max_seq) is lower -> seqs max_seq+1 .. reported_seq are missing (max_seq NULL: from 0).
-- Each row is one resend command; ranges are capped at %(max_range)s seqs (the rest is asked for
-- on a later sweep), rows at %(limit)s. Devices without a known gateway cannot be asked.
WITH recent AS (
    SELECT device_id, seq, received_at,
           lag(seq) OVER (PARTITION BY device_id ORDER BY seq) AS prev_seq
    FROM events
    WHERE time >= %(since)s
),
gaps AS (
    SELECT device_id, prev_seq + 1 AS from_seq, seq - 1 AS to_seq
    FROM recent
    WHERE prev_seq IS NOT NULL AND seq > prev_seq + 1 AND received_at < %(settled)s
),
tails AS (
    SELECT device_id, COALESCE(max_seq + 1, 0) AS from_seq, reported_seq AS to_seq
    FROM device_state
    WHERE reported_seq IS NOT NULL AND reported_seq > COALESCE(max_seq, -1)
      AND updated_at < %(settled)s
)
SELECT h.device_id, d.gateway_id, h.from_seq, LEAST(h.to_seq, h.from_seq + %(max_range)s - 1) AS to_seq
FROM (SELECT * FROM gaps UNION ALL SELECT * FROM tails) h
JOIN devices d ON d.device_id = h.device_id
WHERE d.gateway_id IS NOT NULL
ORDER BY h.device_id, h.from_seq
LIMIT %(limit)s
