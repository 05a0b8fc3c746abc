-- The cabinet (issue 13): its users, the groups that grant them sections and trade points, and
-- their sessions. Users belong to one organization; its main user manages the others.

CREATE TABLE cabinet_users (
    id              bigserial PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id),
    login           text NOT NULL UNIQUE CHECK (login ~ '^[A-Za-z0-9._@-]{3,64}$'),
    password_hash   text NOT NULL,           -- scrypt$n$r$p$salt_hex$hash_hex (ledger/operators)
    name            text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    email           text NOT NULL DEFAULT '' CHECK (length(email) <= 200),
    phone           text NOT NULL DEFAULT '' CHECK (length(phone) <= 50),
    position        text NOT NULL DEFAULT '' CHECK (length(position) <= 200),
    is_main         boolean NOT NULL DEFAULT false,
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- One main user per organization: the one who creates the others and their groups.
CREATE UNIQUE INDEX cabinet_users_main ON cabinet_users (organization_id) WHERE is_main;

-- A group grants sections (ledger/cabinet_users.SECTIONS) and trade points: all of the
-- organization's, or those listed in cabinet_group_points.
CREATE TABLE cabinet_groups (
    id              bigserial PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id),
    name            text NOT NULL CHECK (name <> '' AND length(name) <= 200),
    sections        text[] NOT NULL DEFAULT '{}',
    all_points      boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, name)
);

-- A deleted trade point leaves the groups that listed it (ledger.registry.delete_trade_point).
CREATE TABLE cabinet_group_points (
    group_id       bigint NOT NULL REFERENCES cabinet_groups (id) ON DELETE CASCADE,
    trade_point_id bigint NOT NULL REFERENCES trade_points (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, trade_point_id)
);

CREATE TABLE cabinet_user_groups (
    user_id  bigint NOT NULL REFERENCES cabinet_users (id) ON DELETE CASCADE,
    group_id bigint NOT NULL REFERENCES cabinet_groups (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, group_id)
);

-- Only a SHA-256 of the session cookie is kept: a leaked table opens no session.
CREATE TABLE cabinet_sessions (
    token_hash bytea PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES cabinet_users (id) ON DELETE CASCADE,
    csrf_token text NOT NULL,                -- every form of the session carries it
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL          -- the absolute end; idleness ends it sooner
);
CREATE INDEX cabinet_sessions_user ON cabinet_sessions (user_id);
CREATE INDEX cabinet_sessions_expiry ON cabinet_sessions (expires_at);
