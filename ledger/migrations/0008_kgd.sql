-- The tax authority (KGD): registration applications and the forwarder's positions.

-- An application to the KGD (ledger/kgd/applications.py): filed in the transaction that adds,
-- deregisters or re-registers a device, then sent and watched by the application worker until
-- the KGD decides. `application_id` is the idempotency key the KGD deduplicates on: a resend
-- after a lost answer is the same application. `payload` is what was filed (organization, trade
-- point with coordinates, serial, model, year), as it stood then.
CREATE TABLE kgd_applications (
    id              bigserial PRIMARY KEY,
    application_id  text NOT NULL UNIQUE DEFAULT gen_random_uuid()::text,
    system_id       bigint NOT NULL REFERENCES devices (system_id),
    kind            text NOT NULL
        CHECK (kind IN ('registration', 'deregistration', 'reregistration')),
    -- pending: not yet taken by the KGD; sent: the KGD has it and has not decided;
    -- accepted / refused: the KGD's decision; overridden: an operator moved the device first.
    status          text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sent', 'accepted', 'refused', 'overridden')),
    payload         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text NOT NULL DEFAULT '',
    reason          text NOT NULL DEFAULT '',  -- the KGD's reason for a refusal
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    decided_at      timestamptz
);
CREATE INDEX kgd_applications_due ON kgd_applications (next_attempt_at)
    WHERE status IN ('pending', 'sent');
CREATE INDEX kgd_applications_device ON kgd_applications (system_id, id);

-- The forwarder's durable position in each journal source (a gateway's local journal, a Kafka
-- partition), moved only after the KGD acknowledged everything before it, and what `ofd kgd
-- status` shows of it.
CREATE TABLE kgd_positions (
    source        text PRIMARY KEY,
    position      bigint NOT NULL DEFAULT 0 CHECK (position >= 0),
    forwarded     bigint NOT NULL DEFAULT 0,  -- documents the KGD acknowledged from it
    -- the gateway's receive time of the oldest document not yet acknowledged; NULL: none seen
    oldest_unforwarded_at timestamptz,
    backlog       bigint NOT NULL DEFAULT 0,
    backlog_unit  text NOT NULL DEFAULT 'records' CHECK (backlog_unit IN ('records', 'bytes')),
    last_error    text NOT NULL DEFAULT '',
    last_error_at timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
