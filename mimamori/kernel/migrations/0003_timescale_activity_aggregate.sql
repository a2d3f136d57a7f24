-- mimamori:requires-extension timescaledb
-- mimamori:no-transaction
-- Continuous aggregate with the same name and columns as the plain view of 0001.
DROP VIEW IF EXISTS activity_15m;
CREATE MATERIALIZED VIEW activity_15m WITH (timescaledb.continuous) AS
SELECT household_id,
       time_bucket(INTERVAL '15 minutes', time) AS bucket,
       count(*) AS events
FROM events
WHERE kind IN ('on', 'off', 'motion', 'open', 'close') AND household_id IS NOT NULL
GROUP BY household_id, bucket
WITH NO DATA;
ALTER MATERIALIZED VIEW activity_15m SET (timescaledb.materialized_only = false);
SELECT add_continuous_aggregate_policy('activity_15m',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '15 minutes',
    schedule_interval => INTERVAL '5 minutes');
