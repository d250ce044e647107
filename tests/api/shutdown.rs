//! `policy-reconciler run` starts against the local services and exits 0 on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::{AppOptions, test_env, test_settings};
use crate::kit::{cleanup, run_id, worker};

#[tokio::test]
async fn run_stops_cleanly_with_exit_code_0_on_sigterm() {
    let id = run_id();
    // A free port for the child's HTTP endpoint.
    let port = worker::free_port();
    let options = AppOptions {
        env: vec![("HTTP__LISTEN_ADDRESS".into(), format!("127.0.0.1:{port}"))],
        ..AppOptions::default()
    };
    let settings = test_settings(&id, &options);
    let mut child = worker::command(
        env!("CARGO_BIN_EXE_policy-reconciler"),
        &test_env(&id, &options),
    )
    .env("RECONCILER__LOG__FORMAT", "json")
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("the binary starts");

    worker::wait_ready(&format!("127.0.0.1:{port}")).await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exit = None;
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            exit = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exit = exit.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the worker did not stop within 15 s of SIGTERM");
    });
    cleanup(&settings, &[]);
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}

/// A configuration mistake is one line naming the key, each cause once, and no backtrace even
/// with `RUST_BACKTRACE=1`; the exit code is 1.
#[test]
fn a_configuration_mistake_is_one_clear_line() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_policy-reconciler"))
        .arg("check-config")
        .env("RUST_BACKTRACE", "1")
        .env("RECONCILER__ENGINE__CHUNK_SIZE", "0")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains("engine.chunk_size"), "{stderr}");
    assert_eq!(lines[0].matches("engine.chunk_size").count(), 1, "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}
