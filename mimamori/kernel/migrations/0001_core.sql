-- Core schema: who is watched, which devices they have, what those devices reported.
-- Only a name is required for a household (privacy: collect only what is needed).

CREATE TABLE households (
    household_id  text PRIMARY KEY,
    display_name  text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    area          text,
    timezone      text NOT NULL DEFAULT 'Asia/Tokyo',
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gateways (
    gateway_id         text PRIMARY KEY,
    household_id       text REFERENCES households ON DELETE SET NULL,  -- NULL: an area gateway
    area               text,
    status             text NOT NULL DEFAULT 'unknown' CHECK (status IN ('unknown', 'online', 'offline')),
    status_changed_at  timestamptz,
    last_seen_at       timestamptz,
    last_heartbeat     jsonb,
    created_at         timestamptz NOT NULL DEFAULT now()
);

-- A device that sends events before anyone registered it is recorded with household_id NULL
-- (and kind NULL): the coordinator pairs it later; its events are kept meanwhile.
CREATE TABLE devices (
    device_id      text PRIMARY KEY,
    gateway_id     text REFERENCES gateways ON DELETE SET NULL,
    household_id   text REFERENCES households ON DELETE SET NULL,
    kind           text CHECK (kind IN ('bulb', 'motion', 'door', 'plug')),
    room           text,
    first_seen_at  timestamptz,
    paired_at      timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_household_idx ON devices (household_id);
CREATE INDEX devices_unpaired_idx ON devices (first_seen_at) WHERE household_id IS NULL;

-- One row per accepted event (resident activity, boots and faults; heartbeats only touch
-- device_state). (device_id, seq) identifies an event; the key also holds `time` because a
-- TimescaleDB hypertable requires the partitioning column in every unique index. Gateways keep an
-- event's device time with it through retries and resends, so a re-delivery hits this key.
CREATE TABLE events (
    time          timestamptz NOT NULL,
    household_id  text,
    device_id     text NOT NULL,
    seq           bigint NOT NULL CHECK (seq >= 0),
    kind          text NOT NULL CHECK (kind IN ('on', 'off', 'motion', 'open', 'close', 'boot', 'fault')),
    value         double precision,
    received_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_identity UNIQUE (device_id, seq, time)
);
CREATE INDEX events_household_time_idx ON events (household_id, time DESC);
CREATE INDEX events_time_brin ON events USING brin (time);

-- Current state of each device, for device health and long-on detection.
CREATE TABLE device_state (
    device_id          text PRIMARY KEY REFERENCES devices ON DELETE CASCADE,
    last_seen_at       timestamptz,   -- device time of the newest message of any kind
    last_activity_at   timestamptz,   -- device time of the newest resident activity
    last_heartbeat_at  timestamptz,
    power              text CHECK (power IN ('on', 'off')),
    power_since        timestamptz,   -- device time of the switch that set `power`
    max_seq            bigint,        -- highest seq stored
    reported_seq       bigint,        -- highest seq the device said it has used (heartbeats)
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Anything that could not be accepted, kept whole with the reason.
CREATE TABLE dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    topic        text NOT NULL,
    payload      bytea NOT NULL,
    reason       text NOT NULL,
    detail       text
);
CREATE INDEX dead_letters_received_idx ON dead_letters (received_at);
CREATE INDEX dead_letters_reason_idx ON dead_letters (reason);

-- Resident activity per household per 15 minutes. A plain view here; with TimescaleDB a
-- continuous aggregate of the same name and columns replaces it (0003).
CREATE VIEW activity_15m AS
SELECT household_id,
       date_bin('15 minutes', time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       count(*) AS events
FROM events
WHERE kind IN ('on', 'off', 'motion', 'open', 'close') AND household_id IS NOT NULL
GROUP BY household_id, bucket;
