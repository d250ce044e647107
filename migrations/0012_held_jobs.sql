-- A job whose chunks wait because the tenant refuses the service's access (a credential
-- refused, a permission revoked): `{"code": "tenant_access_lost", "reason", "detail", "since"}`,
-- set when a chunk is held and cleared when one runs with access again. Its items keep no
-- outcome meanwhile: losing access is a fault of the service, not of the users.
ALTER TABLE jobs ADD COLUMN held jsonb;
