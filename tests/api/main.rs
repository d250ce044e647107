//! The one integration-test binary. Worker tests talk to the real PostgreSQL and RabbitMQ, each
//! in its own database and with its own queue names; tenant and simulator tests run the
//! simulator in-process on port 0. What they share with the benchmark is in the test kit
//! (`lib/test-kit`, here `kit`); `helpers` holds the API tests' own harness on top of it.
mod approval;
mod check_config;
mod console;
mod console_browser;
mod contract;
mod deploy;
mod docs;
mod drift;
mod ending;
mod fair_share;
mod health;
mod helpers;
mod identity;
mod ingest;
mod interrupt;
mod licensing;
mod ops;
mod outbox;
mod policy;
mod portal;
mod realistic;
mod reconnect;
mod revert;
mod roles;
mod schedule;
mod shutdown;
mod simulator;
mod simulator_realism;
mod simulator_surface;
mod tenant;
mod throttle;

/// The test kit shared with the benchmark, as `crate::kit`.
use test_kit as kit;
