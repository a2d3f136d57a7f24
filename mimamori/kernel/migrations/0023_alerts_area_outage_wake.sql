-- Alerts: when an area outage opens, wake the running welfare escalations of that area so they pause
-- at once (the engine writes the timeline entry); when it closes, wake the ones it paused so they
-- resume without waiting for their next recheck.
CREATE FUNCTION mimamori_area_outage_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind = 'area_outage' AND NEW.area IS NOT NULL
       AND (TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status) THEN
        UPDATE alert_escalations e SET next_step_at = timestamptz '2000-01-01 00:00:00+00'
          FROM incidents i LEFT JOIN households h ON h.household_id = i.household_id
         WHERE e.incident_id = i.incident_id
           AND i.kind IN ('inactivity', 'long_on') AND i.status = 'open'
           AND coalesce(h.area, i.area) = NEW.area
           AND (e.status = 'running' OR (e.status = 'paused' AND e.state->>'paused_for' IS NOT NULL));
        PERFORM pg_notify('mimamori_incident_opened', NEW.incident_id::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER incidents_area_outage_wake AFTER INSERT OR UPDATE OF status ON incidents
    FOR EACH ROW EXECUTE FUNCTION mimamori_area_outage_wake();
