//! What `check-config` prints: the effective configuration as TOML, in the form of
//! `config/default.toml` (times as `"08:00"`, time zones and addresses as written, secrets as
//! `"(set)"`), and which layer set each value that `config/default.toml` does not.
//!
//! An operator checking what a `--config` file or a `RECONCILER__…` variable did reads the one
//! list of keys set above the defaults, each with the layer that won.
use std::path::Path;

use config::Source as _;

use super::{ConfigError, ConfigSources, Settings};

/// A key set by a layer above `config/default.toml`, and that layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The dotted key (`schedule.off_peak_windows`); a list is one key.
    pub key: String,
    /// The file (as the configuration library names it, relative to the working directory when
    /// it can), the `RECONCILER__…` variable, or `the command line`.
    pub layer: String,
}

impl ConfigSources {
    /// The keys whose values do not come from `config/default.toml`, each with the layer that
    /// set the value in force, in key order.
    pub fn origins(&self) -> Result<Vec<Origin>, ConfigError> {
        self.origins_with(config::Environment::default())
    }

    /// As [`ConfigSources::origins`], with the environment layer supplied (tests).
    pub fn origins_with(
        &self,
        environment: config::Environment,
    ) -> Result<Vec<Origin>, ConfigError> {
        let config = self.build(environment)?;
        let default = std::fs::canonicalize(self.dir().join("default.toml")).ok();
        let mut found = Vec::new();
        leaves(String::new(), config.collect()?, &mut |key, value| {
            let layer = match value.origin() {
                Some(file) if is(file, default.as_deref()) => return,
                Some("the environment") => {
                    format!("RECONCILER__{}", key.to_uppercase().replace('.', "__"))
                }
                Some(file) => file.to_owned(),
                // Keys set on the command line carry no origin; neither does an empty table.
                None if self.overrides.iter().any(|(k, _)| *k == key) => {
                    "the command line".to_owned()
                }
                None => return,
            };
            found.push(Origin { key, layer });
        });
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }
}

fn is(file: &str, default: Option<&Path>) -> bool {
    default.is_some_and(|d| std::fs::canonicalize(file).is_ok_and(|f| f == d))
}

/// Calls `each` with every leaf of a table (a list is a leaf) and its dotted key.
fn leaves(
    prefix: String,
    table: config::Map<String, config::Value>,
    each: &mut impl FnMut(String, config::Value),
) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}.{name}")
        };
        match value.clone().into_table() {
            Ok(inner) if !inner.is_empty() => leaves(key, inner, each),
            _ => each(key, value),
        }
    }
}

impl Settings {
    /// The settings as TOML, in the form of `config/default.toml`.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Show(e.to_string()))
    }

    /// `check-config`'s output: the tenant credential in use, the keys set above the defaults
    /// with their layers, then the whole effective configuration.
    pub fn render_effective(&self, origins: &[Origin]) -> Result<String, ConfigError> {
        let mut out = format!("# {}\n", self.tenant.credential_summary());
        if origins.is_empty() {
            out.push_str("# Every value is config/default.toml's.\n");
        } else {
            out.push_str("# Values not from config/default.toml, and the layer that set them:\n");
            let width = origins.iter().map(|o| o.key.len()).max().unwrap_or(0);
            for o in origins {
                out.push_str(&format!("#   {:width$}  {}\n", o.key, o.layer));
            }
        }
        out.push('\n');
        out.push_str(&self.to_toml()?);
        Ok(out)
    }
}
