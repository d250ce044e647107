//! The Grafana dashboards, the Prometheus alerts and their unit tests under `deploy/` use only
//! metric names and label values that `src/telemetry/metrics.rs` declares. Both sides are read
//! as text: the metrics module's `pub const` string literals, and every `reconciler_…` token of
//! the deployment files. No database or broker is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Label values checked against a declared set: (metric, label, name of the `&[&str]` const).
const LABEL_SETS: &[(&str, &str, &str)] = &[
    (
        "reconciler_messages_received_total",
        "outcome",
        "INGEST_OUTCOMES",
    ),
    ("reconciler_jobs_completed_total", "outcome", "JOB_OUTCOMES"),
    ("reconciler_items_total", "outcome", "ITEM_OUTCOMES"),
    ("reconciler_jobs_accepted_total", "schedule", "SCHEDULES"),
    ("reconciler_jobs_unfinished", "state", "UNFINISHED_STATES"),
    ("reconciler_queue_messages", "queue", "QUEUES"),
    ("reconciler_drift_items_total", "result", "DRIFT_RESULTS"),
    ("reconciler_outbox_published_total", "type", "EVENT_TYPES"),
    (
        "reconciler_tenant_requests_total",
        "status",
        "TENANT_STATUS_CLASSES",
    ),
    (
        "reconciler_tenant_requests_total",
        "operation",
        "TENANT_OPERATIONS",
    ),
    (
        "reconciler_tenant_throttled_total",
        "operation",
        "TENANT_OPERATIONS",
    ),
    (
        "reconciler_tenant_retries_total",
        "operation",
        "TENANT_OPERATIONS",
    ),
    (
        "reconciler_tenant_retries_total",
        "reason",
        "TENANT_RETRY_REASONS",
    ),
    (
        "reconciler_tenant_request_duration_seconds",
        "operation",
        "TENANT_OPERATIONS",
    ),
    (
        "reconciler_chunks_held_total",
        "reason",
        "ACCESS_LOSS_REASONS",
    ),
    (
        "reconciler_tenant_access_lost",
        "reason",
        "ACCESS_LOSS_REASONS",
    ),
];

/// Labels whose values are not checked: Prometheus' own, and open or enum-backed ones.
/// Labels whose values are not a declared set: scrape labels, and values the tenant or the
/// contract bounds (`sku`: the tenant's `skuPartNumber`s).
const OTHER_LABELS: &[&str] = &[
    "job", "instance", "le", "code", "job_type", "version", "sku",
];

const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

/// What the metrics module declares.
pub(crate) struct Declared {
    /// Values of `pub const X: &str = "reconciler_…"`.
    pub(crate) names: BTreeSet<String>,
    /// The names described with `describe_histogram!`.
    pub(crate) histograms: BTreeSet<String>,
    /// Values of `pub const X: &[&str] = &[…]`, by const name.
    sets: BTreeMap<String, BTreeSet<String>>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The string literals in `text` (no escapes needed for these values).
fn literals(text: &str) -> Vec<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

pub(crate) fn declared(source: &str) -> Declared {
    let mut consts = BTreeMap::new();
    let mut names = BTreeSet::new();
    let mut sets = BTreeMap::new();
    for chunk in source.split("pub const ").skip(1) {
        let Some((ident, rest)) = chunk.split_once(':') else {
            continue;
        };
        let Some((ty, rest)) = rest.split_once('=') else {
            continue;
        };
        let Some((value, _)) = rest.split_once(';') else {
            continue;
        };
        let (ident, ty) = (ident.trim(), ty.trim());
        let values = literals(value);
        if ty == "&str" {
            let [value] = values.as_slice() else {
                panic!("{ident}: expected one string literal, got {values:?}");
            };
            consts.insert(ident.to_owned(), value.clone());
            if value.starts_with("reconciler_") {
                names.insert(value.clone());
            }
        } else if ty == "&[&str]" {
            sets.insert(ident.to_owned(), values.into_iter().collect());
        }
    }
    let histograms = source
        .split("describe_histogram!(")
        .skip(1)
        .filter_map(|chunk| {
            let ident = chunk.trim_start().split(',').next()?.trim();
            consts.get(ident).cloned()
        })
        .collect();
    Declared {
        names,
        histograms,
        sets,
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// The label matchers of a selector body (`a="x", b=~"y|z"`): (label, operator, value).
fn matchers(body: &str) -> Vec<(String, String, String)> {
    body.split(',')
        .filter(|m| !m.trim().is_empty())
        .map(|m| {
            let m = m.trim();
            let at = m.find(['=', '!']).unwrap_or(m.len());
            let (label, rest) = m.split_at(at);
            let op_len =
                if rest.starts_with("=~") || rest.starts_with("!~") || rest.starts_with("!=") {
                    2
                } else {
                    1.min(rest.len())
                };
            let (op, value) = rest.split_at(op_len);
            (
                label.trim().to_owned(),
                op.to_owned(),
                value.trim().trim_matches('"').to_owned(),
            )
        })
        .collect()
}

/// Checks every `reconciler_…` token of `text`; returns how many were found and the problems.
fn problems(text: &str, declared: &Declared) -> (usize, Vec<String>) {
    // Dashboards are JSON: their PromQL quotes are escaped.
    let text = text.replace("\\\"", "\"");
    let mut found = 0;
    let mut problems = Vec::new();
    let mut rest = text.as_str();
    let mut previous = None::<char>;
    while let Some(at) = rest.find("reconciler_") {
        let before = rest[..at].chars().next_back().or(previous);
        let tail = &rest[at..];
        let len = tail.find(|c| !is_name_char(c)).unwrap_or(tail.len());
        let token = &tail[..len];
        previous = token.chars().next_back();
        rest = &tail[len..];
        if before.is_some_and(is_name_char) {
            continue; // part of a longer word, not a metric name
        }
        found += 1;
        let metric = if declared.names.contains(token) {
            token
        } else if let Some(base) = HISTOGRAM_SUFFIXES
            .iter()
            .filter_map(|s| token.strip_suffix(s))
            .find(|base| declared.histograms.contains(*base))
        {
            base
        } else {
            problems.push(format!(
                "`{token}` is not declared in src/telemetry/metrics.rs"
            ));
            continue;
        };
        let Some(body) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) else {
            continue;
        };
        for (label, op, value) in matchers(body.0) {
            let sets: Vec<&str> = LABEL_SETS
                .iter()
                .filter(|(m, l, _)| *m == metric && *l == label)
                .map(|(_, _, set)| *set)
                .collect();
            if sets.is_empty() {
                if !OTHER_LABELS.contains(&label.as_str()) {
                    problems.push(format!("`{token}`: unknown label `{label}`"));
                }
                continue;
            }
            let alternatives: Vec<&str> = if op.ends_with('~') {
                value.split('|').collect()
            } else {
                vec![value.as_str()]
            };
            for alternative in alternatives {
                let literal = !alternative.contains(|c: char| "$.*+?()[]{}^\\".contains(c));
                let known = sets
                    .iter()
                    .any(|set| declared.sets[*set].contains(alternative));
                if literal && !known {
                    problems.push(format!(
                        "`{token}`: `{label}` value `{alternative}` is not in {}",
                        sets.join(" / ")
                    ));
                }
            }
        }
    }
    (found, problems)
}

fn files_under(dir: &Path, extension: &str, into: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files_under(&path, extension, into);
        } else if path.extension().is_some_and(|e| e == extension) {
            into.push(path);
        }
    }
}

fn metrics_module() -> Declared {
    declared(&read(&root().join("src/telemetry/metrics.rs")))
}

#[test]
fn dashboards_and_alerts_use_declared_metric_names_and_label_values() {
    let declared = metrics_module();
    for (_, _, set) in LABEL_SETS {
        assert!(
            declared.sets.contains_key(*set),
            "{set} is not declared in metrics.rs"
        );
    }

    let mut files = Vec::new();
    files_under(&root().join("deploy/grafana"), "json", &mut files);
    assert!(!files.is_empty(), "no dashboard under deploy/grafana");
    files.push(root().join("deploy/prometheus/alerts.yaml"));
    files.push(root().join("deploy/prometheus/alerts.test.yaml"));

    let mut all = Vec::new();
    for file in &files {
        let (found, problems) = problems(&read(file), &declared);
        assert!(
            found > 0,
            "{} uses no reconciler_ metric at all",
            file.display()
        );
        all.extend(
            problems
                .into_iter()
                .map(|p| format!("{}: {p}", file.display())),
        );
    }
    assert!(
        all.is_empty(),
        "undeclared metrics or labels:\n{}",
        all.join("\n")
    );
}

#[test]
fn the_metrics_module_is_read_as_declared() {
    let declared = metrics_module();
    assert!(declared.names.contains("reconciler_jobs_completed_total"));
    assert!(
        declared
            .names
            .contains("reconciler_oldest_unfinished_job_age_seconds")
    );
    assert!(
        declared
            .histograms
            .contains("reconciler_tenant_write_budget_wait_seconds")
    );
    assert!(!declared.histograms.contains("reconciler_items_total"));
    assert_eq!(
        declared.sets["QUEUES"],
        ["jobs", "dead"].map(String::from).into()
    );
}

#[test]
fn the_check_catches_unknown_names_labels_and_values() {
    let declared = metrics_module();
    let ok = r#"sum(rate(reconciler_tenant_write_budget_wait_seconds_bucket{instance=~"$instance"}[5m]))
        max(reconciler_queue_messages{queue="dead"}) reconciler_tenant_requests_total{status=~"5xx|network"}
        rate(reconciler_jobs_completed_total{outcome=\"failed\"}[1m]) policy_reconciler_x"#;
    assert_eq!(problems(ok, &declared), (4, vec![]));

    let bad = r#"reconciler_nope_total reconciler_items_total_count
        reconciler_queue_messages{queue="deadletters"} reconciler_jobs_completed_total{outcom="x"}
        reconciler_tenant_requests_total{status=~"5xx|500"}"#;
    let (found, problems) = problems(bad, &declared);
    assert_eq!(found, 5);
    assert_eq!(problems.len(), 5, "{problems:#?}");
}
