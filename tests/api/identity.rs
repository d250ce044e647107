//! Production identity end to end: policy jobs with a certificate credential and with a
//! federated token file, the simulator refusing bad assertions with Entra's AADSTS codes, a
//! job that holds while its access is revoked and completes once it is restored, and
//! `check-config` naming the credential without its key material. Key material is made at test
//! time (`ops::certificate::generate`); none is committed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use policy_reconciler::ops::certificate::{self, DevCertificate};
use policy_reconciler::simulator::FederatedIssuer;
use policy_reconciler::simulator::identity::AccessKnobs;
use policy_reconciler::tenant::auth::{AssertionClaims, CertificateKey, JWT_BEARER_ASSERTION_TYPE};
use serde_json::{Value, json};

use crate::helpers::{AppOptions, TestApp, spawn_app_with};
use crate::kit::broker::EventQueue;
use crate::kit::simulator::start_with;

const ISSUER: &str = "https://oidc.prod-aks.example/tenant/cluster/";
const SUBJECT: &str = "system:serviceaccount:reconciler:policy-reconciler";

/// A fresh directory under the system's temporary one.
fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reconciler-identity-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A certificate and key written to `dir` as `{name}.crt` / `{name}.key`.
fn pair(dir: &Path, name: &str) -> (DevCertificate, certificate::Written) {
    let cert = certificate::generate(name, 30).unwrap();
    let written = certificate::write(dir, name, &cert).unwrap();
    (cert, written)
}

/// A token of the federated issuer signed with `key_pem` (what the kubelet projects).
fn federated_token(key_pem: &str, iss: &str, sub: &str, aud: &str, exp_in: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({ "iss": iss, "sub": sub, "aud": [aud], "iat": now, "nbf": now,
                         "exp": now + exp_in, "kubernetes.io": { "namespace": "reconciler" } });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .unwrap()
}

fn policy_changed(id: &str, members: &[String]) -> Value {
    json!({ "policy": { "id": id, "name": format!("{id} users"), "ods_code": "RX1", "version": 1,
                        "licence": "ENTERPRISEPACK",
                        "toggles": { "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true } },
            "members": members, "total_members": members.len() })
}

/// The `job.completed` of `message_id`, within 90 s.
async fn completion(events: &mut EventQueue, message_id: &Value) -> Value {
    events
        .completion_keeping(message_id, &mut Vec::new(), Duration::from_secs(90))
        .await
}

/// Polls `f` until it gives a value, for at most `timeout`.
async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_policy_job(app: &mut TestApp, id: &str, members: &[String]) -> Value {
    let mut events = app.event_queue().await;
    let job = app.job("policy.changed", policy_changed(id, members));
    app.publish_job(&job).await;
    completion(&mut events, &job["message_id"]).await
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[tokio::test]
async fn a_policy_job_runs_with_a_certificate_credential() {
    let dir = temp_dir();
    let (_, client) = pair(&dir, "client");
    let mut sim = policy_reconciler::simulator::SimulatorSettings::for_tests();
    sim.client_certificate_paths = vec![client.certificate.clone()];
    let mut app = spawn_app_with(AppOptions {
        simulator: Some(sim),
        env: env(&[
            ("TENANT__CREDENTIAL", "certificate".into()),
            (
                "TENANT__CLIENT_CERTIFICATE_PATH",
                client.certificate.display().to_string(),
            ),
            ("TENANT__CLIENT_KEY_PATH", client.key.display().to_string()),
            // Not the simulator's secret: only the certificate can get a token.
            ("TENANT__CLIENT_SECRET", "not-the-secret".into()),
        ]),
        ..AppOptions::default()
    })
    .await;
    let members = app.sim.seed_users("cert", 30);
    let done = run_policy_job(&mut app, "rx1-cert", &members).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 30);
    let expected = app
        .sim
        .expected_licence("ENTERPRISEPACK", &["EXCHANGE_S_ENTERPRISE", "TEAMS1"]);
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    let stats = serde_json::to_value(app.sim.state.stats()).unwrap();
    assert!(
        stats.to_string().contains("token"),
        "the token endpoint was used: {stats}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_policy_job_runs_with_a_federated_token_file() {
    let dir = temp_dir();
    let (issuer_cert, issuer) = pair(&dir, "issuer");
    let token_file = dir.join("azure-identity-token");
    std::fs::write(
        &token_file,
        federated_token(
            &issuer_cert.key_pem,
            ISSUER,
            SUBJECT,
            "api://AzureADTokenExchange",
            3600,
        ),
    )
    .unwrap();
    let mut sim = policy_reconciler::simulator::SimulatorSettings::for_tests();
    sim.federated_issuers = vec![FederatedIssuer {
        issuer: ISSUER.into(),
        subject: SUBJECT.into(),
        audience: "api://AzureADTokenExchange".into(),
        certificate_path: issuer.certificate.clone(),
    }];
    let mut app = spawn_app_with(AppOptions {
        simulator: Some(sim),
        env: env(&[
            ("TENANT__CREDENTIAL", "federated".into()),
            (
                "TENANT__FEDERATED_TOKEN_FILE",
                token_file.display().to_string(),
            ),
            ("TENANT__CLIENT_SECRET", "not-the-secret".into()),
        ]),
        ..AppOptions::default()
    })
    .await;
    let members = app.sim.seed_users("fed", 20);
    let done = run_policy_job(&mut app, "rx1-fed", &members).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 20);

    // The file is read at every token fetch: a rotated token (for another subject, so the
    // simulator refuses it) is used as soon as a new token is needed, and the job holds.
    std::fs::write(
        &token_file,
        federated_token(
            &issuer_cert.key_pem,
            ISSUER,
            "system:serviceaccount:other:app",
            "api://AzureADTokenExchange",
            3600,
        ),
    )
    .unwrap();
    app.sim.state.revoke_tokens();
    let more = app.sim.seed_users("fed-more", 5);
    let job = app.job("policy.changed", policy_changed("rx1-fed-2", &more));
    let mut events = app.event_queue().await;
    app.publish_job(&job).await;
    let pool = app.pool.clone();
    let message_id = job["message_id"].as_str().unwrap().to_owned();
    let held = wait_for(Duration::from_secs(30), "the job to hold", || {
        let pool = pool.clone();
        let message_id = message_id.clone();
        async move { held_detail(&pool, &message_id).await }
    })
    .await;
    assert_eq!(held["code"], "tenant_access_lost");
    assert!(
        held["detail"].as_str().unwrap().contains("AADSTS70021"),
        "{held}"
    );
    // Rotated back to a token the federated credential matches: the job resumes.
    std::fs::write(
        &token_file,
        federated_token(
            &issuer_cert.key_pem,
            ISSUER,
            SUBJECT,
            "api://AzureADTokenExchange",
            3600,
        ),
    )
    .unwrap();
    let done = completion(&mut events, &job["message_id"]).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["failed"], 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// `jobs.held` of the job with this message id, once set.
async fn held_detail(pool: &sqlx::PgPool, message_id: &str) -> Option<Value> {
    sqlx::query_scalar::<_, Option<Value>>("SELECT held FROM jobs WHERE message_id = $1")
        .bind(message_id)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
        .flatten()
}

async fn failed_items(pool: &sqlx::PgPool, message_id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM job_items i JOIN jobs j ON j.id = i.job_id
         WHERE j.message_id = $1 AND i.outcome = 'failed'",
    )
    .bind(message_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn readyz(app: &TestApp) -> Value {
    reqwest::get(app.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn metrics(app: &TestApp) -> String {
    reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Revokes `knobs` once `writes` licence writes were applied, checks that the job holds with no
/// failed item and that the loss shows, then restores access and returns the completion.
async fn revoke_mid_run(app: &mut TestApp, knobs: AccessKnobs, reason: &str) -> Value {
    let members = app.sim.seed_users(&format!("held-{reason}-"), 240);
    let job = app.job(
        "policy.changed",
        policy_changed(&format!("rx1-{reason}"), &members),
    );
    let mut events = app.event_queue().await;
    app.publish_job(&job).await;
    let message_id = job["message_id"].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(60), "the first writes", || async {
        (app.sim.licence_writes_applied() >= 20).then_some(())
    })
    .await;
    app.sim.state.set_access(knobs);
    let pool = app.pool.clone();
    let held = wait_for(Duration::from_secs(30), "the job to hold", || {
        let pool = pool.clone();
        let message_id = message_id.clone();
        async move { held_detail(&pool, &message_id).await }
    })
    .await;
    assert_eq!(held["code"], "tenant_access_lost", "{held}");
    assert_eq!(held["reason"], reason, "{held}");
    let written = app.sim.licence_writes_applied();
    assert!(
        written < 240,
        "the job was done before access was lost ({written})"
    );
    // Held: chunks keep coming back and meeting the refusal, and no item fails.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(failed_items(&app.pool, &message_id).await, 0);
    let ready = readyz(app).await;
    assert_eq!(
        ready["tenant_access"]["code"], "tenant_access_lost",
        "{ready}"
    );
    assert_eq!(ready["tenant_access"]["reason"], reason, "{ready}");
    // The recorder is shared by every app of this test process (tests run in parallel), so
    // the gauge may be another test's; the counter of held chunks only grows.
    let text = metrics(app).await;
    assert!(
        text.contains("reconciler_tenant_access_lost{reason="),
        "{text}"
    );
    let held_chunks: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "reconciler_chunks_held_total{{reason=\"{reason}\"}} "
            ))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no held-chunk counter for {reason}: {text}"));
    assert!(held_chunks >= 1.0, "{text}");
    let (state,): (String,) = sqlx::query_as("SELECT state FROM jobs WHERE message_id = $1")
        .bind(&message_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(state, "running");

    app.sim.state.set_access(AccessKnobs::default());
    let done = completion(&mut events, &job["message_id"]).await;
    assert!(
        held_detail(&app.pool, &message_id).await.is_none(),
        "the hold is cleared"
    );
    assert!(readyz(app).await["tenant_access"].is_null());
    let expected = app
        .sim
        .expected_licence("ENTERPRISEPACK", &["EXCHANGE_S_ENTERPRISE", "TEAMS1"]);
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    done
}

async fn slow_app(extra: &[(&str, String)]) -> TestApp {
    let mut sim = policy_reconciler::simulator::SimulatorSettings::for_tests();
    // Slow enough that the job is mid-run when access is taken away.
    sim.latency_ms = 60;
    let mut pairs = vec![
        ("ENGINE__CHUNK_SIZE", "20".to_owned()),
        ("ENGINE__CHUNK_CONCURRENCY", "1".to_owned()),
        ("ENGINE__ACCESS_RETRY_SECONDS", "1".to_owned()),
    ];
    pairs.extend(extra.iter().cloned());
    spawn_app_with(AppOptions {
        simulator: Some(sim),
        env: env(&pairs),
        ..AppOptions::default()
    })
    .await
}

#[tokio::test]
async fn a_job_whose_credential_is_revoked_mid_run_holds_and_succeeds_once_it_is_restored() {
    let dir = temp_dir();
    let (client_cert, client) = pair(&dir, "client");
    let mut app = slow_app(&[
        ("TENANT__CREDENTIAL", "certificate".into()),
        (
            "TENANT__CLIENT_CERTIFICATE_PATH",
            client.certificate.display().to_string(),
        ),
        ("TENANT__CLIENT_KEY_PATH", client.key.display().to_string()),
    ])
    .await;
    app.sim
        .state
        .register_certificate(client_cert.certificate_pem.as_bytes())
        .unwrap();
    let done = revoke_mid_run(
        &mut app,
        AccessKnobs {
            credentials_revoked: true,
            permissions_revoked: false,
        },
        "credential",
    )
    .await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["failed"], 0, "{done}");
    assert_eq!(done["counts"]["total"], 240, "{done}");
    assert!(
        !done.to_string().contains("tenant_access_lost"),
        "never an item's code: {done}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_job_whose_permission_is_revoked_mid_run_holds_and_succeeds_once_it_is_restored() {
    let mut app = slow_app(&[]).await;
    let done = revoke_mid_run(
        &mut app,
        AccessKnobs {
            credentials_revoked: false,
            permissions_revoked: true,
        },
        "permission",
    )
    .await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["failed"], 0, "{done}");
}

/// The token endpoint's answer to a client assertion.
async fn present(http: &reqwest::Client, url: &str, assertion: &str) -> (u16, Value) {
    let resp = http
        .post(url)
        .form(&[
            ("client_id", "policy-reconciler-dev"),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
            ("client_assertion", assertion),
        ])
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// An assertion signed with `key_pem`, named by `thumbprint`, with these claims.
fn assertion(key_pem: &str, thumbprint: &str, claims: &AssertionClaims) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.x5t_s256 = Some(thumbprint.to_owned());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn refused_with(answer: &(u16, Value), code: u32) {
    let (status, body) = answer;
    assert!((400..500).contains(status), "{status} {body}");
    assert_eq!(body["error_codes"], json!([code]), "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with(&format!("AADSTS{code}: ")),
        "{body}"
    );
}

#[tokio::test]
async fn the_simulator_refuses_each_bad_assertion_with_its_aadsts_code() {
    let dir = temp_dir();
    let (registered, registered_files) = pair(&dir, "registered");
    let (stranger, _) = pair(&dir, "stranger");
    let (issuer_cert, issuer) = pair(&dir, "issuer");
    let sim = start_with(|s| {
        s.client_certificate_paths = vec![registered_files.certificate.clone()];
        s.federated_issuers = vec![FederatedIssuer {
            issuer: ISSUER.into(),
            subject: SUBJECT.into(),
            audience: "api://AzureADTokenExchange".into(),
            certificate_path: issuer.certificate.clone(),
        }];
    })
    .await;
    let url = format!("{}/contoso/oauth2/v2.0/token", sim.base_url());
    let http = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp();
    let claims = |f: &dyn Fn(&mut AssertionClaims)| {
        let mut c = AssertionClaims {
            aud: url.clone(),
            iss: "policy-reconciler-dev".into(),
            sub: "policy-reconciler-dev".into(),
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + 600,
        };
        f(&mut c);
        c
    };
    let good = |f: &dyn Fn(&mut AssertionClaims)| {
        assertion(&registered.key_pem, &registered.thumbprint_s256, &claims(f))
    };

    // The client's own assertion is accepted, once.
    let key = CertificateKey::load(&registered_files.certificate, &registered_files.key).unwrap();
    let own = key
        .assertion("policy-reconciler-dev", &url, Duration::from_secs(600))
        .unwrap();
    let (status, body) = present(&http, &url, &own).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());
    // Replayed (same jti).
    refused_with(&present(&http, &url, &own).await, 50013);
    // Signed by another key than the registered certificate's.
    let forged = assertion(
        &stranger.key_pem,
        &registered.thumbprint_s256,
        &claims(&|_| {}),
    );
    refused_with(&present(&http, &url, &forged).await, 700027);
    // A certificate that is not registered.
    let unregistered = assertion(
        &stranger.key_pem,
        &stranger.thumbprint_s256,
        &claims(&|_| {}),
    );
    refused_with(&present(&http, &url, &unregistered).await, 700027);
    // Addressed to another token endpoint.
    let wrong_audience =
        good(&|c| c.aud = "https://login.microsoftonline.com/other/oauth2/v2.0/token".into());
    refused_with(&present(&http, &url, &wrong_audience).await, 50027);
    // Expired an hour ago; not valid for another hour.
    let expired = good(&|c| {
        c.nbf = now - 7200;
        c.exp = now - 3600;
    });
    refused_with(&present(&http, &url, &expired).await, 700024);
    let early = good(&|c| {
        c.nbf = now + 3600;
        c.exp = now + 4200;
    });
    refused_with(&present(&http, &url, &early).await, 700024);
    // iss and sub differ.
    let mismatch = good(&|c| c.sub = "someone-else".into());
    refused_with(&present(&http, &url, &mismatch).await, 50048);
    // Not a JWT.
    refused_with(&present(&http, &url, "not-a-jwt").await, 50027);

    // Federated tokens: the registered issuer and subject are accepted, also again (the
    // projected token is reused until it rotates).
    let fed = federated_token(
        &issuer_cert.key_pem,
        ISSUER,
        SUBJECT,
        "api://AzureADTokenExchange",
        3600,
    );
    assert_eq!(present(&http, &url, &fed).await.0, 200);
    assert_eq!(present(&http, &url, &fed).await.0, 200);
    let other_subject = federated_token(
        &issuer_cert.key_pem,
        ISSUER,
        "system:serviceaccount:x:y",
        "api://AzureADTokenExchange",
        3600,
    );
    refused_with(&present(&http, &url, &other_subject).await, 70021);
    let other_issuer = federated_token(
        &issuer_cert.key_pem,
        "https://evil.example/",
        SUBJECT,
        "api://AzureADTokenExchange",
        3600,
    );
    refused_with(&present(&http, &url, &other_issuer).await, 70021);
    let other_audience =
        federated_token(&issuer_cert.key_pem, ISSUER, SUBJECT, "api://other", 3600);
    refused_with(&present(&http, &url, &other_audience).await, 70021);
    let forged_fed = federated_token(
        &stranger.key_pem,
        ISSUER,
        SUBJECT,
        "api://AzureADTokenExchange",
        3600,
    );
    refused_with(&present(&http, &url, &forged_fed).await, 50027);
    let expired_fed = federated_token(
        &issuer_cert.key_pem,
        ISSUER,
        SUBJECT,
        "api://AzureADTokenExchange",
        -3600,
    );
    refused_with(&present(&http, &url, &expired_fed).await, 700024);

    // No credential at all.
    let resp = http
        .post(&url)
        .form(&[
            ("client_id", "policy-reconciler-dev"),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    refused_with(
        &(resp.status().as_u16(), resp.json().await.unwrap()),
        7000218,
    );

    // Credentials revoked: even a good assertion is refused; restored, it is accepted.
    sim.state().set_access(AccessKnobs {
        credentials_revoked: true,
        permissions_revoked: false,
    });
    refused_with(&present(&http, &url, &good(&|_| {})).await, 7000112);
    sim.state().set_access(AccessKnobs::default());
    assert_eq!(present(&http, &url, &good(&|_| {})).await.0, 200);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_config_names_the_credential_without_its_key_material() {
    let dir = temp_dir();
    let (cert, files) = pair(&dir, "client");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_policy-reconciler"))
        .arg("check-config")
        .env("RECONCILER__TENANT__CREDENTIAL", "certificate")
        .env(
            "RECONCILER__TENANT__CLIENT_CERTIFICATE_PATH",
            &files.certificate,
        )
        .env("RECONCILER__TENANT__CLIENT_KEY_PATH", &files.key)
        .env(
            "RECONCILER__TENANT__CLIENT_SECRET",
            "a-secret-that-must-not-show",
        )
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("# tenant credential: certificate"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&files.key.display().to_string()),
        "{stdout}"
    );
    assert!(!stdout.contains("a-secret-that-must-not-show"), "{stdout}");
    assert!(!stdout.contains("PRIVATE KEY"), "{stdout}");
    let key_body: String = cert.key_pem.lines().nth(1).unwrap().to_owned();
    assert!(!stdout.contains(&key_body), "{stdout}");

    // Federated, from the variables the workload identity webhook injects.
    let token_file = dir.join("token");
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.c2ln").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_policy-reconciler"))
        .arg("check-config")
        .env("RECONCILER__TENANT__CREDENTIAL", "federated")
        .env("AZURE_FEDERATED_TOKEN_FILE", &token_file)
        .env("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555")
        .env("AZURE_TENANT_ID", "contoso-tenant")
        .env("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/")
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let first = stdout.lines().next().unwrap();
    assert!(
        first.starts_with("# tenant credential: federated"),
        "{first}"
    );
    assert!(
        first.contains("11111111-2222-3333-4444-555555555555"),
        "{first}"
    );
    assert!(first.contains("contoso-tenant"), "{first}");
    assert!(first.contains(&token_file.display().to_string()), "{first}");
    assert!(
        first.contains("https://login.microsoftonline.com"),
        "{first}"
    );
    assert!(
        !stdout.contains("c2VjcmV0LXRva2Vu"),
        "the token is never printed: {stdout}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The hold is the engine's, not the policy kind's: an admin role job holds alike, and its grant
/// is realised (not failed) once access is back.
#[tokio::test]
async fn an_admin_role_job_holds_while_permissions_are_revoked_and_succeeds_once_restored() {
    let mut app = slow_app(&[]).await;
    let user = app.sim.seed_users("role-held", 1).remove(0);
    app.sim.state.set_access(AccessKnobs {
        credentials_revoked: false,
        permissions_revoked: true,
    });
    let job = app.job(
        "admin_role.assign",
        json!({ "user": user, "ods_code": "RX1", "role": "phone_system_local_admin" }),
    );
    let mut events = app.event_queue().await;
    app.publish_job(&job).await;
    let message_id = job["message_id"].as_str().unwrap().to_owned();
    let pool = app.pool.clone();
    let held = wait_for(Duration::from_secs(30), "the job to hold", || {
        let pool = pool.clone();
        let message_id = message_id.clone();
        async move { held_detail(&pool, &message_id).await }
    })
    .await;
    assert_eq!(held["code"], "tenant_access_lost", "{held}");
    assert_eq!(held["reason"], "permission", "{held}");
    assert!(
        held["detail"]
            .as_str()
            .unwrap()
            .contains("Insufficient privileges"),
        "{held}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(failed_items(&app.pool, &message_id).await, 0);

    app.sim.state.set_access(AccessKnobs::default());
    let done = completion(&mut events, &job["message_id"]).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 1, "{done}");
    let groups = app.sim.state.groups_of(&user).unwrap_or_default();
    assert_eq!(
        groups,
        vec!["PhoneSystem-Local-RX1".to_owned()],
        "{groups:?}"
    );
    let (state,): (String,) = sqlx::query_as("SELECT state FROM admin_roles WHERE email = $1")
        .bind(&user)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(state, "realised");
}
