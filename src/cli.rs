//! The command line: `run`, `migrate`, `tenant-simulator`, `check-config`, `demo`,
//! `permissions`, `contract`, and the operator commands `enqueue` and `jobs …` (their logic lives in
//! [`crate::ops`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::ops::{EnqueueKind, EnqueueRequest, StateFilter};

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

/// The commands. `demo`, `tenant-simulator` and `run --with-simulator` need the `simulator`
/// feature, `dev-certificate` the `dev-certificate` feature (both on by default; a production
/// build leaves them out).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a worker: consume jobs, reconcile, publish events, until SIGTERM.
    Run(RunArgs),
    #[cfg(feature = "simulator")]
    /// The main job end to end on this machine: a simulated tenant with USERS users, a worker,
    /// a `policy.changed` published as the portal would, its `job.completed`; then exit.
    Demo {
        /// Users of the demo policy.
        #[arg(long, default_value_t = 300)]
        users: usize,
        /// The simulated tenant's `simulator.profile`: `realistic` (the default here) lags,
        /// fails now and then and throttles as Graph does; `default` is a kind tenant.
        #[arg(long, value_parser = ["default", "realistic"], default_value = "realistic")]
        profile: String,
    },
    /// Create the database if allowed and apply the embedded migrations, then exit.
    Migrate,
    /// Load and validate the configuration and print it as TOML in the form of
    /// config/default.toml (secrets as "(set)"), with the keys set above config/default.toml
    /// and the layer that set each, and the tenant credential in use (never key material).
    CheckConfig,
    #[cfg(feature = "dev-certificate")]
    /// Write a self-signed certificate and its RSA private key (`NAME.crt`, `NAME.key`) for the
    /// certificate credential, for development and the simulator; prints their paths and the
    /// certificate's `x5t#S256`, never the key.
    DevCertificate {
        /// Directory to write into (created if missing; existing files are not overwritten).
        #[arg(long, default_value = ".")]
        out_dir: std::path::PathBuf,
        /// File name stem of the pair.
        #[arg(long, default_value = "policy-reconciler")]
        name: String,
        /// The certificate's common name.
        #[arg(long, default_value = "policy-reconciler-dev")]
        common_name: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    #[cfg(feature = "simulator")]
    /// Serve the Graph-compatible tenant simulator until SIGTERM.
    TenantSimulator {
        /// `host:port` to listen on (default: `simulator.listen_address`).
        #[arg(long)]
        listen: Option<String>,
        /// `simulator.profile`: `realistic` turns on replication lag, stale reads, faults
        /// (some after the write was applied) and latency; keys set in the configuration
        /// still win over the profile's figures.
        #[arg(long, value_parser = ["default", "realistic"])]
        profile: Option<String>,
    },
    /// Print what a Phone System Primary and Local admin may do, for their own organisation
    /// and for the other organisations of their ODS mapping.
    Permissions,
    /// Print the message contract: the AsyncAPI 3.0 document, or with `--schema NAME` the
    /// JSON Schema of one job message or event (NAME is its type, e.g. `policy.changed`).
    Contract {
        #[arg(long, value_name = "NAME")]
        schema: Option<String>,
    },
    /// Publish a policy job for the members of a portal CSV export (`Email Address` column),
    /// with publisher confirms; prints its message_id and the member count.
    Enqueue(EnqueueArgs),
    /// Publish a job message from a file as it is (replay a fixed dead letter, send a full
    /// policy definition); routing key = its `type` unless given. Confirmed by the broker.
    Publish {
        file: PathBuf,
        #[arg(long)]
        routing_key: Option<String>,
    },
    /// Inspect and control jobs (reads and writes the database).
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Drift sweeps (`engine.drift`).
    Drift {
        #[command(subcommand)]
        command: DriftCommand,
    },
}

/// `drift …`.
#[derive(Debug, Subcommand)]
pub enum DriftCommand {
    /// Store a drift sweep now: a `drift.sweep` job per stored policy (listed by `jobs list`).
    /// Its jobs run in the next off-peak window (`jobs expedite ID` runs one now).
    Sweep {
        /// `repair` or `report` (default: `engine.drift.mode`).
        #[arg(long, value_parser = ["repair", "report"])]
        mode: Option<String>,
    },
}

/// `run`'s flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Also serve the built-in tenant simulator in this process, at
    /// `simulator.listen_address`, and point the tenant client at it (demos, local runs).
    #[cfg(feature = "simulator")]
    #[arg(long)]
    pub with_simulator: bool,
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The portal's CSV export; malformed and duplicate addresses are sent as they are, for
    /// the worker to fail with a code.
    #[arg(long, value_name = "FILE")]
    pub from_csv: PathBuf,
    /// The policy id.
    #[arg(long, value_name = "ID")]
    pub policy: String,
    /// `members-added` adds the members; `changed` sends the stored definition with the list
    /// as the whole membership.
    #[arg(long, value_enum, default_value_t = EnqueueKind::MembersAdded)]
    pub kind: EnqueueKind,
    /// The ticket's reference (needs --originator).
    #[arg(long, value_name = "REF", requires = "originator")]
    pub ticket: Option<String>,
    /// The ticket's originator (needs --ticket).
    #[arg(long, value_name = "EMAIL", requires = "ticket")]
    pub originator: Option<String>,
    /// The actor's email (needs --actor-ods).
    #[arg(long, value_name = "EMAIL", requires = "actor_ods")]
    pub actor_email: Option<String>,
    /// The actor's ODS code (needs --actor-email).
    #[arg(long, value_name = "ODS", requires = "actor_email")]
    pub actor_ods: Option<String>,
    /// The job's `dry_run`: the worker plans and reports, writing nothing to the tenant.
    #[arg(long)]
    pub dry_run: bool,
    /// The job's message_id (idempotency key); a fresh UUID by default.
    #[arg(long, value_name = "ID")]
    pub message_id: Option<String>,
}

impl EnqueueArgs {
    pub fn request(self) -> EnqueueRequest {
        EnqueueRequest {
            csv: self.from_csv,
            policy_id: self.policy,
            kind: self.kind,
            ticket: self.ticket,
            originator: self.originator,
            actor_email: self.actor_email,
            actor_ods: self.actor_ods,
            dry_run: self.dry_run,
            message_id: self.message_id,
        }
    }
}

/// `jobs …`. ID is a job's id or its message_id.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// The most recent jobs: id, type, state, outcome, progress, ticket, received, flags
    /// (the same filters and search as the console's job list).
    List {
        #[arg(long, value_enum)]
        state: Option<StateFilter>,
        /// A job type (`policy.changed`, …).
        #[arg(long = "type", value_name = "TYPE")]
        job_type: Option<String>,
        /// `succeeded`, `partially_succeeded`, `failed` or `rejected`.
        #[arg(long)]
        outcome: Option<String>,
        /// The policy's or the job's ODS code.
        #[arg(long, value_name = "ODS")]
        ods: Option<String>,
        /// `paused`, `expedited`, `dry_run`, `held` or `awaiting_approval`.
        #[arg(long, value_parser = ["paused", "expedited", "dry_run", "held", "awaiting_approval"])]
        flag: Option<String>,
        /// A ticket reference, message_id, job id, policy id or a user's email.
        #[arg(long, value_name = "TEXT")]
        search: Option<String>,
        /// Page number, from 1.
        #[arg(long, default_value_t = 1)]
        page: u32,
        /// Jobs per page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Follow a job until it completes: a progress bar, then its outcome.
    Watch {
        id: String,
        /// How often to look, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        every_ms: u64,
    },
    /// One job: state, schedule, timestamps, items by outcome, chunks, failures.
    Show { id: String },
    /// Claim no new chunk of an unfinished job (chunks running finish).
    Pause {
        id: String,
        #[command(flatten)]
        who: Who,
    },
    /// Undo `pause`.
    Resume {
        id: String,
        #[command(flatten)]
        who: Who,
    },
    /// Run an unfinished job now, outside the off-peak windows.
    Expedite {
        id: String,
        #[command(flatten)]
        who: Who,
    },
    /// End an unfinished job: open items skipped, completed with one job.completed.
    Cancel {
        id: String,
        #[command(flatten)]
        who: Who,
    },
    /// Run a job awaiting approval (its effect was over `engine.approval`'s thresholds).
    Approve {
        id: String,
        #[command(flatten)]
        who: Who,
    },
    /// Undo a completed policy job: a new job restores every user it changed to their
    /// licence and disabled plans of before (users changed since by a later job are skipped
    /// as `superseded`).
    Revert {
        id: String,
        #[command(flatten)]
        who: Who,
    },
}

/// Who uses an operator control and why: recorded with the time, shown by `jobs show` and
/// carried in the job's `job.completed` (`subject.operator_actions`).
#[derive(Debug, clap::Args)]
pub struct Who {
    /// The operator's name.
    #[arg(long)]
    pub by: String,
    /// Why (a ticket reference, a sentence).
    #[arg(long)]
    pub reason: String,
}

impl Who {
    pub fn operator(&self) -> crate::ops::Operator<'_> {
        crate::ops::Operator {
            by: &self.by,
            reason: &self.reason,
        }
    }
}

/// The output of `policy-reconciler permissions`: the permissions table of the two Phone
/// System admin roles.
pub fn permissions() -> String {
    crate::domain::permissions::render_table()
}

/// The output of `policy-reconciler contract [--schema NAME]`.
pub fn contract(schema: Option<&str>) -> Result<String, crate::contract::UnknownSchema> {
    crate::contract::document(schema)
}

impl Cli {
    pub fn sources(&self) -> crate::configuration::ConfigSources {
        #[allow(unused_mut)] // nothing to push without the simulator
        let mut overrides = Vec::new();
        #[cfg(feature = "simulator")]
        if let Command::TenantSimulator {
            profile: Some(profile),
            ..
        } = &self.command
        {
            overrides.push(("simulator.profile".to_owned(), profile.clone()));
        }
        #[cfg(feature = "simulator")]
        if let Command::Demo { profile, .. } = &self.command {
            overrides.push(("simulator.profile".to_owned(), profile.clone()));
        }
        crate::configuration::ConfigSources {
            dir: self.config_dir.clone(),
            file: self.config.clone(),
            overrides,
        }
    }
}
