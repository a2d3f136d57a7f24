-- A linked LINE account is one of the person's channels (kind 'line', target: their LINE user id), so
-- alerts, resident checks and safety checks reach it in the person's own channel order.
ALTER TABLE person_channels DROP CONSTRAINT person_channels_kind_check;
ALTER TABLE person_channels ADD CONSTRAINT person_channels_kind_check
    CHECK (kind IN ('apprise', 'webpush', 'email', 'line'));
