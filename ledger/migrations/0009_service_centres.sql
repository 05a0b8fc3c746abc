-- Service centres (ЦТО) in the cabinet (issue 13): a taxpayer grants another registered
-- organization, the centre that installs and services its registers, chosen sections
-- (ledger/cabinet_centres.GRANTABLE) on chosen registers. A stopped grant is kept for the
-- record; one grant per taxpayer and centre is active at a time.

CREATE TABLE cabinet_centre_grants (
    id              bigserial PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id),  -- the taxpayer
    centre_id       bigint NOT NULL REFERENCES organizations (id),
    sections        text[] NOT NULL CHECK (cardinality(sections) > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    changed_at      timestamptz NOT NULL DEFAULT now(),
    stopped_at      timestamptz,
    CHECK (centre_id <> organization_id)
);
CREATE UNIQUE INDEX cabinet_centre_grants_active
    ON cabinet_centre_grants (organization_id, centre_id) WHERE stopped_at IS NULL;
CREATE INDEX cabinet_centre_grants_centre
    ON cabinet_centre_grants (centre_id) WHERE stopped_at IS NULL;

CREATE TABLE cabinet_centre_grant_devices (
    grant_id  bigint NOT NULL REFERENCES cabinet_centre_grants (id) ON DELETE CASCADE,
    system_id bigint NOT NULL REFERENCES devices (system_id),
    PRIMARY KEY (grant_id, system_id)
);
CREATE INDEX cabinet_centre_grant_devices_device ON cabinet_centre_grant_devices (system_id);
