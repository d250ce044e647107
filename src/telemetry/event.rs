//! Internal events: one type per thing that happens, which writes its log line and counts its
//! metrics together (in the style of vector's `internal_events`), so the two never disagree.
//!
//! Each part declares its own events beside its code (`engine::events`, `broker::events`,
//! `tenant::events`, `store::events`, `http::events`): a part depends on this module, never the
//! other way round. An event's label values come from enums' `as_str` (closed sets), never
//! from input, so series stay bounded; its metric names come from [`super::metrics`].
//!
//! ```ignore
//! emit(JobCompleted { job_id, job_type, outcome, counts: &counts });
//! ```

/// Something that happened, to be logged and counted.
pub trait InternalEvent {
    /// Write the log line (if any) and update the metrics (if any).
    fn emit(self);
}

/// Log and count `event`.
pub fn emit(event: impl InternalEvent) {
    event.emit();
}
