//! `[console]`: the operator console and its JSON API on the worker's HTTP endpoint, and who
//! may use them.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// What a user of the console may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleRole {
    /// Reads every page and the API; no operator action.
    Reader,
    /// Reads, and uses the operator actions (pause, resume, expedite, cancel, approve).
    Operator,
}

impl ConsoleRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Operator => "operator",
        }
    }
}

/// A bearer token from the configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleToken {
    pub role: ConsoleRole,
    #[serde(serialize_with = "super::parse::redacted")]
    pub token: SecretString,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Serve `/console` and `/api/v1` on the worker's HTTP endpoint.
    pub enabled: bool,
    /// Local development only: a request without a credential is an operator named
    /// `local-dev`. Never in production: anyone who reaches the port may act.
    pub allow_unauthenticated: bool,
    /// Behind a reverse proxy that authenticates users: the header carrying the user's name
    /// (empty: not trusted). The proxy must strip this header from what clients send.
    pub identity_header: String,
    /// With `identity_header`: the header carrying the user's role (`operator` or `reader`);
    /// missing or anything else means `reader`.
    pub role_header: String,
    /// Bearer tokens by user name: `[console.tokens.NAME]` with `role` and `token`
    /// (`RECONCILER__CONSOLE__TOKENS__NAME__TOKEN`). Also accepted by the console's sign-in form.
    #[serde(default)]
    pub tokens: BTreeMap<String, ConsoleToken>,
}

impl ConsoleSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (name, token) in &self.tokens {
            if token.token.expose_secret().len() < 16 {
                return Err(ConfigError::invalid(
                    "console.tokens",
                    format!("the token of {name:?} is shorter than 16 characters"),
                ));
            }
        }
        Ok(())
    }
}
