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
//! | [`configuration`] | layered, typed, validated settings (`config/*.toml`, `RECONCILER__…`) |
//! | [`telemetry`] | tracing (JSON logs) and every metric name ([`telemetry::metrics`]) |
//! | [`store`] | PostgreSQL: pool, migrations, inbox and jobs, outbox, planned work, desired state, the shared write budget |
//! | [`engine`] | one pipeline for every job kind: plan, claim leased chunks, apply, settle, complete; off-peak windows; a file per kind |
//! | [`broker`] | RabbitMQ: topology, supervised connection, ingest, outbox relay |
//! | [`tenant`] | the `Tenant` trait and its Microsoft Graph client |
//! | [`simulator`] | a Graph-compatible tenant simulator (tests, demos, benchmarks) |
//! | [`http`] | `/metrics`, `/healthz`, `/readyz` |
//! | [`ops`] | operator commands: enqueue from a CSV export, list and show jobs, pause, resume, expedite, cancel |
//! | [`startup`] | wiring the parts into a running worker, graceful shutdown |
//! | [`cli`] | the command line |

pub mod broker;
pub mod cli;
pub mod configuration;
pub mod domain;
pub mod engine;
pub mod http;
pub mod ops;
pub mod simulator;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tenant;
