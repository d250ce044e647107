//! `policy-reconciler run` starts against the local services and exits 0 on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use uuid::Uuid;

use crate::helpers::{AppOptions, cleanup, test_env, test_settings, wait_until};

#[tokio::test]
async fn run_stops_cleanly_with_exit_code_0_on_sigterm() {
    let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
    // A free port for the child's HTTP endpoint.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = AppOptions {
        env: vec![("HTTP__LISTEN_ADDRESS".into(), format!("127.0.0.1:{port}"))],
        ..AppOptions::default()
    };
    let settings = test_settings(&id, &options);
    let mut child = Command::new(env!("CARGO_BIN_EXE_policy-reconciler"))
        .arg("run")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .envs(test_env(&id, &options))
        .env("RECONCILER__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");

    let client = reqwest::Client::new();
    let ready_url = format!("http://127.0.0.1:{port}/readyz");
    wait_until(
        Duration::from_secs(30),
        "the binary to be ready",
        || async { matches!(client.get(&ready_url).send().await, Ok(r) if r.status() == 200) },
    )
    .await;

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
