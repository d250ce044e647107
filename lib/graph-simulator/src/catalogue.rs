//! The simulator's seed format and its built-in SKU catalogue.
//!
//! The seed file uses Graph's own field names (`skuId`, `skuPartNumber`, `servicePlans`, …) plus one
//! simulator-only field, `mutuallyExclusiveGroup`: SKUs sharing a group cannot be held together
//! (a seed's own rule). Whatever the catalogue, two licences also conflict when they enable the
//! two service plans of a documented conflicting pair ([`CONFLICTING_PLANS`]); the built-in
//! catalogue declares no exclusive group, so its only conflict is that one (Office 365 E1 with
//! E3 or E5; E3 and E5 can be held together).
use serde::Deserialize;
use uuid::{Uuid, uuid};

/// Everything a seed file (or [`super::Shared::seed`]) can put into the simulator.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Seed {
    /// SKUs; when given they replace the built-in catalogue.
    #[serde(default)]
    pub skus: Option<Vec<SeedSku>>,
    /// Users to create.
    #[serde(default)]
    pub users: Vec<SeedUser>,
    /// Security groups to create.
    #[serde(default)]
    pub groups: Vec<SeedGroup>,
}

/// A subscribed SKU.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SeedSku {
    /// Graph's `skuId`.
    pub sku_id: Uuid,
    /// Graph's `skuPartNumber`, e.g. `ENTERPRISEPACK`.
    pub sku_part_number: String,
    /// Seats (`prepaidUnits.enabled`).
    pub prepaid_units: PrepaidUnits,
    /// The SKU's service plans.
    pub service_plans: Vec<SeedPlan>,
    /// SKUs with the same group are mutually exclusive (simulator-only field; the documented
    /// plan conflicts, [`CONFLICTING_PLANS`], apply besides).
    #[serde(default)]
    pub mutually_exclusive_group: Option<String>,
    /// Graph's `capabilityStatus`: `Enabled` (the default), `Warning`, `Suspended` or
    /// `LockedOut` (microsoft-graph-docs-contrib `api-reference/v1.0/resources/subscribedsku.md`).
    #[serde(default)]
    pub capability_status: Option<String>,
}

/// Graph's `prepaidUnits`: seats `enabled`, and those in `warning` (a subscription past its
/// end, still assignable: `enabled + warning − consumedUnits` are free, tenant.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepaidUnits {
    /// Seats bought.
    pub enabled: u32,
    /// Seats in the warning state (still assignable).
    #[serde(default)]
    pub warning: u32,
}

/// A service plan of a SKU.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SeedPlan {
    /// Graph's `servicePlanId`.
    pub service_plan_id: Uuid,
    /// Graph's `servicePlanName`, e.g. `TEAMS1`.
    pub service_plan_name: String,
    /// `User` or `Company`.
    #[serde(default = "user_applies")]
    pub applies_to: String,
}

fn user_applies() -> String {
    "User".to_owned()
}

/// A user to seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SeedUser {
    /// Object id; generated when absent.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// The user principal name (unique, compared case-insensitively).
    pub user_principal_name: String,
    /// Display name; the UPN's local part when absent.
    #[serde(default)]
    pub display_name: Option<String>,
    /// ISO 3166 two-letter usage location; licences cannot be assigned without one.
    #[serde(default)]
    pub usage_location: Option<String>,
    /// Graph's `mail`: the SMTP address (not necessarily the UPN). Taken as given: a seed can
    /// describe a tenant as it is, mail without a matching proxy address included.
    #[serde(default)]
    pub mail: Option<String>,
    /// Graph's `proxyAddresses`, e.g. `SMTP:primary@contoso.com` (primary) and
    /// `smtp:alias@contoso.com` (secondary). Read-only in Graph, so only a seed sets them; unique
    /// across the directory, as in Entra ID.
    #[serde(default)]
    pub proxy_addresses: Vec<String>,
    /// Graph's `otherMails`: additional addresses.
    #[serde(default)]
    pub other_mails: Vec<String>,
    /// Licences already held (they consume seats).
    #[serde(default)]
    pub assigned_licenses: Vec<SeedLicence>,
}

/// A licence a seeded user already holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SeedLicence {
    /// The SKU.
    pub sku_id: Uuid,
    /// Disabled service plans of that SKU.
    #[serde(default)]
    pub disabled_plans: Vec<Uuid>,
}

/// A security group to seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SeedGroup {
    /// Object id; generated when absent.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Display name.
    pub display_name: String,
    /// Graph's `uniqueName`, the alternate key of `PATCH /groups(uniqueName='…')` (unique).
    #[serde(default)]
    pub unique_name: Option<String>,
    /// Members, by user id or user principal name.
    #[serde(default)]
    pub members: Vec<String>,
    /// Licences the group holds (group-based licensing): its members inherit them.
    #[serde(default)]
    pub assigned_licenses: Vec<SeedLicence>,
}

/// Well-known SKU ids of the built-in catalogue (the real Microsoft 365 GUIDs).
pub mod sku_ids {
    use uuid::{Uuid, uuid};
    /// Office 365 E1.
    pub const STANDARDPACK: Uuid = uuid!("18181a46-0d4e-45cd-891e-60aabd171b4e");
    /// Office 365 E3.
    pub const ENTERPRISEPACK: Uuid = uuid!("6fd2c87f-b296-42f0-b197-1e91e994b900");
    /// Office 365 E5.
    pub const ENTERPRISEPREMIUM: Uuid = uuid!("c7df2760-2c81-4ef7-b578-5b5392b571df");
    /// Microsoft Teams Phone Standard (Phone System).
    pub const MCOEV: Uuid = uuid!("e43b5b99-8dfb-405f-9987-dc307f34bcbd");
}

const EXCHANGE_S_ENTERPRISE: (Uuid, &str) = (
    uuid!("efb87545-963c-4e0d-99df-69c6916d9eb0"),
    "EXCHANGE_S_ENTERPRISE",
);
const EXCHANGE_S_STANDARD: (Uuid, &str) = (
    uuid!("9aaf7827-d63c-4b61-89c3-182f06f82e5c"),
    "EXCHANGE_S_STANDARD",
);
const TEAMS1: (Uuid, &str) = (uuid!("57ff2da0-773e-42df-b2af-ffb7a2317929"), "TEAMS1");
const SHAREPOINTENTERPRISE: (Uuid, &str) = (
    uuid!("5dbe027f-2339-4123-9542-606e4d348a72"),
    "SHAREPOINTENTERPRISE",
);
const SHAREPOINTSTANDARD: (Uuid, &str) = (
    uuid!("c7699d2e-19aa-44de-8edf-1736da088ca1"),
    "SHAREPOINTSTANDARD",
);
const SHAREPOINTWAC: (Uuid, &str) = (
    uuid!("e95bec33-7c88-4a70-8e19-b10bd9d0c014"),
    "SHAREPOINTWAC",
);
const SWAY: (Uuid, &str) = (uuid!("a23b959c-7ce8-4e57-9140-b90eb88a9e97"), "SWAY");
const FORMS_PLAN_E1: (Uuid, &str) = (
    uuid!("159f4cd6-e380-449f-a816-af1a9ef76344"),
    "FORMS_PLAN_E1",
);
const FORMS_PLAN_E3: (Uuid, &str) = (
    uuid!("2789c901-c14e-48ab-a76a-be334d9d793a"),
    "FORMS_PLAN_E3",
);
const FORMS_PLAN_E5: (Uuid, &str) = (
    uuid!("e212cbc7-0961-4c40-9825-01117710dcb1"),
    "FORMS_PLAN_E5",
);
const MCOSTANDARD: (Uuid, &str) = (uuid!("0feaeb32-d00e-4d66-bd5a-43b5b83db82c"), "MCOSTANDARD");
const MCOEV_PLAN: (Uuid, &str) = (uuid!("4828c8ec-dc2e-4779-b502-87ac9ce28ab7"), "MCOEV");
const MCOMEETADV: (Uuid, &str) = (uuid!("3e26ee1f-8a5f-4d52-aee2-b81ce45c8f40"), "MCOMEETADV");
const OFFICESUBSCRIPTION: (Uuid, &str) = (
    uuid!("43de0ff5-c92c-492b-9116-175376d08c38"),
    "OFFICESUBSCRIPTION",
);
const YAMMER_ENTERPRISE: (Uuid, &str) = (
    uuid!("7547a3fe-08ee-4ccb-b430-5077c5041653"),
    "YAMMER_ENTERPRISE",
);

fn sku(
    sku_id: Uuid,
    part: &str,
    seats: u32,
    group: Option<&str>,
    plans: &[(Uuid, &str)],
) -> SeedSku {
    SeedSku {
        sku_id,
        sku_part_number: part.to_owned(),
        prepaid_units: PrepaidUnits {
            enabled: seats,
            warning: 0,
        },
        service_plans: plans
            .iter()
            .map(|(id, name)| SeedPlan {
                service_plan_id: *id,
                service_plan_name: (*name).to_owned(),
                applies_to: user_applies(),
            })
            .collect(),
        mutually_exclusive_group: group.map(str::to_owned),
        capability_status: None,
    }
}

/// Service-plan dependencies of the catalogue: a plan (first) works only with one of the
/// plans listed after it enabled in the same licence. Graph publishes no API for these; the
/// one modelled is documented: Office for the web (`SHAREPOINTWAC`) needs SharePoint Online
/// (entra-docs `docs/identity/users/licensing-service-plan-reference.md` lists both in every
/// Office 365 suite; the contract's "Licensing semantics" names this pair), and the refusal's
/// wording is that of entra-docs `licensing-groups-resolve-problems.md`, "Manage licenses for
/// products with prerequisites". Enforced when `plan_dependencies` is on.
pub const PLAN_DEPENDENCIES: &[(&str, &[&str])] = &[(
    "SHAREPOINTWAC",
    &["SHAREPOINTENTERPRISE", "SHAREPOINTSTANDARD"],
)];

/// Pairs of service plans that one user cannot hold together, each enabled in a different
/// licence: Entra ID refuses the second licence ("Conflicting Service Plans: X, Y"; with
/// group-based licensing the member's `MutuallyExclusiveViolation`). A licence that holds one of
/// them disabled does not conflict ("To solve this conflict, you need to disable two of the
/// plans").
///
/// The one pair is the one Microsoft documents. MicrosoftDocs/azure-docs
/// `articles/active-directory/enterprise-users/licensing-groups-resolve-problems.md`,
/// "Conflicting service plans", names for Office 365 E1 beside E3: "SharePoint Online (Plan 2)
/// conflicts with SharePoint Online (Plan 1). Exchange Online (Plan 2) conflicts with Exchange
/// Online (Plan 1)." Its successor, MicrosoftDocs/entra-docs
/// `docs/identity/users/licensing-groups-resolve-problems.md`, withdraws the Exchange pair:
/// "Previously, Exchange Online Plan1 and Plan2 were unique and couldn't be duplicated. Now, both
/// service plans have been updated to allow duplication." No document makes E3 and E5 (the same
/// SharePoint and Exchange plans) conflict.
pub const CONFLICTING_PLANS: &[(&str, &str)] = &[("SHAREPOINTSTANDARD", "SHAREPOINTENTERPRISE")];

/// The built-in catalogue: Office 365 E1, E3 and E5 and Phone System. No exclusive group: E1
/// conflicts with E3 and E5 through their SharePoint plans ([`CONFLICTING_PLANS`]) while both are
/// enabled; E3 and E5 can be held together.
pub fn default_catalogue() -> Vec<SeedSku> {
    vec![
        sku(
            sku_ids::STANDARDPACK,
            "STANDARDPACK",
            10_000,
            None,
            &[
                EXCHANGE_S_STANDARD,
                TEAMS1,
                SHAREPOINTSTANDARD,
                SHAREPOINTWAC,
                SWAY,
                FORMS_PLAN_E1,
                MCOSTANDARD,
                YAMMER_ENTERPRISE,
            ],
        ),
        sku(
            sku_ids::ENTERPRISEPACK,
            "ENTERPRISEPACK",
            10_000,
            None,
            &[
                EXCHANGE_S_ENTERPRISE,
                TEAMS1,
                SHAREPOINTENTERPRISE,
                SHAREPOINTWAC,
                SWAY,
                FORMS_PLAN_E3,
                MCOSTANDARD,
                OFFICESUBSCRIPTION,
                YAMMER_ENTERPRISE,
            ],
        ),
        sku(
            sku_ids::ENTERPRISEPREMIUM,
            "ENTERPRISEPREMIUM",
            1_000,
            None,
            &[
                EXCHANGE_S_ENTERPRISE,
                TEAMS1,
                SHAREPOINTENTERPRISE,
                SHAREPOINTWAC,
                SWAY,
                FORMS_PLAN_E5,
                MCOSTANDARD,
                MCOEV_PLAN,
                MCOMEETADV,
                OFFICESUBSCRIPTION,
                YAMMER_ENTERPRISE,
            ],
        ),
        sku(sku_ids::MCOEV, "MCOEV", 1_000, None, &[MCOEV_PLAN]),
    ]
}
