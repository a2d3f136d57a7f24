-- LINE, both ways (issue 16). A person links their LINE account by sending the bot a one-time code
-- from the app; nothing else about them is asked or kept (not their LINE profile).
CREATE TABLE line_accounts (
    person_id     text PRIMARY KEY REFERENCES people ON DELETE CASCADE,
    line_user_id  text NOT NULL UNIQUE CHECK (line_user_id ~ '^U[0-9a-zA-Z_-]{1,64}$'),
    linked_at     timestamptz NOT NULL
);

-- One-time link codes: only their hash is kept, each is good for ten minutes and once.
CREATE TABLE line_link_codes (
    code_hash   bytea PRIMARY KEY,
    person_id   text NOT NULL REFERENCES people ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX line_link_codes_person_idx ON line_link_codes (person_id);

-- Wrong codes sent to the bot, per LINE user: guessing is throttled (a few tries an hour).
CREATE TABLE line_link_failures (
    line_user_id  text NOT NULL,
    at            timestamptz NOT NULL
);
CREATE INDEX line_link_failures_user_idx ON line_link_failures (line_user_id, at);

-- Webhook events acted on: a redelivery (deliveryContext.isRedelivery, the same webhookEventId) never
-- acts twice. Kept for a month, then swept.
CREATE TABLE line_webhook_events (
    webhook_event_id  text PRIMARY KEY CHECK (length(webhook_event_id) BETWEEN 1 AND 64),
    received_at       timestamptz NOT NULL,
    outcome           text
);
CREATE INDEX line_webhook_events_received_idx ON line_webhook_events (received_at);

-- Pushes counted per month against the channel's allowance (replies are free); `warned_at`: when a
-- coordinator was told the allowance is running out.
CREATE TABLE line_push_usage (
    month      date PRIMARY KEY,
    pushes     integer NOT NULL DEFAULT 0 CHECK (pushes >= 0),
    warned_at  timestamptz
);
