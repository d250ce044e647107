-- The first schema: the inbox of seen message ids, jobs, and the transactional outbox.

CREATE TABLE jobs (
    id             uuid PRIMARY KEY,
    message_id     text NOT NULL UNIQUE,
    -- NULL only for a rejected message whose type could not be read.
    job_type       text,
    schema_version integer,
    state          text NOT NULL CHECK (state IN ('received', 'accepted', 'running', 'completed')),
    outcome        text CHECK (outcome IN ('succeeded', 'partially_succeeded', 'failed', 'rejected')),
    dry_run        boolean NOT NULL DEFAULT false,
    ticket         jsonb,
    actor          jsonb,
    -- The payload as received (NULL when it could not be read).
    payload        jsonb,
    sent_at        timestamptz,
    received_at    timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    CHECK ((state = 'completed') = (outcome IS NOT NULL))
);

CREATE INDEX jobs_unfinished ON jobs (received_at) WHERE state <> 'completed';

-- Every message id this service has taken responsibility for, valid or not.
CREATE TABLE inbox (
    message_id  text PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES jobs (id),
    disposition text NOT NULL CHECK (disposition IN ('job', 'dead_lettered')),
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Events written in the same transaction as the state they report, published by the relay.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    event_type   text NOT NULL,
    routing_key  text NOT NULL,
    job_id       uuid,
    body         jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text
);

CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;

-- Wake the relays as soon as an event commits (one notification per statement).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('reconciler_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
