-- Which tenant user an address found (issue 15): the portal knows users by email, which for
-- many is not their user principal name, so an address is resolved once (UPN, then mail, then
-- proxy addresses) and the user's object id remembered here, shared by every replica. Later
-- reads go by id, which also survives a rename. A remembered id that the tenant no longer
-- knows is forgotten and the address searched again.
CREATE TABLE user_directory (
    -- Lower case: Graph compares addresses without regard to case.
    address     text PRIMARY KEY,
    user_id     uuid NOT NULL,
    matched_by  text NOT NULL CHECK (matched_by IN ('user_principal_name', 'mail', 'proxy_address')),
    resolved_at timestamptz NOT NULL DEFAULT now()
);

-- The licence this service last wrote for the user (as Graph's `addLicenses` entry) and when
-- Graph accepted it. A job that reads the user within the verify window and does not see it
-- is reading a replica that has not caught up: it re-reads rather than writing the same
-- change again (a ticket re-sent after the portal timed out, say).
-- `written_certain` is false for a write answered 5xx or timed out: it may or may not have
-- been applied, and is sent again once reads have not shown it for `engine.resend_after_ms`.
ALTER TABLE user_directory
    ADD COLUMN written_licence jsonb,
    ADD COLUMN written_at      timestamptz,
    ADD COLUMN written_certain boolean;

-- The Phone System groups this service found or made, by display name (lower case): a group
-- made moments ago is not yet visible to a search by display name (replication), and a
-- removal must still find it.
CREATE TABLE tenant_groups (
    display_name text PRIMARY KEY,
    group_id     uuid NOT NULL,
    found_at     timestamptz NOT NULL DEFAULT now()
);

-- A chunk handed back while writes it made replicate (`engine::kind::Defer`) may be claimed
-- again only after this time, on the database's clock (replication is real time, not the
-- scheduler's: off-peak windows and `not_before` follow the engine's clock).
ALTER TABLE job_chunks ADD COLUMN wait_until timestamptz;
