//! `policy-reconciler demo`: the main job end to end on one machine, for a newcomer.
//!
//! It serves the tenant simulator in-process with a few hundred users (with the `realistic`
//! profile unless `--profile default`: replication lag, stale reads, faults), starts a worker
//! against the local PostgreSQL and RabbitMQ, publishes a `policy.changed` for those users as
//! the portal would, waits for its `job.completed`, checks a user in the tenant, and stops the
//! worker cleanly. Nothing is faked: the job travels through the broker, the database and
//! Graph-shaped HTTP calls like any other.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use uuid::Uuid;

use super::OpsError;
use super::enqueue::publish;
use crate::configuration::Settings;
use crate::simulator::{self, Seed};
use crate::startup::Application;

/// What the demo saw.
#[derive(Debug)]
pub struct DemoReport {
    pub users: usize,
    /// The `job.completed` event that resolved the demo ticket.
    pub completed: Value,
    pub sample_user: String,
    /// The sample user's licences as the tenant reports them afterwards.
    pub sample_licences: Value,
}

/// Run the demo with `users` simulated users.
pub async fn run(mut settings: Settings, users: usize) -> Result<DemoReport, OpsError> {
    let mut simulator_settings = settings.simulator.clone();
    simulator_settings.listen_address = "127.0.0.1:0".into();
    let sim = simulator::spawn(simulator_settings)
        .await
        .map_err(|e| OpsError::Invalid(format!("starting the tenant simulator: {e}")))?;
    let members: Vec<String> = (1..=users)
        .map(|i| format!("demo.user{i}@nhs.net"))
        .collect();
    let seed: Seed = serde_json::from_value(json!({
        "users": members.iter().map(|upn| json!({ "userPrincipalName": upn, "usageLocation": "GB" })).collect::<Vec<_>>()
    }))
    .expect("the demo seed is well-formed");
    sim.state()
        .seed(&seed)
        .map_err(|e| OpsError::Invalid(format!("seeding the simulator: {e:?}")))?;
    settings.tenant.graph_base_url = sim.base_url();
    settings.tenant.login_base_url = sim.base_url();

    let app = Application::build(settings.clone())
        .await
        .map_err(|e| OpsError::Invalid(e.to_string()))?;
    let ready_url = format!("http://{}/readyz", app.http_address());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let result = drive(&settings, &ready_url, &members, &sim).await;
    let _ = stop.send(());
    let _ = worker.await;
    sim.shutdown().await;
    result
}

async fn drive(
    settings: &Settings,
    ready_url: &str,
    members: &[String],
    sim: &simulator::SimulatorHandle,
) -> Result<DemoReport, OpsError> {
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..600 {
        if matches!(client.get(ready_url).send().await, Ok(r) if r.status() == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        return Err(OpsError::Invalid(
            "the worker did not become ready within a minute (are PostgreSQL and RabbitMQ up?)"
                .into(),
        ));
    }

    // Watch for the completion before publishing, as the ticketing integration would.
    let connection = Connection::connect(
        settings.broker.uri().expose_secret(),
        ConnectionProperties::default().with_connection_name("policy-reconciler demo".into()),
    )
    .await?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            settings.broker.topology.events_exchange.as_str().into(),
            "job.completed".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut events = channel
        .basic_consume(
            queue.name().clone(),
            "demo".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let message_id = Uuid::new_v4().to_string();
    let version = chrono::Utc::now().timestamp();
    let message = json!({
        "message_id": message_id,
        "type": "policy.changed",
        "schema_version": 1,
        "sent_at": chrono::Utc::now().to_rfc3339(),
        "ticket": { "reference": "INC-DEMO", "originator": "demo.admin@nhs.net" },
        "actor": { "email": "demo.admin@nhs.net", "ods_code": "RX1" },
        "dry_run": false,
        "payload": {
            "policy": { "id": "demo-standard", "name": "Demo Standard Users", "ods_code": "RX1",
                        "version": version, "licence": "ENTERPRISEPACK",
                        "toggles": { "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true, "SWAY": false } },
            "members": members,
            "total_members": members.len()
        }
    });
    publish(&settings.broker, "policy.changed", &message_id, &message).await?;
    tracing::info!(%message_id, members = members.len(), "demo job published");

    let completed = tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(Ok(delivery)) = events.next().await {
            let _ = delivery.ack(BasicAckOptions::default()).await;
            if let Ok(event) = serde_json::from_slice::<Value>(&delivery.data)
                && event["source_message_id"] == message_id.as_str()
            {
                return Some(event);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| OpsError::Invalid("no job.completed within 5 minutes".into()))?;
    let _ = connection.close(200, "demo done".into()).await;

    let sample_user = members[0].clone();
    let sample_licences = sim
        .state()
        .user(&sample_user)
        .map(|u| u["assignedLicenses"].clone())
        .unwrap_or(Value::Null);
    Ok(DemoReport {
        users: members.len(),
        completed,
        sample_user,
        sample_licences,
    })
}

/// The lines `demo` prints.
pub fn render(report: &DemoReport) -> String {
    let event = &report.completed;
    format!(
        "policy.changed for {} users -> job.completed: outcome {}, counts {}\n\
         ticket {} resolved; {} now holds {}\n\nthe event:\n{}\n",
        report.users,
        event["outcome"],
        event["counts"],
        event["ticket"]["reference"],
        report.sample_user,
        report.sample_licences,
        serde_json::to_string_pretty(event).unwrap_or_default()
    )
}
