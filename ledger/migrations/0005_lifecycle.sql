-- The registration lifecycle beyond the status column: block with the OFD's message, the paid
-- subscription, when a trade point's coordinates last changed, and an audit log of the control
-- API (who did what to which device, and when).

ALTER TABLE devices
    ADD COLUMN blocked             boolean NOT NULL DEFAULT false,
    -- shown by the device with result BLOCKED (15); kept short: a till's screen is small
    ADD COLUMN block_message       text NOT NULL DEFAULT '' CHECK (length(block_message) <= 500),
    -- switched off: DISCONNECTED (19) in 2.0.4
    ADD COLUMN subscription_active boolean NOT NULL DEFAULT true;

-- Coordinates may change at most once a day; NULL: never changed since the point was added.
ALTER TABLE trade_points ADD COLUMN coordinates_changed_at timestamptz;

CREATE INDEX devices_by_point ON devices (trade_point_id);
CREATE INDEX devices_by_status ON devices (status);

CREATE TABLE control_audit (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL,
    system_id bigint,
    detail    jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX control_audit_device ON control_audit (system_id, at);

-- Callers of the control API: only a SHA-256 of each key is kept. An organization's key reaches
-- that organization's trade points; a service centre's key the devices granted to it, and only
-- the modules (groups of methods) it lists.
CREATE TABLE api_keys (
    id              bigserial PRIMARY KEY,
    key_hash        text NOT NULL UNIQUE,
    name            text NOT NULL CHECK (name <> ''),
    role            text NOT NULL CHECK (role IN ('operator', 'organization', 'service_centre')),
    organization_id bigint REFERENCES organizations (id),
    modules         text[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    CHECK ((role = 'organization') = (organization_id IS NOT NULL))
);

CREATE TABLE api_key_devices (
    key_id    bigint NOT NULL REFERENCES api_keys (id),
    system_id bigint NOT NULL REFERENCES devices (system_id),
    PRIMARY KEY (key_id, system_id)
);

-- Alerts the periodic scan raised (ingest/notifications.py): one row per raised condition, so
-- that it is published once (with several gateways, by the one whose insert wins) and raised
-- again only after it cleared.
CREATE TABLE device_alerts (
    system_id    bigint NOT NULL REFERENCES devices (system_id),
    kind         text NOT NULL CHECK (kind IN ('offline', 'shift_open')),
    shift_number integer NOT NULL DEFAULT 0,
    raised_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (system_id, kind)
);

-- The software the device last reported in SYSTEM (ingest/software.py), for its status.
ALTER TABLE device_state
    ADD COLUMN software text CHECK (length(software) <= 500);
