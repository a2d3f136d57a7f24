-- The web app's live updates: one NOTIFY channel, `mimamori_app_live`, that the app's single
-- listener per process fans out to its Server-Sent-Events clients (each filtered by scope in the
-- app's service layer). Payloads carry ids only — never names, notes or contact details:
--   {"t":"incident","id":<incident_id>,"h":<household_id>,"a":<area>}
--   {"t":"timeline","id":<incident_id>}
--   {"t":"notification","p":<person_id>}        (in-app notification for that person)
--   {"t":"away","h":<household_id>}
--   {"t":"session","p":<person_id>}             (a session ended: streams re-check theirs)
-- Identical payloads inside one transaction are delivered once (PostgreSQL folds them).

CREATE FUNCTION mimamori_app_live_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
    payload jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_TABLE_NAME = 'incidents' THEN
        payload := jsonb_build_object('t', 'incident', 'id', r.incident_id, 'h', r.household_id, 'a', r.area);
    ELSIF TG_TABLE_NAME = 'incident_timeline' THEN
        payload := jsonb_build_object('t', 'timeline', 'id', r.incident_id);
    ELSIF TG_TABLE_NAME = 'notifications' THEN
        payload := jsonb_build_object('t', 'notification', 'p', r.person_id);
    ELSIF TG_TABLE_NAME = 'away_periods' THEN
        payload := jsonb_build_object('t', 'away', 'h', r.household_id);
    ELSIF TG_TABLE_NAME = 'sessions' THEN
        payload := jsonb_build_object('t', 'session', 'p', r.person_id);
    ELSE
        RETURN NULL;
    END IF;
    PERFORM pg_notify('mimamori_app_live', payload::text);
    RETURN NULL;
END $$;

CREATE TRIGGER incidents_app_live AFTER INSERT OR UPDATE OR DELETE ON incidents
    FOR EACH ROW EXECUTE FUNCTION mimamori_app_live_notify();
CREATE TRIGGER incident_timeline_app_live AFTER INSERT OR UPDATE OR DELETE ON incident_timeline
    FOR EACH ROW EXECUTE FUNCTION mimamori_app_live_notify();
CREATE TRIGGER notifications_app_live AFTER INSERT OR UPDATE OF read_at ON notifications
    FOR EACH ROW EXECUTE FUNCTION mimamori_app_live_notify();
CREATE TRIGGER away_periods_app_live AFTER INSERT OR UPDATE OR DELETE ON away_periods
    FOR EACH ROW EXECUTE FUNCTION mimamori_app_live_notify();
CREATE TRIGGER sessions_app_live AFTER DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION mimamori_app_live_notify();
