//! The tenant boundary: the [`Tenant`] trait the engine uses and its Microsoft Graph client.
//!
//! - [`GraphClient`] implements [`Tenant`] over Graph v1.0 (or the simulator, same code).
//! - Reads and writes of many users go through `$batch` (≤ 20 per call, several in flight),
//!   each inner answer handled on its own; results come back in input order.
//! - The client retries transport faults only (throttling, connections, and requests that are
//!   safe to repeat); the table is in [`graph`]'s docs. Trying an item again is the engine's.
//! - Failures are a bounded [`TenantError`] with stable [`TenantError::code`]s.
//! - Writes spend a [`WriteBudget`] (one token per write, also inside a `$batch`).
//!
//! The client is layered with every arrow pointing down: [`graph`] (the [`Tenant`] impl) →
//! [`batch`] (`$batch`) → [`transport`] (one request: token, status, `Retry-After`, back-off)
//! → [`auth`], [`rate`], [`error`], [`events`]. [`model`] uses only [`transport`]'s URL
//! encoding.
pub mod access;
pub mod auth;
pub mod batch;
pub mod error;
pub mod events;
pub mod graph;
pub mod model;
pub mod priority;
pub mod rate;
pub mod settings;
pub mod skus;
pub mod transport;
pub mod waits;

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

pub use access::{AccessLoss, AccessLossReason, AccessWatch, TENANT_ACCESS_LOST};
pub use error::{Operation, TENANT_ERROR_CODES, TenantError};
pub use graph::GraphClient;
pub use model::{
    AddressMatch, AssignedLicence, EnsuredLicence, Group, GroupMember, InheritedLicence,
    LicenceChange, LicenceOutcome, MatchedBy, MembershipWrite, NewGroup, NewUser, UserLicenceState,
    UserRef,
};
pub use priority::Priority;
pub use rate::{LocalTokenBucket, Unlimited, WriteBudget};
pub use settings::TenantSettings;
pub use skus::{ServicePlan, Sku, SkuCatalogue};

/// Asked right before a `$batch` of writes is sent, after the write budget for it is spent:
/// may the writes at these positions (indices into the caller's list) go out now? The engine's
/// gate checks that the job still runs and that its chunk is still its own, and records that
/// the writes are about to be made. A refused batch is not sent; its writes fail with
/// [`TenantError::Withheld`].
#[async_trait]
pub trait WriteGate: Send + Sync {
    async fn admit(&self, positions: &[usize]) -> bool;
}

/// A gate that admits every write.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ungated;

#[async_trait]
impl WriteGate for Ungated {
    async fn admit(&self, _positions: &[usize]) -> bool {
        true
    }
}

/// What the engine needs of a Microsoft 365 tenant. Object-safe: use it as `Arc<dyn Tenant>`.
#[async_trait]
pub trait Tenant: Send + Sync {
    /// The SKU catalogue, cached (for `sku_cache_ttl_seconds`).
    async fn skus(&self) -> Result<Arc<SkuCatalogue>, TenantError>;

    /// Reads the SKU catalogue again and caches it.
    async fn refresh_skus(&self) -> Result<Arc<SkuCatalogue>, TenantError>;

    /// Reads users (id, UPN, usage location, licences); one result per input, in input order.
    async fn get_users(&self, users: &[UserRef]) -> Vec<Result<UserLicenceState, TenantError>>;

    /// Sends one `assignLicense` per change (a swap is one change); one result per input.
    ///
    /// A throttled write may have been applied by Graph anyway, so it is not simply repeated:
    /// after waiting (`Retry-After` or back-off) the user is re-read; if the state already
    /// matches, the result is [`LicenceOutcome::AlreadyHeld`], otherwise the write is sent again
    /// (up to `max_attempts` writes). A write that fails otherwise (5xx, timeout, dropped
    /// connection: it may have been applied) is returned at once as [`TenantError::Transient`];
    /// the caller re-reads before writing again. [`LicenceOutcome::Applied`] means Graph
    /// accepted a write. Nothing is read before the first write: use [`Tenant::ensure_licences`]
    /// to skip users that are already compliant.
    async fn assign_licences(
        &self,
        changes: &[LicenceChange],
    ) -> Vec<Result<LicenceOutcome, TenantError>> {
        self.assign_licences_gated(changes, &Ungated).await
    }

    /// [`Tenant::assign_licences`], asking `gate` before each `$batch` is sent (also before a
    /// throttled write is sent again).
    async fn assign_licences_gated(
        &self,
        changes: &[LicenceChange],
        gate: &dyn WriteGate,
    ) -> Vec<Result<LicenceOutcome, TenantError>>;

    /// Reads every user first, writes only the changes not yet satisfied, and reads those back to
    /// verify them. `changed: false` means the user was already compliant (no write was sent). A
    /// write whose read-back differs fails with [`TenantError::NotConverged`].
    async fn ensure_licences(
        &self,
        changes: &[LicenceChange],
    ) -> Vec<Result<EnsuredLicence, TenantError>> {
        let refs: Vec<UserRef> = changes.iter().map(|c| c.user.clone()).collect();
        let before = self.get_users(&refs).await;
        let mut results: Vec<Option<Result<EnsuredLicence, TenantError>>> =
            vec![None; changes.len()];
        let mut to_write = Vec::new();
        for (i, state) in before.into_iter().enumerate() {
            match state {
                Ok(s) if changes[i].is_satisfied_by(&s) => {
                    results[i] = Some(Ok(EnsuredLicence {
                        state: s,
                        changed: false,
                    }));
                }
                Ok(_) => to_write.push(i),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let writes: Vec<LicenceChange> = to_write.iter().map(|&i| changes[i].clone()).collect();
        let written = self.assign_licences(&writes).await;
        let mut to_verify = Vec::new();
        for (&i, w) in to_write.iter().zip(written) {
            match w {
                Ok(_) => to_verify.push(i),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let verify_refs: Vec<UserRef> =
            to_verify.iter().map(|&i| changes[i].user.clone()).collect();
        for (&i, state) in to_verify.iter().zip(self.get_users(&verify_refs).await) {
            results[i] = Some(match state {
                Ok(s) if changes[i].is_satisfied_by(&s) => Ok(EnsuredLicence {
                    state: s,
                    changed: true,
                }),
                Ok(s) => Err(TenantError::NotConverged(format!(
                    "{} does not hold the licences just assigned",
                    s.user_principal_name
                ))),
                Err(e) => Err(e),
            });
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(TenantError::Transient("no answer".to_owned()))))
            .collect()
    }

    /// Searches users by address, for addresses that are not a user principal name: by `mail`,
    /// then (for those none has as mail) by `proxyAddresses`. One result per input; a match with
    /// no users means none has the address.
    async fn find_users_by_address(
        &self,
        addresses: &[String],
    ) -> Vec<Result<AddressMatch, TenantError>>;

    /// The security group with unique name `unique_name`, created as `group` if there is none
    /// (`PATCH /groups(uniqueName='…')` with `Prefer: create-if-missing`): idempotent, also
    /// when a group created a moment ago is not yet visible to reads, so two callers, or a
    /// retried call, never make two groups.
    async fn ensure_group(&self, unique_name: &str, group: &NewGroup)
    -> Result<Group, TenantError>;

    /// Adds up to 20 users to a group in one `PATCH` (`members@odata.bind`). All or nothing:
    /// if one is already a member, nothing is added ([`TenantError::AlreadyMember`]).
    async fn add_members_at_once(
        &self,
        group_id: Uuid,
        user_ids: &[Uuid],
    ) -> Result<(), TenantError>;

    /// The display names of groups, by id (to name a group in a failure's detail); a group
    /// that cannot be read is left out. (No default: a wrapper such as the engine's access
    /// guard must pass it on, not answer "none".)
    async fn group_names(&self, group_ids: &[Uuid]) -> std::collections::HashMap<Uuid, String>;

    /// The security group with this display name, if any (the first when several share it).
    async fn find_group(&self, display_name: &str) -> Result<Option<Group>, TenantError>;

    /// Creates a security group (seeding).
    async fn create_group(&self, group: &NewGroup) -> Result<Group, TenantError>;

    /// Every member of a group (all pages).
    async fn list_members(&self, group_id: Uuid) -> Result<Vec<GroupMember>, TenantError>;

    /// Every group the user is a direct member of (all pages; not transitive). A user who does
    /// not exist fails with [`TenantError::UserNotFound`].
    async fn member_of(&self, user_id: Uuid) -> Result<Vec<Group>, TenantError>;

    /// Adds and removes group members (`POST /groups/{id}/members/$ref`, `DELETE
    /// /groups/{id}/members/{user}/$ref`, in `$batch`), asking `gate` before each batch; one
    /// answer per write, in order. [`TenantError::AlreadyMember`] for an addition of a member
    /// and [`TenantError::NotMember`] for a removal of a non-member (also when an earlier,
    /// throttled attempt was applied), which an idempotent caller treats as done;
    /// [`TenantError::NotConverged`] while a group created moments ago cannot take members.
    async fn write_memberships(
        &self,
        writes: &[MembershipWrite],
        gate: &dyn WriteGate,
    ) -> Vec<Result<(), TenantError>>;

    /// Adds users to a group, ungated ([`Tenant::write_memberships`]).
    async fn add_members(&self, group_id: Uuid, user_ids: &[Uuid]) -> Vec<Result<(), TenantError>> {
        let writes = MembershipWrite::all(group_id, user_ids, true);
        self.write_memberships(&writes, &Ungated).await
    }

    /// Removes users from a group, ungated ([`Tenant::write_memberships`]).
    async fn remove_members(
        &self,
        group_id: Uuid,
        user_ids: &[Uuid],
    ) -> Vec<Result<(), TenantError>> {
        let writes = MembershipWrite::all(group_id, user_ids, false);
        self.write_memberships(&writes, &Ungated).await
    }

    /// Creates a user (seeding). Not idempotent: a retried create that was applied fails with a
    /// conflict (`tenant_error`).
    async fn create_user(&self, user: &NewUser) -> Result<UserLicenceState, TenantError>;
}
