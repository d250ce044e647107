//! What happens at the broker edge, each logged and counted together (see
//! [`crate::telemetry::event`]).

use std::time::Duration;

use super::ingest::IngestOutcome;
use crate::domain::FailureCode;
use crate::telemetry::InternalEvent;
use crate::telemetry::metrics as m;

/// A job message was taken from the queue and acknowledged.
pub struct MessageIngested {
    pub outcome: IngestOutcome,
    pub took: Duration,
}

impl InternalEvent for MessageIngested {
    fn emit(self) {
        tracing::debug!(outcome = self.outcome.as_str(), "message ingested");
        metrics::counter!(m::MESSAGES_RECEIVED_TOTAL, "outcome" => self.outcome.as_str())
            .increment(1);
        metrics::histogram!(m::INGEST_DURATION_SECONDS).record(self.took.as_secs_f64());
    }
}

/// The worker dead-lettered a message it cannot process (confirmed by the broker).
pub struct MessageDeadLettered {
    pub code: FailureCode,
}

impl InternalEvent for MessageDeadLettered {
    fn emit(self) {
        metrics::counter!(m::DEAD_LETTERS_TOTAL, "code" => self.code.as_str()).increment(1);
    }
}

/// The database refused a decoded job's values (a size or character that decoding did not
/// catch): the message is dead-lettered with a code instead of being redelivered.
pub struct MessageRefusedByDatabase<'a> {
    pub error: &'a crate::store::StoreError,
}

impl InternalEvent for MessageRefusedByDatabase<'_> {
    fn emit(self) {
        tracing::warn!(error = %self.error, "the database refused the message's values; dead-lettering it");
    }
}

/// A rejection was dead-lettered but could not be recorded (no `job.completed`): its ticket
/// was left out and it was recorded without, or (`recorded: false`) not at all.
pub struct RejectionNotRecordedAsIs<'a> {
    pub error: &'a crate::store::StoreError,
    pub recorded: bool,
}

impl InternalEvent for RejectionNotRecordedAsIs<'_> {
    fn emit(self) {
        if self.recorded {
            tracing::warn!(error = %self.error, "the rejection's ticket cannot be stored; recorded without it");
        } else {
            tracing::error!(error = %self.error, "the rejection cannot be recorded; the dead letter stands alone");
        }
    }
}

/// Publishing outbox events failed; they stay pending.
pub struct OutboxPublishFailed;

impl InternalEvent for OutboxPublishFailed {
    fn emit(self) {
        metrics::counter!(m::OUTBOX_PUBLISH_FAILURES_TOTAL).increment(1);
    }
}

/// The broker confirmed a batch of events, by event type.
pub struct OutboxPublished<'a> {
    pub event_types: &'a [&'a str],
}

impl InternalEvent for OutboxPublished<'_> {
    fn emit(self) {
        for event_type in self.event_types {
            let label = m::EVENT_TYPES
                .iter()
                .find(|t| *t == event_type)
                .copied()
                .unwrap_or("other");
            metrics::counter!(m::OUTBOX_PUBLISHED_TOTAL, "type" => label).increment(1);
        }
        tracing::debug!(count = self.event_types.len(), "events published");
    }
}

/// The outbox backlog as the relay measured it.
pub struct OutboxBacklog {
    pub pending: i64,
    pub oldest_age: Duration,
}

impl InternalEvent for OutboxBacklog {
    fn emit(self) {
        metrics::gauge!(m::OUTBOX_PENDING).set(self.pending as f64);
        metrics::gauge!(m::OUTBOX_OLDEST_PENDING_AGE_SECONDS).set(self.oldest_age.as_secs_f64());
    }
}

/// The supervisor rebuilt the broker connection after a loss (every recovery is one: lapin's
/// own recovery is off, see [`super::supervisor`]).
pub struct BrokerReconnected;

impl InternalEvent for BrokerReconnected {
    fn emit(self) {
        tracing::info!("broker connection rebuilt");
        metrics::counter!(m::BROKER_RECONNECTS_TOTAL).increment(1);
    }
}

/// The broker connection was lost (or a part of the session failed); the supervisor rebuilds
/// it. Expected in operation (broker restarts, network cuts), so a warning, not an error.
pub struct BrokerConnectionLost<'a> {
    pub error: &'a super::BrokerError,
}

impl InternalEvent for BrokerConnectionLost<'_> {
    fn emit(self) {
        tracing::warn!(error = %self.error, "broker connection lost; reconnecting");
    }
}

/// The broker cannot be reached (or refused the topology); the supervisor retries.
pub struct BrokerUnreachable<'a> {
    pub error: &'a super::BrokerError,
    pub retry_in: Duration,
}

impl InternalEvent for BrokerUnreachable<'_> {
    fn emit(self) {
        tracing::warn!(error = %self.error, retry_in = ?self.retry_in, "cannot reach the broker; retrying");
    }
}

/// The existing jobs queue has other arguments than the settings ask for; the worker keeps
/// serving with the queue's own settings.
pub struct QueueSettingsDiffer<'a> {
    /// What differs and what to do.
    pub notice: &'a str,
}

impl InternalEvent for QueueSettingsDiffer<'_> {
    fn emit(self) {
        tracing::warn!(
            notice = self.notice,
            "jobs queue settings differ from the configuration"
        );
    }
}

/// Ingest stopped taking deliveries because the database does not answer.
pub struct IngestPaused<'a> {
    pub error: &'a str,
    /// Deliveries handed back to the queue.
    pub returned: usize,
}

impl InternalEvent for IngestPaused<'_> {
    fn emit(self) {
        tracing::warn!(
            error = self.error,
            returned = self.returned,
            "database unreachable: ingest paused, jobs wait in the queue"
        );
    }
}

/// The database answers again; ingest takes deliveries again.
pub struct IngestResumed;

impl InternalEvent for IngestResumed {
    fn emit(self) {
        tracing::info!("database reachable: ingest resumed");
    }
}

/// A queue's depth, read passively.
pub struct QueueDepth {
    /// One of [`m::QUEUES`].
    pub queue: &'static str,
    pub messages: u32,
}

impl InternalEvent for QueueDepth {
    fn emit(self) {
        metrics::gauge!(m::QUEUE_MESSAGES, "queue" => self.queue).set(f64::from(self.messages));
    }
}

/// The broker connection came up or went away (readiness follows it).
pub struct BrokerConnection {
    pub connected: bool,
}

impl InternalEvent for BrokerConnection {
    fn emit(self) {
        metrics::gauge!(m::BROKER_CONNECTED).set(if self.connected { 1.0 } else { 0.0 });
    }
}
