//! Settings of the tenant simulator (`[simulator]` in `config/default.toml`).
use serde::Deserialize;

/// How the simulator behaves: latency, throttling, faults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSettings {
    /// Address the simulator listens on when started from the CLI.
    pub listen_address: String,
}
