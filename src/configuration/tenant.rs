//! `[tenant]`: settings of the Graph client ([`crate::tenant::GraphClient`]).
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::parse::at_least_one;

/// Where and how the reconciler talks to Microsoft Graph (or the simulator).
///
/// Missing keys take the defaults of [`TenantSettings::default`], which match `config/default.toml`
/// and point at a local simulator.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSettings {
    /// Base URL of Graph, without `/v1.0` (`https://graph.microsoft.com` for real Graph).
    pub graph_base_url: String,
    /// Base URL of the identity platform (`https://login.microsoftonline.com` for real Entra ID).
    pub login_base_url: String,
    /// Directory (tenant) id or domain used in the token URL.
    pub tenant_id: String,
    /// Application (client) id.
    pub client_id: String,
    /// How the application proves its identity to the token endpoint (see [`Credential`]).
    pub credential: Credential,
    /// Client secret (`credential = "secret"`); redacted in `Debug`.
    #[serde(serialize_with = "super::parse::redacted")]
    pub client_secret: SecretString,
    /// PEM file of the application's certificate (`credential = "certificate"`); its SHA-256
    /// thumbprint goes in every client assertion's `x5t#S256` header.
    pub client_certificate_path: Option<PathBuf>,
    /// PEM file of the certificate's private key (PKCS#8 or PKCS#1 RSA), which signs the
    /// client assertions (`credential = "certificate"`). Only its path is ever printed.
    pub client_key_path: Option<PathBuf>,
    /// File holding the federated token (`credential = "federated"`): the projected
    /// service-account token of AKS workload identity, read again at every token fetch because
    /// the kubelet rotates it. When unset, `AZURE_FEDERATED_TOKEN_FILE`.
    pub federated_token_file: Option<PathBuf>,
    /// Lifetime of a client assertion signed with the certificate (short: it is made afresh,
    /// with a new `jti`, for every token fetch).
    pub client_assertion_lifetime_seconds: u64,
    /// OAuth2 scope requested (client credentials need the `/.default` form).
    pub scope: String,
    /// A token is renewed this long before it expires, so no request carries an expiring token.
    pub token_refresh_margin_seconds: u64,
    /// Timeout of one HTTP request.
    pub request_timeout_ms: u64,
    /// Timeout of establishing a connection.
    pub connect_timeout_ms: u64,
    /// Requests per `$batch` (Graph allows at most 20).
    #[serde(deserialize_with = "at_least_one")]
    pub batch_size: NonZeroUsize,
    /// `$batch` calls in flight at once for one operation.
    #[serde(deserialize_with = "at_least_one")]
    pub batch_concurrency: NonZeroUsize,
    /// Sends of one request (or inner request of a `$batch`), the first included; which
    /// failures are sent again is in [`crate::tenant::graph`]'s docs.
    #[serde(deserialize_with = "at_least_one")]
    pub max_attempts: NonZeroU32,
    /// First back-off delay after a transient failure (exponential with jitter after that).
    pub retry_min_delay_ms: u64,
    /// Longest back-off delay after a transient failure.
    pub retry_max_delay_ms: u64,
    /// Longest `Retry-After` honoured; longer ones are capped (the request then may be throttled again).
    pub max_retry_after_seconds: u64,
    /// Writes per second this process sends (token bucket); 0 disables the limit.
    pub writes_per_second: f64,
    /// Writes that may be sent at once (bucket capacity). Write `$batch` calls hold at most this
    /// many requests, so a batch never exceeds the budget on its own.
    #[serde(deserialize_with = "at_least_one")]
    pub write_burst: NonZeroU32,
    /// Writes per 5 minutes that every application of the tenant may make together (Graph's
    /// identity limit "per tenant for all apps": 18,000 per 5 minutes, microsoft-graph-docs-contrib
    /// `concepts/throttling-limits.md`).
    pub tenant_write_quota_per_5_minutes: u32,
    /// The share (0 to 1) of that tenant-wide quota this service may use: other applications
    /// (the portal, sync tools) write to the same tenant.
    pub tenant_quota_share: f64,
    /// Enforce `writes_per_second` across all worker replicas together (a token bucket in
    /// PostgreSQL, adaptive to 429s) instead of per process.
    pub shared_write_budget: bool,
    /// How long the SKU catalogue is cached before it is read again.
    pub sku_cache_ttl_seconds: u64,
}

impl Default for TenantSettings {
    fn default() -> Self {
        Self {
            graph_base_url: "http://127.0.0.1:8900".to_owned(),
            login_base_url: "http://127.0.0.1:8900".to_owned(),
            tenant_id: "simulated-tenant".to_owned(),
            client_id: "policy-reconciler-dev".to_owned(),
            credential: Credential::Secret,
            client_secret: SecretString::from("simulator-secret"),
            client_certificate_path: None,
            client_key_path: None,
            federated_token_file: None,
            client_assertion_lifetime_seconds: 600,
            scope: "https://graph.microsoft.com/.default".to_owned(),
            token_refresh_margin_seconds: 300,
            request_timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
            batch_size: NonZeroUsize::new(20).expect("not zero"),
            batch_concurrency: NonZeroUsize::new(4).expect("not zero"),
            max_attempts: NonZeroU32::new(6).expect("not zero"),
            retry_min_delay_ms: 200,
            retry_max_delay_ms: 30_000,
            max_retry_after_seconds: 300,
            writes_per_second: 18.0,
            write_burst: NonZeroU32::new(20).expect("not zero"),
            tenant_write_quota_per_5_minutes: 18_000,
            tenant_quota_share: 0.5,
            shared_write_budget: true,
            sku_cache_ttl_seconds: 3_600,
        }
    }
}

/// How the application authenticates to Entra ID (`tenant.credential`): all three use the
/// OAuth 2.0 client credentials grant, and differ in what proves the application's identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// `client_secret`: for development and the simulator only.
    #[default]
    Secret,
    /// A client assertion (JWT, RS256) signed with the private key of a certificate registered
    /// on the application (MicrosoftDocs/entra-docs `docs/identity-platform/certificate-credentials.md`).
    Certificate,
    /// Workload identity federation: the client assertion is a token from a trusted issuer
    /// (AKS's service-account token), read from `federated_token_file`
    /// (MicrosoftDocs/entra-docs `docs/workload-id/workload-identity-federation.md`).
    Federated,
}

impl Credential {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Certificate => "certificate",
            Self::Federated => "federated",
        }
    }
}

/// The variables the Azure Workload Identity webhook injects into a pod whose service account
/// is annotated for it (and that the Azure SDKs' `WorkloadIdentityCredential` reads).
pub const AZURE_CLIENT_ID: &str = "AZURE_CLIENT_ID";
pub const AZURE_TENANT_ID: &str = "AZURE_TENANT_ID";
pub const AZURE_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
pub const AZURE_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";

impl TenantSettings {
    /// With `credential = "federated"`, take the identity from the variables the workload
    /// identity webhook injects, as the Azure SDKs' `WorkloadIdentityCredential` does:
    /// `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST` (the login base URL) when
    /// set win over the configuration (the webhook writes them from the service account the pod
    /// runs as, which is what the federated credential trusts), and `AZURE_FEDERATED_TOKEN_FILE`
    /// is the token file unless `federated_token_file` is set. Other credentials ignore them.
    pub fn apply_azure_environment(&mut self, var: impl Fn(&str) -> Option<String>) {
        if self.credential != Credential::Federated {
            return;
        }
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = var(AZURE_CLIENT_ID) {
            self.client_id = v;
        }
        if let Some(v) = var(AZURE_TENANT_ID) {
            self.tenant_id = v;
        }
        if let Some(v) = var(AZURE_AUTHORITY_HOST) {
            self.login_base_url = v.trim_end_matches('/').to_owned();
        }
        if self.federated_token_file.is_none() {
            self.federated_token_file = var(AZURE_FEDERATED_TOKEN_FILE).map(PathBuf::from);
        }
    }

    /// One line naming the credential in use and where its material is, never the material
    /// itself (`check-config` prints it).
    pub fn credential_summary(&self) -> String {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or_else(|| "(not set)".to_owned(), |p| p.display().to_string())
        };
        match self.credential {
            Credential::Secret => format!(
                "tenant credential: secret (client {}, tenant {}; the secret is not shown)",
                self.client_id, self.tenant_id
            ),
            Credential::Certificate => format!(
                "tenant credential: certificate (client {}, tenant {}, certificate {}, key {})",
                self.client_id,
                self.tenant_id,
                path(&self.client_certificate_path),
                path(&self.client_key_path)
            ),
            Credential::Federated => format!(
                "tenant credential: federated (client {}, tenant {}, token file {}, authority {})",
                self.client_id,
                self.tenant_id,
                path(&self.federated_token_file),
                self.login_base_url
            ),
        }
    }

    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        match self.credential {
            Credential::Secret => {}
            Credential::Certificate => {
                for (key, value) in [
                    (
                        "tenant.client_certificate_path",
                        &self.client_certificate_path,
                    ),
                    ("tenant.client_key_path", &self.client_key_path),
                ] {
                    if value.is_none() {
                        return Err(super::ConfigError::invalid(
                            key,
                            "is required with tenant.credential = \"certificate\"".to_owned(),
                        ));
                    }
                }
            }
            Credential::Federated => {
                if self.federated_token_file.is_none() {
                    return Err(super::ConfigError::invalid(
                        "tenant.federated_token_file",
                        "is required with tenant.credential = \"federated\" (or set AZURE_FEDERATED_TOKEN_FILE)"
                            .to_owned(),
                    ));
                }
            }
        }
        if self.client_assertion_lifetime_seconds == 0 {
            return Err(super::ConfigError::invalid(
                "tenant.client_assertion_lifetime_seconds",
                "must be at least 1".to_owned(),
            ));
        }
        if !(self.tenant_quota_share > 0.0 && self.tenant_quota_share <= 1.0) {
            return Err(super::ConfigError::invalid(
                "tenant.tenant_quota_share",
                format!(
                    "must be above 0 and at most 1 ({})",
                    self.tenant_quota_share
                ),
            ));
        }
        Ok(())
    }

    /// The write rate the service keeps to: `writes_per_second` (the per-application limit,
    /// with a margin), but never more than its share of the tenant-wide quota. 0: unlimited.
    pub fn effective_writes_per_second(&self) -> f64 {
        if self.writes_per_second <= 0.0 {
            return 0.0;
        }
        let share = f64::from(self.tenant_write_quota_per_5_minutes)
            * self.tenant_quota_share.clamp(0.0, 1.0)
            / 300.0;
        self.writes_per_second.min(share)
    }

    /// Settings for a client of a simulator at `base_url` (Graph and login), with fast retries
    /// and no write limit: what tests want.
    pub fn for_simulator(base_url: &str) -> Self {
        Self {
            graph_base_url: base_url.to_owned(),
            login_base_url: base_url.to_owned(),
            retry_min_delay_ms: 10,
            retry_max_delay_ms: 200,
            writes_per_second: 0.0,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_write_rate_keeps_to_the_share_of_the_tenant_quota() {
        let mut s = TenantSettings::default();
        // 18,000 per 5 minutes, half of it: 30 a second, above the 18 asked for.
        assert_eq!(s.effective_writes_per_second(), 18.0);
        s.tenant_quota_share = 0.1;
        assert_eq!(s.effective_writes_per_second(), 6.0);
        s.writes_per_second = 0.0;
        assert_eq!(s.effective_writes_per_second(), 0.0);
    }

    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn default_toml_matches_the_defaults() {
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(
                include_str!("../../config/default.toml"),
                config::FileFormat::Toml,
            ))
            .build()
            .unwrap();
        let s: TenantSettings = cfg.get("tenant").unwrap();
        let d = TenantSettings::default();
        assert_eq!(s.graph_base_url, d.graph_base_url);
        assert_eq!(s.login_base_url, d.login_base_url);
        assert_eq!(s.client_id, d.client_id);
        assert_eq!(
            s.client_secret.expose_secret(),
            d.client_secret.expose_secret()
        );
        assert_eq!(
            s.token_refresh_margin_seconds,
            d.token_refresh_margin_seconds
        );
        assert_eq!(s.batch_size, d.batch_size);
        assert_eq!(s.batch_concurrency, d.batch_concurrency);
        assert_eq!(s.max_attempts, d.max_attempts);
        assert_eq!(s.writes_per_second, d.writes_per_second);
        assert_eq!(s.write_burst, d.write_burst);
        assert_eq!(
            s.tenant_write_quota_per_5_minutes,
            d.tenant_write_quota_per_5_minutes
        );
        assert_eq!(s.tenant_quota_share, d.tenant_quota_share);
        assert_eq!(s.sku_cache_ttl_seconds, d.sku_cache_ttl_seconds);
        assert_eq!(s.credential, d.credential);
        assert_eq!(
            s.client_assertion_lifetime_seconds,
            d.client_assertion_lifetime_seconds
        );
        assert!(
            !format!("{s:?}").contains("simulator-secret"),
            "Debug redacts the secret"
        );
    }

    #[test]
    fn workload_identity_variables_fill_a_federated_credential_only() {
        let env = |k: &str| match k {
            AZURE_CLIENT_ID => Some("client-from-webhook".to_owned()),
            AZURE_TENANT_ID => Some("tenant-from-webhook".to_owned()),
            AZURE_AUTHORITY_HOST => Some("https://login.microsoftonline.us/".to_owned()),
            AZURE_FEDERATED_TOKEN_FILE => Some("/var/run/secrets/azure/tokens/t".to_owned()),
            _ => None,
        };
        let mut secret = TenantSettings::default();
        secret.apply_azure_environment(env);
        assert_eq!(
            secret.client_id, "policy-reconciler-dev",
            "other credentials ignore them"
        );

        let mut s = TenantSettings {
            credential: Credential::Federated,
            ..TenantSettings::default()
        };
        assert!(
            s.validate().is_err(),
            "a federated credential needs a token file"
        );
        s.apply_azure_environment(env);
        assert_eq!(s.client_id, "client-from-webhook");
        assert_eq!(s.tenant_id, "tenant-from-webhook");
        assert_eq!(s.login_base_url, "https://login.microsoftonline.us");
        assert_eq!(
            s.federated_token_file.as_deref(),
            Some(std::path::Path::new("/var/run/secrets/azure/tokens/t"))
        );
        s.validate().unwrap();
        assert!(
            s.credential_summary()
                .starts_with("tenant credential: federated")
        );

        // A configured token file wins over the variable.
        let mut s = TenantSettings {
            credential: Credential::Federated,
            federated_token_file: Some("/etc/token".into()),
            ..TenantSettings::default()
        };
        s.apply_azure_environment(env);
        assert_eq!(
            s.federated_token_file.as_deref(),
            Some(std::path::Path::new("/etc/token"))
        );
    }

    #[test]
    fn a_certificate_credential_needs_both_files_and_its_summary_shows_paths_only() {
        let mut s = TenantSettings {
            credential: Credential::Certificate,
            client_certificate_path: Some("/etc/c.crt".into()),
            ..TenantSettings::default()
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("tenant.client_key_path"), "{e}");
        s.client_key_path = Some("/etc/c.key".into());
        s.validate().unwrap();
        let summary = s.credential_summary();
        assert!(
            summary.contains("/etc/c.crt") && summary.contains("/etc/c.key"),
            "{summary}"
        );
        assert!(!summary.contains("simulator-secret"), "{summary}");
    }
}
