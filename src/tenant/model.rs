//! The values exchanged with the tenant, in Graph's JSON field names.
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A user named by object id or by user principal name (Graph accepts either in URLs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserRef {
    /// Object id.
    Id(Uuid),
    /// User principal name (compared case-insensitively by Graph).
    Upn(String),
}

impl UserRef {
    /// The URL path segment naming the user, percent-encoded.
    pub fn path_segment(&self) -> String {
        match self {
            Self::Id(id) => id.to_string(),
            Self::Upn(upn) => super::transport::encode_path_segment(upn),
        }
    }

    /// Whether `state` is this user.
    pub fn matches(&self, state: &UserLicenceState) -> bool {
        match self {
            Self::Id(id) => *id == state.id,
            Self::Upn(upn) => upn.eq_ignore_ascii_case(&state.user_principal_name),
        }
    }
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => write!(f, "{id}"),
            Self::Upn(upn) => f.write_str(upn),
        }
    }
}

impl From<Uuid> for UserRef {
    fn from(id: Uuid) -> Self {
        Self::Id(id)
    }
}

impl From<&str> for UserRef {
    /// A GUID becomes an id, anything else a UPN.
    fn from(s: &str) -> Self {
        Uuid::parse_str(s).map_or_else(|_| Self::Upn(s.to_owned()), Self::Id)
    }
}

/// A licence as Graph lists it on a user, and as `addLicenses` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignedLicence {
    /// The SKU.
    pub sku_id: Uuid,
    /// Every disabled service plan of that SKU (the complete list: Graph replaces it).
    #[serde(default)]
    pub disabled_plans: Vec<Uuid>,
}

impl AssignedLicence {
    /// The same SKU with the same disabled plans (order and repeats ignored).
    pub fn same_as(&self, other: &AssignedLicence) -> bool {
        let set = |plans: &[Uuid]| {
            let mut plans = plans.to_vec();
            plans.sort_unstable();
            plans.dedup();
            plans
        };
        self.sku_id == other.sku_id && set(&self.disabled_plans) == set(&other.disabled_plans)
    }
}

/// What the reconciler reads of a user.
///
/// `assigned_licenses` are the licences assigned *directly*: what `assignLicense` can change.
/// Graph's `assignedLicenses` also lists licences inherited from groups (group-based
/// licensing), so when the answer carries `licenseAssignmentStates` the direct ones are taken
/// from there (`assignedByGroup` null) and the inherited ones go to `inherited`
/// (microsoft-graph-docs-contrib `api-reference/v1.0/resources/licenseassignmentstate.md`).
/// Without the states (a tenant that does not send them), `assignedLicenses` is taken as direct.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "RawUserLicenceState")]
pub struct UserLicenceState {
    /// Object id.
    pub id: Uuid,
    /// User principal name.
    pub user_principal_name: String,
    /// ISO 3166 usage location; licences need one.
    #[serde(default)]
    pub usage_location: Option<String>,
    /// Licences assigned directly.
    #[serde(default)]
    pub assigned_licenses: Vec<AssignedLicence>,
    /// Licences inherited from groups (also those Entra ID could not give: `error` says why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherited: Vec<InheritedLicence>,
}

/// A licence a user inherits from a group (one of Graph's `licenseAssignmentStates` with
/// `assignedByGroup` set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InheritedLicence {
    /// The SKU.
    pub sku_id: Uuid,
    /// The group's disabled plans of it.
    #[serde(default)]
    pub disabled_plans: Vec<Uuid>,
    /// The group that assigns it.
    pub group_id: Uuid,
    /// Graph's `error` when the group's licence could not be given (`CountViolation`,
    /// `MutuallyExclusiveViolation`, `DependencyViolation`, …); `None` when it is active.
    #[serde(default)]
    pub error: Option<String>,
}

impl InheritedLicence {
    /// Whether the user holds it (Entra ID gave it without error).
    pub fn is_active(&self) -> bool {
        self.error.is_none()
    }
}

/// One of Graph's `licenseAssignmentStates`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LicenceAssignmentState {
    sku_id: Uuid,
    #[serde(default)]
    disabled_plans: Option<Vec<Uuid>>,
    #[serde(default)]
    assigned_by_group: Option<Uuid>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// A user as Graph answers it (see [`UserLicenceState`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawUserLicenceState {
    id: Uuid,
    user_principal_name: String,
    #[serde(default)]
    usage_location: Option<String>,
    #[serde(default)]
    assigned_licenses: Vec<AssignedLicence>,
    #[serde(default)]
    license_assignment_states: Option<Vec<LicenceAssignmentState>>,
    /// Our own serialised form (the states already split).
    #[serde(default)]
    inherited: Vec<InheritedLicence>,
}

impl From<RawUserLicenceState> for UserLicenceState {
    fn from(raw: RawUserLicenceState) -> Self {
        let Some(states) = raw.license_assignment_states else {
            return Self {
                id: raw.id,
                user_principal_name: raw.user_principal_name,
                usage_location: raw.usage_location,
                assigned_licenses: raw.assigned_licenses,
                inherited: raw.inherited,
            };
        };
        let mut direct = Vec::new();
        let mut inherited = Vec::new();
        for s in states {
            let disabled_plans = s.disabled_plans.unwrap_or_default();
            match s.assigned_by_group {
                None => direct.push(AssignedLicence {
                    sku_id: s.sku_id,
                    disabled_plans,
                }),
                Some(group_id) => {
                    let failed = s.state.as_deref() == Some("Error")
                        || s.error.as_deref().is_some_and(|e| e != "None");
                    inherited.push(InheritedLicence {
                        sku_id: s.sku_id,
                        disabled_plans,
                        group_id,
                        error: failed.then(|| s.error.unwrap_or_else(|| "Error".to_owned())),
                    });
                }
            }
        }
        Self {
            id: raw.id,
            user_principal_name: raw.user_principal_name,
            usage_location: raw.usage_location,
            assigned_licenses: direct,
            inherited,
        }
    }
}

impl UserLicenceState {
    /// The licence of a SKU the user holds, if any.
    pub fn licence(&self, sku_id: Uuid) -> Option<&AssignedLicence> {
        self.assigned_licenses.iter().find(|l| l.sku_id == sku_id)
    }
}

/// One `assignLicense` call: licences to add (or update) and SKUs to remove. Adding and removing
/// in one change is a swap, done by Graph atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenceChange {
    /// The user.
    pub user: UserRef,
    /// Licences to hold afterwards, each with its complete `disabledPlans`.
    pub add: Vec<AssignedLicence>,
    /// SKUs not to hold afterwards.
    pub remove: Vec<Uuid>,
}

impl LicenceChange {
    /// Whether `state` already is what this change produces: every added SKU held with exactly
    /// these disabled plans (order ignored), every removed SKU absent.
    pub fn is_satisfied_by(&self, state: &UserLicenceState) -> bool {
        self.add.iter().all(|want| {
            state
                .licence(want.sku_id)
                .is_some_and(|have| have.same_as(want))
        }) && self.remove.iter().all(|sku| state.licence(*sku).is_none())
    }

    /// Graph's `assignLicense` body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "addLicenses": self.add, "removeLicenses": self.remove })
    }
}

/// How a licence write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LicenceOutcome {
    /// Graph accepted our `assignLicense`.
    Applied,
    /// A read showed the desired state without a (further) write: either it already held, or an
    /// earlier attempt that was throttled or failed had in fact been applied.
    AlreadyHeld,
}

/// The result of [`crate::tenant::Tenant::ensure_licences`]: the state read back, and whether a
/// write was needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsuredLicence {
    /// The user's state as read after the change (or before, when nothing was needed).
    pub state: UserLicenceState,
    /// Whether the tenant was changed (false: it was already compliant).
    pub changed: bool,
}

/// How an address was matched to a user: the portal knows users by email, which for many is
/// not their user principal name (renamed users, aliases, guests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    /// `GET /users/{address}`: the address is the user principal name.
    UserPrincipalName,
    /// `$filter=mail eq '…'`.
    Mail,
    /// `$filter=proxyAddresses/any(p:p eq 'smtp:…')`: an alias (or the primary SMTP address).
    ProxyAddress,
}

impl MatchedBy {
    /// The stored (and logged) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserPrincipalName => "user_principal_name",
            Self::Mail => "mail",
            Self::ProxyAddress => "proxy_address",
        }
    }
}

/// The users an address search found, and by which property (the first that found any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressMatch {
    /// The property that matched; the last one searched when nothing did.
    pub by: MatchedBy,
    /// Everyone that property matched (several: the address is ambiguous).
    pub users: Vec<UserLicenceState>,
}

/// A security group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    /// Object id.
    pub id: Uuid,
    /// Display name.
    pub display_name: String,
}

/// One membership write: `user` added to `group` (`add`) or removed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipWrite {
    pub group: Uuid,
    pub user: Uuid,
    pub add: bool,
}

impl MembershipWrite {
    /// Every one of `users` added to (`add`) or removed from `group`.
    pub fn all(group: Uuid, users: &[Uuid], add: bool) -> Vec<Self> {
        users
            .iter()
            .map(|&user| Self { group, user, add })
            .collect()
    }
}

/// A group member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupMember {
    /// Object id.
    pub id: Uuid,
    /// User principal name (absent for non-user members such as devices).
    #[serde(default)]
    pub user_principal_name: Option<String>,
}

/// A security group to create (seeding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGroup {
    /// Display name.
    pub display_name: String,
    /// Mail nickname (required by Graph even for security groups).
    pub mail_nickname: String,
}

/// A user to create (seeding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// User principal name.
    pub user_principal_name: String,
    /// Display name.
    pub display_name: String,
    /// Mail nickname.
    pub mail_nickname: String,
    /// Usage location, e.g. `GB`.
    pub usage_location: Option<String>,
}
