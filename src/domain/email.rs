//! Email addresses, compared case-insensitively and stored lower-cased (the contract).

use std::fmt;

/// A syntactically plausible email address, lower-cased.
///
/// Deliberately not RFC 5322 complete: it accepts what Microsoft 365 accepts as a user
/// principal name (`local@domain.tld`, no spaces, at most 254 characters) and refuses what the
/// portal's CSV exports get wrong (blank cells, missing `@`, stray spaces or separators).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let candidate = raw.trim();
        if candidate.is_empty() {
            return Err("empty email address".into());
        }
        if candidate.len() > 254 {
            return Err(format!("{candidate:?} is longer than 254 characters"));
        }
        let Some((local, domain)) = candidate.split_once('@') else {
            return Err(format!("{candidate:?} has no @"));
        };
        let bad_char = |c: char| c.is_whitespace() || c.is_control() || ",;<>()[]\\\"@".contains(c);
        if local.is_empty() || local.len() > 64 || local.chars().any(bad_char) {
            return Err(format!("{candidate:?} has an invalid local part"));
        }
        if domain.is_empty()
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
            || domain
                .chars()
                .any(|c| !(c.is_alphanumeric() || c == '-' || c == '.'))
        {
            return Err(format!("{candidate:?} has an invalid domain"));
        }
        Ok(Self(candidate.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::EmailAddress;

    #[test]
    fn valid_addresses_are_lower_cased() {
        let email = EmailAddress::parse(" Jane.Smith@NHS.net ").unwrap();
        assert_eq!(email.as_str(), "jane.smith@nhs.net");
        assert!(EmailAddress::parse("a+b@sub.example.org").is_ok());
    }

    #[test]
    fn invalid_addresses_are_refused() {
        for bad in [
            "",
            "   ",
            "no-at-sign",
            "@nhs.net",
            "a@",
            "a@nodot",
            "a b@nhs.net",
            "a@nhs..net",
            "a@.nhs.net",
            "a@nhs.net.",
            "a,b@nhs.net",
            "a@b@nhs.net",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(EmailAddress::parse(&format!("{}@nhs.net", "a".repeat(65))).is_err());
    }
}
