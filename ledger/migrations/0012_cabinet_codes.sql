-- One-time codes (issue 13): an act that a person confirms with a code sent to them over the
-- notification channel (the manual's SMS option): an organization's sign-up. The ticket, a
-- random value the browser carries between the two steps, is kept as its SHA-256; the code as
-- an HMAC keyed by the ticket, so a leaked table yields neither.
CREATE TABLE cabinet_codes (
    ticket_hash bytea PRIMARY KEY,
    purpose     text NOT NULL CHECK (purpose ~ '^[a-z_]{1,32}$'),
    code_mac    bytea NOT NULL,
    payload     jsonb NOT NULL,              -- what the act needs once confirmed
    attempts    integer NOT NULL DEFAULT 0,  -- wrong codes so far; at the limit the ticket goes
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX cabinet_codes_expiry ON cabinet_codes (expires_at);
