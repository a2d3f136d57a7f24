-- The detector's model state persists (issue 12): a start loads it and replays only newer events,
-- instead of replaying weeks of `events` on every start and every paired device.
--
-- One row per household: the household's slice of every per-household array of the model, packed
-- (`detector/checkpoint.py` says how), with the device layout it was learned with. Deleting a
-- household deletes what the detector learned about it.
CREATE TABLE detector_state (
    household_id text PRIMARY KEY REFERENCES households ON DELETE CASCADE,
    shard        text NOT NULL,          -- the checkpoint (and so the events cursor) this row goes with
    layout       text NOT NULL,          -- device ids and kinds by column, time zone: a change means a replay of this home
    state        bytea NOT NULL,
    saved_at     timestamptz NOT NULL DEFAULT now()
);

-- One row per detector shard: how far its saved state has seen the events, and the fleet-wide parts.
-- Written in the same transaction as the shard's `detector_state` rows, so the two always agree.
CREATE TABLE detector_checkpoints (
    shard          text PRIMARY KEY,     -- '0/1' = the whole fleet; 'i/n' = areas hashed to shard i of n
    format         text NOT NULL,        -- the model's array layout; another one means a full rebuild
    epoch          double precision NOT NULL,
    events_cursor  timestamptz,          -- received_at of the newest event in the saved state
    seen_recent    jsonb NOT NULL DEFAULT '[]',  -- (device_id, seq) already taken near the cursor
    health_cursor  timestamptz,
    last_prior_at  double precision,
    prior          bytea,
    households     integer NOT NULL,
    saved_at       timestamptz NOT NULL DEFAULT now()
);

-- The detector's tick reads events by arrival; without this index every tick scanned the table.
CREATE INDEX events_received_idx ON events (received_at);

ALTER TABLE detector_runs ADD COLUMN devices integer;
ALTER TABLE detector_runs ADD COLUMN shard text;

-- A detector wakes on these (LISTEN mimamori_fleet) and updates its model in place: a paired device
-- is scored at the next tick, not after a rebuild. Only changes the model's layout depends on.
CREATE FUNCTION notify_fleet_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mimamori_fleet', TG_TABLE_NAME);
    RETURN NULL;  -- an AFTER trigger's result is ignored
END $$;
-- Row triggers with conditions: the ingest upserts devices and gateways on every batch, and those
-- touch nothing the model depends on (pg_notify folds equal notifications of one transaction).
CREATE TRIGGER households_fleet_added AFTER INSERT OR DELETE ON households
    FOR EACH ROW EXECUTE FUNCTION notify_fleet_changed();
CREATE TRIGGER households_fleet_changed AFTER UPDATE OF area, timezone ON households
    FOR EACH ROW WHEN (OLD.area IS DISTINCT FROM NEW.area OR OLD.timezone IS DISTINCT FROM NEW.timezone)
    EXECUTE FUNCTION notify_fleet_changed();
CREATE TRIGGER devices_fleet_added AFTER INSERT ON devices
    FOR EACH ROW WHEN (NEW.household_id IS NOT NULL) EXECUTE FUNCTION notify_fleet_changed();
CREATE TRIGGER devices_fleet_removed AFTER DELETE ON devices
    FOR EACH ROW WHEN (OLD.household_id IS NOT NULL) EXECUTE FUNCTION notify_fleet_changed();
CREATE TRIGGER devices_fleet_changed AFTER UPDATE OF household_id, kind ON devices
    FOR EACH ROW WHEN (OLD.household_id IS DISTINCT FROM NEW.household_id OR OLD.kind IS DISTINCT FROM NEW.kind)
    EXECUTE FUNCTION notify_fleet_changed();
CREATE TRIGGER gateways_fleet_added AFTER INSERT ON gateways
    FOR EACH ROW WHEN (NEW.household_id IS NOT NULL) EXECUTE FUNCTION notify_fleet_changed();
CREATE TRIGGER gateways_fleet_removed AFTER DELETE ON gateways
    FOR EACH ROW WHEN (OLD.household_id IS NOT NULL) EXECUTE FUNCTION notify_fleet_changed();
CREATE TRIGGER gateways_fleet_changed AFTER UPDATE OF household_id ON gateways
    FOR EACH ROW WHEN (OLD.household_id IS DISTINCT FROM NEW.household_id) EXECUTE FUNCTION notify_fleet_changed();
