use std::path::PathBuf;

use super::*;

fn schema_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("contract/schemas/{name}.json"))
}

/// The committed schema files are what the Rust types derive; `UPDATE_CONTRACT=1` rewrites them.
#[test]
fn committed_schemas_are_what_the_code_derives() {
    let update = std::env::var_os("UPDATE_CONTRACT").is_some();
    let mut stale = Vec::new();
    for (name, schema) in derived() {
        let path = schema_file(name);
        let expected = render(&schema);
        if update {
            std::fs::write(&path, &expected).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(expected.as_str()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "contract/schemas differ from the Rust types for {stale:?}; \
         run `UPDATE_CONTRACT=1 cargo test --lib contract` and review the diff"
    );
}

fn manifest_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn asyncapi() -> Value {
    serde_norway::from_str(ASYNCAPI).expect("contract/asyncapi.yaml is YAML")
}

/// A validator for `schema` that checks formats too (`date-time`, `uuid`, `date`), as the
/// worker's own decoding does.
fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("not a valid JSON Schema: {e}"))
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// The document is valid AsyncAPI 3.0: checked offline against the official JSON Schema
/// (asyncapi/spec-json-schemas, vendored under contract/vendor with its licence).
#[test]
fn the_asyncapi_document_is_valid_asyncapi_3() {
    let official: Value = serde_json::from_str(
        &std::fs::read_to_string(manifest_path(
            "contract/vendor/asyncapi-3.0.0-without-id.json",
        ))
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&official).expect("the AsyncAPI 3.0 schema compiles");
    let problems = errors(&validator, &asyncapi());
    assert!(problems.is_empty(), "not valid AsyncAPI 3.0: {problems:#?}");
}

/// The schema file a message's payload `$ref` names (`./schemas/NAME.json`), by NAME.
fn payload_schema_name(message: &Value) -> &str {
    message["payload"]["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("./schemas/"))
        .and_then(|r| r.strip_suffix(".json"))
        .unwrap_or_else(|| panic!("{} names no schema file", message["name"]))
}

#[test]
fn every_example_validates_against_its_schema() {
    let document = asyncapi();
    let mut checked = 0;
    for (key, message) in document["components"]["messages"].as_object().unwrap() {
        if message["payload"]["$ref"].is_null() {
            continue; // the dead letter: any body
        }
        let name = payload_schema_name(message);
        let file: Value = serde_json::from_str(
            &std::fs::read_to_string(schema_file(name)).unwrap_or_else(|e| panic!("{name}: {e}")),
        )
        .unwrap();
        assert_eq!(
            Some(&file),
            schema(name).as_ref(),
            "{name}: file and code differ"
        );
        let validator = validator(&file);
        let examples = message["examples"]
            .as_array()
            .expect("every message has examples");
        assert!(!examples.is_empty(), "{key} has no example");
        for example in examples {
            let problems = errors(&validator, &example["payload"]);
            assert!(problems.is_empty(), "{key} example: {problems:#?}");
            assert_eq!(
                example["payload"]["type"], name,
                "{key}: example of another type"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, names().len());
}

/// Every job type and event type has a message in the document, named by its schema, with a
/// channel that carries it; the failure-code enum is the code's; the addresses are the
/// default topology's.
#[test]
fn the_document_names_every_message_code_and_queue_of_the_code() {
    let document = asyncapi();
    let messages = document["components"]["messages"].as_object().unwrap();
    let mut named: Vec<&str> = messages
        .values()
        .filter(|m| !m["payload"]["$ref"].is_null())
        .map(payload_schema_name)
        .collect();
    named.sort_unstable();
    let mut expected = names();
    expected.sort_unstable();
    assert_eq!(named, expected);

    let codes: Vec<&str> = document["components"]["schemas"]["FailureCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let ours: Vec<&str> = crate::domain::FailureCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(codes, ours, "the FailureCode enum differs from the code's");

    let defaults = std::fs::read_to_string(manifest_path("config/default.toml")).unwrap();
    let channels = &document["channels"];
    for (channel, key) in [
        ("jobs", "jobs_exchange"),
        ("jobsQueue", "jobs_queue"),
        ("deadLetters", "dead_letter_exchange"),
        ("deadLetterQueue", "dead_letter_queue"),
        ("events", "events_exchange"),
    ] {
        let address = channels[channel]["address"].as_str().unwrap();
        assert!(
            defaults.contains(&format!("{key} = \"{address}\"")),
            "channel {channel}: {address} is not the default {key}"
        );
    }
    for name in JobType::ALL.iter().map(|t| t.as_str()) {
        assert!(
            channels["jobs"]["messages"]
                .as_object()
                .unwrap()
                .values()
                .any(|m| m["$ref"]
                    .as_str()
                    .is_some_and(|r| { messages[r.rsplit('/').next().unwrap()]["name"] == name })),
            "no jobs channel message for {name}"
        );
    }
}

/// The official schema does refuse a broken document (so the check above checks something).
#[test]
fn the_asyncapi_check_refuses_a_broken_document() {
    let official: Value = serde_json::from_str(
        &std::fs::read_to_string(manifest_path(
            "contract/vendor/asyncapi-3.0.0-without-id.json",
        ))
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&official).unwrap();
    let mut broken = asyncapi();
    broken["operations"]["publishEvent"]["action"] = json!("publish");
    assert!(!validator.is_valid(&broken), "an AsyncAPI 2 action passed");
    let mut broken = asyncapi();
    broken["channels"]["jobs"]["bindings"]["amqp"]["is"] = json!("topic");
    assert!(!validator.is_valid(&broken), "a wrong AMQP binding passed");
}

/// The pointers of the string schemas under `schema` (at `at`) that state no byte limit:
/// every free string of a job message is limited by ingest, so every one needs it.
fn unlimited_strings(schema: &Value, at: String, found: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            let is_string = match map.get("type") {
                Some(Value::String(t)) => t == "string",
                Some(Value::Array(types)) => types.iter().any(|t| t == "string"),
                _ => false,
            };
            let free = !["enum", "const", "format"]
                .iter()
                .any(|k| map.contains_key(*k));
            if is_string && free && !map.contains_key(MAX_UTF8_BYTES) {
                found.push(at.clone());
            }
            for (key, value) in map {
                if key == "Storable" {
                    continue; // any value at all: the NUL rule, not a field
                }
                unlimited_strings(value, format!("{at}/{key}"), found);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                unlimited_strings(item, format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

/// Every free string of every job message has the byte limit ingest checks, every entry of
/// the table of limits is about some job message, and the limits are ingest's numbers.
#[test]
fn every_string_of_a_job_message_states_its_byte_limit() {
    let mut used = vec![false; BYTE_LIMITS.len()];
    for job_type in JobType::ALL {
        let schema = schema(job_type.as_str()).unwrap();
        let mut found = Vec::new();
        unlimited_strings(&schema, String::new(), &mut found);
        assert!(found.is_empty(), "{job_type}: no byte limit at {found:?}");
        for (i, (pointer, bytes)) in BYTE_LIMITS.iter().enumerate() {
            if let Some(target) = schema.pointer(pointer) {
                used[i] = true;
                assert_eq!(target[MAX_UTF8_BYTES], json!(bytes), "{pointer}");
                assert_eq!(target["maxLength"], json!(bytes), "{pointer}");
            }
        }
        assert_eq!(schema[MAX_DEPTH], json!(DEPTH_LIMIT));
        assert_eq!(schema["allOf"][0]["$ref"], "#/$defs/Storable");
    }
    let unused: Vec<&str> = BYTE_LIMITS
        .iter()
        .zip(&used)
        .filter(|(_, used)| !**used)
        .map(|((pointer, _), _)| *pointer)
        .collect();
    assert!(unused.is_empty(), "limits about no job message: {unused:?}");
}

#[test]
fn the_contract_command_prints_the_document_or_one_schema_or_names_them_all() {
    assert_eq!(document(None).unwrap(), ASYNCAPI);
    let one: Value = serde_json::from_str(&document(Some("user.leaver")).unwrap()).unwrap();
    assert_eq!(one["title"], "user.leaver");
    let error = document(Some("user.left")).unwrap_err().to_string();
    assert!(error.contains("\"user.left\""), "{error}");
    for name in names() {
        assert!(error.contains(name), "{error}");
    }
}
