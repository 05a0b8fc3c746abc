-- Offline windows and offline receipts; per-organization catalogue (NOMENCLATURE) and
-- operators (AUTH); payment QRs (2.0.4 QR_GENERATE / QR_GET_STATUS).

-- The device's open offline window, device-local like every protocol time: from the first
-- moment it says (or its documents show) it was offline to the latest. NULL: no open window.
-- Written only when it changes (ledger/offline.py), never by the per-request batch update.
ALTER TABLE device_state
    ADD COLUMN offline_since       timestamp,
    ADD COLUMN offline_until       timestamp,
    ADD COLUMN offline_reported_at timestamptz;
CREATE INDEX device_state_offline ON device_state (offline_since)
    WHERE offline_since IS NOT NULL;

-- Every offline receipt accepted, by the number the device gave it: a second, different
-- document under the same number is refused, an identical one is the same document.
CREATE TABLE offline_tickets (
    system_id       bigint NOT NULL REFERENCES devices (system_id),
    offline_number  bigint NOT NULL CHECK (offline_number BETWEEN 1 AND 4294967295),
    document_id     text NOT NULL,
    fiscal_sign     text NOT NULL,
    digest          bytea NOT NULL,          -- BLAKE2b of the ticket's deterministic bytes
    shift_number    integer NOT NULL,
    made_at         timestamp NOT NULL,      -- device-local, as the receipt states it
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (system_id, offline_number)
);

-- A catalogue version is published whole; devices fetch the latest one.
CREATE TABLE nomenclature_versions (
    organization_id bigint NOT NULL REFERENCES organizations (id),
    version         integer NOT NULL CHECK (version BETWEEN 1 AND 2147483647),
    created_at      timestamp NOT NULL,      -- device-local (UTC+5), as the answer carries it
    PRIMARY KEY (organization_id, version)
);

CREATE TABLE nomenclature_elements (
    organization_id   bigint NOT NULL,
    version           integer NOT NULL,
    id                bigint NOT NULL CHECK (id >= 0),
    is_item           boolean NOT NULL,
    title             text NOT NULL CHECK (title <> ''),
    title_kk          text NOT NULL DEFAULT '',
    parent_group_id   bigint,
    article           text NOT NULL DEFAULT '',
    barcode           text NOT NULL DEFAULT '',
    description       text NOT NULL DEFAULT '',
    sell_price        bigint CHECK (sell_price >= 0),      -- tiyn
    measure_unit_code text NOT NULL DEFAULT '',
    ntin              text NOT NULL DEFAULT '',
    vat_percent       integer CHECK (vat_percent BETWEEN 0 AND 10000),
    PRIMARY KEY (organization_id, version, id),
    FOREIGN KEY (organization_id, version) REFERENCES nomenclature_versions
);
CREATE INDEX nomenclature_elements_barcode
    ON nomenclature_elements (organization_id, version, barcode) WHERE barcode <> '';

-- Operators who log in at an organization's devices (AUTH). Passwords: scrypt, salted.
CREATE TABLE operators (
    organization_id bigint NOT NULL REFERENCES organizations (id),
    login           text NOT NULL CHECK (login <> ''),
    code            integer NOT NULL CHECK (code BETWEEN 0 AND 2147483647),
    name            text NOT NULL DEFAULT '',
    roles           smallint[] NOT NULL CHECK (roles <@ ARRAY[1, 2, 3]::smallint[]),
    password_hash   text NOT NULL,           -- scrypt$n$r$p$salt_hex$hash_hex
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, login),
    UNIQUE (organization_id, code)
);

-- Payment QRs a 2.0.4 device asked for, one per invoice of that device.
CREATE TABLE qr_payments (
    system_id   bigint NOT NULL REFERENCES devices (system_id),
    invoice_id  bigint NOT NULL CHECK (invoice_id >= 0),
    amount      bigint CHECK (amount >= 0),     -- tiyn; NULL: the device gave none
    qr_code     text NOT NULL,
    status      smallint NOT NULL DEFAULT 0 CHECK (status BETWEEN 0 AND 6),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (system_id, invoice_id)
);
