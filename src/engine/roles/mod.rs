//! Phone System admin roles: `admin_role.assign`, `admin_role.remove`, `admin_role.change`,
//! `ods_mapping.changed` and `user.leaver`.
//!
//! **Desired state** (`store::roles`): a user holds at most one role (Primary or Local) for one
//! ODS code, at most [`MAX_ADMINS_PER_ODS_CODE`] users hold a role for a code, and a lead
//! organisation has one ODS mapping (managed and onboarded organisations). A stored role
//! follows the tenant ([`GrantState`](crate::store::roles::GrantState)): a grant is `pending`
//! until the tenant shows its memberships (`realised`), `failed` when its job's item failed
//! (not held, and no place under the limit), and a removal or a leaver leaves it `removing`
//! until the tenant shows no membership left; only then is it deleted.
//!
//! **In the tenant** a role is membership of security groups named from the `[roles]`
//! templates, one group per role and organisation: a Local admin is in their organisation's
//! Local group; a Primary admin is in their organisation's Primary group and in the Primary
//! group of every onboarded organisation of the mapping their organisation leads. A group
//! whose display name a template gives for some ODS code is a Phone System group
//! ([`GroupNames::is_phone_system`]).
//!
//! **Planning** (in the planner's transaction) validates the job, checks the actor, the limit
//! (under an advisory lock per ODS code, so replicas cannot exceed it together) and the
//! one-role rule, updates the desired state and lists one item per affected user. A rejected
//! job writes nothing. A failed or `removing` row is not a role held: an assign replaces it,
//! and an assign of a stored role not yet realised is a grant again, owned by the new job.
//!
//! **Applying** an item reads the user's memberships from the tenant (`memberOf`) and
//! reconciles those of the Phone System groups with the desired state read *at apply time*,
//! under an advisory lock per user (so two jobs about one user never interleave their writes,
//! and the last job planned decides): for an assign, a change or a mapping change, the groups
//! of the organisations involved; for a removal or a leaver (`ItemSpec::sweep`), every
//! Phone System group the tenant shows, whatever is stored. Memberships to end are removed
//! first and the removal is verified by reading the memberships back; only then are missing
//! memberships added and verified. An `admin_role.change` therefore removes the old role,
//! confirms it in the tenant, then assigns the new one: two separate, ordered actions, never
//! one.
//!
//! **Email.** Each grant (an assign of a role not realised, or the new role of a change) sends
//! one `notification.email` (`phone_system_admin_granted`) the first time the tenant shows the
//! user in the role's groups: the item that finds them there turns the `pending` row
//! `realised` and enqueues the email of the grant's job in the outbox, in the same transaction
//! that claims the `(job, user)` row of `admin_role_notifications`, so a retried or taken-over
//! item never sends it twice, and a grant whose memberships could not be made sends none (until
//! an assign sent again makes them). Removals, by an administrator or by the leaver process,
//! send no email.

mod apply;
mod plan;

pub(crate) use apply::apply;
pub(crate) use plan::holding_of;

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::EngineError;
use super::kind::{ApplyContext, ItemResult, JobKind, Plan, PlanContext, WorkItem};
use crate::configuration::{ODS_CODE_PLACEHOLDER, RoleSettings};
use crate::domain::{
    AdminRole, AdminRoleChange, AdminRoleTarget, JobType, OdsCode, OdsMappingChanged, UserLeaver,
};
use crate::store::roles::{MappingRow, RoleRow};

/// Users per ODS code holding either Phone System admin role.
pub const MAX_ADMINS_PER_ODS_CODE: i64 = 10;

/// Group display names from the `[roles]` templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupNames {
    primary: String,
    local: String,
}

impl GroupNames {
    pub fn new(settings: &RoleSettings) -> Self {
        Self {
            primary: settings.primary_group_template.clone(),
            local: settings.local_group_template.clone(),
        }
    }

    /// The group of `role` for `ods_code`.
    pub fn name(&self, role: AdminRole, ods_code: &str) -> String {
        let template = match role {
            AdminRole::PhoneSystemPrimaryAdmin => &self.primary,
            AdminRole::PhoneSystemLocalAdmin => &self.local,
        };
        template.replace(ODS_CODE_PLACEHOLDER, ods_code)
    }

    /// Whether `display_name` is a Phone System group: a template's name for some ODS code,
    /// compared without regard to case (as Graph compares display names).
    pub fn is_phone_system(&self, display_name: &str) -> bool {
        [&self.primary, &self.local].into_iter().any(|template| {
            let prefix = template
                .split(ODS_CODE_PLACEHOLDER)
                .next()
                .unwrap_or_default();
            let Some(rest) = display_name
                .get(..prefix.len())
                .filter(|p| p.eq_ignore_ascii_case(prefix))
                .and_then(|_| display_name.get(prefix.len()..))
            else {
                return false;
            };
            // The code follows the prefix (3 to 6 characters); the template decides the rest.
            (3..=6).any(|len| {
                rest.get(..len).is_some_and(|code| {
                    let code = code.to_ascii_uppercase();
                    OdsCode::parse(&code).is_ok()
                        && template
                            .replace(ODS_CODE_PLACEHOLDER, &code)
                            .eq_ignore_ascii_case(display_name)
                })
            })
        })
    }
}

/// What a user should hold in the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub role: AdminRole,
    pub ods_code: String,
    /// For a Primary admin: the onboarded organisations of their organisation's mapping.
    pub reach: Vec<String>,
}

impl Holding {
    /// The groups this holding means.
    pub fn groups(&self, names: &GroupNames) -> BTreeSet<String> {
        let mut groups = BTreeSet::from([names.name(self.role, &self.ods_code)]);
        if self.role == AdminRole::PhoneSystemPrimaryAdmin {
            groups.extend(
                self.reach
                    .iter()
                    .map(|code| names.name(AdminRole::PhoneSystemPrimaryAdmin, code)),
            );
        }
        groups
    }
}

/// An item's instructions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ItemSpec {
    /// Organisations whose groups (of both roles) may hold memberships to end.
    pub(crate) codes: Vec<String>,
    /// Removals and leavers: end every Phone System membership the tenant shows for the user
    /// (`memberOf`) that the desired state does not want, whatever the codes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) sweep: bool,
    /// Dry runs only (they write no desired state): what the job would leave the user with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) preview: Option<Preview>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Preview {
    pub(crate) holding: Option<Holding>,
}

/// What an assignment or a change did to the desired state (kept in `jobs.plan`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantPlan {
    /// A role was granted (false: held already, only the memberships are checked).
    pub granted: bool,
}

/// What a removal did to the desired state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovalPlan {
    /// The role was held and is removed (false: not held, only the memberships are checked).
    pub removed: bool,
}

/// A mapping change: the new mapping and the one it replaces.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MappingPlan {
    pub mapping: MappingRow,
    pub previous: Option<MappingRow>,
}

/// A leaver: the role removed, if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaverPlan {
    pub removed: Option<RoleRow>,
}

/// Declares the kind of one admin-role job type: its planner is `$plan` (in [`plan`]); every
/// role kind shares the applier ([`apply`]), which reconciles a user's memberships.
macro_rules! role_kind {
    ($(#[$doc:meta])* $name:ident, $job_type:expr, $payload:ty, $plan_type:ty, $plan:path) => {
        $(#[$doc])*
        pub struct $name {
            names: GroupNames,
        }

        impl $name {
            pub fn new(settings: &RoleSettings) -> Self {
                Self {
                    names: GroupNames::new(settings),
                }
            }
        }

        #[async_trait]
        impl JobKind for $name {
            type Payload = $payload;
            type Plan = $plan_type;
            type Spec = ItemSpec;
            const JOB_TYPE: JobType = $job_type;

            async fn plan(
                &self,
                ctx: PlanContext<'_, '_>,
                payload: $payload,
            ) -> Result<Plan<$plan_type, ItemSpec>, EngineError> {
                $plan(ctx, payload).await
            }

            async fn apply(
                &self,
                ctx: &ApplyContext<'_, $plan_type>,
                items: &[WorkItem<ItemSpec>],
            ) -> Result<Vec<ItemResult>, EngineError> {
                apply::apply(&self.names, ctx, items).await
            }
        }
    };
}

role_kind!(
    /// `admin_role.assign`.
    AssignKind,
    JobType::AdminRoleAssign,
    AdminRoleTarget,
    GrantPlan,
    plan::assign
);
role_kind!(
    /// `admin_role.remove`.
    RemoveKind,
    JobType::AdminRoleRemove,
    AdminRoleTarget,
    RemovalPlan,
    plan::remove
);
role_kind!(
    /// `admin_role.change`: a removal, confirmed, then an assignment.
    ChangeKind,
    JobType::AdminRoleChange,
    AdminRoleChange,
    GrantPlan,
    plan::change
);
role_kind!(
    /// `ods_mapping.changed`: the Primary admins of the lead code follow the new mapping.
    MappingKind,
    JobType::OdsMappingChanged,
    OdsMappingChanged,
    MappingPlan,
    plan::mapping
);
role_kind!(
    /// `user.leaver`: the leaver loses their role and every Phone System membership.
    LeaverKind,
    JobType::UserLeaver,
    UserLeaver,
    LeaverPlan,
    plan::leaver
);

#[cfg(test)]
mod tests {
    use super::apply::mail_nickname;
    use super::*;

    fn names() -> GroupNames {
        GroupNames::new(&RoleSettings::default())
    }

    #[test]
    fn group_names_follow_the_templates() {
        let names = names();
        assert_eq!(
            names.name(AdminRole::PhoneSystemPrimaryAdmin, "RX1"),
            "PhoneSystem-Primary-RX1"
        );
        assert_eq!(
            names.name(AdminRole::PhoneSystemLocalAdmin, "Y02345"),
            "PhoneSystem-Local-Y02345"
        );
    }

    #[test]
    fn phone_system_groups_are_recognised_by_the_templates() {
        let names = names();
        for yes in [
            "PhoneSystem-Primary-RX1",
            "PhoneSystem-Local-Y02345",
            "phonesystem-local-rx9",
        ] {
            assert!(names.is_phone_system(yes), "{yes}");
        }
        for no in [
            "PhoneSystem-Primary-",
            "PhoneSystem-Primary-RX",
            "PhoneSystem-Primary-RX1-old",
            "PhoneSystem-Other-RX1",
            "All staff",
            "PhoneSystem-Local-ABCDEFG",
        ] {
            assert!(!names.is_phone_system(no), "{no}");
        }
        let suffixed = GroupNames::new(&RoleSettings {
            primary_group_template: "PS {ods_code} primary".into(),
            local_group_template: "PS {ods_code} local".into(),
        });
        assert!(suffixed.is_phone_system("PS RX1 primary"));
        assert!(suffixed.is_phone_system("PS Y02345 local"));
        assert!(!suffixed.is_phone_system("PS RX1 other"));
    }

    #[test]
    fn a_primary_reaches_the_onboarded_organisations_of_its_mapping() {
        let mapping = MappingRow {
            lead_ods_code: "RX1".into(),
            managed: vec!["RX2".into(), "RX3".into(), "RX1".into()],
            onboarded: vec!["RX1".into(), "RX2".into()],
        };
        assert_eq!(mapping.reach(), vec!["RX2".to_owned()]);
        let primary = Holding {
            role: AdminRole::PhoneSystemPrimaryAdmin,
            ods_code: "RX1".into(),
            reach: mapping.reach(),
        };
        assert_eq!(
            primary.groups(&names()).into_iter().collect::<Vec<_>>(),
            vec!["PhoneSystem-Primary-RX1", "PhoneSystem-Primary-RX2"]
        );
        // A Local admin's reach never extends beyond their own organisation.
        let local = Holding {
            role: AdminRole::PhoneSystemLocalAdmin,
            ods_code: "RX1".into(),
            reach: vec!["RX2".into()],
        };
        assert_eq!(
            local.groups(&names()).into_iter().collect::<Vec<_>>(),
            vec!["PhoneSystem-Local-RX1"]
        );
    }

    #[test]
    fn mail_nicknames_are_plain() {
        assert_eq!(
            mail_nickname("Phone System/RX1 (primary)"),
            "Phone-System-RX1--primary-"
        );
    }
}
