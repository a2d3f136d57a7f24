-- The safety worker takes the next due outbox row in (next_attempt_at, delivery_id) order, and every
-- row of a check is due at the same time: the index must give the order within that time too, or each
-- pick sorts the whole queue (bench/safety_bench.py: 15.7 ms a pick with 12,700 rows pending).
DROP INDEX safety_deliveries_pending_idx;
CREATE INDEX safety_deliveries_pending_idx ON safety_deliveries (next_attempt_at, delivery_id) WHERE status = 'pending';
