//! The run's side of RabbitMQ: publishing jobs as the portal does, reading the events the
//! worker publishes, and removing the run's exchanges and queues.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use policy_reconciler::configuration::Topology;
use serde_json::Value;
use sqlx::PgPool;

use super::contract;

pub const AMQP_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const AMQP_URI_HOST_PORT: &str = "127.0.0.1:5672";

/// A connection of the run's own to the local RabbitMQ.
pub async fn connect() -> Connection {
    Connection::connect(AMQP_URI, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672")
}

/// Publish a job as the portal does: persistent JSON, routing key = its `type`, AMQP
/// `message_id` = the body's. The body must be one the contract's schema accepts: a test that
/// means to send one it refuses says so with [`publish_job_refused_by_schema`].
pub async fn publish_job(channel: &Channel, exchange: &str, job: &Value) {
    let verdict = contract::job_value_verdict(job);
    if let Err(errors) = &verdict {
        panic!(
            "the contract's schema refuses this job (publish_job_refused_by_schema sends it \
             on purpose):\n{errors}\n{job}"
        );
    }
    contract::remember(job.to_string().as_bytes(), &verdict);
    send_job(channel, exchange, job).await;
}

/// [`publish_job`] for a body the contract's schema refuses, on purpose: the worker must
/// reject it at ingest (the caller checks its dead letter). Panics if the schema accepts it.
pub async fn publish_job_refused_by_schema(channel: &Channel, exchange: &str, job: &Value) {
    let verdict = contract::job_value_verdict(job);
    assert!(
        verdict.is_err(),
        "the contract's schema accepts this job, which the test expects it to refuse: {job}"
    );
    contract::remember(job.to_string().as_bytes(), &verdict);
    send_job(channel, exchange, job).await;
}

async fn send_job(channel: &Channel, exchange: &str, job: &Value) {
    let routing_key = job["type"].as_str().unwrap_or("unknown").to_owned();
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    if let Some(id) = job["message_id"].as_str() {
        properties = properties.with_message_id(id.into());
    }
    publish(
        channel,
        exchange,
        &routing_key,
        job.to_string().as_bytes(),
        properties,
    )
    .await;
}

/// Publish `body`; on a channel in confirm mode, wait for the broker's confirm.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Delete the run's queues (`topology`'s and `extra_queues`), then its exchanges, on a
/// connection of their own. Failures are ignored: what is already gone needs no removing.
pub async fn remove_topology(topology: &Topology, extra_queues: &[String]) {
    let mut queues = extra_queues.to_vec();
    queues.push(topology.jobs_queue.clone());
    queues.push(topology.dead_letter_queue.clone());
    let exchanges = [
        &topology.jobs_exchange,
        &topology.dead_letter_exchange,
        &topology.events_exchange,
    ];
    let Ok(amqp) = Connection::connect(AMQP_URI, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(channel) = amqp.create_channel().await {
        for queue in queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in exchanges {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = amqp.close(200, "run done".into()).await;
}

/// A queue of the run's own bound to the events exchange, and a consumer on it. It sees the
/// events published after it is declared; the run deletes it (an extra queue of its clean-up).
///
/// Every event it receives is validated against the contract's schema of its type (a
/// failure panics with the schema's errors); with the worker's database
/// ([`EventQueue::checking_dispositions`]), every `job.completed` of a job published through
/// the kit is checked against the schema's verdict on the job ([`contract::check_disposition`]).
pub struct EventQueue {
    _channel: Channel,
    consumer: lapin::Consumer,
    database: Option<PgPool>,
}

impl EventQueue {
    /// Declare queue `name`, bind it to `exchange` with `routing_key` (`#` for every event),
    /// and consume it on a channel of its own.
    pub async fn declare(amqp: &Connection, name: &str, exchange: &str, routing_key: &str) -> Self {
        let channel = amqp.create_channel().await.unwrap();
        channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                name.into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                name.into(),
                format!("{name}.consumer").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            _channel: channel,
            consumer,
            database: None,
        }
    }

    /// Check each `job.completed` against the worker's inbox in `database`: whether the job
    /// was dead-lettered at ingest must be what the schema said of its body.
    pub fn checking_dispositions(mut self, database: PgPool) -> Self {
        self.database = Some(database);
        self
    }

    /// The next event, as JSON, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        serde_json::from_slice(&self.next_raw(timeout).await?).ok()
    }

    /// The next event's body exactly as published, within `timeout`.
    pub async fn next_raw(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let delivery = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .ok()??
            .ok()?;
        delivery.ack(BasicAckOptions::default()).await.ok()?;
        self.check(&delivery.data).await;
        Some(delivery.data)
    }

    /// Validate an event received, and a `job.completed`'s disposition (see the type's doc).
    async fn check(&self, body: &[u8]) {
        let event: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "the worker published an event that is not JSON ({e}): {}",
                String::from_utf8_lossy(body)
            )
        });
        contract::check_event(&event);
        let Some(database) = &self.database else {
            return;
        };
        if event["type"] != "job.completed" {
            return;
        }
        let Some(message_id) = event["source_message_id"].as_str() else {
            return;
        };
        if contract::remembered(message_id).is_none() {
            return;
        }
        let disposition: Option<String> =
            sqlx::query_scalar("SELECT disposition FROM inbox WHERE message_id = $1")
                .bind(message_id)
                .fetch_optional(database)
                .await
                .ok()
                .flatten();
        if let Some(disposition) = disposition {
            contract::check_disposition(&event, disposition == "dead_lettered");
        }
    }

    /// The next event of `event_type` about the job of `message_id` (others are passed over),
    /// within 120 s.
    pub async fn next_of(&mut self, event_type: &str, message_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("no {event_type} for {message_id}"));
            if event["type"] == event_type && event["source_message_id"] == message_id {
                return event;
            }
        }
    }

    /// The `job.completed` of `message_id`: found among `seen`, or awaited within `timeout`
    /// while every event received is kept in `seen` (for checks on the other events).
    pub async fn completion_keeping(
        &mut self,
        message_id: &Value,
        seen: &mut Vec<Value>,
        timeout: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(event) = seen
                .iter()
                .find(|e| e["type"] == "job.completed" && e["source_message_id"] == *message_id)
            {
                return event.clone();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("no job.completed for {message_id}"));
            seen.push(event);
        }
    }

    /// Every event arriving within `quiet` of the previous one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut events = Vec::new();
        while let Some(event) = self.next(quiet).await {
            events.push(event);
        }
        events
    }
}
