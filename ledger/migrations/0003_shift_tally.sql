-- The OFD's own tally of each device's shift, and every closed shift with both Z reports.

-- ledger/tally_codec.py's bytes, rewritten with every accepted document; NULL until the first.
ALTER TABLE device_state
    ADD COLUMN current_tally   bytea,
    -- device-local time of the open shift's first document (also inside the tally): for people
    ADD COLUMN shift_opened_at timestamp;

-- One row per closed shift, written in the transaction that closes it. A mismatch between the
-- two reports is stored and flagged, never refused; a shift the device moved on from without
-- a CLOSE_SHIFT is stored with device_z NULL and says so in differences.
CREATE TABLE shift_reports (
    id               bigserial PRIMARY KEY,
    system_id        bigint NOT NULL REFERENCES devices (system_id),
    shift_number     integer NOT NULL,
    protocol_version integer NOT NULL,
    closed_at        timestamp,                       -- device-local, as the device stated it
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    is_offline       boolean NOT NULL,
    device_z         bytea,                           -- the device's ZXReport, as sent
    ofd_z            bytea NOT NULL,                  -- the OFD's ZXReport, as answered
    differences      jsonb NOT NULL CHECK (jsonb_typeof(differences) = 'array')
);
CREATE INDEX shift_reports_device ON shift_reports (system_id, shift_number);
CREATE INDEX shift_reports_mismatched ON shift_reports (recorded_at)
    WHERE differences <> '[]'::jsonb;
