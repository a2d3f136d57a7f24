-- Audit of alert settings changed outside any incident: escalation chains, people's channels and
-- quiet hours (who, when, what, through which channel). Incident actions are in incident_timeline.
CREATE TABLE alert_admin_log (
    entry_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL,          -- engine clock
    actor     text REFERENCES people ON DELETE SET NULL,
    action    text NOT NULL,                 -- chain_set, chain_reset, channel_added, channel_removed, quiet_hours_set
    subject   text NOT NULL,                 -- household_id or person_id
    channel   text NOT NULL DEFAULT 'app',
    data      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX alert_admin_log_subject_idx ON alert_admin_log (subject, entry_id);
