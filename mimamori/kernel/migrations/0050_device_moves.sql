-- Issue 17: a paired device is bound to its gateway; ingest never moves it (events another gateway
-- publishes for it are dead letters, reason 'foreign_device'). Moving it is a coordinator's act,
-- recorded here: who, when, from which gateway to which, and why.
CREATE TABLE device_moves (
    move_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL,
    actor         text REFERENCES people ON DELETE SET NULL,
    device_id     text NOT NULL,
    household_id  text,
    from_gateway  text,
    to_gateway    text NOT NULL,
    reason        text NOT NULL DEFAULT '' CHECK (length(reason) <= 500)
);
CREATE INDEX device_moves_device_idx ON device_moves (device_id, move_id);
CREATE INDEX device_moves_household_idx ON device_moves (household_id, move_id);
