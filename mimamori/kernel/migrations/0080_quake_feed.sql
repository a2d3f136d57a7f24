-- Earthquakes start the safety check (issue 16, item 3). An area is a name today (households.area,
-- people.area of a coordinator); this gives an area the places bulletins name it by, a threshold
-- and a mode, and records what every bulletin did. safety/quake.py reads the bulletins.

-- How an area is found in bulletins. JMA 市町村等 codes (7 digits, VXSE53 City/Code) and names
-- (City/Name, which P2PQuake station names begin with); optionally its 細分区域 (codes and names)
-- so the first 震度速報, which names regions only, can act.
CREATE TABLE quake_areas (
    area                text PRIMARY KEY CHECK (length(area) BETWEEN 1 AND 200),
    municipality_codes  text[] NOT NULL DEFAULT '{}'
                        CHECK (array_position(municipality_codes, NULL) IS NULL),
    municipality_names  text[] NOT NULL DEFAULT '{}',
    region_codes        text[] NOT NULL DEFAULT '{}',
    region_names        text[] NOT NULL DEFAULT '{}',
    threshold           smallint NOT NULL DEFAULT 45        -- P2PQuake scale: 40=4, 45=5弱, 50=5強, 55=6弱, 60=6強, 70=7
                        CHECK (threshold IN (10, 20, 30, 40, 45, 50, 55, 60, 70)),
    mode                text NOT NULL DEFAULT 'start' CHECK (mode IN ('start', 'propose')),
    updated_at          timestamptz NOT NULL
);

-- Every document read (once: the id is the SHA-256 of its bytes, so a re-delivery is recognised).
CREATE TABLE quake_documents (
    document_id   text PRIMARY KEY,
    quake_id      text NOT NULL,                 -- jma:<EventID> / p2pquake:<origin time>
    source        text NOT NULL CHECK (source IN ('jma', 'p2pquake')),
    kind          text NOT NULL,                 -- VXSE51, VXSE53, ScalePrompt, DetailScale ...
    status        text NOT NULL CHECK (status IN ('real', 'drill', 'test')),
    info_type     text NOT NULL CHECK (info_type IN ('issued', 'corrected', 'cancelled')),
    issued_at     text NOT NULL,                 -- as the document states it
    max_scale     smallint,
    received_at   timestamptz NOT NULL
);
CREATE INDEX quake_documents_quake_idx ON quake_documents (quake_id, received_at);

-- What each document did, per area (area NULL: about the whole document, e.g. a drill), and why.
CREATE TABLE quake_decisions (
    decision_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id   text NOT NULL REFERENCES quake_documents ON DELETE CASCADE,
    quake_id      text NOT NULL,
    area          text,
    decision      text NOT NULL CHECK (decision IN ('start', 'propose', 'already', 'below', 'not_affected',
                                                    'drill', 'cancelled', 'stale', 'failed')),
    why           text NOT NULL,
    scale         smallint,
    matched       text[] NOT NULL DEFAULT '{}',
    check_id      bigint REFERENCES safety_checks ON DELETE SET NULL,
    decided_at    timestamptz NOT NULL
);
CREATE INDEX quake_decisions_document_idx ON quake_decisions (document_id, decision_id);

-- At most one action per quake and area over all its bulletins (repeated, corrected): the unique
-- key is the guarantee, also when two documents of one quake are read at the same time.
-- A proposal is what the coordinator of the area sees and may turn into a check.
CREATE TABLE quake_actions (
    quake_id      text NOT NULL,
    area          text NOT NULL,
    action        text NOT NULL CHECK (action IN ('start', 'propose')),
    document_id   text NOT NULL REFERENCES quake_documents ON DELETE CASCADE,
    scale         smallint,
    message       text NOT NULL,
    check_id      bigint REFERENCES safety_checks ON DELETE SET NULL,
    state         text NOT NULL CHECK (state IN ('started', 'open', 'accepted', 'dismissed', 'withdrawn')),
    created_at    timestamptz NOT NULL,
    decided_at    timestamptz,
    decided_by    text REFERENCES people ON DELETE SET NULL,
    PRIMARY KEY (quake_id, area)
);
CREATE INDEX quake_actions_open_idx ON quake_actions (area, created_at) WHERE state = 'open';
