//! `[simulator]`: settings of the tenant simulator ([`crate::simulator`]).
use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// How the simulator behaves: where it listens, who may log in, latency, throttling, faults.
///
/// Missing keys take the defaults of [`SimulatorSettings::default`], which match `config/default.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorSettings {
    /// Address `policy-reconciler tenant-simulator` listens on.
    pub listen_address: String,
    /// Base URL used to build absolute `@odata.nextLink` URLs; when absent the request's `Host`
    /// header is used (what real Graph effectively does: links point back at the server asked).
    pub public_base_url: Option<String>,
    /// JSON file with `skus`, `users` and `groups` loaded at start; when absent the built-in
    /// catalogue is used and the directory starts empty.
    pub seed_file: Option<PathBuf>,
    /// The only client id the token endpoint accepts.
    pub client_id: String,
    /// The only client secret the token endpoint accepts.
    pub client_secret: SecretString,
    /// Lifetime of issued access tokens (Graph issues about 3599 s).
    pub token_lifetime_seconds: u64,
    /// Objects returned per page of `GET /groups/{id}/members`, `GET /users/{id}/memberOf` and `GET /users`
    /// (Graph's default for directory objects is 100).
    pub members_page_size: usize,
    /// Fixed latency added to every Graph call (a `$batch` counts once).
    pub latency_ms: u64,
    /// Uniform random latency added on top of `latency_ms`, from 0 to this value.
    pub latency_jitter_ms: u64,
    /// Writes allowed per app per window; 0 disables write throttling.
    pub writes_per_window: u32,
    /// Length of the write window (Graph: about 3,000 writes per 150 s).
    pub write_window_seconds: u64,
    /// Resource units allowed per window (every request costs units); 0 disables.
    pub resource_units_per_window: u32,
    /// Length of the resource-unit window.
    pub resource_unit_window_seconds: u64,
    /// Probability that a write answered with 429 was applied anyway (real Graph does this).
    pub throttled_write_applied_probability: f64,
    /// Probability that a Graph request fails with 500 or 503 (not applied; a 503 carries a
    /// `Retry-After` of 1 to 2 seconds).
    pub fault_rate: f64,
    /// Probability that a whole HTTP request is answered by dropping the connection.
    pub dropped_connection_rate: f64,
}

/// The part of the simulator's behaviour a test can change at runtime (`POST /_sim/config` with a
/// partial JSON object of these fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorBehaviour {
    /// Lifetime of issued access tokens (Graph issues about 3599 s).
    pub token_lifetime_seconds: u64,
    /// Objects returned per page of `GET /groups/{id}/members`, `GET /users/{id}/memberOf` and `GET /users`
    /// (Graph's default for directory objects is 100).
    pub members_page_size: usize,
    /// Fixed latency added to every Graph call (a `$batch` counts once).
    pub latency_ms: u64,
    /// Uniform random latency added on top of `latency_ms`, from 0 to this value.
    pub latency_jitter_ms: u64,
    /// Writes allowed per app per window; 0 disables write throttling.
    pub writes_per_window: u32,
    /// Length of the write window (Graph: about 3,000 writes per 150 s).
    pub write_window_seconds: u64,
    /// Resource units allowed per window (every request costs units); 0 disables.
    pub resource_units_per_window: u32,
    /// Length of the resource-unit window.
    pub resource_unit_window_seconds: u64,
    /// Probability that a write answered with 429 was applied anyway (real Graph does this).
    pub throttled_write_applied_probability: f64,
    /// Probability that a Graph request fails with 500 or 503 (not applied; a 503 carries a
    /// `Retry-After` of 1 to 2 seconds).
    pub fault_rate: f64,
    /// Probability that a whole HTTP request is answered by dropping the connection.
    pub dropped_connection_rate: f64,
}

impl Default for SimulatorBehaviour {
    fn default() -> Self {
        Self {
            token_lifetime_seconds: 3599,
            members_page_size: 100,
            latency_ms: 0,
            latency_jitter_ms: 0,
            writes_per_window: 3000,
            write_window_seconds: 150,
            resource_units_per_window: 3500,
            resource_unit_window_seconds: 10,
            throttled_write_applied_probability: 0.0,
            fault_rate: 0.0,
            dropped_connection_rate: 0.0,
        }
    }
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        let b = SimulatorBehaviour::default();
        Self {
            listen_address: "127.0.0.1:8900".to_owned(),
            public_base_url: None,
            seed_file: None,
            client_id: "policy-reconciler-dev".to_owned(),
            client_secret: SecretString::from("simulator-secret"),
            token_lifetime_seconds: b.token_lifetime_seconds,
            members_page_size: b.members_page_size,
            latency_ms: b.latency_ms,
            latency_jitter_ms: b.latency_jitter_ms,
            writes_per_window: b.writes_per_window,
            write_window_seconds: b.write_window_seconds,
            resource_units_per_window: b.resource_units_per_window,
            resource_unit_window_seconds: b.resource_unit_window_seconds,
            throttled_write_applied_probability: b.throttled_write_applied_probability,
            fault_rate: b.fault_rate,
            dropped_connection_rate: b.dropped_connection_rate,
        }
    }
}

impl SimulatorSettings {
    /// The runtime-tunable part of these settings.
    pub fn behaviour(&self) -> SimulatorBehaviour {
        SimulatorBehaviour {
            token_lifetime_seconds: self.token_lifetime_seconds,
            members_page_size: self.members_page_size,
            latency_ms: self.latency_ms,
            latency_jitter_ms: self.latency_jitter_ms,
            writes_per_window: self.writes_per_window,
            write_window_seconds: self.write_window_seconds,
            resource_units_per_window: self.resource_units_per_window,
            resource_unit_window_seconds: self.resource_unit_window_seconds,
            throttled_write_applied_probability: self.throttled_write_applied_probability,
            fault_rate: self.fault_rate,
            dropped_connection_rate: self.dropped_connection_rate,
        }
    }

    /// Settings for tests: listen anywhere, no throttling, no latency, no faults.
    pub fn for_tests() -> Self {
        Self {
            listen_address: "127.0.0.1:0".to_owned(),
            writes_per_window: 0,
            resource_units_per_window: 0,
            ..Self::default()
        }
    }
}

impl SimulatorBehaviour {
    /// Applies a partial JSON object of fields onto this behaviour; unknown fields are rejected.
    pub fn patched(&self, patch: &serde_json::Value) -> Result<Self, serde_json::Error> {
        let mut current = serde_json::to_value(self)?;
        if let (Some(target), Some(changes)) = (current.as_object_mut(), patch.as_object()) {
            for (k, v) in changes {
                target.insert(k.clone(), v.clone());
            }
        } else if !patch.is_object() {
            return Err(serde::de::Error::custom("the patch must be a JSON object"));
        }
        serde_json::from_value(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_matches_the_defaults() {
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(
                include_str!("../../config/default.toml"),
                config::FileFormat::Toml,
            ))
            .build()
            .unwrap();
        let s: SimulatorSettings = cfg.get("simulator").unwrap();
        let d = SimulatorSettings::default();
        assert_eq!(s.listen_address, d.listen_address);
        assert_eq!(s.behaviour(), d.behaviour());
        assert_eq!(s.client_id, d.client_id);
        assert!(s.seed_file.is_none() && s.public_base_url.is_none());
        assert!(!format!("{s:?}").contains("simulator-secret"));
    }

    #[test]
    fn behaviour_patch_rejects_unknown_fields() {
        let b = SimulatorBehaviour::default();
        let p = b.patched(&serde_json::json!({"latency_ms": 7})).unwrap();
        assert_eq!(p.latency_ms, 7);
        assert_eq!(p.writes_per_window, b.writes_per_window);
        assert!(b.patched(&serde_json::json!({"nope": 1})).is_err());
    }
}
