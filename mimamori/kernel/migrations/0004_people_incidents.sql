-- People, the teams that watch each household, and incidents (shared by detector, alerts, app).
-- Privacy: a display name is the only required personal field.

CREATE TABLE people (
    person_id     text PRIMARY KEY,
    display_name  text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    role          text NOT NULL CHECK (role IN ('operator', 'coordinator', 'watcher', 'resident')),
    area          text,                                               -- a coordinator's area
    household_id  text REFERENCES households ON DELETE CASCADE,      -- a resident's own household
    locale        text NOT NULL DEFAULT 'ja' CHECK (locale IN ('ja', 'en')),
    phone         text,                                               -- optional, shown to the team only
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- The team of a household: who is alerted, in which tier (1 = first), and how they relate.
CREATE TABLE household_watchers (
    household_id  text NOT NULL REFERENCES households ON DELETE CASCADE,
    person_id     text NOT NULL REFERENCES people ON DELETE CASCADE,
    tier          smallint NOT NULL DEFAULT 1 CHECK (tier BETWEEN 1 AND 9),
    relation      text,   -- family, neighbour, minsei_iin (民生委員), chonaikai (町会長) ...
    added_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (household_id, person_id)
);
CREATE INDEX household_watchers_person_idx ON household_watchers (person_id);

-- Consent given at registration, with the version of the notice shown.
CREATE TABLE consents (
    household_id    text NOT NULL REFERENCES households ON DELETE CASCADE,
    given_by        text,                -- person_id, or NULL when recorded on paper by a coordinator
    notice_version  text NOT NULL,
    given_at        timestamptz NOT NULL DEFAULT now(),
    withdrawn_at    timestamptz,
    PRIMARY KEY (household_id, notice_version)
);

-- Away mode (trip, hospital): pauses welfare alerts until `until`.
CREATE TABLE away_periods (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    household_id  text NOT NULL REFERENCES households ON DELETE CASCADE,
    starts_at     timestamptz NOT NULL,
    until         timestamptz NOT NULL CHECK (until > starts_at),
    source        text NOT NULL CHECK (source IN ('resident', 'watcher', 'coordinator', 'inferred', 'alert_outcome')),
    set_by        text REFERENCES people ON DELETE SET NULL,
    note          text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX away_periods_household_idx ON away_periods (household_id, until);

-- An incident is unique per (household, kind) while open or claimed; re-detection updates it.
-- area_outage incidents belong to an area, not a household.
CREATE TABLE incidents (
    incident_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    household_id  text REFERENCES households ON DELETE CASCADE,
    area          text,
    kind          text NOT NULL CHECK (kind IN ('inactivity', 'long_on', 'device_offline', 'area_outage')),
    status        text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'claimed', 'resolved', 'cancelled')),
    opened_at     timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    claimed_at    timestamptz,
    claimed_by    text REFERENCES people ON DELETE SET NULL,
    closed_at     timestamptz,
    closed_by     text REFERENCES people ON DELETE SET NULL,
    outcome       text CHECK (outcome IN ('fine', 'needed_help', 'emergency_services', 'away', 'device_problem',
                                          'false_alarm', 'resident_responded', 'activity_resumed', 'auto_closed')),
    outcome_note  text,
    rule          text,                     -- which model or rule fired
    score         double precision,
    evidence      jsonb NOT NULL DEFAULT '{}'::jsonb,  -- silence start, expected activity, devices ...
    CHECK (household_id IS NOT NULL OR (kind = 'area_outage' AND area IS NOT NULL))
);
CREATE UNIQUE INDEX incidents_one_open_per_household_kind
    ON incidents (household_id, kind) WHERE status IN ('open', 'claimed') AND household_id IS NOT NULL;
CREATE UNIQUE INDEX incidents_one_open_area_outage
    ON incidents (area) WHERE status IN ('open', 'claimed') AND kind = 'area_outage';
CREATE INDEX incidents_status_idx ON incidents (status, opened_at);
