-- The engine: desired state (policies, membership) and planned work (items in leased chunks).

-- A user policy's current definition: the highest version seen.
CREATE TABLE policies (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    ods_code    text NOT NULL,
    version     bigint NOT NULL,
    licence     text NOT NULL,
    -- Service plan name -> enabled; an allow-list (a plan not set true is disabled).
    toggles     jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  uuid REFERENCES jobs (id)
);

-- A user belongs to at most one policy: the email is the key.
CREATE TABLE policy_members (
    email      text PRIMARY KEY,
    policy_id  text NOT NULL REFERENCES policies (id),
    added_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX policy_members_policy ON policy_members (policy_id);

ALTER TABLE jobs
    -- Not planned before this time (a members_added waiting for its policy).
    ADD COLUMN plan_not_before timestamptz NOT NULL DEFAULT now(),
    -- What the planner decided, for the applier and for operators (kind-specific JSON).
    ADD COLUMN plan           jsonb,
    -- What the job is about, as reported in its events.
    ADD COLUMN subject        jsonb,
    ADD COLUMN total_items    bigint,
    ADD COLUMN schedule       text CHECK (schedule IN ('immediate', 'off_peak')),
    ADD COLUMN earliest_start timestamptz,
    ADD COLUMN accepted_at    timestamptz,
    ADD COLUMN started_at     timestamptz,
    ADD COLUMN counts         jsonb;

CREATE INDEX jobs_to_plan ON jobs (plan_not_before) WHERE state = 'received';

-- Chunks: the unit a worker claims with a lease.
CREATE TABLE job_chunks (
    job_id           uuid NOT NULL REFERENCES jobs (id),
    chunk            integer NOT NULL,
    state            text NOT NULL CHECK (state IN ('pending', 'running', 'done')),
    not_before       timestamptz NOT NULL,
    lease_owner      text,
    lease_expires_at timestamptz,
    claims           integer NOT NULL DEFAULT 0,
    finished_at      timestamptz,
    PRIMARY KEY (job_id, chunk)
);
CREATE INDEX job_chunks_claimable ON job_chunks (not_before) WHERE state <> 'done';

-- Items: one unit of desired state each (a user, for policy jobs), with its outcome.
CREATE TABLE job_items (
    job_id       uuid NOT NULL REFERENCES jobs (id),
    seq          integer NOT NULL,
    chunk        integer NOT NULL,
    item         text NOT NULL,
    spec         jsonb,
    outcome      text CHECK (outcome IN ('changed', 'already_compliant', 'failed', 'skipped')),
    failure_code text,
    detail       text,
    finished_at  timestamptz,
    PRIMARY KEY (job_id, seq),
    CHECK ((outcome = 'failed') = (failure_code IS NOT NULL))
);
CREATE INDEX job_items_chunk ON job_items (job_id, chunk);
