//! `[simulator]`: settings of the tenant simulator, as the service's configuration file holds
//! them (its `config/default.toml` documents every key).
//!
//! The keys of `[simulator]` are the process's own ([`SimulatorSettings`]: address, credentials,
//! seed file, profile) and those of [`SimulatorBehaviour`], the part a test may change at
//! runtime. Each behaviour field is declared once, in [`SimulatorBehaviour`]; the section is read
//! in two steps (the settings' own keys, then the rest as a behaviour patch that refuses unknown
//! keys) because `#[serde(flatten)]` cannot be combined with `deny_unknown_fields`.
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A set of figures for every [`SimulatorBehaviour`] field that the configuration does not set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimulatorProfile {
    /// A kind tenant: Graph's throttling limits, otherwise instant, consistent and faultless.
    #[default]
    Default,
    /// Graph as it is: replication lag and stale reads, new objects missing for a while, faults
    /// (some after the write was applied), latency, and Graph's throttling limits.
    Realistic,
}

/// How the simulator behaves: where it listens, who may log in, and (in [`Self::behaviour`],
/// whose fields it also exposes through `Deref`) latency, throttling, consistency and faults.
///
/// Missing keys take the figures of [`Self::profile`]; `profile = "default"` gives
/// [`SimulatorSettings::default`], which matches `config/default.toml`.
#[derive(Debug, Clone)]
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
    /// PEM files of the certificates registered on the application: the token endpoint accepts
    /// client assertions signed with their keys (and named by their `x5t#S256`).
    pub client_certificate_paths: Vec<PathBuf>,
    /// Federated identity credentials of the application: tokens of these issuers and
    /// subjects are accepted as client assertions (workload identity federation).
    pub federated_issuers: Vec<FederatedIssuer>,
    /// The profile whose figures the behaviour keys not set take.
    pub profile: SimulatorProfile,
    /// The runtime-tunable part (`GET`/`POST /_sim/config`).
    pub behaviour: SimulatorBehaviour,
}

/// A federated identity credential registered on the simulated application, as in Entra ID
/// (MicrosoftDocs/entra-docs `docs/workload-id/workload-identity-federation-create-trust.md`:
/// issuer, subject and audiences), with the certificate whose key signs the issuer's tokens
/// (Entra ID fetches the issuer's keys from its OIDC discovery document; the simulator is given
/// them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedIssuer {
    /// The token's `iss` (for AKS, the cluster's OIDC issuer URL).
    pub issuer: String,
    /// The token's `sub` (for AKS, `system:serviceaccount:{namespace}:{name}`).
    pub subject: String,
    /// The audience the token must carry (Entra's recommended `api://AzureADTokenExchange`).
    #[serde(default = "default_federated_audience")]
    pub audience: String,
    /// PEM certificate of the key that signs the issuer's tokens (RS256).
    pub certificate_path: PathBuf,
}

/// The audience Entra ID recommends for federated identity credentials.
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";

fn default_federated_audience() -> String {
    FEDERATED_AUDIENCE.to_owned()
}

/// `settings.latency_ms` and the like read and write [`SimulatorSettings::behaviour`]: the
/// settings extend the behaviour with the process's own keys.
impl Deref for SimulatorSettings {
    type Target = SimulatorBehaviour;

    fn deref(&self) -> &SimulatorBehaviour {
        &self.behaviour
    }
}

impl DerefMut for SimulatorSettings {
    fn deref_mut(&mut self) -> &mut SimulatorBehaviour {
        &mut self.behaviour
    }
}

/// The part of the simulator's behaviour a test can change at runtime (`POST /_sim/config` with a
/// partial JSON object of these fields, optionally with `"profile"` to start from that profile's
/// figures).
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
    /// Writes allowed per window for the whole tenant, all applications together; 0 disables
    /// (Graph: 18,000 requests per 5 minutes, `concepts/throttling-limits.md`, identity section).
    pub tenant_writes_per_window: u32,
    /// Length of the tenant-wide write window.
    pub tenant_write_window_seconds: u64,
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
    /// Probability that a write is applied and then answered with 500, or 503 or 504 (with
    /// `Retry-After`); inside `$batch`, per inner request.
    pub applied_then_fault_rate: f64,
    /// Probability that a single (not `$batch`) write is applied and then its connection dropped.
    pub applied_then_dropped_rate: f64,
    /// Replication lag of a write: uniform from 0 to this many milliseconds.
    pub replication_lag_ms: u64,
    /// Probability that a write's replication lag is `long_lag_ms` instead.
    pub long_lag_probability: f64,
    /// The occasional long replication lag.
    pub long_lag_ms: u64,
    /// Probability that a read is served by a replica the lagging writes have not reached yet.
    pub stale_read_probability: f64,
    /// Probability that a write naming a user or group not yet replicated answers 404
    /// `Request_ResourceNotFound`.
    pub new_object_write_404_probability: f64,
    /// Refuse a licence whose disabled plans leave a plan on without one it requires (the
    /// catalogue's dependency table, e.g. `SHAREPOINTWAC` needs `SHAREPOINTENTERPRISE`), with
    /// Graph's 400; for a group's licence, its members get `DependencyViolation`.
    pub plan_dependencies: bool,
    /// Word a licence conflict as Graph does ("… Conflicting Service Plans: X, Y") instead of
    /// the simulator's older "… are mutually exclusive".
    pub graph_conflict_wording: bool,
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
            tenant_writes_per_window: 18_000,
            tenant_write_window_seconds: 300,
            resource_units_per_window: 3500,
            resource_unit_window_seconds: 10,
            throttled_write_applied_probability: 0.0,
            fault_rate: 0.0,
            dropped_connection_rate: 0.0,
            applied_then_fault_rate: 0.0,
            applied_then_dropped_rate: 0.0,
            replication_lag_ms: 0,
            long_lag_probability: 0.0,
            long_lag_ms: 0,
            stale_read_probability: 0.0,
            new_object_write_404_probability: 0.0,
            plan_dependencies: false,
            graph_conflict_wording: false,
        }
    }
}

impl SimulatorBehaviour {
    /// Graph as it is, every unkind behaviour on:
    /// - replication lag of up to 3 s, one write in 50 taking 15 s, and reads served by a
    ///   lagging replica half of the time: app-only callers get no read-your-writes
    ///   (entra-docs `docs/architecture/architecture.md`, "Data consistency");
    /// - a new user or group missing, even to writes, half of the time until replicated
    ///   (SupportArticles: "Request_ResourceNotFound" right after creating an object);
    /// - a few faults, some after the write was applied, and about 30 ms of latency;
    /// - Graph's identity limits for a large tenant (`concepts/throttling-limits.md`: 8,000
    ///   resource units per 10 s, 3,000 writes per 150 s per app, 18,000 per 5 min per tenant).
    ///
    /// No document says a write answered 429 was applied, so that stays off.
    pub fn realistic() -> Self {
        Self {
            latency_ms: 30,
            latency_jitter_ms: 40,
            resource_units_per_window: 8000,
            fault_rate: 0.005,
            dropped_connection_rate: 0.001,
            applied_then_fault_rate: 0.005,
            applied_then_dropped_rate: 0.002,
            replication_lag_ms: 3000,
            long_lag_probability: 0.02,
            long_lag_ms: 15_000,
            stale_read_probability: 0.5,
            new_object_write_404_probability: 0.5,
            plan_dependencies: true,
            graph_conflict_wording: true,
            ..Self::default()
        }
    }

    /// The licensing rules the simulator's directory enforces.
    pub fn licensing_rules(&self) -> crate::state::LicensingRules {
        crate::state::LicensingRules {
            plan_dependencies: self.plan_dependencies,
            graph_conflict_wording: self.graph_conflict_wording,
        }
    }

    /// The figures of `profile`.
    pub fn for_profile(profile: SimulatorProfile) -> Self {
        match profile {
            SimulatorProfile::Default => Self::default(),
            SimulatorProfile::Realistic => Self::realistic(),
        }
    }

    /// Applies a partial JSON object of fields onto this behaviour; unknown fields are rejected.
    /// A `"profile"` key starts from that profile's figures instead of these.
    pub fn patched(&self, patch: &serde_json::Value) -> Result<Self, serde_json::Error> {
        let Some(changes) = patch.as_object() else {
            return Err(serde_json::Error::custom("the patch must be a JSON object"));
        };
        let base = match changes.get("profile") {
            Some(p) => Self::for_profile(serde_json::from_value(p.clone())?),
            None => self.clone(),
        };
        let mut current = serde_json::to_value(base)?;
        if let Some(target) = current.as_object_mut() {
            for (k, v) in changes.iter().filter(|(k, _)| *k != "profile") {
                target.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(current)
    }
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        Self {
            listen_address: "127.0.0.1:8900".to_owned(),
            public_base_url: None,
            seed_file: None,
            client_id: "policy-reconciler-dev".to_owned(),
            client_secret: SecretString::from("simulator-secret"),
            client_certificate_paths: Vec::new(),
            federated_issuers: Vec::new(),
            profile: SimulatorProfile::Default,
            behaviour: SimulatorBehaviour::default(),
        }
    }
}

impl SimulatorSettings {
    /// The runtime-tunable part of these settings.
    pub fn behaviour(&self) -> SimulatorBehaviour {
        self.behaviour.clone()
    }

    /// Settings for tests: listen anywhere, no throttling, no latency, no faults.
    pub fn for_tests() -> Self {
        let mut s = Self {
            listen_address: "127.0.0.1:0".to_owned(),
            ..Self::default()
        };
        s.writes_per_window = 0;
        s.tenant_writes_per_window = 0;
        s.resource_units_per_window = 0;
        s
    }

    /// These settings with `profile`'s behaviour (every behaviour field replaced).
    pub fn with_profile(mut self, profile: SimulatorProfile) -> Self {
        self.profile = profile;
        self.behaviour = SimulatorBehaviour::for_profile(profile);
        self
    }

    /// Test settings ([`Self::for_tests`]'s address) with the realistic profile: Graph's
    /// limits, lag, stale reads and faults.
    pub fn realistic() -> Self {
        Self::for_tests().with_profile(SimulatorProfile::Realistic)
    }
}

/// A string setting, also when the environment layer parsed it as a number or a boolean.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            Some(v.to_string())
        }
        Some(other) => return Err(D::Error::custom(format!("expected a string, got {other}"))),
    })
}

/// The section as read: the settings' own keys, and every other key kept for the behaviour.
#[derive(Deserialize)]
struct RawSimulatorSettings {
    #[serde(default, deserialize_with = "lenient_string")]
    listen_address: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    public_base_url: Option<String>,
    #[serde(default)]
    seed_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient_string")]
    client_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    client_secret: Option<String>,
    #[serde(default)]
    client_certificate_paths: Vec<PathBuf>,
    #[serde(default)]
    federated_issuers: Vec<FederatedIssuer>,
    #[serde(default)]
    profile: Option<SimulatorProfile>,
    #[serde(flatten)]
    behaviour: serde_json::Map<String, serde_json::Value>,
}

impl<'de> Deserialize<'de> for SimulatorSettings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawSimulatorSettings::deserialize(d)?;
        let profile = raw.profile.unwrap_or_default();
        let behaviour = SimulatorBehaviour::for_profile(profile)
            .patched(&serde_json::Value::Object(raw.behaviour))
            .map_err(D::Error::custom)?;
        let d = Self::default();
        Ok(Self {
            listen_address: raw.listen_address.unwrap_or(d.listen_address),
            public_base_url: raw.public_base_url,
            seed_file: raw.seed_file,
            client_id: raw.client_id.unwrap_or(d.client_id),
            client_secret: raw
                .client_secret
                .map_or(d.client_secret, SecretString::from),
            client_certificate_paths: raw.client_certificate_paths,
            federated_issuers: raw.federated_issuers,
            profile,
            behaviour,
        })
    }
}

impl Serialize for SimulatorSettings {
    /// As the configuration file writes the section: the settings' own keys, then every
    /// behaviour key; the client secret as `"(set)"` (or `""`), never its value.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown<'a> {
            listen_address: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            public_base_url: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            seed_file: Option<&'a PathBuf>,
            client_id: &'a str,
            client_secret: &'static str,
            client_certificate_paths: &'a [PathBuf],
            federated_issuers: &'a [FederatedIssuer],
            profile: SimulatorProfile,
            #[serde(flatten)]
            behaviour: &'a SimulatorBehaviour,
        }
        Shown {
            listen_address: &self.listen_address,
            public_base_url: self.public_base_url.as_deref(),
            seed_file: self.seed_file.as_ref(),
            client_id: &self.client_id,
            client_secret: if self.client_secret.expose_secret().is_empty() {
                ""
            } else {
                "(set)"
            },
            client_certificate_paths: &self.client_certificate_paths,
            federated_issuers: &self.federated_issuers,
            profile: self.profile,
            behaviour: &self.behaviour,
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_patch_rejects_unknown_fields() {
        let b = SimulatorBehaviour::default();
        let p = b.patched(&serde_json::json!({"latency_ms": 7})).unwrap();
        assert_eq!(p.latency_ms, 7);
        assert_eq!(p.writes_per_window, b.writes_per_window);
        assert!(b.patched(&serde_json::json!({"nope": 1})).is_err());
        let r = b
            .patched(&serde_json::json!({"profile": "realistic", "fault_rate": 0.5}))
            .unwrap();
        assert_eq!(r.fault_rate, 0.5);
        assert_eq!(
            r.replication_lag_ms,
            SimulatorBehaviour::realistic().replication_lag_ms
        );
    }
}
