//! The tenant simulator for a run: on a thread of its own ([`SimThread`]) when a worker uses it,
//! or on the test's runtime ([`start`]) when a test talks to it directly; seeding it and reading
//! its state back.

use std::sync::Arc;

use policy_reconciler::simulator::{self, Seed, Shared, SimulatorHandle, SimulatorSettings};
use policy_reconciler::tenant::{GraphClient, TenantSettings};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use uuid::Uuid;

/// The simulator on a runtime and thread of its own, so that it keeps answering while a test
/// blocks its own thread (joining a worker, say) or measures on it. Stopped when dropped.
pub struct SimThread {
    pub base_url: String,
    pub state: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SimThread {
    /// A simulator with `settings` on one runtime thread, on a free port.
    pub fn start(settings: SimulatorSettings) -> Self {
        Self::start_on(settings, 1)
    }

    /// A simulator with `settings` on `worker_threads` runtime threads, on a free port.
    pub fn start_on(settings: SimulatorSettings, worker_threads: usize) -> Self {
        let state = Arc::new(Shared::from_settings(&settings).expect("simulator state"));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = {
            let state = state.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(worker_threads)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                    address_tx.send(listener.local_addr().unwrap()).unwrap();
                    let _ = simulator::serve_shared(listener, state, async move {
                        let _ = stopped.await;
                    })
                    .await;
                });
            })
        };
        let address = address_rx.recv().expect("simulator started");
        Self {
            base_url: format!("http://{address}"),
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Seed from a JSON value in the seed-file format.
    pub fn seed(&self, seed: Value) {
        seed_state(&self.state, seed);
    }

    /// Seed `n` users `{prefix}{i}@nhs.net` with usage location GB (in seeds of 20,000, to
    /// keep large runs' memory down); returns their UPNs.
    pub fn seed_users(&self, prefix: &str, n: usize) -> Vec<String> {
        let upns: Vec<String> = (0..n).map(|i| format!("{prefix}{i}@nhs.net")).collect();
        for part in upns.chunks(20_000) {
            let users: Vec<Value> = part
                .iter()
                .map(|upn| json!({ "userPrincipalName": upn, "usageLocation": "GB" }))
                .collect();
            self.seed(json!({ "users": users }));
        }
        upns
    }

    /// The licences `user` holds, as (skuId, sorted disabledPlans), sorted.
    pub fn licences(&self, user: &str) -> Vec<(Uuid, Vec<Uuid>)> {
        licences_in(&self.state, user)
    }

    /// The licence a policy with `toggles` gives: (skuId, sorted disabled plan ids).
    pub fn expected_licence(&self, part_number: &str, enabled: &[&str]) -> (Uuid, Vec<Uuid>) {
        let skus = self.state.subscribed_skus();
        let sku = sku(&skus, part_number);
        let mut disabled: Vec<Uuid> = sku["servicePlans"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| !enabled.contains(&p["servicePlanName"].as_str().unwrap()))
            .map(|p| serde_json::from_value(p["servicePlanId"].clone()).unwrap())
            .collect();
        disabled.sort();
        (
            serde_json::from_value(sku["skuId"].clone()).unwrap(),
            disabled,
        )
    }

    /// Licence writes (`assignLicense`) the simulator applied (from its write log: a write
    /// answered 5xx may or may not have been applied, and a realistic tenant fails some).
    pub fn licence_writes_applied(&self) -> usize {
        self.state
            .stats()
            .recent_writes
            .iter()
            .filter(|w| w.route == "assign_license" && w.applied)
            .count()
    }

    /// Licence writes (`assignLicense`) that reached the simulator, any status.
    pub fn licence_writes(&self) -> u64 {
        self.state.stats().total("assign_license")
    }
}

impl Drop for SimThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A simulator on the test's runtime, on a free port, without throttling, latency or faults,
/// changed by `f`.
pub async fn start_with(f: impl FnOnce(&mut SimulatorSettings)) -> SimulatorHandle {
    let mut settings = SimulatorSettings::for_tests();
    f(&mut settings);
    simulator::spawn(settings).await.expect("simulator starts")
}

/// A simulator on the test's runtime with test defaults.
pub async fn start() -> SimulatorHandle {
    start_with(|_| {}).await
}

/// A client of `sim` with fast retries, changed by `f`.
pub fn client_with(sim: &SimulatorHandle, f: impl FnOnce(&mut TenantSettings)) -> GraphClient {
    let mut settings = TenantSettings::for_simulator(&sim.base_url());
    f(&mut settings);
    GraphClient::new(settings).expect("client builds")
}

/// A client of `sim` with test defaults.
pub fn client(sim: &SimulatorHandle) -> GraphClient {
    client_with(sim, |_| {})
}

/// Seeds `sim` from a JSON value in the seed-file format.
pub fn seed(sim: &SimulatorHandle, seed: Value) {
    seed_state(sim.state(), seed);
}

/// Seeds the simulator's state from a JSON value in the seed-file format.
pub fn seed_state(state: &Shared, seed: Value) {
    let seed: Seed = serde_json::from_value(seed).expect("valid seed");
    state.seed(&seed).expect("seed applies");
}

/// Seeds `n` users `{prefix}{i}@example.org` with usage location GB; returns their ids in order.
pub fn seed_users(sim: &SimulatorHandle, prefix: &str, n: usize) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let users: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"id": id, "userPrincipalName": format!("{prefix}{i}@example.org"), "usageLocation": "GB"}))
        .collect();
    seed(sim, json!({ "users": users }));
    ids
}

/// The licences a user holds in `sim`, as (skuId, sorted disabledPlans), sorted.
pub fn licences(sim: &SimulatorHandle, user: &str) -> Vec<(Uuid, Vec<Uuid>)> {
    licences_in(sim.state(), user)
}

/// [`licences`], from the simulator's state itself (for a simulator on a thread of its own).
pub fn licences_in(state: &Shared, user: &str) -> Vec<(Uuid, Vec<Uuid>)> {
    let u = state.user(user).expect("user exists");
    let mut licences: Vec<(Uuid, Vec<Uuid>)> = u["assignedLicenses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let mut d: Vec<Uuid> = serde_json::from_value(l["disabledPlans"].clone()).unwrap();
            d.sort();
            (serde_json::from_value(l["skuId"].clone()).unwrap(), d)
        })
        .collect();
    licences.sort();
    licences
}

/// The SKU `part_number` (e.g. `ENTERPRISEPACK`) of a `subscribedSkus` answer.
pub fn sku<'a>(skus: &'a Value, part_number: &str) -> &'a Value {
    skus["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["skuPartNumber"] == part_number)
        .unwrap_or_else(|| panic!("no SKU {part_number}"))
}

/// The token endpoint's answer for `tenant` (any name does) at the simulator at `base_url`,
/// fetched with the development credentials as any client would.
pub async fn token_response(http: &reqwest::Client, base_url: &str, tenant: &str) -> Value {
    token_response_at(http, &format!("{base_url}/{tenant}/oauth2/v2.0/token")).await
}

/// The answer of the token endpoint at `url` to the development credentials.
pub async fn token_response_at(http: &reqwest::Client, url: &str) -> Value {
    http.post(url)
        .form(&[
            ("client_id", "policy-reconciler-dev"),
            ("client_secret", "simulator-secret"),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
