//! The one integration-test binary. Worker tests talk to the real PostgreSQL and RabbitMQ, each
//! in its own database and with its own queue names; tenant and simulator tests run the
//! simulator in-process on port 0.
mod deploy;
mod health;
mod helpers;
mod ingest;
mod ops;
mod outbox;
mod policy;
mod portal;
mod reconnect;
mod roles;
mod schedule;
mod shutdown;
mod sim_helpers;
mod simulator;
mod tenant;
mod throttle;
