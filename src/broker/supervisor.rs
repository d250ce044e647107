//! The connection supervisor: one broker session at a time, rebuilt with backoff when lost.
//!
//! A session is a connection with lapin's auto-recovery enabled, the declared topology, a
//! consuming channel and a confirm-mode publishing channel, running ingest and the outbox
//! relay. Short outages are absorbed by lapin's recovery (consumers and confirms are replayed
//! on the new socket). When recovery fails or takes longer than `recovery_timeout_seconds`,
//! the session ends and the supervisor builds a new one from scratch. `/readyz` reports not
//! ready whenever the connection is not up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::events::{BrokerConnection, BrokerReconnected, QueueDepth};
use super::ingest::{self, Ingest};
use super::relay::Relay;
use super::{BrokerError, topology};
use crate::configuration::{BrokerSettings, OutboxSettings};
use crate::engine::Wakeup;
use crate::http::Health;
use crate::telemetry::emit;

/// How often the queue depths are read for the metrics.
const QUEUE_DEPTH_INTERVAL: Duration = Duration::from_secs(10);

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
    /// in-flight work and flush the outbox, and return.
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
            match self.session(&connection, &shutdown).await {
                Ok(()) if shutdown.is_cancelled() => {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        connection.close(200, "worker shutting down".into()),
                    )
                    .await;
                }
                Ok(()) => tracing::warn!("broker session ended; reconnecting"),
                Err(error) => tracing::warn!(%error, "broker session failed; reconnecting"),
            }
            self.set_connected(false);
            if !shutdown.is_cancelled() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    connection.close(320, "reconnecting".into()),
                )
                .await;
            }
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
            .notify(|error, delay| {
                tracing::warn!(%error, ?delay, "cannot reach the broker; retrying");
            })
            .await
            .expect("retries forever")
    }

    async fn try_connect(&self) -> Result<Connection, BrokerError> {
        // lapin's own reconnection: quick attempts that fit within the recovery timeout;
        // longer outages are the supervisor's.
        let properties = ConnectionProperties::default()
            .enable_auto_recover()
            .configure_backoff(|b| {
                b.with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(6)
            })
            .with_connection_name(self.instance.clone().into());
        let connection = Connection::connect(self.settings.uri().expose_secret(), properties)
            .await
            .map_err(BrokerError::Connection)?;
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::Connection)?;
        topology::declare(
            &channel,
            &self.settings.topology,
            self.settings.delivery_limit.get(),
        )
        .await?;
        let _ = channel.close(200, "topology declared".into()).await;
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
        let tag = format!("{}-{}", self.instance, uuid::Uuid::new_v4().simple());
        let consumer = consuming
            .basic_consume(
                self.settings.topology.jobs_queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
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
        });
        let relay = Relay {
            pool: self.pool.clone(),
            channel: relay_channel,
            exchange: self.settings.topology.events_exchange.clone(),
            settings: self.outbox.clone(),
            recovery_timeout: self.settings.recovery_timeout(),
        };
        let consuming_part = async {
            let result = ingest::consume(
                ingest,
                consuming,
                consumer,
                self.settings.recovery_timeout(),
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

    /// Mirror the connection's state into readiness, and end the session when lapin's
    /// recovery has not brought the connection back within the recovery timeout.
    async fn watch(
        &self,
        connection: &Connection,
        session_stop: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let mut down_since: Option<Instant> = None;
        let mut last_depth_check: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = session_stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            let connected = connection.status().connected();
            self.set_connected(connected);
            if connected {
                down_since = None;
                if last_depth_check.is_none_or(|t| t.elapsed() >= QUEUE_DEPTH_INTERVAL) {
                    last_depth_check = Some(Instant::now());
                    self.report_queue_depth(connection).await;
                }
                continue;
            }
            let since = *down_since.get_or_insert_with(Instant::now);
            if since.elapsed() > self.settings.recovery_timeout() {
                session_stop.cancel();
                return Err(BrokerError::Lost(
                    "lapin's recovery did not succeed in time",
                ));
            }
        }
    }
}
