//! Settings of the tenant simulator: [`SimulatorSettings`] and its runtime-tunable part
//! [`SimulatorBehaviour`], defined with the rest of the settings in [`crate::configuration`] and
//! re-exported here.
pub use crate::configuration::{SimulatorBehaviour, SimulatorSettings};
