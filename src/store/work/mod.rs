//! Planned work: jobs moving through their states, items in chunks, leases, completion.
//!
//! A job enters as `received` (recorded by [`super::inbox`]), is planned and `accepted`
//! (its items stored in numbered chunks), becomes `running` when its first chunk is claimed,
//! and `completed` once every chunk is done, or at once when planning rejects it, fails, or
//! finds nothing to do. By concern:
//!
//! * planning: [`claim_job_to_plan`], [`job_payload`], [`defer_planning`],
//!   [`create_planned_items`], [`accept`];
//! * chunks and leases: [`claim_chunk`], [`renew_lease`], [`release_chunk`], [`chunk_job`],
//!   [`open_items`], [`record_outcomes`];
//! * completion: [`complete_now`], [`all_chunks_done`], [`complete_if_done`],
//!   [`complete_if_done_in`], [`uncompleted_done_jobs`], and ending a job early
//!   ([`end_early_in`], [`older_policy_jobs`] for supersession);
//! * the monitor's reads: [`backlog`], [`unfinished_jobs`].
//!
//! Every claim uses `FOR UPDATE SKIP LOCKED`, so any number of replicas share the work
//! without blocking each other; every write by a chunk's worker is guarded by its lease, so a
//! worker that lost its lease (it stalled and another took over) changes nothing.

mod chunks;
mod completion;
mod monitor;
mod planning;

use serde_json::Value;
use uuid::Uuid;

use crate::domain::{Actor, JobType, Ticket};

pub use chunks::{
    ChunkJob, ClaimLimits, ClaimedChunk, Outcomes, Recorded, chunk_job, claim_chunk, open_items,
    record_outcomes, release_chunk, renew_lease,
};
pub use completion::{
    EndedEarly, all_chunks_done, complete_if_done, complete_if_done_in, complete_now, end_early_in,
    older_policy_jobs, uncompleted_done_jobs,
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

/// Decode a stored ticket.
pub fn ticket(value: Option<Value>) -> Option<Ticket> {
    value.and_then(|v| serde_json::from_value(v).ok())
}
