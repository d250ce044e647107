//! The outbox relay: publishes committed events to the events exchange with publisher
//! confirms, and marks them published only after the broker's ack.
//!
//! Delivery is at least once: if the process dies after the broker confirmed a batch and
//! before the commit that marks it, the batch is published again. Consumers deduplicate on
//! `event_id`, which never changes. Replicas share the outbox through `FOR UPDATE SKIP
//! LOCKED`, so two relays never hold the same event at once.

use chrono::Utc;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::BrokerError;
use super::events::{OutboxBacklog, OutboxPublishFailed, OutboxPublished};
use crate::configuration::OutboxSettings;
use crate::store::outbox;
use crate::telemetry::emit;

/// The Postgres notification channel the outbox trigger signals.
const NOTIFY_CHANNEL: &str = "reconciler_outbox";

pub struct Relay {
    pub pool: PgPool,
    /// A channel in confirm mode.
    pub channel: Channel,
    pub exchange: String,
    pub settings: OutboxSettings,
}

impl Relay {
    /// Publish until `stop` is cancelled, then flush what is pending and return. Returns an
    /// error when the broker channel fails (the supervisor then rebuilds the session).
    pub async fn run(&self, stop: CancellationToken) -> Result<(), BrokerError> {
        let mut listener = None;
        loop {
            self.drain().await?;
            self.report_backlog().await;
            if listener.is_none() {
                listener = self.listen().await;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.settings.poll_interval()) => {}
                notified = wait_notification(&mut listener) => {
                    if !notified {
                        listener = None;
                    }
                }
            }
        }
        // Final flush on shutdown: what committed before now is published before exit.
        self.drain().await?;
        self.report_backlog().await;
        Ok(())
    }

    /// Publish batches until fewer than a full batch is pending. Database trouble is logged
    /// and left to the next round; broker trouble is returned.
    async fn drain(&self) -> Result<(), BrokerError> {
        loop {
            match self.publish_batch().await {
                Ok(n) if n < self.settings.batch_size.get() as usize => return Ok(()),
                Ok(_) => continue,
                Err(BrokerError::Store(error)) => {
                    tracing::warn!(%error, "outbox relay cannot read the outbox; will retry");
                    return Ok(());
                }
                Err(error) => {
                    emit(OutboxPublishFailed);
                    return Err(error);
                }
            }
        }
    }

    /// Claim, publish and confirm one batch; returns how many events it held.
    async fn publish_batch(&self) -> Result<usize, BrokerError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(crate::store::StoreError::from)?;
        let events = outbox::claim(&mut tx, self.settings.batch_size.get()).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
        let published = async {
            let mut confirms = Vec::with_capacity(events.len());
            for event in &events {
                let properties = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_message_id(event.event_id.to_string().into())
                    .with_type(event.event_type.as_str().into())
                    .with_app_id("policy-reconciler".into())
                    .with_timestamp(Utc::now().timestamp().max(0) as u64);
                let confirm = self
                    .channel
                    .basic_publish(
                        self.exchange.as_str().into(),
                        event.routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        event.body.as_bytes(),
                        properties,
                    )
                    .await
                    .map_err(BrokerError::Connection)?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                if !confirm.await.map_err(BrokerError::Connection)?.is_ack() {
                    return Err(BrokerError::Nacked);
                }
            }
            Ok(())
        }
        .await;
        if let Err(error) = published {
            drop(tx);
            let _ = outbox::record_failure(&self.pool, &ids, &error.to_string()).await;
            return Err(error);
        }
        outbox::mark_published(&mut tx, &ids).await?;
        tx.commit().await.map_err(crate::store::StoreError::from)?;
        let event_types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        emit(OutboxPublished {
            event_types: &event_types,
        });
        Ok(events.len())
    }

    async fn report_backlog(&self) {
        if let Ok((pending, oldest)) = outbox::backlog(&self.pool).await {
            let oldest_age = oldest
                .and_then(|t| (Utc::now() - t).to_std().ok())
                .unwrap_or_default();
            emit(OutboxBacklog {
                pending,
                oldest_age,
            });
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(NOTIFY_CHANNEL).await.ok()?;
        Some(listener)
    }
}

/// Resolve when a notification arrives (`true`) or the listener broke (`false`); never
/// resolve without a listener (the poll interval then paces the relay).
async fn wait_notification(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(listener) => listener.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}
