//! The message contract as code (`messages.md`, version 1.1, "Machine-readable contract").
//!
//! A JSON Schema (draft 2020-12) for every job message and every event, derived with schemars
//! from the types that ingest decodes (`crate::domain::job`) and that the engine publishes
//! (`crate::domain::events`), and the AsyncAPI 3.0 document `contract/asyncapi.yaml` that
//! names them. The schema files under `contract/schemas/` are what these functions derive: a
//! test fails when they differ (`UPDATE_CONTRACT=1 cargo test --lib contract` rewrites them).
//!
//! `drift.detected` (contract 1.1), which the service does not publish yet, has no Rust type:
//! its schema is written by hand and checked against the contract's example in the tests. Once
//! the event has a type, it moves from `HAND_WRITTEN` to `derived_event_schema`.
//!
//! Job schemas state what ingest refuses ([`crate::domain::limits`]) so that a body the
//! schema accepts is never dead-lettered and one it refuses always is. Three of ingest's rules
//! have no JSON Schema keyword; they are written as annotations that standard tools ignore and
//! the project's tests enforce (`lib/test-kit/src/contract.rs`): [`MAX_UTF8_BYTES`] (a length
//! limit is in bytes of UTF-8, `maxLength` counts characters), [`INTEGER_LITERAL`] (`8.0` is an
//! integer to JSON Schema, not to ingest) and [`MAX_DEPTH`]. What no schema can state (lone
//! UTF-16 surrogates, duplicate keys, a number's text) is listed in docs/architecture.md ("The
//! contract as files").

use chrono::{DateTime, Utc};
use schemars::{JsonSchema, schema_for};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::limits::{
    MAX_DEPTH as DEPTH_LIMIT, MAX_IDENTIFIER_BYTES, MAX_MESSAGE_ID_BYTES, MAX_TEXT_BYTES,
};
use crate::domain::{Actor, JobType, PayloadVisitor, SCHEMA_VERSION, Ticket};
use crate::domain::{
    EVENT_SCHEMA_VERSION, JobAccepted, JobApprovalRequired, JobCompleted, NotificationEmail,
};

/// Annotation: the string is at most this many bytes of UTF-8 (its `maxLength` is the same
/// number, which is what a standard tool checks: exact for ASCII, wider otherwise).
pub const MAX_UTF8_BYTES: &str = "x-max-utf8-bytes";
/// Annotation: the number is written as an integer (no fraction, no exponent): `8`, not `8.0`.
pub const INTEGER_LITERAL: &str = "x-integer-literal";
/// Annotation: values nest at most this deep (the message object is level 1).
pub const MAX_DEPTH: &str = "x-max-depth";

/// No NUL character (PostgreSQL `text` cannot hold one), as a regular expression.
const NO_NUL: &str = "^[^\u{0}]*$";

/// Not blank: a character that is not Unicode `White_Space`, which is what `str::trim` takes
/// away (ingest refuses a `message_id` it leaves empty). Listed one by one, because `\s`
/// differs between regular-expression engines (U+0085, U+FEFF).
const NOT_BLANK: &str = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// The AsyncAPI 3.0 document (`contract/asyncapi.yaml`).
pub const ASYNCAPI: &str = include_str!("../../contract/asyncapi.yaml");

/// The OpenAPI 3.1 document of the operator console's JSON API
/// (`contract/console-api.openapi.yaml`, served at `/api/v1/openapi.yaml`; the console tests
/// check the API's answers against it).
pub const CONSOLE_OPENAPI: &str = include_str!("../../contract/console-api.openapi.yaml");

/// The event types of the contract, in its order.
pub const EVENT_TYPES: &[&str] = &[
    JobAccepted::TYPE,
    JobCompleted::TYPE,
    NotificationEmail::TYPE,
    JobApprovalRequired::TYPE,
    DRIFT_DETECTED,
];

const DRIFT_DETECTED: &str = "drift.detected";

/// The templates of `notification.email` (`messages.md`, "notification.email").
pub const EMAIL_TEMPLATES: &[&str] = &[
    NotificationEmail::PHONE_SYSTEM_ADMIN_GRANTED,
    "portal_invitation",
    "portal_invitation_reminder",
];

/// Schemas written by hand (events without a Rust type yet).
const HAND_WRITTEN: &[(&str, &str)] = &[(
    DRIFT_DETECTED,
    include_str!("../../contract/schemas/drift.detected.json"),
)];

/// The byte limits of ingest ([`crate::domain::limits`]), by the JSON pointer of the string
/// schema in a job schema (`propertyNames` for the keys of `toggles`). A pointer that a job
/// type's schema lacks is not about that type.
const BYTE_LIMITS: &[(&str, usize)] = &[
    ("/properties/message_id", MAX_MESSAGE_ID_BYTES),
    ("/$defs/Ticket/properties/reference", MAX_IDENTIFIER_BYTES),
    ("/$defs/Ticket/properties/originator", MAX_TEXT_BYTES),
    ("/$defs/Actor/properties/email", MAX_TEXT_BYTES),
    ("/$defs/Actor/properties/ods_code", MAX_IDENTIFIER_BYTES),
    (
        "/$defs/PolicyDefinition/properties/id",
        MAX_IDENTIFIER_BYTES,
    ),
    ("/$defs/PolicyDefinition/properties/name", MAX_TEXT_BYTES),
    (
        "/$defs/PolicyDefinition/properties/ods_code",
        MAX_IDENTIFIER_BYTES,
    ),
    (
        "/$defs/PolicyDefinition/properties/licence",
        MAX_IDENTIFIER_BYTES,
    ),
    (
        "/$defs/PolicyDefinition/properties/toggles/propertyNames",
        MAX_IDENTIFIER_BYTES,
    ),
    (
        "/$defs/PolicyChanged/properties/members/items",
        MAX_TEXT_BYTES,
    ),
    (
        "/$defs/MembersAdded/properties/policy_id",
        MAX_IDENTIFIER_BYTES,
    ),
    (
        "/$defs/MembersAdded/properties/members/items",
        MAX_TEXT_BYTES,
    ),
    ("/$defs/AdminRoleTarget/properties/user", MAX_TEXT_BYTES),
    (
        "/$defs/AdminRoleTarget/properties/ods_code",
        MAX_IDENTIFIER_BYTES,
    ),
    ("/$defs/AdminRoleChange/properties/user", MAX_TEXT_BYTES),
    (
        "/$defs/AdminRoleChange/properties/ods_code",
        MAX_IDENTIFIER_BYTES,
    ),
    (
        "/$defs/OdsMappingChanged/properties/ods_code",
        MAX_IDENTIFIER_BYTES,
    ),
    (
        "/$defs/OdsMappingChanged/properties/managed_ods_codes/items",
        MAX_IDENTIFIER_BYTES,
    ),
    (
        "/$defs/OdsMappingChanged/properties/onboarded/items",
        MAX_IDENTIFIER_BYTES,
    ),
    ("/$defs/UserLeaver/properties/user", MAX_TEXT_BYTES),
    (
        "/$defs/PortalAccessGrant/properties/batch_label",
        MAX_IDENTIFIER_BYTES,
    ),
    ("/$defs/Contact/properties/contact_id", MAX_IDENTIFIER_BYTES),
    ("/$defs/Contact/properties/name", MAX_TEXT_BYTES),
    ("/$defs/Contact/properties/council", MAX_TEXT_BYTES),
    ("/$defs/Contact/properties/email", MAX_TEXT_BYTES),
    (
        "/$defs/PortalAccessContacts/properties/contact_ids/items",
        MAX_IDENTIFIER_BYTES,
    ),
];

/// The integers of job messages, by JSON pointer, and their range (ingest reads them as
/// `i64`, `u64` and `u32`).
const INTEGERS: &[(&str, Option<(i64, u64)>)] = &[
    ("/properties/schema_version", None),
    (
        "/$defs/PolicyDefinition/properties/version",
        Some((i64::MIN, i64::MAX as u64)),
    ),
    (
        "/$defs/PolicyChanged/properties/total_members",
        Some((0, u64::MAX)),
    ),
    (
        "/$defs/MembersAdded/properties/total_members",
        Some((0, u64::MAX)),
    ),
];

/// The envelope of every job (`messages.md`, "Envelope"), for its schema only: ingest reads
/// the same fields in [`crate::domain::job::decode_job`]. Fields it does not name are allowed
/// and ignored (forward compatibility).
#[derive(JsonSchema)]
#[allow(dead_code)]
struct JobEnvelope<P> {
    /// The idempotency key. The AMQP `message_id` property, when set, must equal it. Not
    /// blank, at most 255 bytes (an AMQP short string): `maxLength` counts characters,
    /// `x-max-utf8-bytes` bytes.
    #[schemars(length(min = 1, max = 255))]
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

/// A name that is not a schema's.
#[derive(Debug, thiserror::Error)]
#[error("no schema is called {name:?}; the schemas are: {}", names().join(", "))]
pub struct UnknownSchema {
    pub name: String,
}

/// What `policy-reconciler contract` prints: the AsyncAPI document, or with `schema` the JSON
/// Schema of that name.
pub fn document(schema: Option<&str>) -> Result<String, UnknownSchema> {
    match schema {
        None => Ok(ASYNCAPI.to_owned()),
        Some(name) => self::schema(name).map(|s| render(&s)).ok_or(UnknownSchema {
            name: name.to_owned(),
        }),
    }
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

/// The schema of a contract job type's message: its envelope around the payload type of
/// its row in the table of job types (`domain::job`'s `job_types!`).
fn job_schema(job_type: JobType) -> Value {
    struct Envelope;
    impl PayloadVisitor for Envelope {
        type Output = schemars::Schema;
        fn visit<P: JsonSchema + for<'de> Deserialize<'de>>(self) -> schemars::Schema {
            schema_for!(JobEnvelope<P>)
        }
    }
    let schema = job_type
        .with_payload_type(Envelope)
        .expect("only the contract's job types are messages");
    let mut schema = serde_json::to_value(schema).expect("a schema serializes");
    name_it(
        &mut schema,
        job_type.as_str(),
        &format!("The `{job_type}` job message (envelope and payload)."),
        SCHEMA_VERSION,
    );
    state_ingest_limits(&mut schema);
    schema
}

/// Add what ingest refuses beyond the types ([`crate::domain::limits`]): byte limits, integers
/// written as such, no NUL in any string or key, and the nesting limit.
fn state_ingest_limits(schema: &mut Value) {
    for (pointer, bytes) in BYTE_LIMITS {
        let target = if let Some(names) = pointer.strip_suffix("/propertyNames") {
            match schema.pointer_mut(names) {
                Some(map) => map
                    .as_object_mut()
                    .expect("a map schema")
                    .entry("propertyNames")
                    .or_insert_with(|| json!({ "type": "string" })),
                None => continue,
            }
        } else {
            match schema.pointer_mut(pointer) {
                Some(target) => target,
                None => continue,
            }
        };
        target["maxLength"] = json!(bytes);
        target[MAX_UTF8_BYTES] = json!(bytes);
    }
    schema["properties"]["message_id"]["pattern"] = json!(NOT_BLANK);
    for (pointer, range) in INTEGERS {
        if let Some(target) = schema.pointer_mut(pointer) {
            target[INTEGER_LITERAL] = json!(true);
            if let Some((min, max)) = range {
                target["minimum"] = json!(min);
                target["maximum"] = json!(max);
            }
        }
    }
    schema["$defs"]["Storable"] = json!({
        "description": "Any value ingest can store: no NUL character in a string or an object key, at any depth (PostgreSQL `text` and `jsonb` cannot hold one).",
        "pattern": NO_NUL,
        "propertyNames": { "pattern": NO_NUL },
        "additionalProperties": { "$ref": "#/$defs/Storable" },
        "items": { "$ref": "#/$defs/Storable" }
    });
    let object = schema.as_object_mut().expect("a schema object");
    object.insert("allOf".into(), json!([{ "$ref": "#/$defs/Storable" }]));
    object.insert(MAX_DEPTH.into(), json!(DEPTH_LIMIT));
}

fn derived_event_schema(name: &str) -> Option<Value> {
    let schema = match name {
        JobAccepted::TYPE => schema_for!(JobAccepted),
        JobCompleted::TYPE => schema_for!(JobCompleted),
        NotificationEmail::TYPE => schema_for!(NotificationEmail),
        JobApprovalRequired::TYPE => schema_for!(JobApprovalRequired),
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
    if name == JobApprovalRequired::TYPE {
        // A `Value` in the type: what the policy planners put there (`engine::policy`).
        schema["properties"]["subject"] = json!({
            "description": "What the job is about: the policy, its name and the job's version (`applied_version`: the stored policy's, when it differs).",
            "type": "object",
            "required": ["policy_id", "version"],
            "properties": {
                "policy_id": { "type": "string" },
                "policy_name": { "type": "string" },
                "version": { "type": "integer" },
                "applied_version": { "type": "integer" }
            }
        });
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
