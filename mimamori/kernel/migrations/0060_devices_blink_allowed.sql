-- May the service switch this device (blink it for a resident or safety check)? NULL: by kind, bulbs
-- yes, plugs no (a plug may power a heater or a fridge); a coordinator sets true for a plug with a
-- lamp on it, or false for a bulb that must be left alone. The gateway also refuses devices listed
-- with `mimamori gateway --never-switch`, whatever the service asks.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS blink_allowed boolean;
