//! Job ingest: each delivery is decoded, stored and committed, and only then acknowledged.
//!
//! * A valid job is stored with its inbox entry in one transaction; a `message_id` seen before
//!   is acknowledged without a second job.
//! * A message that can never be processed is published to the dead-letter exchange with
//!   `x-reconciler-error`/`x-reconciler-detail` headers (confirmed by the broker), its rejection
//!   is recorded with a `job.completed` (`rejected`) when its `message_id` is known, and only
//!   then is it acknowledged. Publishing before recording means a crash in between can only
//!   duplicate a dead letter, never lose one.
//! * A transient failure (database down) is retried with backoff while the message stays
//!   unacknowledged; on shutdown the message is left to the broker, which redelivers it.
//! * A job whose values the database refuses (SQLSTATE classes 22 and 54, which no retry can
//!   cure) is dead-lettered as `invalid_message` with the database's reason, like any message
//!   that can never be processed: it is never redelivered until the delivery limit drops it
//!   without a code. Decoding already rejects what is known not to be storable
//!   ([`crate::domain::limits`]); this is the safety net.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::events::{
    MessageDeadLettered, MessageIngested, MessageRefusedByDatabase, RejectionNotRecordedAsIs,
};
use super::topology::long_string;
use super::{BrokerError, wait_for_recovery};
use crate::configuration::Topology;
use crate::domain::limits::{MAX_DETAIL_BYTES, storable_text};
use crate::domain::{FailureCode, JobMessage, Rejection, decode_job};
use crate::engine::Wakeup;
use crate::store::StoreError;
use crate::store::inbox::{self, Recorded};
use crate::telemetry::emit;

/// What ingesting one delivery did (the `outcome` label of
/// [`crate::telemetry::metrics::MESSAGES_RECEIVED_TOTAL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    Stored,
    Duplicate,
    DeadLettered,
}

impl IngestOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Duplicate => "duplicate",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// Everything a delivery handler needs; shared by the concurrent handlers of one session.
pub struct Ingest {
    pub pool: PgPool,
    /// A channel in confirm mode, for dead letters.
    pub publisher: Channel,
    pub topology: Topology,
    /// Cancelled on shutdown: transient retries stop and the message goes back to the broker.
    pub shutdown: CancellationToken,
    /// Nudged for every new job, once it is committed.
    pub jobs_stored: Wakeup,
}

/// Consume until `stop` is cancelled (then cancel the consumer and let in-flight deliveries
/// finish) or the channel fails beyond lapin's recovery (then return the error).
pub async fn consume(
    ingest: Arc<Ingest>,
    channel: Channel,
    mut consumer: Consumer,
    recovery_timeout: Duration,
    stop: CancellationToken,
) -> Result<(), BrokerError> {
    let mut in_flight = JoinSet::new();
    let result = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let ingest = ingest.clone();
                    in_flight.spawn(async move { ingest.handle(delivery).await });
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "consumer error; waiting for recovery");
                    if let Err(error) = wait_for_recovery(&channel, error, recovery_timeout).await {
                        break Err(error);
                    }
                }
                None => break Err(BrokerError::Lost("the consumer was cancelled")),
            },
        }
    };
    // Stop deliveries; bounded, as a channel mid-recovery may never answer.
    if channel.status().connected() {
        let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
        if tokio::time::timeout(Duration::from_secs(2), cancel)
            .await
            .is_err()
        {
            tracing::warn!("consumer cancel not confirmed; deliveries stop with the connection");
        }
    }
    tracing::debug!(
        in_flight = in_flight.len(),
        "consumer stopped; draining in-flight messages"
    );
    while in_flight.join_next().await.is_some() {}
    tracing::debug!("ingest drained");
    result
}

impl Ingest {
    /// Handle one delivery to the end: acknowledged, or left to the broker.
    pub async fn handle(&self, delivery: Delivery) {
        let started = Instant::now();
        let amqp_message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned());
        let decoded = decode_job(&delivery.data, amqp_message_id.as_deref());
        let span = match &decoded {
            Ok(job) => tracing::info_span!(
                "ingest",
                message_id = %job.message_id,
                job_type = %job.job_type,
                ticket = job.ticket.as_ref().map(|t| t.reference.as_str()),
                job_id = tracing::field::Empty,
            ),
            Err(rejection) => tracing::info_span!(
                "ingest",
                message_id = rejection.message_id.as_ref().map(|m| m.as_str()),
                ticket = rejection.ticket.as_ref().map(|t| t.reference.as_str()),
                job_id = tracing::field::Empty,
            ),
        };
        let result = async {
            match &decoded {
                Ok(job) => match self.store(job).await {
                    Err(BrokerError::Store(error)) if error.refuses_the_data() => {
                        emit(MessageRefusedByDatabase { error: &error });
                        self.dead_letter(&delivery, &refused(job, &error)).await
                    }
                    other => other,
                },
                Err(rejection) => self.dead_letter(&delivery, rejection).await,
            }
        }
        .instrument(span.clone())
        .await;
        let _entered = span.enter();
        match result {
            Ok(outcome) => {
                if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                    // The channel broke after the commit: the broker redelivers the message
                    // and the inbox recognises it as a duplicate.
                    tracing::warn!(%error, "ack failed after commit; the redelivery will be a duplicate");
                }
                emit(MessageIngested {
                    outcome,
                    took: started.elapsed(),
                });
            }
            Err(error) if self.shutdown.is_cancelled() => {
                tracing::info!(%error, "shutting down; message left to the broker");
            }
            Err(error) => {
                // Permanent, unexpected and not about the message's values (those are
                // dead-lettered with a code above): a bug or a schema mismatch after a bad
                // deploy, which would reject valid jobs if they were dead-lettered as invalid.
                // Requeue, so that the queue's delivery limit dead-letters it if it keeps failing.
                tracing::error!(%error, "cannot ingest message; requeued");
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
            }
        }
    }

    async fn store(&self, job: &JobMessage<'_>) -> Result<IngestOutcome, BrokerError> {
        let recorded = self
            .retry_transient(|| inbox::record_job(&self.pool, job))
            .await?;
        Ok(match recorded {
            Recorded::New(id) => {
                self.jobs_stored.wake();
                tracing::Span::current().record("job_id", tracing::field::display(id));
                tracing::info!("job stored");
                IngestOutcome::Stored
            }
            Recorded::Duplicate(id) => {
                tracing::Span::current().record("job_id", tracing::field::display(id));
                tracing::info!("duplicate message_id; acknowledged without a second job");
                IngestOutcome::Duplicate
            }
        })
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        rejection: &Rejection,
    ) -> Result<IngestOutcome, BrokerError> {
        if let Some(message_id) = &rejection.message_id {
            let seen = self
                .retry_transient(|| inbox::seen(&self.pool, message_id.as_str()))
                .await?;
            if seen {
                tracing::info!("rejected message with a message_id seen before; acknowledged");
                return Ok(IngestOutcome::Duplicate);
            }
        }
        tracing::warn!(code = %rejection.code, detail = %rejection.detail, "dead-lettering message");
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        let detail = storable_text(&rejection.detail, MAX_DETAIL_BYTES);
        headers.insert(
            "x-reconciler-error".into(),
            long_string(rejection.code.as_str()),
        );
        headers.insert("x-reconciler-detail".into(), long_string(&detail));
        headers.insert(
            "x-original-exchange".into(),
            long_string(delivery.exchange.as_str()),
        );
        headers.insert(
            "x-original-routing-key".into(),
            long_string(delivery.routing_key.as_str()),
        );
        headers.insert(
            "x-reconciler-rejected-at".into(),
            AMQPValue::LongLongInt(chrono::Utc::now().timestamp()),
        );
        let properties: BasicProperties = delivery
            .properties
            .clone()
            .with_headers(FieldTable::from(headers.inner().clone()))
            .with_delivery_mode(2);
        let confirmation = self
            .publisher
            .basic_publish(
                self.topology.dead_letter_exchange.as_str().into(),
                delivery.routing_key.clone(),
                BasicPublishOptions::default(),
                &delivery.data,
                properties,
            )
            .await
            .map_err(BrokerError::Connection)?
            .await
            .map_err(BrokerError::Connection)?;
        if !confirmation.is_ack() {
            return Err(BrokerError::Nacked);
        }
        emit(MessageDeadLettered {
            code: rejection.code,
        });
        if rejection.message_id.is_some()
            && let Some(id) = self.record_rejection(rejection).await?
        {
            tracing::Span::current().record("job_id", tracing::field::display(id));
        }
        Ok(IngestOutcome::DeadLettered)
    }

    /// Record a dead-lettered rejection (its `job.completed`). The dead letter is already out,
    /// so a permanent failure here must not send the message round again: if the database
    /// refuses the ticket, the rejection is recorded without it; if it refuses anything else,
    /// the dead letter stands alone (`None`). Transient failures are retried as usual.
    async fn record_rejection(
        &self,
        rejection: &Rejection,
    ) -> Result<Option<uuid::Uuid>, BrokerError> {
        let recorded = match self
            .retry_transient(|| inbox::record_rejection(&self.pool, rejection))
            .await
        {
            Err(BrokerError::Store(error))
                if rejection.ticket.is_some() && error.refuses_the_data() =>
            {
                let bare = Rejection {
                    ticket: None,
                    detail: format!(
                        "{} (the ticket could not be stored and is left out: {error})",
                        rejection.detail
                    ),
                    ..rejection.clone()
                };
                emit(RejectionNotRecordedAsIs {
                    error: &error,
                    recorded: true,
                });
                self.retry_transient(|| inbox::record_rejection(&self.pool, &bare))
                    .await
            }
            other => other,
        };
        match recorded {
            Ok(Recorded::New(id) | Recorded::Duplicate(id)) => Ok(Some(id)),
            Err(BrokerError::Store(error))
                if !error.is_transient() && !self.shutdown.is_cancelled() =>
            {
                emit(RejectionNotRecordedAsIs {
                    error: &error,
                    recorded: false,
                });
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Retry `op` while it fails transiently, until it succeeds, fails permanently, or the
    /// worker shuts down.
    async fn retry_transient<T, F, Fut>(&self, op: F) -> Result<T, BrokerError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times();
        // An attempt in progress is never abandoned (it may be mid-transaction); shutdown only
        // stops further retries, and the message then goes back to the broker.
        Ok(op
            .retry(backoff)
            .when(|e: &StoreError| e.is_transient() && !self.shutdown.is_cancelled())
            .notify(|error, delay| {
                tracing::warn!(%error, ?delay, "database unavailable; retrying, message kept");
            })
            .await?)
    }
}

/// The rejection of a decoded job whose values the database refused.
fn refused(job: &JobMessage<'_>, error: &StoreError) -> Rejection {
    Rejection {
        code: FailureCode::InvalidMessage,
        detail: format!(
            "the database cannot store this message's values ({error}); see the README's \
             limits on stored values"
        ),
        message_id: Some(job.message_id.clone()),
        job_type: Some(job.job_type),
        ticket: job.ticket.clone(),
        dry_run: job.dry_run,
    }
}
