//! The Graph-compatible tenant simulator (`policy-reconciler tenant-simulator`).
//!
//! It serves the Microsoft Graph v1.0 subset of the tenant contract (`tenant.md`: token endpoint,
//! `subscribedSkus`, users, `assignLicense`, groups and members, a user's `memberOf`, `$batch`)
//! with Graph's JSON and error shapes, throttling (429 + `Retry-After`), latency and faults
//! (503s with `Retry-After`), a `request-id` and the echoed `client-request-id` on every response
//! and inner `$batch` response. Beyond the basics it serves, as Graph documents them:
//!
//! | call | what it does (stats kind) |
//! |---|---|
//! | `GET /v1.0/users?$filter=…&$select&$top&$count` | users by `userPrincipalName eq`, `mail eq`, `proxyAddresses/any(p:p eq 'smtp:…')`, `otherMails/any(…)`, with `and`/`or`, from indexes, with or without `ConsistencyLevel: eventual`; `@odata.count` only with that header; other filters 400 `Request_UnsupportedQuery` (`list_users`) |
//! | `GET /v1.0/subscribedSkus` | the catalogue, with `@odata.context` `…/$metadata#subscribedSkus` (`subscribed_skus`) |
//! | `POST /v1.0/users` | refuses UPNs outside Entra ID's rules and usage locations that are not ISO 3166-1 alpha-2 codes ISO assigns (`ZZ`, `AA`, `GBR` refused: 400 `Request_BadRequest`); `mail` becomes the primary proxy address |
//! | `PATCH /v1.0/users/{id or upn}` | `usageLocation` (the same codes); 204 (`update_user`) |
//! | `POST /v1.0/users/{id or upn}/assignLicense` | both `addLicenses` and `removeLicenses` required (`[]` for none); one missing: 400 `Request_BadRequest` "One or more parameters of the operation 'assignLicense' are missing from the request payload. The missing parameters are: removeLicenses." (`assign_license`) |
//! | `GET /v1.0/groups?$filter=…` | `displayName eq '…'` or `startswith(displayName,'…')`, without regard to case, quotes doubled; with `@odata.context` `…/$metadata#groups`; other filters 400 (`list_groups`) |
//! | `GET /v1.0/groups/{id}/members/microsoft.graph.user` | the OData cast: the members that are users (all of them in the simulator), paged as `members`, `@odata.context` `…/$metadata#users` (`list_members`) |
//! | `GET /v1.0/groups/{id}`, `GET /v1.0/groups(uniqueName='…')` | a group, `$select` (`get_group`) |
//! | `PATCH /v1.0/groups/{id}` | properties and `members@odata.bind` (at most 20, all or none); 204 (`update_group`) |
//! | `PATCH /v1.0/groups(uniqueName='…')` | with `Prefer: create-if-missing` creates (201) or updates (204); without it, a missing group is 404 (`upsert_group`) |
//! | `GET /v1.0/groups/{id}/members/$count`, `…/members/microsoft.graph.user/$count` | `text/plain` count, needs `ConsistencyLevel: eventual` (`count_members`) |
//! | `POST /v1.0/$batch` | ids case-insensitive and unique; `dependsOn` runs dependencies first, and a request whose dependency failed answers 424 |
//! | any known path, wrong method | 405 `Request_BadRequest` (`method_not_allowed`) |
//! | `GET /{tenant}/v2.0/.well-known/openid-configuration`, `GET /{tenant}/discovery/v2.0/keys` | the token service's discovery document (pointing at the simulator) and its (empty) key set |
//!
//! Every Graph 401 carries Graph's `WWW-Authenticate: Bearer …` challenge. Seeded users may have
//! `mail`, `proxyAddresses` and `otherMails`, seeded groups a `uniqueName` (see [`Seed`]).
//!
//! Graph's unkind behaviours, each switched by a [`SimulatorBehaviour`] knob (all off by
//! default; `profile = "realistic"` / `--profile realistic` / [`SimulatorSettings::realistic`]
//! turns them all on):
//!
//! | behaviour | knobs | follows |
//! |---|---|---|
//! | replication lag: a read may show an object as before a recent write (licences, usage location, group creation, membership; `uniqueName` upserts and `members@odata.bind` included), a new user or group is missing (404, absent from lists and filters), also to writes naming it | `replication_lag_ms`, `long_lag_probability`, `long_lag_ms`, `stale_read_probability`, `new_object_write_404_probability` | entra-docs `architecture.md` "Data consistency" ([`replica`]) |
//! | faults not applied: 500, 503 + `Retry-After`; dropped connections | `fault_rate`, `dropped_connection_rate` | `concepts/errors.md` |
//! | writes applied, then answered 500/503/504 (per inner `$batch` request), or their connection dropped | `applied_then_fault_rate`, `applied_then_dropped_rate` | no document promises a 5xx write was not applied |
//! | 429 writes applied anyway | `throttled_write_applied_probability` | observed, undocumented |
//! | throttling: resource units and writes per app, writes per tenant (all apps); 429s with `x-ms-throttle-scope` and `x-ms-throttle-information`, answers above 80 % of a limit with `x-ms-throttle-limit-percentage`; `x-ms-throttle-priority: low` writes throttled first above 80 % | `resource_units_per_window`, `writes_per_window`, `tenant_writes_per_window` and their windows | `concepts/throttling-limits.md`, identity section |
//! | latency | `latency_ms`, `latency_jitter_ms` | |
//!
//! Inspection (`/_sim/users/…`, [`Shared::user`], [`Shared::groups_of`]) always reads the
//! authoritative state. The admin routes:
//!
//! | route | purpose |
//! |---|---|
//! | `GET /_sim/stats` | [`StatsSnapshot`] as JSON (also writes by `x-ms-throttle-priority`) |
//! | `POST /_sim/reset-stats` | clears the counters |
//! | `GET /_sim/config`, `POST /_sim/config` | reads / patches the [`SimulatorBehaviour`] (every knob; `"profile"` starts from that profile's figures) |
//! | `GET /_sim/users/{id or upn}` | a user with every property |
//! | `POST /_sim/revoke-tokens` | invalidates every issued token |
//! | `GET /_sim/access`, `POST /_sim/access` | `{"credentials_revoked": bool, "permissions_revoked": bool}`: access lost (token endpoint AADSTS7000112 and issued tokens invalid; Graph 403 `Authorization_RequestDenied`) and restored ([`identity::AccessKnobs`]) |
//! | `POST /_sim/fail-next` | `{"count":N,"status":503}`: the next N Graph calls fail (status 0: drop N connections) |
//! | `PATCH /_sim/skus/{skuPartNumber}` | `{"capabilityStatus":"Suspended","prepaidUnits":{"enabled":800,"warning":0}}` (each optional) |
//! | `POST /_sim/skus/{skuPartNumber}/plans` | `{"servicePlanName":"NEW_PLAN","servicePlanId":"…"}` (id optional): the vendor adds a plan; holders get it enabled |
//! | `POST /_sim/groups` | `{"displayName","assignedLicenses":[{"skuId","disabledPlans"}],"members":[id or upn]}`: a licensed group; 201 `{"id"}` |
//! | `PUT /_sim/groups/{id}/assignedLicenses` | `{"assignedLicenses":[…]}`: replaces a group's licences, members reprocessed |
//! | `POST /_sim/groups/{id}/members` | `{"members":[id or upn]}`: members added, reprocessed for the group's licences |
//!
//! Licensing as Graph and Entra ID do it ([`state`]'s `licensing`): a group may hold licences
//! that its members inherit (`assignedLicenses` lists them, `licenseAssignmentStates` tells
//! direct from inherited and shows `CountViolation`, `MutuallyExclusiveViolation` and
//! `DependencyViolation`); removing an inherited licence directly answers 400 "User license is
//! inherited from a group membership and it cannot be removed directly from the user."; a
//! direct assignment beside an inherited one is allowed (one seat, effective plans the union);
//! a `Suspended` or `LockedOut` SKU has no assignable seats. Two licences conflict when each
//! enables one plan of a documented conflicting pair (SharePoint Online Plan 1 and Plan 2,
//! [`catalogue::CONFLICTING_PLANS`]: Office 365 E1 with E3 or E5; E3 with E5 does not conflict)
//! or share a seed's `mutuallyExclusiveGroup`. Knobs `plan_dependencies` and
//! `graph_conflict_wording` switch the dependency refusals and Graph's conflict wording.
//!
//! Run it with [`serve`] (the CLI) or [`spawn`] (tests, `--simulator` mode).
pub mod catalogue;
pub mod events;
pub mod identity;
pub mod replica;
mod routes;
pub mod settings;
pub mod state;
pub mod stats;
pub mod throttle;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use secrecy::SecretString;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use catalogue::{Seed, default_catalogue, sku_ids};
pub use routes::MAX_BATCH_REQUESTS;
pub use settings::{
    FEDERATED_AUDIENCE, FederatedIssuer, SimulatorBehaviour, SimulatorProfile, SimulatorSettings,
};
pub use state::{GraphError, RequestIds, USAGE_LOCATION_MESSAGE};
pub use stats::{StatsSnapshot, WriteLogEntry};

/// State shared by every request of one simulator. Each part has its own lock so that critical
/// sections stay tiny and unrelated work (stats vs directory) never contends.
pub struct Shared {
    directory: RwLock<state::Directory>,
    stats: Mutex<stats::Stats>,
    throttle: Mutex<throttle::Throttle>,
    behaviour: RwLock<SimulatorBehaviour>,
    /// Issued access tokens and their expiry.
    tokens: Mutex<HashMap<String, Instant>>,
    /// Scripted faults: (remaining count, status; 0 = drop the connection).
    fail_next: Mutex<(u32, u16)>,
    client_id: String,
    client_secret: SecretString,
    /// Registered certificates and federated credentials, and redeemed assertions.
    credentials: Mutex<identity::Credentials>,
    /// Access taken away by `POST /_sim/access`.
    access: RwLock<identity::AccessKnobs>,
    public_base_url: Option<String>,
}

impl Shared {
    /// Builds the state from settings, loading the seed file if one is configured.
    pub fn from_settings(settings: &SimulatorSettings) -> io::Result<Self> {
        let mut directory = state::Directory::with_catalogue(&default_catalogue());
        if let Some(path) = &settings.seed_file {
            let text = std::fs::read_to_string(path)?;
            let seed: Seed = serde_json::from_str(&text).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("seed file {}: {e}", path.display()),
                )
            })?;
            directory.seed(&seed).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("seed file {}: {}", path.display(), e.message),
                )
            })?;
        }
        directory.rules = settings.behaviour().licensing_rules();
        Ok(Self {
            directory: RwLock::new(directory),
            stats: Mutex::default(),
            throttle: Mutex::default(),
            behaviour: RwLock::new(settings.behaviour()),
            tokens: Mutex::default(),
            fail_next: Mutex::new((0, 0)),
            client_id: settings.client_id.clone(),
            client_secret: settings.client_secret.clone(),
            credentials: Mutex::new(identity::Credentials::load(
                &settings.client_certificate_paths,
                &settings.federated_issuers,
            )?),
            access: RwLock::new(identity::AccessKnobs::default()),
            public_base_url: settings.public_base_url.clone().filter(|s| !s.is_empty()),
        })
    }

    /// Adds a seed (SKUs replace the catalogue; users and groups are added).
    pub fn seed(&self, seed: &Seed) -> Result<(), GraphError> {
        self.directory.write().seed(seed)
    }

    /// Counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.lock().snapshot()
    }

    /// Clears the counters.
    pub fn reset_stats(&self) {
        self.stats.lock().reset();
    }

    /// Current behaviour.
    pub fn behaviour(&self) -> SimulatorBehaviour {
        self.behaviour.read().clone()
    }

    /// Patches the behaviour with a partial JSON object of [`SimulatorBehaviour`] fields.
    pub fn set_behaviour(&self, patch: &Value) -> Result<SimulatorBehaviour, serde_json::Error> {
        let mut b = self.behaviour.write();
        let new = b.patched(patch)?;
        *b = new.clone();
        self.directory.write().rules = new.licensing_rules();
        Ok(new)
    }

    /// Makes the next `count` Graph calls fail with `status` (0: drop the next `count` connections).
    pub fn fail_next(&self, count: u32, status: u16) {
        *self.fail_next.lock() = (count, status);
    }

    /// Invalidates every issued token (the next Graph call of a client gets 401).
    /// Registers a certificate (PEM) on the application; returns its `x5t#S256`.
    pub fn register_certificate(&self, pem: &[u8]) -> Result<String, String> {
        self.credentials.lock().register_certificate(pem)
    }

    /// The access knobs in force.
    pub fn access(&self) -> identity::AccessKnobs {
        *self.access.read()
    }

    /// Takes access away or gives it back (`POST /_sim/access`). Revoking the credentials also
    /// invalidates every issued token, so the loss shows at once.
    pub fn set_access(&self, knobs: identity::AccessKnobs) {
        *self.access.write() = knobs;
        if knobs.credentials_revoked {
            self.revoke_tokens();
        }
    }

    pub fn revoke_tokens(&self) {
        self.tokens.lock().clear();
    }

    /// Every property of a user, by id or UPN.
    pub fn user(&self, key: &str) -> Option<Value> {
        self.directory.read().user_json(key)
    }

    /// The display names of the groups a user (id or UPN) is a direct member of, sorted
    /// (inspection; `None` when the user does not exist).
    pub fn groups_of(&self, key: &str) -> Option<Vec<String>> {
        self.directory.read().group_names_of(key)
    }

    /// The ids of every group with this display name (compared without regard to case),
    /// sorted (inspection: display names are not unique in Graph).
    pub fn groups_named(&self, display_name: &str) -> Vec<uuid::Uuid> {
        self.directory.read().group_ids_named(display_name)
    }

    /// The subscribed SKUs as Graph returns them.
    pub fn subscribed_skus(&self) -> Value {
        self.directory.read().subscribed_skus()
    }

    /// Creates a security group holding `licences` ((skuId, disabledPlans)) with `members`
    /// (ids or UPNs), who inherit them (group-based licensing). Returns its id.
    pub fn create_licensed_group(
        &self,
        display_name: &str,
        licences: Vec<(uuid::Uuid, Vec<uuid::Uuid>)>,
        members: &[String],
    ) -> Result<uuid::Uuid, GraphError> {
        self.directory
            .write()
            .create_licensed_group(display_name, licences, members)
    }

    /// Replaces the licences a group holds; its members are reprocessed.
    pub fn set_group_licences(
        &self,
        group: uuid::Uuid,
        licences: Vec<(uuid::Uuid, Vec<uuid::Uuid>)>,
    ) -> Result<(), GraphError> {
        self.directory.write().set_group_licences(group, licences)
    }

    /// Adds members (ids or UPNs) to a group, reprocessed for its licences.
    pub fn add_group_members(
        &self,
        group: uuid::Uuid,
        members: &[String],
    ) -> Result<(), GraphError> {
        self.directory.write().add_group_members(group, members)
    }

    /// Removes a user (id or UPN) from a group (id), as an administrator would behind the
    /// service's back (`DELETE /groups/{id}/members/{id}/$ref`, not counted in the statistics).
    pub fn remove_group_member(&self, group: &str, user: &str) -> Result<(), GraphError> {
        self.directory.write().remove_member(group, user)
    }

    /// Adds a service plan to a SKU, as the vendor does (enabled for everyone holding it).
    pub fn add_service_plan(
        &self,
        part_number: &str,
        id: Option<uuid::Uuid>,
        name: &str,
    ) -> Result<Value, GraphError> {
        self.directory
            .write()
            .add_service_plan(part_number, id, name)
    }

    /// Changes a SKU's `capabilityStatus` and seats (`{"capabilityStatus": "Suspended",
    /// "prepaidUnits": {"enabled": 800, "warning": 0}}`, every field optional).
    pub fn update_sku(&self, part_number: &str, patch: &Value) -> Result<Value, GraphError> {
        self.directory.write().update_sku(part_number, patch)
    }
}

/// Serves the simulator on `listener` until `shutdown` completes.
///
/// This is what `policy-reconciler tenant-simulator --listen ADDR` runs.
pub async fn serve(
    listener: TcpListener,
    settings: SimulatorSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let shared = Arc::new(Shared::from_settings(&settings)?);
    serve_shared(listener, shared, shutdown).await
}

/// Serves an already built [`Shared`] state (so a caller can keep a handle on it).
pub async fn serve_shared(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "tenant simulator listening");
    }
    axum::serve(listener, routes::router(shared))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A simulator running in-process (see [`spawn`]). Dropping it stops the server.
pub struct SimulatorHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl SimulatorHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`: the Graph base URL and the login base URL of a client talking to it.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The shared state, to seed and inspect it directly.
    pub fn state(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops the server and waits (briefly) for it to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            // Graceful shutdown waits for open connections; pooled client connections may linger.
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts a simulator on `settings.listen_address` (use port 0 for any free port) in the
/// background of the current tokio runtime.
pub async fn spawn(settings: SimulatorSettings) -> io::Result<SimulatorHandle> {
    let listener = TcpListener::bind(&settings.listen_address).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared::from_settings(&settings)?);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_shared(listener, shared.clone(), async move {
        let _ = stopped.await;
    }));
    Ok(SimulatorHandle {
        addr,
        shared,
        stop: Some(stop),
        task: Some(task),
    })
}
