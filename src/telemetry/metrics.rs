//! Every metric name and its bounded label values, declared in one place.
//!
//! Dashboards, alerts and tests refer to these names; nothing else in the crate spells one out.

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
    "add_member",
    "remove_member",
    "create_user",
    "batch",
];
/// Values of the `status` label of [`TENANT_REQUESTS_TOTAL`].
pub const TENANT_STATUS_CLASSES: &[&str] = &["2xx", "4xx", "429", "5xx", "network"];
/// Values of the `reason` label of [`TENANT_RETRIES_TOTAL`].
pub const TENANT_RETRY_REASONS: &[&str] = &["throttled", "transient", "unauthorized"];

// ---- simulator ----
//
// Detailed counters are at the simulator's `/_sim/stats`; these are for dashboards of a
// `--simulator` run.

/// Counter: Graph calls the simulator answered, by `route` ([`SIMULATOR_ROUTES`]) and `status`
/// ([`TENANT_STATUS_CLASSES`], `network` meaning a dropped connection).
pub const SIMULATOR_REQUESTS_TOTAL: &str = "reconciler_simulator_requests_total";
/// Counter: writes the simulator applied.
pub const SIMULATOR_WRITES_APPLIED_TOTAL: &str = "reconciler_simulator_writes_applied_total";

/// Values of the `route` label of [`SIMULATOR_REQUESTS_TOTAL`].
pub const SIMULATOR_ROUTES: &[&str] = &[
    "token",
    "subscribed_skus",
    "get_user",
    "assign_license",
    "create_user",
    "create_group",
    "list_groups",
    "list_members",
    "add_member",
    "remove_member",
    "batch",
    "invalid",
];

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
