-- CSRF tokens are now signed with the service secret and bound to the session (app.auth.csrf):
-- nothing to store per session.
ALTER TABLE sessions DROP COLUMN csrf_token;

-- A view of a household's data may carry why it was made (e.g. an export for the resident's request).
ALTER TABLE household_views ADD COLUMN purpose text;
