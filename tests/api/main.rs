//! The one integration-test binary: every test talks to real PostgreSQL, RabbitMQ and the
//! simulator, each in its own database and with its own queue names.
mod health;
mod helpers;
mod ingest;
mod outbox;
mod reconnect;
mod shutdown;
mod simulator;
mod tenant;
