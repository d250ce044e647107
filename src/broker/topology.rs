//! The contract's topology (`messages.md`, "Topology"), declared idempotently by every replica.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use super::BrokerError;
use crate::configuration::Topology;

/// Declare the exchanges, the quorum queues and their bindings.
pub async fn declare(
    channel: &Channel,
    topology: &Topology,
    delivery_limit: u32,
) -> Result<(), BrokerError> {
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

    let mut jobs_args = FieldTable::default();
    jobs_args.insert("x-queue-type".into(), long_string("quorum"));
    jobs_args.insert(
        "x-dead-letter-exchange".into(),
        long_string(&topology.dead_letter_exchange),
    );
    jobs_args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(delivery_limit)),
    );
    channel
        .queue_declare(
            topology.jobs_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            jobs_args,
        )
        .await
        .map_err(BrokerError::Topology)?;
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
    Ok(())
}

pub(crate) fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}
