//! The portal's member export: a CSV file whose `Email Address` column lists the members.
//!
//! A small hand-written RFC 4180 reader rather than a new dependency: the export is one
//! column we care about, and what the reader must tolerate is short to list: a UTF-8 byte
//! order mark (Excel writes one), CRLF or LF line ends, quoted fields (with `""` escapes and
//! line breaks inside quotes), blank lines (also rows of empty cells, which spreadsheets
//! leave behind), extra columns in any order, and header names in any case.
//!
//! Values are trimmed and otherwise sent as they are: checking them is the worker's job, so
//! that a bad address fails its item with a code on the ticket instead of vanishing here.

use std::collections::HashSet;

use super::OpsError;
use crate::domain::EmailAddress;

/// The header of the column that holds the members (matched case-insensitively).
pub const EMAIL_HEADER: &str = "Email Address";

/// The members listed in an export, in file order, trimmed, duplicates and malformed values
/// included.
pub fn parse_members(text: &str) -> Result<Vec<String>, OpsError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = records(text)?
        .into_iter()
        .filter(|fields| fields.iter().any(|f| !f.trim().is_empty()));
    let Some(header) = records.next() else {
        return Err(OpsError::Csv(format!(
            "the file is empty; expected a header with an `{EMAIL_HEADER}` column"
        )));
    };
    let column = header
        .iter()
        .position(|name| name.trim().eq_ignore_ascii_case(EMAIL_HEADER))
        .ok_or_else(|| {
            OpsError::Csv(format!(
                "no `{EMAIL_HEADER}` column in the header (found: {})",
                header
                    .iter()
                    .map(|h| format!("{:?}", h.trim()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    Ok(records
        .map(|fields| {
            fields
                .get(column)
                .map(|f| f.trim().to_owned())
                .unwrap_or_default()
        })
        .collect())
}

/// What the worker will refuse in a member list: values that are not email addresses, and
/// addresses listed more than once (compared case-insensitively, as the contract does).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemberWarnings {
    pub malformed: Vec<String>,
    pub duplicates: Vec<String>,
}

impl MemberWarnings {
    pub fn is_empty(&self) -> bool {
        self.malformed.is_empty() && self.duplicates.is_empty()
    }
}

pub fn check_members(members: &[String]) -> MemberWarnings {
    let mut warnings = MemberWarnings::default();
    let mut seen = HashSet::new();
    let mut reported = HashSet::new();
    for member in members {
        if EmailAddress::parse(member).is_err() {
            warnings.malformed.push(member.clone());
            continue;
        }
        let key = member.to_lowercase();
        if !seen.insert(key.clone()) && reported.insert(key) {
            warnings.duplicates.push(member.clone());
        }
    }
    warnings
}

/// Split `text` into records of fields.
fn records(text: &str) -> Result<Vec<Vec<String>>, OpsError> {
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut record_line = 1;
    let mut chars = text.chars().peekable();
    // Whether the current field opened with a quote, and whether we are inside the quotes.
    let mut quoted = false;
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.trim().is_empty() && !quoted => {
                // Spaces before an opening quote are not part of the value.
                field.clear();
                quoted = true;
                in_quotes = true;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                fields.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut fields));
                quoted = false;
                line += 1;
                record_line = line;
            }
            // Text after a closing quote (`"a"b`) is kept, as most readers do; spaces are
            // trimmed later.
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err(OpsError::Csv(format!(
            "a quoted field opened on line {record_line} is never closed"
        )));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        records.push(fields);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_export() {
        let members = parse_members("Email Address,Name\na@nhs.net,A\nb@nhs.net,B\n").unwrap();
        assert_eq!(members, ["a@nhs.net", "b@nhs.net"]);
    }

    #[test]
    fn bom_and_crlf() {
        let members =
            parse_members("\u{feff}Email Address,Name\r\na@nhs.net,A\r\nb@nhs.net,B").unwrap();
        assert_eq!(members, ["a@nhs.net", "b@nhs.net"]);
    }

    #[test]
    fn quotes_escapes_and_line_breaks_inside_quotes() {
        let text = "\"Name\",\"Email Address\"\n\"Smith, Jane\",\"jane@nhs.net\"\n\
                    \"Two\nlines \"\"quoted\"\"\", \" bob@nhs.net \"\n";
        assert_eq!(
            parse_members(text).unwrap(),
            ["jane@nhs.net", "bob@nhs.net"]
        );
    }

    #[test]
    fn blank_lines_and_empty_rows_are_skipped() {
        let text = "\n\nEmail Address,Name\n\na@nhs.net,A\n,\n  \r\n,,,\nb@nhs.net,B\n\n";
        assert_eq!(parse_members(text).unwrap(), ["a@nhs.net", "b@nhs.net"]);
    }

    #[test]
    fn header_found_by_name_in_any_case_and_column() {
        let text = "Name,ODS, email ADDRESS ,Extra\nA,RX1,a@nhs.net,x\nB,RX1,B@NHS.net\n";
        assert_eq!(parse_members(text).unwrap(), ["a@nhs.net", "B@NHS.net"]);
    }

    #[test]
    fn malformed_and_duplicates_are_kept_and_reported() {
        let text = "Email Address,Name\nnot-an-email,X\na@nhs.net,A\n,Blank email\nA@nhs.net,A\n";
        let members = parse_members(text).unwrap();
        assert_eq!(members, ["not-an-email", "a@nhs.net", "", "A@nhs.net"]);
        let warnings = check_members(&members);
        assert_eq!(warnings.malformed, ["not-an-email", ""]);
        assert_eq!(warnings.duplicates, ["A@nhs.net"]);
    }

    #[test]
    fn missing_header_is_an_error() {
        let error = parse_members("Name,Email\nA,a@nhs.net\n").unwrap_err();
        assert!(
            matches!(&error, OpsError::Csv(m) if m.contains("Email Address")),
            "{error}"
        );
        assert!(matches!(
            parse_members("\u{feff}\r\n\n"),
            Err(OpsError::Csv(_))
        ));
        // A list of addresses without a header is refused rather than losing the first one.
        assert!(matches!(
            parse_members("a@nhs.net\nb@nhs.net\n"),
            Err(OpsError::Csv(_))
        ));
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        assert!(matches!(
            parse_members("Email Address\n\"a@nhs.net\n"),
            Err(OpsError::Csv(_))
        ));
    }

    #[test]
    fn header_only_gives_no_members() {
        assert!(parse_members("Email Address\r\n").unwrap().is_empty());
    }
}
