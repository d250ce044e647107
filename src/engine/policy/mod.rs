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

use async_trait::async_trait;
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
    /// ([`licensing::fresh_catalogue`]).
    #[serde(default)]
    pub sku_plans: Vec<Uuid>,
}

/// `policy.changed`: a new definition, and optionally the whole membership.
pub struct PolicyChangedKind;

#[async_trait]
impl JobKind for PolicyChangedKind {
    type Payload = PolicyChanged;
    type Plan = PolicyPlan;
    type Spec = ();
    const JOB_TYPE: JobType = JobType::PolicyChanged;
    const LIST_LEFT_IN_DATABASE: Option<&'static str> = Some("members");

    async fn plan(
        &self,
        ctx: PlanContext<'_, '_>,
        payload: PolicyChanged,
    ) -> Result<Plan<PolicyPlan, ()>, EngineError> {
        plan_changed(ctx, payload).await
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_, PolicyPlan>,
        items: &[WorkItem<()>],
    ) -> Result<Vec<ItemResult>, EngineError> {
        apply(ctx, items).await
    }
}

/// `policy.members_added`: members added to a stored policy.
pub struct MembersAddedKind;

#[async_trait]
impl JobKind for MembersAddedKind {
    type Payload = MembersAdded;
    type Plan = PolicyPlan;
    type Spec = ();
    const JOB_TYPE: JobType = JobType::PolicyMembersAdded;
    const LIST_LEFT_IN_DATABASE: Option<&'static str> = Some("members");

    async fn plan(
        &self,
        ctx: PlanContext<'_, '_>,
        payload: MembersAdded,
    ) -> Result<Plan<PolicyPlan, ()>, EngineError> {
        plan_members_added(ctx, payload).await
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_, PolicyPlan>,
        items: &[WorkItem<()>],
    ) -> Result<Vec<ItemResult>, EngineError> {
        apply(ctx, items).await
    }
}
