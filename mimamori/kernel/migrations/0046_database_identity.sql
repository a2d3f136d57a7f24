-- Who this database is: a random id made once, when the schema is created. The ingest's broker
-- session is named after it (with the database's oid, which tells apart databases cloned from one
-- template), so messages a broker queued for one database never land in another one.
CREATE TABLE database_identity (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    identity   uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO database_identity DEFAULT VALUES;
