//! What a job message may hold so that PostgreSQL can store it, checked at ingest.
//!
//! A message is valid JSON and still not storable when:
//!
//! * a string or an object key holds a NUL character (`\u0000`): PostgreSQL `text` and
//!   `jsonb` cannot hold one (SQLSTATE 22P05 / 22021);
//! * a string or key holds a lone UTF-16 surrogate escape (`\ud800` without its pair): it is
//!   not a Unicode character, so it is neither a Rust `String` nor a `jsonb` string (22P02);
//! * values are nested deeper than [`MAX_DEPTH`]: `jsonb` parses recursively and gives up
//!   with "stack depth limit exceeded" (54001) well before 100,000 levels, and serde_json's
//!   own limit is 128;
//! * a number is too long for `numeric` (`1e-20000` overflows it, 22003);
//! * a stored value is larger than an index row can hold: a B-tree index row holds at most
//!   2,704 bytes (a third of an 8 kB page), and an incompressible 8 kB policy id fails every
//!   insert with "index row requires 8208 bytes" (54000).
//!
//! Such a message is rejected with `invalid_message` and a detail that names the field and the
//! rule, instead of failing in the database and being redelivered until the broker's delivery
//! limit drops it without a code. [`scan_body`] finds the first four kinds in the raw body in
//! one pass without recursion (a 100,000-deep body is just bytes to it) and returns a
//! sanitised copy from which the job's identity (`message_id`, ticket) can still be read, so
//! that the rejection resolves the ticket. [`FieldLimits`] checks the sizes of the contract's
//! fields once the body has been decoded.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The deepest nesting accepted anywhere in a message (the envelope object is level 1). The
/// contract's deepest value is level 4 (`payload.contacts[i].email`); 32 leaves room for
/// fields to come, and stays far below serde_json's 128 and PostgreSQL's stack limit.
pub const MAX_DEPTH: usize = 32;

/// The longest number accepted, in characters, and the most digits of its exponent. Together
/// they keep every number within PostgreSQL `numeric` (131,072 digits before the point and
/// 16,383 after): the contract's numbers are counts and versions.
pub const MAX_NUMBER_CHARS: usize = 64;
pub const MAX_EXPONENT_DIGITS: usize = 3;

/// `message_id`: an AMQP short string holds 255 bytes, and it keys the inbox and the jobs.
pub const MAX_MESSAGE_ID_BYTES: usize = 255;

/// Identifiers: policy ids, ODS codes, contact ids, licence and service plan names, batch
/// labels and the ticket's reference. Most are keys of B-tree indexes (`policies.id`,
/// `policy_members.policy_id`, `admin_roles.ods_code`, `portal_contacts.contact_id`, …);
/// 255 bytes is far beyond any real one (an ODS code has 3 to 6 characters) and a tenth of the
/// 2,704 bytes an index row may hold, so an index over two of them still fits.
pub const MAX_IDENTIFIER_BYTES: usize = 255;

/// Email addresses (members, users, contact emails, the actor's and the ticket originator's)
/// and names (policy, contact and council names). A real address has at most 254 characters
/// (RFC 5321); a longer one up to this limit still reaches the planner, which fails that one
/// item with `invalid_email` (so one bad address in a list of 200,000 fails that member, not
/// the job). Beyond it the value is not an address at all and the job is rejected. 1,024 bytes
/// is well under the 2,704 bytes of a B-tree index row (`portal_contacts (lower(email))`,
/// `policy_members.email`, `admin_roles.email`).
pub const MAX_TEXT_BYTES: usize = 1_024;

/// Longest failure detail stored and sent (`x-reconciler-detail`, `failures[].detail`).
pub const MAX_DETAIL_BYTES: usize = 1_000;

/// Why a value cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unstorable {
    Nul,
    LoneSurrogate,
    TooDeep,
    NumberOutOfRange,
}

impl Unstorable {
    fn describe(self) -> String {
        match self {
            Self::Nul => {
                "contains a NUL character (\\u0000), which PostgreSQL text cannot hold".into()
            }
            Self::LoneSurrogate => {
                "contains a lone UTF-16 surrogate escape (such as \\ud800), which is not a \
                 Unicode character"
                    .into()
            }
            Self::TooDeep => format!("is nested deeper than {MAX_DEPTH} levels (the limit)"),
            Self::NumberOutOfRange => format!(
                "is a number longer than {MAX_NUMBER_CHARS} characters or with an exponent of \
                 more than {MAX_EXPONENT_DIGITS} digits"
            ),
        }
    }
}

/// A body with values PostgreSQL cannot store.
#[derive(Debug, Clone)]
pub struct BodyScan {
    /// Where the first problem is (`payload.members[2]`) and what it is.
    pub first_path: String,
    pub first: Unstorable,
    /// How many values are affected.
    pub count: usize,
    /// Whether the top-level `message_id` itself is affected (then the job cannot be named).
    pub message_id_affected: bool,
    /// The body with every NUL and lone surrogate escape replaced by `\ufffd` and every value
    /// nested too deep replaced by `null`: valid JSON the identity can be read from.
    pub sanitised: Vec<u8>,
}

impl BodyScan {
    /// The rejection's detail: the first field and its rule, and what was done about it.
    pub fn detail(&self) -> String {
        let mut detail = format!("{} {}", self.first_path, self.first.describe());
        if self.count > 1 {
            let _ = write!(detail, " (and {} more such values)", self.count - 1);
        }
        detail.push_str(
            "; nothing of the message is stored (a ticket it affects is reported with U+FFFD \
             in place of such characters)",
        );
        detail
    }
}

enum Frame {
    /// An object, the raw text of its current key, and whether a key comes next.
    Object {
        key: Option<(usize, usize)>,
        want_key: bool,
    },
    Array {
        index: usize,
    },
}

/// Scan a body for values PostgreSQL cannot store. `None` when there are none, and also when
/// the body is not JSON at all (the decoder then says so with its own error).
pub fn scan_body(body: &[u8]) -> Option<BodyScan> {
    let mut scanner = Scanner {
        body,
        stack: Vec::new(),
        edits: Vec::new(),
        first: None,
        count: 0,
        message_id_affected: false,
    };
    scanner.run()?;
    let (first_path, first) = scanner.first?;
    let mut sanitised = Vec::with_capacity(body.len());
    let mut at = 0;
    for (start, end, replacement) in &scanner.edits {
        sanitised.extend_from_slice(&body[at..*start]);
        sanitised.extend_from_slice(replacement.as_bytes());
        at = *end;
    }
    sanitised.extend_from_slice(&body[at..]);
    Some(BodyScan {
        first_path,
        first,
        count: scanner.count,
        message_id_affected: scanner.message_id_affected,
        sanitised,
    })
}

struct Scanner<'a> {
    body: &'a [u8],
    stack: Vec<Frame>,
    /// Byte ranges to replace, in order.
    edits: Vec<(usize, usize, &'static str)>,
    first: Option<(String, Unstorable)>,
    count: usize,
    message_id_affected: bool,
}

impl Scanner<'_> {
    /// Walk the body; `None` as soon as it turns out not to be JSON.
    fn run(&mut self) -> Option<()> {
        let body = self.body;
        let mut i = 0;
        while i < body.len() {
            match body[i] {
                b' ' | b'\t' | b'\n' | b'\r' => i += 1,
                b'{' | b'[' => {
                    if self.stack.len() + 1 > MAX_DEPTH {
                        let end = matching_close(body, i)?;
                        self.problem(Unstorable::TooDeep, None);
                        self.edits.push((i, end + 1, "null"));
                        i = end + 1;
                    } else {
                        self.stack.push(if body[i] == b'{' {
                            Frame::Object {
                                key: None,
                                want_key: true,
                            }
                        } else {
                            Frame::Array { index: 0 }
                        });
                        i += 1;
                    }
                }
                b'}' | b']' => {
                    self.stack.pop()?;
                    i += 1;
                }
                b',' => {
                    match self.stack.last_mut()? {
                        Frame::Object { want_key, .. } => *want_key = true,
                        Frame::Array { index } => *index += 1,
                    }
                    i += 1;
                }
                b':' => {
                    match self.stack.last_mut()? {
                        Frame::Object { want_key, .. } => *want_key = false,
                        Frame::Array { .. } => return None,
                    }
                    i += 1;
                }
                b'"' => {
                    let end = string_end(body, i)?;
                    let is_key = matches!(
                        self.stack.last(),
                        Some(Frame::Object { want_key: true, .. })
                    );
                    if is_key && let Some(Frame::Object { key, .. }) = self.stack.last_mut() {
                        *key = Some((i + 1, end));
                    }
                    self.check_escapes(i + 1, end, is_key)?;
                    i = end + 1;
                }
                b'-' | b'0'..=b'9' => {
                    let start = i;
                    while i < body.len()
                        && matches!(body[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                    {
                        i += 1;
                    }
                    let number = &body[start..i];
                    let exponent_digits = number
                        .iter()
                        .position(|b| matches!(b, b'e' | b'E'))
                        .map_or(0, |e| {
                            number[e + 1..]
                                .iter()
                                .filter(|b| b.is_ascii_digit())
                                .count()
                        });
                    if number.len() > MAX_NUMBER_CHARS || exponent_digits > MAX_EXPONENT_DIGITS {
                        self.problem(Unstorable::NumberOutOfRange, None);
                        self.edits.push((start, i, "0"));
                    }
                }
                b't' | b'f' | b'n' => {
                    while i < body.len() && body[i].is_ascii_lowercase() {
                        i += 1;
                    }
                }
                _ => return None,
            }
        }
        self.stack.is_empty().then_some(())
    }

    /// Check the escapes of the string whose text is `body[start..end]`.
    fn check_escapes(&mut self, start: usize, end: usize, is_key: bool) -> Option<()> {
        let body = self.body;
        let mut j = start;
        while j < end {
            if body[j] != b'\\' {
                j += 1;
                continue;
            }
            if body.get(j + 1) != Some(&b'u') {
                j += 2;
                continue;
            }
            let unit = hex4(body.get(j + 2..j + 6)?)?;
            let problem = match unit {
                0 => Some(Unstorable::Nul),
                0xD800..=0xDBFF => {
                    let low = (body.get(j + 6..j + 8) == Some(b"\\u"))
                        .then(|| body.get(j + 8..j + 12).and_then(hex4))
                        .flatten();
                    if low.is_some_and(|low| (0xDC00..=0xDFFF).contains(&low)) {
                        j += 12;
                        continue;
                    }
                    Some(Unstorable::LoneSurrogate)
                }
                0xDC00..=0xDFFF => Some(Unstorable::LoneSurrogate),
                _ => None,
            };
            if let Some(problem) = problem {
                self.problem(problem, is_key.then_some((start, end)));
                self.edits.push((j, j + 6, "\\ufffd"));
            }
            j += 6;
        }
        Some(())
    }

    /// Record a problem at the current place (or in the key `key` of the current object).
    fn problem(&mut self, problem: Unstorable, key: Option<(usize, usize)>) {
        self.count += 1;
        let top_level_key = |frames: &[Frame]| match frames {
            [
                Frame::Object {
                    key: Some((s, e)), ..
                },
            ] => Some(&self.body[*s..*e]),
            _ => None,
        };
        if key.is_none() && top_level_key(&self.stack) == Some(b"message_id") {
            self.message_id_affected = true;
        }
        if self.first.is_some() {
            return;
        }
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Object {
                    key: Some((s, e)),
                    want_key: false,
                } => {
                    push_key(&mut path, &self.body[*s..*e]);
                }
                Frame::Object { .. } => {}
                Frame::Array { index } => {
                    let _ = write!(path, "[{index}]");
                }
            }
        }
        if let Some((s, e)) = key {
            push_key(&mut path, &self.body[s..e]);
            path.push_str(" (an object key)");
        }
        if path.is_empty() {
            path.push_str("the body");
        }
        self.first = Some((path, problem));
    }
}

/// Append `.key` (the key's raw JSON text, escapes kept, cut to 64 bytes) to a path.
fn push_key(path: &mut String, raw: &[u8]) {
    if !path.is_empty() {
        path.push('.');
    }
    let text = String::from_utf8_lossy(raw);
    path.push_str(cut(&text, 64));
}

/// The index of the `"` that ends the string starting at `body[start]` (a `"`).
fn string_end(body: &[u8], start: usize) -> Option<usize> {
    let mut j = start + 1;
    while j < body.len() {
        match body[j] {
            b'"' => return Some(j),
            b'\\' => j += 2,
            c if c < 0x20 => return None,
            _ => j += 1,
        }
    }
    None
}

/// The index of the bracket that closes the container opening at `body[start]`, without
/// recursion.
fn matching_close(body: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = start;
    while j < body.len() {
        match body[j] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            b'"' => j = string_end(body, j)?,
            _ => {}
        }
        j += 1;
    }
    None
}

fn hex4(digits: &[u8]) -> Option<u32> {
    std::str::from_utf8(digits)
        .ok()
        .filter(|d| d.len() == 4)
        .and_then(|d| u32::from_str_radix(d, 16).ok())
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` as PostgreSQL can store it in a column limited to `max` bytes: NUL characters
/// replaced by U+FFFD and the rest cut, saying so. Used for what a rejection stores (its
/// detail), which must never fail the way the message did.
pub fn storable_text(text: &str, max: usize) -> Cow<'_, str> {
    let text: Cow<str> = if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(text)
    };
    if text.len() <= max {
        return text;
    }
    const MORE: &str = " … (cut)";
    Cow::Owned(format!("{}{MORE}", cut(&text, max - MORE.len())))
}

/// The sizes of the contract's fields, checked in order; the first one over its limit is
/// reported as `<path> is N bytes; at most M are accepted (<what>)`.
#[derive(Default)]
pub struct FieldLimits {
    first: Option<String>,
}

impl FieldLimits {
    /// An identifier (see [`MAX_IDENTIFIER_BYTES`]).
    pub fn identifier(&mut self, path: impl FnOnce() -> String, value: &str) -> &mut Self {
        self.check(path, value.len(), MAX_IDENTIFIER_BYTES, "identifier")
    }

    /// An email address or a name (see [`MAX_TEXT_BYTES`]).
    pub fn text(&mut self, path: impl FnOnce() -> String, value: &str) -> &mut Self {
        self.text_of_length(path, value.len())
    }

    /// An email address or a name of `bytes` bytes (a list entry that was only measured).
    pub fn text_of_length(&mut self, path: impl FnOnce() -> String, bytes: usize) -> &mut Self {
        self.check(path, bytes, MAX_TEXT_BYTES, "address or name")
    }

    fn check(
        &mut self,
        path: impl FnOnce() -> String,
        bytes: usize,
        max: usize,
        what: &str,
    ) -> &mut Self {
        if self.first.is_none() && bytes > max {
            self.first = Some(format!(
                "{} is {bytes} bytes long; an {what} may have at most {max} bytes",
                path()
            ));
        }
        self
    }

    /// The first violation, if any.
    pub fn finish(&mut self) -> Result<(), String> {
        self.first.take().map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(body: &str) -> Option<BodyScan> {
        scan_body(body.as_bytes())
    }

    #[test]
    fn clean_bodies_and_non_json_pass() {
        assert!(scan(r#"{"a":[1,2,{"b":"c\u00e9\ud83d\ude00"}],"n":-1.5e10,"t":true}"#).is_none());
        assert!(scan("not json").is_none());
        assert!(
            scan(r#"{"a":"\u0000""#).is_none(),
            "unterminated: left to the decoder"
        );
    }

    #[test]
    fn a_nul_is_found_with_its_path_and_replaced() {
        let s = scan(r#"{"message_id":"m","payload":{"members":["a@b.c","x\u0000y"]}}"#).unwrap();
        assert_eq!(s.first, Unstorable::Nul);
        assert_eq!(s.first_path, "payload.members[1]");
        assert!(!s.message_id_affected);
        let fixed: serde_json::Value = serde_json::from_slice(&s.sanitised).unwrap();
        assert_eq!(fixed["payload"]["members"][1], "x\u{fffd}y");
    }

    #[test]
    fn keys_and_the_message_id_are_checked() {
        let s = scan(r#"{"payload":{"a\u0000":1}}"#).unwrap();
        assert_eq!(s.first_path, r"payload.a\u0000 (an object key)");
        let s = scan(r#"{"message_id":"m\u0000","ticket":{"reference":"\u0000"}}"#).unwrap();
        assert_eq!(s.first_path, "message_id");
        assert_eq!(s.count, 2);
        assert!(s.message_id_affected);
    }

    #[test]
    fn lone_surrogates_are_found_and_pairs_are_not() {
        let s = scan(r#"{"ticket":{"reference":"\ud800x"}}"#).unwrap();
        assert_eq!(
            (s.first, s.first_path.as_str()),
            (Unstorable::LoneSurrogate, "ticket.reference")
        );
        assert!(scan(r#"{"a":"\udc00"}"#).is_some());
        assert!(scan(r#"{"a":"\ud800\u0041"}"#).is_some());
        assert!(scan(r#"{"a":"\uD83D\uDE00"}"#).is_none());
        let s = scan(r#"{"a":"\ud800"}"#).unwrap();
        let fixed: serde_json::Value = serde_json::from_slice(&s.sanitised).unwrap();
        assert_eq!(fixed["a"], "\u{fffd}");
    }

    #[test]
    fn deep_nesting_is_cut_without_recursion() {
        let depth = 100_000;
        let body = format!(
            r#"{{"message_id":"m","payload":{{"deep":{}1{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let s = scan(&body).unwrap();
        assert_eq!(s.first, Unstorable::TooDeep);
        assert!(
            s.first_path.starts_with("payload.deep[0][0]"),
            "{}",
            s.first_path
        );
        let fixed: serde_json::Value = serde_json::from_slice(&s.sanitised).unwrap();
        assert_eq!(fixed["message_id"], "m");
        // Exactly at the limit is fine.
        let body = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(scan(&body).is_none());
        let body = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(scan(&body).is_some());
    }

    #[test]
    fn numbers_beyond_numeric_are_found() {
        assert!(scan(r#"{"a":1e-20000}"#).is_some());
        assert!(scan(&format!(r#"{{"a":{}}}"#, "9".repeat(65))).is_some());
        assert!(scan(r#"{"a":[1e308,-0.5E-10,12345678901234567890]}"#).is_none());
    }

    #[test]
    fn stored_text_is_sanitised_and_cut() {
        assert_eq!(storable_text("a\0b", 10), "a\u{fffd}b");
        let long = "é".repeat(600);
        let stored = storable_text(&long, MAX_DETAIL_BYTES);
        assert!(stored.len() <= MAX_DETAIL_BYTES);
        assert!(stored.ends_with("(cut)"));
    }

    #[test]
    fn field_limits_name_the_first_field_over() {
        let mut limits = FieldLimits::default();
        let long = "p".repeat(8_192);
        let err = limits
            .identifier(|| "payload.policy.id".into(), &long)
            .text(|| "payload.policy.name".into(), &long)
            .finish()
            .unwrap_err();
        assert!(
            err.starts_with("payload.policy.id is 8192 bytes long"),
            "{err}"
        );
        assert!(err.contains("255"), "{err}");
    }
}
