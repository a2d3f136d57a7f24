-- A resident check asks the resident first: each resident of the household gets a message with a
-- single-use link of their own (no login): "fine", "out until <date>", or "please help".
-- Only a hash of the link's random token is stored, so this table cannot be used to answer.
CREATE TABLE resident_check_links (
    token_hash    bytea PRIMARY KEY,
    incident_id   bigint NOT NULL REFERENCES incidents ON DELETE CASCADE,
    household_id  text NOT NULL REFERENCES households ON DELETE CASCADE,
    person_id     text REFERENCES people ON DELETE SET NULL,   -- whom it was sent to
    step_key      text NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL CHECK (expires_at > created_at),
    used_at       timestamptz,
    answer        text CHECK (answer IN ('fine', 'away', 'help')),
    away_until    timestamptz,
    CHECK ((used_at IS NULL) = (answer IS NULL)),
    UNIQUE (incident_id, step_key, person_id)
);
CREATE INDEX resident_check_links_help_idx ON resident_check_links (incident_id, used_at) WHERE answer = 'help';
