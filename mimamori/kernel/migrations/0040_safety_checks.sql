-- The area safety check (安否確認): a coordinator asks every home of an area (or a list of homes)
-- "are you safe?"; each home answers by a double toggle of a bulb, a signed single-use link, a
-- button in the app, or a team member on its behalf. All times are the service clock's.

-- A safety check's team work (claim "I'll go", timeline) reuses the alert engine's incidents.
ALTER TABLE incidents DROP CONSTRAINT incidents_kind_check;
ALTER TABLE incidents ADD CONSTRAINT incidents_kind_check
    CHECK (kind IN ('inactivity', 'long_on', 'device_offline', 'area_outage', 'safety_check'));

CREATE TABLE safety_checks (
    check_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    area        text,                   -- NULL: a list of households
    message     text NOT NULL CHECK (length(message) BETWEEN 1 AND 1000),
    started_by  text REFERENCES people ON DELETE SET NULL,
    started_at  timestamptz NOT NULL,
    closed_at   timestamptz,
    closed_by   text REFERENCES people ON DELETE SET NULL
);
CREATE INDEX safety_checks_open_idx ON safety_checks (started_at) WHERE closed_at IS NULL;

-- One row per household asked. `state` is what the household (or someone for it) answered;
-- "unreachable" (every gateway of the home offline) is derived when read, so a home that comes
-- back online and answers is shown as it answered.
CREATE TABLE safety_answers (
    check_id          bigint NOT NULL REFERENCES safety_checks ON DELETE CASCADE,
    household_id      text NOT NULL REFERENCES households ON DELETE CASCADE,
    state             text NOT NULL DEFAULT 'no_answer'
                      CHECK (state IN ('no_answer', 'sign_of_life', 'safe', 'needs_help')),
    how               text CHECK (how IN ('double_toggle', 'link', 'app', 'on_behalf', 'activity')),
    answered_at       timestamptz,
    answered_by       text REFERENCES people ON DELETE SET NULL,   -- app / on-behalf answers
    note              text,
    device_id         text,                                         -- the bulb of a double toggle
    last_activity_at  timestamptz,                                  -- newest resident activity since the start
    incident_id       bigint REFERENCES incidents ON DELETE SET NULL, -- team claim and timeline
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (check_id, household_id)
);
CREATE INDEX safety_answers_household_idx ON safety_answers (household_id);

-- Single-use answer links: the signed token carries (check, household, nonce); only the nonce's
-- SHA-256 is stored, and it is consumed in the transaction that records the answer.
CREATE TABLE safety_links (
    nonce_hash    bytea PRIMARY KEY,
    check_id      bigint NOT NULL REFERENCES safety_checks ON DELETE CASCADE,
    household_id  text NOT NULL REFERENCES households ON DELETE CASCADE,
    person_id     text REFERENCES people ON DELETE SET NULL,   -- whom it was sent to
    created_at    timestamptz NOT NULL,
    used_at       timestamptz,
    used_answer   text
);
CREATE INDEX safety_links_check_idx ON safety_links (check_id, household_id);

-- Whether a household's resident lives alone (ordering by risk). No row: lives alone (the people
-- this service watches over mostly do).
CREATE TABLE safety_household_profiles (
    household_id  text PRIMARY KEY REFERENCES households ON DELETE CASCADE,
    lives_alone   boolean NOT NULL DEFAULT true,
    updated_at    timestamptz NOT NULL
);

-- The outbox of a check: blinks (MQTT) and messages (Apprise, Web Push). In-app messages are
-- written to `notifications` directly. Unique per check + recipient + channel: a replay cannot
-- send twice. Sent by the safety worker, throttled per channel kind.
CREATE TABLE safety_deliveries (
    delivery_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    check_id         bigint NOT NULL REFERENCES safety_checks ON DELETE CASCADE,
    recipient        text NOT NULL,        -- person_id, or 'device:<device_id>'
    person_id        text REFERENCES people ON DELETE CASCADE,
    channel          text NOT NULL,        -- 'mqtt', 'apprise:<channel_id>', 'webpush:<channel_id>'
    channel_id       bigint REFERENCES person_channels ON DELETE SET NULL,
    throttle_key     text NOT NULL,        -- mqtt, email, line, slack, webpush ... (rate limits)
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed', 'skipped')),
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    next_attempt_at  timestamptz NOT NULL,
    sent_at          timestamptz,
    last_error       text,
    UNIQUE (check_id, recipient, channel)
);
CREATE INDEX safety_deliveries_pending_idx ON safety_deliveries (next_attempt_at) WHERE status = 'pending';

-- Who did what (start, answers, links, claims, close, export).
CREATE TABLE safety_audit (
    entry_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    check_id      bigint NOT NULL REFERENCES safety_checks ON DELETE CASCADE,
    household_id  text REFERENCES households ON DELETE CASCADE,
    at            timestamptz NOT NULL,
    actor         text REFERENCES people ON DELETE SET NULL,   -- NULL: the system or a no-login link
    action        text NOT NULL,
    channel       text NOT NULL,                               -- app, api, link, mqtt, system
    data          jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX safety_audit_check_idx ON safety_audit (check_id, entry_id);

-- Wake the safety worker when a check starts (it also polls).
CREATE FUNCTION mimamori_safety_started_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mimamori_safety', NEW.check_id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER safety_checks_started_notify AFTER INSERT ON safety_checks
    FOR EACH ROW EXECUTE FUNCTION mimamori_safety_started_notify();
