//! The contract's topology (`messages.md`, "Topology"), declared idempotently by every replica.
//!
//! Queue arguments cannot change once a queue exists: RabbitMQ refuses a declaration with other
//! arguments (`PRECONDITION_FAILED - inequivalent arg …`) and closes the channel. The jobs
//! queue's changeable settings (delivery limit, dead-letter exchange and strategy, overflow) are
//! therefore set only when the queue is created. When the queue already exists with other
//! settings, the worker does not wedge: it says precisely what differs and what to do
//! (`QueueSettingsDiffer`), and keeps serving with the queue's own settings.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};

use super::BrokerError;
use super::events::QueueSettingsDiffer;
use crate::configuration::Topology;
use crate::telemetry::emit;

/// Declare the exchanges, the quorum queues and their bindings, each on a short-lived channel
/// (a refused declaration closes its channel). Returns how the existing jobs queue differs from
/// the settings, if it does.
pub async fn declare(
    connection: &Connection,
    topology: &Topology,
    delivery_limit: u32,
) -> Result<Option<String>, BrokerError> {
    let channel = open(connection).await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind) in [
        (&topology.jobs_exchange, ExchangeKind::Topic),
        (&topology.dead_letter_exchange, ExchangeKind::Fanout),
        (&topology.events_exchange, ExchangeKind::Topic),
    ] {
        channel
            .exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
            .await
            .map_err(BrokerError::Topology)?;
    }

    let mut dead_args = FieldTable::default();
    dead_args.insert("x-queue-type".into(), long_string("quorum"));
    channel
        .queue_declare(
            topology.dead_letter_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            dead_args,
        )
        .await
        .map_err(BrokerError::Topology)?;
    channel
        .queue_bind(
            topology.dead_letter_queue.as_str().into(),
            topology.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::Topology)?;

    let declared = channel
        .queue_declare(
            topology.jobs_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            jobs_queue_arguments(topology, delivery_limit),
        )
        .await;
    let (channel, notice) = match declared {
        Ok(_) => (channel, None),
        Err(error) => {
            let Some(broker_text) = precondition_failed(&error) else {
                return Err(BrokerError::Topology(error));
            };
            // The queue exists with other arguments: use it as it is (a passive declaration
            // checks only that it exists) and say what to do.
            let channel = open(connection).await?;
            channel
                .queue_declare(
                    topology.jobs_queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(BrokerError::Topology)?;
            let notice = differ_notice(&topology.jobs_queue, delivery_limit, &broker_text);
            emit(QueueSettingsDiffer { notice: &notice });
            (channel, Some(notice))
        }
    };
    channel
        .queue_bind(
            topology.jobs_queue.as_str().into(),
            topology.jobs_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::Topology)?;
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(notice)
}

/// The jobs queue's arguments.
///
/// Dead-lettering by the delivery limit is `at-least-once` (RabbitMQ's quorum queues, "Dead
/// Lettering", "at-least-once"): the default, `at-most-once`, can lose a dead letter when the
/// dead-letter queue is unavailable. It needs `overflow: reject-publish` (with the default
/// `drop-head`, RabbitMQ falls back to at-most-once); the queue has no length limit, so
/// `reject-publish` never refuses a publication by itself.
pub fn jobs_queue_arguments(topology: &Topology, delivery_limit: u32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args.insert(
        "x-dead-letter-exchange".into(),
        long_string(&topology.dead_letter_exchange),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(delivery_limit)),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
    args
}

/// The broker's text when `error` is a refused declaration (`PRECONDITION_FAILED`).
fn precondition_failed(error: &lapin::Error) -> Option<String> {
    match error.kind() {
        ErrorKind::ProtocolError(amqp)
            if matches!(
                amqp.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            ) =>
        {
            Some(amqp.get_message().to_string())
        }
        _ => None,
    }
}

fn differ_notice(queue: &str, delivery_limit: u32, broker_text: &str) -> String {
    format!(
        "the queue '{queue}' exists with other arguments than this worker declares \
         (x-delivery-limit {delivery_limit}, x-dead-letter-strategy at-least-once, \
         x-overflow reject-publish); RabbitMQ says: {broker_text}. The worker keeps \
         consuming with the queue's own settings. Queue arguments cannot change in place: \
         either set broker.delivery_limit back to the queue's value, or let the queue drain \
         (stop publishers, wait until it is empty), delete it, and restart one worker, which \
         declares it anew with these settings"
    )
}

async fn open(connection: &Connection) -> Result<Channel, BrokerError> {
    connection
        .create_channel()
        .await
        .map_err(BrokerError::Connection)
}

pub(crate) fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}
