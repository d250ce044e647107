//! The command line: `run`, `migrate`, `tenant-simulator`, `check-config`, `permissions`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Keeps Microsoft 365 licences, toggles, admin roles and portal access right, from the
/// portal's jobs.
#[derive(Debug, Parser)]
#[command(name = "policy-reconciler", version, about)]
pub struct Cli {
    /// An extra configuration file, applied over config/default.toml and config/local.toml.
    #[arg(long, global = true, env = "RECONCILER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of default.toml and local.toml (default: ./config).
    #[arg(long, global = true)]
    pub config_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a worker: consume jobs, reconcile, publish events, until SIGTERM.
    Run {
        /// Also serve the built-in tenant simulator in this process, at
        /// `simulator.listen_address`, and point the tenant client at it (demos, local runs).
        #[arg(long)]
        with_simulator: bool,
    },
    /// Create the database if allowed and apply the embedded migrations, then exit.
    Migrate,
    /// Load and validate the configuration and print it, secrets redacted.
    CheckConfig,
    /// Serve the Graph-compatible tenant simulator until SIGTERM.
    TenantSimulator {
        /// `host:port` to listen on (default: `simulator.listen_address`).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Print what a Phone System Primary and Local admin may do, for their own organisation
    /// and for the other organisations of their ODS mapping.
    Permissions,
}

/// The output of `policy-reconciler permissions`: the permissions table of the two Phone
/// System admin roles.
pub fn permissions() -> String {
    crate::domain::permissions::render_table()
}

impl Cli {
    pub fn sources(&self) -> crate::configuration::ConfigSources {
        crate::configuration::ConfigSources {
            dir: self.config_dir.clone(),
            file: self.config.clone(),
        }
    }
}
