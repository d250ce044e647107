-- Operator controls and scheduling of large jobs.

ALTER TABLE jobs
    -- `jobs pause`: no new chunk of the job is claimed (chunks running finish).
    ADD COLUMN paused    boolean NOT NULL DEFAULT false,
    -- `jobs expedite`: the job runs now, outside the off-peak windows.
    ADD COLUMN expedited boolean NOT NULL DEFAULT false,
    -- Why the job ended early, when it did (`cancelled by an operator`, `superseded by …`).
    ADD COLUMN ended_early text;
