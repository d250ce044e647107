-- Revert (contract 1.1): the state of each item before a job's write, so that an operator can
-- have a completed job undone (`jobs revert`). Recorded with the write's intent, in the
-- statement that admits the write (before it leaves for the tenant), so a write whose outcome
-- a crash kept from being recorded still has its image. `image` is what the applier read
-- before writing: the user's object id and directly assigned licences with their disabled
-- plans (`{"user_id": …, "licences": [{"skuId": …, "disabledPlans": […]}]}`). The first image
-- of an item is kept: a write sent again reads a state this job may already have changed.
CREATE TABLE job_item_before_images (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq         integer NOT NULL,
    -- Lower case, as `user_directory`: how a later job's write to the same user is found.
    address     text NOT NULL,
    image       jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);
-- A revert skips an item written by a later job (`superseded`): found by address and time.
CREATE INDEX job_item_before_images_address ON job_item_before_images (address, recorded_at);
-- Retention (`engine.revert.retention_days`): the monitor deletes the oldest.
CREATE INDEX job_item_before_images_recorded ON job_item_before_images (recorded_at);
