//! Job messages as the portal publishes them (`messages.md`, "Envelope" and "Job types").
//!
//! [`decode_job`] turns a delivery's body into a [`JobMessage`] or a [`Rejection`] with a
//! failure code. It checks the *shape* (JSON, required fields, known type and schema version);
//! whether the values make sense against stored state and the tenant (a licence that exists, a
//! member count that adds up, well-formed emails) is the planner's business, which rejects the
//! job with per-item failures instead of dead-lettering the message. What PostgreSQL cannot
//! store (a NUL, a lone surrogate, too deep a nesting, too large a value) is rejected here too,
//! with the field and the rule named ([`super::limits`]).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::FailureCode;
use super::limits::{self, FieldLimits};

/// The only job schema version this worker speaks.
pub const SCHEMA_VERSION: u32 = 1;

/// The idempotency key of a job: a job whose `message_id` was seen before is not done again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    /// Non-empty, at most 255 bytes (it is also an AMQP short string), no NUL character.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.trim().is_empty() {
            Err("message_id is empty".into())
        } else if raw.len() > limits::MAX_MESSAGE_ID_BYTES {
            Err("message_id is longer than 255 bytes".into())
        } else if raw.contains('\0') {
            Err("message_id contains a NUL character".into())
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

/// The one table of job types: each row is a job type's variant, its name (a message's
/// `type` and routing key, and `jobs.job_type`), and, for a type of the contract, its
/// payload type; for an internal type (one the service stores itself, never accepted from
/// the broker), the contract type its `job.accepted`/`job.completed` go out as, or `None`
/// when it publishes none. From it come [`JobType`] with [`JobType::ALL`],
/// [`JobType::INTERNAL`], [`JobType::as_str`], [`JobType::published_as`] and
/// [`JobType::publishes_job_events`]; [`JobPayload`] and [`decode_payload`]; and, through
/// [`JobType::with_payload_type`], the contract's schema of each job message. A new job type is
/// one row here (and its kind, registered in `startup::job_kinds`: the checklist in
/// docs/development.md).
macro_rules! job_types {
    (
        contract: { $( $(#[$cdoc:meta])* $c:ident = $cname:literal ($payload:ty), )* }
        internal: { $( $(#[$idoc:meta])* $i:ident = $iname:literal, events as $events:expr, )* }
    ) => {
        /// The job types of the contract; a job's routing key equals its type.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum JobType {
            $( $(#[$cdoc])* $c, )*
            $( $(#[$idoc])* $i, )*
        }

        impl JobType {
            /// The contract's job types, in the contract's order.
            pub const ALL: &'static [JobType] = &[ $( Self::$c, )* ];

            /// Job types the service stores itself (not in [`Self::ALL`], the contract's: a
            /// message of such a type from the broker is an `unknown_type`).
            pub const INTERNAL: &'static [JobType] = &[ $( Self::$i, )* ];

            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$c => $cname, )*
                    $( Self::$i => $iname, )*
                }
            }

            /// The contract type a job of this type publishes its job events as, if any.
            fn publishes_as(self) -> Option<JobType> {
                match self {
                    $( Self::$c => Some(self), )*
                    $( Self::$i => $events, )*
                }
            }

            /// Calls `visit` with the payload type of this contract job type (`None` for an
            /// internal type, which has no message).
            pub fn with_payload_type<V: PayloadVisitor>(self, visit: V) -> Option<V::Output> {
                match self {
                    $( Self::$c => Some(visit.visit::<$payload>()), )*
                    $( Self::$i => None, )*
                }
            }
        }

        /// The payload of each job type of the contract.
        #[derive(Debug, Clone, PartialEq)]
        pub enum JobPayload {
            $( $c($payload), )*
        }

        fn decode_with<'de, D: serde::Deserializer<'de>>(
            job_type: JobType,
            payload: D,
        ) -> Result<JobPayload, D::Error> {
            match job_type {
                $( JobType::$c => Ok(JobPayload::$c(Deserialize::deserialize(payload)?)), )*
                // Never a message's type (`JobType::parse` does not name them).
                $( JobType::$i )|* => Err(serde::de::Error::custom(
                    "internal job types are not message types",
                )),
            }
        }
    };
}

/// Something done with a job type's payload type ([`JobType::with_payload_type`]): the
/// contract's schema of its message, for one.
pub trait PayloadVisitor {
    type Output;

    fn visit<P: JsonSchema + for<'de> Deserialize<'de>>(self) -> Self::Output;
}

job_types! {
    contract: {
        PolicyChanged = "policy.changed" (PolicyChanged),
        PolicyMembersAdded = "policy.members_added" (MembersAdded),
        AdminRoleAssign = "admin_role.assign" (AdminRoleTarget),
        AdminRoleRemove = "admin_role.remove" (AdminRoleTarget),
        AdminRoleChange = "admin_role.change" (AdminRoleChange),
        OdsMappingChanged = "ods_mapping.changed" (OdsMappingChanged),
        UserLeaver = "user.leaver" (UserLeaver),
        PortalAccessGrant = "portal_access.grant" (PortalAccessGrant),
        PortalAccessActivated = "portal_access.activated" (PortalAccessContacts),
        PortalAccessRemind = "portal_access.remind" (PortalAccessContacts),
    }
    internal: {
        /// An operator's revert of a policy job (`jobs revert`), stored as `policy.revert`
        /// and published as `policy.changed` (its events carry `subject.reverts`): the
        /// contract's job types stay the only ones in events.
        PolicyRevert = "policy.revert", events as Some(JobType::PolicyChanged),
        /// The service's own drift sweep of one policy: no ticket waits for it, so no job
        /// events (it publishes `drift.detected`).
        DriftSweep = "drift.sweep", events as None,
        /// The service's own drift sweep of the admin roles of one ODS code; as
        /// [`Self::DriftSweep`].
        DriftSweepRoles = "drift.sweep_roles", events as None,
    }
}

impl JobType {
    /// A job type of the contract (a message's `type`); internal types are not.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.as_str() == raw)
    }

    /// The type of a stored job: a contract job type or an internal one.
    pub fn from_stored(raw: &str) -> Option<Self> {
        Self::parse(raw).or_else(|| Self::INTERNAL.iter().copied().find(|t| t.as_str() == raw))
    }

    /// The contract's job type that events about a job of this type carry (itself for a
    /// type that publishes no job events).
    pub fn published_as(self) -> Self {
        self.publishes_as().unwrap_or(self)
    }

    /// Whether jobs of this type publish `job.accepted` and `job.completed`.
    pub fn publishes_job_events(self) -> bool {
        self.publishes_as().is_some()
    }
}

impl Serialize for JobType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.published_as().as_str())
    }
}

/// The contract's job types, as the strings they are.
impl JsonSchema for JobType {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "JobType".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
        schemars::json_schema!({ "type": "string", "enum": names })
    }
}

impl std::fmt::Display for JobType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ticket a job resolves; carried unchanged on every event about the job.
///
/// The contract says "unchanged", so the ticket is kept as the JSON text the portal sent
/// (`raw`) and serialised as exactly that text: a field this worker does not know
/// (`"priority": "P2"`), the order of the fields and their spacing all reach the events
/// byte for byte. `reference` and `originator` are read from it for logs and operators. It is
/// stored as `json` (not `jsonb`, which reorders keys) and events leave the outbox as stored.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub reference: String,
    pub originator: String,
    raw: Box<RawValue>,
}

impl Ticket {
    /// A ticket with just the contract's two fields (as the `enqueue` command builds one).
    pub fn new(reference: impl Into<String>, originator: impl Into<String>) -> Self {
        let (reference, originator) = (reference.into(), originator.into());
        let raw = serde_json::value::to_raw_value(&serde_json::json!({
            "reference": reference, "originator": originator,
        }))
        .expect("two strings always serialize");
        Self {
            reference,
            originator,
            raw,
        }
    }

    /// The ticket's JSON text, exactly as received.
    pub fn raw_json(&self) -> &str {
        self.raw.get()
    }

    /// Read a ticket from its JSON text (an object with string `reference` and `originator`,
    /// and any other fields, which are kept).
    pub fn from_json(raw: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw)
    }
}

impl PartialEq for Ticket {
    fn eq(&self, other: &Self) -> bool {
        self.raw.get() == other.raw.get()
    }
}

impl Eq for Ticket {}

impl Serialize for Ticket {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

/// An object with string `reference` and `originator`; other fields are allowed and kept.
impl JsonSchema for Ticket {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Ticket".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "The ticket the job resolves; carried byte for byte on every event about the job (fields beyond these two included).",
            "type": "object",
            "required": ["reference", "originator"],
            "properties": {
                "reference": { "type": "string" },
                "originator": { "type": "string" }
            }
        })
    }
}

impl<'de> Deserialize<'de> for Ticket {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            reference: String,
            originator: String,
        }
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let fields: Fields = serde_json::from_str(raw.get())
            .map_err(|e| serde::de::Error::custom(format!("ticket: {e}")))?;
        Ok(Self {
            reference: fields.reference,
            originator: fields.originator,
            raw,
        })
    }
}

/// Who asked for the job in the portal (authorisation of admin-role jobs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(
    description = "A user policy's definition, optionally with its whole membership (then `total_members` must equal its length)."
)]
pub struct PolicyChanged<L = Vec<String>> {
    pub policy: PolicyDefinition,
    /// When present, the whole membership (replacing the stored one).
    #[serde(default = "none")]
    #[schemars(default = "none::<L>")]
    pub members: Option<L>,
    #[serde(default)]
    pub total_members: Option<u64>,
}

fn none<L>() -> Option<L> {
    None
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
    /// The first entry longer than [`limits::MAX_TEXT_BYTES`]: its index and length.
    pub too_long: Option<(usize, usize)>,
}

impl<'de> Deserialize<'de> for ListShape {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// A string's length.
        struct AString(usize);
        impl<'de> Deserialize<'de> for AString {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visit;
                impl serde::de::Visitor<'_> for Visit {
                    type Value = AString;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a string")
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<AString, E> {
                        Ok(AString(s.len()))
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
                let mut shape = ListShape::default();
                while let Some(AString(bytes)) = seq.next_element()? {
                    if bytes > limits::MAX_TEXT_BYTES && shape.too_long.is_none() {
                        shape.too_long = Some((shape.len, bytes));
                    }
                    shape.len += 1;
                }
                Ok(shape)
            }
        }
        deserializer.deserialize_seq(Visit)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
pub struct AdminRoleTarget {
    pub user: String,
    pub ods_code: String,
    pub role: AdminRole,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
pub struct AdminRoleChange {
    pub user: String,
    pub ods_code: String,
    pub from: AdminRole,
    pub to: AdminRole,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
pub struct OdsMappingChanged {
    pub ods_code: String,
    pub managed_ods_codes: Vec<String>,
    pub onboarded: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
pub struct UserLeaver {
    pub user: String,
    #[serde(deserialize_with = "rfc3339::date_time")]
    pub marked_for_deletion_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContactKind {
    Individual,
    Organisation,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
pub struct Contact {
    pub contact_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ContactKind,
    #[serde(default)]
    pub email: Option<String>,
    pub council: String,
    pub member: bool,
    #[serde(default, deserialize_with = "rfc3339::optional_date")]
    pub clerk_until: Option<NaiveDate>,
    #[serde(default)]
    pub has_portal_access: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
pub struct PortalAccessGrant {
    pub batch_label: String,
    pub contacts: Vec<Contact>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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

/// Times and dates as RFC 3339 writes them (`2026-11-22T10:15:00Z`, `2027-03-31`), which is
/// what the contract says and what the JSON Schemas' `date-time` and `date` formats accept.
/// chrono alone also reads a space for the `T` and months and days without their leading
/// zero: a message the schema refuses must not be stored (issue 20).
mod rfc3339 {
    use chrono::{DateTime, NaiveDate, Utc};
    use serde::{Deserialize, Deserializer, de::Error};

    /// `YYYY-MM-DD`, digits where digits go.
    fn full_date(text: &str) -> bool {
        let bytes = text.as_bytes();
        bytes.len() >= 10
            && bytes[..10].iter().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    *b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            })
    }

    pub fn date_time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        if !full_date(&text) || !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
            return Err(D::Error::custom(format!(
                "{text:?} is not an RFC 3339 date-time (2026-11-22T10:15:00Z)"
            )));
        }
        text.parse().map_err(D::Error::custom)
    }

    pub fn optional_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        if text.len() != 10 || !full_date(&text) {
            return Err(D::Error::custom(format!(
                "{text:?} is not an RFC 3339 date (2027-03-31)"
            )));
        }
        text.parse().map(Some).map_err(D::Error::custom)
    }
}

/// The envelope's fields other than `payload`, typed.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    job_type: String,
    schema_version: u32,
    #[serde(deserialize_with = "rfc3339::date_time")]
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
    #[serde(borrow)]
    ticket: Option<&'a RawValue>,
    dry_run: Option<Value>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

/// What names a job for its rejection, read leniently.
struct Identity {
    message_id: Option<MessageId>,
    job_type: Option<JobType>,
    ticket: Option<Ticket>,
    dry_run: bool,
}

impl Identity {
    fn read(fields: &Fields) -> Self {
        Self {
            message_id: fields
                .message_id
                .as_ref()
                .and_then(Value::as_str)
                .and_then(|s| MessageId::parse(s).ok()),
            job_type: fields
                .job_type
                .as_ref()
                .and_then(Value::as_str)
                .and_then(JobType::parse),
            ticket: fields.ticket.and_then(|t| Ticket::from_json(t.get()).ok()),
            dry_run: fields
                .dry_run
                .as_ref()
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}

/// The rejection of a body holding values PostgreSQL cannot store, naming the job when its
/// `message_id` is not itself one of them (read from the sanitised copy of the body).
fn unstorable(scan: &limits::BodyScan) -> Rejection {
    let identity = serde_json::from_slice::<Fields>(&scan.sanitised)
        .ok()
        .map(|fields| Identity::read(&fields));
    let (message_id, job_type, ticket, dry_run) = match identity {
        Some(id) if !scan.message_id_affected => {
            (id.message_id, id.job_type, id.ticket, id.dry_run)
        }
        _ => (None, None, None, false),
    };
    Rejection {
        code: FailureCode::InvalidMessage,
        detail: scan.detail(),
        message_id,
        job_type,
        ticket,
        dry_run,
    }
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
    // Before anything is read: a value the database cannot store must not get as far as it.
    if let Some(scan) = limits::scan_body(body) {
        return Err(unstorable(&scan));
    }
    let fields: Fields = serde_json::from_slice(body).map_err(|e| {
        anonymous(if e.is_data() {
            format!("body: {e}")
        } else {
            format!("body is not JSON: {e}")
        })
    })?;

    // Read what identifies the job first, so that a rejection can still resolve its ticket.
    let Identity {
        message_id,
        job_type,
        ticket,
        dry_run,
    } = Identity::read(&fields);
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
            "message_id must be a non-empty string of at most 255 bytes without NUL".into(),
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
    let mut limits = FieldLimits::default();
    check_payload_shape(job_type, raw_payload, &mut limits).map_err(|e| {
        let text = e.to_string();
        let code = if text.starts_with("missing field") {
            FailureCode::MissingField
        } else {
            FailureCode::InvalidMessage
        };
        reject(code, format!("payload: {text}"))
    })?;
    if let Some(ticket) = &envelope.ticket {
        limits
            .identifier(|| "ticket.reference".into(), &ticket.reference)
            .text(|| "ticket.originator".into(), &ticket.originator);
    }
    if let Some(actor) = &envelope.actor {
        limits
            .text(|| "actor.email".into(), &actor.email)
            .identifier(|| "actor.ods_code".into(), &actor.ods_code);
    }
    limits
        .finish()
        .map_err(|detail| reject(FailureCode::InvalidMessage, detail))?;

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
/// hold 200,000 addresses); the other payloads are small and decoded in full. The sizes of
/// its fields go to `limits`.
fn check_payload_shape(
    job_type: JobType,
    raw: &RawValue,
    limits: &mut FieldLimits,
) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    match job_type {
        JobType::PolicyChanged => {
            let payload = PolicyChanged::<ListShape>::deserialize(&mut de)?;
            policy_limits(&payload.policy, limits);
            if let Some(members) = &payload.members {
                list_limits("payload.members", members, limits);
            }
        }
        JobType::PolicyMembersAdded => {
            let payload = MembersAdded::<ListShape>::deserialize(&mut de)?;
            limits.identifier(|| "payload.policy_id".into(), &payload.policy_id);
            list_limits("payload.members", &payload.members, limits);
        }
        other => payload_limits(&decode_with(other, &mut de)?, limits),
    }
    de.end()
}

fn policy_limits(policy: &PolicyDefinition, limits: &mut FieldLimits) {
    limits
        .identifier(|| "payload.policy.id".into(), &policy.id)
        .text(|| "payload.policy.name".into(), &policy.name)
        .identifier(|| "payload.policy.ods_code".into(), &policy.ods_code)
        .identifier(|| "payload.policy.licence".into(), &policy.licence);
    for plan in policy.toggles.keys() {
        limits.identifier(
            || "payload.policy.toggles (a service plan name)".into(),
            plan,
        );
    }
}

fn list_limits(path: &str, list: &ListShape, limits: &mut FieldLimits) {
    if let Some((index, bytes)) = list.too_long {
        limits.text_of_length(|| format!("{path}[{index}]"), bytes);
    }
}

fn payload_limits(payload: &JobPayload, limits: &mut FieldLimits) {
    let identifiers = |limits: &mut FieldLimits, path: &str, values: &[String]| {
        for (i, value) in values.iter().enumerate() {
            limits.identifier(|| format!("{path}[{i}]"), value);
        }
    };
    match payload {
        JobPayload::PolicyChanged(p) => policy_limits(&p.policy, limits),
        JobPayload::PolicyMembersAdded(p) => {
            limits.identifier(|| "payload.policy_id".into(), &p.policy_id);
        }
        JobPayload::AdminRoleAssign(t) | JobPayload::AdminRoleRemove(t) => {
            limits
                .text(|| "payload.user".into(), &t.user)
                .identifier(|| "payload.ods_code".into(), &t.ods_code);
        }
        JobPayload::AdminRoleChange(c) => {
            limits
                .text(|| "payload.user".into(), &c.user)
                .identifier(|| "payload.ods_code".into(), &c.ods_code);
        }
        JobPayload::OdsMappingChanged(m) => {
            limits.identifier(|| "payload.ods_code".into(), &m.ods_code);
            identifiers(limits, "payload.managed_ods_codes", &m.managed_ods_codes);
            identifiers(limits, "payload.onboarded", &m.onboarded);
        }
        JobPayload::UserLeaver(l) => {
            limits.text(|| "payload.user".into(), &l.user);
        }
        JobPayload::PortalAccessGrant(g) => {
            limits.identifier(|| "payload.batch_label".into(), &g.batch_label);
            for (i, c) in g.contacts.iter().enumerate() {
                limits
                    .identifier(
                        || format!("payload.contacts[{i}].contact_id"),
                        &c.contact_id,
                    )
                    .text(|| format!("payload.contacts[{i}].name"), &c.name)
                    .text(|| format!("payload.contacts[{i}].council"), &c.council);
                if let Some(email) = &c.email {
                    limits.text(|| format!("payload.contacts[{i}].email"), email);
                }
            }
        }
        JobPayload::PortalAccessActivated(c) | JobPayload::PortalAccessRemind(c) => {
            identifiers(limits, "payload.contact_ids", &c.contact_ids);
        }
    }
}

/// Decode the payload of a job of a known type (also used to re-read stored jobs). Taking it
/// by value moves its strings instead of copying them.
pub fn decode_payload(job_type: JobType, payload: Value) -> Result<JobPayload, serde_json::Error> {
    decode_with(job_type, payload)
}

#[cfg(test)]
mod tests;
