//! ODS codes: organisation identifiers of the NHS Organisation Data Service.

use std::fmt;

/// 3 to 6 upper-case letters and digits (`RX1`, `Y02345`). Lower-case input is refused rather
/// than fixed, as the contract fixes the form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct OdsCode(String);

impl OdsCode {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = (3..=6).contains(&raw.len())
            && raw
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "{raw:?} is not an ODS code (3 to 6 upper-case letters and digits)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OdsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::OdsCode;

    #[test]
    fn accepts_contract_examples_and_refuses_others() {
        for good in ["RX1", "Y02345", "ABC", "ABCDEF"] {
            assert!(OdsCode::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "RX", "rx1", "ABCDEFG", "RX-1", "RX 1"] {
            assert!(OdsCode::parse(bad).is_err(), "{bad}");
        }
    }
}
