//! The one integration-test binary: every test talks to real PostgreSQL, RabbitMQ and the simulator.
mod sim_helpers;
mod simulator;
mod tenant;
