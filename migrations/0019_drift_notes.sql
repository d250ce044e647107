-- What a drift sweep learnt of an item before its outcome (issue 18). A member whose read
-- differs from the policy is read again once replication has had time (`suspected_at` plus
-- `engine.verify_within_ms`): the chunk is handed back meanwhile, so the note outlives the
-- claim. A difference that read confirms is drift: `finding` keeps what was found, for the
-- sweep's drift.detected, when its repair is finished by a later claim.
CREATE TABLE drift_notes (
    job_id       uuid NOT NULL,
    seq          integer NOT NULL,
    suspected_at timestamptz NOT NULL,
    finding      text,
    PRIMARY KEY (job_id, seq),
    FOREIGN KEY (job_id, seq) REFERENCES job_items (job_id, seq)
);
