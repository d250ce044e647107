//! The `RECONCILER__…` variables a run gives its workers, and the settings they make.

use std::collections::HashMap;

use policy_reconciler::configuration::{ConfigSources, Settings};

/// `RECONCILER__…` variables by name, as the worker reads its environment.
pub type Env = HashMap<String, String>;

/// `(setting, value)` pairs as `RECONCILER__{setting}` variables.
pub fn variables<K: AsRef<str>>(pairs: impl IntoIterator<Item = (K, String)>) -> Env {
    pairs
        .into_iter()
        .map(|(k, v)| (format!("RECONCILER__{}", k.as_ref()), v))
        .collect()
}

/// What keeps run `id` apart from every other: a database `pr_{prefix}_{id}`, exchanges and
/// queues `{prefix}.{id}.…`, and an HTTP port of the system's choosing.
pub fn isolated(prefix: &str, id: &str) -> Env {
    variables([
        ("DATABASE__DATABASE_NAME", format!("pr_{prefix}_{id}")),
        ("HTTP__LISTEN_ADDRESS", "127.0.0.1:0".into()),
        (
            "BROKER__TOPOLOGY__JOBS_EXCHANGE",
            format!("{prefix}.{id}.jobs"),
        ),
        (
            "BROKER__TOPOLOGY__JOBS_QUEUE",
            format!("{prefix}.{id}.jobs"),
        ),
        (
            "BROKER__TOPOLOGY__DEAD_LETTER_EXCHANGE",
            format!("{prefix}.{id}.dlx"),
        ),
        (
            "BROKER__TOPOLOGY__DEAD_LETTER_QUEUE",
            format!("{prefix}.{id}.jobs.dead"),
        ),
        (
            "BROKER__TOPOLOGY__EVENTS_EXCHANGE",
            format!("{prefix}.{id}.events"),
        ),
    ])
}

/// The tenant settings (without the prefix) of a worker whose tenant is the simulator at
/// `base_url`, with no write budget of its own: the simulator's limits are the only ones. A
/// test that sets a budget gets it whole: no tenant-wide quota share caps it.
pub fn simulated_tenant(base_url: &str) -> [(&'static str, String); 4] {
    [
        ("TENANT__GRAPH_BASE_URL", base_url.to_owned()),
        ("TENANT__LOGIN_BASE_URL", base_url.to_owned()),
        ("TENANT__WRITES_PER_SECOND", "0".into()),
        (
            "TENANT__TENANT_WRITE_QUOTA_PER_5_MINUTES",
            "100000000".into(),
        ),
    ]
}

/// The settings a worker started with `env` has (the configuration files, then `env`).
pub fn settings(env: &Env) -> Settings {
    Settings::load_with(
        &ConfigSources::default(),
        config::Environment::default().source(Some(env.clone())),
    )
    .expect("the run's settings are valid")
}
