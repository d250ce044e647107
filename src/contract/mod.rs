//! The message contract as code (`messages.md`, version 1.1, "Machine-readable contract").
//!
//! A JSON Schema (draft 2020-12) for every job message and every event, derived with schemars
//! from the types that ingest decodes ([`crate::domain::job`]) and that the engine publishes
//! ([`crate::domain::events`]), and the AsyncAPI 3.0 document `contract/asyncapi.yaml` that
//! names them. The schema files under `contract/schemas/` are what these functions derive: a
//! test fails when they differ (`UPDATE_CONTRACT=1 cargo test --lib contract` rewrites them).
//!
//! Two events of contract 1.1 that the service does not publish yet (`job.approval_required`,
//! `drift.detected`) have no Rust type: their schemas are written by hand and checked against
//! the contract's examples in the tests.

use chrono::{DateTime, Utc};
use schemars::{JsonSchema, schema_for};
use serde_json::{Value, json};

use crate::domain::{
    Actor, AdminRoleChange, AdminRoleTarget, JobType, MembersAdded, OdsMappingChanged,
    PolicyChanged, PortalAccessContacts, PortalAccessGrant, SCHEMA_VERSION, Ticket, UserLeaver,
};
use crate::domain::{EVENT_SCHEMA_VERSION, JobAccepted, JobCompleted, NotificationEmail};

/// The AsyncAPI 3.0 document (`contract/asyncapi.yaml`).
pub const ASYNCAPI: &str = include_str!("../../contract/asyncapi.yaml");

/// The event types of the contract, in its order.
pub const EVENT_TYPES: &[&str] = &[
    JobAccepted::TYPE,
    JobCompleted::TYPE,
    NotificationEmail::TYPE,
    APPROVAL_REQUIRED,
    DRIFT_DETECTED,
];

const APPROVAL_REQUIRED: &str = "job.approval_required";
const DRIFT_DETECTED: &str = "drift.detected";

/// The templates of `notification.email` (`messages.md`, "notification.email").
pub const EMAIL_TEMPLATES: &[&str] = &[
    NotificationEmail::PHONE_SYSTEM_ADMIN_GRANTED,
    "portal_invitation",
    "portal_invitation_reminder",
];

/// Schemas written by hand (events without a Rust type yet).
const HAND_WRITTEN: &[(&str, &str)] = &[
    (
        APPROVAL_REQUIRED,
        include_str!("../../contract/schemas/job.approval_required.json"),
    ),
    (
        DRIFT_DETECTED,
        include_str!("../../contract/schemas/drift.detected.json"),
    ),
];

/// The envelope of every job (`messages.md`, "Envelope"), for its schema only: ingest reads
/// the same fields in [`crate::domain::job::decode_job`]. Fields it does not name are allowed
/// and ignored (forward compatibility).
#[derive(JsonSchema)]
#[allow(dead_code)]
struct JobEnvelope<P> {
    /// The idempotency key. The AMQP `message_id` property, when set, must equal it. Not
    /// blank, at most 255 bytes (an AMQP short string; the schema counts characters).
    #[schemars(length(min = 1, max = 255), regex(pattern = r"\S"))]
    message_id: String,
    /// The job type; also the routing key.
    #[serde(rename = "type")]
    job_type: String,
    /// The job schema version (1).
    schema_version: u32,
    /// When the portal sent the job (RFC 3339).
    sent_at: DateTime<Utc>,
    ticket: Option<Ticket>,
    /// Who asked for the job in the portal (authorises admin-role jobs).
    actor: Option<Actor>,
    /// Plan and validate only, report what would change, write nothing to the tenant.
    #[serde(default)]
    dry_run: bool,
    payload: P,
}

/// The names of every schema: the job types, then the event types.
pub fn names() -> Vec<&'static str> {
    JobType::ALL
        .iter()
        .map(|t| t.as_str())
        .chain(EVENT_TYPES.iter().copied())
        .collect()
}

/// The schema called `name` (a job type or an event type).
pub fn schema(name: &str) -> Option<Value> {
    if let Some(job_type) = JobType::parse(name) {
        return Some(job_schema(job_type));
    }
    if let Some((_, text)) = HAND_WRITTEN.iter().find(|(n, _)| *n == name) {
        return Some(serde_json::from_str(text).expect("a hand-written schema is JSON"));
    }
    derived_event_schema(name)
}

/// Every schema derived from the Rust types (all but the hand-written ones), by name.
pub fn derived() -> Vec<(&'static str, Value)> {
    names()
        .into_iter()
        .filter(|name| !HAND_WRITTEN.iter().any(|(n, _)| n == name))
        .map(|name| (name, schema(name).expect("every name has a schema")))
        .collect()
}

/// A schema as its file holds it: pretty JSON and a final newline.
pub fn render(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema serializes");
    text.push('\n');
    text
}

fn job_schema(job_type: JobType) -> Value {
    let schema = match job_type {
        JobType::PolicyChanged => schema_for!(JobEnvelope<PolicyChanged>),
        JobType::PolicyMembersAdded => schema_for!(JobEnvelope<MembersAdded>),
        JobType::AdminRoleAssign | JobType::AdminRoleRemove => {
            schema_for!(JobEnvelope<AdminRoleTarget>)
        }
        JobType::AdminRoleChange => schema_for!(JobEnvelope<AdminRoleChange>),
        JobType::OdsMappingChanged => schema_for!(JobEnvelope<OdsMappingChanged>),
        JobType::UserLeaver => schema_for!(JobEnvelope<UserLeaver>),
        JobType::PortalAccessGrant => schema_for!(JobEnvelope<PortalAccessGrant>),
        JobType::PortalAccessActivated | JobType::PortalAccessRemind => {
            schema_for!(JobEnvelope<PortalAccessContacts>)
        }
        // Only the contract's types reach here (`JobType::parse`, `JobType::ALL`).
        JobType::DriftSweep | JobType::DriftSweepRoles => {
            unreachable!("drift sweeps are internal jobs, not job messages")
        }
    };
    let mut schema = serde_json::to_value(schema).expect("a schema serializes");
    name_it(
        &mut schema,
        job_type.as_str(),
        &format!("The `{job_type}` job message (envelope and payload)."),
        SCHEMA_VERSION,
    );
    schema
}

fn derived_event_schema(name: &str) -> Option<Value> {
    let schema = match name {
        JobAccepted::TYPE => schema_for!(JobAccepted),
        JobCompleted::TYPE => schema_for!(JobCompleted),
        NotificationEmail::TYPE => schema_for!(NotificationEmail),
        _ => return None,
    };
    let mut schema = serde_json::to_value(schema).expect("a schema serializes");
    name_it(
        &mut schema,
        name,
        &format!("The `{name}` event, published to the events exchange with routing key `{name}`."),
        EVENT_SCHEMA_VERSION,
    );
    if name == NotificationEmail::TYPE {
        schema["properties"]["template"] = json!({ "type": "string", "enum": EMAIL_TEMPLATES });
    }
    Some(schema)
}

/// Title the schema, and fix its `type` and `schema_version` (plain strings and integers in
/// the Rust types) to the values this message has.
fn name_it(schema: &mut Value, name: &str, description: &str, version: u32) {
    let object = schema.as_object_mut().expect("a schema object");
    object.insert("title".into(), json!(name));
    object.insert("description".into(), json!(description));
    schema["properties"]["type"] = json!({ "const": name });
    schema["properties"]["schema_version"] = json!({ "const": version });
}

#[cfg(test)]
mod tests;
