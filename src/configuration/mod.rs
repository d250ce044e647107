//! Layered, typed, validated configuration.
//!
//! Sources, later ones winning: `config/default.toml` (every key, documented), the optional
//! `config/local.toml`, an optional file named with `--config`, then `RECONCILER__SECTION__KEY`
//! environment variables, then keys set by a command-line flag (`tenant-simulator --profile`).
//! Everything is parsed into [`Settings`] with `deny_unknown_fields`.
//! Values are parsed into their final types as they are read (`NonZero…` for counts and
//! durations that must be at least 1, [`SocketAddr`] for the listen address, the off-peak
//! windows and their time zone), so a bad value fails the load with a message naming its key,
//! and no code re-checks them. [`Settings::validate`] then checks what involves several keys.
//! Secrets are [`secrecy::SecretString`], so `Debug` (and therefore logs and `check-config`)
//! never shows them.
//!
//! This module holds the settings of every part (one file per `[section]`), and depends on no
//! other part of the crate: parts use their settings from here (`tenant` re-exports its own), so
//! every arrow points into `configuration`, none out of it. The one exception is `[simulator]`,
//! whose settings the simulator crate defines (it is a crate of its own, below this one).

mod approval;
mod broker;
mod console;
mod database;
mod drift;
mod effective;
mod engine;
mod licensing;
mod parse;
mod roles;
mod schedule;
#[cfg(feature = "simulator")]
mod simulator;
mod tenant;

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use approval::ApprovalSettings;
pub use broker::{BrokerSettings, Topology};
pub use console::{ConsoleRole, ConsoleSettings, ConsoleToken};
pub use database::DatabaseSettings;
pub use drift::{DriftMode, DriftSettings};
pub use effective::Origin;
pub use engine::{EngineSettings, RevertSettings};
pub use licensing::{LicensingSettings, PlanDependency};
pub use roles::{ODS_CODE_PLACEHOLDER, RoleSettings};
pub use schedule::{OffPeakWindow, ScheduleSettings, TimeOfDay};
#[cfg(feature = "simulator")]
pub use simulator::{
    FEDERATED_AUDIENCE, FederatedIssuer, SimulatorBehaviour, SimulatorProfile, SimulatorSettings,
};
pub use tenant::{Credential, TenantSettings};

use parse::{at_least_one, socket_address};

/// The whole configuration of a worker process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub worker: WorkerSettings,
    pub log: LogSettings,
    pub http: HttpSettings,
    pub console: ConsoleSettings,
    pub database: DatabaseSettings,
    pub broker: BrokerSettings,
    pub outbox: OutboxSettings,
    pub engine: EngineSettings,
    pub schedule: ScheduleSettings,
    pub roles: RoleSettings,
    pub tenant: TenantSettings,
    /// The built-in tenant simulator's settings (the `simulator` feature).
    #[cfg(feature = "simulator")]
    pub simulator: SimulatorSettings,
    /// A build without the simulator reads `[simulator]` (it is in `config/default.toml`) and
    /// ignores it, so one configuration file serves both builds.
    #[cfg(not(feature = "simulator"))]
    #[serde(default, rename = "simulator", skip_serializing)]
    pub _simulator: serde::de::IgnoredAny,
}

/// Process-wide behaviour of a worker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Name of this replica in logs and broker connection names; empty means the host name.
    pub instance_name: String,
    /// How long a SIGTERM may take: in-flight messages finish or go back to the broker, the
    /// outbox is flushed, then the process exits 0. Kubernetes' termination grace must be longer.
    #[serde(deserialize_with = "at_least_one")]
    pub shutdown_grace_seconds: NonZeroU64,
}

/// Log output.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A `tracing` filter directive such as `info` or `policy_reconciler=debug,info`;
    /// `RUST_LOG`, when set, wins.
    pub level: String,
    /// `json` (one object a line, for log shippers), `pretty` (for a terminal), or `auto`
    /// (pretty when standard output is a terminal, JSON otherwise).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Pretty,
    Auto,
}

/// The operational HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// `host:port` (an IP address); port 0 picks a free port (tests).
    #[serde(deserialize_with = "socket_address")]
    pub listen_address: SocketAddr,
}

/// The relay that publishes stored events.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    /// Upper bound on the delay between an event's commit and its publication when no
    /// notification arrives (a notification wakes the relay at once).
    #[serde(deserialize_with = "at_least_one")]
    pub poll_interval_ms: NonZeroU64,
    /// Events published per transaction; each batch waits for the broker's confirms.
    #[serde(deserialize_with = "at_least_one")]
    pub batch_size: NonZeroU32,
}

impl OutboxSettings {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.get())
    }
}

impl WorkerSettings {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds.get())
    }

    /// The configured instance name, or the host name, or `worker`.
    pub fn instance_name(&self) -> String {
        if !self.instance_name.is_empty() {
            return self.instance_name.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "worker".to_owned())
    }
}

/// Why the configuration could not be loaded. Always permanent: fix the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
    /// The settings could not be written as TOML (`check-config`): a bug, not a bad value.
    #[error("cannot show the configuration as TOML: {0}")]
    Show(String),
}

impl ConfigError {
    fn invalid(key: &'static str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            problem: problem.into(),
        }
    }
}

/// Where to find the configuration files.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// Directory holding `default.toml` and the optional `local.toml`; `config` in the
    /// working directory, else the one beside the crate's manifest (so tests and `cargo run`
    /// work from anywhere).
    pub dir: Option<PathBuf>,
    /// An extra file (`--config`), applied after `local.toml`.
    pub file: Option<PathBuf>,
    /// Keys given on the command line (`simulator.profile` from `tenant-simulator --profile`),
    /// winning over every layer.
    pub overrides: Vec<(String, String)>,
}

impl ConfigSources {
    /// Every layer, later ones winning: `default.toml`, `local.toml`, the `--config` file, the
    /// `RECONCILER__…` variables of `environment`, the command line's keys.
    fn build(&self, environment: config::Environment) -> Result<config::Config, ConfigError> {
        let dir = self.dir();
        let mut builder = config::Config::builder()
            .add_source(config::File::from(dir.join("default.toml")).required(true))
            .add_source(config::File::from(dir.join("local.toml")).required(false));
        if let Some(file) = &self.file {
            builder = builder.add_source(config::File::from(file.as_path()).required(true));
        }
        builder = builder.add_source(
            environment
                .prefix("RECONCILER")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        for (key, value) in &self.overrides {
            builder = builder.set_override(key.as_str(), value.as_str())?;
        }
        Ok(builder.build()?)
    }

    fn dir(&self) -> PathBuf {
        if let Some(dir) = &self.dir {
            return dir.clone();
        }
        let local = PathBuf::from("config");
        if local.join("default.toml").exists() {
            return local;
        }
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
    }
}

impl Settings {
    /// Load every layer, parse and validate.
    pub fn load(sources: &ConfigSources) -> Result<Self, ConfigError> {
        Self::load_with(sources, config::Environment::default())
    }

    /// As [`Settings::load`], with the environment layer supplied (tests pass a fixed map).
    pub fn load_with(
        sources: &ConfigSources,
        environment: config::Environment,
    ) -> Result<Self, ConfigError> {
        let mut settings: Settings = sources.build(environment)?.try_deserialize()?;
        // The workload identity webhook's variables (only with `tenant.credential = "federated"`).
        settings
            .tenant
            .apply_azure_environment(|k| std::env::var(k).ok());
        settings.validate()?;
        Ok(settings)
    }

    /// Reject values that parse but cannot work together, naming the key (single values were
    /// checked as they were read).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database.validate()?;
        self.broker.validate()?;
        self.engine.validate()?;
        self.roles.validate()?;
        self.tenant.validate()?;
        self.console.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> config::Environment {
        config::Environment::default().source(Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ))
    }

    #[test]
    fn defaults_load_and_validate() {
        let settings = Settings::load_with(&ConfigSources::default(), env(&[])).unwrap();
        assert_eq!(settings.broker.topology.jobs_queue, "reconciler.jobs");
        assert_eq!(
            settings.broker.topology.events_exchange,
            "reconciler.events"
        );
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let settings = Settings::load_with(
            &ConfigSources::default(),
            env(&[
                ("RECONCILER__BROKER__PREFETCH_COUNT", "7"),
                ("RECONCILER__BROKER__TOPOLOGY__JOBS_QUEUE", "other.jobs"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.broker.prefetch_count.get(), 7);
        assert_eq!(settings.broker.topology.jobs_queue, "other.jobs");
    }

    #[test]
    fn bad_values_name_their_key() {
        let error = Settings::load_with(
            &ConfigSources::default(),
            env(&[("RECONCILER__BROKER__PREFETCH_COUNT", "0")]),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("broker.prefetch_count"),
            "{error}"
        );

        let error = Settings::load_with(
            &ConfigSources::default(),
            env(&[("RECONCILER__HTTP__LISTEN_ADDRESS", "nowhere")]),
        )
        .unwrap_err();
        assert!(error.to_string().contains("http.listen_address"), "{error}");
        assert!(error.to_string().contains("is not host:port"), "{error}");

        for key in [
            "ENGINE__CHUNK_SIZE",
            "OUTBOX__BATCH_SIZE",
            "TENANT__MAX_ATTEMPTS",
        ] {
            let error = Settings::load_with(
                &ConfigSources::default(),
                env(&[(&format!("RECONCILER__{key}"), "0")]),
            )
            .unwrap_err()
            .to_string();
            let name = key.to_lowercase().replace("__", ".");
            assert!(error.contains(&format!("`{name}`")), "{error}");
            assert!(error.contains("must be at least 1"), "{error}");
        }

        let error = Settings::load_with(
            &ConfigSources::default(),
            env(&[("RECONCILER__SCHEDULE__TIME_ZONE", "Mars/Olympus")]),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("schedule.time_zone"), "{error}");
        assert!(error.contains("is not an IANA time zone"), "{error}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error = Settings::load_with(
            &ConfigSources::default(),
            env(&[("RECONCILER__BROKER__PREFETCH", "7")]),
        )
        .unwrap_err();
        assert!(error.to_string().contains("prefetch"), "{error}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let settings = Settings::load_with(
            &ConfigSources::default(),
            env(&[
                ("RECONCILER__DATABASE__PASSWORD", "db-hunter2"),
                ("RECONCILER__BROKER__PASSWORD", "amqp-hunter2"),
            ]),
        )
        .unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
    }
}
