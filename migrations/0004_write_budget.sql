-- The tenant write budget shared by every replica: one token bucket per name.
CREATE TABLE write_budget (
    name         text PRIMARY KEY,
    -- Tokens available; negative while callers sleep off a debt they took.
    tokens       double precision NOT NULL,
    -- Share of the configured rate in force (halved on 429, recovering over time).
    factor       double precision NOT NULL DEFAULT 1,
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    throttled_at timestamptz
);
