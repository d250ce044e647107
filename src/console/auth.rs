//! Who is asking, and what they may do. An internal tool behind a reverse proxy, so:
//!
//! - `Authorization: Bearer TOKEN`, a token from `[console.tokens]` (scripts, the API);
//! - the same token given once to the sign-in form, kept in an `HttpOnly`, `SameSite=Strict`
//!   cookie (browsers);
//! - or the proxy's identity header (`console.identity_header`, role from
//!   `console.role_header`), when configured;
//! - or nobody: refused, unless `console.allow_unauthenticated` (local development only).
//!
//! A browser sends cookies and proxy headers by itself, so its POSTs must also carry the
//! CSRF token (double submit: the `pr_csrf` cookie's value in the form's `csrf` field or the
//! `x-csrf-token` header; another site can neither read nor set the cookie). A bearer token is
//! never sent by a browser unasked, so API calls with one need no CSRF token.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use super::Console;
use crate::configuration::{ConsoleRole, ConsoleSettings};

/// The session cookie (holds the sign-in token) and the CSRF cookie.
pub const SESSION_COOKIE: &str = "pr_console";
pub const CSRF_COOKIE: &str = "pr_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The name a request gets under `console.allow_unauthenticated`.
pub const LOCAL_DEV: &str = "local-dev";

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Bearer,
    Cookie,
    ProxyHeader,
    Unauthenticated,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub role: ConsoleRole,
    pub via: Via,
    /// The CSRF cookie's value, when the browser has one.
    pub csrf: Option<String>,
}

impl Identity {
    pub fn is_operator(&self) -> bool {
        self.role == ConsoleRole::Operator
    }

    /// Whether a POST carrying `token` (the form's or the header's) is this user's own: always
    /// for a bearer token, else the CSRF cookie must be present and equal.
    pub fn csrf_ok(&self, token: Option<&str>) -> bool {
        if self.via == Via::Bearer {
            return true;
        }
        match (&self.csrf, token) {
            (Some(cookie), Some(token)) if !cookie.is_empty() => {
                constant_time_eq(cookie.as_bytes(), token.as_bytes())
            }
            _ => false,
        }
    }
}

/// The configured credentials.
pub struct Auth {
    /// (name, role, SHA-256 of the token): tokens are compared by digest, in constant time.
    tokens: Vec<(String, ConsoleRole, [u8; 32])>,
    identity_header: Option<String>,
    role_header: Option<String>,
    allow_unauthenticated: bool,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub fn new(settings: &ConsoleSettings) -> Self {
        let header = |h: &str| (!h.trim().is_empty()).then(|| h.trim().to_ascii_lowercase());
        Self {
            tokens: settings
                .tokens
                .iter()
                .map(|(name, t)| (name.clone(), t.role, digest(t.token.expose_secret())))
                .collect(),
            identity_header: header(&settings.identity_header),
            role_header: header(&settings.role_header),
            allow_unauthenticated: settings.allow_unauthenticated,
        }
    }

    /// The user a token belongs to.
    pub fn token_user(&self, token: &str) -> Option<(String, ConsoleRole)> {
        let given = digest(token.trim());
        self.tokens
            .iter()
            .find(|(_, _, d)| constant_time_eq(d, &given))
            .map(|(name, role, _)| (name.clone(), *role))
    }

    /// Who sent `headers`, or `None` when nobody is recognised.
    pub fn identify(&self, headers: &HeaderMap) -> Option<Identity> {
        let csrf = cookie(headers, CSRF_COOKIE);
        let identity = |name: String, role, via| Identity {
            name,
            role,
            via,
            csrf: csrf.clone(),
        };
        if let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            // A wrong bearer token is refused outright, never treated as no credential.
            return self
                .token_user(token)
                .map(|(name, role)| identity(name, role, Via::Bearer));
        }
        if let Some((name, role)) =
            cookie(headers, SESSION_COOKIE).and_then(|t| self.token_user(&t))
        {
            return Some(identity(name, role, Via::Cookie));
        }
        if let Some(name) = self.identity_header.as_ref().and_then(|h| {
            headers
                .get(h.as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        }) {
            let role = self
                .role_header
                .as_ref()
                .and_then(|h| headers.get(h.as_str()))
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.trim().eq_ignore_ascii_case("operator"))
                .map_or(ConsoleRole::Reader, |_| ConsoleRole::Operator);
            return Some(identity(name.to_owned(), role, Via::ProxyHeader));
        }
        if self.allow_unauthenticated && !headers.contains_key(header::AUTHORIZATION) {
            return Some(identity(
                LOCAL_DEV.to_owned(),
                ConsoleRole::Operator,
                Via::Unauthenticated,
            ));
        }
        None
    }
}

/// A cookie's value.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Refused: the API answers 401 (no or a wrong credential) as JSON; a page sends the browser
/// to the sign-in form.
pub struct Unauthenticated {
    api: bool,
}

impl IntoResponse for Unauthenticated {
    fn into_response(self) -> Response {
        if self.api {
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(serde_json::json!({ "error": "authentication required" })),
            )
                .into_response()
        } else {
            Redirect::to("/console/login").into_response()
        }
    }
}

impl FromRequestParts<Console> for Identity {
    type Rejection = Unauthenticated;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Console,
    ) -> Result<Self, Self::Rejection> {
        state
            .auth
            .identify(&parts.headers)
            .ok_or_else(|| Unauthenticated {
                api: parts.uri.path().starts_with("/api/"),
            })
    }
}

/// A fresh CSRF token (random, 128 bits).
pub fn new_csrf_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The `Set-Cookie` value of a CSRF token.
pub fn csrf_cookie(token: &str) -> String {
    format!("{CSRF_COOKIE}={token}; Path=/; SameSite=Strict")
}

/// The `Set-Cookie` value of a session holding `token` (`None`: sign out).
pub fn session_cookie(token: Option<&str>) -> String {
    match token {
        Some(token) => format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"),
        None => format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::ConsoleToken;

    fn auth(allow: bool) -> Auth {
        let mut settings = ConsoleSettings {
            enabled: true,
            allow_unauthenticated: allow,
            identity_header: "X-Forwarded-User".into(),
            role_header: "X-Forwarded-Role".into(),
            tokens: Default::default(),
        };
        settings.tokens.insert(
            "ops".into(),
            ConsoleToken {
                role: ConsoleRole::Operator,
                token: "operator-token-0123456789".to_owned().into(),
            },
        );
        Auth::new(&settings)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn credentials_in_order() {
        let auth = auth(false);
        assert!(auth.identify(&headers(&[])).is_none());
        let who = auth
            .identify(&headers(&[(
                "authorization",
                "Bearer operator-token-0123456789",
            )]))
            .unwrap();
        assert_eq!(
            (who.name.as_str(), who.role, who.via),
            ("ops", ConsoleRole::Operator, Via::Bearer)
        );
        assert!(
            auth.identify(&headers(&[("authorization", "Bearer wrong")]))
                .is_none()
        );
        let who = auth
            .identify(&headers(&[(
                "cookie",
                "a=b; pr_console=operator-token-0123456789",
            )]))
            .unwrap();
        assert_eq!(who.via, Via::Cookie);
        let who = auth
            .identify(&headers(&[("x-forwarded-user", "jane")]))
            .unwrap();
        assert_eq!((who.name.as_str(), who.role), ("jane", ConsoleRole::Reader));
        let who = auth
            .identify(&headers(&[
                ("x-forwarded-user", "jane"),
                ("x-forwarded-role", "operator"),
            ]))
            .unwrap();
        assert_eq!(who.role, ConsoleRole::Operator);
        let open = super::tests::auth(true);
        assert_eq!(open.identify(&headers(&[])).unwrap().name, LOCAL_DEV);
    }

    #[test]
    fn csrf_is_double_submit_except_for_bearer_tokens() {
        let auth = auth(false);
        let browser = auth
            .identify(&headers(&[(
                "cookie",
                "pr_console=operator-token-0123456789; pr_csrf=abc",
            )]))
            .unwrap();
        assert!(browser.csrf_ok(Some("abc")));
        assert!(!browser.csrf_ok(Some("abd")));
        assert!(!browser.csrf_ok(None));
        let no_cookie = auth
            .identify(&headers(&[(
                "cookie",
                "pr_console=operator-token-0123456789",
            )]))
            .unwrap();
        assert!(!no_cookie.csrf_ok(Some("")));
        let script = auth
            .identify(&headers(&[(
                "authorization",
                "Bearer operator-token-0123456789",
            )]))
            .unwrap();
        assert!(script.csrf_ok(None));
    }
}
