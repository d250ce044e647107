//! RabbitMQ, the pipe: topology, the supervised connection, job ingest and the outbox relay.
//!
//! * [`topology`] declares the contract's exchanges and queues.
//! * [`supervisor`] owns the connection: when it is lost, the supervisor rebuilds everything
//!   with backoff (each rebuild counted); `/readyz` says not ready meanwhile.
//! * [`ingest`] consumes jobs: store and commit, then acknowledge; bad input is dead-lettered
//!   with coded headers; while the database is unreachable it takes no deliveries at all.
//! * [`relay`] publishes the outbox with publisher confirms.

mod events;
pub mod ingest;
pub mod relay;
pub mod supervisor;
pub mod topology;

pub use supervisor::Supervisor;

use crate::store::StoreError;

/// A broker-side failure. Connection trouble is transient (rebuild and carry on); a topology
/// that contradicts an existing declaration is permanent until an operator fixes it.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker connection failed: {0}")]
    Connection(#[source] lapin::Error),
    #[error("declaring the topology failed: {0}")]
    Topology(#[source] lapin::Error),
    #[error("the broker refused to confirm a publication")]
    Nacked,
    #[error("broker connection lost: {0}")]
    Lost(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BrokerError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connection(_) | Self::Nacked | Self::Lost(_) => true,
            Self::Topology(e) => e.is_io_error(),
            Self::Store(e) => e.is_transient(),
        }
    }
}
