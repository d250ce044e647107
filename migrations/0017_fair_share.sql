-- Fair share between organisations (issue 18), and a priority a job may be given.
--
-- `fair_key`: whose share of the tenant write budget a job's chunks use; set when the job is
-- accepted (`job_fair_key`). Jobs of one key take turns with those of every other key at the
-- claim (`store::work::claim_chunk`). NULL (a job accepted before this migration and already
-- done, or a row a test inserted) counts as the job's own key.
--
-- `priority`: 0 for every job from the portal; a negative priority (`store::work::LOW_PRIORITY`,
-- e.g. an internal drift sweep) is claimed only when no chunk of a higher priority is
-- claimable, never takes the slots kept for small jobs, and writes with Graph's low priority.
ALTER TABLE jobs
    ADD COLUMN fair_key text,
    ADD COLUMN priority smallint NOT NULL DEFAULT 0;

-- The organisation a job is for: the ODS code of its policy (policy.changed, or the stored
-- policy of a policy.members_added), of its payload (admin-role jobs, ods_mapping.changed), or
-- of the portal user who asked; else the job alone (a leaver has no organisation).
CREATE FUNCTION job_fair_key(j jobs) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        'ods:' || coalesce(
            j.payload #>> '{policy,ods_code}',
            j.payload ->> 'ods_code',
            (SELECT p.ods_code FROM policies p WHERE p.id = j.payload ->> 'policy_id'),
            j.actor ->> 'ods_code'),
        'job:' || j.id::text)
$$;

UPDATE jobs SET fair_key = job_fair_key(jobs) WHERE state IN ('accepted', 'running');
