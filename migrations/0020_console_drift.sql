-- no-transaction
-- The console's overview lists the latest `drift.detected` events (issue 19's console, issue
-- 18's sweeps): the outbox keeps every event, so they are found by an index of their own,
-- built without blocking the outbox's inserts (every event of every job) while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_drift_detected ON outbox (id DESC)
    WHERE event_type = 'drift.detected';
