-- The web app: accounts, sessions, invitations, login attempts, household views,
-- and the optional private contact details of a household (shown to its team only).

CREATE TABLE accounts (
    person_id      text PRIMARY KEY REFERENCES people ON DELETE CASCADE,
    login          text NOT NULL UNIQUE CHECK (length(login) BETWEEN 3 AND 64),
    password_hash  text NOT NULL,
    created_at     timestamptz NOT NULL,
    password_changed_at timestamptz NOT NULL
);

-- A session cookie carries a random token; only its SHA-256 is stored. "Sign out everywhere"
-- deletes every row of the person.
CREATE TABLE sessions (
    token_hash    bytea PRIMARY KEY,
    person_id     text NOT NULL REFERENCES people ON DELETE CASCADE,
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    user_agent    text
);
CREATE INDEX sessions_person_idx ON sessions (person_id);

-- An invitation link (token shown once; its hash stored). A coordinator invites a watcher (optionally
-- onto a household's team) or a resident (of one household); an operator may invite a coordinator.
CREATE TABLE invitations (
    token_hash    bytea PRIMARY KEY,
    role          text NOT NULL CHECK (role IN ('operator', 'coordinator', 'watcher', 'resident')),
    display_name  text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    area          text,
    household_id  text REFERENCES households ON DELETE CASCADE,
    tier          smallint CHECK (tier BETWEEN 1 AND 9),
    relation      text,
    invited_by    text REFERENCES people ON DELETE SET NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz,
    used_by       text REFERENCES people ON DELETE SET NULL,
    CHECK (role <> 'resident' OR household_id IS NOT NULL)
);

CREATE TABLE login_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    login       text NOT NULL,
    client      text NOT NULL,
    at          timestamptz NOT NULL,
    succeeded   boolean NOT NULL
);
CREATE INDEX login_attempts_login_idx ON login_attempts (login, at);
CREATE INDEX login_attempts_client_idx ON login_attempts (client, at);

-- Every view of a household's data, for the resident's "who looked, and when".
CREATE TABLE household_views (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    household_id  text NOT NULL REFERENCES households ON DELETE CASCADE,
    person_id     text REFERENCES people ON DELETE SET NULL,
    viewer_name   text NOT NULL,
    viewer_role   text NOT NULL,
    what          text NOT NULL,   -- page, api, export_json, export_csv, incident ...
    viewed_at     timestamptz NOT NULL
);
CREATE INDEX household_views_household_idx ON household_views (household_id, viewed_at DESC);

-- Optional contact details; only a name is required for a household.
CREATE TABLE household_contacts (
    household_id  text PRIMARY KEY REFERENCES households ON DELETE CASCADE,
    address       text,
    phone         text,
    updated_at    timestamptz NOT NULL
);
-- (Web Push subscriptions are person_channels rows of kind 'webpush', owned by the alerts stage.)
