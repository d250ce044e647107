//! Settings of the Graph client (`[tenant]` in `config/default.toml`).
use serde::Deserialize;

/// Where and how the reconciler talks to Microsoft Graph (or the simulator).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// Base URL of Graph, without `/v1.0` (the simulator's address by default).
    pub graph_base_url: String,
}
