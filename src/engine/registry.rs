//! The job kinds of a release, registered once in `startup.rs`, and the one place where a
//! kind's typed payload, plan and item specs meet the store's JSON.
//!
//! The engine holds each registered [`JobKind`] behind `AnyKind`, which decodes the stored
//! payload into the kind's payload type, and serialises its plan and specs on the way into the
//! store (and back on the way out). A stored value that no longer decodes is corrupt data,
//! reported as [`EngineError::Corrupt`]; a payload that does not decode is the job's own fault
//! and rejects it (`invalid_message`).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::EngineError;
use super::kind::{
    ApplyContext, ItemResult, JobKind, Plan, PlanContext, PlannedItem, PlannedItems, WorkItem,
};
use crate::domain::JobType;

/// A plan as the store keeps it: the kind's plan as JSON, and each item's spec as JSON text.
pub(crate) type StoredPlan = Plan<Value, String>;

/// A job kind with its types erased (see the module docs).
#[async_trait]
pub(crate) trait AnyKind: Send + Sync {
    fn list_left_in_database(&self) -> Option<&'static str>;

    fn writes_to_tenant(&self) -> bool;

    fn background(&self) -> bool;

    /// Plan the job whose stored payload is `payload`; `Ok(Err(_))` when the payload is not
    /// one of this kind.
    async fn plan(
        &self,
        ctx: PlanContext<'_, '_>,
        payload: Value,
    ) -> Result<Result<StoredPlan, serde_json::Error>, EngineError>;

    /// Apply `items`, given the stored plan (`ctx.plan`) and item specs.
    async fn apply(
        &self,
        ctx: &ApplyContext<'_, Value>,
        items: &[WorkItem<Value>],
    ) -> Result<Vec<ItemResult>, EngineError>;
}

struct Registered<K>(K);

fn corrupt(what: &str, error: serde_json::Error) -> EngineError {
    EngineError::Corrupt(format!("{what}: {error}"))
}

#[async_trait]
impl<K: JobKind> AnyKind for Registered<K> {
    fn list_left_in_database(&self) -> Option<&'static str> {
        K::LIST_LEFT_IN_DATABASE
    }

    fn writes_to_tenant(&self) -> bool {
        K::WRITES_TO_TENANT
    }

    fn background(&self) -> bool {
        K::BACKGROUND
    }

    async fn plan(
        &self,
        ctx: PlanContext<'_, '_>,
        payload: Value,
    ) -> Result<Result<StoredPlan, serde_json::Error>, EngineError> {
        let payload: K::Payload = match serde_json::from_value(payload) {
            Ok(payload) => payload,
            Err(error) => return Ok(Err(error)),
        };
        let plan = self.0.plan(ctx, payload).await?;
        let what = K::JOB_TYPE.as_str();
        Ok(Ok(match plan {
            Plan::Accept {
                subject,
                plan,
                items,
            } => Plan::Accept {
                subject,
                plan: serde_json::to_value(plan).map_err(|e| corrupt(what, e))?,
                items: match items {
                    PlannedItems::Listed(items) => PlannedItems::Listed(
                        items
                            .into_iter()
                            .map(|item| {
                                Ok(PlannedItem {
                                    key: item.key,
                                    spec: item
                                        .spec
                                        .map(|s| serde_json::to_string(&s))
                                        .transpose()
                                        .map_err(|e| corrupt(what, e))?,
                                })
                            })
                            .collect::<Result<_, EngineError>>()?,
                    ),
                    PlannedItems::Staged { table, count } => PlannedItems::Staged { table, count },
                },
            },
            Plan::Reject { subject, failures } => Plan::Reject { subject, failures },
            Plan::Fail { subject, failures } => Plan::Fail { subject, failures },
            Plan::Wait { until } => Plan::Wait { until },
        }))
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_, Value>,
        items: &[WorkItem<Value>],
    ) -> Result<Vec<ItemResult>, EngineError> {
        let what = K::JOB_TYPE.as_str();
        let plan: K::Plan = serde_json::from_value(ctx.plan.clone())
            .map_err(|e| corrupt(&format!("{what} plan"), e))?;
        let items = items
            .iter()
            .map(|item| {
                Ok(WorkItem {
                    seq: item.seq,
                    key: item.key.clone(),
                    spec: item
                        .spec
                        .clone()
                        .map(serde_json::from_value)
                        .transpose()
                        .map_err(|e| corrupt(&format!("{what} item {}", item.key), e))?,
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let typed = ApplyContext {
            pool: ctx.pool,
            tenant: ctx.tenant,
            settings: ctx.settings,
            clock: ctx.clock,
            retry: ctx.retry,
            job: ctx.job,
            plan: &plan,
            cancel: ctx.cancel,
            stop: ctx.stop,
            intended: ctx.intended,
            writes: ctx.writes,
            defer: ctx.defer,
            write_turns: ctx.write_turns,
            access: ctx.access,
        };
        self.0.apply(&typed, &items).await
    }
}

/// The registered kinds, by job type.
#[derive(Clone, Default)]
pub struct Kinds {
    by_type: HashMap<JobType, Arc<dyn AnyKind>>,
}

impl std::fmt::Debug for Kinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut types: Vec<&str> = self.by_type.keys().map(|t| t.as_str()).collect();
        types.sort_unstable();
        f.debug_struct("Kinds").field("job_types", &types).finish()
    }
}

impl Kinds {
    pub fn builder() -> KindsBuilder {
        KindsBuilder::default()
    }

    /// The job types registered.
    pub fn job_types(&self) -> impl Iterator<Item = JobType> + '_ {
        self.by_type.keys().copied()
    }

    pub(crate) fn get(&self, job_type: JobType) -> Option<&Arc<dyn AnyKind>> {
        self.by_type.get(&job_type)
    }
}

/// Builds [`Kinds`]: one `register` per job kind.
#[derive(Default)]
pub struct KindsBuilder {
    kinds: Kinds,
}

impl KindsBuilder {
    /// Register `kind` for its job type.
    ///
    /// # Panics
    /// When a kind is already registered for that job type: two kinds for one job type is a
    /// wiring mistake, found when the worker starts.
    pub fn register<K: JobKind>(mut self, kind: K) -> Self {
        let previous = self
            .kinds
            .by_type
            .insert(K::JOB_TYPE, Arc::new(Registered(kind)));
        assert!(
            previous.is_none(),
            "two job kinds registered for {}",
            K::JOB_TYPE
        );
        self
    }

    pub fn build(self) -> Kinds {
        self.kinds
    }
}
