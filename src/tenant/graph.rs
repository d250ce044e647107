//! [`GraphClient`]: the [`Tenant`] over Microsoft Graph v1.0 (or the simulator) with reqwest.
//!
//! The top layer of the client: it builds each operation's requests, sends them through
//! [`super::batch`] (many users) or `Transport::call` (one request), and reads the answers
//! (see [`super::transport`] for the layering).
//!
//! # What the client sends again
//!
//! The client retries transport faults only; whether an *item* is tried again, re-read and
//! verified is the engine's decision. Every request is sent at most `tenant.max_attempts`
//! times (default 6), the first included, waiting between sends for the `Retry-After` (capped
//! at `tenant.max_retry_after_seconds`) or else an exponential back-off with jitter
//! (`tenant.retry_min_delay_ms` to `tenant.retry_max_delay_ms`). A 503's `Retry-After` is
//! waited for as a 429's (microsoft-graph-docs-contrib `concepts/best-practices-concept.md`:
//! "503 … employ a back-off strategy similar to 429"). A `$batch` is one send for each of its
//! inner requests, which are retried one by one, not the envelope.
//!
//! | request | sent again after |
//! |---|---|
//! | reads: `get_users` (in `$batch`), `skus`, `find_group`, `list_members`, `member_of` (each page) | 429; 5xx (with or without `Retry-After`) and 408; no token; connection failures, timeouts and dropped connections |
//! | membership: `add_members`, `remove_members` (in `$batch`) | the same as reads: both are idempotent (a repeat answers "already a member" / 404 "not a member", which callers treat as done) |
//! | licence writes: `assign_licences` (in `$batch`) | 429, and a connection never made; after a throttling the users are re-read first, because Graph may apply a throttled write anyway, and only those still differing are written again ([`LicenceOutcome::AlreadyHeld`] otherwise) |
//! | creations: `create_group`, `create_user` | 429, and a connection never made |
//! | any request answered 401 | once, with a new token (not counted as an attempt) |
//!
//! A licence write or a creation that fails with a 5xx (a 503 with `Retry-After` too: Graph
//! says nothing of it not being applied), a 408, a timeout or a dropped connection may have
//! been applied, so it is returned at once
//! ([`TenantError::Transient`]): for licences, the engine's applier re-reads the user in its
//! next round and writes only what still differs. Everything else (4xx) is returned at once.
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use super::batch::Inner;
use super::error::{Operation, TenantError};
use super::events::{LicenceWritesThrottled, SeveralGroupsShareAName};
use super::model::{
    AddressMatch, Group, GroupMember, LicenceChange, LicenceOutcome, MatchedBy, MembershipWrite,
    NewGroup, NewUser, UserLicenceState, UserRef,
};
use super::rate::{LocalTokenBucket, Unlimited, WriteBudget};
use super::settings::TenantSettings;
use super::skus::{Sku, SkuCatalogue};
use super::transport::{
    Failure, Fault, Transport, encode_path_segment, encode_query_value, odata_string,
};
use super::{Tenant, WriteGate};
use crate::telemetry::emit;

/// The `$select` of every user read: exactly what licence reconciliation needs.
/// `licenseAssignmentStates` tells direct licences from those inherited from groups
/// ([`super::model::UserLicenceState`]).
pub const USER_SELECT: &str =
    "id,userPrincipalName,usageLocation,assignedLicenses,licenseAssignmentStates";

/// The Graph client. What it retries, and how often, is in the [module docs](self).
pub struct GraphClient {
    transport: Transport,
    sku_cache: tokio::sync::Mutex<Option<(Instant, Arc<SkuCatalogue>)>>,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("root", &self.transport.root)
            .field("budget", &self.transport.budget)
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    /// A client with the in-process write budget of `settings` (`writes_per_second`, `write_burst`).
    pub fn new(settings: TenantSettings) -> Result<Self, TenantError> {
        let budget: Arc<dyn WriteBudget> = if settings.effective_writes_per_second() > 0.0 {
            Arc::new(LocalTokenBucket::new(
                settings.effective_writes_per_second(),
                settings.write_burst,
            ))
        } else {
            Arc::new(Unlimited)
        };
        Self::with_write_budget(settings, budget)
    }

    /// A client sharing a write budget (for example one coordinated across processes).
    pub fn with_write_budget(
        settings: TenantSettings,
        budget: Arc<dyn WriteBudget>,
    ) -> Result<Self, TenantError> {
        Ok(Self {
            transport: Transport::new(settings, budget)?,
            sku_cache: tokio::sync::Mutex::new(None),
        })
    }

    async fn fetch_skus(&self) -> Result<Arc<SkuCatalogue>, TenantError> {
        let url = format!("{}/subscribedSkus", self.transport.root);
        let raw = self
            .transport
            .call(Operation::ListSkus, Method::GET, &url, None)
            .await?;
        let skus: Vec<Sku> = raw.value_list(Operation::ListSkus)?;
        Ok(Arc::new(SkuCatalogue::new(skus)))
    }

    /// `GET /users?$filter=…` for one address, by `mail` or by proxy address. Neither filter
    /// needs `ConsistencyLevel: eventual` (microsoft-graph-docs-contrib
    /// `includes/filter-directory-objects.md`: `mail` and `proxyAddresses` support `eq` in
    /// default queries), and sending it would read the advanced-query index, which lags the
    /// directory further (`concepts/aad-advanced-queries.md`).
    fn find_user_inner(by: MatchedBy, address: &str) -> Inner {
        let filter = match by {
            MatchedBy::ProxyAddress => {
                format!(
                    "proxyAddresses/any(p:p eq {})",
                    odata_string(&format!("smtp:{address}"))
                )
            }
            _ => format!("mail eq {}", odata_string(address)),
        };
        Inner::get(format!(
            "/users?$filter={}&$select={USER_SELECT}",
            encode_query_value(&filter)
        ))
    }

    fn get_user_inner(user: &UserRef) -> Inner {
        Inner::get(format!(
            "/users/{}?$select={USER_SELECT}",
            user.path_segment()
        ))
    }
}

/// A membership change answered 404 naming the group, not the member: a group created moments
/// ago answers so to writes until it has replicated (SupportArticles-docs
/// `404-not-found-error-manage-objects-microsoft-graph.md`). Not the member's absence, and
/// not done: [`TenantError::NotConverged`], worth waiting for.
fn group_not_visible(group_id: Uuid, error: TenantError) -> TenantError {
    match error {
        TenantError::UserNotFound(message) | TenantError::NotMember(message)
            if message.contains(&group_id.to_string()) =>
        {
            TenantError::NotConverged(format!(
                "group {group_id} cannot change members yet: {message}"
            ))
        }
        error => error,
    }
}

#[async_trait]
impl Tenant for GraphClient {
    async fn skus(&self) -> Result<Arc<SkuCatalogue>, TenantError> {
        let mut cache = self.sku_cache.lock().await;
        let ttl = Duration::from_secs(self.transport.settings.sku_cache_ttl_seconds);
        if let Some((_, c)) = cache.as_ref().filter(|(at, _)| at.elapsed() < ttl) {
            return Ok(c.clone());
        }
        let fresh = self.fetch_skus().await?;
        *cache = Some((Instant::now(), fresh.clone()));
        Ok(fresh)
    }

    async fn refresh_skus(&self) -> Result<Arc<SkuCatalogue>, TenantError> {
        let mut cache = self.sku_cache.lock().await;
        let fresh = self.fetch_skus().await?;
        *cache = Some((Instant::now(), fresh.clone()));
        Ok(fresh)
    }

    #[tracing::instrument(skip_all, fields(users = users.len()))]
    async fn get_users(&self, users: &[UserRef]) -> Vec<Result<UserLicenceState, TenantError>> {
        let inners: Vec<Inner> = users.iter().map(Self::get_user_inner).collect();
        self.transport
            .batch_with_retry(Operation::GetUser, &inners)
            .await
            .into_iter()
            .map(|r| r.and_then(|raw| raw.parse(Operation::GetUser)))
            .collect()
    }

    #[tracing::instrument(skip_all, fields(changes = changes.len()))]
    async fn assign_licences_gated(
        &self,
        changes: &[LicenceChange],
        gate: &dyn WriteGate,
    ) -> Vec<Result<LicenceOutcome, TenantError>> {
        let op = Operation::AssignLicence;
        let inners: Vec<Inner> = changes
            .iter()
            .map(|c| {
                Inner::post(
                    format!("/users/{}/assignLicense", c.user.path_segment()),
                    c.body(),
                )
            })
            .collect();
        let mut results: Vec<Option<Result<LicenceOutcome, Failure>>> = vec![None; changes.len()];
        let mut to_write: Vec<usize> = (0..changes.len()).collect();
        let mut backoff = self.transport.backoff();
        let max = self.transport.max_attempts();
        for attempt in 1..=max {
            let round = self
                .transport
                .batch_round_gated(
                    op,
                    to_write.iter().map(|&i| (i, inners[i].clone())).collect(),
                    gate,
                )
                .await;
            to_write.clear();
            let mut retry = Vec::new();
            for (i, r) in round {
                if let Err(f) = &r
                    && f.fault.is_retried(op)
                    && attempt < max
                {
                    retry.push(i);
                }
                results[i] = Some(r.map(|_| LicenceOutcome::Applied));
            }
            if retry.is_empty() {
                break;
            }
            let failures: Vec<&Failure> = retry
                .iter()
                .filter_map(|&i| results[i].as_ref().and_then(|r| r.as_ref().err()))
                .collect();
            let wait = self
                .transport
                .round_delay(failures.iter().map(|f| f.fault), &mut backoff);
            // The caller can get on with the writes that went through (see `super::waits`):
            // hand it the throttled ones (not applied) to read and write again after `wait`,
            // rather than hold the call, and the caller's turn at writing, for it.
            if super::waits::returns_early() && results.iter().any(|r| matches!(r, Some(Ok(_)))) {
                for &i in &retry {
                    if let Some(Err(f)) = &mut results[i] {
                        f.error = TenantError::Postponed {
                            after: wait,
                            error: Box::new(f.error.clone()),
                        };
                    }
                }
                break;
            }
            emit(LicenceWritesThrottled {
                errors: failures.iter().map(|f| &f.error),
                wait,
            });
            tokio::time::sleep(wait).await;
            // Graph may apply a throttled write anyway: read before writing again.
            let refs: Vec<UserRef> = retry.iter().map(|&i| changes[i].user.clone()).collect();
            for (i, state) in retry.into_iter().zip(self.get_users(&refs).await) {
                match state {
                    Ok(s) if changes[i].is_satisfied_by(&s) => {
                        results[i] = Some(Ok(LicenceOutcome::AlreadyHeld))
                    }
                    Ok(_) => to_write.push(i),
                    Err(error) => {
                        results[i] = Some(Err(Failure {
                            error,
                            fault: Fault::Final,
                        }))
                    }
                }
            }
            if to_write.is_empty() {
                break;
            }
        }
        results
            .into_iter()
            .zip(changes)
            .map(|(r, change)| match r {
                // A removal of a licence the user does not hold (Graph: "User does not have a
                // corresponding license"): what it asked already holds. A change that also adds
                // was refused whole, so it stays an error (the caller re-reads and re-plans).
                Some(Err(Failure {
                    error: TenantError::LicenceNotHeld(_),
                    ..
                })) if change.add.is_empty() => Ok(LicenceOutcome::AlreadyHeld),
                Some(r) => r.map_err(|f| f.error),
                None => Err(TenantError::Transient("no answer".to_owned())),
            })
            .collect()
    }

    #[tracing::instrument(skip_all, fields(addresses = addresses.len()))]
    async fn find_users_by_address(
        &self,
        addresses: &[String],
    ) -> Vec<Result<AddressMatch, TenantError>> {
        let op = Operation::FindUsers;
        let mut results: Vec<Option<Result<AddressMatch, TenantError>>> =
            vec![None; addresses.len()];
        let mut open: Vec<usize> = (0..addresses.len()).collect();
        for by in [MatchedBy::Mail, MatchedBy::ProxyAddress] {
            let inners: Vec<Inner> = open
                .iter()
                .map(|&i| Self::find_user_inner(by, &addresses[i]))
                .collect();
            let answers = self.transport.batch_with_retry(op, &inners).await;
            let mut rest = Vec::new();
            for (i, answer) in open.into_iter().zip(answers) {
                match answer.and_then(|raw| raw.value_list::<UserLicenceState>(op)) {
                    Ok(users) if users.is_empty() && by != MatchedBy::ProxyAddress => rest.push(i),
                    Ok(users) => results[i] = Some(Ok(AddressMatch { by, users })),
                    Err(error) => results[i] = Some(Err(error)),
                }
            }
            open = rest;
            if open.is_empty() {
                break;
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(TenantError::Transient("no answer".to_owned()))))
            .collect()
    }

    /// Graph's upsert by alternate key (microsoft-graph-docs-contrib
    /// `api-reference/v1.0/api/group-upsert.md`): `201 Created` with the group when it was
    /// made, `204 No Content` when it existed (then it is read by the same key). The write goes
    /// to the directory's primary copy, so it finds a group that reads (and `$filter` by
    /// display name) do not show yet.
    async fn ensure_group(
        &self,
        unique_name: &str,
        group: &NewGroup,
    ) -> Result<Group, TenantError> {
        let op = Operation::EnsureGroup;
        let url = format!(
            "{}/groups(uniqueName={})",
            self.transport.root,
            encode_path_segment(&odata_string(unique_name))
        );
        let body = json!({
            "displayName": group.display_name,
            "mailNickname": group.mail_nickname,
            "mailEnabled": false,
            "securityEnabled": true,
        });
        // A group created a moment ago can answer 404 even to writes until it has replicated
        // (SupportArticles-docs `404-not-found-error-manage-objects-microsoft-graph.md`): the
        // upsert naming it then refuses rather than making a second one. Wait for it.
        let not_yet = |error: TenantError| match error {
            TenantError::Other { status: 404, .. } | TenantError::UserNotFound(_) => {
                TenantError::NotConverged(format!(
                    "group {unique_name} exists but is not visible yet"
                ))
            }
            error => error,
        };
        let raw = self
            .transport
            .call_with(
                op,
                Method::PATCH,
                &url,
                Some(&body),
                &[("Prefer", "create-if-missing")],
            )
            .await
            .map_err(not_yet)?;
        if raw.status == 201 {
            return raw.parse(op);
        }
        // It exists (the upsert said so), but the replica read may not have it yet.
        let read = format!("{url}?$select=id,displayName");
        self.transport
            .call(op, Method::GET, &read, None)
            .await
            .map_err(not_yet)?
            .parse(op)
    }

    /// `PATCH /groups/{id}` with `members@odata.bind` (microsoft-graph-docs-contrib
    /// `api-reference/v1.0/api/group-post-members.md`, "Add multiple members to a group in a
    /// single request": up to 20). Not sent again after a 5xx: repeated after it was applied,
    /// it fails whole; the caller re-reads the memberships instead.
    async fn add_members_at_once(
        &self,
        group_id: Uuid,
        user_ids: &[Uuid],
    ) -> Result<(), TenantError> {
        let base = self.transport.settings.graph_base_url.trim_end_matches('/');
        let body = json!({
            "members@odata.bind": user_ids
                .iter()
                .map(|u| format!("{base}/v1.0/directoryObjects/{u}"))
                .collect::<Vec<_>>(),
        });
        let url = format!("{}/groups/{group_id}", self.transport.root);
        self.transport
            .call(Operation::AddMembersBulk, Method::PATCH, &url, Some(&body))
            .await
            .map(|_| ())
            .map_err(|e| group_not_visible(group_id, e))
    }

    #[tracing::instrument(skip(self))]
    async fn find_group(&self, display_name: &str) -> Result<Option<Group>, TenantError> {
        let filter = format!("displayName eq {}", odata_string(display_name));
        let url = format!(
            "{}/groups?$filter={}&$select=id,displayName",
            self.transport.root,
            encode_query_value(&filter)
        );
        let raw = self
            .transport
            .call(Operation::FindGroup, Method::GET, &url, None)
            .await?;
        let mut groups: Vec<Group> = raw.value_list(Operation::FindGroup)?;
        if groups.len() > 1 {
            emit(SeveralGroupsShareAName {
                display_name,
                count: groups.len(),
            });
        }
        Ok(if groups.is_empty() {
            None
        } else {
            Some(groups.swap_remove(0))
        })
    }

    /// `GET /groups/{id}?$select=id,displayName` for each, in `$batch` (reads, retried as
    /// reads are).
    async fn group_names(&self, group_ids: &[Uuid]) -> std::collections::HashMap<Uuid, String> {
        let inners: Vec<Inner> = group_ids
            .iter()
            .map(|id| Inner::get(format!("/groups/{id}?$select=id,displayName")))
            .collect();
        self.transport
            .batch_with_retry(Operation::FindGroup, &inners)
            .await
            .into_iter()
            .filter_map(|r| {
                r.and_then(|raw| raw.parse::<Group>(Operation::FindGroup))
                    .ok()
            })
            .map(|g| (g.id, g.display_name))
            .collect()
    }

    async fn create_group(&self, group: &NewGroup) -> Result<Group, TenantError> {
        let body = json!({
            "displayName": group.display_name,
            "mailNickname": group.mail_nickname,
            "mailEnabled": false,
            "securityEnabled": true,
        });
        let url = format!("{}/groups", self.transport.root);
        self.transport
            .call(Operation::CreateGroup, Method::POST, &url, Some(&body))
            .await?
            .parse(Operation::CreateGroup)
    }

    async fn list_members(&self, group_id: Uuid) -> Result<Vec<GroupMember>, TenantError> {
        let mut url = format!(
            "{}/groups/{group_id}/members?$select=id,userPrincipalName",
            self.transport.root
        );
        let mut members = Vec::new();
        loop {
            let raw = self
                .transport
                .call(Operation::ListMembers, Method::GET, &url, None)
                .await?;
            members.extend(raw.value_list::<GroupMember>(Operation::ListMembers)?);
            match raw.body.get("@odata.nextLink").and_then(Value::as_str) {
                Some(next) => url = next.to_owned(),
                None => return Ok(members),
            }
        }
    }

    /// `GET /users/{id}/memberOf/microsoft.graph.group?$select=id,displayName`, following
    /// `@odata.nextLink` (Graph: "List a user's direct memberships", `user-list-memberof`; the
    /// OData cast to `microsoft.graph.group` leaves out directory roles and administrative
    /// units). Each page is a read, retried as reads are.
    async fn member_of(&self, user_id: Uuid) -> Result<Vec<Group>, TenantError> {
        let mut url = format!(
            "{}/users/{user_id}/memberOf/microsoft.graph.group?$select=id,displayName",
            self.transport.root
        );
        let mut groups = Vec::new();
        loop {
            let raw = self
                .transport
                .call(Operation::MemberOf, Method::GET, &url, None)
                .await?;
            groups.extend(raw.value_list::<Group>(Operation::MemberOf)?);
            match raw.body.get("@odata.nextLink").and_then(Value::as_str) {
                Some(next) => url = next.to_owned(),
                None => return Ok(groups),
            }
        }
    }

    /// Removals and additions each in `$batch` (removals first), asking `gate` before each
    /// batch. Membership changes are safe to repeat (a repeated one answers "already a
    /// member" / "not a member"), so the transport sends again what may not have been applied.
    async fn write_memberships(
        &self,
        writes: &[MembershipWrite],
        gate: &dyn WriteGate,
    ) -> Vec<Result<(), TenantError>> {
        let base = self.transport.settings.graph_base_url.trim_end_matches('/');
        let mut results: Vec<Option<Result<(), TenantError>>> = vec![None; writes.len()];
        for add in [false, true] {
            let which: Vec<usize> = (0..writes.len())
                .filter(|&i| writes[i].add == add)
                .collect();
            if which.is_empty() {
                continue;
            }
            let inners: Vec<Inner> = which
                .iter()
                .map(|&i| {
                    let MembershipWrite { group, user, .. } = writes[i];
                    if add {
                        Inner::post(
                            format!("/groups/{group}/members/$ref"),
                            json!({ "@odata.id": format!("{base}/v1.0/directoryObjects/{user}") }),
                        )
                    } else {
                        Inner::delete(format!("/groups/{group}/members/{user}/$ref"))
                    }
                })
                .collect();
            let op = if add {
                Operation::AddMember
            } else {
                Operation::RemoveMember
            };
            let answers = self
                .transport
                .batch_with_retry_gated(op, &inners, gate)
                .await;
            for (i, answer) in which.into_iter().zip(answers) {
                results[i] = Some(
                    answer
                        .map(|_| ())
                        .map_err(|e| group_not_visible(writes[i].group, e)),
                );
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(TenantError::Transient("no answer".to_owned()))))
            .collect()
    }

    async fn create_user(&self, user: &NewUser) -> Result<UserLicenceState, TenantError> {
        let password: String = {
            use rand::Rng;
            let bytes: [u8; 18] = rand::rng().random();
            format!(
                "Sim-{}!",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        };
        let body = json!({
            "accountEnabled": true,
            "displayName": user.display_name,
            "mailNickname": user.mail_nickname,
            "userPrincipalName": user.user_principal_name,
            "usageLocation": user.usage_location,
            "passwordProfile": { "forceChangePasswordNextSignIn": true, "password": password },
        });
        let url = format!("{}/users", self.transport.root);
        let raw = self
            .transport
            .call(Operation::CreateUser, Method::POST, &url, Some(&body))
            .await?;
        let id = raw
            .body
            .get("id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| raw.invalid("created user without id"))?;
        Ok(UserLicenceState {
            id,
            user_principal_name: user.user_principal_name.clone(),
            usage_location: user.usage_location.clone(),
            assigned_licenses: Vec::new(),
            inherited: Vec::new(),
        })
    }
}
