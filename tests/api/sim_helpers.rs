//! Helpers for tests against the in-process tenant simulator.
use policy_reconciler::simulator::{self, Seed, Shared, SimulatorHandle, SimulatorSettings};
use policy_reconciler::tenant::{GraphClient, TenantSettings};
use serde_json::{Value, json};
use uuid::Uuid;

/// A simulator on a free port without throttling, latency or faults, changed by `f`.
pub async fn start_with(f: impl FnOnce(&mut SimulatorSettings)) -> SimulatorHandle {
    let mut settings = SimulatorSettings::for_tests();
    f(&mut settings);
    simulator::spawn(settings).await.expect("simulator starts")
}

/// A simulator with test defaults.
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

/// Seeds from a JSON value in the seed-file format.
pub fn seed(sim: &SimulatorHandle, seed: Value) {
    let seed: Seed = serde_json::from_value(seed).expect("valid seed");
    sim.state().seed(&seed).expect("seed applies");
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

/// The licences a user holds in the simulator, as (skuId, sorted disabledPlans), sorted.
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

/// An access token from the simulator's token endpoint, fetched like any client would.
pub async fn token(http: &reqwest::Client, sim: &SimulatorHandle) -> String {
    let resp: Value = http
        .post(format!("{}/any-tenant/oauth2/v2.0/token", sim.base_url()))
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
        .unwrap();
    assert_eq!(resp["token_type"], "Bearer");
    assert!(resp["expires_in"].as_u64().unwrap() > 0);
    resp["access_token"].as_str().unwrap().to_owned()
}
