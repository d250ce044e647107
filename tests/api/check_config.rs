//! `check-config`: the effective configuration as TOML in the form of `config/default.toml`, and
//! the layer that set each value `config/default.toml` does not.
use std::process::Command;

/// `check-config` with `config/default.toml` alone (no developer's `local.toml`, no variable of
/// the test's environment), the `--config` file and the variables given.
fn check_config(config: Option<&std::path::Path>, env: &[(&str, &str)]) -> String {
    let dir = std::env::temp_dir().join(format!("pr-config-dir-{}", test_kit::run_id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        test_kit::service_dir().join("config/default.toml"),
        dir.join("default.toml"),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_policy-reconciler"));
    command
        .arg("check-config")
        .arg("--config-dir")
        .arg(&dir)
        .env_clear()
        .envs(env.iter().copied());
    if let Some(file) = config {
        command.arg("--config").arg(file);
    }
    let output = command.output().expect("the binary runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn check_config_prints_toml_as_written_with_the_layer_of_each_value() {
    let dir = std::env::temp_dir().join(format!("pr-check-config-{}", test_kit::run_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let layer = dir.join("windows.toml");
    std::fs::write(
        &layer,
        "[schedule]\noff_peak_windows = [{ days = [\"sat\"], start = \"10:00\", end = \"24:00\" }]\n",
    )
    .unwrap();
    let out = check_config(
        Some(&layer),
        &[
            ("RECONCILER__ENGINE__CHUNK_SIZE", "7"),
            (
                "RECONCILER__DATABASE__PASSWORD",
                "a-password-that-must-not-show",
            ),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);

    // The layer's window, as written; the rest of the file's form too.
    assert!(out.contains(r#"start = "10:00""#), "{out}");
    assert!(out.contains(r#"end = "24:00""#), "{out}");
    assert!(out.contains(r#"days = ["sat"]"#), "{out}");
    assert!(out.contains(r#"time_zone = "Europe/London""#), "{out}");
    assert!(
        !out.contains("TimeOfDay") && !out.contains("SecretBox"),
        "{out}"
    );
    // Secrets: that they are set, never their values.
    assert!(!out.contains("a-password-that-must-not-show"), "{out}");

    // It is TOML, and its values are the effective ones.
    let doc: toml::Table = out.parse().expect("check-config prints TOML");
    assert_eq!(doc["engine"]["chunk_size"].as_integer(), Some(7));
    assert_eq!(doc["database"]["password"].as_str(), Some("(set)"));
    let windows = doc["schedule"]["off_peak_windows"].as_array().unwrap();
    assert_eq!(windows.len(), 1);

    // Where each value above config/default.toml came from: the file, the variables.
    let said = |key: &str, layer: &str| {
        out.lines()
            .any(|l| l.starts_with("#   ") && l.contains(key) && l.contains(layer))
    };
    assert!(said("schedule.off_peak_windows", "windows.toml"), "{out}");
    assert!(
        said("engine.chunk_size", "RECONCILER__ENGINE__CHUNK_SIZE"),
        "{out}"
    );
    assert!(
        said("database.password", "RECONCILER__DATABASE__PASSWORD"),
        "{out}"
    );
    // A key no layer above the defaults set is not listed.
    assert!(!said("engine.lease_seconds", ""), "{out}");
}

#[test]
fn check_config_without_layers_says_every_value_is_the_default() {
    let out = check_config(None, &[]);
    assert!(
        out.contains("# Every value is config/default.toml's."),
        "{out}"
    );
    let doc: toml::Table = out.parse().expect("check-config prints TOML");
    // The windows of config/default.toml, as it writes them.
    let windows = doc["schedule"]["off_peak_windows"].as_array().unwrap();
    assert_eq!(windows[0]["start"].as_str(), Some("19:00"));
}
