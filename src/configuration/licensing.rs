//! `[engine.licensing]`: the service-plan dependency table, and how often the SKU catalogue is
//! re-read.
use std::num::NonZeroU64;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::parse::at_least_one;

/// Licensing rules the planner checks and the catalogue watcher's pace.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LicensingSettings {
    /// How often every replica re-reads the SKU catalogue (`GET /subscribedSkus`): seat
    /// metrics, and service plans the vendor added (the policies using that SKU are then
    /// re-verified in the next off-peak window).
    #[serde(deserialize_with = "at_least_one")]
    pub catalogue_refresh_seconds: NonZeroU64,
    /// Service-plan dependencies: Graph publishes none, so they are configuration. A policy
    /// whose toggles enable `plan` while disabling every plan of `requires` that its licence
    /// has is rejected at planning with `service_plan_dependency`.
    #[serde(default)]
    pub plan_dependencies: Vec<PlanDependency>,
}

/// One row of the dependency table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanDependency {
    /// The dependent plan (`servicePlanName`), e.g. `SHAREPOINTWAC`.
    pub plan: String,
    /// Plans of which at least one must be enabled with it (those the licence has).
    pub requires: Vec<String>,
}

impl LicensingSettings {
    pub fn catalogue_refresh(&self) -> Duration {
        Duration::from_secs(self.catalogue_refresh_seconds.get())
    }
}
