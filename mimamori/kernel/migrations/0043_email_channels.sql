-- A person's e-mail address as a channel of its own (kind 'email', target = the address): the
-- operator's mail server (MIMAMORI_ALERTS_SMTP_URL, an Apprise mailto:// URL without a recipient)
-- sends to it, so a volunteer types an address, never a server URL with a password in it.
ALTER TABLE person_channels DROP CONSTRAINT person_channels_kind_check;
ALTER TABLE person_channels ADD CONSTRAINT person_channels_kind_check CHECK (kind IN ('apprise', 'webpush', 'email'));
