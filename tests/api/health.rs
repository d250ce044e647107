//! `/healthz`, `/readyz` and `/metrics` answer.

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();

    let health = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let ready = client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["ready"], true);
    assert_eq!(body["checks"]["database"], true);
    assert_eq!(body["checks"]["migrations"], true);
    assert_eq!(body["checks"]["broker"], true);

    let metrics = client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains(policy_reconciler::telemetry::metrics::BUILD_INFO),
        "{text}"
    );
    assert!(text.contains(policy_reconciler::telemetry::metrics::BROKER_CONNECTED));

    // Queue depths are read from the broker shortly after connecting.
    crate::kit::wait_until(
        std::time::Duration::from_secs(5),
        "queue depth gauges",
        || async {
            let text = client
                .get(app.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.contains(&format!(
                "{}{{queue=\"dead\"}}",
                policy_reconciler::telemetry::metrics::QUEUE_MESSAGES
            ))
        },
    )
    .await;
}
