-- Alerts: every send attempt is recorded (state 'sending', an attempt id) and committed BEFORE the
-- network call, so a worker killed after the channel accepted a message but before it recorded
-- 'sent' leaves a visible in-doubt row. Whoever recovers it re-sends the SAME message (same
-- Message-ID, derived from the delivery id) and counts it in `resends`.
-- The sender holds a session advisory lock on the delivery while the row is 'sending'; the lock dies
-- with its connection, which is how another worker tells a crashed sender from a slow one.
ALTER TABLE alert_deliveries DROP CONSTRAINT alert_deliveries_status_check;
ALTER TABLE alert_deliveries ADD CONSTRAINT alert_deliveries_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'skipped'));
ALTER TABLE alert_deliveries
    ADD COLUMN attempt_id       text,          -- the current (or last) attempt
    ADD COLUMN sending_since    timestamptz,   -- engine clock: when the current attempt started
    ADD COLUMN sending_by       text,          -- worker id of the current attempt (diagnostics)
    ADD COLUMN message_id       text,          -- e-mail Message-ID (the same for every attempt)
    ADD COLUMN resends          integer NOT NULL DEFAULT 0;  -- attempts made after an in-doubt crash
CREATE INDEX alert_deliveries_sending_idx ON alert_deliveries (delivery_id) WHERE status = 'sending';
