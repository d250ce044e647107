//! Licensing as the tenant really does it (issue 16), end to end: group-based licences,
//! service-plan dependencies, Graph's conflict wording, seats at planning, and plans the vendor
//! adds to a SKU. Each test asserts the tenant's state (the simulator's) and the events
//! published.

use std::time::Duration;

use policy_reconciler::simulator::{SimulatorSettings, sku_ids};
use policy_reconciler::tenant::{AssignedLicence, LicenceChange, Tenant, UserRef};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{AppOptions, TestApp, spawn_app, spawn_app_with};
use crate::kit::broker::EventQueue;

const E3_ON: &[&str] = &["EXCHANGE_S_ENTERPRISE", "TEAMS1"];

fn policy(id: &str, version: i64, toggles: Value) -> Value {
    json!({ "id": id, "name": format!("{id} users"), "ods_code": "RX1", "version": version,
            "licence": "ENTERPRISEPACK", "toggles": toggles })
}

fn e3_toggles() -> Value {
    json!({ "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true })
}

async fn publish(app: &TestApp, payload: Value) -> Value {
    let job = app.job("policy.changed", payload);
    app.publish_job(&job).await;
    job
}

async fn completion(events: &mut EventQueue, job: &Value, seen: &mut Vec<Value>) -> Value {
    events
        .completion_keeping(&job["message_id"], seen, Duration::from_secs(90))
        .await
}

fn changed(policy: Value, members: &[String]) -> Value {
    json!({ "policy": policy, "members": members, "total_members": members.len() })
}

/// The user's licences as `licenseAssignmentStates` lists them: (skuId, assignedByGroup).
fn assignment_sources(app: &TestApp, upn: &str) -> Vec<(Uuid, Option<Uuid>)> {
    let user = app.sim.state.user(upn).unwrap();
    let mut sources: Vec<(Uuid, Option<Uuid>)> = user["licenseAssignmentStates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                serde_json::from_value(s["skuId"].clone()).unwrap(),
                serde_json::from_value(s["assignedByGroup"].clone()).unwrap(),
            )
        })
        .collect();
    sources.sort();
    sources
}

#[tokio::test]
async fn an_inherited_licence_is_reported_with_its_group_and_not_rewritten() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let members = app.sim.seed_users("inherit", 3);
    // A group licenses the first member with every plan of E3 on.
    let group = app
        .sim
        .state
        .create_licensed_group(
            "E3 everything",
            vec![(sku_ids::ENTERPRISEPACK, vec![])],
            &members[..1],
        )
        .unwrap();
    let seats_before = seats_consumed(&app, "ENTERPRISEPACK");

    let first = publish(&app, changed(policy("inh", 1, e3_toggles()), &members)).await;
    let done = completion(&mut events, &first, &mut seen).await;
    assert_eq!(done["outcome"], "partially_succeeded", "{done}");
    assert_eq!(done["counts"]["failed"], 1, "{done}");
    let failure = &done["failures"][0];
    assert_eq!(failure["item"], members[0].as_str());
    assert_eq!(failure["code"], "licence_inherited_from_group");
    let detail = failure["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("group 'E3 everything' ({group})")),
        "{detail}"
    );
    assert!(detail.contains("SWAY"), "{detail}");

    // What direct assignment can reach, it reached: the direct licence is the policy's, beside
    // the group's; the effective plans are the union (everything on), one seat only.
    let expected = app.sim.expected_licence("ENTERPRISEPACK", E3_ON);
    assert_eq!(
        assignment_sources(&app, &members[0]),
        vec![
            (sku_ids::ENTERPRISEPACK, None),
            (sku_ids::ENTERPRISEPACK, Some(group))
        ]
    );
    let direct = &app.sim.state.user(&members[0]).unwrap()["licenseAssignmentStates"][0];
    let mut direct_disabled: Vec<Uuid> =
        serde_json::from_value(direct["disabledPlans"].clone()).unwrap();
    direct_disabled.sort();
    assert_eq!(direct_disabled, expected.1);
    assert_eq!(
        app.sim.licences(&members[0]),
        vec![(sku_ids::ENTERPRISEPACK, vec![])]
    );
    for upn in &members[1..] {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    assert_eq!(seats_consumed(&app, "ENTERPRISEPACK"), seats_before + 2);

    // Sent again: reported again, nothing written (no loop of rewrites).
    let writes = app.sim.licence_writes();
    let again = publish(&app, changed(policy("inh", 2, e3_toggles()), &members)).await;
    let done = completion(&mut events, &again, &mut seen).await;
    assert_eq!(done["outcome"], "partially_succeeded", "{done}");
    assert_eq!(done["counts"]["already_compliant"], 2, "{done}");
    assert_eq!(done["failures"][0]["code"], "licence_inherited_from_group");
    assert_eq!(app.sim.licence_writes(), writes, "a rewrite was sent");
}

fn seats_consumed(app: &TestApp, part: &str) -> u64 {
    let skus = app.sim.state.subscribed_skus();
    crate::kit::simulator::sku(&skus, part)["consumedUnits"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_policy_whose_toggles_break_a_dependency_is_rejected_before_any_write() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let members = app.sim.seed_users("dep", 2);
    // Office for the web on, SharePoint off (toggles are an allow-list).
    let toggles = json!({ "EXCHANGE_S_ENTERPRISE": true, "SHAREPOINTWAC": true });
    let job = publish(&app, changed(policy("dep", 1, toggles), &members)).await;
    let done = completion(&mut events, &job, &mut seen).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(done["failures"][0]["code"], "service_plan_dependency");
    let detail = done["failures"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("SHAREPOINTWAC") && detail.contains("SHAREPOINTENTERPRISE"),
        "{detail}"
    );
    assert_eq!(app.sim.licence_writes(), 0);
    for upn in &members {
        assert!(app.sim.licences(upn).is_empty(), "{upn}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM policies")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "a rejected job stored its definition");
}

/// The tenant's own refusal of a dependency the table did not foresee is reported with the
/// same code (the client maps Graph's wording).
#[tokio::test]
async fn the_tenants_dependency_refusal_is_service_plan_dependency() {
    let sim = crate::kit::simulator::start_with(|s| s.plan_dependencies = true).await;
    let users = crate::kit::simulator::seed_users(&sim, "tdep", 1);
    let client = crate::kit::simulator::client(&sim);
    let skus = client.skus().await.unwrap();
    let e3 = skus.by_part_number("ENTERPRISEPACK").unwrap();
    let sharepoint = e3.plan_id("SHAREPOINTENTERPRISE").unwrap();
    let change = LicenceChange {
        user: UserRef::Id(users[0]),
        add: vec![AssignedLicence {
            sku_id: e3.sku_id,
            disabled_plans: vec![sharepoint],
        }],
        remove: vec![],
    };
    let result = client.assign_licences(&[change]).await;
    let error = result[0].clone().unwrap_err();
    assert_eq!(error.code(), "service_plan_dependency", "{error}");
    assert!(crate::kit::simulator::licences(&sim, &users[0].to_string()).is_empty());
}

#[tokio::test]
async fn graphs_conflict_wording_is_reported_as_mutually_exclusive_licence() {
    let mut settings = SimulatorSettings::for_tests();
    settings.graph_conflict_wording = true;
    let mut app = spawn_app_with(AppOptions {
        simulator: Some(settings),
        env: vec![("ENGINE__RESEND_AFTER_MS".into(), "500".into())],
        ..Default::default()
    })
    .await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    // The user holds Office 365 E1 (no policy of this service assigns it), SharePoint Online
    // (Plan 1) on: E3 with SharePoint Online (Plan 2) on conflicts, the pair Microsoft documents
    // (azure-docs `licensing-groups-resolve-problems.md`, "Conflicting service plans"; the
    // Exchange pair no longer conflicts, entra-docs' version of that page).
    app.sim.seed(
        json!({ "users": [{ "userPrincipalName": "e1.holder@nhs.net",
        "usageLocation": "GB",
        "assignedLicenses": [{ "skuId": sku_ids::STANDARDPACK }] }] }),
    );
    let members = vec!["e1.holder@nhs.net".to_owned()];
    let toggles = json!({ "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true,
                          "SHAREPOINTENTERPRISE": true });
    let job = publish(&app, changed(policy("conflict", 1, toggles), &members)).await;
    let done = completion(&mut events, &job, &mut seen).await;
    assert_eq!(done["outcome"], "failed", "{done}");
    assert_eq!(done["failures"][0]["code"], "mutually_exclusive_licence");
    let detail = done["failures"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("Conflicting Service Plans: SHAREPOINTSTANDARD, SHAREPOINTENTERPRISE"),
        "{detail}"
    );
    assert_eq!(
        app.sim.licences("e1.holder@nhs.net"),
        vec![(sku_ids::STANDARDPACK, vec![])]
    );
}

#[tokio::test]
async fn a_job_needing_1200_seats_with_800_free_is_rejected_with_nothing_written() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let members = app.sim.seed_users("seat", 1200);
    app.sim
        .state
        .update_sku(
            "ENTERPRISEPACK",
            &json!({ "prepaidUnits": { "enabled": 800 } }),
        )
        .unwrap();
    let job = publish(&app, changed(policy("seats", 1, e3_toggles()), &members)).await;
    let done = completion(&mut events, &job, &mut seen).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(done["failures"][0]["code"], "no_seats_available");
    let detail = done["failures"][0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("1200 users need a new seat of ENTERPRISEPACK but 800 are free"),
        "{detail}"
    );
    assert_eq!(done["counts"]["total"], 0);
    assert_eq!(app.sim.licence_writes(), 0, "a write was sent");
    assert_eq!(seats_consumed(&app, "ENTERPRISEPACK"), 0);
    assert!(
        !seen
            .iter()
            .any(|e| e["type"] == "job.accepted" && e["source_message_id"] == job["message_id"])
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM policy_members")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    // With 10 seats, 8 fit; a second job for 3 more users then finds only 2: the first job's
    // 8 are counted while it runs (reserved at its planning) and once done (consumedUnits).
    app.sim
        .state
        .update_sku(
            "ENTERPRISEPACK",
            &json!({ "prepaidUnits": { "enabled": 10 } }),
        )
        .unwrap();
    let first = publish(
        &app,
        changed(policy("seats", 2, e3_toggles()), &members[..8]),
    )
    .await;
    // Planned first (two messages published together may be planned in either order).
    events
        .next_of("job.accepted", first["message_id"].as_str().unwrap())
        .await;
    let others = app.sim.seed_users("seat-more", 3);
    let job = json!({ "policy": { "id": "other", "name": "other", "ods_code": "RX2",
        "version": 1, "licence": "ENTERPRISEPACK", "toggles": e3_toggles() },
        "members": others, "total_members": 3 });
    let second = publish(&app, job).await;
    let done = completion(&mut events, &first, &mut seen).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(seats_consumed(&app, "ENTERPRISEPACK"), 8);
    let done = completion(&mut events, &second, &mut seen).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(done["failures"][0]["code"], "no_seats_available");
    let detail = done["failures"][0]["detail"].as_str().unwrap();
    // 2 free, or fewer while the first job's writes are applied but not yet recorded.
    assert!(
        detail.starts_with("3 users need a new seat of ENTERPRISEPACK but "),
        "{detail}"
    );
    for upn in &others {
        assert!(app.sim.licences(upn).is_empty(), "{upn}");
    }
}

#[tokio::test]
async fn a_suspended_licence_rejects_jobs_that_need_new_seats_of_it() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let members = app.sim.seed_users("suspended", 2);
    app.sim
        .state
        .update_sku(
            "ENTERPRISEPACK",
            &json!({ "capabilityStatus": "Suspended" }),
        )
        .unwrap();
    let job = publish(&app, changed(policy("susp", 1, e3_toggles()), &members)).await;
    let done = completion(&mut events, &job, &mut seen).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(done["failures"][0]["code"], "no_seats_available");
    let detail = done["failures"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("ENTERPRISEPACK is Suspended"), "{detail}");
    assert_eq!(app.sim.licence_writes(), 0);
}

#[tokio::test]
async fn a_plan_added_to_enterprisepack_ends_disabled_for_every_member() {
    // A Saturday: the off-peak window is open.
    let (clock, _) = crate::kit::time::clock_on(chrono::Weekday::Sat, 10, 0).await;
    let mut app = spawn_app_with(AppOptions {
        clock: Some(clock),
        env: vec![(
            "ENGINE__LICENSING__CATALOGUE_REFRESH_SECONDS".into(),
            "1".into(),
        )],
        ..Default::default()
    })
    .await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let members = app.sim.seed_users("newplan", 5);
    let job = publish(&app, changed(policy("np", 1, e3_toggles()), &members)).await;
    let done = completion(&mut events, &job, &mut seen).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    // Let the watcher read the catalogue as it was (its baseline).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The vendor adds a plan: every holder has it enabled at once.
    let added = app
        .sim
        .state
        .add_service_plan("ENTERPRISEPACK", None, "COPILOT_NEW")
        .unwrap();
    let new_plan: Uuid = serde_json::from_value(added["servicePlanId"].clone()).unwrap();
    for upn in &members {
        assert!(!app.sim.licences(upn)[0].1.contains(&new_plan));
    }

    // No job from the portal: the service re-verifies the policy by itself.
    let internal = loop {
        let event = events
            .next(Duration::from_secs(30))
            .await
            .expect("no re-verification job completed");
        if event["type"] == "job.completed"
            && event["source_message_id"]
                .as_str()
                .is_some_and(|m| m.starts_with("service-plan-added:ENTERPRISEPACK:COPILOT_NEW:"))
        {
            break event;
        }
    };
    assert_eq!(internal["outcome"], "succeeded", "{internal}");
    assert_eq!(internal["job_type"], "policy.changed");
    assert_eq!(internal["subject"]["policy_id"], "np");
    assert_eq!(internal["counts"]["changed"], 5, "{internal}");
    let expected = app.sim.expected_licence("ENTERPRISEPACK", E3_ON);
    assert!(expected.1.contains(&new_plan));
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    // Once only: a later reading does not re-verify again.
    let jobs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE message_id LIKE 'service-plan-added:%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE message_id LIKE 'service-plan-added:%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((jobs, later), (1, 1));
}

/// The simulator's group-based licensing, seen through the client and raw HTTP: a group with
/// one seat left licenses one member and leaves the other in `CountViolation`; an inherited
/// licence cannot be removed directly; removing a licence not held is done already; the admin
/// routes change a SKU's status and add a plan.
#[tokio::test]
async fn the_simulator_licenses_group_members_as_entra_id_does() {
    let sim = crate::kit::simulator::start().await;
    let users = crate::kit::simulator::seed_users(&sim, "gbl", 2);
    let http = reqwest::Client::new();
    let base = sim.base_url();
    let patched = http
        .patch(format!("{base}/_sim/skus/ENTERPRISEPACK"))
        .json(&json!({ "prepaidUnits": { "enabled": 1 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let created: Value = http
        .post(format!("{base}/_sim/groups"))
        .json(&json!({ "displayName": "E3 staff",
            "assignedLicenses": [{ "skuId": sku_ids::ENTERPRISEPACK, "disabledPlans": [] }],
            "members": users }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let group: Uuid = serde_json::from_value(created["id"].clone()).unwrap();

    let client = crate::kit::simulator::client(&sim);
    let states = client
        .get_users(&[UserRef::Id(users[0]), UserRef::Id(users[1])])
        .await;
    let (first, second) = (states[0].clone().unwrap(), states[1].clone().unwrap());
    // The first member took the last seat; the second is in error and holds nothing.
    let errors: Vec<Option<String>> = [&first, &second]
        .iter()
        .map(|s| {
            assert!(s.assigned_licenses.is_empty(), "no direct licence");
            assert_eq!(s.inherited.len(), 1);
            assert_eq!(s.inherited[0].group_id, group);
            s.inherited[0].error.clone()
        })
        .collect();
    let mut errors = errors;
    errors.sort();
    assert_eq!(errors, vec![None, Some("CountViolation".to_owned())]);
    let (holder, unlicensed) = if first.inherited[0].is_active() {
        (users[0], users[1])
    } else {
        (users[1], users[0])
    };
    assert_eq!(
        crate::kit::simulator::licences(&sim, &holder.to_string()),
        vec![(sku_ids::ENTERPRISEPACK, vec![])]
    );
    assert!(crate::kit::simulator::licences(&sim, &unlicensed.to_string()).is_empty());

    // Removing the inherited licence directly: Graph's refusal, its own error.
    let remove = |user: Uuid| LicenceChange {
        user: UserRef::Id(user),
        add: vec![],
        remove: vec![sku_ids::ENTERPRISEPACK],
    };
    let refused = client.assign_licences(&[remove(holder)]).await;
    assert_eq!(
        refused[0].clone().unwrap_err().code(),
        "licence_inherited_from_group"
    );
    // Removing a licence the user does not hold: already done.
    let done = client.assign_licences(&[remove(unlicensed)]).await;
    assert!(done[0].is_ok(), "{:?}", done[0]);

    // The vendor adds a plan; the subscription is suspended.
    let plan = http
        .post(format!("{base}/_sim/skus/ENTERPRISEPACK/plans"))
        .json(&json!({ "servicePlanName": "NEW_PLAN" }))
        .send()
        .await
        .unwrap();
    assert_eq!(plan.status(), 201);
    http.patch(format!("{base}/_sim/skus/ENTERPRISEPACK"))
        .json(&json!({ "capabilityStatus": "Suspended" }))
        .send()
        .await
        .unwrap();
    let skus = client.refresh_skus().await.unwrap();
    let e3 = skus.by_part_number("ENTERPRISEPACK").unwrap();
    assert!(e3.plan_id("NEW_PLAN").is_some());
    assert_eq!(e3.capability_status, "Suspended");
    assert_eq!(
        e3.prepaid_units.enabled, 0,
        "suspended seats are not enabled"
    );
}
