//! Every metric name and its bounded label values, declared in one place.
//!
//! Dashboards, alerts and tests refer to these names; nothing else in the crate spells one out.
//! Label values come from closed sets (enums' `as_str`, or the arrays below) so that series
//! stay bounded whatever the input.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

// ---- ingest (broker consumer) ----

/// Job messages taken from the queue, by `outcome` ([`INGEST_OUTCOMES`]).
pub const MESSAGES_RECEIVED_TOTAL: &str = "reconciler_messages_received_total";
/// `stored`: a new job; `duplicate`: a `message_id` seen before; `dead_lettered`: bad input.
pub const INGEST_OUTCOMES: &[&str] = &["stored", "duplicate", "dead_lettered"];
/// Messages the worker dead-lettered, by `code` (the `x-reconciler-error` header).
pub const DEAD_LETTERS_TOTAL: &str = "reconciler_dead_letters_total";
/// Time from delivery to acknowledgement of one job message.
pub const INGEST_DURATION_SECONDS: &str = "reconciler_ingest_duration_seconds";

// ---- broker connection ----

/// 1 while the replica holds a working broker connection, else 0.
pub const BROKER_CONNECTED: &str = "reconciler_broker_connected";
/// Connections (re)built by the supervisor after a loss.
pub const BROKER_RECONNECTS_TOTAL: &str = "reconciler_broker_reconnects_total";

// ---- outbox ----

/// Events confirmed by the broker, by `type` (event type).
pub const OUTBOX_PUBLISHED_TOTAL: &str = "reconciler_outbox_published_total";
/// Publication attempts that failed (nack, lost connection); the events stay pending.
pub const OUTBOX_PUBLISH_FAILURES_TOTAL: &str = "reconciler_outbox_publish_failures_total";
/// Events stored but not yet confirmed by the broker.
pub const OUTBOX_PENDING: &str = "reconciler_outbox_pending";
/// Age of the oldest pending event: grows when publication is stuck.
pub const OUTBOX_OLDEST_PENDING_AGE_SECONDS: &str = "reconciler_outbox_oldest_pending_age_seconds";
/// Event type label values.
pub const EVENT_TYPES: &[&str] = &[
    "job.accepted",
    "job.completed",
    "notification.email",
    "drift.detected",
];

// ---- engine (planning, chunks, completion) ----

/// Counter: chunks handed back with items waiting for the tenant to show their writes
/// (replication lag), to be claimed again after a short wait.
pub const CHUNKS_DEFERRED_TOTAL: &str = "reconciler_chunks_deferred_total";

/// Counter: chunks handed back because the service lost its access to the tenant (the job
/// holds, its items do not fail), by `reason` ([`ACCESS_LOSS_REASONS`]).
pub const CHUNKS_HELD_TOTAL: &str = "reconciler_chunks_held_total";

/// Jobs planned, by `job_type` and `schedule` ([`SCHEDULES`]).
pub const JOBS_ACCEPTED_TOTAL: &str = "reconciler_jobs_accepted_total";
/// Jobs completed, by `job_type` and `outcome` ([`JOB_OUTCOMES`]).
pub const JOBS_COMPLETED_TOTAL: &str = "reconciler_jobs_completed_total";
/// Items finished, by `job_type` and `outcome` ([`ITEM_OUTCOMES`]).
pub const ITEMS_TOTAL: &str = "reconciler_items_total";
/// Time to plan one job (validate, store desired state, items and chunks), by `job_type`.
pub const PLAN_DURATION_SECONDS: &str = "reconciler_plan_duration_seconds";
/// Time to process one chunk, by `job_type`.
pub const CHUNK_DURATION_SECONDS: &str = "reconciler_chunk_duration_seconds";
/// Chunks taken over from a worker whose lease expired (it died or stalled).
pub const CHUNKS_RECLAIMED_TOTAL: &str = "reconciler_chunks_reclaimed_total";
/// Unfinished jobs, by `state` ([`UNFINISHED_STATES`]). The same value on every replica.
pub const JOBS_UNFINISHED: &str = "reconciler_jobs_unfinished";
/// Items of unfinished jobs not yet done. The same value on every replica.
pub const ITEMS_REMAINING: &str = "reconciler_items_remaining";
/// Age of the oldest unfinished job (the 24-hour resolution target).
pub const OLDEST_UNFINISHED_JOB_AGE_SECONDS: &str = "reconciler_oldest_unfinished_job_age_seconds";
/// Unfinished jobs expected to miss the 24-hour target at the current pace.
pub const JOBS_AT_RISK: &str = "reconciler_jobs_at_risk";
/// Messages ready in the broker's queues, by `queue` ([`QUEUES`]).
pub const QUEUE_MESSAGES: &str = "reconciler_queue_messages";
/// Seats of a licence in use (`consumedUnits`), by `sku` (its `skuPartNumber`: the tenant's
/// catalogue, a few dozen at most), as the catalogue watcher last read them.
pub const LICENCE_SEATS_CONSUMED: &str = "reconciler_licence_seats_consumed";
/// Seats of a licence that can be assigned in all (`prepaidUnits.enabled + warning`; 0 while
/// the subscription is `Suspended` or `LockedOut`), by `sku`.
pub const LICENCE_SEATS_ASSIGNABLE: &str = "reconciler_licence_seats_assignable";

/// Counter: items of completed drift sweeps, by `result` ([`DRIFT_RESULTS`]): `checked`
/// (read and compared), `drifted` (differed from what was applied, or could not be shown to
/// hold it), `repaired` (brought back; repair mode), `failed` (the read or repair failed).
pub const DRIFT_ITEMS_TOTAL: &str = "reconciler_drift_items_total";
/// Values of the `result` label of [`DRIFT_ITEMS_TOTAL`].
pub const DRIFT_RESULTS: &[&str] = &["checked", "drifted", "repaired", "failed"];
pub const SCHEDULES: &[&str] = &["immediate", "off_peak"];
pub const JOB_OUTCOMES: &[&str] = &["succeeded", "partially_succeeded", "failed", "rejected"];
pub const ITEM_OUTCOMES: &[&str] = &["changed", "already_compliant", "failed", "skipped"];
pub const UNFINISHED_STATES: &[&str] = &["received", "accepted", "running"];
pub const QUEUES: &[&str] = &["jobs", "dead"];

// ---- process ----

/// Always 1, labelled with the crate `version`.
pub const BUILD_INFO: &str = "reconciler_build_info";

// ---- tenant (Graph client) ----

/// Counter: Graph requests by `operation` ([`TENANT_OPERATIONS`]) and `status` ([`TENANT_STATUS_CLASSES`]).
/// Inner requests of a `$batch` count under their own operation; the envelope counts as `batch`.
pub const TENANT_REQUESTS_TOTAL: &str = "reconciler_tenant_requests_total";
/// Counter: 429 answers by `operation`.
pub const TENANT_THROTTLED_TOTAL: &str = "reconciler_tenant_throttled_total";
/// Counter: retries by `operation` and `reason` ([`TENANT_RETRY_REASONS`]).
pub const TENANT_RETRIES_TOTAL: &str = "reconciler_tenant_retries_total";
/// Histogram (seconds): duration of one HTTP call by `operation`.
pub const TENANT_REQUEST_DURATION_SECONDS: &str = "reconciler_tenant_request_duration_seconds";
/// Histogram (seconds): time spent waiting for the client-side write budget.
pub const TENANT_WRITE_BUDGET_WAIT_SECONDS: &str = "reconciler_tenant_write_budget_wait_seconds";
/// Gauge: share of the configured write rate in force (below 1 after 429s, recovering).
pub const TENANT_WRITE_RATE_FACTOR: &str = "reconciler_tenant_write_rate_factor";
/// Gauge: 1 while this replica has lost its access to the tenant, by `reason`
/// ([`ACCESS_LOSS_REASONS`]: its credential refused, or a Graph permission revoked); jobs hold
/// meanwhile and resume once it is back.
pub const TENANT_ACCESS_LOST: &str = "reconciler_tenant_access_lost";
/// Values of the `reason` label of [`TENANT_ACCESS_LOST`] and [`CHUNKS_HELD_TOTAL`].
pub const ACCESS_LOSS_REASONS: &[&str] = &["credential", "permission"];
/// Counter: access tokens fetched.
pub const TENANT_TOKEN_REFRESHES_TOTAL: &str = "reconciler_tenant_token_refreshes_total";

/// Values of the `operation` label of tenant metrics.
pub const TENANT_OPERATIONS: &[&str] = &[
    "token",
    "list_skus",
    "get_user",
    "assign_licence",
    "find_group",
    "create_group",
    "list_members",
    "member_of",
    "add_member",
    "remove_member",
    "create_user",
    "find_users",
    "ensure_group",
    "add_members_bulk",
    "batch",
];
/// Values of the `status` label of [`TENANT_REQUESTS_TOTAL`].
pub const TENANT_STATUS_CLASSES: &[&str] = &["2xx", "4xx", "429", "5xx", "network"];
/// Values of the `reason` label of [`TENANT_RETRIES_TOTAL`].
pub const TENANT_RETRY_REASONS: &[&str] = &["throttled", "transient", "unauthorized"];

/// The status-class label value of an HTTP status (0 = no response).
pub fn status_class(status: u16) -> &'static str {
    match status {
        0 => "network",
        429 => "429",
        200..=299 => "2xx",
        500..=599 => "5xx",
        _ => "4xx",
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide Prometheus recorder (once) and describe every metric.
/// Later calls return the same handle, so several apps in one test process share it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0,
                ])
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process");
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            // Counters of rare events exist from the start at 0, so that `rate()` and
            // `increase()` (dashboards, alerts) see them before the first occurrence.
            for counter in [
                CHUNKS_RECLAIMED_TOTAL,
                CHUNKS_DEFERRED_TOTAL,
                BROKER_RECONNECTS_TOTAL,
                OUTBOX_PUBLISH_FAILURES_TOTAL,
            ] {
                metrics::counter!(counter).increment(0);
            }
            for result in DRIFT_RESULTS {
                metrics::counter!(DRIFT_ITEMS_TOTAL, "result" => *result).increment(0);
            }
            for reason in ACCESS_LOSS_REASONS {
                metrics::counter!(CHUNKS_HELD_TOTAL, "reason" => *reason).increment(0);
                metrics::gauge!(TENANT_ACCESS_LOST, "reason" => *reason).set(0.0);
            }
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        MESSAGES_RECEIVED_TOTAL,
        "Job messages taken from the queue, by outcome."
    );
    describe_counter!(
        DEAD_LETTERS_TOTAL,
        "Job messages dead-lettered by the worker, by code."
    );
    describe_histogram!(
        INGEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from delivery to acknowledgement of a job message."
    );
    describe_gauge!(BROKER_CONNECTED, "1 while the broker connection works.");
    describe_counter!(
        BROKER_RECONNECTS_TOTAL,
        "Broker connections rebuilt after a loss."
    );
    describe_counter!(
        OUTBOX_PUBLISHED_TOTAL,
        "Events confirmed by the broker, by type."
    );
    describe_counter!(
        OUTBOX_PUBLISH_FAILURES_TOTAL,
        "Failed event publications (the events stay pending)."
    );
    describe_gauge!(OUTBOX_PENDING, "Events stored and not yet confirmed.");
    describe_gauge!(
        OUTBOX_OLDEST_PENDING_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest unpublished event."
    );
    describe_gauge!(BUILD_INFO, "Build information.");
    describe_counter!(JOBS_ACCEPTED_TOTAL, "Jobs planned, by type and schedule.");
    describe_counter!(JOBS_COMPLETED_TOTAL, "Jobs completed, by type and outcome.");
    describe_counter!(ITEMS_TOTAL, "Items finished, by job type and outcome.");
    describe_histogram!(
        PLAN_DURATION_SECONDS,
        Unit::Seconds,
        "Time to plan one job (validate, store desired state, items and chunks), by job type."
    );
    describe_histogram!(
        CHUNK_DURATION_SECONDS,
        Unit::Seconds,
        "Time to process one chunk, by job type."
    );
    describe_counter!(
        CHUNKS_RECLAIMED_TOTAL,
        "Chunks taken over after a lease expired."
    );
    describe_counter!(
        CHUNKS_DEFERRED_TOTAL,
        "Chunks handed back while writes they made replicate, to be claimed again shortly."
    );
    describe_counter!(
        DRIFT_ITEMS_TOTAL,
        "Items of completed drift sweeps, by result (checked, drifted, repaired, failed)."
    );
    describe_gauge!(JOBS_UNFINISHED, "Unfinished jobs, by state.");
    describe_gauge!(ITEMS_REMAINING, "Items of unfinished jobs not yet done.");
    describe_gauge!(
        OLDEST_UNFINISHED_JOB_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest unfinished job."
    );
    describe_gauge!(
        JOBS_AT_RISK,
        "Unfinished jobs expected to miss the 24-hour target."
    );
    describe_gauge!(
        LICENCE_SEATS_CONSUMED,
        "Seats of a licence in use (consumedUnits), by sku part number."
    );
    describe_gauge!(
        LICENCE_SEATS_ASSIGNABLE,
        "Seats of a licence that can be assigned (enabled + warning; 0 when suspended), by sku."
    );
    describe_gauge!(
        QUEUE_MESSAGES,
        "Messages ready in the broker's queues, by queue."
    );
    describe_counter!(
        TENANT_REQUESTS_TOTAL,
        "Graph requests by operation and status class."
    );
    describe_counter!(TENANT_THROTTLED_TOTAL, "Graph 429 answers by operation.");
    describe_counter!(
        TENANT_RETRIES_TOTAL,
        "Graph retries by operation and reason."
    );
    describe_histogram!(
        TENANT_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one Graph HTTP call, by operation."
    );
    describe_histogram!(
        TENANT_WRITE_BUDGET_WAIT_SECONDS,
        Unit::Seconds,
        "Time spent waiting for the tenant write budget."
    );
    describe_counter!(TENANT_TOKEN_REFRESHES_TOTAL, "Access tokens fetched.");
    describe_gauge!(
        TENANT_ACCESS_LOST,
        "1 while the tenant refuses the service's access (credential or permission), by reason."
    );
    describe_counter!(
        CHUNKS_HELD_TOTAL,
        "Chunks handed back because the tenant refused the service's access, by reason."
    );
    describe_gauge!(
        TENANT_WRITE_RATE_FACTOR,
        "Share of the configured write rate in force (adaptive)."
    );
}
