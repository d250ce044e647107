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
pub const EVENT_TYPES: &[&str] = &["job.accepted", "job.completed", "notification.email"];

// ---- process ----

/// Always 1, labelled with the crate `version`.
pub const BUILD_INFO: &str = "reconciler_build_info";

// ---- tenant (Graph client) ----

// ---- simulator ----

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
}
