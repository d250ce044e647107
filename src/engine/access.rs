//! Holding work when the service loses its access to the tenant.
//!
//! Every chunk's applier talks to the tenant through an [`AccessGuard`]. The first call that
//! meets an access failure ([`TenantError::access_lost`]: a credential refused, a permission
//! revoked) trips the guard: it records the loss in the process's [`AccessWatch`] (`/readyz`,
//! the `reconciler_tenant_access_lost` gauge) and cancels the chunk's token, so the applier
//! stops at its next safe point as it does when a lease is lost. The executor then drops the
//! results that loss produced (an item is never failed for it), records the others, and
//! hands the chunk back to wait `engine.access_retry_seconds` with the job's detail saying
//! `tenant_access_lost` ([`crate::store::work::hold_chunk`]). The chunk is claimed again after
//! the wait; once access is back it runs as any other and the job completes by itself.
//!
//! This is the engine's, not a kind's: every kind (policies, admin roles, portal) holds alike.

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::kind::{ItemOutcome, ItemResult};
use crate::domain::FailureCode;
use crate::tenant::{
    AccessLoss, AccessWatch, AddressMatch, EnsuredLicence, Group, GroupMember, LicenceChange,
    LicenceOutcome, MembershipWrite, NewGroup, NewUser, SkuCatalogue, Tenant, TenantError,
    UserLicenceState, UserRef, WriteGate,
};

/// A chunk's view of the tenant: the engine's client, watched for access failures.
pub struct AccessGuard {
    inner: Arc<dyn Tenant>,
    watch: Arc<AccessWatch>,
    cancel: CancellationToken,
    tripped: Mutex<Option<AccessLoss>>,
}

impl AccessGuard {
    pub fn new(inner: Arc<dyn Tenant>, watch: Arc<AccessWatch>, cancel: CancellationToken) -> Self {
        Self {
            inner,
            watch,
            cancel,
            tripped: Mutex::new(None),
        }
    }

    /// The loss that stopped the chunk, if one did.
    pub fn tripped(&self) -> Option<AccessLoss> {
        self.tripped.lock().clone()
    }

    fn see(&self, error: Option<&TenantError>) {
        match error.and_then(|e| e.access_lost().map(|r| (r, e))) {
            Some((reason, error)) => {
                let detail = error.to_string();
                self.watch.lost(reason, &detail);
                let mut tripped = self.tripped.lock();
                if tripped.is_none() {
                    *tripped = Some(AccessLoss::new(reason, detail));
                }
                drop(tripped);
                self.cancel.cancel();
            }
            None if error.is_none() && self.tripped.lock().is_none() => self.watch.restored(),
            None => {}
        }
    }

    fn check<T>(&self, result: Result<T, TenantError>) -> Result<T, TenantError> {
        self.see(result.as_ref().err());
        result
    }

    fn check_all<T>(&self, results: Vec<Result<T, TenantError>>) -> Vec<Result<T, TenantError>> {
        let lost = results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .find(|e| e.access_lost().is_some());
        match lost {
            Some(e) => self.see(Some(e)),
            None if results.iter().any(Result::is_ok) => self.see(None),
            None => {}
        }
        results
    }

    /// The results to record of a round run while access was lost: those an access failure
    /// (or the stop it caused) failed are dropped, to be tried again once access is back.
    pub fn keep(&self, results: Vec<ItemResult>) -> Vec<ItemResult> {
        if self.tripped.lock().is_none() {
            return results;
        }
        results
            .into_iter()
            .filter(|r| {
                !(r.outcome == ItemOutcome::Failed
                    && matches!(
                        r.code,
                        Some(
                            FailureCode::Forbidden
                                | FailureCode::TenantUnavailable
                                | FailureCode::TenantRejected
                        )
                    ))
            })
            .collect()
    }
}

#[async_trait]
impl Tenant for AccessGuard {
    async fn skus(&self) -> Result<Arc<SkuCatalogue>, TenantError> {
        // Usually answered from the client's cache, without asking the tenant: a success says
        // nothing of access (it cleared a loss in `/readyz` while every Graph call was
        // refused), so only a failure counts.
        let result = self.inner.skus().await;
        if let Err(e) = &result {
            self.see(Some(e));
        }
        result
    }

    async fn refresh_skus(&self) -> Result<Arc<SkuCatalogue>, TenantError> {
        self.check(self.inner.refresh_skus().await)
    }

    async fn get_users(&self, users: &[UserRef]) -> Vec<Result<UserLicenceState, TenantError>> {
        self.check_all(self.inner.get_users(users).await)
    }

    async fn assign_licences(
        &self,
        changes: &[LicenceChange],
    ) -> Vec<Result<LicenceOutcome, TenantError>> {
        self.check_all(self.inner.assign_licences(changes).await)
    }

    async fn assign_licences_gated(
        &self,
        changes: &[LicenceChange],
        gate: &dyn WriteGate,
    ) -> Vec<Result<LicenceOutcome, TenantError>> {
        self.check_all(self.inner.assign_licences_gated(changes, gate).await)
    }

    async fn ensure_licences(
        &self,
        changes: &[LicenceChange],
    ) -> Vec<Result<EnsuredLicence, TenantError>> {
        self.check_all(self.inner.ensure_licences(changes).await)
    }

    async fn find_users_by_address(
        &self,
        addresses: &[String],
    ) -> Vec<Result<AddressMatch, TenantError>> {
        self.check_all(self.inner.find_users_by_address(addresses).await)
    }

    async fn ensure_group(
        &self,
        unique_name: &str,
        group: &NewGroup,
    ) -> Result<Group, TenantError> {
        self.check(self.inner.ensure_group(unique_name, group).await)
    }

    async fn add_members_at_once(
        &self,
        group_id: Uuid,
        user_ids: &[Uuid],
    ) -> Result<(), TenantError> {
        self.check(self.inner.add_members_at_once(group_id, user_ids).await)
    }

    async fn group_names(&self, group_ids: &[Uuid]) -> std::collections::HashMap<Uuid, String> {
        self.inner.group_names(group_ids).await
    }

    async fn find_group(&self, display_name: &str) -> Result<Option<Group>, TenantError> {
        self.check(self.inner.find_group(display_name).await)
    }

    async fn create_group(&self, group: &NewGroup) -> Result<Group, TenantError> {
        self.check(self.inner.create_group(group).await)
    }

    async fn list_members(&self, group_id: Uuid) -> Result<Vec<GroupMember>, TenantError> {
        self.check(self.inner.list_members(group_id).await)
    }

    async fn member_of(&self, user_id: Uuid) -> Result<Vec<Group>, TenantError> {
        self.check(self.inner.member_of(user_id).await)
    }

    async fn write_memberships(
        &self,
        writes: &[MembershipWrite],
        gate: &dyn WriteGate,
    ) -> Vec<Result<(), TenantError>> {
        self.check_all(self.inner.write_memberships(writes, gate).await)
    }

    async fn create_user(&self, user: &NewUser) -> Result<UserLicenceState, TenantError> {
        self.check(self.inner.create_user(user).await)
    }
}
