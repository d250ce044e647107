//! [`GraphClient`]: the [`Tenant`] over Microsoft Graph v1.0 (or the simulator) with reqwest.
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use uuid::Uuid;

use super::Tenant;
use super::auth::TokenSource;
use super::batch::{Inner, Raw};
use super::error::{Operation, TenantError};
use super::model::{
    Group, GroupMember, LicenceChange, LicenceOutcome, NewGroup, NewUser, UserLicenceState, UserRef,
};
use super::rate::{LocalTokenBucket, Unlimited, WriteBudget};
use super::settings::TenantSettings;
use super::skus::{Sku, SkuCatalogue};
use crate::telemetry::metrics as m;

/// The `$select` of every user read: exactly what licence reconciliation needs.
pub const USER_SELECT: &str = "id,userPrincipalName,usageLocation,assignedLicenses";

/// Percent-encodes a URL path segment (a UPN, an id).
pub fn encode_path_segment(s: &str) -> String {
    encode(s, b"-._~@")
}

/// Percent-encodes a query parameter value.
pub fn encode_query_value(s: &str) -> String {
    encode(s, b"-._~,")
}

fn encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The OData literal of a string: single quotes doubled, the whole quoted.
pub fn odata_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The Graph client.
///
/// Retries: reads and membership writes are retried as they are (`Retry-After` honoured, else
/// exponential back-off with jitter), up to `max_attempts`. A licence write that is throttled or
/// fails transiently is never simply sent again: the user is re-read first, because Graph may have
/// applied it anyway; only if the state still differs is it written again (see
/// [`Tenant::assign_licences`]).
pub struct GraphClient {
    pub(crate) http: reqwest::Client,
    pub(crate) settings: TenantSettings,
    /// `{graph_base_url}/v1.0`.
    pub(crate) root: String,
    auth: TokenSource,
    pub(crate) budget: Arc<dyn WriteBudget>,
    sku_cache: tokio::sync::Mutex<Option<(Instant, Arc<SkuCatalogue>)>>,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("root", &self.root)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    /// A client with the in-process write budget of `settings` (`writes_per_second`, `write_burst`).
    pub fn new(settings: TenantSettings) -> Result<Self, TenantError> {
        let budget: Arc<dyn WriteBudget> = if settings.writes_per_second > 0.0 {
            Arc::new(LocalTokenBucket::new(
                settings.writes_per_second,
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
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .build()
            .map_err(|e| TenantError::Other {
                status: 0,
                code: "client_setup".to_owned(),
                message: e.to_string(),
            })?;
        Ok(Self {
            auth: TokenSource::new(http.clone(), &settings),
            root: format!("{}/v1.0", settings.graph_base_url.trim_end_matches('/')),
            http,
            settings,
            budget,
            sku_cache: tokio::sync::Mutex::new(None),
        })
    }

    /// Whether writes are limited by a budget (then write `$batch` calls hold at most `write_burst`).
    pub(crate) fn write_limited(&self) -> bool {
        self.settings.writes_per_second > 0.0
    }

    pub(crate) fn backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.settings.retry_min_delay_ms))
            .with_max_delay(Duration::from_millis(self.settings.retry_max_delay_ms))
            .with_jitter()
            .with_max_times(self.settings.max_attempts.max(1) as usize)
            .build()
    }

    /// How long to wait before retrying after `err`: its `Retry-After` (capped) or the next back-off.
    pub(crate) fn delay_for(
        &self,
        err: &TenantError,
        backoff: &mut ExponentialBackoff,
    ) -> Duration {
        self.retry_after_of(err)
            .unwrap_or_else(|| self.next_backoff(backoff))
    }

    /// The (capped) `Retry-After` of a throttling error.
    pub(crate) fn retry_after_of(&self, err: &TenantError) -> Option<Duration> {
        match err {
            TenantError::Throttled {
                retry_after: Some(d),
            } => Some((*d).min(Duration::from_secs(self.settings.max_retry_after_seconds))),
            _ => None,
        }
    }

    pub(crate) fn next_backoff(&self, backoff: &mut ExponentialBackoff) -> Duration {
        backoff
            .next()
            .unwrap_or(Duration::from_millis(self.settings.retry_max_delay_ms))
    }

    /// The wait before the next round of a batched operation: the longest `Retry-After` among
    /// its failures, and at least one back-off step when a failure had none.
    pub(crate) fn round_delay<'a>(
        &self,
        errors: impl IntoIterator<Item = &'a TenantError>,
        backoff: &mut ExponentialBackoff,
    ) -> Duration {
        let mut wait = Duration::ZERO;
        let mut needs_backoff = false;
        for e in errors {
            match self.retry_after_of(e) {
                Some(d) => wait = wait.max(d),
                None => needs_backoff = true,
            }
        }
        if needs_backoff {
            wait = wait.max(self.next_backoff(backoff));
        }
        wait
    }

    /// One HTTP exchange. A 401 makes it fetch a new token and try once more. Network failures
    /// are `Transient`; every HTTP answer (also errors) is returned as [`Raw`].
    pub(crate) async fn send(
        &self,
        op: Operation,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Raw, TenantError> {
        let mut refreshed = false;
        loop {
            let token = self.auth.token().await?;
            let started = Instant::now();
            let mut req = self
                .http
                .request(method.clone(), url)
                .bearer_auth(token.expose_secret());
            if let Some(b) = body {
                req = req.json(b);
            }
            let result = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after);
                    resp.bytes()
                        .await
                        .map(|b| Raw::new(status, retry_after, &b))
                }
                Err(e) => Err(e),
            };
            let elapsed = started.elapsed().as_secs_f64();
            metrics::histogram!(m::TENANT_REQUEST_DURATION_SECONDS, "operation" => op.as_str())
                .record(elapsed);
            let raw = match result {
                Ok(raw) => raw,
                Err(e) => {
                    metrics::counter!(m::TENANT_REQUESTS_TOTAL, "operation" => op.as_str(), "status" => "network")
                        .increment(1);
                    tracing::debug!(operation = op.as_str(), error = %e, "graph request failed");
                    return Err(TenantError::Transient(format!("{}: {e}", op.as_str())));
                }
            };
            record(op, raw.status);
            if raw.status == 429 {
                self.budget.throttled();
            }
            tracing::debug!(
                operation = op.as_str(),
                status = raw.status,
                elapsed,
                "graph request"
            );
            if raw.status == 401 && !refreshed {
                refreshed = true;
                metrics::counter!(m::TENANT_RETRIES_TOTAL, "operation" => op.as_str(), "reason" => "unauthorized")
                    .increment(1);
                self.auth.invalidate(&token).await;
                continue;
            }
            return Ok(raw);
        }
    }

    /// A single (non-batched) call with retries; `Ok` only for 2xx.
    pub(crate) async fn call(
        &self,
        op: Operation,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Raw, TenantError> {
        let mut backoff = self.backoff();
        let mut attempt = 1;
        loop {
            if op.is_write() {
                self.acquire_budget(1).await;
            }
            let err = match self.send(op, method.clone(), url, body).await {
                Ok(raw) if raw.is_success() => return Ok(raw),
                Ok(raw) => raw.error(op),
                Err(e) => e,
            };
            if !err.is_transient() || attempt >= self.settings.max_attempts {
                return Err(err);
            }
            let wait = self.delay_for(&err, &mut backoff);
            count_retry(op, &err);
            tracing::debug!(operation = op.as_str(), ?wait, error = %err, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    pub(crate) async fn acquire_budget(&self, n: u32) {
        let started = Instant::now();
        self.budget.acquire(n).await;
        metrics::histogram!(m::TENANT_WRITE_BUDGET_WAIT_SECONDS)
            .record(started.elapsed().as_secs_f64());
    }

    async fn fetch_skus(&self) -> Result<Arc<SkuCatalogue>, TenantError> {
        let url = format!("{}/subscribedSkus", self.root);
        let raw = self
            .call(Operation::ListSkus, Method::GET, &url, None)
            .await?;
        let skus: Vec<Sku> = raw.value_list(Operation::ListSkus)?;
        Ok(Arc::new(SkuCatalogue::new(skus)))
    }

    fn get_user_inner(user: &UserRef) -> Inner {
        Inner::get(format!(
            "/users/{}?$select={USER_SELECT}",
            user.path_segment()
        ))
    }
}

/// Parses `Retry-After` in seconds (Graph sends seconds; an HTTP date is ignored).
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

pub(crate) fn record(op: Operation, status: u16) {
    metrics::counter!(m::TENANT_REQUESTS_TOTAL, "operation" => op.as_str(), "status" => m::status_class(status))
        .increment(1);
    if status == 429 {
        metrics::counter!(m::TENANT_THROTTLED_TOTAL, "operation" => op.as_str()).increment(1);
    }
}

pub(crate) fn count_retry(op: Operation, err: &TenantError) {
    let reason = if matches!(err, TenantError::Throttled { .. }) {
        "throttled"
    } else {
        "transient"
    };
    metrics::counter!(m::TENANT_RETRIES_TOTAL, "operation" => op.as_str(), "reason" => reason)
        .increment(1);
}

#[async_trait]
impl Tenant for GraphClient {
    async fn skus(&self) -> Result<Arc<SkuCatalogue>, TenantError> {
        let mut cache = self.sku_cache.lock().await;
        let ttl = Duration::from_secs(self.settings.sku_cache_ttl_seconds);
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
        self.batch_with_retry(Operation::GetUser, &inners)
            .await
            .into_iter()
            .map(|r| r.and_then(|raw| raw.parse(Operation::GetUser)))
            .collect()
    }

    #[tracing::instrument(skip_all, fields(changes = changes.len()))]
    async fn assign_licences(
        &self,
        changes: &[LicenceChange],
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
        let mut results: Vec<Option<Result<LicenceOutcome, TenantError>>> =
            vec![None; changes.len()];
        let mut to_write: Vec<usize> = (0..changes.len()).collect();
        let mut backoff = self.backoff();
        for attempt in 1..=self.settings.max_attempts.max(1) {
            let round = self
                .batch_round(
                    op,
                    to_write.iter().map(|&i| (i, inners[i].clone())).collect(),
                )
                .await;
            let mut verify = Vec::new();
            for (i, r) in round {
                if let Err(e) = &r
                    && e.is_transient()
                {
                    count_retry(op, e);
                    verify.push(i);
                }
                results[i] = Some(r.map(|_| LicenceOutcome::Applied));
            }
            let wait = self.round_delay(
                verify
                    .iter()
                    .filter_map(|&i| results[i].as_ref().and_then(|r| r.as_ref().err())),
                &mut backoff,
            );
            to_write.clear();
            if verify.is_empty() || attempt == self.settings.max_attempts {
                break;
            }
            tracing::debug!(
                items = verify.len(),
                ?wait,
                "licence writes failed; re-reading before retrying"
            );
            tokio::time::sleep(wait).await;
            // A throttled or failed write may have been applied: read before writing again.
            let refs: Vec<UserRef> = verify.iter().map(|&i| changes[i].user.clone()).collect();
            for (i, state) in verify.into_iter().zip(self.get_users(&refs).await) {
                match state {
                    Ok(s) if changes[i].is_satisfied_by(&s) => {
                        results[i] = Some(Ok(LicenceOutcome::AlreadyHeld))
                    }
                    Ok(_) => to_write.push(i),
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
            if to_write.is_empty() {
                break;
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(TenantError::Transient("no answer".to_owned()))))
            .collect()
    }

    #[tracing::instrument(skip(self))]
    async fn find_group(&self, display_name: &str) -> Result<Option<Group>, TenantError> {
        let filter = format!("displayName eq {}", odata_string(display_name));
        let url = format!(
            "{}/groups?$filter={}&$select=id,displayName",
            self.root,
            encode_query_value(&filter)
        );
        let raw = self
            .call(Operation::FindGroup, Method::GET, &url, None)
            .await?;
        let mut groups: Vec<Group> = raw.value_list(Operation::FindGroup)?;
        if groups.len() > 1 {
            tracing::warn!(
                display_name,
                count = groups.len(),
                "several groups share a display name; using the first"
            );
        }
        Ok(if groups.is_empty() {
            None
        } else {
            Some(groups.swap_remove(0))
        })
    }

    async fn create_group(&self, group: &NewGroup) -> Result<Group, TenantError> {
        let body = json!({
            "displayName": group.display_name,
            "mailNickname": group.mail_nickname,
            "mailEnabled": false,
            "securityEnabled": true,
        });
        let url = format!("{}/groups", self.root);
        self.call(Operation::CreateGroup, Method::POST, &url, Some(&body))
            .await?
            .parse(Operation::CreateGroup)
    }

    async fn list_members(&self, group_id: Uuid) -> Result<Vec<GroupMember>, TenantError> {
        let mut url = format!(
            "{}/groups/{group_id}/members?$select=id,userPrincipalName",
            self.root
        );
        let mut members = Vec::new();
        loop {
            let raw = self
                .call(Operation::ListMembers, Method::GET, &url, None)
                .await?;
            members.extend(raw.value_list::<GroupMember>(Operation::ListMembers)?);
            match raw.body.get("@odata.nextLink").and_then(Value::as_str) {
                Some(next) => url = next.to_owned(),
                None => return Ok(members),
            }
        }
    }

    async fn add_members(&self, group_id: Uuid, user_ids: &[Uuid]) -> Vec<Result<(), TenantError>> {
        let base = self.settings.graph_base_url.trim_end_matches('/');
        let inners: Vec<Inner> = user_ids
            .iter()
            .map(|u| {
                Inner::post(
                    format!("/groups/{group_id}/members/$ref"),
                    json!({ "@odata.id": format!("{base}/v1.0/directoryObjects/{u}") }),
                )
            })
            .collect();
        self.batch_with_retry(Operation::AddMember, &inners)
            .await
            .into_iter()
            .map(|r| r.map(|_| ()))
            .collect()
    }

    async fn remove_members(
        &self,
        group_id: Uuid,
        user_ids: &[Uuid],
    ) -> Vec<Result<(), TenantError>> {
        let inners: Vec<Inner> = user_ids
            .iter()
            .map(|u| Inner::delete(format!("/groups/{group_id}/members/{u}/$ref")))
            .collect();
        self.batch_with_retry(Operation::RemoveMember, &inners)
            .await
            .into_iter()
            .map(|r| r.map(|_| ()))
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
        let url = format!("{}/users", self.root);
        let raw = self
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_upns_and_filters() {
        assert_eq!(
            encode_path_segment("o'neil+x@nhs.net"),
            "o%27neil%2Bx@nhs.net"
        );
        assert_eq!(odata_string("O'Brien"), "'O''Brien'");
        assert_eq!(
            encode_query_value("displayName eq 'a b'"),
            "displayName%20eq%20%27a%20b%27"
        );
    }
}
