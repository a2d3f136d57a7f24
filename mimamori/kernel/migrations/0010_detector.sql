-- The detector's bookkeeping. Its model state is rebuilt from `events` on start (a restart
-- replays the recent history), and incidents are idempotent (one open per household and kind),
-- so this table only says how far it got and how long a tick took (for operators).
CREATE TABLE detector_runs (
    worker         text PRIMARY KEY,
    started_at     timestamptz NOT NULL,
    last_tick_at   timestamptz,
    events_cursor  timestamptz,            -- received_at of the newest event taken into the model
    households     integer,
    tick_ms        double precision,
    open_incidents integer,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
