-- Ending a job (cancel, supersession) while its chunks run: the running chunks stop at their
-- next write batch and record what they wrote; the job completes once they have.

-- The code its remaining items are skipped with (`cancelled`, `superseded`), beside the
-- reason already kept in `ended_early`.
ALTER TABLE jobs ADD COLUMN ended_code text;

-- The newer job that superseded this one: its chunks wait until this job's running chunks
-- have stopped, so that no write of the older definition lands after a newer one.
ALTER TABLE jobs ADD COLUMN superseded_by uuid;
CREATE INDEX jobs_superseded_by ON jobs (superseded_by) WHERE superseded_by IS NOT NULL;

-- Set (under the chunk's lease, while the job has not ended) right before a write batch for
-- the item is sent to the tenant: a later read that finds the item compliant then knows the
-- write was this job's (`changed`, not `already_compliant`), also after a crash or an outage.
ALTER TABLE job_items ADD COLUMN write_intended boolean NOT NULL DEFAULT false;
