-- Issue 17: the view log recorded reads of one household, not lists (the households list, the
-- coordinator's overview, the safety board), which show every household's name and state. One function
-- that the app and the safety stage both call: each household shown is logged for the viewer, once per
-- (viewer, what) in ten minutes (a page that refreshes itself does not write a row a minute); residents
-- looking at their own household are not viewers.
CREATE FUNCTION log_household_views(p_person text, p_households text[], p_what text, p_at timestamptz)
RETURNS integer LANGUAGE sql AS $$
    WITH logged AS (
        INSERT INTO household_views (household_id, person_id, viewer_name, viewer_role, what, viewed_at)
        SELECT u.household_id, p.person_id, p.display_name, p.role, p_what, p_at
        FROM (SELECT DISTINCT unnest(p_households) AS household_id) u
        JOIN people p ON p.person_id = p_person
        JOIN households h ON h.household_id = u.household_id
        WHERE NOT (p.role = 'resident' AND p.household_id IS NOT DISTINCT FROM u.household_id)
          AND NOT EXISTS (SELECT 1 FROM household_views v
                          WHERE v.household_id = u.household_id AND v.person_id = p_person AND v.what = p_what
                            AND v.viewed_at > p_at - interval '10 minutes')
        RETURNING 1)
    SELECT count(*)::integer FROM logged
$$;
