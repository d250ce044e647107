//! `[roles]`: how Phone System admin roles are realised in the tenant.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The placeholder a group name template must contain.
pub const ODS_CODE_PLACEHOLDER: &str = "{ods_code}";

/// Security group display names, one group per role and organisation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSettings {
    /// Group of the Phone System Primary admins of an organisation, e.g.
    /// `PhoneSystem-Primary-{ods_code}`.
    pub primary_group_template: String,
    /// Group of the Phone System Local admins of an organisation.
    pub local_group_template: String,
}

impl Default for RoleSettings {
    /// The values of `config/default.toml`.
    fn default() -> Self {
        Self {
            primary_group_template: "PhoneSystem-Primary-{ods_code}".into(),
            local_group_template: "PhoneSystem-Local-{ods_code}".into(),
        }
    }
}

impl RoleSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, template) in [
            ("roles.primary_group_template", &self.primary_group_template),
            ("roles.local_group_template", &self.local_group_template),
        ] {
            if !template.contains(ODS_CODE_PLACEHOLDER) {
                return Err(ConfigError::invalid(
                    key,
                    format!("must contain {ODS_CODE_PLACEHOLDER} ({template:?})"),
                ));
            }
        }
        if self.primary_group_template == self.local_group_template {
            return Err(ConfigError::invalid(
                "roles.local_group_template",
                "must differ from roles.primary_group_template (each role has its own groups)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_need_the_placeholder_and_must_differ() {
        assert!(RoleSettings::default().validate().is_ok());
        let missing = RoleSettings {
            primary_group_template: "PhoneSystem-Primary".into(),
            ..RoleSettings::default()
        };
        let error = missing.validate().unwrap_err().to_string();
        assert!(error.contains("roles.primary_group_template"), "{error}");
        let same = RoleSettings {
            local_group_template: "PhoneSystem-Primary-{ods_code}".into(),
            ..RoleSettings::default()
        };
        assert!(same.validate().is_err());
    }
}
