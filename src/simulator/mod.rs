//! The Graph-compatible tenant simulator (`policy-reconciler tenant-simulator`).
pub mod settings;
pub use settings::SimulatorSettings;
