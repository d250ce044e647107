//! The language of the contract: job messages, events, failure codes and the value types
//! they are made of. Values are parsed once at the edge into types that cannot hold an
//! invalid value (`EmailAddress`, `OdsCode`, `MessageId`), so the rest of the crate never
//! re-checks them.

mod codes;
mod email;
mod events;
mod job;
pub mod limits;
mod ods;
pub mod permissions;

pub use codes::FailureCode;
pub use email::EmailAddress;
pub use events::{
    ApprovalThreshold, ChangeEffect, Counts, DriftCounts, DriftDetected, DriftItem,
    EVENT_SCHEMA_VERSION, EventHeader, Failure, JobAccepted, JobApprovalRequired, JobCompleted,
    MAX_DRIFT_ITEMS_LISTED, MAX_FAILURES_LISTED, NotificationEmail, Outcome, Schedule,
};
pub use job::{
    Actor, AdminRole, AdminRoleChange, AdminRoleTarget, Contact, ContactKind, JobMessage,
    JobPayload, JobType, MembersAdded, MessageId, OdsMappingChanged, PayloadVisitor, PolicyChanged,
    PolicyDefinition, PortalAccessContacts, PortalAccessGrant, Rejection, SCHEMA_VERSION, Ticket,
    UserLeaver, decode_job, decode_payload,
};
pub use ods::OdsCode;
