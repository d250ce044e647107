//! The one integration-test binary: every test talks to real PostgreSQL, RabbitMQ and the simulator.
mod simulator;
mod tenant;
