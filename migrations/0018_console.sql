-- The operator console's reads (issue 19), kept indexed so that a page answers quickly for a job
-- of 200,000 items.

-- Paging the job list, newest first.
CREATE INDEX jobs_received ON jobs (received_at DESC, id DESC);
-- Search by ticket reference and by policy id.
CREATE INDEX jobs_ticket_reference ON jobs ((ticket ->> 'reference'));
CREATE INDEX jobs_policy_id ON jobs ((subject ->> 'policy_id'));
-- "Every job that touched an address" and search by a user's email.
CREATE INDEX job_items_item ON job_items (item);
-- No index mentions job_items.outcome (or failure_code): an item's outcome is written once,
-- and with no index on those columns that update stays heap-only (see 0007_bulk_planning.sql).
-- A job's failures are read along its primary key (job_id, seq).
-- The events a job published.
CREATE INDEX outbox_job ON outbox (job_id, id) WHERE job_id IS NOT NULL;
-- The overview's dead-letter count.
CREATE INDEX inbox_dead_lettered ON inbox (received_at) WHERE disposition = 'dead_lettered';
