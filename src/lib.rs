//! # policy-reconciler
//!
//! Keeps Microsoft 365 licences, application toggles, Phone System admin roles and portal
//! access right for the users of a national email platform. The admin portal publishes jobs
//! to RabbitMQ; workers store them in PostgreSQL, plan them, apply them to the tenant through
//! Microsoft Graph, verify by reading back, and publish completion events that resolve the
//! resolver team's tickets.
//!
//! PostgreSQL is the source of truth and RabbitMQ the pipe: a message is acknowledged only
//! after its job is committed, and events leave through a transactional outbox with
//! publisher confirms.
//!
//! ## Map of the crate
//!
//! | module | part |
//! |---|---|
//! | [`domain`] | the contract's language: job messages, events, failure codes, value types |
//! | [`configuration`] | layered settings (`config/*.toml`, `RECONCILER__…`), parsed into their final types |
//! | [`telemetry`] | tracing (JSON logs), every metric name, and the internal-event trait that logs and counts together |
//! | [`store`] | PostgreSQL and every query: the inbox, the job lifecycle (planning, chunks and leases, completion, operator controls), the outbox, desired state, the shared write budget |
//! | [`engine`] | one pipeline for every job kind: planner, executor (leased chunks), monitor, the one item retry policy, and the typed kinds (a file per kind) registered in [`startup`] |
//! | [`broker`] | RabbitMQ: topology, supervised connection, ingest, outbox relay |
//! | [`tenant`] | the `Tenant` trait and its Microsoft Graph client (transport, `$batch`, calls) |
//! | [`simulator`] | the Graph-compatible tenant simulator, a crate of its own (`lib/graph-simulator`) re-exported with the `simulator` feature (tests, demos, benchmarks) |
//! | [`http`] | `/metrics`, `/healthz`, `/readyz` |
//! | [`console`] | the operator console: JSON API (`/api/v1`) and pages (`/console`), with its authentication |
//! | [`ops`] | operator commands: enqueue from a CSV export, list and show jobs, pause, resume, expedite, cancel |
//! | [`startup`] | wiring the parts into a running worker (the job kinds' registration), graceful shutdown |
//! | [`cli`] | the command line |
//!
//! ## Which way the arrows point
//!
//! `domain`, `configuration` and `telemetry` depend on no other part. `store` and `tenant`
//! build on them; the `engine` on the store and the tenant; `broker` and `http` on the store
//! (and the engine's wake-ups); `ops` and `startup` on everything. Each part declares its own
//! internal events (`*/events.rs`); nothing points back up. Adding a job kind is a checklist in
//! docs/development.md ("Adding a job kind").

pub mod broker;
pub mod cli;
pub mod configuration;
pub mod console;
pub mod contract;
pub mod domain;
pub mod engine;
pub mod http;
pub mod ops;
/// The built-in tenant simulator (its own crate, [`graph_simulator`]), with the `simulator`
/// feature.
#[cfg(feature = "simulator")]
pub use graph_simulator as simulator;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tenant;
