-- Which homes ask their resident before their team (stages meet here, not in code):
-- households_resident_reachable: a resident of the home has a channel of their own (e-mail, push,
--   chat). The alert engine's default chain for such a home begins with a resident check.
-- households_asked_first: ... and the chain the home's alerts run (its own, or that default) begins
--   with a resident check that asks. The detector gives these homes a faster threshold: an alarm
--   reaches the resident first, who answers "fine" or "out" before the team hears of it.
CREATE VIEW households_resident_reachable AS
SELECT DISTINCT p.household_id
FROM people p JOIN person_channels c ON c.person_id = p.person_id AND c.enabled
WHERE p.role = 'resident' AND p.household_id IS NOT NULL;

CREATE VIEW households_asked_first AS
SELECT r.household_id
FROM households_resident_reachable r
LEFT JOIN escalation_chains e ON e.household_id = r.household_id
WHERE e.household_id IS NULL
   OR (e.steps->0->>'type' = 'resident_check' AND coalesce((e.steps->0->>'ask')::boolean, true));
