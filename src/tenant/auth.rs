//! OAuth 2.0 client credentials: fetching, caching and renewing the access token.
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::error::TenantError;
use super::events::{TokenEndpointAnswered, TokenEndpointUnreachable, TokenFetched, TokenRefused};
use super::settings::TenantSettings;
use crate::telemetry::emit;

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
    client_secret: SecretString,
    scope: String,
    margin: Duration,
    /// A tokio mutex: concurrent callers wait for one fetch instead of each fetching.
    cached: Mutex<Option<Cached>>,
}

impl TokenSource {
    pub(crate) fn new(http: reqwest::Client, s: &TenantSettings) -> Self {
        Self {
            http,
            url: format!(
                "{}/{}/oauth2/v2.0/token",
                s.login_base_url.trim_end_matches('/'),
                s.tenant_id
            ),
            client_id: s.client_id.clone(),
            client_secret: s.client_secret.clone(),
            scope: s.scope.clone(),
            margin: Duration::from_secs(s.token_refresh_margin_seconds),
            cached: Mutex::new(None),
        }
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
        let form = [
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
            ("scope", self.scope.as_str()),
            ("grant_type", "client_credentials"),
        ];
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
