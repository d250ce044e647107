//! The engine's error, and the failure code an item gets for a tenant error.

use crate::domain::FailureCode;
use crate::store::StoreError;
use crate::tenant::TenantError;

/// An engine failure. Transient ones (database or tenant unavailable) leave the job or chunk
/// to be tried again; permanent ones are bugs or corrupt data, logged loudly.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tenant: {0}")]
    Tenant(#[from] TenantError),
    #[error("stored job is inconsistent: {0}")]
    Corrupt(String),
}

impl EngineError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(e) => e.is_transient(),
            Self::Tenant(e) => e.is_transient(),
            Self::Corrupt(_) => false,
        }
    }
}

impl From<sqlx::Error> for EngineError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

/// The failure code for a tenant error on an item.
pub fn failure_code(error: &TenantError) -> FailureCode {
    match error {
        TenantError::UserNotFound(_) => FailureCode::UserNotFound,
        TenantError::UserAmbiguous(_) => FailureCode::UserAmbiguous,
        TenantError::UsageLocationMissing(_) => FailureCode::UsageLocationMissing,
        TenantError::NoSeatsAvailable(_) => FailureCode::NoSeatsAvailable,
        TenantError::UnknownServicePlan(_) => FailureCode::UnknownServicePlan,
        TenantError::UnknownLicence(_) => FailureCode::UnknownLicence,
        TenantError::MutuallyExclusiveLicence(_) => FailureCode::MutuallyExclusiveLicence,
        TenantError::ServicePlanDependency(_) => FailureCode::ServicePlanDependency,
        TenantError::LicenceInherited(_) => FailureCode::LicenceInheritedFromGroup,
        TenantError::Forbidden(_) => FailureCode::Forbidden,
        TenantError::Throttled { .. } | TenantError::Transient(_) | TenantError::Auth(_) => {
            FailureCode::TenantUnavailable
        }
        TenantError::NotConverged(_) => FailureCode::VerificationFailed,
        TenantError::Postponed { error, .. } => failure_code(error),
        _ => FailureCode::TenantRejected,
    }
}
