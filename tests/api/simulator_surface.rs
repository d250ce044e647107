//! Tenant simulator surface beyond the basics: users found by address, Entra ID's validation
//! rules, groups read, patched and upserted, `members/$count`, `$batch` sequencing and 405s, and
//! the token service's discovery document and 401 challenge. Raw HTTP calls, as a Graph client
//! would make them.
use policy_reconciler::simulator::SimulatorHandle;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::kit::simulator::{seed, start, token_response};

struct Raw {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// An answer: status, headers and body (JSON, or the text as a JSON string when it is not JSON).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Raw {
    async fn new(sim: &SimulatorHandle) -> Self {
        let http = reqwest::Client::new();
        let token = token_response(&http, &sim.base_url(), "any-tenant").await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        Self {
            http,
            base: format!("{}/v1.0", sim.base_url()),
            token,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Answer {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = self.http.request(method, url).bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, &[], None).await
    }

    async fn eventual(&self, path: &str) -> Answer {
        self.send(Method::GET, path, &[("ConsistencyLevel", "eventual")], None)
            .await
    }
}

/// `$filter` as a client puts it in a URL.
fn filter(f: &str) -> String {
    let mut out = String::new();
    for b in f.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    format!("$filter={out}")
}

fn upns(answer: &Answer) -> Vec<String> {
    let mut v: Vec<String> = answer.body["value"]
        .as_array()
        .unwrap_or_else(|| panic!("no value: {}", answer.body))
        .iter()
        .map(|u| u["userPrincipalName"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

fn address_seed() -> Value {
    json!({"users": [
        {"userPrincipalName": "jsmith@contoso.org", "usageLocation": "GB",
         "mail": "Jane.Smith@contoso.org",
         "proxyAddresses": ["SMTP:Jane.Smith@contoso.org", "smtp:jane@contoso.org"]},
        {"userPrincipalName": "obrien@contoso.org", "mail": "o'brien@contoso.org",
         "proxyAddresses": ["SMTP:o'brien@contoso.org"]},
        {"userPrincipalName": "bob@contoso.org", "otherMails": ["bob@home.example"]},
        {"userPrincipalName": "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com",
         "mail": "alice@fabrikam.com"},
    ]})
}

#[tokio::test]
async fn users_are_found_by_mail_proxy_addresses_and_other_mails() {
    let sim = start().await;
    seed(&sim, address_seed());
    let raw = Raw::new(&sim).await;

    // `mail eq` works without advanced query headers; `mail` is a default property,
    // `proxyAddresses` is not.
    let a = raw
        .get(&format!(
            "/users?{}",
            filter("mail eq 'jane.smith@CONTOSO.org'")
        ))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(upns(&a), ["jsmith@contoso.org"]);
    assert_eq!(a.body["value"][0]["mail"], "Jane.Smith@contoso.org");
    assert!(a.body["value"][0].get("proxyAddresses").is_none());

    // A secondary address: `smtp:` matches the `smtp:` entry, and `SMTP:` the primary one,
    // with or without `ConsistencyLevel: eventual`.
    let q = format!(
        "/users?{}&$select=id,userPrincipalName,proxyAddresses",
        filter("proxyAddresses/any(p:p eq 'smtp:JANE@contoso.org')")
    );
    for a in [raw.get(&q).await, raw.eventual(&q).await] {
        assert_eq!(upns(&a), ["jsmith@contoso.org"]);
        assert_eq!(
            a.body["value"][0]["proxyAddresses"],
            json!(["SMTP:Jane.Smith@contoso.org", "smtp:jane@contoso.org"])
        );
    }
    let a = raw
        .get(&format!(
            "/users?{}",
            filter("proxyAddresses/any(x:x eq 'smtp:jane.smith@contoso.org')")
        ))
        .await;
    assert_eq!(upns(&a), ["jsmith@contoso.org"]);

    // Quotes are doubled; `or` combines; `otherMails` too.
    let a = raw
        .get(&format!(
            "/users?{}",
            filter("mail eq 'o''brien@contoso.org'")
        ))
        .await;
    assert_eq!(upns(&a), ["obrien@contoso.org"]);
    let a = raw
        .get(&format!(
            "/users?{}",
            filter("otherMails/any(m:m eq 'bob@home.example') or userPrincipalName eq 'JSMITH@contoso.org'")
        ))
        .await;
    assert_eq!(upns(&a), ["bob@contoso.org", "jsmith@contoso.org"]);
    let a = raw
        .get(&format!(
            "/users?{}",
            filter("mail eq 'nobody@contoso.org'")
        ))
        .await;
    assert_eq!(a.status, 200);
    assert!(upns(&a).is_empty());

    // `$count=true`: `@odata.count` with `ConsistencyLevel: eventual`, silently ignored without.
    let q = format!(
        "/users?{}&$count=true",
        filter("mail eq 'alice@fabrikam.com'")
    );
    let a = raw.eventual(&q).await;
    assert_eq!(a.body["@odata.count"], 1);
    assert_eq!(
        upns(&a),
        ["alice_fabrikam.com#EXT#@contoso.onmicrosoft.com"]
    );
    let a = raw.get(&q).await;
    assert_eq!(a.status, 200);
    assert!(a.body.get("@odata.count").is_none());
    assert_eq!(upns(&a).len(), 1);

    // A filter Graph does not serve by default: its error code.
    let a = raw
        .get(&format!(
            "/users?{}",
            filter("endsWith(mail,'@contoso.org')")
        ))
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"]["code"], "Request_UnsupportedQuery");
    let a = raw
        .get(&format!("/users?{}", filter("displayName eq 'Jane'")))
        .await;
    assert_eq!(a.body["error"]["code"], "Request_UnsupportedQuery");

    // Without a filter: every user, paged by `$top` with a nextLink.
    let mut seen = Vec::new();
    let mut next = Some(format!("{}/users?$top=3&$count=true", raw.base));
    while let Some(url) = next {
        let a = raw.eventual(&url).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["@odata.count"], 4);
        seen.extend(upns(&a));
        next = a.body["@odata.nextLink"].as_str().map(str::to_owned);
    }
    seen.sort();
    assert_eq!(seen.len(), 4);
    seen.dedup();
    assert_eq!(seen.len(), 4);

    let stats = sim.state().stats();
    assert_eq!(stats.count("list_users", 200), 11);
    assert_eq!(stats.count("list_users", 400), 2);
}

#[tokio::test]
async fn guest_upns_with_ext_are_found_by_path() {
    let sim = start().await;
    seed(&sim, address_seed());
    let raw = Raw::new(&sim).await;
    let a = raw
        .get("/users/alice_fabrikam.com%23EXT%23@contoso.onmicrosoft.com?$select=id,userPrincipalName,mail")
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body["userPrincipalName"],
        "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com"
    );
    assert_eq!(a.body["mail"], "alice@fabrikam.com");
}

fn new_user(upn: &str, usage_location: Value) -> Value {
    json!({"accountEnabled": true, "displayName": "New", "mailNickname": "new",
        "userPrincipalName": upn, "usageLocation": usage_location,
        "passwordProfile": {"forceChangePasswordNextSignIn": true, "password": "x"}})
}

#[tokio::test]
async fn user_creation_and_update_apply_entra_rules() {
    let sim = start().await;
    seed(&sim, address_seed());
    let raw = Raw::new(&sim).await;

    for bad in [
        "jane doe@contoso.org",
        "jane.@contoso.org",
        "jäne@contoso.org",
        &format!("{}@contoso.org", "a".repeat(65)),
    ] {
        let a = raw
            .send(
                Method::POST,
                "/users",
                &[],
                Some(new_user(bad, json!("GB"))),
            )
            .await;
        assert_eq!(a.status, 400, "{bad}");
        assert_eq!(a.body["error"]["code"], "Request_BadRequest");
        assert_eq!(
            a.body["error"]["message"],
            "Property userPrincipalName is invalid."
        );
        assert!(sim.state().user(bad).is_none());
    }
    let a = raw
        .send(
            Method::POST,
            "/users",
            &[],
            Some(new_user("new@contoso.org", json!("GBR"))),
        )
        .await;
    assert_eq!(a.status, 400);
    assert!(sim.state().user("new@contoso.org").is_none());

    // `mail` can be set on creation and becomes the primary proxy address; a mail that is
    // another user's proxy address is refused.
    let mut body = new_user("o'neil@contoso.org", json!("gb"));
    body["mail"] = json!("jane@contoso.org");
    let a = raw.send(Method::POST, "/users", &[], Some(body)).await;
    assert_eq!(a.status, 400);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("proxyAddresses")
    );
    let mut body = new_user("o'neil@contoso.org", json!("gb"));
    body["mail"] = json!("sean.oneil@contoso.org");
    let a = raw.send(Method::POST, "/users", &[], Some(body)).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    let user = sim.state().user(&id).unwrap();
    assert_eq!(user["usageLocation"], "GB");
    assert_eq!(
        user["proxyAddresses"],
        json!(["SMTP:sean.oneil@contoso.org"])
    );
    let a = raw
        .get(&format!(
            "/users?{}",
            filter("proxyAddresses/any(p:p eq 'smtp:sean.oneil@contoso.org')")
        ))
        .await;
    assert_eq!(upns(&a), ["o'neil@contoso.org"]);

    // PATCH usageLocation: 204, applied; a non-ISO value is refused and changes nothing.
    let a = raw
        .send(
            Method::PATCH,
            &format!("/users/{id}"),
            &[],
            Some(json!({"usageLocation": "FR"})),
        )
        .await;
    assert_eq!(a.status, 204);
    assert_eq!(sim.state().user(&id).unwrap()["usageLocation"], "FR");
    let a = raw
        .send(
            Method::PATCH,
            "/users/o'neil@contoso.org",
            &[],
            Some(json!({"usageLocation": "France"})),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(sim.state().user(&id).unwrap()["usageLocation"], "FR");

    let stats = sim.state().stats();
    assert_eq!(stats.count("update_user", 204), 1);
    assert_eq!(stats.count("update_user", 400), 1);
    let updates: Vec<_> = stats
        .recent_writes
        .iter()
        .filter(|w| w.route == "update_user")
        .collect();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0].targets, vec![id]);
    assert!(updates[0].applied && !updates[1].applied);
}

async fn security_group(raw: &Raw, name: &str) -> String {
    let a = raw
        .send(
            Method::POST,
            "/groups",
            &[],
            Some(json!({"displayName": name, "mailNickname": name,
                "mailEnabled": false, "securityEnabled": true})),
        )
        .await;
    assert_eq!(a.status, 201);
    a.body["id"].as_str().unwrap().to_owned()
}

fn bind(ids: &[Uuid]) -> Value {
    let urls: Vec<String> = ids
        .iter()
        .map(|id| format!("https://graph.microsoft.com/v1.0/directoryObjects/{id}"))
        .collect();
    json!({ "members@odata.bind": urls })
}

#[tokio::test]
async fn groups_are_read_and_patched_with_member_binds_all_or_nothing() {
    let sim = start().await;
    let users = crate::kit::simulator::seed_users(&sim, "m", 23);
    let raw = Raw::new(&sim).await;
    let g = security_group(&raw, "Licensed E3").await;

    let a = raw
        .get(&format!("/groups/{g}?$select=id,displayName"))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, json!({"id": g, "displayName": "Licensed E3"}));
    assert_eq!(
        raw.get(&format!("/groups/{}", Uuid::new_v4())).await.status,
        404
    );

    let count = format!("/groups/{g}/members/$count");
    // Without `ConsistencyLevel: eventual` Graph refuses the `$count` segment.
    let a = raw.get(&count).await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.body["error"]["message"],
        "$count is not currently supported."
    );

    let group_path = format!("/groups/{g}");
    let patch = |body: Value| raw.send(Method::PATCH, &group_path, &[], Some(body));
    assert_eq!(patch(bind(&users[0..3])).await.status, 204);
    let a = raw.eventual(&count).await;
    assert_eq!(a.status, 200);
    assert!(
        a.headers[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(a.body, json!(3));

    // One unknown user, one existing member, or more than 20: nothing is added.
    let a = patch(bind(&[users[3], Uuid::new_v4()])).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.body["error"]["code"], "Request_ResourceNotFound");
    let a = patch(bind(&[users[3], users[0]])).await;
    assert_eq!(a.status, 400);
    assert_eq!(
        patch(bind(&users[3..24.min(users.len())])).await.status,
        204
    );
    assert_eq!(raw.eventual(&count).await.body, json!(23));
    let a = raw
        .send(
            Method::PATCH,
            &format!("/groups/{}", security_group(&raw, "Other").await),
            &[],
            Some(bind(&users[0..21])),
        )
        .await;
    assert_eq!(a.status, 400);

    let stats = sim.state().stats();
    assert_eq!(stats.count("get_group", 200), 1);
    assert_eq!(stats.count("get_group", 404), 1);
    assert_eq!(stats.count("count_members", 200), 2);
    assert_eq!(stats.count("count_members", 400), 1);
    assert_eq!(stats.count("update_group", 204), 2);
    // One write-log target per member bound (beside the group): writes per user can be counted.
    let writes_for = |u: &Uuid| {
        stats
            .recent_writes
            .iter()
            .filter(|w| w.route == "update_group" && w.applied)
            .filter(|w| w.targets.contains(&u.to_string()))
            .count()
    };
    assert_eq!(writes_for(&users[0]), 1);
    assert_eq!(writes_for(&users[22]), 1);
}

#[tokio::test]
async fn groups_are_upserted_by_unique_name() {
    let sim = start().await;
    let users = crate::kit::simulator::seed_users(&sim, "u", 2);
    let raw = Raw::new(&sim).await;
    let path = "/groups(uniqueName='licensed-e3')";
    let mut body = json!({"displayName": "Licensed E3", "mailNickname": "licensede3",
        "mailEnabled": false, "securityEnabled": true, "groupTypes": []});
    body["members@odata.bind"] = bind(&users[0..1])["members@odata.bind"].clone();

    // Without `Prefer: create-if-missing` the PATCH is an update: a missing group is 404.
    let a = raw.send(Method::PATCH, path, &[], Some(body.clone())).await;
    assert_eq!(a.status, 404);
    let prefer = [("Prefer", "create-if-missing")];
    let a = raw
        .send(Method::PATCH, path, &prefer, Some(body.clone()))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["uniqueName"], "licensed-e3");
    let id = a.body["id"].as_str().unwrap().to_owned();
    // Again: the group exists, so it is updated (204) and not created twice.
    let again = json!({"displayName": "Licensed E3",
        "members@odata.bind": bind(&users[1..2])["members@odata.bind"]});
    let a = raw.send(Method::PATCH, path, &prefer, Some(again)).await;
    assert_eq!(a.status, 204);
    let a = raw
        .get(&format!(
            "/groups?{}",
            filter("displayName eq 'Licensed E3'")
        ))
        .await;
    assert_eq!(a.body["value"].as_array().unwrap().len(), 1);
    assert_eq!(a.body["value"][0]["id"], id);
    let a = raw
        .get("/groups(uniqueName='licensed-e3')?$select=id")
        .await;
    assert_eq!(a.body, json!({ "id": id }));
    assert_eq!(
        raw.eventual(&format!("/groups/{id}/members/$count"))
            .await
            .body,
        json!(2)
    );
    // displayName is not unique: another group may share it.
    security_group(&raw, "Licensed E3").await;

    let stats = sim.state().stats();
    assert_eq!(stats.count("upsert_group", 404), 1);
    assert_eq!(stats.count("upsert_group", 201), 1);
    assert_eq!(stats.count("upsert_group", 204), 1);
}

#[tokio::test]
async fn batch_ids_depends_on_and_method_not_allowed() {
    let sim = start().await;
    let users = crate::kit::simulator::seed_users(&sim, "b", 1);
    let raw = Raw::new(&sim).await;

    // Ids are compared case-insensitively and must be unique.
    let a = raw
        .send(
            Method::POST,
            "/$batch",
            &[],
            Some(json!({"requests": [
                {"id": "a", "method": "GET", "url": "/subscribedSkus"},
                {"id": "A", "method": "GET", "url": "/subscribedSkus"}]})),
        )
        .await;
    assert_eq!(a.status, 400);

    let a = raw
        .send(
            Method::POST,
            "/$batch",
            &[],
            Some(json!({"requests": [
                {"id": "missing", "method": "GET", "url": "/users/nobody@example.org"},
                {"id": "after-missing", "dependsOn": ["MISSING"], "method": "PATCH",
                 "url": format!("/users/{}", users[0]),
                 "headers": {"Content-Type": "application/json"},
                 "body": {"usageLocation": "FR"}},
                {"id": "count", "method": "GET", "url": "/users?$count=true&$top=1",
                 "headers": {"ConsistencyLevel": "eventual"}},
                {"id": "after-count", "dependsOn": ["count"], "method": "GET",
                 "url": format!("/users/{}?$select=usageLocation", users[0])},
                {"id": "wrong-method", "method": "DELETE", "url": "/subscribedSkus"}]})),
        )
        .await;
    assert_eq!(a.status, 200);
    let by_id = |id: &str| {
        a.body["responses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id("missing")["status"], 404);
    assert_eq!(by_id("after-missing")["status"], 424);
    assert_eq!(by_id("count")["body"]["@odata.count"], 1);
    assert_eq!(by_id("after-count")["status"], 200);
    assert_eq!(by_id("after-count")["body"]["usageLocation"], "GB");
    let wrong = by_id("wrong-method");
    assert_eq!(wrong["status"], 405);
    assert_eq!(wrong["body"]["error"]["code"], "Request_BadRequest");
    assert_eq!(
        wrong["body"]["error"]["message"],
        "Specified HTTP method is not allowed for the request target."
    );
    // The dependent write never ran.
    assert_eq!(
        sim.state().user(&users[0].to_string()).unwrap()["usageLocation"],
        "GB"
    );
    let stats = sim.state().stats();
    assert_eq!(stats.count("update_user", 424), 1);
    assert_eq!(stats.total("method_not_allowed"), 1);

    // A dependency cycle or an unknown id fails the whole batch.
    let a = raw
        .send(
            Method::POST,
            "/$batch",
            &[],
            Some(json!({"requests": [
                {"id": "1", "dependsOn": ["2"], "method": "GET", "url": "/subscribedSkus"},
                {"id": "2", "dependsOn": ["1"], "method": "GET", "url": "/subscribedSkus"}]})),
        )
        .await;
    assert_eq!(a.status, 400);

    // Outside a batch too.
    let a = raw
        .send(Method::PATCH, "/subscribedSkus", &[], Some(json!({})))
        .await;
    assert_eq!(a.status, 405);
    assert_eq!(
        a.body["error"]["message"],
        "Specified HTTP method is not allowed for the request target."
    );
}

#[tokio::test]
async fn discovery_document_and_the_401_challenge() {
    let sim = start().await;
    let http = reqwest::Client::new();
    let base = sim.base_url();
    let doc: Value = http
        .get(format!(
            "{base}/contoso-tenant/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], format!("{base}/contoso-tenant/v2.0"));
    let token_endpoint = doc["token_endpoint"].as_str().unwrap();
    assert_eq!(
        token_endpoint,
        format!("{base}/contoso-tenant/oauth2/v2.0/token")
    );
    assert!(
        doc["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("private_key_jwt"))
    );
    // The token endpoint it names works.
    let token = crate::kit::simulator::token_response_at(&http, token_endpoint).await;
    assert_eq!(token["token_type"], "Bearer");
    let keys: Value = http
        .get(doc["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(keys["keys"].is_array());
    let common: Value = http
        .get(format!(
            "{base}/common/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(common["issuer"], format!("{base}/{{tenantid}}/v2.0"));

    for auth in [None, Some("Bearer forged")] {
        let mut req = http.get(format!("{base}/v1.0/users"));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        assert_eq!(
            resp.headers()["www-authenticate"],
            r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000""#
        );
    }
}
