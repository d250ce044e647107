//! Graph client tests against the simulator.
use std::num::NonZeroU32;
use std::time::Duration;

use policy_reconciler::simulator::sku_ids;
use policy_reconciler::tenant::{
    AssignedLicence, LicenceChange, LicenceOutcome, NewGroup, NewUser, Tenant, TenantError,
    UserRef, waits,
};
use serde_json::json;
use uuid::Uuid;

use crate::kit::simulator::{client, client_with, licences, seed, seed_users, start, start_with};

fn e3_change(catalogue: &policy_reconciler::tenant::SkuCatalogue, user: UserRef) -> LicenceChange {
    let toggles = [
        ("EXCHANGE_S_ENTERPRISE", true),
        ("TEAMS1", true),
        ("SWAY", false),
    ];
    LicenceChange {
        user,
        add: vec![catalogue.assignment("ENTERPRISEPACK", toggles).unwrap()],
        remove: vec![],
    }
}

/// A change giving each of `ids` the Phone System licence (`MCOEV`), no plan disabled.
fn mcoev_for(ids: &[Uuid]) -> Vec<LicenceChange> {
    ids.iter()
        .map(|id| LicenceChange {
            user: UserRef::Id(*id),
            add: vec![AssignedLicence {
                sku_id: sku_ids::MCOEV,
                disabled_plans: vec![],
            }],
            remove: vec![],
        })
        .collect()
}

#[tokio::test]
async fn licence_gets_complete_disabled_plans_and_a_second_run_writes_nothing() {
    let sim = start().await;
    let ids = seed_users(&sim, "alice", 1);
    let tenant = client(&sim);
    let catalogue = tenant.skus().await.unwrap();
    let e3 = catalogue.by_part_number("ENTERPRISEPACK").unwrap();
    let change = e3_change(&catalogue, UserRef::Upn("ALICE0@example.org".into()));

    let first = tenant.ensure_licences(std::slice::from_ref(&change)).await;
    let first = first[0].as_ref().unwrap();
    assert!(first.changed);
    // Every plan except the two allowed ones is disabled, in the simulator's own state.
    let mut expected: Vec<Uuid> = e3
        .service_plans
        .iter()
        .filter(|p| !["EXCHANGE_S_ENTERPRISE", "TEAMS1"].contains(&p.service_plan_name.as_str()))
        .map(|p| p.service_plan_id)
        .collect();
    expected.sort();
    assert_eq!(expected.len(), e3.service_plans.len() - 2);
    assert_eq!(
        licences(&sim, &ids[0].to_string()),
        vec![(sku_ids::ENTERPRISEPACK, expected)]
    );
    assert_eq!(sim.state().stats().count("assign_license", 200), 1);

    sim.state().reset_stats();
    let second = tenant.ensure_licences(&[change]).await;
    let second = second[0].as_ref().unwrap();
    assert!(!second.changed, "already compliant");
    let stats = sim.state().stats();
    assert_eq!(
        stats.total("assign_license"),
        0,
        "no write reached the tenant"
    );
    assert_eq!(stats.writes_attempted, 0);
    assert_eq!(stats.count("get_user", 200), 1);
}

#[tokio::test]
async fn sku_swap_is_one_call() {
    let sim = start().await;
    let uid = Uuid::new_v4();
    seed(
        &sim,
        json!({"users": [{"id": uid, "userPrincipalName": "bob@example.org", "usageLocation": "GB",
            "assignedLicenses": [{"skuId": sku_ids::STANDARDPACK, "disabledPlans": []}]}]}),
    );
    let tenant = client(&sim);
    let change = LicenceChange {
        user: UserRef::Id(uid),
        add: vec![AssignedLicence {
            sku_id: sku_ids::ENTERPRISEPACK,
            disabled_plans: vec![],
        }],
        remove: vec![sku_ids::STANDARDPACK],
    };
    let out = tenant.assign_licences(&[change]).await;
    assert_eq!(out[0], Ok(LicenceOutcome::Applied));
    let stats = sim.state().stats();
    assert_eq!(stats.total("assign_license"), 1);
    assert_eq!(stats.writes_applied, 1);
    assert_eq!(
        licences(&sim, "bob@example.org"),
        vec![(sku_ids::ENTERPRISEPACK, vec![])]
    );
    let skus = tenant.refresh_skus().await.unwrap();
    assert_eq!(skus.by_id(sku_ids::STANDARDPACK).unwrap().consumed_units, 0);
    assert_eq!(
        skus.by_id(sku_ids::ENTERPRISEPACK).unwrap().consumed_units,
        1
    );
}

/// A small catalogue: one seat of TESTPACK, which excludes TESTPACK2.
fn small_catalogue() -> serde_json::Value {
    json!({"skus": [
        {"skuId": "00000000-0000-0000-0000-0000000000a1", "skuPartNumber": "TESTPACK",
         "prepaidUnits": {"enabled": 1}, "mutuallyExclusiveGroup": "suite",
         "servicePlans": [
            {"servicePlanId": "00000000-0000-0000-0000-0000000000b1", "servicePlanName": "PLAN_ONE"},
            {"servicePlanId": "00000000-0000-0000-0000-0000000000b2", "servicePlanName": "PLAN_TWO"}]},
        {"skuId": "00000000-0000-0000-0000-0000000000a2", "skuPartNumber": "TESTPACK2",
         "prepaidUnits": {"enabled": 10}, "mutuallyExclusiveGroup": "suite",
         "servicePlans": [
            {"servicePlanId": "00000000-0000-0000-0000-0000000000b3", "servicePlanName": "PLAN_THREE"}]}],
     "users": [
        {"userPrincipalName": "u1@example.org", "usageLocation": "GB"},
        {"userPrincipalName": "u2@example.org", "usageLocation": "GB"},
        {"userPrincipalName": "nolocation@example.org"}]})
}

#[tokio::test]
async fn licence_errors_are_mapped() {
    let sim = start().await;
    seed(&sim, small_catalogue());
    let tenant = client(&sim);
    let cat = tenant.skus().await.unwrap();
    let test = cat.assignment("TESTPACK", [("PLAN_ONE", true)]).unwrap();
    let test2 = cat.assignment("TESTPACK2", [("PLAN_THREE", true)]).unwrap();
    let change = |upn: &str, add: AssignedLicence| LicenceChange {
        user: UserRef::Upn(upn.into()),
        add: vec![add],
        remove: vec![],
    };
    let mut bad_plan = test.clone();
    bad_plan.disabled_plans.push(Uuid::new_v4());

    let out = tenant
        .assign_licences(&[
            change("u1@example.org", test.clone()),
            change("nobody@example.org", test.clone()),
            change("nolocation@example.org", test2.clone()),
            change("u2@example.org", bad_plan),
        ])
        .await;
    assert_eq!(out[0], Ok(LicenceOutcome::Applied));
    let codes: Vec<&str> = out[1..]
        .iter()
        .map(|r| r.as_ref().unwrap_err().code())
        .collect();
    assert_eq!(
        codes,
        [
            "user_not_found",
            "usage_location_missing",
            "unknown_service_plan"
        ]
    );

    // The only seat is taken; TESTPACK2 excludes TESTPACK.
    let out = tenant
        .assign_licences(&[
            change("u2@example.org", test),
            change("u1@example.org", test2),
        ])
        .await;
    assert!(
        matches!(out[0], Err(TenantError::NoSeatsAvailable(_))),
        "{:?}",
        out[0]
    );
    assert!(
        matches!(out[1], Err(TenantError::MutuallyExclusiveLicence(_))),
        "{:?}",
        out[1]
    );
    assert_eq!(
        out[1].as_ref().unwrap_err().code(),
        "mutually_exclusive_licence"
    );

    // Naming a plan the licence lacks fails before any call.
    let e = cat.assignment("TESTPACK", [("TEAMS1", true)]).unwrap_err();
    assert_eq!(e.code(), "unknown_service_plan");
    let read = tenant
        .get_users(&[UserRef::Upn("ghost@example.org".into())])
        .await;
    assert_eq!(read[0].as_ref().unwrap_err().code(), "user_not_found");
    // Nothing failed was applied.
    assert_eq!(sim.state().stats().writes_applied, 1);
}

#[tokio::test]
async fn throttling_without_retries_left_reports_retry_after() {
    let sim = start_with(|s| {
        s.writes_per_window = 1;
        s.write_window_seconds = 60;
    })
    .await;
    let ids = seed_users(&sim, "t", 2);
    let tenant = client_with(&sim, |t| t.max_attempts = NonZeroU32::MIN);
    let changes = mcoev_for(&ids);
    let out = tenant.assign_licences(&changes).await;
    let applied = out.iter().filter(|r| r.is_ok()).count();
    assert_eq!(applied, 1);
    let err = out.iter().find_map(|r| r.as_ref().err()).unwrap();
    let TenantError::Throttled {
        retry_after: Some(d),
    } = err
    else {
        panic!("expected throttling, got {err:?}");
    };
    assert!(
        *d >= Duration::from_secs(1) && *d <= Duration::from_secs(60),
        "{d:?}"
    );
    assert!(err.is_transient());
    assert_eq!(err.code(), "throttled");
    assert_eq!(sim.state().stats().throttled, 1);
}

#[tokio::test]
async fn transient_failures_are_retried_then_reported() {
    let sim = start().await;
    let ids = seed_users(&sim, "f", 3);
    let refs: Vec<UserRef> = ids.iter().map(|id| UserRef::Id(*id)).collect();
    let tenant = client(&sim);

    // Two inner 503s, then a dropped connection: all retried to success.
    sim.state().fail_next(2, 503);
    let out = tenant.get_users(&refs).await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(sim.state().stats().count("get_user", 503), 2);
    sim.state().fail_next(1, 0);
    let out = tenant.get_users(&refs).await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(
        sim.state().stats().count("batch", 0),
        1,
        "one connection dropped"
    );

    // Failing beyond the attempts: reported as tenant_unavailable.
    let impatient = client_with(&sim, |t| t.max_attempts = NonZeroU32::new(2).unwrap());
    sim.state().fail_next(100, 500);
    let out = impatient.get_users(&refs[..1]).await;
    let e = out[0].as_ref().unwrap_err();
    assert!(matches!(e, TenantError::Transient(_)), "{e:?}");
    assert_eq!(e.code(), "tenant_unavailable");
    assert!(e.is_transient());
    sim.state().fail_next(0, 500);
}

#[tokio::test]
async fn writes_that_may_have_been_applied_are_returned_not_repeated() {
    let sim = start().await;
    let ids = seed_users(&sim, "m", 1);
    let tenant = client(&sim);
    let change = LicenceChange {
        user: UserRef::Id(ids[0]),
        add: vec![AssignedLicence {
            sku_id: sku_ids::MCOEV,
            disabled_plans: vec![],
        }],
        remove: vec![],
    };
    sim.state().fail_next(1, 500);
    let out = tenant.assign_licences(std::slice::from_ref(&change)).await;
    let e = out[0].as_ref().unwrap_err();
    assert!(matches!(e, TenantError::Transient(_)), "{e:?}");
    let stats = sim.state().stats();
    assert_eq!(stats.count("assign_license", 500), 1);
    assert_eq!(stats.count("assign_license", 200), 0, "not sent again");
    assert_eq!(
        stats.count("get_user", 200),
        0,
        "the caller re-reads, not the client"
    );
    // What the engine does next: read, write what still differs, read back.
    let ensured = tenant.ensure_licences(&[change]).await;
    assert!(ensured[0].as_ref().unwrap().changed);

    // A creation that may have been applied is not sent again either.
    sim.state().fail_next(1, 503);
    let group = NewGroup {
        display_name: "Maybe".into(),
        mail_nickname: "maybe".into(),
    };
    let e = tenant.create_group(&group).await.unwrap_err();
    assert_eq!(e.code(), "tenant_unavailable");
    assert_eq!(sim.state().stats().count("create_group", 503), 1);
    assert_eq!(sim.state().stats().count("create_group", 201), 0);
}

#[tokio::test]
async fn bad_credentials_are_an_auth_failure() {
    let sim = start().await;
    let ids = seed_users(&sim, "a", 1);
    let tenant = client_with(&sim, |t| t.client_secret = "wrong".to_owned().into());
    let out = tenant.get_users(&[UserRef::Id(ids[0])]).await;
    let e = out[0].as_ref().unwrap_err();
    assert!(matches!(e, TenantError::Auth(_)), "{e:?}");
    assert_eq!(e.code(), "tenant_auth_failed");
    assert!(!e.is_transient());
    let stats = sim.state().stats();
    assert_eq!(stats.count("token", 401), 1);
    assert_eq!(stats.batch_calls, 0);
}

#[tokio::test]
async fn forty_five_operations_take_three_batches_in_input_order() {
    let sim = start().await;
    let ids = seed_users(&sim, "b", 45);
    let tenant = client(&sim);
    // Mix ids and UPNs; results must come back in input order although the simulator shuffles.
    let refs: Vec<UserRef> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            if i % 2 == 0 {
                UserRef::Id(*id)
            } else {
                UserRef::Upn(format!("B{i}@EXAMPLE.ORG"))
            }
        })
        .collect();
    let out = tenant.get_users(&refs).await;
    let got: Vec<Uuid> = out.into_iter().map(|r| r.unwrap().id).collect();
    assert_eq!(got, ids);
    let stats = sim.state().stats();
    assert_eq!(stats.batch_calls, 3);
    assert_eq!(stats.count("batch", 200), 3);
    assert_eq!(stats.batch_inner_requests, 45);

    sim.state().reset_stats();
    let cat = tenant.skus().await.unwrap();
    let changes: Vec<LicenceChange> = ids
        .iter()
        .map(|id| e3_change(&cat, UserRef::Id(*id)))
        .collect();
    let out = tenant.assign_licences(&changes).await;
    assert!(out.iter().all(|r| *r == Ok(LicenceOutcome::Applied)));
    let stats = sim.state().stats();
    assert_eq!(stats.batch_calls, 3);
    assert_eq!(stats.writes_applied, 45);
}

#[tokio::test]
async fn throttled_writes_wait_for_retry_after_and_stay_under_the_tenant_limit() {
    let sim = start_with(|s| {
        s.writes_per_window = 5;
        s.write_window_seconds = 1;
    })
    .await;
    let ids = seed_users(&sim, "r", 12);
    let tenant = client(&sim);
    let changes = mcoev_for(&ids);
    let out = tenant.assign_licences(&changes).await;
    assert!(
        out.iter().all(|r| *r == Ok(LicenceOutcome::Applied)),
        "{out:?}"
    );
    let stats = sim.state().stats();
    assert!(stats.throttled > 0, "the tenant throttled");
    assert_eq!(stats.writes_applied, 12, "every write applied exactly once");
    let max = stats
        .writes_applied_per_second
        .values()
        .max()
        .copied()
        .unwrap();
    assert!(max <= 5, "{:?}", stats.writes_applied_per_second);
    for id in &ids {
        assert_eq!(
            licences(&sim, &id.to_string()),
            vec![(sku_ids::MCOEV, vec![])]
        );
    }
}

#[tokio::test]
async fn a_throttled_write_that_was_applied_is_read_back_not_rewritten() {
    let sim = start_with(|s| {
        s.writes_per_window = 3;
        s.write_window_seconds = 1;
        s.throttled_write_applied_probability = 1.0;
    })
    .await;
    let ids = seed_users(&sim, "p", 8);
    let tenant = client(&sim);
    let changes = mcoev_for(&ids);
    let out = tenant.assign_licences(&changes).await;
    let held = out
        .iter()
        .filter(|r| **r == Ok(LicenceOutcome::AlreadyHeld))
        .count();
    let applied = out
        .iter()
        .filter(|r| **r == Ok(LicenceOutcome::Applied))
        .count();
    assert_eq!(held + applied, 8, "{out:?}");
    // 3 writes per window pass; the others were throttled yet applied, which the re-read detects
    // (at least 2 even if the batch happened to straddle a window boundary).
    assert!(
        held >= 2,
        "throttled writes were applied anyway and detected by reading: {out:?}"
    );
    let stats = sim.state().stats();
    // One write per user: none was sent again after the re-read.
    assert_eq!(stats.writes_attempted, 8);
    assert_eq!(stats.writes_applied, 8);
}

#[tokio::test]
async fn client_write_budget_limits_the_write_rate() {
    let sim = start().await;
    let ids = seed_users(&sim, "w", 15);
    let tenant = client_with(&sim, |t| {
        t.writes_per_second = 5.0;
        t.write_burst = NonZeroU32::new(5).unwrap();
    });
    let changes = mcoev_for(&ids);
    let started = std::time::Instant::now();
    let out = tenant.assign_licences(&changes).await;
    assert!(out.iter().all(Result::is_ok));
    // 15 writes at 5/s with a burst of 5 need at least 2 s.
    assert!(started.elapsed() >= Duration::from_millis(1900));
    let stats = sim.state().stats();
    assert_eq!(
        stats.batch_calls, 3,
        "write batches hold at most write_burst requests"
    );
    let max = stats
        .writes_attempted_per_second
        .values()
        .max()
        .copied()
        .unwrap();
    // A token bucket lets at most rate + burst through in any second.
    assert!(max <= 10, "{:?}", stats.writes_attempted_per_second);
}

#[tokio::test]
async fn expired_and_revoked_tokens_are_replaced() {
    let sim = start_with(|s| s.token_lifetime_seconds = 1).await;
    let ids = seed_users(&sim, "k", 1);
    let tenant = client_with(&sim, |t| t.token_refresh_margin_seconds = 0);
    let refs = [UserRef::Id(ids[0])];
    assert!(tenant.get_users(&refs).await[0].is_ok());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(tenant.get_users(&refs).await[0].is_ok());
    assert_eq!(
        sim.state().stats().count("token", 200),
        2,
        "renewed after expiry"
    );

    // A token Graph refuses (401) is replaced once and the call repeated.
    let sim = start().await;
    let ids = seed_users(&sim, "k", 1);
    let tenant = client(&sim);
    let refs = [UserRef::Id(ids[0])];
    assert!(tenant.get_users(&refs).await[0].is_ok());
    sim.state().revoke_tokens();
    assert!(tenant.get_users(&refs).await[0].is_ok());
    let stats = sim.state().stats();
    assert_eq!(stats.count("batch", 401), 1);
    assert_eq!(stats.count("token", 200), 2);
    assert_eq!(stats.count("batch", 200), 2);
}

#[tokio::test]
async fn member_of_lists_every_group_of_a_user_across_pages_and_retries_reads() {
    let sim = start_with(|s| s.members_page_size = 2).await;
    let ids = seed_users(&sim, "mo", 2);
    let (user, other) = (ids[0], ids[1]);
    let tenant = client(&sim);
    let mut want = Vec::new();
    for i in 0..5 {
        let group = tenant
            .create_group(&NewGroup {
                display_name: format!("Team {i}"),
                mail_nickname: format!("team{i}"),
            })
            .await
            .unwrap();
        assert!(tenant.add_members(group.id, &[user]).await[0].is_ok());
        want.push((group.id, group.display_name));
    }
    let lonely = tenant
        .create_group(&NewGroup {
            display_name: "Not Theirs".into(),
            mail_nickname: "not-theirs".into(),
        })
        .await
        .unwrap();
    assert!(tenant.add_members(lonely.id, &[other]).await[0].is_ok());
    // One removed again: memberOf follows the group's members.
    assert!(tenant.remove_members(want[4].0, &[user]).await[0].is_ok());
    want.pop();
    want.sort();

    let mut got: Vec<(Uuid, String)> = tenant
        .member_of(user)
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.id, g.display_name))
        .collect();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(
        sim.state().stats().count("member_of", 200),
        2,
        "4 groups in pages of 2"
    );
    assert_eq!(
        sim.state().groups_of(&user.to_string()).unwrap(),
        ["Team 0", "Team 1", "Team 2", "Team 3"]
    );

    // A read: a 503 is sent again.
    sim.state().fail_next(1, 503);
    assert_eq!(tenant.member_of(user).await.unwrap().len(), 4);
    assert_eq!(sim.state().stats().count("member_of", 503), 1);

    // A user who does not exist.
    let e = tenant.member_of(Uuid::new_v4()).await.unwrap_err();
    assert!(matches!(e, TenantError::UserNotFound(_)), "{e:?}");
}

#[tokio::test]
async fn groups_and_members_round_trip() {
    let sim = start_with(|s| s.members_page_size = 2).await;
    let ids = seed_users(&sim, "m", 5);
    let tenant = client(&sim);
    let created = tenant
        .create_group(&NewGroup {
            display_name: "O'Brien's Team".into(),
            mail_nickname: "obriens-team".into(),
        })
        .await
        .unwrap();
    let found = tenant.find_group("O'Brien's Team").await.unwrap();
    assert_eq!(found.as_ref().map(|g| g.id), Some(created.id));
    assert_eq!(tenant.find_group("Nobody's Team").await.unwrap(), None);

    let added = tenant.add_members(created.id, &ids).await;
    assert!(added.iter().all(Result::is_ok), "{added:?}");
    let again = tenant.add_members(created.id, &ids[..1]).await;
    assert!(
        matches!(again[0], Err(TenantError::AlreadyMember(_))),
        "{again:?}"
    );

    let members = tenant.list_members(created.id).await.unwrap();
    let mut got: Vec<Uuid> = members.iter().map(|m| m.id).collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        sim.state().stats().count("list_members", 200),
        3,
        "5 members in pages of 2"
    );

    let removed = tenant.remove_members(created.id, &ids[..2]).await;
    assert!(removed.iter().all(Result::is_ok));
    let again = tenant.remove_members(created.id, &ids[..1]).await;
    assert!(
        matches!(again[0], Err(TenantError::NotMember(_))),
        "{again:?}"
    );
    assert_eq!(tenant.list_members(created.id).await.unwrap().len(), 3);

    let user = tenant
        .create_user(&NewUser {
            user_principal_name: "new.user@example.org".into(),
            display_name: "New User".into(),
            mail_nickname: "new.user".into(),
            usage_location: Some("GB".into()),
        })
        .await
        .unwrap();
    let read = tenant.get_users(&[UserRef::Id(user.id)]).await;
    assert_eq!(
        read[0].as_ref().unwrap().usage_location.as_deref(),
        Some("GB")
    );
}

/// Every request the client sends, inner `$batch` requests included, names itself with a
/// `client-request-id` of its own (microsoft-graph-docs-contrib
/// `concepts/best-practices-concept.md`, "Reliability and support"): the simulator's write log
/// shows the id each write arrived with.
#[tokio::test]
async fn every_request_carries_its_own_client_request_id() {
    let sim = start().await;
    let ids = seed_users(&sim, "crid", 3);
    let tenant = client(&sim);
    let changes = mcoev_for(&ids);
    let out = tenant.assign_licences(&changes).await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let group = tenant
        .create_group(&NewGroup {
            display_name: "Ids".into(),
            mail_nickname: "ids".into(),
        })
        .await
        .unwrap();
    let writes = sim.state().stats().recent_writes;
    assert_eq!(writes.len(), 4, "three inner writes and one single call");
    let mut seen = std::collections::HashSet::new();
    for w in &writes {
        let crid = Uuid::parse_str(&w.client_request_id).expect("a UUID");
        assert_eq!(crid.get_version_num(), 4, "{w:?}");
        // The simulator answers its own request-id when a request sends none.
        assert_ne!(
            w.client_request_id, w.request_id,
            "sent by the client: {w:?}"
        );
        assert!(seen.insert(crid), "one id per request: {writes:?}");
    }
    assert!(
        writes.iter().any(|w| w.route == "create_group"),
        "{group:?}"
    );
}

/// A 503 with `Retry-After` (the simulator's injected 503s send 1 to 2 seconds, possibly
/// fractional) is retried after it, for a single call and for an inner `$batch` request alike.
/// The client's own back-off is set to a millisecond, so only the `Retry-After` can account
/// for a wait of a second or more (a lower bound, which a loaded machine cannot break).
#[tokio::test]
async fn a_503_with_retry_after_is_retried_after_it() {
    let sim = start().await;
    let ids = seed_users(&sim, "ra", 2);
    let tenant = client_with(&sim, |t| {
        t.retry_min_delay_ms = 1;
        t.retry_max_delay_ms = 1;
    });
    let user = ids[0];

    // A single call (a read): one 503, then the answer.
    sim.state().fail_next(1, 503);
    let started = std::time::Instant::now();
    assert!(tenant.member_of(user).await.unwrap().is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let stats = sim.state().stats();
    assert_eq!(stats.count("member_of", 503), 1);
    assert_eq!(stats.count("member_of", 200), 1);

    // Inner requests of a $batch: the 503 one is sent again after its Retry-After.
    sim.state().reset_stats();
    sim.state().fail_next(1, 503);
    let refs: Vec<UserRef> = ids.iter().map(|id| UserRef::Id(*id)).collect();
    let started = std::time::Instant::now();
    let out = tenant.get_users(&refs).await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let stats = sim.state().stats();
    assert_eq!(stats.count("get_user", 503), 1);
    assert_eq!(stats.count("get_user", 200), 2);
    assert_eq!(
        stats.batch_calls, 2,
        "the first round, and the one retried request"
    );
}

#[tokio::test]
async fn work_that_returns_early_gets_the_answers_that_came_and_the_failed_ones_postponed() {
    let sim = start().await;
    let ids = seed_users(&sim, "early", 3);
    let tenant = client(&sim);
    let refs: Vec<UserRef> = ids.iter().map(|id| UserRef::Id(*id)).collect();

    // One inner 503 among three reads: the other two come back at once, the failed one as
    // postponed for its Retry-After, not sent again by the call.
    sim.state().fail_next(1, 503);
    let out = waits::return_early(tenant.get_users(&refs)).await;
    let postponed: Vec<&TenantError> = out.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(postponed.len(), 1, "{out:?}");
    match postponed[0] {
        TenantError::Postponed { after, error } => {
            assert!(*after >= Duration::from_secs(1), "{after:?}");
            assert!(matches!(**error, TenantError::Transient(_)), "{error:?}");
            assert_eq!(postponed[0].code(), "tenant_unavailable");
        }
        other => panic!("not postponed: {other:?}"),
    }
    let stats = sim.state().stats();
    assert_eq!(stats.count("get_user", 503), 1);
    assert_eq!(stats.count("get_user", 200), 2);
    assert_eq!(stats.batch_calls, 1, "the failed read was not sent again");

    // Nothing came (every request failed): there is nothing to get on with, so the call
    // waits out the Retry-After and retries as always.
    sim.state().reset_stats();
    sim.state().fail_next(1, 503);
    let out = waits::return_early(tenant.get_users(&refs[..1])).await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let stats = sim.state().stats();
    assert_eq!(stats.count("get_user", 503), 1);
    assert_eq!(stats.count("get_user", 200), 1);
}

#[tokio::test]
async fn throttled_licence_writes_come_back_postponed_when_the_others_went_through() {
    let sim = start_with(|s| {
        s.writes_per_window = 2;
        s.write_window_seconds = 60;
    })
    .await;
    let ids = seed_users(&sim, "tp", 3);
    let tenant = client(&sim);
    let changes = mcoev_for(&ids);
    // Two writes go through, the third is throttled for most of a minute: the call does not
    // wait for it (nor re-read and retry it), it hands it back, not applied.
    let started = std::time::Instant::now();
    let out = waits::return_early(tenant.assign_licences(&changes)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 2, "{out:?}");
    let err = out.iter().find_map(|r| r.as_ref().err()).unwrap();
    let TenantError::Postponed { after, error } = err else {
        panic!("expected a postponed write, got {err:?}");
    };
    assert!(*after >= Duration::from_secs(1), "{after:?}");
    assert!(
        matches!(**error, TenantError::Throttled { .. }),
        "{error:?}"
    );
    assert_eq!(err.code(), "throttled");
    let stats = sim.state().stats();
    assert_eq!(stats.writes_applied, 2);
    assert_eq!(stats.total("assign_license"), 3, "sent once each");
}
