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
    let mut child = worker::command(&test_env(&id, &options))
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
