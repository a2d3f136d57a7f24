-- mimamori:requires-extension timescaledb
-- The continuous aggregate's policy refreshed only the last 3 days. Rows that arrive later than that
-- (a gateway back after a week, a history loaded at once) or are deleted (a household removed) fell
-- below the watermark outside every refresh window: `activity_15m` then answered differently from
-- the plain view, for good. A refresh only recomputes the buckets that changed (the invalidation
-- log), so a window over the whole history costs the same when nothing old changed.
SELECT remove_continuous_aggregate_policy('activity_15m', if_exists => true);
SELECT add_continuous_aggregate_policy('activity_15m',
    start_offset => NULL, end_offset => INTERVAL '15 minutes',
    schedule_interval => INTERVAL '5 minutes');
