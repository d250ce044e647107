//! Whether the service still has access to the tenant: a credential refused (401 that a new
//! token does not cure, or the token endpoint refusing the credential) or a permission revoked
//! (403) is a fault of the service, not of the users it works on (contract `tenant.md`,
//! "Production identity"). The engine holds the work that meets it ([`crate::engine`]); this
//! module names the condition and keeps it visible (`/readyz`, a gauge) until a call succeeds.
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;

use super::error::TenantError;
use crate::telemetry::metrics as m;

/// The detail code of a job held for lost access (contract 1.1): only ever in a held job's
/// detail, never an item's final code.
pub const TENANT_ACCESS_LOST: &str = "tenant_access_lost";

/// Why access was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLossReason {
    /// The token endpoint refused the credential, or Graph kept refusing fresh tokens (401).
    Credential,
    /// Graph refused the application (403 `Authorization_RequestDenied`): a permission revoked.
    Permission,
}

impl AccessLossReason {
    /// Every value (the `reason` label of the access metrics).
    pub const ALL: [Self; 2] = [Self::Credential, Self::Permission];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Credential => "credential",
            Self::Permission => "permission",
        }
    }
}

impl TenantError {
    /// Whether this failure means the service has lost its access to the tenant, and why:
    /// [`TenantError::Auth`] (the transport already tried a fresh token once) and
    /// [`TenantError::Forbidden`] (Graph answers 403 when the application lacks the permission,
    /// microsoft-graph-docs-contrib `concepts/errors.md`).
    pub fn access_lost(&self) -> Option<AccessLossReason> {
        match self {
            Self::Auth(_) => Some(AccessLossReason::Credential),
            Self::Forbidden(_) => Some(AccessLossReason::Permission),
            _ => None,
        }
    }
}

/// A loss of access, as `/readyz` and a held job's detail show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessLoss {
    /// Always [`TENANT_ACCESS_LOST`].
    pub code: &'static str,
    pub reason: AccessLossReason,
    /// The tenant's words (an AADSTS code, a Graph error), never key material.
    pub detail: String,
    pub since: DateTime<Utc>,
}

impl AccessLoss {
    pub fn new(reason: AccessLossReason, detail: impl Into<String>) -> Self {
        Self {
            code: TENANT_ACCESS_LOST,
            reason,
            detail: detail.into(),
            since: Utc::now(),
        }
    }
}

/// This process's view of its access to the tenant: lost when a call meets an access failure,
/// restored when a call succeeds. Shared by the engine (which reports) and `/readyz`.
#[derive(Debug, Default)]
pub struct AccessWatch {
    lost: Mutex<Option<AccessLoss>>,
}

impl AccessWatch {
    /// Record that access is lost (the first loss's time is kept while it lasts).
    pub fn lost(&self, reason: AccessLossReason, detail: &str) {
        let mut lost = self.lost.lock();
        if lost.as_ref().is_some_and(|l| l.reason == reason) {
            return;
        }
        tracing::error!(
            reason = reason.as_str(),
            detail,
            "the tenant refuses the service's access; jobs hold until it is back"
        );
        *lost = Some(AccessLoss::new(reason, detail));
        for r in AccessLossReason::ALL {
            metrics::gauge!(m::TENANT_ACCESS_LOST, "reason" => r.as_str()).set(if r == reason {
                1.0
            } else {
                0.0
            });
        }
    }

    /// Record that a call succeeded: access is back (if it was lost).
    pub fn restored(&self) {
        let mut lost = self.lost.lock();
        if let Some(was) = lost.take() {
            tracing::info!(
                reason = was.reason.as_str(),
                since = %was.since,
                "access to the tenant is back; held jobs resume"
            );
            for r in AccessLossReason::ALL {
                metrics::gauge!(m::TENANT_ACCESS_LOST, "reason" => r.as_str()).set(0.0);
            }
        }
    }

    /// The loss in force, if any.
    pub fn current(&self) -> Option<AccessLoss> {
        self.lost.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_and_forbidden_are_access_losses_others_are_not() {
        assert_eq!(
            TenantError::Auth("AADSTS7000112".into()).access_lost(),
            Some(AccessLossReason::Credential)
        );
        assert_eq!(
            TenantError::Forbidden("Authorization_RequestDenied".into()).access_lost(),
            Some(AccessLossReason::Permission)
        );
        assert_eq!(TenantError::Transient("503".into()).access_lost(), None);
        assert_eq!(TenantError::UserNotFound("x".into()).access_lost(), None);
    }

    #[test]
    fn a_loss_lasts_until_a_call_succeeds() {
        let watch = AccessWatch::default();
        assert!(watch.current().is_none());
        watch.lost(
            AccessLossReason::Credential,
            "AADSTS7000112: Application is disabled.",
        );
        let since = watch.current().unwrap().since;
        watch.lost(AccessLossReason::Credential, "again");
        let loss = watch.current().unwrap();
        assert_eq!(loss.since, since, "the first loss's time is kept");
        assert_eq!(loss.code, TENANT_ACCESS_LOST);
        watch.restored();
        assert!(watch.current().is_none());
    }
}
