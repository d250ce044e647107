-- Ending a job (cancel, supersession) while its chunks run: the running chunks stop at their
-- next write batch and record what they wrote; the job completes once they have.

-- The code its remaining items are skipped with (`cancelled`, `superseded`), beside the
-- reason already kept in `ended_early`.
ALTER TABLE jobs ADD COLUMN ended_code text;

-- The newer job that superseded this one: its chunks wait until this job's running chunks
-- have stopped, so that no write of the older definition lands after a newer one.
ALTER TABLE jobs ADD COLUMN superseded_by uuid;
CREATE INDEX jobs_superseded_by ON jobs (superseded_by) WHERE superseded_by IS NOT NULL;

-- Writes about to be sent to the tenant, recorded (under the chunk's lease, while the job has
-- not ended) right before a call's first write batch: a later read that finds one of these
-- items compliant knows the write was this job's (`changed`, not `already_compliant`), also
-- after a crash or an outage. One row per tenant call rather than a column of `job_items`, so
-- that an item's row is updated once (its outcome), heap-only. Removed when the job completes.
CREATE TABLE write_intents (
    job_id uuid NOT NULL,
    chunk  int  NOT NULL,
    seqs   int[] NOT NULL,
    at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX write_intents_chunk ON write_intents (job_id, chunk);
