-- Guard rails on large changes (contract 1.1): a job whose effect is over the configured
-- thresholds is planned but waits for an operator. `awaiting_approval` holds
-- `{"effect": {...}, "threshold": {...}, "since": "…"}` while it waits, and is cleared by
-- `jobs approve` (or when the job ends). No chunk of a waiting job is claimed.
ALTER TABLE jobs ADD COLUMN awaiting_approval jsonb;

-- Operator actions (pause, resume, expedite, cancel, approve): who, when and why. Shown by
-- `jobs show`, carried in `job.completed` as `subject.operator_actions`.
CREATE TABLE job_operator_actions (
    id      bigserial PRIMARY KEY,
    job_id  uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    action  text NOT NULL,
    by_whom text NOT NULL,
    reason  text NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_operator_actions_job ON job_operator_actions (job_id, id);
-- The monitor's look for approvals waited out.
CREATE INDEX jobs_awaiting_approval ON jobs ((awaiting_approval ->> 'since'))
    WHERE awaiting_approval IS NOT NULL;
