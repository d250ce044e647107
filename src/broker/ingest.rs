//! Job ingest: each delivery is decoded, stored and committed, and only then acknowledged.
//!
//! * A valid job is stored with its inbox entry in one transaction; a `message_id` seen before
//!   is acknowledged without a second job.
//! * A message that can never be processed is published to the dead-letter exchange with
//!   `x-reconciler-error`/`x-reconciler-detail` headers (confirmed by the broker), its rejection
//!   is recorded with a `job.completed` (`rejected`) when its `message_id` is known, and only
//!   then is it acknowledged. Publishing before recording means a crash in between can only
//!   duplicate a dead letter, never lose one.
//! * A transient failure (database down) is retried briefly; if the database still does not
//!   answer, ingest pauses (see [`consume`]): the message is handed back to the queue and no
//!   delivery is taken until the database answers again. On shutdown the message is left to
//!   the broker, which redelivers it.
//! * A job whose values the database refuses (SQLSTATE classes 22 and 54, which no retry can
//!   cure) is dead-lettered as `invalid_message` with the database's reason, like any message
//!   that can never be processed: it is never redelivered until the delivery limit drops it
//!   without a code. Decoding already rejects what is known not to be storable
//!   ([`crate::domain::limits`]); this is the safety net.
//!
//! Why pause rather than hold messages and retry: the quorum queue counts a delivery against
//! its delivery limit each time a delivered, unacknowledged message comes back to it
//! (RabbitMQ's quorum queues, "Poison Message Handling": a connection loss always counts, and
//! before RabbitMQ 4.3 a `basic.nack` with requeue does too). A worker holding messages through
//! a database outage would see them counted once per broker connection cut, and a valid job
//! dead-lettered for a transient reason. Handing them back once when the outage begins, and
//! consuming again only when the database answers, counts at most one delivery per outage, and
//! the delivery limit is left for messages that crash workers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::BrokerError;
use super::events::{
    IngestPaused, IngestResumed, MessageDeadLettered, MessageIngested, MessageRefusedByDatabase,
    RejectionNotRecordedAsIs,
};
use super::topology::long_string;
use crate::configuration::Topology;
use crate::domain::limits::{MAX_DETAIL_BYTES, storable_text};
use crate::domain::{FailureCode, JobMessage, Rejection, decode_job};
use crate::engine::Wakeup;
use crate::http::{Health, IngestState};
use crate::store::inbox::{self, Recorded};
use crate::store::{self, StoreError};
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
    /// Set by a handler that found the database unreachable: [`consume`] pauses.
    pub database_lost: AtomicBool,
    /// Deliveries handed back to [`consume`] while the database is unreachable; it returns
    /// them to the queue once its consumer is cancelled (so that they are not redelivered to
    /// this worker at once).
    pub returned: Mutex<Vec<Delivery>>,
}

/// The consuming side of a session.
pub struct Consuming {
    /// The channel to consume on (its prefetch already set).
    pub channel: Channel,
    pub queue: String,
    /// Consumer tag prefix, unique to the session.
    pub tag: String,
    /// Readiness says when ingest is paused.
    pub health: Arc<Health>,
}

/// Why one consumer stopped.
enum Stopped {
    /// `stop` was cancelled.
    Stop,
    /// A handler found the database unreachable.
    DatabaseLost,
}

/// How long [`Ingest`] retries a transient database failure before it pauses ingest.
const TRANSIENT_RETRY_BUDGET: Duration = Duration::from_secs(2);

/// Consume until `stop` is cancelled (then cancel the consumer and let in-flight deliveries
/// finish) or the channel fails (then return the error; the supervisor rebuilds the session).
///
/// Deliveries are taken only while the database answers: before each consumer starts, the
/// database is pinged (with backoff, for as long as it takes); when a handler finds it
/// unreachable, the consumer is cancelled, in-flight deliveries finish (each hands its message
/// back), the messages handed back are returned to the queue, and ingest waits for the database
/// again. Meanwhile the jobs stay in the queue, undelivered, so broker connection cuts and
/// worker restarts do not count against their delivery limit.
pub async fn consume(
    ingest: Arc<Ingest>,
    consuming: Consuming,
    stop: CancellationToken,
) -> Result<(), BrokerError> {
    let mut round = 0u32;
    loop {
        if !wait_for_database(&ingest.pool, &consuming.health, &stop).await {
            return Ok(());
        }
        round += 1;
        let consumer = consuming
            .channel
            .basic_consume(
                consuming.queue.as_str().into(),
                format!("{}-{round}", consuming.tag).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::Connection)?;
        if consuming.health.ingest() == IngestState::PausedForDatabase {
            emit(IngestResumed);
        }
        consuming.health.set_ingest(IngestState::Consuming);
        match consume_until(&ingest, &consuming.channel, consumer, &stop).await? {
            Stopped::Stop => return Ok(()),
            Stopped::DatabaseLost => consuming.health.set_ingest(IngestState::PausedForDatabase),
        }
    }
}

/// Wait until the database answers; `false` if `stop` came first. Readiness says ingest is
/// paused while it does not answer.
async fn wait_for_database(pool: &PgPool, health: &Health, stop: &CancellationToken) -> bool {
    let backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    let answered = (|| store::ping(pool))
        .retry(backoff)
        .when(|e: &StoreError| e.is_transient())
        .notify(|_, _| health.set_ingest(IngestState::PausedForDatabase));
    tokio::select! {
        _ = stop.cancelled() => false,
        // A permanent error here (a bug, not an outage) is left to the handlers to report.
        _ = answered => !stop.is_cancelled(),
    }
}

/// Run one consumer until `stop`, a lost database, or a channel failure.
async fn consume_until(
    ingest: &Arc<Ingest>,
    channel: &Channel,
    mut consumer: Consumer,
    stop: &CancellationToken,
) -> Result<Stopped, BrokerError> {
    let mut in_flight = JoinSet::new();
    let result = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(Stopped::Stop),
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {
                if ingest.database_lost.load(Ordering::SeqCst) {
                    break Ok(Stopped::DatabaseLost);
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let ingest = ingest.clone();
                    in_flight.spawn(async move { ingest.handle(delivery).await });
                }
                Some(Err(error)) => break Err(BrokerError::Connection(error)),
                None => break Err(BrokerError::Lost("the consumer was cancelled")),
            },
        }
    };
    // Stop deliveries; bounded, as a broken channel may never answer.
    if channel.status().connected() {
        let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
        if tokio::time::timeout(Duration::from_secs(2), cancel)
            .await
            .is_err()
        {
            tracing::warn!("consumer cancel not confirmed; deliveries stop with the connection");
        }
    }
    let pausing = matches!(result, Ok(Stopped::DatabaseLost));
    if pausing {
        // Deliveries the broker sent before the cancel: handed back with the others, never
        // started (each would only find the database gone).
        while let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
        {
            ingest.hand_back(delivery);
        }
    }
    tracing::debug!(
        in_flight = in_flight.len(),
        "consumer stopped; draining in-flight messages"
    );
    while in_flight.join_next().await.is_some() {}
    tracing::debug!("ingest drained");
    let returned = std::mem::take(&mut *ingest.returned.lock().unwrap_or_else(|e| e.into_inner()));
    let count = returned.len();
    for delivery in returned {
        // Requeue: the job is valid and waits in the queue for the database. If the channel
        // broke meanwhile, the broker requeues it with the connection anyway.
        let _ = delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await;
    }
    ingest.database_lost.store(false, Ordering::SeqCst);
    if pausing {
        emit(IngestPaused {
            error: "a transient database failure outlasted the retries",
            returned: count,
        });
    }
    result
}

impl Ingest {
    /// Keep `delivery` for [`consume`] to return to the queue once its consumer is cancelled,
    /// and tell it to pause: the database is unreachable.
    fn hand_back(&self, delivery: Delivery) {
        self.database_lost.store(true, Ordering::SeqCst);
        self.returned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(delivery);
    }
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
            Err(BrokerError::Store(error)) if error.is_transient() => {
                tracing::info!(%error, "database unreachable; message handed back to the queue");
                self.hand_back(delivery);
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

    /// Retry `op` while it fails transiently, for up to [`TRANSIENT_RETRY_BUDGET`] (a blip),
    /// until it succeeds, fails permanently, the worker shuts down, or another handler has
    /// found the database unreachable (then ingest pauses, see [`consume`]).
    async fn retry_transient<T, F, Fut>(&self, op: F) -> Result<T, BrokerError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(1))
            .with_jitter()
            .with_total_delay(Some(TRANSIENT_RETRY_BUDGET))
            .without_max_times();
        // An attempt in progress is never abandoned (it may be mid-transaction); shutdown only
        // stops further retries, and the message then goes back to the broker.
        Ok(op
            .retry(backoff)
            .when(|e: &StoreError| {
                e.is_transient()
                    && !self.shutdown.is_cancelled()
                    && !self.database_lost.load(Ordering::SeqCst)
            })
            .notify(|error, delay| {
                tracing::debug!(%error, ?delay, "database unavailable; retrying");
            })
            .await?)
    }
}

/// The rejection of a decoded job whose values the database refused.
fn refused(job: &JobMessage<'_>, error: &StoreError) -> Rejection {
    Rejection {
        code: FailureCode::InvalidMessage,
        detail: format!(
            "the database cannot store this message's values ({error}); see docs/architecture.md's \
             limits on stored values"
        ),
        message_id: Some(job.message_id.clone()),
        job_type: Some(job.job_type),
        ticket: job.ticket.clone(),
        dry_run: job.dry_run,
    }
}
