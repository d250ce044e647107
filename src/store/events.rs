//! What happens in the store, logged and counted together ([`crate::telemetry::event`]).
//!
//! Each event logs under the target of the module it comes from (`store::budget`, `store`),
//! so log lines and `RUST_LOG` filters are what they were before the events existed.

use std::time::Duration;

use crate::telemetry::InternalEvent;
use crate::telemetry::metrics as m;

const BUDGET: &str = "policy_reconciler::store::budget";
const STORE: &str = "policy_reconciler::store";

/// The configured database did not exist, and was created.
pub struct DatabaseCreated<'a> {
    pub database: &'a str,
}

impl InternalEvent for DatabaseCreated<'_> {
    fn emit(self) {
        tracing::info!(target: STORE, database = %self.database, "created database");
    }
}

/// Write tokens were taken from the shared budget; `factor` is the share of the configured
/// rate now in force.
pub struct WriteBudgetTaken {
    pub factor: f64,
}

impl InternalEvent for WriteBudgetTaken {
    fn emit(self) {
        metrics::gauge!(m::TENANT_WRITE_RATE_FACTOR).set(self.factor);
    }
}

/// The shared budget could not be read: this replica paces itself alone.
pub struct WriteBudgetUnavailable<'a> {
    pub error: &'a sqlx::Error,
}

impl InternalEvent for WriteBudgetUnavailable<'_> {
    fn emit(self) {
        let error = self.error;
        tracing::warn!(target: BUDGET, %error, "shared write budget unavailable; pacing locally");
    }
}

/// A writer waited for its share of the budget (zero when tokens were there).
pub struct WriteBudgetWaited {
    pub waited: Duration,
}

impl InternalEvent for WriteBudgetWaited {
    fn emit(self) {
        metrics::histogram!(m::TENANT_WRITE_BUDGET_WAIT_SECONDS).record(self.waited.as_secs_f64());
    }
}

/// The tenant answered 429 and the shared write rate was lowered.
pub struct WriteRateLowered;

impl InternalEvent for WriteRateLowered {
    fn emit(self) {
        tracing::info!(target: BUDGET, "tenant throttled us: shared write rate lowered");
    }
}

/// The tenant answered 429 but the shared write rate could not be lowered.
pub struct WriteRateNotLowered<'a> {
    pub error: &'a sqlx::Error,
}

impl InternalEvent for WriteRateNotLowered<'_> {
    fn emit(self) {
        let error = self.error;
        tracing::warn!(target: BUDGET, %error, "cannot lower the shared write rate");
    }
}
