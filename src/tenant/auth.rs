//! OAuth 2.0 client credentials: fetching, caching and renewing the access token, with the
//! application's credential ([`Credential`]): a client secret, a client assertion signed with a
//! certificate's key, or a federated token read from a file.
//!
//! Certificates follow MicrosoftDocs/entra-docs `docs/identity-platform/certificate-credentials.md`:
//! the assertion is a JWT signed RS256 whose header carries `x5t#S256` (base64url SHA-256 of
//! the certificate's DER), with `aud` = the token endpoint, `iss` = `sub` = the client id, a new
//! `jti` each time, `nbf` and a short `exp`; it is sent as `client_assertion` with
//! `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`. Federation
//! (`docs/workload-id/workload-identity-federation.md`) sends the same form with the token of
//! the trusted issuer (AKS's projected service-account token) as the assertion, read again at
//! every fetch because the kubelet rotates the file.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::error::TenantError;
use super::events::{TokenEndpointAnswered, TokenEndpointUnreachable, TokenFetched, TokenRefused};
use super::settings::{Credential, TenantSettings};
use crate::telemetry::emit;

/// `client_assertion_type` of a JWT client assertion (RFC 7523), for certificates and
/// federated tokens alike.
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The claims of a client assertion (entra-docs `certificate-credentials.md`, "Claims (payload)").
#[derive(Debug, Serialize, Deserialize)]
pub struct AssertionClaims {
    pub aud: String,
    pub iss: String,
    pub sub: String,
    pub jti: String,
    pub nbf: i64,
    pub iat: i64,
    pub exp: i64,
}

/// A certificate and its private key, as read from their PEM files.
pub struct CertificateKey {
    /// `x5t#S256`: base64url (no padding) of the SHA-256 of the certificate's DER.
    pub thumbprint_s256: String,
    key: jsonwebtoken::EncodingKey,
}

impl CertificateKey {
    /// Reads a certificate (PEM) and its RSA private key (PEM, PKCS#8 or PKCS#1). Errors name
    /// the file, never its content.
    pub fn load(certificate: &Path, key: &Path) -> Result<Self, TenantError> {
        let cert_pem = std::fs::read(certificate).map_err(|e| {
            TenantError::Auth(format!("certificate {}: {e}", certificate.display()))
        })?;
        let der = certificate_der(&cert_pem).map_err(|e| {
            TenantError::Auth(format!("certificate {}: {e}", certificate.display()))
        })?;
        let key_pem = std::fs::read(key)
            .map_err(|e| TenantError::Auth(format!("private key {}: {e}", key.display())))?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&key_pem).map_err(|e| {
            TenantError::Auth(format!(
                "private key {}: not an RSA private key in PEM ({e})",
                key.display()
            ))
        })?;
        Ok(Self {
            thumbprint_s256: thumbprint_s256(&der),
            key,
        })
    }

    /// A client assertion for `client_id` at the token endpoint `audience`, valid from now
    /// for `lifetime`, with a new `jti`.
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        lifetime: Duration,
    ) -> Result<String, TenantError> {
        let now = chrono::Utc::now().timestamp();
        let claims = AssertionClaims {
            aud: audience.to_owned(),
            iss: client_id.to_owned(),
            sub: client_id.to_owned(),
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + i64::try_from(lifetime.as_secs()).unwrap_or(600),
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.x5t_s256 = Some(self.thumbprint_s256.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| TenantError::Auth(format!("signing the client assertion: {e}")))
    }
}

/// The DER of the first certificate of a PEM file.
pub fn certificate_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| format!("not a PEM certificate ({e})"))?;
    if pem.label != "CERTIFICATE" {
        return Err(format!("a PEM {} block, not a CERTIFICATE", pem.label));
    }
    pem.parse_x509()
        .map_err(|e| format!("not an X.509 certificate ({e})"))?;
    Ok(pem.contents)
}

/// The `x5t#S256` of a certificate: base64url (no padding) of the SHA-256 of its DER.
pub fn thumbprint_s256(der: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

/// What proves the application's identity at each token fetch.
enum Proof {
    Secret(SecretString),
    /// The PEM files, read again at every fetch (a renewed certificate is picked up).
    Certificate {
        certificate: PathBuf,
        key: PathBuf,
        lifetime: Duration,
    },
    /// The federated token file, read again at every fetch (it rotates).
    Federated(PathBuf),
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct TokenError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

struct Cached {
    token: SecretString,
    /// When to stop using it: its expiry minus the refresh margin.
    renew_at: Instant,
}

/// Hands out a valid access token, fetching a new one when the cached one nears expiry.
pub(crate) struct TokenSource {
    http: reqwest::Client,
    url: String,
    client_id: String,
    proof: Proof,
    scope: String,
    margin: Duration,
    /// A tokio mutex: concurrent callers wait for one fetch instead of each fetching.
    cached: Mutex<Option<Cached>>,
}

impl TokenSource {
    /// A token source for `s`'s credential; a certificate credential whose files cannot be
    /// read or parsed fails here, at start.
    pub(crate) fn new(http: reqwest::Client, s: &TenantSettings) -> Result<Self, TenantError> {
        let missing = |key: &str| TenantError::Auth(format!("tenant.{key} is not set"));
        let proof = match s.credential {
            Credential::Secret => Proof::Secret(s.client_secret.clone()),
            Credential::Certificate => {
                let certificate = s
                    .client_certificate_path
                    .clone()
                    .ok_or_else(|| missing("client_certificate_path"))?;
                let key = s
                    .client_key_path
                    .clone()
                    .ok_or_else(|| missing("client_key_path"))?;
                CertificateKey::load(&certificate, &key)?;
                Proof::Certificate {
                    certificate,
                    key,
                    lifetime: Duration::from_secs(s.client_assertion_lifetime_seconds),
                }
            }
            Credential::Federated => Proof::Federated(
                s.federated_token_file
                    .clone()
                    .ok_or_else(|| missing("federated_token_file"))?,
            ),
        };
        Ok(Self {
            http,
            url: format!(
                "{}/{}/oauth2/v2.0/token",
                s.login_base_url.trim_end_matches('/'),
                s.tenant_id
            ),
            client_id: s.client_id.clone(),
            proof,
            scope: s.scope.clone(),
            margin: Duration::from_secs(s.token_refresh_margin_seconds),
            cached: Mutex::new(None),
        })
    }

    /// The form fields that prove the application's identity, made afresh.
    fn proof_fields(&self) -> Result<Vec<(&'static str, SecretString)>, TenantError> {
        let assertion = |a: String| {
            vec![
                (
                    "client_assertion_type",
                    SecretString::from(JWT_BEARER_ASSERTION_TYPE),
                ),
                ("client_assertion", SecretString::from(a)),
            ]
        };
        Ok(match &self.proof {
            Proof::Secret(secret) => vec![("client_secret", secret.clone())],
            Proof::Certificate {
                certificate,
                key,
                lifetime,
            } => assertion(CertificateKey::load(certificate, key)?.assertion(
                &self.client_id,
                &self.url,
                *lifetime,
            )?),
            Proof::Federated(file) => {
                let token = std::fs::read_to_string(file).map_err(|e| {
                    TenantError::Auth(format!("federated token file {}: {e}", file.display()))
                })?;
                let token = token.trim();
                if token.is_empty() {
                    return Err(TenantError::Auth(format!(
                        "federated token file {} is empty",
                        file.display()
                    )));
                }
                assertion(token.to_owned())
            }
        })
    }

    /// A token valid for at least the refresh margin (or the fresh one the endpoint gave).
    pub(crate) async fn token(&self) -> Result<SecretString, TenantError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.renew_at > Instant::now()) {
            return Ok(c.token.clone());
        }
        let fetched = self.fetch().await?;
        let token = fetched.token.clone();
        *cached = Some(fetched);
        Ok(token)
    }

    /// Forgets `used` after Graph refused it, unless another caller already replaced it.
    pub(crate) async fn invalidate(&self, used: &SecretString) {
        let mut cached = self.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|c| c.token.expose_secret() == used.expose_secret())
        {
            *cached = None;
        }
    }

    async fn fetch(&self) -> Result<Cached, TenantError> {
        let started = Instant::now();
        let proof = self.proof_fields()?;
        let mut form = vec![
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
            ("grant_type", "client_credentials"),
        ];
        form.extend(proof.iter().map(|(k, v)| (*k, v.expose_secret())));
        let result = self.http.post(&self.url).form(&form).send().await;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                emit(TokenEndpointUnreachable {
                    elapsed: started.elapsed(),
                });
                return Err(TenantError::Transient(format!("token endpoint: {e}")));
            }
        };
        let status = resp.status().as_u16();
        emit(TokenEndpointAnswered {
            status,
            elapsed: started.elapsed(),
        });
        let body = resp
            .bytes()
            .await
            .map_err(|e| TenantError::Transient(format!("token endpoint: {e}")))?;
        if status >= 500 || status == 429 {
            return Err(TenantError::Transient(format!(
                "token endpoint answered {status}"
            )));
        }
        if status >= 400 {
            let e: TokenError = serde_json::from_slice(&body).unwrap_or(TokenError {
                error: format!("http_{status}"),
                error_description: String::new(),
            });
            emit(TokenRefused {
                status,
                error: &e.error,
            });
            return Err(TenantError::Auth(format!(
                "{}: {}",
                e.error, e.error_description
            )));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| TenantError::Auth(format!("unreadable token answer: {e}")))?;
        emit(TokenFetched {
            expires_in: answer.expires_in,
        });
        let lifetime = Duration::from_secs(answer.expires_in);
        // With a lifetime shorter than the margin, use the token for half its life.
        let usable = lifetime.checked_sub(self.margin).unwrap_or(lifetime / 2);
        Ok(Cached {
            token: SecretString::from(answer.access_token),
            renew_at: started + usable,
        })
    }
}
