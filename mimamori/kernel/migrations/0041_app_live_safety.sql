-- The web app's live updates for the safety check's board (安否確認): an answer (or the worker's
-- recognition) and a home gateway's status change NOTIFY the app's channel `mimamori_app_live`
-- (0031), ids only — never names, notes or contact details:
--   {"t":"safety","c":<check_id>,"h":<household_id>}   (safety_answers row written)
--   {"t":"gateway","h":<household_id>}                  (a home gateway went online/offline)
-- A claim ("I'll go") is an incident of kind safety_check: 0031's incident trigger covers it.
-- Numbered after 0040 because it needs the safety tables (a 0033–0039 file would run before them).

CREATE FUNCTION mimamori_app_live_safety_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'safety_answers' THEN
        PERFORM pg_notify('mimamori_app_live',
                          jsonb_build_object('t', 'safety', 'c', NEW.check_id, 'h', NEW.household_id)::text);
    ELSIF TG_TABLE_NAME = 'gateways' AND NEW.household_id IS NOT NULL THEN
        PERFORM pg_notify('mimamori_app_live', jsonb_build_object('t', 'gateway', 'h', NEW.household_id)::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER safety_answers_app_live AFTER INSERT OR UPDATE ON safety_answers
    FOR EACH ROW EXECUTE FUNCTION mimamori_app_live_safety_notify();
-- Only a status change: heartbeats update last_seen_at all the time and must stay silent.
CREATE TRIGGER gateways_status_app_live AFTER UPDATE OF status, household_id ON gateways
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.household_id IS DISTINCT FROM NEW.household_id)
    EXECUTE FUNCTION mimamori_app_live_safety_notify();
CREATE TRIGGER gateways_insert_app_live AFTER INSERT ON gateways
    FOR EACH ROW EXECUTE FUNCTION mimamori_app_live_safety_notify();
