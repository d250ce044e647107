use super::super::catalogue::{default_catalogue, sku_ids};
use super::super::replica::{Lag, enter};
use super::groups::parse_display_name_filter;
use super::*;

fn lag(ms: u64) -> Lag {
    Lag {
        max: Duration::from_millis(ms),
        long_probability: 1.0,
        long: Duration::from_millis(ms),
    }
}

fn write(ms: u64, hide_new: bool) -> View {
    View::Write {
        hide_new,
        lag: lag(ms),
    }
}

/// A directory with one user (GB) and one group with no members; their ids.
fn directory() -> (Directory, Uuid, Uuid) {
    let mut d = Directory::with_catalogue(&default_catalogue());
    let (user, group) = (Uuid::new_v4(), Uuid::new_v4());
    let seed: Seed = serde_json::from_value(json!({
        "users": [{"id": user, "userPrincipalName": "a@example.org", "usageLocation": "GB"}],
        "groups": [{"id": group, "displayName": "G"}],
    }))
    .unwrap();
    d.seed(&seed).unwrap();
    assert!(d.replication.is_empty(), "seeding is replicated at once");
    (d, user, group)
}

fn licences(d: &Directory, user: Uuid) -> Result<usize, GraphError> {
    let u = d.get_user(&user.to_string(), Some("assignedLicenses"))?;
    Ok(u["assignedLicenses"].as_array().map_or(0, Vec::len))
}

fn e3() -> AssignLicense {
    AssignLicense {
        add: vec![(sku_ids::ENTERPRISEPACK, Vec::new())],
        remove: Vec::new(),
    }
}

fn member_ids(d: &Directory, group: Uuid) -> Vec<Uuid> {
    let (page, _) = d
        .members_page(&group.to_string(), Some("id"), true, None, 100)
        .unwrap();
    page.iter()
        .map(|v| serde_json::from_value(v["id"].clone()).unwrap())
        .collect()
}

#[test]
fn a_lagging_replica_shows_the_user_before_the_licence_write() {
    let (mut d, user, _) = directory();
    {
        let _w = enter(write(3_600_000, false));
        d.assign_license(&user.to_string(), &e3()).unwrap();
    }
    {
        let _r = enter(View::Lagging);
        assert_eq!(licences(&d, user).unwrap(), 0);
    }
    {
        let _r = enter(View::Fresh);
        assert_eq!(licences(&d, user).unwrap(), 1);
    }
    // Inspection, outside any Graph call, reads the primary.
    assert_eq!(
        d.user_json(&user.to_string()).unwrap()["assignedLicenses"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(licences(&d, user).unwrap(), 1);
}

#[test]
fn a_write_becomes_visible_everywhere_after_its_lag() {
    let (mut d, user, _) = directory();
    {
        let _w = enter(write(30, false));
        d.assign_license(&user.to_string(), &e3()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(40));
    let _r = enter(View::Lagging);
    assert_eq!(licences(&d, user).unwrap(), 1);
    drop(_r);
    // The next write drops the replicated entry.
    let _w = enter(write(30, false));
    d.create_group(&json!({"displayName": "H", "mailNickname": "H",
        "mailEnabled": false, "securityEnabled": true}))
        .unwrap();
    assert!(!d.replication.users.contains_key(&user));
}

#[test]
fn without_lag_nothing_is_recorded_and_every_view_is_the_primary() {
    let (mut d, user, group) = directory();
    {
        let _w = enter(write(0, true));
        let lag0 = View::Write {
            hide_new: true,
            lag: Lag::default(),
        };
        let _w = enter(lag0);
        d.assign_license(&user.to_string(), &e3()).unwrap();
        d.add_member(&group.to_string(), &json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{user}")}))
            .unwrap();
    }
    assert!(d.replication.is_empty());
    let _r = enter(View::Lagging);
    assert_eq!(licences(&d, user).unwrap(), 1);
    assert_eq!(member_ids(&d, group), vec![user]);
}

#[test]
fn a_new_group_is_missing_until_replicated_even_to_writes() {
    let (mut d, user, _) = directory();
    let created = {
        let _w = enter(write(3_600_000, false));
        d.create_group(&json!({"displayName": "New", "mailNickname": "New",
            "mailEnabled": false, "securityEnabled": true}))
            .unwrap()
    };
    let gid = created["id"].as_str().unwrap().to_owned();
    let filter = Some("displayName eq 'New'");
    {
        let _r = enter(View::Lagging);
        assert_eq!(
            d.group(&gid).err().map(|e| e.code),
            Some("Request_ResourceNotFound")
        );
        assert_eq!(d.find_groups(filter).unwrap()["value"], json!([]));
        assert!(
            d.find_groups(None).unwrap()["value"]
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["id"] != gid.as_str())
        );
    }
    {
        let _r = enter(View::Fresh);
        assert_eq!(
            d.find_groups(filter).unwrap()["value"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
    let member =
        json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{user}")});
    {
        let _w = enter(write(3_600_000, true));
        let e = d.add_member(&gid, &member).unwrap_err();
        assert_eq!((e.status, e.code), (404, "Request_ResourceNotFound"));
    }
    let _w = enter(write(3_600_000, false));
    d.add_member(&gid, &member).unwrap();
}

#[test]
fn a_new_user_is_missing_to_reads_and_to_writes_that_name_it() {
    let (mut d, _, group) = directory();
    let created = {
        let _w = enter(write(3_600_000, false));
        d.create_user(
            &json!({"userPrincipalName": "new@example.org", "displayName": "N",
            "mailNickname": "new", "accountEnabled": true, "usageLocation": "GB",
            "passwordProfile": {"password": "x"}}),
        )
        .unwrap()
    };
    let uid = created["id"].as_str().unwrap().to_owned();
    {
        let _r = enter(View::Lagging);
        assert_eq!(d.get_user(&uid, None).unwrap_err().status, 404);
        assert_eq!(d.get_user("NEW@example.org", None).unwrap_err().status, 404);
    }
    {
        let _w = enter(write(3_600_000, true));
        assert_eq!(d.assign_license(&uid, &e3()).unwrap_err().status, 404);
        let member = json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{uid}")});
        assert_eq!(
            d.add_member(&group.to_string(), &member)
                .unwrap_err()
                .status,
            404
        );
    }
    let _w = enter(write(3_600_000, false));
    d.assign_license(&uid, &e3()).unwrap();
    assert!(d.user_json(&uid).is_some());
}

#[test]
fn lagging_replicas_show_memberships_from_before_their_changes() {
    let (mut d, user, group) = directory();
    let others: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let seed: Seed = serde_json::from_value(json!({
        "users": others.iter().enumerate().map(|(i, id)| json!({"id": id,
            "userPrincipalName": format!("o{i}@example.org")})).collect::<Vec<_>>(),
    }))
    .unwrap();
    d.seed(&seed).unwrap();
    let reference = |u: &Uuid| json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{u}")});
    // Replicated at once: others[0] and others[1] are members everywhere.
    {
        let _w = enter(write(0, false));
        d.add_member(&group.to_string(), &reference(&others[0]))
            .unwrap();
        d.add_member(&group.to_string(), &reference(&others[1]))
            .unwrap();
    }
    // Lagging: add user and others[2], remove others[0].
    {
        let _w = enter(write(3_600_000, false));
        d.add_member(&group.to_string(), &reference(&user)).unwrap();
        d.add_member(&group.to_string(), &reference(&others[2]))
            .unwrap();
        d.remove_member(&group.to_string(), &others[0].to_string())
            .unwrap();
    }
    let sorted = |mut v: Vec<Uuid>| {
        v.sort();
        v
    };
    {
        let _r = enter(View::Fresh);
        assert_eq!(
            member_ids(&d, group),
            sorted(vec![user, others[1], others[2]])
        );
    }
    let _r = enter(View::Lagging);
    assert_eq!(member_ids(&d, group), sorted(vec![others[0], others[1]]));
    // Pages of one, in order, through the skip tokens.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = d
            .members_page(&group.to_string(), Some("id"), true, after, 1)
            .unwrap();
        seen.extend(
            page.iter()
                .map(|v| serde_json::from_value::<Uuid>(v["id"].clone()).unwrap()),
        );
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, sorted(vec![others[0], others[1]]));
    let (groups, _) = d
        .member_of_page(&user.to_string(), None, false, None, 10)
        .unwrap();
    assert!(groups.is_empty());
    let (groups, _) = d
        .member_of_page(&others[0].to_string(), None, false, None, 10)
        .unwrap();
    assert_eq!(groups.len(), 1);
    drop(_r);
    // Inspection reads the primary.
    assert_eq!(
        d.group_names_of(&user.to_string()).unwrap(),
        vec!["G".to_owned()]
    );
}

#[test]
fn filter_unescapes_doubled_quotes() {
    assert_eq!(
        parse_display_name_filter("displayName eq 'O''Brien team'").as_deref(),
        Some("O'Brien team")
    );
    assert_eq!(
        parse_display_name_filter("displayName eq 'bad'quote'"),
        None
    );
    assert_eq!(parse_display_name_filter("mail eq 'x'"), None);
}

fn directory_with(users: serde_json::Value) -> Directory {
    let seed: Seed = serde_json::from_value(json!({ "users": users })).unwrap();
    let mut d = Directory::default();
    d.seed(&seed).unwrap();
    d
}

fn upns(d: &Directory, filter: &str) -> Vec<String> {
    let page = d.list_users(Some(filter), None, None, 10).unwrap();
    let mut v: Vec<String> = page
        .value
        .iter()
        .map(|u| u["userPrincipalName"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn user_filters_parse_with_doubled_quotes_lambdas_and_or() {
    assert_eq!(
        parse_user_filter("mail eq 'o''brien@x.org'"),
        Ok(UserFilter::Mail("o'brien@x.org".into()))
    );
    assert_eq!(
        parse_user_filter(
            "proxyAddresses/any(p: p eq 'smtp:a@x.org') or userPrincipalName eq 'b@x.org'"
        ),
        Ok(UserFilter::Or(
            Box::new(UserFilter::ProxyAddress("smtp:a@x.org".into())),
            Box::new(UserFilter::Upn("b@x.org".into()))
        ))
    );
    let unsupported = parse_user_filter("displayName eq 'x'").unwrap_err();
    assert_eq!(unsupported.code, "Request_UnsupportedQuery");
    assert_eq!(
        parse_user_filter("startsWith(mail,'a')").unwrap_err().code,
        "Request_UnsupportedQuery"
    );
    assert_eq!(parse_user_filter("mail eq 'open").unwrap_err().status, 400);
    assert_eq!(
        parse_user_filter("mail eq 'a' junk").unwrap_err().status,
        400
    );
}

#[test]
fn users_are_found_by_mail_proxy_address_and_other_mails_case_insensitively() {
    let d = directory_with(json!([
        {"userPrincipalName": "jane@x.org", "mail": "Jane.Smith@x.org",
         "proxyAddresses": ["SMTP:Jane.Smith@x.org", "smtp:js@x.org"]},
        {"userPrincipalName": "bob@x.org", "otherMails": ["bob@home.example"]},
    ]));
    assert_eq!(upns(&d, "mail eq 'jane.smith@X.org'"), ["jane@x.org"]);
    assert_eq!(
        upns(&d, "proxyAddresses/any(p:p eq 'smtp:jane.smith@x.org')"),
        ["jane@x.org"]
    );
    assert_eq!(
        upns(&d, "proxyAddresses/any(p:p eq 'SMTP:JS@x.org')"),
        ["jane@x.org"]
    );
    assert_eq!(
        upns(&d, "otherMails/any(m:m eq 'BOB@home.example')"),
        ["bob@x.org"]
    );
    assert_eq!(
        upns(&d, "mail eq 'js@x.org' or userPrincipalName eq 'BOB@x.org'"),
        ["bob@x.org"]
    );
    assert!(upns(&d, "mail eq 'nobody@x.org'").is_empty());
}

#[test]
fn proxy_addresses_are_unique_across_users() {
    let mut d = directory_with(json!([
        {"userPrincipalName": "a@x.org", "proxyAddresses": ["SMTP:shared@x.org"]},
    ]));
    let seed: Seed = serde_json::from_value(json!({"users": [
        {"userPrincipalName": "b@x.org", "proxyAddresses": ["smtp:SHARED@x.org"]}]}))
    .unwrap();
    let err = d.seed(&seed).unwrap_err();
    assert!(err.message.contains("proxyAddresses"), "{err:?}");
    assert!(d.resolve_user("b@x.org").is_none());
}

#[test]
fn upn_rules_follow_entra_id() {
    for ok in [
        "a.b@x.org",
        "o'brien@x.org",
        "alice_contoso.com#EXT#@tenant.onmicrosoft.com",
        "a!#^~-_@x.org",
    ] {
        assert_eq!(validate_upn(ok), Ok(()), "{ok}");
    }
    let long_local = format!("{}@x.org", "a".repeat(65));
    let long_domain = format!("a@{}.org", "d".repeat(45));
    for bad in [
        "no-at-sign",
        "a.@x.org",
        "a b@x.org",
        "ä@x.org",
        "a@b@x.org",
        "a+tag@x.org",
        &long_local,
        &long_domain,
    ] {
        let e = validate_upn(bad).unwrap_err();
        assert_eq!((e.status, e.code), (400, "Request_BadRequest"), "{bad}");
    }
    assert_eq!(validate_usage_location(&json!("gb")), Ok(Some("GB".into())));
    assert_eq!(validate_usage_location(&Value::Null), Ok(None));
    for bad in [json!("GBR"), json!("G1"), json!(""), json!(44)] {
        assert!(validate_usage_location(&bad).is_err(), "{bad}");
    }
}

#[test]
fn member_binds_are_all_or_nothing_and_use_the_add_member_primitive() {
    let mut d = directory_with(json!([
        {"id": "00000000-0000-0000-0000-000000000001", "userPrincipalName": "a@x.org"},
        {"id": "00000000-0000-0000-0000-000000000002", "userPrincipalName": "b@x.org"},
    ]));
    let g = d
        .create_group(&json!({"displayName": "G", "mailNickname": "g",
            "mailEnabled": false, "securityEnabled": true}))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = |n: u8| {
        format!(
            "https://graph.microsoft.com/v1.0/directoryObjects/00000000-0000-0000-0000-00000000000{n}"
        )
    };
    // One unknown user: nobody is added.
    let err = d
        .update_group(&g, &json!({"members@odata.bind": [url(1), url(9)]}))
        .unwrap_err();
    assert_eq!(err.status, 404);
    assert_eq!(d.member_count(&g), Ok(0));
    let added = d
        .update_group(&g, &json!({"members@odata.bind": [url(1), url(2)]}))
        .unwrap();
    assert_eq!(added.len(), 2);
    assert_eq!(d.member_count(&g), Ok(2));
    assert_eq!(d.group_names_of("a@x.org"), Some(vec!["G".to_owned()]));
    // Already a member: refused whole.
    let err = d
        .update_group(&g, &json!({"members@odata.bind": [url(1)]}))
        .unwrap_err();
    assert_eq!(err.status, 400);
    let too_many: Vec<String> = (0..21).map(|_| url(1)).collect();
    let err = d
        .update_group(&g, &json!({"members@odata.bind": too_many}))
        .unwrap_err();
    assert!(err.message.contains("20"), "{err:?}");
}

#[test]
fn upsert_creates_once_by_unique_name_and_then_updates() {
    let mut d = Directory::default();
    let body = json!({"displayName": "Ops", "mailNickname": "ops",
        "mailEnabled": false, "securityEnabled": true});
    assert_eq!(
        d.upsert_group("ops-1", &body, false)
            .err()
            .map(|e| e.status),
        Some(404)
    );
    let Ok(Upsert::Created(group, _)) = d.upsert_group("ops-1", &body, true) else {
        panic!("not created");
    };
    assert_eq!(group["uniqueName"], "ops-1");
    let renamed = json!({"displayName": "Operations"});
    assert!(matches!(
        d.upsert_group("OPS-1", &renamed, true),
        Ok(Upsert::Updated(_))
    ));
    let got = d
        .get_group(
            &GroupKey::UniqueName("ops-1".into()),
            Some("id,displayName"),
        )
        .unwrap();
    assert_eq!(got["displayName"], "Operations");
    assert_eq!(got["id"], group["id"]);
    assert_eq!(
        d.find_groups(Some("displayName eq 'Ops'")).unwrap()["value"],
        json!([])
    );
    assert_eq!(
        parse_unique_name_key("groups(uniqueName='O''Neil team')").as_deref(),
        Some("O'Neil team")
    );
    assert_eq!(parse_unique_name_key("groups(displayName='x')"), None);
}

fn bind(users: &[Uuid]) -> Value {
    json!({"members@odata.bind": users.iter()
        .map(|u| format!("https://graph.microsoft.com/v1.0/directoryObjects/{u}"))
        .collect::<Vec<_>>()})
}

#[test]
fn an_upserted_group_lags_like_a_created_one_to_reads_and_to_writes_naming_it() {
    let (mut d, user, _) = directory();
    let body = json!({"displayName": "Role X", "mailNickname": "rolex",
        "mailEnabled": false, "securityEnabled": true,
        "members@odata.bind": [format!("https://graph.microsoft.com/v1.0/users/{user}")]});
    let created = {
        // A write that itself hides new objects still creates the group and adds its
        // members: the group is its own.
        let _w = enter(write(3_600_000, true));
        match d.upsert_group("role-x", &body, true).unwrap() {
            Upsert::Created(g, members) => {
                assert_eq!(members, vec![user]);
                g
            }
            Upsert::Updated(_) => panic!("not created"),
        }
    };
    let gid = created["id"].as_str().unwrap().to_owned();
    let by_name = GroupKey::UniqueName("ROLE-X".into());
    let by_id = GroupKey::Id(gid.clone());
    {
        let _r = enter(View::Lagging);
        assert_eq!(d.get_group(&by_name, None).unwrap_err().status, 404);
        assert_eq!(d.get_group(&by_id, None).unwrap_err().status, 404);
        assert_eq!(
            d.find_groups(Some("displayName eq 'Role X'")).unwrap()["value"],
            json!([])
        );
        let (groups, _) = d
            .member_of_page(&user.to_string(), None, false, None, 10)
            .unwrap();
        assert!(groups.is_empty());
    }
    {
        let _r = enter(View::Fresh);
        assert_eq!(
            d.get_group(&by_name, Some("id")).unwrap()["id"],
            gid.as_str()
        );
        assert_eq!(d.member_count(&gid).unwrap(), 1);
    }
    {
        // Writes naming the new group, by id or by uniqueName, answer 404 on a replica that
        // has not seen it, and an upsert does not create a second group.
        let _w = enter(write(3_600_000, true));
        let other = Uuid::new_v4();
        assert_eq!(
            d.update_group(&gid, &bind(&[other])).unwrap_err().status,
            404
        );
        assert_eq!(
            d.upsert_group("role-x", &body, true)
                .err()
                .map(|e| e.status),
            Some(404)
        );
    }
    assert_eq!(d.unique_names.len(), 1);
    let _w = enter(write(3_600_000, false));
    assert!(matches!(
        d.upsert_group("role-x", &json!({"description": "d"}), true),
        Ok(Upsert::Updated(_))
    ));
}

#[test]
fn members_bound_by_patch_lag_in_members_count_and_member_of() {
    let (mut d, user, group) = directory();
    let gid = group.to_string();
    {
        let _w = enter(write(3_600_000, false));
        assert_eq!(d.update_group(&gid, &bind(&[user])).unwrap(), vec![user]);
    }
    {
        let _r = enter(View::Lagging);
        assert_eq!(member_ids(&d, group), Vec::<Uuid>::new());
        assert_eq!(d.member_count(&gid).unwrap(), 0);
        let (groups, _) = d
            .member_of_page(&user.to_string(), None, false, None, 10)
            .unwrap();
        assert!(groups.is_empty());
    }
    {
        let _r = enter(View::Fresh);
        assert_eq!(member_ids(&d, group), vec![user]);
        assert_eq!(d.member_count(&gid).unwrap(), 1);
    }
    // The primary has it: binding the user again is refused.
    let _w = enter(write(3_600_000, false));
    assert_eq!(
        d.update_group(&gid, &bind(&[user])).unwrap_err().status,
        400
    );
}

#[test]
fn user_filters_and_usage_location_patches_go_through_the_replica_view() {
    let (mut d, user, _) = directory();
    {
        let _w = enter(write(3_600_000, false));
        d.update_user(&user.to_string(), &json!({"usageLocation": "FR"}))
            .unwrap();
        d.create_user(
            &json!({"userPrincipalName": "new@example.org", "displayName": "N",
            "mailNickname": "new", "accountEnabled": true, "mail": "new@example.org",
            "passwordProfile": {"password": "x"}}),
        )
        .unwrap();
    }
    let location = |d: &Directory| {
        let page = d
            .list_users(
                Some("userPrincipalName eq 'a@example.org'"),
                Some("usageLocation"),
                None,
                10,
            )
            .unwrap();
        page.value[0]["usageLocation"].clone()
    };
    {
        let _r = enter(View::Lagging);
        assert_eq!(location(&d), json!("GB"));
        assert_eq!(upns(&d, "mail eq 'new@example.org'"), Vec::<String>::new());
        assert_eq!(d.list_users(None, None, None, 10).unwrap().count, 1);
    }
    {
        let _r = enter(View::Fresh);
        assert_eq!(location(&d), json!("FR"));
        assert_eq!(
            upns(&d, "mail eq 'new@example.org'"),
            vec!["new@example.org"]
        );
        assert_eq!(d.list_users(None, None, None, 10).unwrap().count, 2);
    }
    // A usage-location write naming the new user answers 404 on a replica without it.
    let _w = enter(write(3_600_000, true));
    let e = d
        .update_user("new@example.org", &json!({"usageLocation": "GB"}))
        .unwrap_err();
    assert_eq!((e.status, e.code), (404, "Request_ResourceNotFound"));
}

/// A `usageLocation` is an ISO 3166-1 alpha-2 code that ISO assigns (tenant.md, "usageLocation
/// is an ISO 3166 two-letter code. The simulator refuses others as Graph does"; user.md): the
/// user-assigned codes and the reserved ones are refused like a three-letter code.
#[test]
fn usage_locations_are_assigned_iso_3166_codes() {
    use super::users::ISO_3166_ALPHA2;
    assert_eq!(ISO_3166_ALPHA2.len(), 249);
    assert!(ISO_3166_ALPHA2.windows(2).all(|w| w[0] < w[1]), "sorted");
    for ok in ["GB", "gb", "US", "JP", "FR", "AX", "ZW"] {
        assert_eq!(
            validate_usage_location(&json!(ok)),
            Ok(Some(ok.to_ascii_uppercase())),
            "{ok}"
        );
    }
    for bad in [
        "ZZ", "zz", "AA", "QM", "QZ", "XA", "XZ", "UK", "EU", "AN", "GBR", "G",
    ] {
        let e = validate_usage_location(&json!(bad)).unwrap_err();
        assert_eq!((e.status, e.code), (400, "Request_BadRequest"), "{bad}");
        assert_eq!(
            e.message,
            "Invalid value specified for property 'usageLocation' of resource 'User'."
        );
    }
    let (mut d, user, _) = directory();
    let e = d
        .create_user(
            &json!({"userPrincipalName": "zz@example.org", "displayName": "Z",
            "mailNickname": "zz", "accountEnabled": true, "usageLocation": "ZZ",
            "passwordProfile": {"password": "x"}}),
        )
        .unwrap_err();
    assert_eq!(e.status, 400);
    assert!(d.resolve_user("zz@example.org").is_none());
    let e = d
        .update_user(&user.to_string(), &json!({"usageLocation": "ZZ"}))
        .unwrap_err();
    assert_eq!(e.status, 400);
    assert_eq!(
        d.user_json(&user.to_string()).unwrap()["usageLocation"],
        "GB"
    );
}

/// `assignLicense` needs both parameters; Graph names the missing ones (user-assignlicense.md:
/// removeLicenses "Required. Can be an empty collection.").
#[test]
fn assign_license_names_missing_parameters_as_graph_does() {
    let message = |missing: &str| {
        format!(
            "One or more parameters of the operation 'assignLicense' are missing from the \
             request payload. The missing parameters are: {missing}."
        )
    };
    let sku = sku_ids::ENTERPRISEPACK;
    for (body, missing) in [
        (json!({"addLicenses": [{"skuId": sku}]}), "removeLicenses"),
        (json!({"removeLicenses": [sku]}), "addLicenses"),
        (json!({}), "addLicenses, removeLicenses"),
    ] {
        let e = AssignLicense::parse(&body).unwrap_err();
        assert_eq!((e.status, e.code), (400, "Request_BadRequest"), "{body}");
        assert_eq!(e.message, message(missing));
    }
    let ok = AssignLicense::parse(&json!({"addLicenses": [{"skuId": sku}], "removeLicenses": []}))
        .unwrap();
    assert_eq!((ok.add.len(), ok.remove.len()), (1, 0));
    let ok = AssignLicense::parse(&json!({"addLicenses": [], "removeLicenses": [sku]})).unwrap();
    assert_eq!((ok.add.len(), ok.remove), (0, vec![sku]));
}

/// `startswith(displayName,'…')` on groups, as the group resource documents it for
/// displayName, beside `displayName eq`: case-insensitive, quotes doubled.
#[test]
fn groups_are_found_by_display_name_prefix() {
    let (mut d, _, _) = directory();
    for name in [
        "Ops team",
        "ops-2",
        "Opal",
        "O'Brien team",
        "Other",
        "Dev ops",
    ] {
        d.create_group(&json!({"displayName": name, "mailNickname": "g",
            "mailEnabled": false, "securityEnabled": true}))
            .unwrap();
    }
    let names = |filter: &str| {
        let mut v: Vec<String> = d.find_groups(Some(filter)).unwrap()["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["displayName"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names("startswith(displayName,'ops')"),
        ["Ops team", "ops-2"]
    );
    assert_eq!(
        names("startsWith(displayName, 'OP')"),
        ["Opal", "Ops team", "ops-2"]
    );
    assert_eq!(names("startswith(displayName,'O''B')"), ["O'Brien team"]);
    assert_eq!(
        names("startswith(displayName,'nothing')"),
        Vec::<String>::new()
    );
    assert_eq!(names("displayName eq 'opal'"), ["Opal"]);
    for bad in [
        "startswith(displayName,'O'B')",
        "startswith(mail,'o')",
        "endswith(displayName,'team')",
        "startswith(displayName,ops)",
    ] {
        let e = d.find_groups(Some(bad)).unwrap_err();
        assert_eq!(e.status, 400, "{bad}");
    }
    assert_eq!(
        super::groups::parse_display_name_prefix_filter(" StartsWith ( displayName , 'a''b' ) ")
            .as_deref(),
        Some("a'b")
    );
}

/// The id of the service plan `name` of the SKU `part` in the directory's catalogue.
fn plan_id(d: &Directory, part: &str, name: &str) -> Uuid {
    let skus = d.subscribed_skus();
    let sku = skus["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["skuPartNumber"] == part)
        .unwrap();
    let plan = sku["servicePlans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["servicePlanName"] == name)
        .unwrap();
    serde_json::from_value(plan["servicePlanId"].clone()).unwrap()
}

fn add(sku: Uuid, disabled: Vec<Uuid>) -> AssignLicense {
    AssignLicense {
        add: vec![(sku, disabled)],
        remove: Vec::new(),
    }
}

/// The documented conflict: SharePoint Online (Plan 1) of Office 365 E1 with SharePoint Online
/// (Plan 2) of E3 or E5, each enabled (azure-docs/entra-docs
/// `licensing-groups-resolve-problems.md`, "Conflicting service plans"); Exchange Online Plan 1
/// and Plan 2 "allow duplication" now, and E3 with E5 is no conflict.
#[test]
fn licences_conflict_only_on_the_documented_sharepoint_plans() {
    let (mut d, user, _) = directory();
    d.rules.graph_conflict_wording = true;
    let u = user.to_string();
    d.assign_license(&u, &add(sku_ids::STANDARDPACK, Vec::new()))
        .unwrap();
    for sku in [sku_ids::ENTERPRISEPACK, sku_ids::ENTERPRISEPREMIUM] {
        let e = d.assign_license(&u, &add(sku, Vec::new())).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message
                .ends_with("Conflicting Service Plans: SHAREPOINTSTANDARD, SHAREPOINTENTERPRISE"),
            "{}",
            e.message
        );
    }
    assert_eq!(licences(&d, user), Ok(1));
    // With SharePoint Online (Plan 2) disabled in E3 there is nothing to conflict; the
    // Exchange plans no longer conflict.
    let sp2 = plan_id(&d, "ENTERPRISEPACK", "SHAREPOINTENTERPRISE");
    let wac = plan_id(&d, "ENTERPRISEPACK", "SHAREPOINTWAC");
    d.assign_license(&u, &add(sku_ids::ENTERPRISEPACK, vec![sp2, wac]))
        .unwrap();
    assert_eq!(licences(&d, user), Ok(2));
    // Enabling it again while E1 holds Plan 1 is refused.
    assert!(
        d.assign_license(&u, &add(sku_ids::ENTERPRISEPACK, Vec::new()))
            .is_err()
    );
    // E3 and E5 together: no conflict (a swap from E1 in one call).
    let swap = AssignLicense {
        add: vec![
            (sku_ids::ENTERPRISEPACK, Vec::new()),
            (sku_ids::ENTERPRISEPREMIUM, Vec::new()),
        ],
        remove: vec![sku_ids::STANDARDPACK],
    };
    d.assign_license(&u, &swap).unwrap();
    assert_eq!(licences(&d, user), Ok(2));
    // Without Graph's wording, the simulator's older sentence names the same plans.
    d.rules.graph_conflict_wording = false;
    let e = d
        .assign_license(&u, &add(sku_ids::STANDARDPACK, Vec::new()))
        .unwrap_err();
    assert!(
        e.message
            .contains("SHAREPOINTENTERPRISE and SHAREPOINTSTANDARD"),
        "{}",
        e.message
    );
}

/// Group-based licensing records the same conflict as `MutuallyExclusiveViolation`, and only
/// it: E5 from a group beside a direct E3 is active.
#[test]
fn inherited_licences_conflict_on_the_documented_plans_only() {
    let (mut d, user, _) = directory();
    let u = user.to_string();
    d.assign_license(&u, &add(sku_ids::ENTERPRISEPACK, Vec::new()))
        .unwrap();
    d.create_licensed_group(
        "E5",
        vec![(sku_ids::ENTERPRISEPREMIUM, Vec::new())],
        std::slice::from_ref(&u),
    )
    .unwrap();
    d.create_licensed_group(
        "E1",
        vec![(sku_ids::STANDARDPACK, Vec::new())],
        std::slice::from_ref(&u),
    )
    .unwrap();
    let states = d.user_json(&u).unwrap()["licenseAssignmentStates"].clone();
    let error_of = |sku: Uuid| {
        states
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["skuId"] == sku.to_string() && !s["assignedByGroup"].is_null())
            .map(|s| s["error"].clone())
            .unwrap()
    };
    assert_eq!(error_of(sku_ids::ENTERPRISEPREMIUM), "None");
    assert_eq!(
        error_of(sku_ids::STANDARDPACK),
        "MutuallyExclusiveViolation"
    );
    assert_eq!(licences(&d, user), Ok(2));
}
