-- Planning a large policy inserts one job item and one membership row per member (200,000
-- for the largest). A foreign key checks every such row with a trigger and a lookup of its
-- parent, which doubled the cost of those inserts (measured: about 100 ms more per 20,000
-- rows, on a job whose Graph work is about a second).
--
-- Both kinds of row are written only by the planner, in the transaction that holds the
-- parent: the job row is locked (`FOR UPDATE SKIP LOCKED`) and the policy is upserted just
-- before its members, under the policy's advisory lock. Neither parent is ever deleted.
-- The constraints guarded against a bug that cannot happen there, at a price paid on every
-- large job, so they go.
ALTER TABLE job_items DROP CONSTRAINT job_items_job_id_fkey;
ALTER TABLE policy_members DROP CONSTRAINT policy_members_policy_id_fkey;

-- Every job item is inserted once and updated once (its outcome). Packed full, each update
-- needs a new page and so a new entry in both indexes (about 1,000 WAL records a 250-item
-- chunk, 4 ms); with room left on the page it is a heap-only update that touches no index
-- (measured: about a third of the WAL and of the time). The price is twice the space for
-- items, which are small.
ALTER TABLE job_items SET (fillfactor = 50);

-- The planner's fast path for member lists, so that a long list is checked where it is
-- stored: the normalised (lower-case) form of a plain ASCII address, one that the worker's
-- rule (`EmailAddress::parse`) accepts unchanged but for case; NULL for anything else, which
-- the worker then checks with that rule itself. It must never be wider than the rule:
-- tests/api/policy.rs runs a corpus of awkward addresses through both. (The lengths are
-- checked beside the pattern: a bounded repetition makes the matcher ten times slower.)
CREATE FUNCTION plain_email(raw text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN length(raw) <= 254 AND position('@' IN raw) BETWEEN 2 AND 65
                     AND raw ~ '^[-A-Za-z0-9._%+'']+@[-A-Za-z0-9]+(\.[-A-Za-z0-9]+)+$'
                THEN lower(raw) END;
