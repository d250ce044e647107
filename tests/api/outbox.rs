//! The outbox relay publishes stored events with confirms and marks them published.

use std::time::Duration;

use policy_reconciler::domain::{EventHeader, JobAccepted, JobType, Schedule};
use policy_reconciler::store::outbox;
use uuid::Uuid;

use crate::helpers::spawn_app;
use crate::kit::wait_until;

#[tokio::test]
async fn a_stored_event_reaches_a_queue_bound_to_the_events_exchange() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;

    let job_id = Uuid::now_v7();
    let header = EventHeader::new(JobAccepted::TYPE, job_id, "m-outbox".into(), None);
    let event = JobAccepted {
        header: header.clone(),
        job_type: JobType::PolicyChanged,
        total: 300,
        schedule: Schedule::Immediate,
        earliest_start: chrono::Utc::now(),
    };
    let mut tx = app.pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &header, &event).await.unwrap();
    tx.commit().await.unwrap();

    let received = events
        .next(Duration::from_secs(10))
        .await
        .expect("the event is published");
    assert_eq!(received["type"], "job.accepted");
    assert_eq!(received["event_id"], header.event_id.to_string());
    assert_eq!(received["job_id"], job_id.to_string());
    assert_eq!(received["total"], 300);
    assert_eq!(received["schedule"], "immediate");

    wait_until(
        Duration::from_secs(5),
        "the event marked published",
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT published_at IS NOT NULL FROM outbox WHERE event_id = $1",
            )
            .bind(header.event_id)
            .fetch_one(&app.pool)
            .await
            .unwrap()
        },
    )
    .await;
    // Published once.
    assert!(events.drain(Duration::from_millis(500)).await.is_empty());
}
