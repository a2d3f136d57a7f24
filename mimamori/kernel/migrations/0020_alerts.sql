-- Alerts: escalation chains, the per-incident escalation (a snapshot of the chain plus where it is),
-- the outbox of deliveries, in-app notifications, the team timeline (also the audit trail),
-- per-person channels and rules, device tasks, and outcome labels for the detector.
-- All times the alert engine schedules on are the engine's clock times, passed in by the caller
-- (simulations run hours in milliseconds); `now()` is only used for bookkeeping defaults.

-- A household's chain, edited by its coordinator. No row: the default chain (alerts.policy).
CREATE TABLE escalation_chains (
    household_id  text PRIMARY KEY REFERENCES households ON DELETE CASCADE,
    steps         jsonb NOT NULL CHECK (jsonb_typeof(steps) = 'array'),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text REFERENCES people ON DELETE SET NULL
);

-- One row per incident the engine has taken on. `chain` is the snapshot taken when it opened:
-- editing escalation_chains never changes an escalation in flight. `next_step_at` is the queue:
-- workers pick due rows with FOR UPDATE SKIP LOCKED; NULL = nothing scheduled (paused or done).
CREATE TABLE alert_escalations (
    incident_id   bigint PRIMARY KEY REFERENCES incidents ON DELETE CASCADE,
    household_id  text REFERENCES households ON DELETE CASCADE,
    chain         jsonb NOT NULL,
    chain_source  text NOT NULL CHECK (chain_source IN ('household', 'default', 'technical')),
    state         jsonb NOT NULL DEFAULT '{}'::jsonb,
    status        text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'paused', 'done')),
    next_step_at  timestamptz,
    started_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    worker_id     text            -- the worker that last advanced it (diagnostics)
);
CREATE INDEX alert_escalations_due_idx ON alert_escalations (next_step_at) WHERE next_step_at IS NOT NULL;

-- Where each person may be reached, besides the app itself (in-app notifications need no row).
-- kind 'apprise': target is an Apprise URL (mailto://, mailtos://, line://, slack://, tgram://,
-- ntfy://, json:// ...). kind 'webpush': target is the browser's PushSubscription JSON.
CREATE TABLE person_channels (
    channel_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    person_id     text NOT NULL REFERENCES people ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('apprise', 'webpush')),
    target        text NOT NULL,
    label         text,
    position      smallint NOT NULL DEFAULT 0,    -- order of channels for this person (low first)
    enabled       boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (person_id, kind, target)
);

-- Per-person rules. Quiet hours hold back non-urgent notices only; welfare alerts are never muted.
CREATE TABLE person_alert_rules (
    person_id    text PRIMARY KEY REFERENCES people ON DELETE CASCADE,
    quiet_start  time,            -- local time in `timezone`; both NULL = no quiet hours
    quiet_end    time,
    timezone     text NOT NULL DEFAULT 'Asia/Tokyo',
    CHECK ((quiet_start IS NULL) = (quiet_end IS NULL))
);

-- The outbox. A row is written in the same transaction as the step that decided the send (unique
-- per incident + step + recipient + channel, so a replayed step cannot send twice), then a
-- delivery worker sends it holding the row lock and records the outcome.
CREATE TABLE alert_deliveries (
    delivery_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id      bigint NOT NULL REFERENCES incidents ON DELETE CASCADE,
    step_key         text NOT NULL,            -- e.g. 'r0.s2' (round 0, step 2), 'claimed', 'resolved'
    recipient        text NOT NULL,            -- person_id, or 'device:<device_id>' for a blink
    person_id        text REFERENCES people ON DELETE CASCADE,
    channel          text NOT NULL,            -- 'inapp', 'apprise:<channel_id>', 'webpush:<channel_id>', 'mqtt'
    channel_id       bigint REFERENCES person_channels ON DELETE SET NULL,
    notice           text NOT NULL,            -- alert, claimed, resolved, cancelled, unreachable, device_task, blink
    urgent           boolean NOT NULL,
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed', 'skipped')),
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,     -- engine clock
    next_attempt_at  timestamptz NOT NULL,     -- engine clock
    sent_at          timestamptz,              -- engine clock: accepted by the channel
    sent_real_at     timestamptz,              -- wall clock (benchmarks)
    last_error       text,
    UNIQUE (incident_id, step_key, recipient, channel)
);
CREATE INDEX alert_deliveries_pending_idx ON alert_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX alert_deliveries_person_idx ON alert_deliveries (person_id, incident_id);

-- In-app notifications (the app pushes them over Server-Sent Events; NOTIFY on insert).
CREATE TABLE notifications (
    notification_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    person_id        text NOT NULL REFERENCES people ON DELETE CASCADE,
    incident_id      bigint REFERENCES incidents ON DELETE CASCADE,
    notice           text NOT NULL,
    urgent           boolean NOT NULL,
    title            text NOT NULL,
    body             text NOT NULL,
    data             jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL,     -- engine clock
    created_real_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    read_at          timestamptz
);
CREATE INDEX notifications_person_idx ON notifications (person_id, notification_id DESC);

CREATE FUNCTION mimamori_notifications_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mimamori_notifications',
                      json_build_object('notification_id', NEW.notification_id, 'person_id', NEW.person_id)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER notifications_notify AFTER INSERT ON notifications
    FOR EACH ROW EXECUTE FUNCTION mimamori_notifications_notify();

-- The team timeline of an incident: comments and every action (the audit trail: who, when, what,
-- through which channel). actor NULL = the system.
CREATE TABLE incident_timeline (
    entry_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id  bigint NOT NULL REFERENCES incidents ON DELETE CASCADE,
    at           timestamptz NOT NULL,         -- engine clock
    actor        text REFERENCES people ON DELETE SET NULL,
    action       text NOT NULL,
    channel      text NOT NULL,                -- app, api, system, email, webpush, mqtt ...
    body         text,
    data         jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX incident_timeline_incident_idx ON incident_timeline (incident_id, entry_id);

-- Maintenance work for the coordinator (outcome device_problem, unreachable people ...).
CREATE TABLE device_tasks (
    task_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    household_id  text REFERENCES households ON DELETE CASCADE,
    area          text,
    incident_id   bigint REFERENCES incidents ON DELETE SET NULL,
    status        text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done')),
    note          text,
    opened_at     timestamptz NOT NULL,
    opened_by     text REFERENCES people ON DELETE SET NULL,
    closed_at     timestamptz
);
CREATE INDEX device_tasks_open_idx ON device_tasks (area, status);

-- Wake the alert workers as soon as an incident opens (they also poll).
CREATE FUNCTION mimamori_incident_opened_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'open' THEN
        PERFORM pg_notify('mimamori_incident_opened', NEW.incident_id::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER incidents_opened_notify AFTER INSERT ON incidents
    FOR EACH ROW EXECUTE FUNCTION mimamori_incident_opened_notify();

-- When someone else (the detector: activity resumed) closes an incident, make its escalation due
-- at once so a worker ends it and tells the people already alerted.
CREATE FUNCTION mimamori_incident_closed_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('resolved', 'cancelled') AND OLD.status IN ('open', 'claimed') THEN
        UPDATE alert_escalations SET next_step_at = timestamptz '2000-01-01 00:00:00+00'
         WHERE incident_id = NEW.incident_id AND status <> 'done';
        PERFORM pg_notify('mimamori_incident_opened', NEW.incident_id::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER incidents_closed_wake AFTER UPDATE OF status ON incidents
    FOR EACH ROW EXECUTE FUNCTION mimamori_incident_closed_wake();

-- Outcomes as labels for the detector: false positives (fine, false_alarm, resident responded)
-- and true positives (needed help, emergency services).
CREATE VIEW incident_labels AS
SELECT incident_id, household_id, kind, rule, score, evidence, opened_at, closed_at, outcome,
       CASE WHEN outcome IN ('fine', 'false_alarm', 'resident_responded') THEN 'false_positive'
            WHEN outcome IN ('needed_help', 'emergency_services') THEN 'true_positive' END AS label
FROM incidents
WHERE outcome IN ('fine', 'false_alarm', 'resident_responded', 'needed_help', 'emergency_services');
