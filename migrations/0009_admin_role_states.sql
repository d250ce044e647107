-- Phone System admin roles follow the tenant: a stored role says how far its tenant work got.
--
--   pending   a grant planned; its memberships are not yet confirmed in the tenant
--   realised  the tenant showed the user in the role's groups (the grant's email went out then)
--   failed    the grant's item failed: not held, no place under the 10-per-code limit
--   removing  a removal or a leaver planned; the row goes once the tenant shows no Phone System
--             membership left, and stays (still counted) while that has not happened
--
-- The limit counts pending, realised and removing rows.
ALTER TABLE admin_roles
    ADD COLUMN state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'realised', 'failed', 'removing')),
    ADD COLUMN removed_by_job uuid REFERENCES jobs (id),
    ADD COLUMN state_changed_at timestamptz NOT NULL DEFAULT now();

-- Rows stored before: a grant whose email was sent was realised; any other is left pending, so
-- the next item that finds it in the tenant realises it (its email, if never sent, goes then;
-- the claim in admin_role_notifications keeps a sent one from going twice).
UPDATE admin_roles r
   SET state = 'realised'
 WHERE EXISTS (SELECT 1 FROM admin_role_notifications n
                WHERE n.job_id = r.assigned_by_job AND n.email = r.email);
