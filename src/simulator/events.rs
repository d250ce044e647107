//! What happens in the simulator, each as one [`InternalEvent`] that updates its metrics (and
//! would write its log line) together.
use crate::telemetry::event::InternalEvent;
use crate::telemetry::metrics as m;

/// The simulator applied a write to its directory (also a 429 applied anyway).
pub(crate) struct WriteApplied;

impl InternalEvent for WriteApplied {
    fn emit(self) {
        metrics::counter!(m::SIMULATOR_WRITES_APPLIED_TOTAL).increment(1);
    }
}
