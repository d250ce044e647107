//! The tenant's SKU catalogue: `skuPartNumber` -> `skuId`, plan names -> `servicePlanId`.
use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::TenantError;
use super::model::AssignedLicence;

/// A service plan of a SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePlan {
    /// Graph's `servicePlanId`.
    pub service_plan_id: Uuid,
    /// Graph's `servicePlanName`, e.g. `TEAMS1`.
    pub service_plan_name: String,
    /// `User` or `Company`.
    #[serde(default)]
    pub applies_to: String,
}

/// Seats of a SKU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepaidUnits {
    /// Seats bought and active.
    #[serde(default)]
    pub enabled: u32,
    /// Seats of a subscription past its end, still assignable until it is suspended.
    #[serde(default)]
    pub warning: u32,
}

/// A subscribed SKU as `GET /subscribedSkus` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sku {
    /// Graph's `skuId`.
    pub sku_id: Uuid,
    /// Graph's `skuPartNumber`, e.g. `ENTERPRISEPACK`.
    pub sku_part_number: String,
    /// Its plans.
    #[serde(default)]
    pub service_plans: Vec<ServicePlan>,
    /// Seats.
    #[serde(default)]
    pub prepaid_units: PrepaidUnits,
    /// Seats in use.
    #[serde(default)]
    pub consumed_units: u32,
    /// `Enabled`, `Warning`, `Suspended`, …
    #[serde(default)]
    pub capability_status: String,
}

impl Sku {
    /// The id of a plan of this SKU by name (exact, as Graph spells it).
    pub fn plan_id(&self, name: &str) -> Option<Uuid> {
        self.service_plans
            .iter()
            .find(|p| p.service_plan_name == name)
            .map(|p| p.service_plan_id)
    }
}

/// The catalogue, indexed.
#[derive(Debug, Clone, Default)]
pub struct SkuCatalogue {
    skus: Vec<Sku>,
    by_part_number: HashMap<String, usize>,
    by_id: HashMap<Uuid, usize>,
}

impl SkuCatalogue {
    /// Indexes a list of SKUs.
    pub fn new(skus: Vec<Sku>) -> Self {
        let by_part_number = skus
            .iter()
            .enumerate()
            .map(|(i, s)| (s.sku_part_number.clone(), i))
            .collect();
        let by_id = skus
            .iter()
            .enumerate()
            .map(|(i, s)| (s.sku_id, i))
            .collect();
        Self {
            skus,
            by_part_number,
            by_id,
        }
    }

    /// Every SKU.
    pub fn skus(&self) -> &[Sku] {
        &self.skus
    }

    /// A SKU by `skuPartNumber`.
    pub fn by_part_number(&self, part_number: &str) -> Result<&Sku, TenantError> {
        self.by_part_number
            .get(part_number)
            .map(|&i| &self.skus[i])
            .ok_or_else(|| {
                TenantError::UnknownLicence(format!("the tenant has no licence {part_number}"))
            })
    }

    /// A SKU by `skuId`.
    pub fn by_id(&self, sku_id: Uuid) -> Option<&Sku> {
        self.by_id.get(&sku_id).map(|&i| &self.skus[i])
    }

    /// The licence to assign for a policy: the SKU of `licence` with every plan disabled that
    /// `toggles` does not set to `true` (an allow-list). Naming a plan the SKU lacks is
    /// [`TenantError::UnknownServicePlan`]. Disabled plans come in catalogue order.
    pub fn assignment<I, K, V>(
        &self,
        licence: &str,
        toggles: I,
    ) -> Result<AssignedLicence, TenantError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Borrow<bool>,
    {
        let sku = self.by_part_number(licence)?;
        let mut enabled = HashSet::new();
        for (name, on) in toggles {
            let name = name.as_ref();
            let id = sku.plan_id(name).ok_or_else(|| {
                TenantError::UnknownServicePlan(format!("{licence} has no service plan {name}"))
            })?;
            if *on.borrow() {
                enabled.insert(id);
            }
        }
        Ok(AssignedLicence {
            sku_id: sku.sku_id,
            disabled_plans: sku
                .service_plans
                .iter()
                .map(|p| p.service_plan_id)
                .filter(|id| !enabled.contains(id))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn catalogue() -> SkuCatalogue {
        let plan = |n: u128, name: &str| ServicePlan {
            service_plan_id: Uuid::from_u128(n),
            service_plan_name: name.to_owned(),
            applies_to: "User".to_owned(),
        };
        SkuCatalogue::new(vec![Sku {
            sku_id: Uuid::from_u128(100),
            sku_part_number: "ENTERPRISEPACK".to_owned(),
            service_plans: vec![
                plan(1, "EXCHANGE_S_ENTERPRISE"),
                plan(2, "TEAMS1"),
                plan(3, "SWAY"),
            ],
            prepaid_units: PrepaidUnits {
                enabled: 5,
                warning: 0,
            },
            consumed_units: 0,
            capability_status: "Enabled".to_owned(),
        }])
    }

    #[test]
    fn allow_list_disables_everything_not_true() {
        let toggles = BTreeMap::from([("TEAMS1".to_owned(), true), ("SWAY".to_owned(), false)]);
        let a = catalogue().assignment("ENTERPRISEPACK", &toggles).unwrap();
        assert_eq!(a.sku_id, Uuid::from_u128(100));
        assert_eq!(
            a.disabled_plans,
            vec![Uuid::from_u128(1), Uuid::from_u128(3)]
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        let c = catalogue();
        let e = c
            .assignment("ENTERPRISEPACK", [("NOPE", true)])
            .unwrap_err();
        assert_eq!(e.code(), "unknown_service_plan");
        let e = c
            .assignment("STANDARDPACK", [("TEAMS1", true)])
            .unwrap_err();
        assert_eq!(e.code(), "unknown_licence");
    }
}
