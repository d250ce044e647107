//! Settings of the tenant simulator: [`SimulatorSettings`], its runtime-tunable part
//! [`SimulatorBehaviour`] and the [`SimulatorProfile`] whose figures unset keys take, defined
//! with the rest of the settings in [`crate::configuration`] and re-exported here.
pub use crate::configuration::{
    FEDERATED_AUDIENCE, FederatedIssuer, SimulatorBehaviour, SimulatorProfile, SimulatorSettings,
};
