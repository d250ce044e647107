//! User policies: `policy.changed` and `policy.members_added`.
//!
//! Desired state: every member of a policy holds exactly the policy's licence, with every
//! plan the policy's toggles do not set `true` disabled, and no licence of another policy
//! (a move is one `assignLicense` that adds the new and removes the old, so the user never
//! goes without service). Licences no policy assigns are left alone.
//!
//! The applier reads the *current* definition and membership at apply time, not the ones of
//! plan time: two jobs for the same policy therefore always apply the same (newest) state,
//! an item whose user has since moved to another policy is skipped as `superseded`, and a job
//! with an older version resolves its ticket once the newer definition holds. Dry runs apply
//! the definition snapshotted in the plan, as they write no desired state.

use std::marker::PhantomData;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::EngineError;
use super::kind::{ApplyContext, ItemResult, JobKind, Plan, PlanContext, WorkItem};
use crate::domain::{JobType, MembersAdded, PolicyChanged};
use crate::store::policies::PolicyRow;

mod apply;
mod plan;

pub use apply::before_image;
pub(crate) use apply::{Licences, Want, apply, change_for};
use plan::{plan_changed, plan_members_added};

/// What both policy jobs hand their applier: the definition to reconcile members to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyPlan {
    /// The definition as planned (the applier reads the current one; dry runs apply this).
    pub policy: PolicyRow,
    /// The job carried an older version than the one stored.
    pub stale: bool,
    /// The service plans of the policy's licence as the planner saw them: an applier whose
    /// cached catalogue lacks one (a plan the vendor added since) reads it afresh
    /// (`licensing::fresh_catalogue`).
    #[serde(default)]
    pub sku_plans: Vec<Uuid>,
}

/// A policy job: `policy.changed` (a new definition, and optionally the whole membership)
/// or `policy.members_added` (members added to a stored policy). The two differ in their
/// payload and planner only: one applier reconciles members to the policy either way.
pub struct PolicyKind<P>(PhantomData<fn() -> P>);

/// `policy.changed`.
pub type PolicyChangedKind = PolicyKind<PolicyChanged>;
/// `policy.members_added`.
pub type MembersAddedKind = PolicyKind<MembersAdded>;

impl<P> PolicyKind<P> {
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<P> Default for PolicyKind<P> {
    fn default() -> Self {
        Self::new()
    }
}

/// What a policy job's payload brings to its kind: its job type and its planner.
#[async_trait]
pub trait PolicyPayload: DeserializeOwned + Send + Sync + 'static {
    const JOB_TYPE: JobType;

    async fn plan(self, ctx: PlanContext<'_, '_>) -> Result<Plan<PolicyPlan, ()>, EngineError>;
}

#[async_trait]
impl PolicyPayload for PolicyChanged {
    const JOB_TYPE: JobType = JobType::PolicyChanged;

    async fn plan(self, ctx: PlanContext<'_, '_>) -> Result<Plan<PolicyPlan, ()>, EngineError> {
        plan_changed(ctx, self).await
    }
}

#[async_trait]
impl PolicyPayload for MembersAdded {
    const JOB_TYPE: JobType = JobType::PolicyMembersAdded;

    async fn plan(self, ctx: PlanContext<'_, '_>) -> Result<Plan<PolicyPlan, ()>, EngineError> {
        plan_members_added(ctx, self).await
    }
}

#[async_trait]
impl<P: PolicyPayload> JobKind for PolicyKind<P> {
    type Payload = P;
    type Plan = PolicyPlan;
    type Spec = ();
    const JOB_TYPE: JobType = P::JOB_TYPE;
    const LIST_LEFT_IN_DATABASE: Option<&'static str> = Some("members");

    async fn plan(
        &self,
        ctx: PlanContext<'_, '_>,
        payload: P,
    ) -> Result<Plan<PolicyPlan, ()>, EngineError> {
        payload.plan(ctx).await
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_, PolicyPlan>,
        items: &[WorkItem<()>],
    ) -> Result<Vec<ItemResult>, EngineError> {
        apply(ctx, items).await
    }
}
