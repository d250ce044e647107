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
