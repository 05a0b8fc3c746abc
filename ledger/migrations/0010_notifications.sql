-- The cabinet's notifications and the registers' subscription terms (issue 13).

-- A subscription's term: paid through `paid_until` (a date in Kazakhstan), then renewed by
-- `period_months` when `auto_renew`, else switched off (ledger/subscriptions.py). NULL: no
-- term, the subscription is the operator's switch alone, as before this migration.
ALTER TABLE devices
    ADD COLUMN paid_until    date,
    ADD COLUMN auto_renew    boolean NOT NULL DEFAULT false,
    ADD COLUMN period_months integer NOT NULL DEFAULT 12 CHECK (period_months BETWEEN 1 AND 120);
CREATE INDEX devices_paid_until ON devices (paid_until) WHERE paid_until IS NOT NULL;

-- What an organization is told (ledger/notices.py), about one of its registers or about it
-- as a whole. `once_key` names the event a notice is for, so that a scan repeated (or run by
-- several gateways) writes it once; NULL for events that happen once by themselves.
CREATE TABLE cabinet_notices (
    id              bigserial PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id),
    system_id       bigint REFERENCES devices (system_id),
    kind            text NOT NULL CHECK (kind IN (
        'offline', 'z_mismatch', 'blocked', 'unblocked', 'kgd_refused',
        'subscription_ending', 'subscription_lapsed', 'subscription_renewed', 'announcement')),
    text            text NOT NULL DEFAULT '' CHECK (length(text) <= 2000),
    once_key        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, once_key)
);
CREATE INDEX cabinet_notices_organization ON cabinet_notices (organization_id, id);
CREATE INDEX cabinet_notices_time ON cabinet_notices (organization_id, created_at);

-- A user has read every notice up to `notices_read_through` ("mark all read") and those
-- marked one by one above it.
ALTER TABLE cabinet_users ADD COLUMN notices_read_through bigint NOT NULL DEFAULT 0;
CREATE TABLE cabinet_notice_reads (
    user_id   bigint NOT NULL REFERENCES cabinet_users (id) ON DELETE CASCADE,
    notice_id bigint NOT NULL REFERENCES cabinet_notices (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, notice_id)
);
