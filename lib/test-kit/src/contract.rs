//! The message contract in the tests (`messages.md` 1.1, "Machine-readable contract"): every job
//! body a test publishes and every event the worker publishes is checked against its JSON
//! Schema (`contract/schemas`, what `policy_reconciler::contract` derives from the Rust types),
//! and the schema's verdict on a job must be the worker's.
//!
//! - [`job_verdict`] is the schema's verdict on a body. The publishing helpers
//!   ([`super::broker::publish_job`]) refuse to send a body the schema refuses unless the test
//!   says it means to ([`super::broker::publish_job_refused_by_schema`]), and remember each
//!   `message_id` with its verdict ([`remember`]).
//! - The event consumer ([`super::broker::EventQueue`]) validates every event it receives
//!   ([`check_event`]); given the worker's database, it also checks each `job.completed` of a
//!   remembered job against the worker's disposition ([`check_disposition`]): a body the
//!   schema accepts must not have been dead-lettered at ingest, one it refuses must have been.
//!
//! Three rules of ingest have no JSON Schema keyword; the schemas state them as annotations
//! (`x-max-utf8-bytes`, `x-integer-literal`, `x-max-depth`), which this validator enforces.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use jsonschema::paths::Location;
use jsonschema::{Keyword, ValidationError, Validator};
use policy_reconciler::contract;
use serde_json::{Map, Value};

/// The failure codes of a message rejected at ingest (dead-lettered).
pub const INGEST_CODES: &[&str] = &[
    "invalid_message",
    "missing_field",
    "unknown_type",
    "unsupported_schema_version",
];

/// A validator for a contract schema: formats checked (`date-time`, `date`, `uuid`, as the
/// worker's decoding does) and the contract's annotations enforced.
pub fn validator(schema: &Value) -> Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .with_keyword(contract::MAX_UTF8_BYTES, max_utf8_bytes)
        .with_keyword(contract::INTEGER_LITERAL, integer_literal)
        .with_keyword(contract::MAX_DEPTH, max_depth)
        .build(schema)
        .unwrap_or_else(|e| panic!("a contract schema that does not compile: {e}"))
}

/// Every contract schema, compiled once per test binary.
fn validators() -> &'static HashMap<&'static str, Validator> {
    static VALIDATORS: OnceLock<HashMap<&'static str, Validator>> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        contract::names()
            .into_iter()
            .map(|name| (name, validator(&contract::schema(name).expect("named"))))
            .collect()
    })
}

/// What `validator` says of `instance`: `Err` with every error, one a line.
fn verdict(validator: &Validator, instance: &Value) -> Result<(), String> {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} (at {})", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// The schema's verdict on a job body: the schema of its `type` (a body whose type names no
/// job schema is refused, as is one that is not JSON serde_json can read).
pub fn job_verdict(body: &[u8]) -> Result<(), String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON a schema can check: {e}"))?;
    job_value_verdict(&value)
}

pub fn job_value_verdict(job: &Value) -> Result<(), String> {
    let Some(job_type) = job.get("type").and_then(Value::as_str) else {
        return Err("no `type`: no job schema applies".into());
    };
    if policy_reconciler::domain::JobType::parse(job_type).is_none() {
        return Err(format!("{job_type:?} is not a job type of the contract"));
    }
    verdict(&validators()[job_type], job)
}

/// Validate an event against the schema of its `type`; panics with the schema's errors.
pub fn check_event(event: &Value) {
    let event_type = event["type"].as_str().unwrap_or_default();
    let validator = validators()
        .get(event_type)
        .filter(|_| contract::EVENT_TYPES.contains(&event_type))
        .unwrap_or_else(|| panic!("an event of no contract event type: {event}"));
    if let Err(errors) = verdict(validator, event) {
        panic!("the worker published a {event_type} its schema refuses:\n{errors}\n{event}");
    }
}

/// The schema's verdict on a published job, by `message_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    Accepted,
    Refused(String),
}

fn published() -> &'static Mutex<HashMap<String, Published>> {
    static PUBLISHED: OnceLock<Mutex<HashMap<String, Published>>> = OnceLock::new();
    PUBLISHED.get_or_init(Mutex::default)
}

/// Remember the verdict on a body published with `message_id` (the first body published
/// with an id decides what the worker does with it: later ones are duplicates).
pub fn remember(body: &[u8], verdict: &Result<(), String>) {
    let Some(message_id) = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message_id")?.as_str().map(str::to_owned))
    else {
        return;
    };
    let verdict = match verdict {
        Ok(()) => Published::Accepted,
        Err(errors) => Published::Refused(errors.clone()),
    };
    published()
        .lock()
        .unwrap()
        .entry(message_id)
        .or_insert(verdict);
}

/// The verdict remembered for `message_id`, if a test published it through the kit.
pub fn remembered(message_id: &str) -> Option<Published> {
    published().lock().unwrap().get(message_id).cloned()
}

/// Check a `job.completed` of a job a test published against the schema's verdict on it:
/// `dead_lettered` is whether the worker rejected the message at ingest (its inbox row).
pub fn check_disposition(completed: &Value, dead_lettered: bool) {
    let Some(message_id) = completed["source_message_id"].as_str() else {
        return;
    };
    match remembered(message_id) {
        Some(Published::Accepted) if dead_lettered => panic!(
            "the schema accepts job {message_id} but the worker rejected it at ingest: {}",
            completed["failures"]
        ),
        Some(Published::Refused(errors)) if !dead_lettered => panic!(
            "the schema refuses job {message_id} but the worker did not reject it at ingest \
             (schema: {errors}): {completed}"
        ),
        _ => {}
    }
}

/// `x-max-utf8-bytes`: a string of at most this many bytes of UTF-8.
struct MaxUtf8Bytes(usize);

impl<'i> Keyword<'i> for MaxUtf8Bytes {
    fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        match instance.as_str() {
            Some(s) if s.len() > self.0 => Err(ValidationError::custom(format!(
                "{} bytes of UTF-8, more than {}",
                s.len(),
                self.0
            ))),
            _ => Ok(()),
        }
    }

    fn is_valid(&self, instance: &'i Value) -> bool {
        instance.as_str().is_none_or(|s| s.len() <= self.0)
    }
}

fn max_utf8_bytes<'a>(
    _: &'a Map<String, Value>,
    value: &'a Value,
    _: Location,
) -> Result<Box<dyn for<'i> Keyword<'i>>, ValidationError<'a>> {
    let limit = value
        .as_u64()
        .ok_or_else(|| ValidationError::custom("x-max-utf8-bytes takes a count of bytes"))?;
    Ok(Box::new(MaxUtf8Bytes(limit as usize)))
}

/// `x-integer-literal`: a number written without fraction or exponent (serde_json reads `8`
/// as an integer and `8.0` or `8e0` as a float; so do the worker's integer fields).
struct IntegerLiteral;

impl<'i> Keyword<'i> for IntegerLiteral {
    fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        if self.is_valid(instance) {
            Ok(())
        } else {
            Err(ValidationError::custom(format!(
                "{instance} is not written as an integer"
            )))
        }
    }

    fn is_valid(&self, instance: &'i Value) -> bool {
        instance.as_number().is_none_or(|n| !n.is_f64())
    }
}

fn integer_literal<'a>(
    _: &'a Map<String, Value>,
    _: &'a Value,
    _: Location,
) -> Result<Box<dyn for<'i> Keyword<'i>>, ValidationError<'a>> {
    Ok(Box::new(IntegerLiteral))
}

/// `x-max-depth`: arrays and objects nest at most this deep (the instance itself is level
/// 1), as ingest counts them.
struct MaxDepth(usize);

fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1)];
    while let Some((value, level)) = stack.pop() {
        match value {
            Value::Array(items) => {
                deepest = deepest.max(level);
                stack.extend(items.iter().map(|v| (v, level + 1)));
            }
            Value::Object(fields) => {
                deepest = deepest.max(level);
                stack.extend(fields.values().map(|v| (v, level + 1)));
            }
            _ => {}
        }
    }
    deepest
}

impl<'i> Keyword<'i> for MaxDepth {
    fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        let found = depth(instance);
        if found > self.0 {
            Err(ValidationError::custom(format!(
                "nested {found} levels deep, more than {}",
                self.0
            )))
        } else {
            Ok(())
        }
    }

    fn is_valid(&self, instance: &'i Value) -> bool {
        depth(instance) <= self.0
    }
}

fn max_depth<'a>(
    _: &'a Map<String, Value>,
    value: &'a Value,
    _: Location,
) -> Result<Box<dyn for<'i> Keyword<'i>>, ValidationError<'a>> {
    let limit = value
        .as_u64()
        .ok_or_else(|| ValidationError::custom("x-max-depth takes a number of levels"))?;
    Ok(Box::new(MaxDepth(limit as usize)))
}
