//! Planned work: jobs moving through their states, items in chunks, leases, completion.
//!
//! A job enters as `received` (recorded by [`super::inbox`]), is planned and `accepted`
//! (its items stored in numbered chunks), becomes `running` when its first chunk is claimed,
//! and `completed` once every chunk is done, or at once when planning rejects it, fails, or
//! finds nothing to do. By concern:
//!
//! * planning: [`claim_job_to_plan`], [`job_payload`], [`defer_planning`],
//!   [`create_planned_items`], [`accept`];
//! * chunks and leases: [`claim_chunk`], [`renew_lease`], [`release_chunk`], [`defer_chunk`], [`chunk_job`],
//!   [`open_items`], [`record_outcomes`];
//! * completion: [`complete_now`], [`all_chunks_done`], [`complete_if_done`],
//!   [`complete_if_done_in`], [`uncompleted_done_jobs`], and ending a job early
//!   ([`end_early_in`], [`older_policy_jobs`] for supersession);
//! * the monitor's reads: [`backlog`], [`unfinished_jobs`];
//! * the operators' reads ([`views`]: the job list, a job in detail; [`browse`]: the
//!   console's filtered and paged reads) and controls
//!   ([`controls`]: pause, resume, expedite, cancel), naming a job by a [`JobRef`].
//!
//! States are enums ([`JobState`], [`ChunkState`], and [`Schedule`]) mapped to the
//! `text` columns that hold their labels.
//!
//! Every claim uses `FOR UPDATE SKIP LOCKED`, so any number of replicas share the work
//! without blocking each other; every write by a chunk's worker is guarded by its lease, so a
//! worker that lost its lease (it stalled and another took over) changes nothing.

mod approval;
pub mod browse;
mod chunks;
mod completion;
pub mod controls;
mod monitor;
mod planning;
pub mod revert;
pub mod views;

use serde_json::Value;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};
use uuid::Uuid;

use crate::domain::{Actor, JobType, Schedule, Ticket};

pub use approval::{approvals_expired, approved, await_approval, expire_approval};
pub use chunks::{
    ChunkFate, ChunkJob, ClaimLimits, ClaimedChunk, LOW_PRIORITY, Outcomes, Recorded, chunk_fate,
    chunk_job, claim_chunk, clear_hold, defer_chunk, end_chunk_early, hold_chunk, hold_job,
    intend_writes, intended_items, open_items, record_outcomes, release_chunk, renew_lease,
};
pub use completion::{
    EndedEarly, JOB_ENDED_CHANNEL, all_chunks_done, complete_if_done, complete_if_done_in,
    complete_now, end_early_in, job_end_listener, older_policy_jobs, uncompleted_done_jobs,
};
pub use monitor::{Backlog, UnfinishedJob, backlog, unfinished_jobs};
pub use planning::{
    ItemRows, JobToPlan, PLANNED_ITEMS, accept, claim_job_to_plan, create_planned_items,
    defer_planning, job_payload,
};

/// What is known of a job for its events.
pub struct JobIdentity<'a> {
    pub id: Uuid,
    pub message_id: &'a str,
    pub job_type: JobType,
    pub ticket: Option<Ticket>,
    pub dry_run: bool,
}

/// Decode a stored actor.
pub fn actor(value: Option<Value>) -> Option<Actor> {
    value.and_then(|v| serde_json::from_value(v).ok())
}

/// A ticket as stored (`jobs.ticket`, `json`): its exact text, for [`ticket`].
pub type StoredTicket = Option<Box<serde_json::value::RawValue>>;

/// Decode a stored ticket, keeping its text as it was received (it is carried byte for byte).
pub fn ticket(value: StoredTicket) -> Option<Ticket> {
    value.and_then(|raw| Ticket::from_json(raw.get()).ok())
}

/// An operator's name for a job: its `id` (a UUID) or its `message_id`, whichever they have
/// (the ticket shows the latter). A `message_id` may itself be a UUID, so both are tried.
#[derive(Debug, Clone, Copy)]
pub struct JobRef<'a> {
    id: Option<Uuid>,
    message_id: &'a str,
}

impl<'a> JobRef<'a> {
    /// `job` as typed, surrounding blanks aside.
    pub fn parse(job: &'a str) -> Self {
        Self {
            id: Uuid::parse_str(job.trim()).ok(),
            message_id: job.trim(),
        }
    }
}

/// Where a job is in its life (`jobs.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Stored by the inbox, waiting to be planned.
    Received,
    /// Planned: its items are in chunks, none claimed yet.
    Accepted,
    /// A chunk has been claimed.
    Running,
    /// Done, with an outcome and its `job.completed` event.
    Completed,
}

impl JobState {
    pub const ALL: [Self; 4] = [
        Self::Received,
        Self::Accepted,
        Self::Running,
        Self::Completed,
    ];

    /// The label in the database and in the operators' output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Accepted => "accepted",
            Self::Running => "running",
            Self::Completed => "completed",
        }
    }
}

/// Where a chunk is (`job_chunks.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkState {
    /// Claimable once due (never claimed, or given back).
    Pending,
    /// Leased by a worker (claimable again once the lease expires).
    Running,
    /// Every item has an outcome (or the job ended early).
    Done,
}

impl ChunkState {
    pub const ALL: [Self; 3] = [Self::Pending, Self::Running, Self::Done];

    /// The label in the database and in the operators' output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
        }
    }
}

/// Map an enum to a `text` column (whose CHECK lists the labels) through its `as_str`: it is
/// bound as a plain `text` parameter, as a string was, so statements and their plans are
/// unchanged; a label the enum does not know fails to decode.
macro_rules! text_column {
    ($type:ty, $what:literal, $all:expr) => {
        impl Type<Postgres> for $type {
            fn type_info() -> PgTypeInfo {
                <str as Type<Postgres>>::type_info()
            }

            fn compatible(ty: &PgTypeInfo) -> bool {
                <str as Type<Postgres>>::compatible(ty)
            }
        }

        impl Encode<'_, Postgres> for $type {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> Decode<'r, Postgres> for $type {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                let label = <&str as Decode<Postgres>>::decode(value)?;
                $all.into_iter()
                    .find(|known| known.as_str() == label)
                    .ok_or_else(|| format!("unknown {} {label:?}", $what).into())
            }
        }
    };
}

text_column!(JobState, "job state", JobState::ALL);
text_column!(ChunkState, "chunk state", ChunkState::ALL);
text_column!(
    Schedule,
    "schedule",
    [Schedule::Immediate, Schedule::OffPeak]
);
