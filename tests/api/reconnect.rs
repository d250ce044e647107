//! The worker survives losing its broker connection.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{AppOptions, TcpProxy, spawn_app_with};
use crate::kit::broker::AMQP_URI_HOST_PORT;
use crate::kit::wait_until;

#[tokio::test]
async fn the_worker_reconnects_after_its_connection_is_cut() {
    let proxy = TcpProxy::start(AMQP_URI_HOST_PORT).await;
    let app = spawn_app_with(AppOptions {
        broker_port: Some(proxy.port),
        ..AppOptions::default()
    })
    .await;
    let payload =
        json!({ "policy_id": "rx1-standard", "members": ["c.three@nhs.net"], "total_members": 1 });

    let before = app.job("policy.members_added", payload.clone());
    app.publish_job(&before).await;
    app.wait_for_jobs(1).await;
    let connections_before = proxy.accepted();

    proxy.cut();

    // The worker notices and connects again through the proxy.
    wait_until(
        Duration::from_secs(30),
        "a new broker connection",
        || async { proxy.accepted() > connections_before },
    )
    .await;
    app.wait_ready().await;

    // Messages published after the cut are processed.
    for _ in 0..3 {
        app.publish_job(&app.job("policy.members_added", payload.clone()))
            .await;
    }
    app.wait_for_jobs(4).await;
    assert_eq!(app.jobs().await.len(), 4);
}
