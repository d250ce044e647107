//! The simulated application's credentials at the token endpoint: client secret, certificates
//! (client assertions signed RS256, named by `x5t#S256`) and federated identity credentials
//! (tokens of a trusted issuer), with Entra ID's refusals; and the admin knobs that take access
//! away (`POST /_sim/access`).
//!
//! The refusals carry the AADSTS codes Entra ID answers with (MicrosoftDocs/entra-docs
//! `docs/identity-platform/reference-error-codes.md` unless said otherwise):
//!
//! | refusal | code |
//! |---|---|
//! | assertion signed by a key of no registered certificate, or its signature does not verify | AADSTS700027 "Client assertion failed signature validation." |
//! | assertion outside its `nbf`..`exp` (past a 5-minute clock skew) | AADSTS700024 "Client assertion is not within its valid time range." (not in that table; the code MSAL and Microsoft.Identity.Web name `SignedAssertionInvalidTimeRange`) |
//! | `aud` is not this token endpoint; malformed JWT; federated token whose signature fails | AADSTS50027 InvalidJwtToken ("unexpected audience", "token format isn't proper", "External ID token from issuer failed signature verification") |
//! | `iss` ≠ `sub` | AADSTS50048 SubjectMismatchesIssuer |
//! | `iss` = `sub` but not the client id | AADSTS700016 application not found |
//! | a certificate assertion's `jti` seen before | AADSTS50013 InvalidAssertion (Entra documents no code of its own for a replayed `jti`; this is its generic invalid-assertion code) |
//! | federated token of no registered issuer, subject or audience | AADSTS70021 "No matching federated identity record found for presented assertion." (entra-docs `docs/workload-id/workload-identity-federation.md` troubleshooting; AKS workload identity) |
//! | neither assertion nor secret | AADSTS7000218 |
//! | the application's credentials revoked (`/_sim/access`) | AADSTS7000112 UnauthorizedClientApplicationDisabled |
//!
//! Federated tokens are not single-use: AKS hands the same projected token to every fetch until
//! it rotates, and Entra ID accepts it each time; only certificate assertions are checked for
//! replay.
use std::collections::HashMap;
use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::settings::FederatedIssuer;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 section 2.2).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Clock skew tolerated on `nbf` and `exp` (Entra ID allows a few minutes; five assumed).
pub const CLOCK_SKEW_SECONDS: i64 = 300;

/// A refusal of the token endpoint, in Entra ID's OAuth error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// OAuth `error` (`invalid_client`, `unauthorized_client`, `invalid_request`).
    pub error: &'static str,
    /// The AADSTS number (`error_codes`).
    pub code: u32,
    /// `error_description` without the `AADSTS{code}: ` prefix.
    pub message: String,
}

impl Refusal {
    fn new(status: u16, error: &'static str, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            code,
            message: message.into(),
        }
    }

    fn bad_signature(reason: &str) -> Self {
        Self::new(
            401,
            "invalid_client",
            700027,
            format!("Client assertion failed signature validation. [Reason - {reason}]"),
        )
    }

    fn invalid_jwt(reason: &str) -> Self {
        Self::new(
            401,
            "invalid_client",
            50027,
            format!("Invalid JWT token. {reason}"),
        )
    }

    /// `AADSTS{code}: {message}`.
    pub fn description(&self) -> String {
        format!("AADSTS{}: {}", self.code, self.message)
    }
}

/// What `POST /_sim/access` sets: access taken away from the application, as when an
/// administrator removes its credential (or disables it) or revokes its Graph permissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessKnobs {
    /// The token endpoint refuses every credential of the application (AADSTS7000112), and
    /// tokens issued before stop working (as if they expired): 401 that a new token does not cure.
    pub credentials_revoked: bool,
    /// Graph answers every call (inner `$batch` requests too) 403
    /// `Authorization_RequestDenied`: the application's permissions were revoked.
    pub permissions_revoked: bool,
}

/// The application's registered certificates and federated credentials, and the `jti`s of the
/// certificate assertions already redeemed.
#[derive(Default)]
pub struct Credentials {
    /// By `x5t#S256`.
    certificates: HashMap<String, DecodingKey>,
    federated: Vec<(FederatedIssuer, DecodingKey)>,
    /// `jti` → the assertion's `exp` (forgotten once it could not be accepted anyway).
    seen: HashMap<String, i64>,
}

/// The claims the simulator reads from an assertion (every one optional: a missing one is a
/// refusal, not a parse error).
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    exp: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, value: &str) -> bool {
        match self {
            Self::One(a) => a == value,
            Self::Many(all) => all.iter().any(|a| a == value),
        }
    }
}

/// The public key of an RS256 certificate (PEM), and its `x5t#S256`: base64url without padding
/// of the SHA-256 of the certificate's DER (RFC 7515 section 4.1.8).
///
/// Written here rather than shared with the service's client (`tenant::auth`): the simulator
/// stands for Entra ID, and one helper on both sides would agree with itself even where wrong.
fn certificate_key(pem: &[u8]) -> Result<(String, DecodingKey), String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| format!("not a PEM certificate ({e})"))?;
    if block.label != "CERTIFICATE" {
        return Err(format!("a PEM {} block, not a CERTIFICATE", block.label));
    }
    let cert = block
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let spki = cert.public_key();
    let key = match spki.parsed() {
        // The subject public key of an RSA certificate is the PKCS#1 `RSAPublicKey` DER.
        Ok(x509_parser::public_key::PublicKey::RSA(_)) => {
            DecodingKey::from_rsa_der(&spki.subject_public_key.data)
        }
        _ => return Err("the certificate's key is not RSA".to_owned()),
    };
    let thumbprint =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(&block.contents));
    Ok((thumbprint, key))
}

fn read_certificate(path: &Path) -> std::io::Result<(String, DecodingKey)> {
    let pem = std::fs::read(path)?;
    certificate_key(&pem).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("certificate {}: {e}", path.display()),
        )
    })
}

impl Credentials {
    /// Loads the certificate files of the settings.
    pub fn load(
        certificates: &[impl AsRef<Path>],
        federated: &[FederatedIssuer],
    ) -> std::io::Result<Self> {
        let mut c = Self::default();
        for path in certificates {
            let (thumbprint, key) = read_certificate(path.as_ref())?;
            c.certificates.insert(thumbprint, key);
        }
        for issuer in federated {
            let (_, key) = read_certificate(&issuer.certificate_path)?;
            c.federated.push((issuer.clone(), key));
        }
        Ok(c)
    }

    /// Registers a certificate (PEM) on the application; returns its `x5t#S256`.
    pub fn register_certificate(&mut self, pem: &[u8]) -> Result<String, String> {
        let (thumbprint, key) = certificate_key(pem)?;
        self.certificates.insert(thumbprint.clone(), key);
        Ok(thumbprint)
    }

    /// Checks a `client_assertion` presented for `client_id` at the token endpoint
    /// `token_url`, at `now` (Unix seconds).
    pub fn verify(
        &mut self,
        assertion_type: &str,
        assertion: &str,
        client_id: &str,
        token_url: &str,
        now: i64,
    ) -> Result<(), Refusal> {
        if assertion_type != JWT_BEARER_ASSERTION_TYPE {
            return Err(Refusal::new(
                400,
                "invalid_request",
                90014,
                "The request body must contain a valid 'client_assertion_type'.",
            ));
        }
        let header = jsonwebtoken::decode_header(assertion)
            .map_err(|_| Refusal::invalid_jwt("The token format isn't proper."))?;
        match header.x5t_s256.as_deref() {
            Some(thumbprint) => {
                self.verify_certificate(thumbprint, assertion, client_id, token_url, now)
            }
            None => self.verify_federated(assertion, now),
        }
    }

    fn verify_certificate(
        &mut self,
        thumbprint: &str,
        assertion: &str,
        client_id: &str,
        token_url: &str,
        now: i64,
    ) -> Result<(), Refusal> {
        let Some(key) = self.certificates.get(thumbprint) else {
            return Err(Refusal::bad_signature(&format!(
                "The key was not found., Thumbprint of key used by client: '{thumbprint}'"
            )));
        };
        let claims = decode(assertion, key).map_err(|kind| match kind {
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                Refusal::bad_signature("The signature does not verify.")
            }
            _ => Refusal::invalid_jwt("The token format isn't proper."),
        })?;
        // entra-docs `certificate-credentials.md`: aud "https://login.microsoftonline.com/{tenantId}/oauth2/v2.0/token".
        if !claims.aud.as_ref().is_some_and(|a| a.contains(token_url)) {
            return Err(Refusal::invalid_jwt(&format!(
                "Unexpected audience: the assertion must be addressed to '{token_url}'."
            )));
        }
        let (iss, sub) = (claims.iss.as_deref(), claims.sub.as_deref());
        if iss != sub {
            return Err(Refusal::new(
                401,
                "invalid_client",
                50048,
                "Subject mismatches Issuer claim in the client assertion.",
            ));
        }
        if iss != Some(client_id) {
            return Err(Refusal::new(
                400,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{}' was not found in the directory.",
                    iss.unwrap_or_default()
                ),
            ));
        }
        in_time(&claims, now)?;
        let Some(jti) = claims.jti.filter(|j| !j.is_empty()) else {
            return Err(Refusal::new(
                401,
                "invalid_client",
                50013,
                "Assertion is invalid: it has no 'jti'.",
            ));
        };
        self.seen.retain(|_, exp| *exp + CLOCK_SKEW_SECONDS >= now);
        if self.seen.contains_key(&jti) {
            return Err(Refusal::new(
                401,
                "invalid_client",
                50013,
                format!("Assertion is invalid: the assertion with jti '{jti}' was already used."),
            ));
        }
        self.seen.insert(jti, claims.exp.unwrap_or(now));
        Ok(())
    }

    fn verify_federated(&self, assertion: &str, now: i64) -> Result<(), Refusal> {
        let unverified: Claims = jsonwebtoken::dangerous::insecure_decode(assertion)
            .map(|d| d.claims)
            .map_err(|_| Refusal::invalid_jwt("The token format isn't proper."))?;
        let issuer = unverified.iss.clone().unwrap_or_default();
        let subject = unverified.sub.clone().unwrap_or_default();
        let no_match = || {
            Refusal::new(
                401,
                "unauthorized_client",
                70021,
                format!(
                    "No matching federated identity record found for presented assertion. \
                     Assertion Issuer: '{issuer}'. Assertion Subject: '{subject}'."
                ),
            )
        };
        let candidates: Vec<&(FederatedIssuer, DecodingKey)> = self
            .federated
            .iter()
            .filter(|(f, _)| f.issuer == issuer)
            .collect();
        if candidates.is_empty() {
            return Err(no_match());
        }
        // Every credential of this issuer shares its keys: the signature first.
        let claims = decode(assertion, &candidates[0].1).map_err(|_| {
            Refusal::invalid_jwt("External ID token from issuer failed signature verification.")
        })?;
        let matched = candidates.iter().any(|(f, _)| {
            f.subject == subject && claims.aud.as_ref().is_some_and(|a| a.contains(&f.audience))
        });
        if !matched {
            return Err(no_match());
        }
        in_time(&claims, now)
    }
}

/// Verifies the RS256 signature only (times and audience are checked by the caller, to answer
/// each with its own code).
fn decode(assertion: &str, key: &DecodingKey) -> Result<Claims, ErrorKind> {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Claims>(assertion, key, &validation)
        .map(|d| d.claims)
        .map_err(|e| e.into_kind())
}

fn in_time(claims: &Claims, now: i64) -> Result<(), Refusal> {
    let exp = claims.exp.unwrap_or(i64::MIN);
    let nbf = claims.nbf.unwrap_or(i64::MIN);
    if now > exp.saturating_add(CLOCK_SKEW_SECONDS) || now < nbf.saturating_sub(CLOCK_SKEW_SECONDS)
    {
        return Err(Refusal::new(
            401,
            "invalid_client",
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {now}, \
                 assertion valid from {nbf} to {exp}."
            ),
        ));
    }
    Ok(())
}
