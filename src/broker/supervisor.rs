//! The connection supervisor: one broker session at a time, rebuilt with backoff when lost.
//!
//! A session is a connection, the declared topology, a consuming channel and a confirm-mode
//! publishing channel, running ingest and the outbox relay. When the connection or a channel
//! fails, the session ends and the supervisor builds a new one from scratch, with exponential
//! backoff and jitter; each rebuild is counted (`reconciler_broker_reconnects_total`) and logged
//! as a warning, not an error. `/readyz` reports not ready whenever the connection is not up.
//!
//! lapin's own auto-recovery is off, on purpose: a recovery it performs is invisible to the
//! supervisor (not counted, each logged by lapin as errors), and while it reconnects its IO
//! thread sleeps on the tokio timer, which panics when the runtime stops under it (a worker
//! stopped while the broker is down). Without it, lapin's IO thread ends with the connection,
//! and the supervisor waits for it before returning. A rebuild costs what a recovery costs
//! anyway: unacknowledged deliveries return to the queue either way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use lapin::options::{BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::events::{
    BrokerConnection, BrokerConnectionLost, BrokerReconnected, BrokerUnreachable, QueueDepth,
};
use super::ingest::{self, Consuming, Ingest};
use super::relay::Relay;
use super::{BrokerError, topology};
use crate::configuration::{BrokerSettings, OutboxSettings};
use crate::engine::Wakeup;
use crate::http::{Health, IngestState};
use crate::telemetry::emit;

/// How often the queue depths are read for the metrics.
const QUEUE_DEPTH_INTERVAL: Duration = Duration::from_secs(10);

/// How long closing a connection, and then lapin's IO thread ending, may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Supervisor {
    pub settings: BrokerSettings,
    pub outbox: OutboxSettings,
    pub instance: String,
    pub pool: PgPool,
    pub health: Arc<Health>,
    /// Nudged for every job stored, so this replica's planner takes it at once.
    pub jobs_stored: Wakeup,
}

impl Supervisor {
    /// Readiness and the connection gauge follow the broker connection.
    fn set_connected(&self, connected: bool) {
        self.health.set_broker_connected(connected);
        emit(BrokerConnection { connected });
    }

    /// Keep a session running until `shutdown` is cancelled; then let the session finish its
    /// in-flight work and flush the outbox, close the connection, and return.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut sessions = 0u64;
        while !shutdown.is_cancelled() {
            let connection = tokio::select! {
                _ = shutdown.cancelled() => break,
                connection = self.connect() => connection,
            };
            sessions += 1;
            if sessions > 1 {
                emit(BrokerReconnected);
            }
            let result = self.session(&connection, &shutdown).await;
            self.set_connected(false);
            self.health.set_ingest(IngestState::Idle);
            match &result {
                Ok(()) if shutdown.is_cancelled() => {}
                Ok(()) => emit(BrokerConnectionLost {
                    error: &BrokerError::Lost("the session ended"),
                }),
                Err(error) => emit(BrokerConnectionLost { error }),
            }
            let (code, text) = if shutdown.is_cancelled() {
                (200, "worker shutting down")
            } else {
                (320, "reconnecting")
            };
            close(connection, code, text).await;
        }
        self.set_connected(false);
    }

    /// Connect and declare the topology, retrying with exponential backoff and jitter for as
    /// long as it takes (the caller races this against shutdown).
    async fn connect(&self) -> Connection {
        let backoff = ExponentialBuilder::new()
            .with_min_delay(self.settings.reconnect_min_delay())
            .with_max_delay(self.settings.reconnect_max_delay())
            .with_jitter()
            .without_max_times();
        (|| self.try_connect())
            .retry(backoff)
            .notify(|error, retry_in| emit(BrokerUnreachable { error, retry_in }))
            .await
            .expect("retries forever")
    }

    async fn try_connect(&self) -> Result<Connection, BrokerError> {
        // No lapin auto-recovery (see the module's documentation): one TCP attempt, and the
        // supervisor's backoff between attempts.
        let properties =
            ConnectionProperties::default().with_connection_name(self.instance.clone().into());
        let connection = Connection::connect(self.settings.uri().expose_secret(), properties)
            .await
            .map_err(BrokerError::Connection)?;
        match topology::declare(
            &connection,
            &self.settings.topology,
            self.settings.delivery_limit.get(),
        )
        .await
        {
            Ok(notice) => self.health.set_queue_settings_notice(notice),
            Err(error) => {
                close(connection, 200, "topology refused").await;
                return Err(error);
            }
        }
        tracing::info!(host = %self.settings.host, port = self.settings.port, "connected to the broker");
        Ok(connection)
    }

    async fn session(
        &self,
        connection: &Connection,
        shutdown: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let publisher = connection
            .create_channel()
            .await
            .map_err(BrokerError::Connection)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::Connection)?;
        let relay_channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::Connection)?;
        relay_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::Connection)?;
        let consuming = connection
            .create_channel()
            .await
            .map_err(BrokerError::Connection)?;
        consuming
            .basic_qos(
                self.settings.prefetch_count.get(),
                BasicQosOptions::default(),
            )
            .await
            .map_err(BrokerError::Connection)?;
        self.set_connected(true);

        // `session_stop` ends this session (shutdown, or a failed part); `relay_stop` lets the
        // relay flush only after ingest has drained, so rejections stored during the drain
        // are published too.
        let session_stop = shutdown.child_token();
        let relay_stop = CancellationToken::new();
        let ingest = Arc::new(Ingest {
            pool: self.pool.clone(),
            publisher,
            topology: self.settings.topology.clone(),
            shutdown: shutdown.clone(),
            jobs_stored: self.jobs_stored.clone(),
            database_lost: Default::default(),
            returned: Default::default(),
        });
        let relay = Relay {
            pool: self.pool.clone(),
            channel: relay_channel,
            exchange: self.settings.topology.events_exchange.clone(),
            settings: self.outbox.clone(),
        };
        let consuming_part = async {
            let result = ingest::consume(
                ingest,
                Consuming {
                    channel: consuming,
                    queue: self.settings.topology.jobs_queue.clone(),
                    tag: format!("{}-{}", self.instance, uuid::Uuid::new_v4().simple()),
                    health: self.health.clone(),
                },
                session_stop.clone(),
            )
            .await;
            session_stop.cancel();
            relay_stop.cancel();
            result
        };
        let relay_part = async {
            let result = relay.run(relay_stop.clone()).await;
            if result.is_err() {
                session_stop.cancel();
            }
            result
        };
        let watchdog = self.watch(connection, &session_stop);
        let (consumed, relayed, watched) = tokio::join!(consuming_part, relay_part, watchdog);
        consumed?;
        relayed?;
        watched
    }

    /// Messages ready in the jobs and dead-letter queues (passive declarations on a
    /// short-lived channel, so that a failure cannot disturb the working channels).
    async fn report_queue_depth(&self, connection: &Connection) {
        let Ok(channel) = connection.create_channel().await else {
            return;
        };
        let topology = &self.settings.topology;
        for (label, queue) in [
            ("jobs", &topology.jobs_queue),
            ("dead", &topology.dead_letter_queue),
        ] {
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(queue) => emit(QueueDepth {
                    queue: label,
                    messages: queue.message_count(),
                }),
                Err(_) => break,
            }
        }
        let _ = channel.close(200, "queue depth read".into()).await;
    }

    /// Mirror the connection's state into readiness, and end the session as soon as the
    /// connection is lost.
    async fn watch(
        &self,
        connection: &Connection,
        session_stop: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let mut last_depth_check: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = session_stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if !connection.status().connected() {
                self.set_connected(false);
                session_stop.cancel();
                return Err(BrokerError::Lost("the connection is no longer open"));
            }
            if last_depth_check.is_none_or(|t| t.elapsed() >= QUEUE_DEPTH_INTERVAL) {
                last_depth_check = Some(Instant::now());
                self.report_queue_depth(connection).await;
            }
        }
    }
}

/// Close `connection` (when it is still open) and wait, bounded, for lapin's IO thread to end,
/// so that nothing of lapin still runs on the tokio runtime when the process stops.
async fn close(connection: Connection, code: u16, text: &str) {
    if connection.status().connected() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(code, text.into())).await;
    }
    let (ended, io_ended) = tokio::sync::oneshot::channel();
    // `Connection::run` drops the handle and joins the IO thread: a blocking wait, on a thread
    // of its own so that a stuck connection cannot hold up the runtime's shutdown.
    let joiner = std::thread::Builder::new()
        .name("broker-close".into())
        .spawn(move || {
            let _ = connection.run();
            let _ = ended.send(());
        });
    if joiner.is_ok() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, io_ended).await;
    }
}
