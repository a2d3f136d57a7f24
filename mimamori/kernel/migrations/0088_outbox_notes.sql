-- The daily note is sent through the one outbox like everything else (source 'note'): a row per note and
-- channel, queued in the transaction that marked the subscription sent for the day (so once per day).
ALTER TABLE outbox DROP CONSTRAINT outbox_source_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_source_check CHECK (source IN ('alert', 'safety', 'note'));
