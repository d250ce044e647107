//! policy-reconciler (skeleton; the crate map is written as the parts land).
pub mod simulator;
pub mod telemetry;
pub mod tenant;
