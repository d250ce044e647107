-- Phone System admin roles: desired state (who holds which role where, and the ODS mappings
-- that extend a Primary admin's reach), and the emails already sent for granted roles.

-- A user holds at most one Phone System admin role: the email is the key.
CREATE TABLE admin_roles (
    email           text PRIMARY KEY,
    ods_code        text NOT NULL,
    role            text NOT NULL
        CHECK (role IN ('phone_system_primary_admin', 'phone_system_local_admin')),
    assigned_by_job uuid REFERENCES jobs (id),
    assigned_at     timestamptz NOT NULL DEFAULT now()
);
-- The 10-per-code limit counts by code.
CREATE INDEX admin_roles_ods_code ON admin_roles (ods_code);

-- The full mapping of a lead organisation (the latest `ods_mapping.changed`).
CREATE TABLE ods_mappings (
    lead_ods_code  text PRIMARY KEY,
    managed        text[] NOT NULL,
    onboarded      text[] NOT NULL,
    updated_by_job uuid REFERENCES jobs (id),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- One `phone_system_admin_granted` email per job and user: the applier claims the row in the
-- transaction that enqueues the email, so a retried or taken-over item never sends it twice.
CREATE TABLE admin_role_notifications (
    job_id     uuid NOT NULL REFERENCES jobs (id),
    email      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, email)
);
