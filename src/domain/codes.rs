//! The bounded set of failure codes used in `job.completed` failures and in the
//! `x-reconciler-error` header of dead letters.

use schemars::JsonSchema;
use serde::Serialize;

/// A stable snake_case word saying why an item or a message failed. Adding a variant is a
/// contract change: document it in the failure-code table of docs/architecture.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The body is not JSON, or a field has the wrong shape.
    InvalidMessage,
    /// A required field is absent.
    MissingField,
    /// `type` names no job type of the contract.
    UnknownType,
    /// `schema_version` is not one this worker speaks.
    UnsupportedSchemaVersion,
    /// An email address is not one.
    InvalidEmail,
    /// `total_members` differs from the number of `members`.
    MemberCountMismatch,
    /// The policy names a licence the tenant does not have.
    UnknownLicence,
    /// A toggle names a plan the licence lacks.
    UnknownServicePlan,
    /// A member policy job for a policy whose definition never arrived.
    UnknownPolicy,
    UserNotFound,
    /// An address matches several users (by mail, or by proxy address).
    UserAmbiguous,
    UsageLocationMissing,
    NoSeatsAvailable,
    MutuallyExclusiveLicence,
    /// Toggles disable a plan that an enabled plan requires (the detail names both), found at
    /// planning against the dependency table or refused by the tenant.
    ServicePlanDependency,
    /// What the policy asks cannot be reached by direct assignment because a group-based
    /// licence enables or holds it (the detail names the group).
    LicenceInheritedFromGroup,
    AdminLimitReached,
    /// The user already holds the other Phone System admin role.
    RoleConflict,
    DuplicateEmail,
    MissingEmail,
    Forbidden,
    /// The tenant kept failing transiently past the retry budget.
    TenantUnavailable,
    /// The write was made but reading back did not show the desired state.
    VerificationFailed,
    /// An operator cancelled the job before this item was reached.
    Cancelled,
    /// A newer policy version took over this item.
    Superseded,
    /// Anything else the tenant refused; the detail says what.
    TenantRejected,
    /// Portal access: an organisation record (only individuals get access).
    NotAnIndividual,
    /// Portal access: the contact's council is not a member.
    NotMember,
    /// Portal access: the contact already has access, or was already invited.
    AlreadyHasAccess,
    /// Portal access: the contact's `clerk_until` date has passed.
    ClerkTermEnded,
    /// Portal access: no contact with this id was ever granted (stored).
    UnknownContact,
    /// Portal access: a reminder for a contact that was never invited.
    NotInvited,
    /// Portal access: a reminder for a contact that has already activated.
    AlreadyActivated,
    /// Contract 1.1, guard rails on large changes: a job waiting for approval longer than
    /// `engine.approval.wait_seconds` ends rejected with it.
    AwaitingApprovalExpired,
    /// Contract 1.1: the service lost its access to the tenant; only in the detail of a held
    /// job (its chunks wait until access is back), never an item's final code.
    TenantAccessLost,
}

impl FailureCode {
    /// Every code, for documentation and metric label sets.
    pub const ALL: &'static [FailureCode] = &[
        Self::InvalidMessage,
        Self::MissingField,
        Self::UnknownType,
        Self::UnsupportedSchemaVersion,
        Self::InvalidEmail,
        Self::MemberCountMismatch,
        Self::UnknownLicence,
        Self::UnknownServicePlan,
        Self::UnknownPolicy,
        Self::UserNotFound,
        Self::UserAmbiguous,
        Self::UsageLocationMissing,
        Self::NoSeatsAvailable,
        Self::MutuallyExclusiveLicence,
        Self::ServicePlanDependency,
        Self::LicenceInheritedFromGroup,
        Self::AdminLimitReached,
        Self::RoleConflict,
        Self::DuplicateEmail,
        Self::MissingEmail,
        Self::Forbidden,
        Self::TenantUnavailable,
        Self::VerificationFailed,
        Self::Cancelled,
        Self::Superseded,
        Self::TenantRejected,
        Self::NotAnIndividual,
        Self::NotMember,
        Self::AlreadyHasAccess,
        Self::ClerkTermEnded,
        Self::UnknownContact,
        Self::NotInvited,
        Self::AlreadyActivated,
        Self::AwaitingApprovalExpired,
        Self::TenantAccessLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidMessage => "invalid_message",
            Self::MissingField => "missing_field",
            Self::UnknownType => "unknown_type",
            Self::UnsupportedSchemaVersion => "unsupported_schema_version",
            Self::InvalidEmail => "invalid_email",
            Self::MemberCountMismatch => "member_count_mismatch",
            Self::UnknownLicence => "unknown_licence",
            Self::UnknownServicePlan => "unknown_service_plan",
            Self::UnknownPolicy => "unknown_policy",
            Self::UserNotFound => "user_not_found",
            Self::UserAmbiguous => "user_ambiguous",
            Self::UsageLocationMissing => "usage_location_missing",
            Self::NoSeatsAvailable => "no_seats_available",
            Self::MutuallyExclusiveLicence => "mutually_exclusive_licence",
            Self::ServicePlanDependency => "service_plan_dependency",
            Self::LicenceInheritedFromGroup => "licence_inherited_from_group",
            Self::AdminLimitReached => "admin_limit_reached",
            Self::RoleConflict => "role_conflict",
            Self::DuplicateEmail => "duplicate_email",
            Self::MissingEmail => "missing_email",
            Self::Forbidden => "forbidden",
            Self::TenantUnavailable => "tenant_unavailable",
            Self::VerificationFailed => "verification_failed",
            Self::Cancelled => "cancelled",
            Self::Superseded => "superseded",
            Self::TenantRejected => "tenant_rejected",
            Self::NotAnIndividual => "not_an_individual",
            Self::NotMember => "not_member",
            Self::AlreadyHasAccess => "already_has_access",
            Self::ClerkTermEnded => "clerk_term_ended",
            Self::UnknownContact => "unknown_contact",
            Self::NotInvited => "not_invited",
            Self::AlreadyActivated => "already_activated",
            Self::AwaitingApprovalExpired => "awaiting_approval_expired",
            Self::TenantAccessLost => "tenant_access_lost",
        }
    }
}

impl std::fmt::Display for FailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_form_is_as_str() {
        for code in FailureCode::ALL {
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
