//! The simulator's own `/_sim/*` admin routes (tests, benchmarks, demos): stats, behaviour,
//! inspection, scripted faults, access, SKUs and licensed groups.
use super::*;

pub(super) async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.stats.lock().snapshot()).into_response()
}

pub(super) async fn reset_stats(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.stats.lock().reset();
    StatusCode::NO_CONTENT
}

pub(super) async fn get_config(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.behaviour.read().clone()).into_response()
}

pub(super) async fn set_config(
    State(shared): State<Arc<Shared>>,
    Json(patch): Json<Value>,
) -> Response {
    match shared.set_behaviour(&patch) {
        Ok(b) => Json(b).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

pub(super) async fn sim_user(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Response {
    match shared.directory.read().user_json(&key) {
        Some(u) => Json(u).into_response(),
        None => SimResponse::error(&GraphError::not_found(&key)).into_http(&RequestIds::new(None)),
    }
}

/// `POST /_sim/users/{id or upn}/assignLicense`: a licence change made behind the service's
/// back (an administrator in the Microsoft 365 admin center), with Graph's body and rules
/// (user: assignLicense, https://learn.microsoft.com/graph/api/user-assignlicense) but not
/// counted in the Graph call statistics: drift for the service's sweeps to find.
pub(super) async fn sim_assign_license(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let result = AssignLicense::parse(&body)
        .and_then(|req| shared.directory.write().assign_license(&key, &req));
    admin_answer(StatusCode::OK, result)
}

/// `POST /_sim/fail-next {"count": N, "status": 503}`: the next N Graph calls fail with that
/// status; status 0 drops the next N connections instead.
pub(super) async fn fail_next(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<Value>,
) -> StatusCode {
    let count = body.get("count").and_then(Value::as_u64).unwrap_or(1) as u32;
    let status = body.get("status").and_then(Value::as_u64).unwrap_or(503) as u16;
    *shared.fail_next.lock() = (count, status);
    StatusCode::NO_CONTENT
}

pub(super) async fn get_access(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.access()).into_response()
}

/// `POST /_sim/access {"credentials_revoked": bool, "permissions_revoked": bool}` (keys left
/// out keep their value): take the application's access away, or give it back.
pub(super) async fn set_access(
    State(shared): State<Arc<Shared>>,
    Json(patch): Json<Value>,
) -> Response {
    let mut current = serde_json::to_value(shared.access()).unwrap_or_default();
    if let (Some(c), Some(p)) = (current.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            c.insert(k.clone(), v.clone());
        }
    }
    match serde_json::from_value(current) {
        Ok(knobs) => {
            shared.set_access(knobs);
            Json(shared.access()).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

/// An admin route's answer: the value, or the error in Graph's shape.
pub(super) fn admin_answer(status: StatusCode, result: Result<Value, GraphError>) -> Response {
    match result {
        Ok(v) => (status, Json(v)).into_response(),
        Err(e) => SimResponse::error(&e).into_http(&RequestIds::new(None)),
    }
}

/// `[{"skuId","disabledPlans"}]` of an admin body.
pub(super) fn licences_of(body: &Value) -> Result<Vec<(Uuid, Vec<Uuid>)>, GraphError> {
    let parsed = AssignLicense::parse(&json!({
        "addLicenses": body.get("assignedLicenses").cloned().unwrap_or(json!([])),
        "removeLicenses": [],
    }))?;
    Ok(parsed.add)
}

pub(super) fn strings_of(body: &Value, key: &str) -> Vec<String> {
    body.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `PATCH /_sim/skus/{skuPartNumber}`: `capabilityStatus` and seats.
pub(super) async fn sim_update_sku(
    State(shared): State<Arc<Shared>>,
    Path(part): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    admin_answer(StatusCode::OK, shared.update_sku(&part, &body))
}

/// `POST /_sim/skus/{skuPartNumber}/plans`: the vendor adds a service plan to the SKU.
pub(super) async fn sim_add_plan(
    State(shared): State<Arc<Shared>>,
    Path(part): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let name = body.get("servicePlanName").and_then(Value::as_str);
    let id = body
        .get("servicePlanId")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    let result = match name {
        Some(name) => shared.add_service_plan(&part, id, name),
        None => Err(GraphError::bad_request("servicePlanName is required")),
    };
    admin_answer(StatusCode::CREATED, result)
}

/// `POST /_sim/groups`: a security group holding licences, with members.
pub(super) async fn sim_create_group(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<Value>,
) -> Response {
    let result = (|| {
        let name = body
            .get("displayName")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::bad_request("displayName is required"))?;
        let licences = licences_of(&body)?;
        let id = shared.create_licensed_group(name, licences, &strings_of(&body, "members"))?;
        Ok(json!({ "id": id }))
    })();
    admin_answer(StatusCode::CREATED, result)
}

pub(super) fn group_id(id: &str) -> Result<Uuid, GraphError> {
    Uuid::parse_str(id).map_err(|_| GraphError::not_found(id))
}

/// `PUT /_sim/groups/{id}/assignedLicenses`: replaces the licences a group holds.
pub(super) async fn sim_group_licences(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let result = group_id(&id)
        .and_then(|gid| Ok((gid, licences_of(&body)?)))
        .and_then(|(gid, licences)| shared.set_group_licences(gid, licences))
        .map(|()| json!({}));
    admin_answer(StatusCode::OK, result)
}

/// `POST /_sim/groups/{id}/members`: adds members, reprocessed for the group's licences.
pub(super) async fn sim_group_members(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let result = group_id(&id)
        .and_then(|gid| shared.add_group_members(gid, &strings_of(&body, "members")))
        .map(|()| json!({}));
    admin_answer(StatusCode::OK, result)
}

/// `DELETE /_sim/groups/{id}/members/{id or upn}`: a membership ended behind the service's
/// back, with Graph's rules (group: remove member,
/// https://learn.microsoft.com/graph/api/group-delete-members) but not counted in the Graph
/// call statistics.
pub(super) async fn sim_remove_group_member(
    State(shared): State<Arc<Shared>>,
    Path((id, user)): Path<(String, String)>,
) -> Response {
    let result = shared.remove_group_member(&id, &user).map(|()| json!({}));
    admin_answer(StatusCode::OK, result)
}

/// `POST /_sim/revoke-tokens`: every issued token becomes invalid (clients must fetch new ones).
pub(super) async fn revoke_tokens(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.revoke_tokens();
    StatusCode::NO_CONTENT
}
