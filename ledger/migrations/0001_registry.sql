-- Registry (organizations, trade points, devices) and each device's session state.

CREATE TABLE organizations (
    id          bigserial PRIMARY KEY,
    iin         text NOT NULL UNIQUE CHECK (iin ~ '^[0-9]{12}$'),
    title       text NOT NULL CHECK (title <> ''),
    address     text NOT NULL DEFAULT '',
    address_kz  text NOT NULL DEFAULT '',
    oked        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE trade_points (
    id              bigserial PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id),
    title           text NOT NULL CHECK (title <> ''),
    address         text NOT NULL DEFAULT '',
    address_kz      text NOT NULL DEFAULT '',
    -- degrees times 1,000,000, as the device protocol carries them
    latitude        bigint NOT NULL DEFAULT 0 CHECK (latitude BETWEEN 0 AND 2147483647),
    longitude       bigint NOT NULL DEFAULT 0 CHECK (longitude BETWEEN 0 AND 2147483647),
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- System ids the OFD hands out when the operator does not choose one.
CREATE SEQUENCE device_system_id_seq START 100001 MAXVALUE 4294967295;

CREATE TABLE devices (
    system_id               bigint PRIMARY KEY CHECK (system_id BETWEEN 1 AND 4294967295),
    kgd_registration_number text NOT NULL UNIQUE CHECK (kgd_registration_number <> ''),
    serial_number           text NOT NULL,
    model                   text NOT NULL,
    year                    integer NOT NULL CHECK (year BETWEEN 1990 AND 2100),
    trade_point_id          bigint NOT NULL REFERENCES trade_points (id),
    status                  text NOT NULL DEFAULT 'awaiting_registration' CHECK (status IN (
        'awaiting_registration', 'registered', 'awaiting_deregistration', 'deregistered')),
    created_at              timestamptz NOT NULL DEFAULT now()
);

-- One row per device, changed only by conditional updates on `version`: a retry racing its
-- original on another gateway loses the update and is answered with the winner's response.
CREATE TABLE device_state (
    system_id            bigint PRIMARY KEY REFERENCES devices (system_id),
    version              bigint NOT NULL DEFAULT 0,
    token                bigint CHECK (token BETWEEN 0 AND 4294967295),
    last_request_number  integer,
    last_request_token   bigint,
    last_command         integer,
    -- the whole response frame, header included: a retry gets these bytes back
    last_response        bytea,
    shift_number         integer NOT NULL DEFAULT 0,
    shift_open           boolean NOT NULL DEFAULT false,
    last_document_shift  integer NOT NULL DEFAULT 0,
    last_document_number bigint NOT NULL DEFAULT 0,
    documents_accepted   bigint NOT NULL DEFAULT 0,
    protocol_version     integer,
    last_contact         timestamptz
);
