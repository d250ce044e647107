//! `[simulator]`: the settings of the built-in tenant simulator ([`graph_simulator`]), which
//! defines them; they are read with the rest of the configuration when the `simulator` feature
//! is on. A build without it ignores the section ([`super::Settings`]).
pub use graph_simulator::{
    FEDERATED_AUDIENCE, FederatedIssuer, SimulatorBehaviour, SimulatorProfile, SimulatorSettings,
};

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

    fn load(extra: &[(&str, &str)]) -> Result<SimulatorSettings, config::ConfigError> {
        let env = config::Environment::default()
            .source(Some(
                extra
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ))
            .prefix("RECONCILER")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true);
        config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .add_source(env)
            .build()?
            .get("simulator")
    }

    /// The `[simulator]` section of `config/default.toml` with its commented-out `key = value`
    /// lines (the behaviour keys, documented with their default figures) made active.
    fn simulator_section_uncommented() -> String {
        let start = DEFAULT_TOML
            .find("[simulator]")
            .expect("a [simulator] section");
        let section = &DEFAULT_TOML[start..];
        let end = section[1..].find("\n[").map_or(section.len(), |i| i + 1);
        section[..end]
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.contains(' ') && k != "public_base_url" && k != "seed_file"
                    }) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn default_toml_matches_the_defaults() {
        let s = load(&[]).unwrap();
        let d = SimulatorSettings::default();
        assert_eq!(s.listen_address, d.listen_address);
        assert_eq!(s.profile, SimulatorProfile::Default);
        assert_eq!(s.behaviour(), d.behaviour());
        assert_eq!(s.client_id, d.client_id);
        assert!(s.seed_file.is_none() && s.public_base_url.is_none());
        assert!(!format!("{s:?}").contains("simulator-secret"));
    }

    #[test]
    fn default_toml_documents_every_behaviour_key_with_its_default() {
        let section = simulator_section_uncommented();
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(&section, config::FileFormat::Toml))
            .build()
            .unwrap();
        let documented = cfg.get_table("simulator").unwrap();
        let defaults = serde_json::to_value(SimulatorBehaviour::default()).unwrap();
        for key in defaults.as_object().unwrap().keys() {
            assert!(
                documented.contains_key(key),
                "config/default.toml does not document simulator.{key}"
            );
        }
        let s: SimulatorSettings = cfg.get("simulator").unwrap();
        assert_eq!(s.behaviour(), SimulatorBehaviour::default());
        // The documented credential examples parse too.
        assert_eq!(s.client_certificate_paths.len(), 1);
        assert_eq!(s.federated_issuers.len(), 1);
        assert_eq!(s.federated_issuers[0].audience, FEDERATED_AUDIENCE);
    }

    #[test]
    fn the_realistic_profile_turns_every_behaviour_on_and_explicit_keys_win() {
        let s = load(&[
            ("RECONCILER__SIMULATOR__PROFILE", "realistic"),
            ("RECONCILER__SIMULATOR__FAULT_RATE", "0"),
            ("RECONCILER__SIMULATOR__LATENCY_MS", "7"),
        ])
        .unwrap();
        assert_eq!(s.profile, SimulatorProfile::Realistic);
        let r = SimulatorBehaviour::realistic();
        assert_eq!(s.fault_rate, 0.0);
        assert_eq!(s.latency_ms, 7);
        assert_eq!(s.replication_lag_ms, r.replication_lag_ms);
        assert_eq!(s.stale_read_probability, r.stale_read_probability);
        for b in [&r, &SimulatorSettings::realistic().behaviour] {
            assert!(b.replication_lag_ms > 0 && b.long_lag_ms > b.replication_lag_ms);
            assert!(b.long_lag_probability > 0.0 && b.stale_read_probability > 0.0);
            assert!(b.new_object_write_404_probability > 0.0);
            assert!(b.applied_then_fault_rate > 0.0 && b.applied_then_dropped_rate > 0.0);
            assert!(b.fault_rate > 0.0 && b.latency_ms > 0);
            assert!(b.writes_per_window > 0 && b.tenant_writes_per_window > 0);
            assert_eq!(b.throttled_write_applied_probability, 0.0);
        }
    }

    #[test]
    fn unknown_keys_are_refused_and_env_values_parse() {
        let err = load(&[("RECONCILER__SIMULATOR__NOPE", "1")]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let s = load(&[
            ("RECONCILER__SIMULATOR__CLIENT_ID", "12345"),
            ("RECONCILER__SIMULATOR__TENANT_WRITES_PER_WINDOW", "40"),
            ("RECONCILER__SIMULATOR__STALE_READ_PROBABILITY", "1"),
        ])
        .unwrap();
        assert_eq!(s.client_id, "12345");
        assert_eq!(s.tenant_writes_per_window, 40);
        assert_eq!(s.stale_read_probability, 1.0);
        assert!(load(&[("RECONCILER__SIMULATOR__PROFILE", "unkind")]).is_err());
    }
}
