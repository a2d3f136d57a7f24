-- The daily "all fine" note (issue 16): opt-in per person and home, at an hour the person chooses, on
-- one of their channels (any kind: LINE, e-mail, the app). A weekly trend on a chosen weekday, or none.
CREATE TABLE daily_note_subscriptions (
    person_id       text NOT NULL REFERENCES people ON DELETE CASCADE,
    household_id    text NOT NULL REFERENCES households ON DELETE CASCADE,
    local_hour      smallint NOT NULL CHECK (local_hour BETWEEN 0 AND 23),
    weekly_isodow   smallint CHECK (weekly_isodow BETWEEN 1 AND 7),   -- 1 = Monday; NULL = no weekly note
    channel_id      bigint REFERENCES person_channels ON DELETE SET NULL, -- NULL = in the app only
    consented_at    timestamptz NOT NULL,                              -- when the person opted in
    last_daily_on   date,                                              -- the home's local date last sent
    last_weekly_on  date,
    PRIMARY KEY (person_id, household_id)
);
CREATE INDEX daily_note_subscriptions_household_idx ON daily_note_subscriptions (household_id);
