-- Drift sweeps (issue 18): the service's own `drift.sweep` jobs, one per stored policy, verify
-- what was applied against the tenant off-peak.

-- Background work: chunks of such jobs are claimed only when no other job's chunk is waiting
-- (the claim orders by it first), so a sweep never delays a ticket's job.
ALTER TABLE jobs ADD COLUMN background boolean NOT NULL DEFAULT false;
