-- Seats (issue 16): a policy job records at planning how many of its users need a new seat of
-- its licence, so that a later job's planning can subtract what unfinished jobs will still
-- take from the seats the tenant has left (`no_seats_available` before any write).
ALTER TABLE jobs
    ADD COLUMN seat_licence text,
    ADD COLUMN seats_needed integer;

-- The service plans each SKU had when the catalogue was last read, so that a plan the vendor
-- adds is noticed once (by whichever replica reads first) and the policies that use its SKU
-- are re-verified off-peak. `reverified_at` is set once their internal jobs are stored.
CREATE TABLE sku_service_plans (
    sku_id          uuid NOT NULL,
    service_plan_id uuid NOT NULL,
    sku_part_number text NOT NULL,
    plan_name       text NOT NULL,
    -- False for the plans of a SKU's first reading (nothing to re-verify).
    added_later     boolean NOT NULL,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    reverified_at   timestamptz,
    PRIMARY KEY (sku_id, service_plan_id)
);
