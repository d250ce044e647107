//! Logs (tracing) and metrics (Prometheus).
pub mod metrics;
