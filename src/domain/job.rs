//! Job messages as the portal publishes them (`messages.md`, "Envelope" and "Job types").
//!
//! [`decode_job`] turns a delivery's body into a [`JobMessage`] or a [`Rejection`] with a
//! failure code. It checks the *shape* (JSON, required fields, known type and schema version);
//! whether the values make sense against stored state and the tenant (a licence that exists, a
//! member count that adds up, well-formed emails) is the planner's business, which rejects the
//! job with per-item failures instead of dead-lettering the message.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::FailureCode;

/// The only job schema version this worker speaks.
pub const SCHEMA_VERSION: u32 = 1;

/// The idempotency key of a job: a job whose `message_id` was seen before is not done again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    /// Non-empty, at most 255 characters (it is also an AMQP short string).
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.trim().is_empty() {
            Err("message_id is empty".into())
        } else if raw.len() > 255 {
            Err("message_id is longer than 255 characters".into())
        } else {
            Ok(Self(raw.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The job types of the contract; a job's routing key equals its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobType {
    PolicyChanged,
    PolicyMembersAdded,
    AdminRoleAssign,
    AdminRoleRemove,
    AdminRoleChange,
    OdsMappingChanged,
    UserLeaver,
    PortalAccessGrant,
    PortalAccessActivated,
    PortalAccessRemind,
}

impl JobType {
    pub const ALL: &'static [JobType] = &[
        Self::PolicyChanged,
        Self::PolicyMembersAdded,
        Self::AdminRoleAssign,
        Self::AdminRoleRemove,
        Self::AdminRoleChange,
        Self::OdsMappingChanged,
        Self::UserLeaver,
        Self::PortalAccessGrant,
        Self::PortalAccessActivated,
        Self::PortalAccessRemind,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PolicyChanged => "policy.changed",
            Self::PolicyMembersAdded => "policy.members_added",
            Self::AdminRoleAssign => "admin_role.assign",
            Self::AdminRoleRemove => "admin_role.remove",
            Self::AdminRoleChange => "admin_role.change",
            Self::OdsMappingChanged => "ods_mapping.changed",
            Self::UserLeaver => "user.leaver",
            Self::PortalAccessGrant => "portal_access.grant",
            Self::PortalAccessActivated => "portal_access.activated",
            Self::PortalAccessRemind => "portal_access.remind",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.as_str() == raw)
    }
}

impl Serialize for JobType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for JobType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ticket a job resolves; carried unchanged on every event about the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub reference: String,
    pub originator: String,
}

/// Who asked for the job in the portal (authorisation of admin-role jobs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub email: String,
    pub ods_code: String,
}

/// A decoded, shape-checked job message, borrowing its payload from the body: a
/// 200,000-member payload (about 6 MB) is checked and stored without being built in memory.
#[derive(Debug, Clone)]
pub struct JobMessage<'a> {
    pub message_id: MessageId,
    pub job_type: JobType,
    pub schema_version: u32,
    pub sent_at: DateTime<Utc>,
    pub ticket: Option<Ticket>,
    pub actor: Option<Actor>,
    pub dry_run: bool,
    /// The payload exactly as received (JSON text), stored with the job.
    pub raw_payload: &'a RawValue,
}

impl JobMessage<'_> {
    /// The payload, typed (what the planner works from).
    pub fn payload(&self) -> Result<JobPayload, serde_json::Error> {
        decode_with(
            self.job_type,
            &mut serde_json::Deserializer::from_str(self.raw_payload.get()),
        )
    }
}

/// The payload of each job type.
#[derive(Debug, Clone, PartialEq)]
pub enum JobPayload {
    PolicyChanged(PolicyChanged),
    PolicyMembersAdded(MembersAdded),
    AdminRoleAssign(AdminRoleTarget),
    AdminRoleRemove(AdminRoleTarget),
    AdminRoleChange(AdminRoleChange),
    OdsMappingChanged(OdsMappingChanged),
    UserLeaver(UserLeaver),
    PortalAccessGrant(PortalAccessGrant),
    PortalAccessActivated(PortalAccessContacts),
    PortalAccessRemind(PortalAccessContacts),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PolicyDefinition {
    pub id: String,
    pub name: String,
    pub ods_code: String,
    pub version: i64,
    /// A `skuPartNumber` of the tenant.
    pub licence: String,
    /// Service plan names of the licence; an allow-list (a plan not set `true` is disabled).
    pub toggles: BTreeMap<String, bool>,
}

/// `L` is the member list: the emails, or at ingest only their shape (`ListShape`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PolicyChanged<L = Vec<String>> {
    pub policy: PolicyDefinition,
    /// When present, the whole membership (replacing the stored one).
    #[serde(default = "none")]
    pub members: Option<L>,
    #[serde(default)]
    pub total_members: Option<u64>,
}

fn none<L>() -> Option<L> {
    None
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MembersAdded<L = Vec<String>> {
    pub policy_id: String,
    pub members: L,
    pub total_members: u64,
}

/// A list of strings, checked and counted but not kept: how ingest checks a member list
/// that may hold 200,000 addresses (the planner reads them where they are stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListShape {
    pub len: usize,
}

impl<'de> Deserialize<'de> for ListShape {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AString;
        impl<'de> Deserialize<'de> for AString {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visit;
                impl serde::de::Visitor<'_> for Visit {
                    type Value = AString;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a string")
                    }
                    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<AString, E> {
                        Ok(AString)
                    }
                }
                d.deserialize_str(Visit)
            }
        }
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ListShape;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of strings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ListShape, A::Error> {
                let mut len = 0;
                while seq.next_element::<AString>()?.is_some() {
                    len += 1;
                }
                Ok(ListShape { len })
            }
        }
        deserializer.deserialize_seq(Visit)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminRole {
    PhoneSystemPrimaryAdmin,
    PhoneSystemLocalAdmin,
}

impl AdminRole {
    pub const ALL: &'static [AdminRole] =
        &[Self::PhoneSystemPrimaryAdmin, Self::PhoneSystemLocalAdmin];

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.as_str() == raw)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PhoneSystemPrimaryAdmin => "phone_system_primary_admin",
            Self::PhoneSystemLocalAdmin => "phone_system_local_admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AdminRoleTarget {
    pub user: String,
    pub ods_code: String,
    pub role: AdminRole,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AdminRoleChange {
    pub user: String,
    pub ods_code: String,
    pub from: AdminRole,
    pub to: AdminRole,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OdsMappingChanged {
    pub ods_code: String,
    pub managed_ods_codes: Vec<String>,
    pub onboarded: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserLeaver {
    pub user: String,
    pub marked_for_deletion_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactKind {
    Individual,
    Organisation,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Contact {
    pub contact_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ContactKind,
    #[serde(default)]
    pub email: Option<String>,
    pub council: String,
    pub member: bool,
    #[serde(default)]
    pub clerk_until: Option<NaiveDate>,
    #[serde(default)]
    pub has_portal_access: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PortalAccessGrant {
    pub batch_label: String,
    pub contacts: Vec<Contact>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PortalAccessContacts {
    pub contact_ids: Vec<String>,
}

/// Why a message cannot be processed, with as much of the job as could be read.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub code: FailureCode,
    pub detail: String,
    /// Present when the message's `message_id` could be read: the job is then known, and a
    /// `job.completed` with outcome `rejected` is published for it.
    pub message_id: Option<MessageId>,
    pub job_type: Option<JobType>,
    pub ticket: Option<Ticket>,
    pub dry_run: bool,
}

/// The envelope's fields other than `payload`, typed.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    job_type: String,
    schema_version: u32,
    sent_at: DateTime<Utc>,
    #[serde(default)]
    ticket: Option<Ticket>,
    #[serde(default)]
    actor: Option<Actor>,
    #[serde(default)]
    dry_run: bool,
}

/// The fields that identify a job, read leniently (a rejection still resolves its ticket),
/// and the payload as raw JSON text; every other field is skipped, nothing is copied.
#[derive(Deserialize)]
struct Fields<'a> {
    message_id: Option<Value>,
    #[serde(rename = "type")]
    job_type: Option<Value>,
    schema_version: Option<Value>,
    sent_at: Option<Value>,
    ticket: Option<Value>,
    dry_run: Option<Value>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

/// Decode a job message. `amqp_message_id` is the AMQP `message_id` property, which must
/// equal the body's when present.
pub fn decode_job<'a>(
    body: &'a [u8],
    amqp_message_id: Option<&str>,
) -> Result<JobMessage<'a>, Rejection> {
    let anonymous = |detail: String| Rejection {
        code: FailureCode::InvalidMessage,
        detail,
        message_id: None,
        job_type: None,
        ticket: None,
        dry_run: false,
    };
    let starts_an_object = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    if !starts_an_object {
        return Err(anonymous(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => "body is not a JSON object".into(),
                Err(e) => format!("body is not JSON: {e}"),
            },
        ));
    }
    let fields: Fields = serde_json::from_slice(body).map_err(|e| {
        anonymous(if e.is_data() {
            format!("body: {e}")
        } else {
            format!("body is not JSON: {e}")
        })
    })?;

    // Read what identifies the job first, so that a rejection can still resolve its ticket.
    let message_id = fields
        .message_id
        .as_ref()
        .and_then(Value::as_str)
        .and_then(|s| MessageId::parse(s).ok());
    let job_type = fields
        .job_type
        .as_ref()
        .and_then(Value::as_str)
        .and_then(JobType::parse);
    let ticket = fields
        .ticket
        .clone()
        .and_then(|t| serde_json::from_value::<Ticket>(t).ok());
    let dry_run = fields
        .dry_run
        .as_ref()
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let reject = |code: FailureCode, detail: String| Rejection {
        code,
        detail,
        message_id: message_id.clone(),
        job_type,
        ticket: ticket.clone(),
        dry_run,
    };

    let present = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    for (field, given) in [
        ("message_id", present(&fields.message_id)),
        ("type", present(&fields.job_type)),
        ("schema_version", present(&fields.schema_version)),
        ("sent_at", present(&fields.sent_at)),
        (
            "payload",
            fields.payload.is_some_and(|p| p.get().trim() != "null"),
        ),
    ] {
        if !given {
            return Err(reject(
                FailureCode::MissingField,
                format!("missing field `{field}`"),
            ));
        }
    }
    // The payload is skipped here, not built.
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|e| reject(FailureCode::InvalidMessage, format!("envelope: {e}")))?;
    let Some(message_id) = message_id.clone() else {
        return Err(reject(
            FailureCode::InvalidMessage,
            "message_id must be a non-empty string of at most 255 characters".into(),
        ));
    };
    if let Some(property) = amqp_message_id
        && property != message_id.as_str()
    {
        return Err(reject(
            FailureCode::InvalidMessage,
            format!(
                "AMQP message_id property {property:?} differs from the body's {:?}",
                message_id.as_str()
            ),
        ));
    }
    let Some(job_type) = job_type else {
        return Err(reject(
            FailureCode::UnknownType,
            format!("unknown job type {:?}", envelope.job_type),
        ));
    };
    if envelope.schema_version != SCHEMA_VERSION {
        return Err(reject(
            FailureCode::UnsupportedSchemaVersion,
            format!(
                "schema_version {} is not supported (this worker speaks {SCHEMA_VERSION})",
                envelope.schema_version
            ),
        ));
    }

    let raw_payload = fields.payload.expect("checked present");
    check_payload_shape(job_type, raw_payload).map_err(|e| {
        let text = e.to_string();
        let code = if text.starts_with("missing field") {
            FailureCode::MissingField
        } else {
            FailureCode::InvalidMessage
        };
        reject(code, format!("payload: {text}"))
    })?;

    Ok(JobMessage {
        message_id,
        job_type,
        schema_version: envelope.schema_version,
        sent_at: envelope.sent_at,
        ticket: envelope.ticket,
        actor: envelope.actor,
        dry_run: envelope.dry_run,
        raw_payload,
    })
}

/// Check a payload's shape without building it: member lists are only walked (they may
/// hold 200,000 addresses); the other payloads are small and decoded in full.
fn check_payload_shape(job_type: JobType, raw: &RawValue) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    match job_type {
        JobType::PolicyChanged => PolicyChanged::<ListShape>::deserialize(&mut de).map(drop),
        JobType::PolicyMembersAdded => MembersAdded::<ListShape>::deserialize(&mut de).map(drop),
        other => decode_with(other, &mut de).map(drop),
    }?;
    de.end()
}

/// Decode the payload of a job of a known type (also used to re-read stored jobs). Taking it
/// by value moves its strings instead of copying them.
pub fn decode_payload(job_type: JobType, payload: Value) -> Result<JobPayload, serde_json::Error> {
    decode_with(job_type, payload)
}

fn decode_with<'de, D: serde::Deserializer<'de>>(
    job_type: JobType,
    payload: D,
) -> Result<JobPayload, D::Error> {
    Ok(match job_type {
        JobType::PolicyChanged => JobPayload::PolicyChanged(Deserialize::deserialize(payload)?),
        JobType::PolicyMembersAdded => {
            JobPayload::PolicyMembersAdded(Deserialize::deserialize(payload)?)
        }
        JobType::AdminRoleAssign => JobPayload::AdminRoleAssign(Deserialize::deserialize(payload)?),
        JobType::AdminRoleRemove => JobPayload::AdminRoleRemove(Deserialize::deserialize(payload)?),
        JobType::AdminRoleChange => JobPayload::AdminRoleChange(Deserialize::deserialize(payload)?),
        JobType::OdsMappingChanged => {
            JobPayload::OdsMappingChanged(Deserialize::deserialize(payload)?)
        }
        JobType::UserLeaver => JobPayload::UserLeaver(Deserialize::deserialize(payload)?),
        JobType::PortalAccessGrant => {
            JobPayload::PortalAccessGrant(Deserialize::deserialize(payload)?)
        }
        JobType::PortalAccessActivated => {
            JobPayload::PortalAccessActivated(Deserialize::deserialize(payload)?)
        }
        JobType::PortalAccessRemind => {
            JobPayload::PortalAccessRemind(Deserialize::deserialize(payload)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(job_type: &str, payload: Value) -> Value {
        json!({
            "message_id": "7f0e9a1c-2b7d-4b8e-9d61-3f7a0c2e5b11",
            "type": job_type,
            "schema_version": 1,
            "sent_at": "2026-11-22T10:15:00Z",
            "ticket": { "reference": "INC0012345", "originator": "jane.smith@nhs.net" },
            "actor": { "email": "jane.smith@nhs.net", "ods_code": "RX1" },
            "dry_run": false,
            "payload": payload
        })
    }

    fn decode(value: &Value) -> Result<JobMessage<'static>, Rejection> {
        let body: &'static str = Box::leak(value.to_string().into_boxed_str());
        decode_job(body.as_bytes(), None)
    }

    #[test]
    fn every_contract_example_decodes() {
        let examples = [
            (
                "policy.changed",
                json!({ "policy": { "id": "rx1-standard", "name": "RX1 Standard Users",
                    "ods_code": "RX1", "version": 8, "licence": "ENTERPRISEPACK",
                    "toggles": { "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true, "SWAY": false } },
                  "members": ["a.one@nhs.net", "b.two@nhs.net"], "total_members": 2 }),
            ),
            (
                "policy.members_added",
                json!({ "policy_id": "rx1-standard", "members": ["c.three@nhs.net"], "total_members": 1 }),
            ),
            (
                "admin_role.assign",
                json!({ "user": "bob.jones@nhs.net", "ods_code": "RX1", "role": "phone_system_primary_admin" }),
            ),
            (
                "admin_role.remove",
                json!({ "user": "bob.jones@nhs.net", "ods_code": "RX1", "role": "phone_system_local_admin" }),
            ),
            (
                "admin_role.change",
                json!({ "user": "bob.jones@nhs.net", "ods_code": "RX1",
                        "from": "phone_system_local_admin", "to": "phone_system_primary_admin" }),
            ),
            (
                "ods_mapping.changed",
                json!({ "ods_code": "RX1", "managed_ods_codes": ["RX2", "RX3"], "onboarded": ["RX1", "RX2"] }),
            ),
            (
                "user.leaver",
                json!({ "user": "bob.jones@nhs.net", "marked_for_deletion_at": "2026-11-21T17:00:00Z" }),
            ),
            (
                "portal_access.grant",
                json!({ "batch_label": "A-B", "contacts": [ { "contact_id": "c-1001", "name": "Alice Clerk",
                    "type": "individual", "email": "clerk@anyparish.gov.uk", "council": "Anyparish Parish Council",
                    "member": true, "clerk_until": null, "has_portal_access": false } ] }),
            ),
            (
                "portal_access.activated",
                json!({ "contact_ids": ["c-1001"] }),
            ),
            ("portal_access.remind", json!({ "contact_ids": [] })),
        ];
        assert_eq!(examples.len(), JobType::ALL.len());
        for (job_type, payload) in examples {
            let job = decode(&envelope(job_type, payload))
                .unwrap_or_else(|r| panic!("{job_type}: {} {}", r.code, r.detail));
            assert_eq!(job.job_type.as_str(), job_type);
            assert_eq!(job.ticket.as_ref().unwrap().reference, "INC0012345");
        }
    }

    #[test]
    fn not_json_is_invalid_and_anonymous() {
        let r = decode_job(b"not json {", None).unwrap_err();
        assert_eq!(r.code, FailureCode::InvalidMessage);
        assert!(r.message_id.is_none());
    }

    #[test]
    fn unknown_type_keeps_the_job_identity() {
        let r = decode(&envelope("policy.exploded", json!({}))).unwrap_err();
        assert_eq!(r.code, FailureCode::UnknownType);
        assert_eq!(
            r.message_id.unwrap().as_str(),
            "7f0e9a1c-2b7d-4b8e-9d61-3f7a0c2e5b11"
        );
        assert_eq!(r.ticket.unwrap().reference, "INC0012345");
    }

    #[test]
    fn missing_fields_are_named() {
        let mut value = envelope("policy.members_added", json!({ "policy_id": "p" }));
        let r = decode(&value).unwrap_err();
        assert_eq!(r.code, FailureCode::MissingField);
        assert!(r.detail.contains("members"), "{}", r.detail);

        value.as_object_mut().unwrap().remove("sent_at");
        let r = decode(&value).unwrap_err();
        assert_eq!(r.code, FailureCode::MissingField);
        assert!(r.detail.contains("sent_at"), "{}", r.detail);
    }

    #[test]
    fn unsupported_schema_version() {
        let mut value = envelope("user.leaver", json!({}));
        value["schema_version"] = json!(2);
        assert_eq!(
            decode(&value).unwrap_err().code,
            FailureCode::UnsupportedSchemaVersion
        );
    }

    #[test]
    fn amqp_message_id_must_match() {
        let value = envelope("portal_access.activated", json!({ "contact_ids": ["c-1"] }));
        let body = value.to_string();
        assert!(
            decode_job(
                body.as_bytes(),
                Some("7f0e9a1c-2b7d-4b8e-9d61-3f7a0c2e5b11")
            )
            .is_ok()
        );
        let r = decode_job(body.as_bytes(), Some("other")).unwrap_err();
        assert_eq!(r.code, FailureCode::InvalidMessage);
    }

    #[test]
    fn wrong_shapes_are_invalid() {
        let r = decode(&envelope(
            "admin_role.assign",
            json!({ "user": "u@nhs.net", "ods_code": "RX1", "role": "global_admin" }),
        ))
        .unwrap_err();
        assert_eq!(r.code, FailureCode::InvalidMessage);
    }
}
