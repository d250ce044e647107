//! The token service: `POST /{tenant}/oauth2/v2.0/token` and the OpenID Connect discovery
//! document and keys.
use super::*;

/// `POST /{tenant}/oauth2/v2.0/token` (client credentials only: a client secret, or a client
/// assertion from a registered certificate or federated issuer; see [`super::identity`]), with
/// Entra ID's error shape (MicrosoftDocs/entra-docs `docs/identity-platform/reference-error-codes.md`,
/// "Handling error codes in your application": `error`, `error_description` starting with the
/// AADSTS code, `error_codes`, `timestamp`, `trace_id`, `correlation_id`, `error_uri`).
pub(super) async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let fail =
        |status: u16, error: &str, code: u32, description: &str| {
            shared.stats.lock().request("token", status);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            (
            status,
            Json(json!({"error": error, "error_description": format!("AADSTS{code}: {description}"),
            "error_codes": [code], "timestamp": chrono::Utc::now().to_rfc3339(),
            "trace_id": Uuid::new_v4(), "correlation_id": Uuid::new_v4(),
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}")})),
        )
            .into_response()
        };
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials" {
        return fail(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if !field("scope").ends_with("/.default") {
        return fail(
            400,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
        );
    }
    if field("client_id") != shared.client_id {
        return fail(
            400,
            "unauthorized_client",
            700016,
            "Application was not found in the directory.",
        );
    }
    if shared.access.read().credentials_revoked {
        return fail(
            400,
            "unauthorized_client",
            7000112,
            "Application is disabled.",
        );
    }
    if let Some(assertion) = form.get("client_assertion") {
        let token_url = format!("{}/{tenant}/oauth2/v2.0/token", shared.base_url(&headers));
        let verified = shared.credentials.lock().verify(
            field("client_assertion_type"),
            assertion,
            &shared.client_id,
            &token_url,
            chrono::Utc::now().timestamp(),
        );
        if let Err(r) = verified {
            return fail(r.status, r.error, r.code, &r.message);
        }
    } else if let Some(secret) = form.get("client_secret") {
        if secret.as_str() != shared.client_secret.expose_secret() {
            return fail(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided.",
            );
        }
    } else {
        return fail(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    }
    let lifetime = shared.behaviour.read().token_lifetime_seconds;
    let token = {
        let mut rng = rand::rng();
        let bytes: [u8; 24] = rng.random();
        format!(
            "sim.{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    };
    {
        let mut tokens = shared.tokens.lock();
        let now = Instant::now();
        if tokens.len() > 10_000 {
            tokens.retain(|_, exp| *exp > now);
        }
        tokens.insert(token.clone(), now + Duration::from_secs(lifetime));
    }
    shared.stats.lock().request("token", 200);
    Json(json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}))
        .into_response()
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`: the OpenID Connect discovery document
/// of the simulator's token service, shaped like Entra ID's (MicrosoftDocs/entra-docs
/// `docs/identity-platform/v2-protocols-oidc.md`, "Find your app's OpenID configuration document
/// URI" and "Sample response"), its endpoints pointing at the simulator. For the multi-tenant
/// names (`common`, `organizations`, `consumers`) the issuer keeps the `{tenantid}` template,
/// as Entra ID's does.
pub(super) async fn openid_configuration(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    shared.stats.lock().request("openid_configuration", 200);
    let base = shared.base_url(&headers);
    let issuer_tenant = match tenant.to_ascii_lowercase().as_str() {
        "common" | "organizations" | "consumers" => "{tenantid}".to_owned(),
        _ => tenant.clone(),
    };
    let authority = format!("{base}/{tenant}");
    Json(json!({
        "token_endpoint": format!("{authority}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{authority}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/{issuer_tenant}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": format!("{authority}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{authority}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{authority}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
            "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
            "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{authority}/kerberos"),
        "tenant_region_scope": null,
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }))
    .into_response()
}

/// `GET /{tenant}/discovery/v2.0/keys`, the `jwks_uri` of the discovery document: the
/// simulator's access tokens are opaque, not signed JWTs, so it publishes no keys.
pub(super) async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.stats.lock().request("jwks", 200);
    Json(json!({ "keys": [] })).into_response()
}
