-- mimamori:requires-extension timescaledb
-- With TimescaleDB: events becomes a hypertable with compression and retention.
CREATE EXTENSION IF NOT EXISTS timescaledb;
SELECT create_hypertable('events', by_range('time', INTERVAL '1 day'), migrate_data => true);
ALTER TABLE events SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'time DESC, seq DESC'
);
SELECT add_compression_policy('events', INTERVAL '7 days');
SELECT add_retention_policy('events', INTERVAL '400 days');
