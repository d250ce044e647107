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
