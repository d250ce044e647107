//! The bounded set of tenant failures and their stable codes.
use std::time::Duration;

/// What a Graph call can fail with, reduced to what the engine acts on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TenantError {
    /// The user does not exist (Graph 404 on a user).
    #[error("user not found: {0}")]
    UserNotFound(String),
    /// Several users answer to the address (by mail, or by proxy address).
    #[error("user ambiguous: {0}")]
    UserAmbiguous(String),
    /// A removal of a licence the user does not hold (Graph: "User does not have a
    /// corresponding license"): the change was planned from a read that is no longer the
    /// tenant's state (a stale replica, or another writer); nothing was applied.
    #[error("licence not held: {0}")]
    LicenceNotHeld(String),
    /// The user has no usage location, so no licence can be assigned.
    #[error("usage location missing: {0}")]
    UsageLocationMissing(String),
    /// The SKU has no free seat.
    #[error("no seats available: {0}")]
    NoSeatsAvailable(String),
    /// A service plan that the SKU does not have (by name in a policy, or by id at Graph).
    #[error("unknown service plan: {0}")]
    UnknownServicePlan(String),
    /// A licence (`skuPartNumber` or `skuId`) the tenant does not subscribe to.
    #[error("unknown licence: {0}")]
    UnknownLicence(String),
    /// The licence conflicts with one the user holds (Graph: "… Conflicting Service Plans:
    /// X, Y", or "… are mutually exclusive").
    #[error("mutually exclusive licence: {0}")]
    MutuallyExclusiveLicence(String),
    /// The disabled plans leave a plan on without a plan it requires (Graph: "… The service X
    /// requires Y to be enabled as well.").
    #[error("service plan dependency: {0}")]
    ServicePlanDependency(String),
    /// A removal of a licence the user holds through a group (Graph: "User license is
    /// inherited from a group membership and it cannot be removed directly from the user.").
    #[error("licence inherited from a group: {0}")]
    LicenceInherited(String),
    /// Adding a group member that is already one (an idempotent caller treats it as done).
    #[error("already a member: {0}")]
    AlreadyMember(String),
    /// Removing a group member that is not one (an idempotent caller treats it as done).
    #[error("not a member: {0}")]
    NotMember(String),
    /// Graph answered 429 and retries ran out.
    #[error("throttled by the tenant (retry after {retry_after:?})")]
    Throttled {
        /// The last `Retry-After`, when Graph sent one.
        retry_after: Option<Duration>,
    },
    /// 5xx, timeouts, dropped connections: worth retrying later.
    #[error("tenant unavailable: {0}")]
    Transient(String),
    /// A request that failed in a way worth retrying and that the call did not retry, because
    /// its caller asked for the other answers at once (see [`super::waits`]): send it again no
    /// sooner than `after`. Its code is `error`'s.
    #[error("{error} (to be asked again in {after:?})")]
    Postponed {
        /// The `Retry-After` (or back-off step) not waited for.
        after: Duration,
        /// The failure.
        error: Box<TenantError>,
    },
    /// The token could not be obtained or was refused.
    #[error("authentication with the tenant failed: {0}")]
    Auth(String),
    /// The application lacks a permission (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A write succeeded but reading the user back did not show the desired state.
    #[error("tenant state did not converge: {0}")]
    NotConverged(String),
    /// A write not sent because its [`WriteGate`](super::WriteGate) refused it (the job
    /// ended, the chunk's lease was lost, the worker is stopping). Certainly not applied.
    #[error("write withheld: {0}")]
    Withheld(String),
    /// Anything else Graph answered.
    #[error("graph error {status} {code}: {message}")]
    Other {
        /// HTTP status.
        status: u16,
        /// Graph's error code.
        code: String,
        /// Graph's message.
        message: String,
    },
}

/// Every value [`TenantError::code`] returns.
pub const TENANT_ERROR_CODES: &[&str] = &[
    "user_not_found",
    "user_ambiguous",
    "licence_not_held",
    "usage_location_missing",
    "no_seats_available",
    "unknown_service_plan",
    "unknown_licence",
    "mutually_exclusive_licence",
    "service_plan_dependency",
    "licence_inherited_from_group",
    "already_member",
    "not_member",
    "throttled",
    "tenant_unavailable",
    "tenant_auth_failed",
    "forbidden",
    "tenant_state_mismatch",
    "write_withheld",
    "tenant_error",
];

/// The Graph call a response belongs to; decides how statuses map to errors, and labels metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Token endpoint.
    Token,
    /// `GET /subscribedSkus`.
    ListSkus,
    /// `GET /users/{id}`.
    GetUser,
    /// `POST /users/{id}/assignLicense`.
    AssignLicence,
    /// `GET /groups?$filter=…`.
    FindGroup,
    /// `POST /groups`.
    CreateGroup,
    /// `GET /groups/{id}/members`.
    ListMembers,
    /// `GET /users/{id}/memberOf/microsoft.graph.group`.
    MemberOf,
    /// `POST /groups/{id}/members/$ref`.
    AddMember,
    /// `DELETE /groups/{id}/members/{id}/$ref`.
    RemoveMember,
    /// `POST /users`.
    CreateUser,
    /// `GET /users?$filter=mail eq …` / `proxyAddresses/any(…)`.
    FindUsers,
    /// `PATCH /groups(uniqueName='…')` with `Prefer: create-if-missing`, and the `GET` of the
    /// group it names.
    EnsureGroup,
    /// `PATCH /groups/{id}` with `members@odata.bind` (up to 20 members).
    AddMembersBulk,
    /// `POST /$batch` (the envelope).
    Batch,
}

impl Operation {
    /// The metric label (one of `telemetry::metrics::TENANT_OPERATIONS`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::ListSkus => "list_skus",
            Self::GetUser => "get_user",
            Self::AssignLicence => "assign_licence",
            Self::FindGroup => "find_group",
            Self::CreateGroup => "create_group",
            Self::ListMembers => "list_members",
            Self::MemberOf => "member_of",
            Self::AddMember => "add_member",
            Self::RemoveMember => "remove_member",
            Self::CreateUser => "create_user",
            Self::FindUsers => "find_users",
            Self::EnsureGroup => "ensure_group",
            Self::AddMembersBulk => "add_members_bulk",
            Self::Batch => "batch",
        }
    }

    /// Whether the call changes the tenant (and so spends write budget).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Self::AssignLicence
                | Self::CreateGroup
                | Self::EnsureGroup
                | Self::AddMembersBulk
                | Self::AddMember
                | Self::RemoveMember
                | Self::CreateUser
        )
    }

    /// Whether sending the request twice leaves the tenant as sending it once, with a second
    /// answer the callers understand: reads, and membership changes (a repeated add answers
    /// [`TenantError::AlreadyMember`], a repeated remove [`TenantError::NotMember`], both of
    /// which callers treat as done).
    ///
    /// An upsert by unique name too: repeated, it finds the group the first one made.
    ///
    /// Not licence writes (a repeated swap fails: the removed SKU is gone), not creations
    /// (a repeated create conflicts with what the first one made), and not a multi-member
    /// `PATCH` (repeated after it was applied, it fails whole: the members already exist).
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Self::Token
                | Self::ListSkus
                | Self::GetUser
                | Self::FindUsers
                | Self::EnsureGroup
                | Self::FindGroup
                | Self::ListMembers
                | Self::MemberOf
                | Self::AddMember
                | Self::RemoveMember
        )
    }
}

impl TenantError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. } | Self::Transient(_) | Self::Postponed { .. }
        )
    }

    /// The stable snake_case failure code used in events (one of [`TENANT_ERROR_CODES`]).
    pub fn code(&self) -> &'static str {
        match self {
            Self::UserNotFound(_) => "user_not_found",
            Self::UserAmbiguous(_) => "user_ambiguous",
            Self::LicenceNotHeld(_) => "licence_not_held",
            Self::UsageLocationMissing(_) => "usage_location_missing",
            Self::NoSeatsAvailable(_) => "no_seats_available",
            Self::UnknownServicePlan(_) => "unknown_service_plan",
            Self::UnknownLicence(_) => "unknown_licence",
            Self::MutuallyExclusiveLicence(_) => "mutually_exclusive_licence",
            Self::ServicePlanDependency(_) => "service_plan_dependency",
            Self::LicenceInherited(_) => "licence_inherited_from_group",
            Self::AlreadyMember(_) => "already_member",
            Self::NotMember(_) => "not_member",
            Self::Throttled { .. } => "throttled",
            Self::Transient(_) => "tenant_unavailable",
            Self::Postponed { error, .. } => error.code(),
            Self::Auth(_) => "tenant_auth_failed",
            Self::Forbidden(_) => "forbidden",
            Self::NotConverged(_) => "tenant_state_mismatch",
            Self::Withheld(_) => "write_withheld",
            Self::Other { .. } => "tenant_error",
        }
    }

    /// Maps a Graph error answer (`{"error":{"code","message"}}` with its status) for an operation.
    ///
    /// Graph distinguishes several licence failures only by message, so those are matched on the
    /// documented message texts.
    pub fn from_graph(
        op: Operation,
        status: u16,
        code: &str,
        message: &str,
        retry_after: Option<Duration>,
    ) -> Self {
        let lower = message.to_ascii_lowercase();
        let detail = || {
            if message.is_empty() {
                code.to_owned()
            } else {
                message.to_owned()
            }
        };
        match status {
            429 => Self::Throttled { retry_after },
            401 => Self::Auth(detail()),
            403 => Self::Forbidden(detail()),
            408 | 500..=599 => Self::Transient(format!("{status} {}", detail())),
            404 => match op {
                Operation::RemoveMember => Self::NotMember(detail()),
                Operation::GetUser
                | Operation::AssignLicence
                | Operation::AddMember
                | Operation::AddMembersBulk
                | Operation::MemberOf => Self::UserNotFound(detail()),
                _ => Self::other(status, code, message),
            },
            400 if lower.contains("usage location") => Self::UsageLocationMissing(detail()),
            400 if lower.contains("does not have a corresponding license") => {
                Self::LicenceNotHeld(detail())
            }
            400 if lower.contains("does not have any available licenses") => {
                Self::NoSeatsAvailable(detail())
            }
            // Before "does not have a corresponding license": a removal of an inherited licence
            // is refused for another reason than its absence.
            400 if lower.contains("inherited from a group") => Self::LicenceInherited(detail()),
            // Graph's wording ends "Conflicting Service Plans: X, Y" (tenant.md, "Conflicts");
            // MSOnline's "… cannot be assigned at the same time"; the simulator's older one
            // "… are mutually exclusive". Before the "service plan" match below.
            400 if lower.contains("mutually exclusive")
                || lower.contains("conflicting service plans")
                || lower.contains("cannot be assigned at the same time") =>
            {
                Self::MutuallyExclusiveLicence(detail())
            }
            // entra-docs `licensing-groups-resolve-problems.md`: "… before adding or removing a
            // dependent service. The service X requires Y to be enabled as well."
            400 if lower.contains("dependent service")
                || lower.contains("to be enabled as well") =>
            {
                Self::ServicePlanDependency(detail())
            }
            400 if lower.contains("service plan") || lower.contains("disabled plan") => {
                Self::UnknownServicePlan(detail())
            }
            400 if lower.contains("does not correspond to a valid company license") => {
                Self::UnknownLicence(detail())
            }
            400 if matches!(op, Operation::AddMember | Operation::AddMembersBulk)
                && lower.contains("already exist") =>
            {
                Self::AlreadyMember(detail())
            }
            _ => Self::other(status, code, message),
        }
    }

    fn other(status: u16, code: &str, message: &str) -> Self {
        Self::Other {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_graph_messages() {
        let op = Operation::AssignLicence;
        let e = TenantError::from_graph(
            op,
            400,
            "Request_BadRequest",
            "License assignment cannot be done for user with invalid usage location.",
            None,
        );
        assert_eq!(e.code(), "usage_location_missing");
        let e = TenantError::from_graph(
            op,
            400,
            "Request_BadRequest",
            "Subscription ENTERPRISEPACK does not have any available licenses.",
            None,
        );
        assert_eq!(e.code(), "no_seats_available");
        assert_eq!(
            TenantError::from_graph(op, 404, "Request_ResourceNotFound", "x", None).code(),
            "user_not_found"
        );
        assert_eq!(
            TenantError::from_graph(
                Operation::RemoveMember,
                404,
                "Request_ResourceNotFound",
                "x",
                None
            )
            .code(),
            "not_member"
        );
        assert_eq!(
            TenantError::from_graph(op, 503, "x", "y", None).code(),
            "tenant_unavailable"
        );
        let t =
            TenantError::from_graph(op, 429, "TooManyRequests", "", Some(Duration::from_secs(3)));
        assert!(t.is_transient());
        assert_eq!(
            t,
            TenantError::Throttled {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            TenantError::from_graph(op, 403, "Authorization_RequestDenied", "no", None).code(),
            "forbidden"
        );
    }

    #[test]
    fn maps_licensing_refusals_in_graph_wording() {
        let op = Operation::AssignLicence;
        let code = |m: &str| TenantError::from_graph(op, 400, "Request_BadRequest", m, None).code();
        assert_eq!(
            code(
                "Unable to update license for this user. This set of licenses includes two or \
                 more service plans which cannot be assigned at the same time. Conflicting \
                 Service Plans: EXCHANGE_S_STANDARD, EXCHANGE_S_ENTERPRISE"
            ),
            "mutually_exclusive_licence"
        );
        assert_eq!(
            code("License assignment failed because service plans A and B are mutually exclusive."),
            "mutually_exclusive_licence"
        );
        assert_eq!(
            code(
                "License operation failed. Make sure that the user has necessary services before \
                 adding or removing a dependent service. The service SHAREPOINTWAC requires \
                 SHAREPOINTENTERPRISE to be enabled as well."
            ),
            "service_plan_dependency"
        );
        assert_eq!(
            code(
                "User license is inherited from a group membership and it cannot be removed \
                 directly from the user."
            ),
            "licence_inherited_from_group"
        );
        assert_eq!(
            code("User does not have a corresponding license"),
            "licence_not_held"
        );
        assert_eq!(
            code("Invalid disabled plan id x: the service plan is not part of the license y."),
            "unknown_service_plan"
        );
    }
}
