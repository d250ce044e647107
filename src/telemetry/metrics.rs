//! Every metric name and its bounded label values, declared in one place.
//!
//! Dashboards, alerts and tests refer to these names; nothing else in the crate spells one out.

// ---- tenant (Graph client) ----

// ---- simulator ----
