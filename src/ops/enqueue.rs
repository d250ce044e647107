//! `enqueue --from-csv`: publish a policy job for the members of a portal export, as the
//! portal would (`messages.md`, "Envelope"), with publisher confirms.

use std::path::PathBuf;

use chrono::{SecondsFormat, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::OpsError;
use super::csv::{MemberWarnings, check_members, parse_members};
use crate::configuration::{BrokerSettings, Settings};
use crate::domain::{EmailAddress, JobType, MessageId, OdsCode, SCHEMA_VERSION};
use crate::store::{self, policies::PolicyRow};

/// Which policy job to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EnqueueKind {
    /// `policy.members_added`: add the listed members to the policy.
    #[default]
    MembersAdded,
    /// `policy.changed` with the stored definition and the listed members as the whole
    /// membership: "reconcile this policy with this member list".
    Changed,
}

impl EnqueueKind {
    pub fn job_type(self) -> JobType {
        match self {
            Self::MembersAdded => JobType::PolicyMembersAdded,
            Self::Changed => JobType::PolicyChanged,
        }
    }
}

/// What to publish.
#[derive(Debug, Clone, Default)]
pub struct EnqueueRequest {
    /// The portal's CSV export (an `Email Address` column).
    pub csv: PathBuf,
    pub policy_id: String,
    pub kind: EnqueueKind,
    /// The ticket's reference; needs `originator`.
    pub ticket: Option<String>,
    /// The ticket's originator (an email address); needs `ticket`.
    pub originator: Option<String>,
    /// The actor's email; needs `actor_ods`.
    pub actor_email: Option<String>,
    /// The actor's ODS code; needs `actor_email`.
    pub actor_ods: Option<String>,
    /// The contract's `dry_run`: the worker plans and reports, writing nothing to the tenant.
    pub dry_run: bool,
    /// The job's idempotency key; a fresh UUID when absent.
    pub message_id: Option<String>,
}

/// What was published.
#[derive(Debug, Clone)]
pub struct Enqueued {
    pub message_id: String,
    pub job_type: JobType,
    pub policy_id: String,
    /// Members listed, as sent (duplicates and malformed values included).
    pub members: usize,
    /// Values the worker will fail with a code (sent anyway, so the ticket says so).
    pub warnings: MemberWarnings,
    pub dry_run: bool,
}

/// Read the export, build the job and publish it to the jobs exchange, waiting for the
/// broker's confirm. For [`EnqueueKind::Changed`] the policy's stored definition is read
/// first; an unknown policy is an error and nothing is published.
pub async fn enqueue_from_csv(
    settings: &Settings,
    request: &EnqueueRequest,
) -> Result<Enqueued, OpsError> {
    let text = std::fs::read_to_string(&request.csv).map_err(|source| OpsError::Io {
        path: request.csv.display().to_string(),
        source,
    })?;
    let members = parse_members(&text)?;
    let policy = match request.kind {
        EnqueueKind::MembersAdded => None,
        EnqueueKind::Changed => Some(stored_policy(settings, &request.policy_id).await?),
    };
    let message = build_message(request, &members, policy.as_ref())?;
    let message_id = message["message_id"]
        .as_str()
        .expect("build_message sets message_id")
        .to_owned();
    let job_type = request.kind.job_type();
    publish(&settings.broker, job_type.as_str(), &message_id, &message).await?;
    Ok(Enqueued {
        message_id,
        job_type,
        policy_id: request.policy_id.clone(),
        members: members.len(),
        warnings: check_members(&members),
        dry_run: request.dry_run,
    })
}

async fn stored_policy(settings: &Settings, policy_id: &str) -> Result<PolicyRow, OpsError> {
    let pool = super::connect(&settings.database).await?;
    let mut tx = pool.begin().await?;
    let policy = store::policies::get(&mut tx, policy_id).await?;
    drop(tx);
    pool.close().await;
    policy.ok_or_else(|| {
        OpsError::NotFound(format!(
            "no policy {policy_id:?} is stored; policy.changed needs its definition"
        ))
    })
}

/// The job message, per the contract's envelope. Pure, so that its shape is testable.
pub fn build_message(
    request: &EnqueueRequest,
    members: &[String],
    policy: Option<&PolicyRow>,
) -> Result<Value, OpsError> {
    let message_id = match &request.message_id {
        Some(id) => MessageId::parse(id).map_err(OpsError::Invalid)?.to_string(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let payload = match (request.kind, policy) {
        (EnqueueKind::MembersAdded, _) => json!({
            "policy_id": request.policy_id,
            "members": members,
            "total_members": members.len(),
        }),
        (EnqueueKind::Changed, Some(policy)) => json!({
            "policy": {
                "id": policy.id,
                "name": policy.name,
                "ods_code": policy.ods_code,
                "version": policy.version,
                "licence": policy.licence,
                "toggles": policy.toggles,
            },
            "members": members,
            "total_members": members.len(),
        }),
        (EnqueueKind::Changed, None) => {
            return Err(OpsError::Invalid(
                "policy.changed needs the stored policy definition".into(),
            ));
        }
    };
    let mut message = json!({
        "message_id": message_id,
        "type": request.kind.job_type().as_str(),
        "schema_version": SCHEMA_VERSION,
        "sent_at": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "dry_run": request.dry_run,
        "payload": payload,
    });
    match (&request.ticket, &request.originator) {
        (Some(reference), Some(originator)) => {
            EmailAddress::parse(originator)
                .map_err(|e| OpsError::Invalid(format!("--originator: {e}")))?;
            message["ticket"] = json!({ "reference": reference, "originator": originator });
        }
        (None, None) => {}
        _ => {
            return Err(OpsError::Invalid(
                "a ticket needs both --ticket and --originator".into(),
            ));
        }
    }
    match (&request.actor_email, &request.actor_ods) {
        (Some(email), Some(ods)) => {
            EmailAddress::parse(email)
                .map_err(|e| OpsError::Invalid(format!("--actor-email: {e}")))?;
            OdsCode::parse(ods).map_err(|e| OpsError::Invalid(format!("--actor-ods: {e}")))?;
            message["actor"] = json!({ "email": email, "ods_code": ods });
        }
        (None, None) => {}
        _ => {
            return Err(OpsError::Invalid(
                "an actor needs both --actor-email and --actor-ods".into(),
            ));
        }
    }
    Ok(message)
}

/// Publish one job: persistent JSON, routing key = type, AMQP `message_id` = the body's,
/// mandatory, and confirmed by the broker before this returns.
pub(crate) async fn publish(
    settings: &BrokerSettings,
    routing_key: &str,
    message_id: &str,
    message: &Value,
) -> Result<(), OpsError> {
    let body = serde_json::to_vec(message).expect("a JSON value always serializes");
    publish_bytes(settings, routing_key, Some(message_id), &body).await
}

/// Publish `body` as it is, with the same guarantees as [`publish`]; the AMQP `message_id`
/// property is set when given.
pub(crate) async fn publish_bytes(
    settings: &BrokerSettings,
    routing_key: &str,
    message_id: Option<&str>,
    body: &[u8],
) -> Result<(), OpsError> {
    let properties =
        ConnectionProperties::default().with_connection_name("policy-reconciler enqueue".into());
    let connection = Connection::connect(settings.uri().expose_secret(), properties).await?;
    let result = async {
        let channel = connection.create_channel().await?;
        // Passive: an operator's command must not create the exchange. A missing one is a
        // clear error here instead of a channel closed in the middle of the publication.
        channel
            .exchange_declare(
                settings.topology.jobs_exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if let Some(message_id) = message_id {
            properties = properties.with_message_id(message_id.into());
        }
        let properties = properties.with_timestamp(Utc::now().timestamp().max(0) as u64);
        // Mandatory: a job the exchange routes to no queue would be dropped silently; the
        // broker returns it instead, and that is reported as a failure.
        let confirmation = channel
            .basic_publish(
                settings.topology.jobs_exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await?
            .await?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(OpsError::NotPublished(format!(
                "exchange {:?} routed it to no queue (are the workers' queues declared?)",
                settings.topology.jobs_exchange
            ))),
            Confirmation::Nack(_) => Err(OpsError::NotPublished("the broker nacked it".into())),
            Confirmation::NotRequested => Err(OpsError::NotPublished(
                "the broker did not confirm it".into(),
            )),
        }
    }
    .await;
    let _ = connection.close(200, "enqueued".into()).await;
    result
}

/// The lines `enqueue` prints.
pub fn render_enqueued(enqueued: &Enqueued) -> String {
    let mut out = format!(
        "published {} for policy {:?}{}\nmessage_id: {}\nmembers: {}\n",
        enqueued.job_type,
        enqueued.policy_id,
        if enqueued.dry_run { " (dry run)" } else { "" },
        enqueued.message_id,
        enqueued.members,
    );
    let list = |values: &[String]| {
        values
            .iter()
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !enqueued.warnings.malformed.is_empty() {
        out.push_str(&format!(
            "warning: {} malformed address(es) sent as is; the worker fails them with a code: {}\n",
            enqueued.warnings.malformed.len(),
            list(&enqueued.warnings.malformed)
        ));
    }
    if !enqueued.warnings.duplicates.is_empty() {
        out.push_str(&format!(
            "warning: {} address(es) listed more than once, sent as is: {}\n",
            enqueued.warnings.duplicates.len(),
            list(&enqueued.warnings.duplicates)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{JobPayload, decode_job};

    fn request(kind: EnqueueKind) -> EnqueueRequest {
        EnqueueRequest {
            policy_id: "rx1-standard".into(),
            kind,
            ticket: Some("INC0012345".into()),
            originator: Some("jane.smith@nhs.net".into()),
            ..EnqueueRequest::default()
        }
    }

    #[test]
    fn members_added_is_a_contract_message() {
        let members = vec!["a@nhs.net".to_owned(), "bad".to_owned()];
        let message = build_message(&request(EnqueueKind::MembersAdded), &members, None).unwrap();
        let id = message["message_id"].as_str().unwrap().to_owned();
        let body = message.to_string();
        let job = decode_job(body.as_bytes(), Some(&id)).unwrap();
        assert_eq!(job.job_type, JobType::PolicyMembersAdded);
        assert_eq!(job.ticket.as_ref().unwrap().reference, "INC0012345");
        assert!(job.actor.is_none());
        assert!(message.get("actor").is_none());
        let JobPayload::PolicyMembersAdded(payload) = job.payload().unwrap() else {
            panic!("wrong payload");
        };
        assert_eq!(payload.members, members);
        assert_eq!(payload.total_members, 2);
    }

    #[test]
    fn changed_carries_the_stored_definition() {
        let policy = PolicyRow {
            id: "rx1-standard".into(),
            name: "RX1 Standard".into(),
            ods_code: "RX1".into(),
            version: 8,
            licence: "ENTERPRISEPACK".into(),
            toggles: [("TEAMS1".to_owned(), true)].into(),
        };
        let mut request = request(EnqueueKind::Changed);
        request.message_id = Some("op-1".into());
        request.actor_email = Some("op@nhs.net".into());
        request.actor_ods = Some("RX1".into());
        request.dry_run = true;
        let message = build_message(&request, &["a@nhs.net".into()], Some(&policy)).unwrap();
        let body = message.to_string();
        let job = decode_job(body.as_bytes(), Some("op-1")).unwrap();
        assert!(job.dry_run);
        assert_eq!(job.actor.as_ref().unwrap().ods_code, "RX1");
        let JobPayload::PolicyChanged(payload) = job.payload().unwrap() else {
            panic!("wrong payload");
        };
        assert_eq!(payload.policy.version, 8);
        assert_eq!(payload.total_members, Some(1));
    }

    #[test]
    fn half_a_ticket_or_a_bad_originator_is_refused() {
        let mut half = request(EnqueueKind::MembersAdded);
        half.originator = None;
        assert!(matches!(
            build_message(&half, &[], None),
            Err(OpsError::Invalid(_))
        ));
        let mut bad = request(EnqueueKind::MembersAdded);
        bad.originator = Some("jane".into());
        assert!(matches!(
            build_message(&bad, &[], None),
            Err(OpsError::Invalid(_))
        ));
    }
}

/// What `publish` sent.
#[derive(Debug)]
pub struct Published {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub bytes: usize,
}

/// Publish a job message from a file exactly as it is: to replay a dead letter once its data
/// is fixed, or to send a complete `policy.changed` definition. The routing key is the
/// message's `type` unless given; a body that is not a job (not JSON, no `type`) needs one,
/// and is then dead-lettered by the workers with its code, which is what it is for.
pub async fn publish_file(
    settings: &crate::configuration::Settings,
    path: &std::path::Path,
    routing_key: Option<&str>,
) -> Result<Published, OpsError> {
    let body = std::fs::read(path).map_err(|source| OpsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let message_id = parsed
        .as_ref()
        .and_then(|v| v["message_id"].as_str())
        .map(str::to_owned);
    let routing_key = match (
        routing_key,
        parsed.as_ref().and_then(|v| v["type"].as_str()),
    ) {
        (Some(key), _) => key.to_owned(),
        (None, Some(job_type)) => job_type.to_owned(),
        (None, None) => {
            return Err(OpsError::Invalid(
                "the message has no `type`: give --routing-key".into(),
            ));
        }
    };
    publish_bytes(&settings.broker, &routing_key, message_id.as_deref(), &body).await?;
    Ok(Published {
        routing_key,
        message_id,
        bytes: body.len(),
    })
}
