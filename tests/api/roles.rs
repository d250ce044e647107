//! Phone System admin roles end to end: jobs through RabbitMQ, desired state in PostgreSQL,
//! group memberships in the tenant simulator (read back through the Graph client), and the
//! events published.

use std::collections::BTreeSet;
use std::time::Duration;

use policy_reconciler::tenant::{GraphClient, Tenant, TenantSettings};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};
use crate::kit::broker::EventQueue;

const PRIMARY: &str = "phone_system_primary_admin";
const LOCAL: &str = "phone_system_local_admin";

/// Events seen so far, and a way to wait for a job's completion.
struct Events {
    queue: EventQueue,
    seen: Vec<Value>,
}

impl Events {
    async fn new(app: &mut TestApp) -> Self {
        Self {
            queue: app.event_queue().await,
            seen: Vec::new(),
        }
    }

    /// The `job.completed` of `job`.
    async fn completion(&mut self, job: &Value) -> Value {
        self.queue
            .completion_keeping(&job["message_id"], &mut self.seen, Duration::from_secs(60))
            .await
    }

    /// Every event of `job` of type `event_type`, after the events in flight have arrived.
    async fn of(&mut self, job: &Value, event_type: &str) -> Vec<Value> {
        let more = self.queue.drain(Duration::from_millis(400)).await;
        self.seen.extend(more);
        self.seen
            .iter()
            .filter(|e| e["type"] == event_type && e["source_message_id"] == job["message_id"])
            .cloned()
            .collect()
    }
}

/// Publish a job as `actor` (email, ODS code), or with no actor.
async fn publish_as(
    app: &TestApp,
    job_type: &str,
    payload: Value,
    actor: Option<(&str, &str)>,
) -> Value {
    let mut job = app.job(job_type, payload);
    job["actor"] = match actor {
        Some((email, ods_code)) => json!({ "email": email, "ods_code": ods_code }),
        None => Value::Null,
    };
    app.publish_job(&job).await;
    job
}

/// Publish as the helpers' default actor (jane.smith@nhs.net of RX1).
async fn publish(app: &TestApp, job_type: &str, payload: Value) -> Value {
    let job = app.job(job_type, payload);
    app.publish_job(&job).await;
    job
}

fn target(user: &str, ods_code: &str, role: &str) -> Value {
    json!({ "user": user, "ods_code": ods_code, "role": role })
}

fn graph(app: &TestApp) -> GraphClient {
    GraphClient::new(TenantSettings::for_simulator(&app.sim.base_url)).unwrap()
}

/// The Phone System groups of `codes` that hold `user`, by display name, as the tenant holds
/// them (the simulator's own state: a Graph read may come from a replica that lags).
async fn groups_of(app: &TestApp, user: &str, codes: &[&str]) -> BTreeSet<String> {
    let wanted: BTreeSet<String> = codes
        .iter()
        .flat_map(|code| {
            [
                format!("PhoneSystem-Primary-{code}"),
                format!("PhoneSystem-Local-{code}"),
            ]
        })
        .collect();
    app.sim
        .state
        .groups_of(user)
        .unwrap_or_default()
        .into_iter()
        .filter(|name| wanted.contains(name))
        .collect()
}

/// Writes the tenant took so far: every write request; in a realistic tenant only those
/// applied, since a read from a lagging replica can make an item ask again for what is
/// already done (a removal answered "not a member", which changes nothing).
fn writes_made(app: &TestApp) -> u64 {
    let stats = app.sim.state.stats();
    if crate::kit::realistic_tenant() {
        stats.writes_applied
    } else {
        stats.writes_attempted
    }
}

/// The one item of a job sent again once its change was made is `already_compliant`. Under
/// the realistic tenant it may count `changed` instead, with no write applied (callers check
/// that): a read from a replica behind the first job still shows a membership it ended, whose
/// removal is sent again and refused ("not a member"). The store counts an item with a
/// recorded write intent as changed, as it cannot tell a refused write from one an earlier
/// claim applied, and a 5xx then "not a member" on the transport's retry looks the same (a
/// known gap, issue 28's notes).
fn assert_sent_again_found_done(done: &Value) {
    if crate::kit::realistic_tenant() {
        assert_eq!(
            done["counts"]["already_compliant"].as_u64().unwrap()
                + done["counts"]["changed"].as_u64().unwrap(),
            1,
            "{done}"
        );
    } else {
        assert_eq!(done["counts"]["already_compliant"], 1, "{done}");
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn stored_role(app: &TestApp, user: &str) -> Option<(String, String)> {
    sqlx::query_as("SELECT ods_code, role FROM admin_roles WHERE email = $1")
        .bind(user)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
}

const CODES: &[&str] = &["RX1", "RX2", "RX3"];

#[tokio::test]
async fn roles_assign_change_remove_realised_in_groups_with_one_email_per_grant() {
    let mut app = spawn_app().await;
    let mut events = Events::new(&mut app).await;
    let bob = app.sim.seed_users("bob", 1).remove(0);

    // Assign Local: in RX1's Local group, stored, one email.
    let assign = publish(&app, "admin_role.assign", target(&bob, "RX1", LOCAL)).await;
    let done = events.completion(&assign).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 1);
    assert_eq!(done["subject"]["role"], LOCAL);
    assert_eq!(done["ticket"], assign["ticket"]);
    assert_eq!(
        groups_of(&app, &bob, CODES).await,
        set(&["PhoneSystem-Local-RX1"])
    );
    assert_eq!(
        stored_role(&app, &bob).await,
        Some(("RX1".into(), LOCAL.into()))
    );
    let emails = events.of(&assign, "notification.email").await;
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0]["template"], "phone_system_admin_granted");
    assert_eq!(emails[0]["to"], bob.as_str());
    assert_eq!(
        emails[0]["data"],
        json!({ "ods_code": "RX1", "role": LOCAL })
    );
    assert_eq!(emails[0]["ticket"], assign["ticket"]);
    assert!(emails[0]["event_id"].is_string());

    // The same assignment again: nothing written, no second email.
    let writes = writes_made(&app);
    let again = publish(&app, "admin_role.assign", target(&bob, "RX1", LOCAL)).await;
    let done = events.completion(&again).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["already_compliant"], 1);
    assert_eq!(writes_made(&app), writes);
    assert!(events.of(&again, "notification.email").await.is_empty());

    // Change Local -> Primary: the removal reaches the tenant strictly before the assignment.
    app.sim.state.reset_stats();
    let change = publish(
        &app,
        "admin_role.change",
        json!({ "user": bob, "ods_code": "RX1", "from": LOCAL, "to": PRIMARY }),
    )
    .await;
    let done = events.completion(&change).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 1);
    assert_eq!(
        groups_of(&app, &bob, CODES).await,
        set(&["PhoneSystem-Primary-RX1"])
    );
    assert_eq!(
        stored_role(&app, &bob).await,
        Some(("RX1".into(), PRIMARY.into()))
    );
    let log = app.sim.state.stats().recent_writes;
    let seqs = |route: &str| -> Vec<u64> {
        log.iter()
            .filter(|w| w.route == route && w.applied)
            .map(|w| w.seq)
            .collect()
    };
    let removals = seqs("remove_member");
    let additions = seqs("add_member");
    assert_eq!(removals.len(), 1, "{log:?}");
    assert_eq!(additions.len(), 1, "{log:?}");
    assert!(
        removals.iter().max() < additions.iter().min(),
        "removal {removals:?} must precede assignment {additions:?}"
    );
    let emails = events.of(&change, "notification.email").await;
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(
        emails[0]["data"],
        json!({ "ods_code": "RX1", "role": PRIMARY })
    );

    // The same change sent again once made: no tenant write at all, no second email.
    let writes = writes_made(&app);
    let again = publish(
        &app,
        "admin_role.change",
        json!({ "user": bob, "ods_code": "RX1", "from": LOCAL, "to": PRIMARY }),
    )
    .await;
    let done = events.completion(&again).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_sent_again_found_done(&done);
    assert_eq!(
        writes_made(&app),
        writes,
        "a write for a change already made"
    );
    assert!(events.of(&again, "notification.email").await.is_empty());
    assert_eq!(
        groups_of(&app, &bob, CODES).await,
        set(&["PhoneSystem-Primary-RX1"])
    );

    // Remove: out of every group, nothing stored, no email.
    let remove = publish(&app, "admin_role.remove", target(&bob, "RX1", PRIMARY)).await;
    let done = events.completion(&remove).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 1);
    assert!(groups_of(&app, &bob, CODES).await.is_empty());
    assert_eq!(stored_role(&app, &bob).await, None);
    assert!(events.of(&remove, "notification.email").await.is_empty());

    // A change from a role the user does not hold is refused.
    let stale = publish(
        &app,
        "admin_role.change",
        json!({ "user": bob, "ods_code": "RX1", "from": LOCAL, "to": PRIMARY }),
    )
    .await;
    let done = events.completion(&stale).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(done["failures"][0]["code"], "role_conflict");
    assert_eq!(stored_role(&app, &bob).await, None);
}

#[tokio::test]
async fn roles_eleventh_admin_and_second_role_are_rejected_without_writes() {
    let mut app = spawn_app().await;
    let mut events = Events::new(&mut app).await;
    let users = app.sim.seed_users("limit", 11);

    let mut jobs = Vec::new();
    for (i, user) in users[..10].iter().enumerate() {
        let role = if i % 2 == 0 { PRIMARY } else { LOCAL };
        jobs.push(publish(&app, "admin_role.assign", target(user, "RX1", role)).await);
    }
    for job in &jobs {
        let done = events.completion(job).await;
        assert_eq!(done["outcome"], "succeeded", "{done}");
    }
    let holders: i64 =
        sqlx::query_scalar("SELECT count(*) FROM admin_roles WHERE ods_code = 'RX1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(holders, 10);

    // The 11th, of either role: rejected with admin_limit_reached, nothing written.
    let writes = writes_made(&app);
    let eleventh = publish(&app, "admin_role.assign", target(&users[10], "RX1", LOCAL)).await;
    let done = events.completion(&eleventh).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(done["failures"][0]["code"], "admin_limit_reached");
    assert_eq!(done["failures"][0]["item"], users[10].as_str());
    assert_eq!(stored_role(&app, &users[10]).await, None);
    assert!(groups_of(&app, &users[10], CODES).await.is_empty());
    assert!(events.of(&eleventh, "notification.email").await.is_empty());

    // A user with a role given the other one (any code): rejected with role_conflict.
    let second = publish(&app, "admin_role.assign", target(&users[1], "RX1", PRIMARY)).await;
    let done = events.completion(&second).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(done["failures"][0]["code"], "role_conflict");
    // Also for another code, by an actor who administers that code.
    let elsewhere = publish_as(
        &app,
        "admin_role.assign",
        target(&users[0], "RX2", LOCAL),
        Some(("lead@nhs.net", "RX2")),
    )
    .await;
    let done = events.completion(&elsewhere).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(done["failures"][0]["code"], "role_conflict");
    assert_eq!(
        stored_role(&app, &users[0]).await,
        Some(("RX1".into(), PRIMARY.into()))
    );
    assert_eq!(
        stored_role(&app, &users[1]).await,
        Some(("RX1".into(), LOCAL.into()))
    );
    assert_eq!(
        groups_of(&app, &users[1], CODES).await,
        set(&["PhoneSystem-Local-RX1"])
    );
    assert_eq!(writes_made(&app), writes, "a rejected job wrote");

    // Once one admin is removed, the 11th fits.
    let remove = publish(&app, "admin_role.remove", target(&users[1], "RX1", LOCAL)).await;
    assert_eq!(events.completion(&remove).await["outcome"], "succeeded");
    let retry = publish(&app, "admin_role.assign", target(&users[10], "RX1", LOCAL)).await;
    assert_eq!(events.completion(&retry).await["outcome"], "succeeded");
    assert_eq!(
        groups_of(&app, &users[10], CODES).await,
        set(&["PhoneSystem-Local-RX1"])
    );
}

#[tokio::test]
async fn roles_a_mapping_change_moves_primary_admins_between_organisations() {
    let mut app = spawn_app().await;
    let mut events = Events::new(&mut app).await;
    let users = app.sim.seed_users("mapped", 3);
    let (bob, alice, carol) = (&users[0], &users[1], &users[2]);

    let primary = publish(&app, "admin_role.assign", target(bob, "RX1", PRIMARY)).await;
    assert_eq!(events.completion(&primary).await["outcome"], "succeeded");
    let local = publish(&app, "admin_role.assign", target(alice, "RX1", LOCAL)).await;
    assert_eq!(events.completion(&local).await["outcome"], "succeeded");
    assert_eq!(
        groups_of(&app, bob, CODES).await,
        set(&["PhoneSystem-Primary-RX1"])
    );

    // RX1 leads RX2 (onboarded) and RX3 (not yet): the Primary admin joins RX2's group only.
    // A platform process: no actor needed.
    let mapping = publish_as(
        &app,
        "ods_mapping.changed",
        json!({ "ods_code": "RX1", "managed_ods_codes": ["RX2", "RX3"], "onboarded": ["RX1", "RX2"] }),
        None,
    )
    .await;
    let done = events.completion(&mapping).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(
        done["counts"]["total"], 1,
        "only Primary admins are affected"
    );
    assert_eq!(done["counts"]["changed"], 1);
    assert_eq!(
        groups_of(&app, bob, CODES).await,
        set(&["PhoneSystem-Primary-RX1", "PhoneSystem-Primary-RX2"])
    );
    assert_eq!(
        groups_of(&app, alice, CODES).await,
        set(&["PhoneSystem-Local-RX1"])
    );
    let (managed, onboarded): (Vec<String>, Vec<String>) =
        sqlx::query_as("SELECT managed, onboarded FROM ods_mappings WHERE lead_ods_code = 'RX1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (managed, onboarded),
        (
            vec!["RX2".into(), "RX3".into()],
            vec!["RX1".into(), "RX2".into()]
        )
    );
    assert!(events.of(&mapping, "notification.email").await.is_empty());

    // The mapping lets RX1's administrators assign roles for RX2.
    let delegated = publish(&app, "admin_role.assign", target(carol, "RX2", LOCAL)).await;
    assert_eq!(events.completion(&delegated).await["outcome"], "succeeded");
    assert_eq!(
        groups_of(&app, carol, CODES).await,
        set(&["PhoneSystem-Local-RX2"])
    );

    // RX2 leaves the mapping, RX3 is onboarded: removed from RX2's group, added to RX3's.
    app.sim.state.reset_stats();
    let remap = publish_as(
        &app,
        "ods_mapping.changed",
        json!({ "ods_code": "RX1", "managed_ods_codes": ["RX3"], "onboarded": ["RX1", "RX3"] }),
        None,
    )
    .await;
    let done = events.completion(&remap).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(
        groups_of(&app, bob, CODES).await,
        set(&["PhoneSystem-Primary-RX1", "PhoneSystem-Primary-RX3"])
    );
    let log = app.sim.state.stats().recent_writes;
    assert_eq!(
        log.iter()
            .filter(|w| w.route == "remove_member" && w.applied)
            .count(),
        1,
        "{log:?}"
    );
    assert_eq!(
        log.iter()
            .filter(|w| w.route == "add_member" && w.applied)
            .count(),
        1,
        "{log:?}"
    );
    // Others are untouched.
    assert_eq!(
        groups_of(&app, alice, CODES).await,
        set(&["PhoneSystem-Local-RX1"])
    );
    assert_eq!(
        groups_of(&app, carol, CODES).await,
        set(&["PhoneSystem-Local-RX2"])
    );

    // RX2 is no longer RX1's to administer.
    let refused = publish(&app, "admin_role.remove", target(carol, "RX2", LOCAL)).await;
    let done = events.completion(&refused).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(done["failures"][0]["code"], "forbidden");
}

#[tokio::test]
async fn roles_a_leaver_is_removed_everywhere_without_email() {
    let mut app = spawn_app().await;
    let mut events = Events::new(&mut app).await;
    let bob = app.sim.seed_users("leaver", 1).remove(0);
    let mapping = publish_as(
        &app,
        "ods_mapping.changed",
        json!({ "ods_code": "RX1", "managed_ods_codes": ["RX2", "RX3"], "onboarded": ["RX2", "RX3"] }),
        None,
    )
    .await;
    assert_eq!(events.completion(&mapping).await["outcome"], "succeeded");
    let assign = publish(&app, "admin_role.assign", target(&bob, "RX1", PRIMARY)).await;
    assert_eq!(events.completion(&assign).await["outcome"], "succeeded");
    assert_eq!(
        groups_of(&app, &bob, CODES).await,
        set(&[
            "PhoneSystem-Primary-RX1",
            "PhoneSystem-Primary-RX2",
            "PhoneSystem-Primary-RX3"
        ])
    );
    assert_eq!(events.of(&assign, "notification.email").await.len(), 1);

    let leaver = publish_as(
        &app,
        "user.leaver",
        json!({ "user": bob.to_uppercase(), "marked_for_deletion_at": "2026-11-21T17:00:00Z" }),
        None,
    )
    .await;
    let done = events.completion(&leaver).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 1);
    assert_eq!(done["subject"]["role"], PRIMARY);
    assert!(groups_of(&app, &bob, CODES).await.is_empty());
    assert_eq!(stored_role(&app, &bob).await, None);
    assert!(events.of(&leaver, "notification.email").await.is_empty());
    let emails: Vec<&Value> = events
        .seen
        .iter()
        .filter(|e| e["type"] == "notification.email")
        .collect();
    assert_eq!(emails.len(), 1, "only the grant sent an email: {emails:?}");

    // A leaver holding no role: nothing to do, nothing written.
    let writes = writes_made(&app);
    let again = publish_as(
        &app,
        "user.leaver",
        json!({ "user": bob, "marked_for_deletion_at": "2026-11-21T17:00:00Z" }),
        None,
    )
    .await;
    let done = events.completion(&again).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_sent_again_found_done(&done);
    assert_eq!(writes_made(&app), writes);
}

#[tokio::test]
async fn roles_an_unauthorised_actor_is_refused_and_nothing_is_written() {
    let mut app = spawn_app().await;
    let mut events = Events::new(&mut app).await;
    let bob = app.sim.seed_users("victim", 1).remove(0);
    let before = app.sim.state.stats();

    let outsider = publish_as(
        &app,
        "admin_role.assign",
        target(&bob, "RX1", PRIMARY),
        Some(("mallory@nhs.net", "RX9")),
    )
    .await;
    let done = events.completion(&outsider).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(done["failures"][0]["code"], "forbidden");
    assert_eq!(done["counts"]["total"], 0);

    let anonymous = publish_as(
        &app,
        "admin_role.assign",
        target(&bob, "RX1", PRIMARY),
        None,
    )
    .await;
    let done = events.completion(&anonymous).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(done["failures"][0]["code"], "forbidden");

    // Nothing stored, no group created or joined, no write of any kind, no email.
    assert_eq!(stored_role(&app, &bob).await, None);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM admin_roles")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    let after = app.sim.state.stats();
    assert_eq!(after.writes_attempted, before.writes_attempted);
    assert_eq!(after.total("create_group") + after.total("upsert_group"), 0);
    assert!(
        graph(&app)
            .find_group("PhoneSystem-Primary-RX1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(events.of(&outsider, "notification.email").await.is_empty());
    assert!(events.of(&anonymous, "notification.email").await.is_empty());
    assert!(events.of(&outsider, "job.accepted").await.is_empty());
}

#[test]
fn roles_permissions_command_prints_the_table() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_policy-reconciler"))
        .arg("permissions")
        .output()
        .expect("the binary runs");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text, policy_reconciler::domain::permissions::render_table());
    assert_eq!(
        text.lines().count(),
        2 + policy_reconciler::domain::permissions::PERMISSIONS.len()
    );
}

#[tokio::test]
async fn roles_a_dry_run_reports_without_writing() {
    let mut app = spawn_app().await;
    let mut events = Events::new(&mut app).await;
    let bob = app.sim.seed_users("dry", 1).remove(0);
    let before = writes_made(&app);

    let mut job = app.job("admin_role.assign", target(&bob, "RX1", PRIMARY));
    job["dry_run"] = json!(true);
    app.publish_job(&job).await;
    let done = events.completion(&job).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["dry_run"], true);
    assert_eq!(done["counts"]["changed"], 1, "it would join the group");
    assert_eq!(stored_role(&app, &bob).await, None);
    assert_eq!(writes_made(&app), before);
    assert!(events.of(&job, "notification.email").await.is_empty());
}

/// The Phone System groups `user` is in, as the simulator holds them (any organisation).
fn phone_system_groups(app: &TestApp, user: &str) -> BTreeSet<String> {
    app.sim
        .state
        .groups_of(user)
        .unwrap_or_default()
        .into_iter()
        .filter(|g| g.starts_with("PhoneSystem-"))
        .collect()
}

/// Every `notification.email` seen so far addressed to `user`.
async fn emails_to(events: &mut Events, user: &str) -> Vec<Value> {
    let more = events.queue.drain(Duration::from_millis(400)).await;
    events.seen.extend(more);
    events
        .seen
        .iter()
        .filter(|e| e["type"] == "notification.email" && e["to"] == user)
        .cloned()
        .collect()
}

async fn stored_state(app: &TestApp, user: &str) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM admin_roles WHERE email = $1")
        .bind(user)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn roles_an_assign_sent_again_after_its_grant_failed_sends_the_email_once_realised() {
    let mut app = spawn_app().await;
    let mut events = Events::new(&mut app).await;
    let newcomer = "new.starter@nhs.net";

    // The account does not exist yet: the grant fails in the tenant.
    let first = publish(&app, "admin_role.assign", target(newcomer, "RX1", LOCAL)).await;
    let done = events.completion(&first).await;
    assert_eq!(done["outcome"], "failed", "{done}");
    assert_eq!(done["failures"][0]["code"], "user_not_found", "{done}");
    assert_eq!(
        stored_state(&app, newcomer).await.as_deref(),
        Some("failed")
    );
    assert!(emails_to(&mut events, newcomer).await.is_empty());

    // The account is created; the LA sends the assign again.
    app.sim
        .seed(json!({ "users": [{ "userPrincipalName": newcomer, "usageLocation": "GB" }] }));
    let again = publish(&app, "admin_role.assign", target(newcomer, "RX1", LOCAL)).await;
    let done = events.completion(&again).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 1, "{done}");
    assert_eq!(
        phone_system_groups(&app, newcomer),
        set(&["PhoneSystem-Local-RX1"])
    );
    assert_eq!(
        stored_role(&app, newcomer).await,
        Some(("RX1".into(), LOCAL.into()))
    );
    assert_eq!(
        stored_state(&app, newcomer).await.as_deref(),
        Some("realised")
    );
    let emails = emails_to(&mut events, newcomer).await;
    assert_eq!(emails.len(), 1, "exactly one email: {emails:?}");
    assert_eq!(emails[0]["template"], "phone_system_admin_granted");
    assert_eq!(
        emails[0]["data"],
        json!({ "ods_code": "RX1", "role": LOCAL })
    );
    assert_eq!(emails[0]["source_message_id"], again["message_id"]);
    assert_eq!(emails[0]["ticket"], again["ticket"]);

    // A third assign finds the role realised: memberships checked, no second email.
    let third = publish(&app, "admin_role.assign", target(newcomer, "RX1", LOCAL)).await;
    let done = events.completion(&third).await;
    let log = app.sim.state.stats().recent_writes;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["already_compliant"], 1, "{done} {log:?}");
    assert_eq!(emails_to(&mut events, newcomer).await.len(), 1);
}

#[tokio::test]
async fn roles_a_failed_grant_takes_no_place_under_the_limit() {
    let mut app = spawn_app().await;
    let mut events = Events::new(&mut app).await;
    let users = app.sim.seed_users("real", 10);
    let ghost = "not.yet@nhs.net";

    // Nine real admins and one grant that fails in the tenant.
    let mut jobs = Vec::new();
    for user in &users[..9] {
        jobs.push(publish(&app, "admin_role.assign", target(user, "RX1", LOCAL)).await);
    }
    for job in &jobs {
        assert_eq!(events.completion(job).await["outcome"], "succeeded");
    }
    let failed = publish(&app, "admin_role.assign", target(ghost, "RX1", LOCAL)).await;
    let done = events.completion(&failed).await;
    assert_eq!(done["outcome"], "failed", "{done}");
    assert_eq!(done["failures"][0]["code"], "user_not_found", "{done}");

    // The 10th real admin is accepted and joins the group, which then holds ten.
    let tenth = publish(&app, "admin_role.assign", target(&users[9], "RX1", LOCAL)).await;
    let done = events.completion(&tenth).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(
        phone_system_groups(&app, &users[9]),
        set(&["PhoneSystem-Local-RX1"])
    );
    assert_eq!(app.sim.state.groups_named("PhoneSystem-Local-RX1").len(), 1);
    let holders = users
        .iter()
        .filter(|u| phone_system_groups(&app, u).contains("PhoneSystem-Local-RX1"))
        .count();
    assert_eq!(holders, 10);

    // The failed grant sent again once the account exists: there is no place left for it.
    app.sim
        .seed(json!({ "users": [{ "userPrincipalName": ghost, "usageLocation": "GB" }] }));
    let again = publish(&app, "admin_role.assign", target(ghost, "RX1", LOCAL)).await;
    let done = events.completion(&again).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(done["failures"][0]["code"], "admin_limit_reached", "{done}");
    assert!(phone_system_groups(&app, ghost).is_empty());
    assert!(emails_to(&mut events, ghost).await.is_empty());
}

#[tokio::test]
async fn roles_a_removal_that_failed_keeps_the_role_and_a_leaver_ends_every_membership() {
    let mut app = spawn_app().await;
    let mut events = Events::new(&mut app).await;
    let users = app.sim.seed_users("leaving", 2);
    let (bob, carol) = (&users[0], &users[1]);

    let assign = publish(&app, "admin_role.assign", target(bob, "RX1", LOCAL)).await;
    assert_eq!(events.completion(&assign).await["outcome"], "succeeded");
    // Memberships the store never knew about: another organisation's Phone System group for
    // bob, one for carol (who holds no role at all), and a group that is not Phone System's.
    app.sim.seed(json!({ "groups": [
        { "displayName": "PhoneSystem-Primary-RX7", "members": [bob] },
        { "displayName": "PhoneSystem-Local-RX9", "members": [carol] },
        { "displayName": "All staff", "members": [bob, carol] },
    ] }));
    assert_eq!(
        phone_system_groups(&app, bob),
        set(&["PhoneSystem-Local-RX1", "PhoneSystem-Primary-RX7"])
    );

    // Graph is unavailable for the removal: it fails, and the role stays stored.
    app.sim.state.fail_next(u32::MAX, 503);
    let remove = publish(&app, "admin_role.remove", target(bob, "RX1", LOCAL)).await;
    let done = events.completion(&remove).await;
    app.sim.state.fail_next(0, 503);
    assert_eq!(done["outcome"], "failed", "{done}");
    assert_eq!(done["failures"][0]["code"], "tenant_unavailable", "{done}");
    assert_eq!(
        stored_role(&app, bob).await,
        Some(("RX1".into(), LOCAL.into()))
    );
    assert_eq!(stored_state(&app, bob).await.as_deref(), Some("removing"));
    assert!(phone_system_groups(&app, bob).contains("PhoneSystem-Local-RX1"));

    // The leaver ends every Phone System membership the tenant shows, then the role goes.
    let leaver = publish_as(
        &app,
        "user.leaver",
        json!({ "user": bob, "marked_for_deletion_at": "2026-11-21T17:00:00Z" }),
        None,
    )
    .await;
    let done = events.completion(&leaver).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 1, "{done}");
    assert_eq!(done["subject"]["role"], LOCAL);
    assert!(phone_system_groups(&app, bob).is_empty());
    assert_eq!(
        app.sim.state.groups_of(bob).unwrap(),
        vec!["All staff".to_owned()],
        "only Phone System memberships end"
    );
    assert_eq!(stored_role(&app, bob).await, None);

    // A leaver the store knows nothing about is still taken out of Phone System groups.
    let unknown = publish_as(
        &app,
        "user.leaver",
        json!({ "user": carol, "marked_for_deletion_at": "2026-11-21T17:00:00Z" }),
        None,
    )
    .await;
    let done = events.completion(&unknown).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 1, "{done}");
    assert_eq!(
        app.sim.state.groups_of(carol).unwrap(),
        vec!["All staff".to_owned()]
    );
    assert_eq!(stored_role(&app, carol).await, None);
    assert!(
        emails_to(&mut events, bob).await.len() == 1,
        "only the grant's email"
    );
    assert!(emails_to(&mut events, carol).await.is_empty());
}

/// Users who join the same group together are added in one `PATCH` of the group, up to 20
/// (Graph's `members@odata.bind`), not one request each: three Primary admins of RX1 join
/// the group of the organisation a mapping change onboards with one write.
#[tokio::test]
async fn roles_admins_joining_one_group_are_added_in_one_request() {
    let mut app = spawn_app().await;
    let mut events = Events::new(&mut app).await;
    let users = app.sim.seed_users("together", 3);
    for user in &users {
        let assign = publish(&app, "admin_role.assign", target(user, "RX1", PRIMARY)).await;
        assert_eq!(events.completion(&assign).await["outcome"], "succeeded");
    }
    app.sim.state.reset_stats();
    let mapping = publish_as(
        &app,
        "ods_mapping.changed",
        json!({ "ods_code": "RX1", "managed_ods_codes": ["RX2"], "onboarded": ["RX1", "RX2"] }),
        None,
    )
    .await;
    let done = events.completion(&mapping).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 3, "{done}");
    for user in &users {
        assert_eq!(
            groups_of(&app, user, CODES).await,
            set(&["PhoneSystem-Primary-RX1", "PhoneSystem-Primary-RX2"]),
            "{user}"
        );
    }
    let log = app.sim.state.stats().recent_writes;
    // Each user joined RX2 once: the members of the applied `PATCH`es and single additions.
    let mut joined: Vec<String> = log
        .iter()
        .filter(|w| w.applied)
        .flat_map(|w| match w.route.as_str() {
            "update_group" => w.targets[1..].to_vec(),
            "add_member" => vec![
                w.body.as_ref().unwrap()["@odata.id"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_owned(),
            ],
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(joined.len(), 3, "{log:?}");
    joined.sort();
    joined.dedup();
    assert_eq!(joined.len(), 3, "{log:?}");
    if crate::kit::realistic_tenant() {
        // A read from a replica behind the assigns moments earlier does not show a user in
        // RX1 yet: that user waits for a read that does (the role was realised moments ago)
        // and joins RX2 in a later round, alone. Which users, and whether any two are still
        // together, is chance; that each joined once is not.
        return;
    }
    let together: Vec<_> = log
        .iter()
        .filter(|w| w.route == "update_group" && w.applied)
        .collect();
    assert_eq!(together.len(), 1, "{log:?}");
    // The group, then its three new members.
    assert_eq!(together[0].targets.len(), 4, "{log:?}");
    assert_eq!(
        log.iter().filter(|w| w.route == "add_member").count(),
        0,
        "{log:?}"
    );
}
