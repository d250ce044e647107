//! What happens in the simulator, each as a metric of its own (the simulator's only one).

/// `reconciler_simulator_writes_applied_total`: writes the simulator applied to its directory
/// (also a 429 applied anyway), so a dashboard beside the worker's shows both sides.
pub const WRITES_APPLIED_TOTAL: &str = "reconciler_simulator_writes_applied_total";

/// The simulator applied a write to its directory.
pub(crate) fn write_applied() {
    metrics::counter!(WRITES_APPLIED_TOTAL).increment(1);
}
