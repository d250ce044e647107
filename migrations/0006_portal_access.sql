-- Portal access (issue 7): contacts of the batches granted so far, and coded skipped items.

-- A skipped item may now carry its reason as a code (a portal exclusion such as
-- `missing_email`, a policy item `superseded`), so that job.completed lists it in `failures`.
-- A failed item still must have one; only failed and skipped items may have one.
ALTER TABLE job_items DROP CONSTRAINT job_items_check;
ALTER TABLE job_items
    ADD CONSTRAINT job_items_failed_has_code
        CHECK (outcome <> 'failed' OR failure_code IS NOT NULL),
    ADD CONSTRAINT job_items_code_only_when_failed_or_skipped
        CHECK (failure_code IS NULL OR outcome IN ('failed', 'skipped'));

-- Every contact of every `portal_access.grant` batch (not dry runs), as the portal last sent
-- it, with what the reconciler did about it. A later batch updates the contact's data and
-- keeps its invitation and activation state.
CREATE TABLE portal_contacts (
    contact_id           text PRIMARY KEY,
    name                 text NOT NULL,
    kind                 text NOT NULL CHECK (kind IN ('individual', 'organisation')),
    -- Lower-cased (the contract compares emails case-insensitively); NULL when missing.
    email                text,
    council              text NOT NULL,
    member               boolean NOT NULL,
    clerk_until          date,
    -- The portal's own flag (for example a pilot scheme gave access outside this service).
    has_portal_access    boolean NOT NULL DEFAULT false,
    invited_at           timestamptz,
    invited_by_job       uuid REFERENCES jobs (id),
    -- Where the invitation went (reminders go there too), and in which batch.
    invited_email        text,
    invited_batch        text,
    activated_at         timestamptz,
    activated_by_job     uuid REFERENCES jobs (id),
    last_reminded_at     timestamptz,
    last_reminded_by_job uuid REFERENCES jobs (id),
    reminders_sent       integer NOT NULL DEFAULT 0,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    updated_by_job       uuid REFERENCES jobs (id),
    CHECK ((invited_at IS NULL) = (invited_email IS NULL))
);

-- Duplicate-email checks against contacts of earlier batches.
CREATE INDEX portal_contacts_email ON portal_contacts (lower(email)) WHERE email IS NOT NULL;
-- `portal_access.remind` with an empty list: everyone invited and not yet activated.
CREATE INDEX portal_contacts_pending ON portal_contacts (contact_id)
    WHERE invited_at IS NOT NULL AND activated_at IS NULL;
