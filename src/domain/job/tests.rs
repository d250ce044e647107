use super::*;
use serde_json::json;

fn envelope(job_type: &str, payload: Value) -> Value {
    json!({
        "message_id": "7f0e9a1c-2b7d-4b8e-9d61-3f7a0c2e5b11",
        "type": job_type,
        "schema_version": 1,
        "sent_at": "2026-11-22T10:15:00Z",
        "ticket": { "reference": "INC0012345", "originator": "jane.smith@nhs.net" },
        "actor": { "email": "jane.smith@nhs.net", "ods_code": "RX1" },
        "dry_run": false,
        "payload": payload
    })
}

fn decode(value: &Value) -> Result<JobMessage<'static>, Rejection> {
    let body: &'static str = Box::leak(value.to_string().into_boxed_str());
    decode_job(body.as_bytes(), None)
}

#[test]
fn internal_job_types_are_stored_types_but_never_messages() {
    for t in JobType::INTERNAL {
        assert_eq!(JobType::parse(t.as_str()), None);
        assert_eq!(JobType::from_stored(t.as_str()), Some(*t));
        assert!(!JobType::ALL.contains(t));
        let r = decode(&envelope(t.as_str(), json!({ "policy_id": "p" }))).unwrap_err();
        assert_eq!(r.code, FailureCode::UnknownType, "{t}");
    }
}

#[test]
fn every_contract_example_decodes() {
    let examples = [
        (
            "policy.changed",
            json!({ "policy": { "id": "rx1-standard", "name": "RX1 Standard Users",
                "ods_code": "RX1", "version": 8, "licence": "ENTERPRISEPACK",
                "toggles": { "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true, "SWAY": false } },
              "members": ["a.one@nhs.net", "b.two@nhs.net"], "total_members": 2 }),
        ),
        (
            "policy.members_added",
            json!({ "policy_id": "rx1-standard", "members": ["c.three@nhs.net"], "total_members": 1 }),
        ),
        (
            "admin_role.assign",
            json!({ "user": "bob.jones@nhs.net", "ods_code": "RX1", "role": "phone_system_primary_admin" }),
        ),
        (
            "admin_role.remove",
            json!({ "user": "bob.jones@nhs.net", "ods_code": "RX1", "role": "phone_system_local_admin" }),
        ),
        (
            "admin_role.change",
            json!({ "user": "bob.jones@nhs.net", "ods_code": "RX1",
                    "from": "phone_system_local_admin", "to": "phone_system_primary_admin" }),
        ),
        (
            "ods_mapping.changed",
            json!({ "ods_code": "RX1", "managed_ods_codes": ["RX2", "RX3"], "onboarded": ["RX1", "RX2"] }),
        ),
        (
            "user.leaver",
            json!({ "user": "bob.jones@nhs.net", "marked_for_deletion_at": "2026-11-21T17:00:00Z" }),
        ),
        (
            "portal_access.grant",
            json!({ "batch_label": "A-B", "contacts": [ { "contact_id": "c-1001", "name": "Alice Clerk",
                "type": "individual", "email": "clerk@anyparish.gov.uk", "council": "Anyparish Parish Council",
                "member": true, "clerk_until": null, "has_portal_access": false } ] }),
        ),
        (
            "portal_access.activated",
            json!({ "contact_ids": ["c-1001"] }),
        ),
        ("portal_access.remind", json!({ "contact_ids": [] })),
    ];
    assert_eq!(examples.len(), JobType::ALL.len());
    for (job_type, payload) in examples {
        let job = decode(&envelope(job_type, payload))
            .unwrap_or_else(|r| panic!("{job_type}: {} {}", r.code, r.detail));
        assert_eq!(job.job_type.as_str(), job_type);
        assert_eq!(job.ticket.as_ref().unwrap().reference, "INC0012345");
    }
}

#[test]
fn not_json_is_invalid_and_anonymous() {
    let r = decode_job(b"not json {", None).unwrap_err();
    assert_eq!(r.code, FailureCode::InvalidMessage);
    assert!(r.message_id.is_none());
}

#[test]
fn unknown_type_keeps_the_job_identity() {
    let r = decode(&envelope("policy.exploded", json!({}))).unwrap_err();
    assert_eq!(r.code, FailureCode::UnknownType);
    assert_eq!(
        r.message_id.unwrap().as_str(),
        "7f0e9a1c-2b7d-4b8e-9d61-3f7a0c2e5b11"
    );
    assert_eq!(r.ticket.unwrap().reference, "INC0012345");
}

#[test]
fn missing_fields_are_named() {
    let mut value = envelope("policy.members_added", json!({ "policy_id": "p" }));
    let r = decode(&value).unwrap_err();
    assert_eq!(r.code, FailureCode::MissingField);
    assert!(r.detail.contains("members"), "{}", r.detail);

    value.as_object_mut().unwrap().remove("sent_at");
    let r = decode(&value).unwrap_err();
    assert_eq!(r.code, FailureCode::MissingField);
    assert!(r.detail.contains("sent_at"), "{}", r.detail);
}

#[test]
fn unsupported_schema_version() {
    let mut value = envelope("user.leaver", json!({}));
    value["schema_version"] = json!(2);
    assert_eq!(
        decode(&value).unwrap_err().code,
        FailureCode::UnsupportedSchemaVersion
    );
}

#[test]
fn amqp_message_id_must_match() {
    let value = envelope("portal_access.activated", json!({ "contact_ids": ["c-1"] }));
    let body = value.to_string();
    assert!(
        decode_job(
            body.as_bytes(),
            Some("7f0e9a1c-2b7d-4b8e-9d61-3f7a0c2e5b11")
        )
        .is_ok()
    );
    let r = decode_job(body.as_bytes(), Some("other")).unwrap_err();
    assert_eq!(r.code, FailureCode::InvalidMessage);
}

#[test]
fn unstorable_values_are_rejected_naming_the_field_and_keeping_the_job_identity() {
    let mut value = envelope(
        "policy.members_added",
        json!({ "policy_id": "p", "members": ["a@nhs.net", "b\u{0}@nhs.net"], "total_members": 2 }),
    );
    let r = decode(&value).unwrap_err();
    assert_eq!(r.code, FailureCode::InvalidMessage);
    assert!(
        r.detail.starts_with("payload.members[1] contains a NUL"),
        "{}",
        r.detail
    );
    assert!(r.message_id.is_some());
    assert_eq!(r.ticket.unwrap().reference, "INC0012345");

    // In the ticket: the rejection still carries it, with U+FFFD in the NUL's place.
    value["payload"]["members"][1] = json!("b@nhs.net");
    value["ticket"]["reference"] = json!("INC\u{0}1");
    let r = decode(&value).unwrap_err();
    assert!(r.detail.starts_with("ticket.reference"), "{}", r.detail);
    assert_eq!(r.ticket.unwrap().reference, "INC\u{fffd}1");

    // In the message_id: the job cannot be named.
    value["ticket"]["reference"] = json!("INC1");
    value["message_id"] = json!("m\u{0}");
    let r = decode(&value).unwrap_err();
    assert!(r.detail.starts_with("message_id"), "{}", r.detail);
    assert!(r.message_id.is_none());
}

#[test]
fn a_lone_surrogate_and_a_deep_field_are_rejected() {
    let body = envelope(
        "user.leaver",
        json!({ "user": "USER", "marked_for_deletion_at": "2026-11-21T17:00:00Z" }),
    )
    .to_string()
    .replace("USER", "\\ud800@nhs.net");
    let r = decode_job(body.as_bytes(), None).unwrap_err();
    assert!(
        r.detail.starts_with("payload.user contains a lone"),
        "{}",
        r.detail
    );
    assert!(r.message_id.is_some());

    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let body = envelope("user.leaver", json!({ "user": "u@nhs.net", "marked_for_deletion_at": "2026-11-21T17:00:00Z", "extra": "DEEP" }))
        .to_string()
        .replace("\"DEEP\"", &deep);
    let r = decode_job(body.as_bytes(), None).unwrap_err();
    assert_eq!(r.code, FailureCode::InvalidMessage);
    assert!(r.detail.starts_with("payload.extra[0]"), "{}", r.detail);
    assert!(r.detail.contains("nested deeper than 32"), "{}", r.detail);
    assert!(r.message_id.is_some());
}

#[test]
fn oversized_fields_are_rejected_naming_the_field_and_the_limit() {
    let policy_id = "p".repeat(8_192);
    let r = decode(&envelope(
        "policy.members_added",
        json!({ "policy_id": policy_id, "members": ["a@nhs.net"], "total_members": 1 }),
    ))
    .unwrap_err();
    assert_eq!(r.code, FailureCode::InvalidMessage);
    assert!(
        r.detail.starts_with("payload.policy_id is 8192 bytes"),
        "{}",
        r.detail
    );
    assert!(r.detail.contains("at most 255"), "{}", r.detail);

    let long = format!("{}@nhs.net", "a".repeat(2_000));
    let r = decode(&envelope(
        "policy.members_added",
        json!({ "policy_id": "p", "members": ["a@nhs.net", long], "total_members": 2 }),
    ))
    .unwrap_err();
    assert!(
        r.detail.starts_with("payload.members[1] is 2008 bytes"),
        "{}",
        r.detail
    );

    // Longer than an address may be, but within the limit: the planner fails that item.
    let long = format!("{}@nhs.net", "a".repeat(300));
    assert!(
        decode(&envelope(
            "policy.members_added",
            json!({ "policy_id": "p", "members": [long], "total_members": 1 }),
        ))
        .is_ok()
    );

    let mut value = envelope("portal_access.activated", json!({ "contact_ids": ["c-1"] }));
    value["ticket"]["reference"] = json!("R".repeat(256));
    let r = decode(&value).unwrap_err();
    assert!(
        r.detail.starts_with("ticket.reference is 256 bytes"),
        "{}",
        r.detail
    );
}

#[test]
fn the_ticket_is_kept_as_sent() {
    let body = envelope("portal_access.activated", json!({ "contact_ids": ["c-1"] }))
        .to_string()
        .replace(
            r#"{"originator":"jane.smith@nhs.net","reference":"INC0012345"}"#,
            r#"{ "reference": "INC1",  "originator":"a@b", "priority":"P2" }"#,
        );
    let job = decode_job(body.as_bytes(), None).unwrap();
    let ticket = job.ticket.unwrap();
    assert_eq!(ticket.reference, "INC1");
    assert_eq!(
        ticket.raw_json(),
        r#"{ "reference": "INC1",  "originator":"a@b", "priority":"P2" }"#
    );
    let header = crate::domain::EventHeader::new(
        "job.accepted",
        uuid::Uuid::nil(),
        "m".into(),
        Some(ticket),
    );
    let text = serde_json::to_string(&header).unwrap();
    assert!(
        text.contains(r#""ticket":{ "reference": "INC1",  "originator":"a@b", "priority":"P2" }"#),
        "{text}"
    );
}

#[test]
fn times_and_dates_are_read_as_rfc_3339_writes_them() {
    let mut value = envelope(
        "user.leaver",
        json!({ "user": "u@nhs.net", "marked_for_deletion_at": "2026-11-21T17:00:00Z" }),
    );
    assert!(decode(&value).is_ok());
    value["sent_at"] = json!("2026-11-22t10:15:00.5+01:00");
    assert!(decode(&value).is_ok());
    value["sent_at"] = json!("2026-11-22 10:15:00Z");
    assert_eq!(
        decode(&value).unwrap_err().code,
        FailureCode::InvalidMessage
    );
    value["sent_at"] = json!("2026-11-22T10:15:00Z");
    value["payload"]["marked_for_deletion_at"] = json!("2026-1-21T17:00:00Z");
    assert_eq!(
        decode(&value).unwrap_err().code,
        FailureCode::InvalidMessage
    );

    let grant = |clerk_until: Value| {
        envelope(
            "portal_access.grant",
            json!({ "batch_label": "A", "contacts": [ { "contact_id": "c-1", "name": "A",
                "type": "individual", "council": "A PC", "member": true,
                "clerk_until": clerk_until } ] }),
        )
    };
    assert!(decode(&grant(json!("2027-03-31"))).is_ok());
    assert!(decode(&grant(json!(null))).is_ok());
    assert!(decode(&grant(json!("2027-3-31"))).is_err());
    assert!(decode(&grant(json!("2027-03-31T00:00:00Z"))).is_err());
}

#[test]
fn wrong_shapes_are_invalid() {
    let r = decode(&envelope(
        "admin_role.assign",
        json!({ "user": "u@nhs.net", "ods_code": "RX1", "role": "global_admin" }),
    ))
    .unwrap_err();
    assert_eq!(r.code, FailureCode::InvalidMessage);
}
