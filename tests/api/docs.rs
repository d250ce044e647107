//! The documentation against the code. `README.md`, `docs/` and any Markdown under `deploy/`
//! link only to files and headings that exist (anchors as GitHub makes them); the documents
//! name every failure code, metric, alert, command and configuration key the code declares;
//! and they name none the code no longer has. Everything is read as text, but for the failure
//! codes (`FailureCode::ALL`) and the commands (the `clap` command of `Cli`); no database or
//! broker is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use policy_reconciler::cli::Cli;
use policy_reconciler::domain::FailureCode;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `path` relative to the repository, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The files under `dir` (and its folders, when `recursive`) whose name ends with
/// `.{extension}`; none when `dir` does not exist.
fn files_under(dir: &Path, extension: &str, recursive: bool, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            if recursive {
                files_under(&path, extension, recursive, into);
            }
        } else if path.extension().is_some_and(|e| e == extension) {
            into.push(path);
        }
    }
}

/// The Markdown files whose links are checked: the repository root's, `docs/`'s, and any under
/// `deploy/`.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_under(&root(), "md", false, &mut files);
    files_under(&root().join("docs"), "md", false, &mut files);
    files_under(&root().join("deploy"), "md", true, &mut files);
    files.sort();
    files
}

/// The documentation: `README.md` and `docs/*.md`.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    files_under(&root().join("docs"), "md", false, &mut files);
    files.sort();
    files
}

// ---- reading Markdown ----

/// `text` with the lines of fenced code blocks (and their fences) blanked; lines keep their
/// numbers.
fn blank_fences(text: &str) -> String {
    let mut fenced = false;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let fence = line.trim_start().starts_with("```") || line.trim_start().starts_with("~~~");
        if !fence && !fenced {
            out.push_str(line);
        }
        if fence {
            fenced = !fenced;
        }
        out.push('\n');
    }
    out
}

/// The contents of `text`'s code spans (`` `…` ``, opened and closed by runs of as many
/// backticks, within a paragraph), trimmed, and `text` with every span blanked (newlines kept).
fn code_spans(text: &str) -> (Vec<String>, String) {
    let chars: Vec<char> = text.chars().collect();
    let run_at = |at: usize| chars[at..].iter().take_while(|&&c| c == '`').count();
    let mut contents = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = run_at(i);
        // The closing run has as many backticks, and comes before the paragraph ends.
        let mut close = None;
        let mut j = i + run;
        while j < chars.len() {
            if chars[j] == '`' {
                let n = run_at(j);
                if n == run {
                    close = Some(j);
                    break;
                }
                j += n;
            } else if chars[j] == '\n'
                && chars[j + 1..]
                    .iter()
                    .take_while(|&&c| c != '\n')
                    .all(|c| c.is_whitespace())
            {
                break;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                let inner: String = chars[i + run..end].iter().collect();
                contents.push(inner.trim().to_owned());
                for &c in &chars[i..end + run] {
                    out.push(if c == '\n' { '\n' } else { ' ' });
                }
                i = end + run;
            }
            None => {
                out.push_str(&"`".repeat(run));
                i += run;
            }
        }
    }
    (contents, out)
}

/// The prose of a Markdown text: code blocks and code spans blanked, line numbers kept.
fn prose(text: &str) -> String {
    code_spans(&blank_fences(text)).1
}

/// The text of a heading line (`## Text`), if the line is one.
fn heading(line: &str) -> Option<&str> {
    let level = line.chars().take_while(|&c| c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = line[level..].strip_prefix(' ')?;
    Some(rest.trim().trim_end_matches('#').trim())
}

/// A heading's anchor as GitHub makes it: lower case, each space a '-', and every character
/// but letters, digits, '-' and '_' dropped.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown text's headings (a repeated heading's get `-1`, `-2`, …).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for line in blank_fences(text).lines() {
        let Some(heading) = heading(line) else {
            continue;
        };
        let base = slug(heading);
        let n = seen.entry(base.clone()).or_default();
        anchors.insert(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    anchors
}

/// The targets of the inline links and images of `prose` (`[text](target)`, an optional title
/// after it), with their line numbers.
fn link_targets(prose: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    for (n, line) in prose.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or_default();
            targets.push((n + 1, target.trim_matches(['<', '>']).to_owned()));
            rest = &after[end..];
        }
    }
    targets
}

/// The lines of `text` under the heading line `title` (`## Metrics`), up to the next heading
/// of the same or a higher level; `None` without such a heading.
fn section(text: &str, title: &str) -> Option<String> {
    let level = title.chars().take_while(|&c| c == '#').count();
    let unfenced = blank_fences(text);
    let mut lines = unfenced.lines().skip_while(|line| line.trim_end() != title);
    lines.next()?;
    let body: Vec<&str> = lines
        .take_while(|line| {
            let depth = line.chars().take_while(|&c| c == '#').count();
            heading(line).is_none() || depth > level
        })
        .collect();
    Some(body.join("\n"))
}

/// The section `title` of the document `doc` (`docs/…`), or a panic saying what is missing.
fn section_of(doc: &str, title: &str) -> String {
    section(&read(&root().join(doc)), title)
        .unwrap_or_else(|| panic!("{doc} has no section `{title}`: the checks read it"))
}

/// Whether `text` has `phrase` not followed by a letter, a digit, '-' or '_' (`jobs list`, not
/// `jobs listing`).
fn mentions(text: &str, phrase: &str) -> bool {
    let word_char = |c: char| c.is_alphanumeric() || c == '-' || c == '_';
    text.match_indices(phrase).any(|(at, _)| {
        text[at + phrase.len()..]
            .chars()
            .next()
            .is_none_or(|c| !word_char(c))
    })
}

// ---- what the code declares ----

/// The metric names: the `pub const X: &str = "reconciler_…"` of `src/telemetry/metrics.rs` and
/// of the simulator crate's `events.rs` (its one metric), read as `deploy::` reads them.
struct Metrics {
    names: BTreeSet<String>,
    /// The names described with `describe_histogram!`: their series add `_bucket`, `_sum`
    /// and `_count`.
    histograms: BTreeSet<String>,
}

impl Metrics {
    fn declared() -> Self {
        let (mut names, mut histograms) = (BTreeSet::new(), BTreeSet::new());
        for source in [
            "src/telemetry/metrics.rs",
            "lib/graph-simulator/src/events.rs",
        ] {
            let declared = crate::deploy::declared(&read(&root().join(source)));
            names.extend(declared.names);
            histograms.extend(declared.histograms);
        }
        Self { names, histograms }
    }

    /// Whether `word` names a metric or a histogram's series.
    fn knows(&self, word: &str) -> bool {
        self.names.contains(word)
            || ["_bucket", "_sum", "_count"].into_iter().any(|suffix| {
                word.strip_suffix(suffix)
                    .is_some_and(|base| self.histograms.contains(base))
            })
    }
}

/// The `reconciler_…` words of `text` (letters, digits and '_'; not the tail of a longer word).
fn metric_words(text: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut words = BTreeSet::new();
    for (at, _) in text.match_indices("reconciler_") {
        if text[..at].chars().next_back().is_some_and(is_name_char) {
            continue;
        }
        words.insert(
            text[at..]
                .chars()
                .take_while(|&c| is_name_char(c))
                .collect(),
        );
    }
    words
}

/// The alerts of `deploy/prometheus/alerts.yaml`, each with its `runbook_url` annotations.
fn alerts() -> BTreeMap<String, Vec<String>> {
    let mut alerts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in read(&root().join("deploy/prometheus/alerts.yaml")).lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("- alert:") {
            let name = name.trim().to_owned();
            alerts.entry(name.clone()).or_default();
            current = Some(name);
        } else if let Some(url) = line.strip_prefix("runbook_url:") {
            let name = current
                .clone()
                .expect("alerts.yaml: a runbook_url before any alert");
            let url = url.trim().trim_matches(['"', '\'']).to_owned();
            alerts.entry(name).or_default().push(url);
        }
    }
    alerts
}

/// Every command of the command line as typed (`policy-reconciler jobs cancel`), parents
/// included; not clap's `help`.
fn commands() -> Vec<String> {
    fn walk(command: &clap::Command, path: &str, into: &mut Vec<String>) {
        for sub in command.get_subcommands() {
            let name = sub.get_name();
            if name == "help" || sub.is_hide_set() {
                continue;
            }
            let path = format!("{path} {name}");
            walk(sub, &path, into);
            into.push(path);
        }
    }
    let cli = <Cli as CommandFactory>::command();
    let mut paths = Vec::new();
    walk(&cli, cli.get_name(), &mut paths);
    paths.sort();
    paths
}

/// `config/default.toml`, read line by line (a TOML parser would not see the keys written
/// commented out): its tables and its keys by full path (`engine.lease_seconds`,
/// `engine.drift.mode`).
#[derive(Debug, Default)]
struct Config {
    /// The paths of `[a.b]` and `[[a.b]]`.
    tables: BTreeSet<String>,
    /// The paths of arrays of tables (`[[schedule.off_peak_windows]]`): each documented as one
    /// key.
    arrays: BTreeSet<String>,
    /// The keys set in tables (not in arrays of tables).
    keys: BTreeSet<String>,
    /// The keys written commented out (`# key = …`): unset by default, or set by a profile.
    commented: BTreeSet<String>,
    /// The keys of the arrays' tables (`schedule.off_peak_windows.days`).
    array_keys: BTreeSet<String>,
}

impl Config {
    fn read() -> Self {
        let mut config = Self::default();
        let mut table = String::new();
        let mut in_array = false;
        for line in read(&root().join("config/default.toml")).lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
                table = name.trim().to_owned();
                in_array = true;
                config.tables.insert(table.clone());
                config.arrays.insert(table.clone());
            } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = name.trim().to_owned();
                in_array = false;
                config.tables.insert(table.clone());
            } else if let Some(key) = key_of(line) {
                let path = format!("{table}.{key}");
                if in_array {
                    config.array_keys.insert(path);
                } else {
                    config.keys.insert(path);
                }
            } else if let Some(key) = line.strip_prefix("# ").and_then(key_of)
                && !table.is_empty()
                && !in_array
            {
                config.commented.insert(format!("{table}.{key}"));
            }
        }
        config
    }

    /// Every key the documentation must name.
    fn documented_keys(&self) -> BTreeSet<&String> {
        self.keys
            .iter()
            .chain(&self.arrays)
            .chain(&self.commented)
            .collect()
    }

    /// Whether `path` is a key or a table of the file.
    fn knows(&self, path: &str) -> bool {
        [&self.keys, &self.commented, &self.tables, &self.array_keys]
            .into_iter()
            .any(|set| set.contains(path))
    }

    /// The top-level tables (`engine`, `tenant`, …).
    fn sections(&self) -> BTreeSet<&str> {
        self.tables
            .iter()
            .map(|t| t.split('.').next().unwrap_or_default())
            .collect()
    }
}

/// The key of a `key = value` line.
fn key_of(line: &str) -> Option<&str> {
    let (key, _) = line.split_once(" = ")?;
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    plain.then_some(key)
}

/// Whether a code span reads as a configuration key's path: lower-case words joined by dots.
fn is_dotted_key(text: &str) -> bool {
    text.contains('.')
        && text.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

/// Fails with every problem, one a line, after `what`.
#[track_caller]
fn assert_none(problems: &[String], what: &str) {
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
}

// ---- the checks ----

/// A link's problem, if it has one: a relative path that does not exist, or an anchor that no
/// heading of the linked Markdown file has.
fn link_problem(
    file: &Path,
    line: usize,
    target: &str,
    anchors_of: &mut BTreeMap<PathBuf, BTreeSet<String>>,
) -> Option<String> {
    let external = ["http://", "https://", "mailto:"]
        .into_iter()
        .any(|scheme| target.starts_with(scheme));
    if target.is_empty() || external {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let at = format!("{}:{line}: link `{target}`", shown(file));
    let linked = if path.is_empty() {
        file.to_path_buf()
    } else {
        file.parent().expect("a file is in a folder").join(path)
    };
    if !linked.exists() {
        return Some(format!(
            "{at}: {} does not exist (a link is relative to its file's folder)",
            shown(&linked)
        ));
    }
    let anchor = anchor?;
    if linked.extension().is_none_or(|e| e != "md") {
        return Some(format!("{at}: an anchor into a file that is not Markdown"));
    }
    let known = anchors_of
        .entry(linked.clone())
        .or_insert_with(|| anchors(&read(&linked)));
    if known.contains(anchor) {
        return None;
    }
    let listed: Vec<&str> = known.iter().map(String::as_str).collect();
    Some(format!(
        "{at}: {} has no heading whose anchor is `#{anchor}` (GitHub's anchors: the heading in \
         lower case, spaces as '-', punctuation but '-' and '_' dropped). Its anchors: {}",
        shown(&linked),
        listed.join(", ")
    ))
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let files = markdown_files();
    assert!(
        files.iter().any(|f| f.ends_with("README.md"))
            && files.iter().any(|f| f.ends_with("docs/runbook.md")),
        "README.md and docs/ are read: {files:?}"
    );
    let mut anchors_of = BTreeMap::new();
    let mut problems = Vec::new();
    let mut links = 0;
    for file in &files {
        for (line, target) in link_targets(&prose(&read(file))) {
            links += 1;
            problems.extend(link_problem(file, line, &target, &mut anchors_of));
        }
    }
    assert!(
        links > 30,
        "only {links} links found: is the reader broken?"
    );
    assert_none(
        &problems,
        "broken links: fix the path or the anchor (or the heading it names)",
    );
}

#[test]
fn every_failure_code_is_documented() {
    let doc = "docs/architecture.md";
    let listed = code_spans(&section_of(doc, "## Failure codes")).0;
    let problems: Vec<String> = FailureCode::ALL
        .iter()
        .map(|code| code.as_str())
        .filter(|code| !listed.iter().any(|span| span == code))
        .map(|code| {
            format!(
                "failure code `{code}` (src/domain/codes.rs) is not in {doc}, section \"Failure \
                 codes\": add it, in backticks, to the list there (and say when it is used)"
            )
        })
        .collect();
    assert!(FailureCode::ALL.len() > 30, "FailureCode::ALL is read");
    assert_none(&problems, "undocumented failure codes");
}

#[test]
fn every_metric_is_documented_and_every_documented_metric_exists() {
    let metrics = Metrics::declared();
    let doc = "docs/operations.md";
    let table = section_of(doc, "## Metrics");
    let mut problems: Vec<String> = metrics
        .names
        .iter()
        .filter(|name| !table.contains(&format!("`{name}`")))
        .map(|name| {
            format!(
                "metric `{name}` is not in {doc}, section \"Metrics\": add a row for it to the \
                 table there (type, labels, meaning)"
            )
        })
        .collect();
    for file in documents() {
        for word in metric_words(&read(&file)) {
            if !metrics.knows(&word) {
                problems.push(format!(
                    "{} names `{word}`, which is no metric: src/telemetry/metrics.rs and \
                     lib/graph-simulator declare none of that name (a histogram's series add \
                     _bucket, _sum or _count). Correct or remove it",
                    shown(&file)
                ));
            }
        }
    }
    assert_none(&problems, "metrics and their documentation differ");
}

#[test]
fn every_alert_has_a_runbook_section_and_every_section_an_alert() {
    let alerts = alerts();
    let doc = "docs/runbook.md";
    let runbook = blank_fences(&read(&root().join(doc)));
    let sections: BTreeSet<&str> = runbook
        .lines()
        .filter(|line| line.starts_with("## "))
        .filter_map(heading)
        .collect();
    let mut problems = Vec::new();
    for (alert, urls) in &alerts {
        if !sections.contains(alert.as_str()) {
            problems.push(format!(
                "alert {alert} (deploy/prometheus/alerts.yaml) has no section in {doc}: add a \
                 heading `## {alert}` with its meaning, what to look at and what to do"
            ));
        }
        let anchor = format!("/docs/runbook.md#{}", alert.to_lowercase());
        if urls.len() != 1 || !urls[0].ends_with(&anchor) {
            problems.push(format!(
                "alert {alert}: its annotations need one runbook_url ending with `{anchor}` \
                 (found {urls:?})"
            ));
        }
    }
    for section in &sections {
        if section.starts_with("Reconciler") && !alerts.contains_key(*section) {
            problems.push(format!(
                "{doc} has a section `## {section}`, but deploy/prometheus/alerts.yaml has no \
                 such alert: remove the section, or name it after its alert"
            ));
        }
    }
    assert!(alerts.len() >= 10, "alerts.yaml is read: {alerts:?}");
    assert_none(&problems, "alerts and the runbook differ");
}

#[test]
fn every_command_is_documented() {
    let doc = "docs/operations.md";
    let table = section_of(doc, "## Command line");
    let problems: Vec<String> = commands()
        .into_iter()
        .filter(|command| !mentions(&table, command))
        .map(|command| {
            format!(
                "command `{command}` is not in {doc}, section \"Command line\": add a row for \
                 it (`{command} …` with its arguments) to the command table there"
            )
        })
        .collect();
    assert_none(&problems, "undocumented commands");
}

#[test]
fn every_configuration_key_is_documented_and_every_documented_key_exists() {
    let config = Config::read();
    let doc = "docs/configuration.md";
    let text = read(&root().join(doc));
    let mut problems: Vec<String> = config
        .documented_keys()
        .into_iter()
        .filter(|key| !text.contains(&format!("`{key}`")))
        .map(|key| {
            let commented = if config.keys.contains(key) || config.arrays.contains(key) {
                ""
            } else {
                " (commented out there)"
            };
            format!(
                "configuration key `{key}` (config/default.toml{commented}) is not in {doc}: \
                 add a row with `{key}` in backticks, its default and its meaning, to the table \
                 of its section"
            )
        })
        .collect();
    let sections = config.sections();
    let named: BTreeSet<String> = code_spans(&blank_fences(&text)).0.into_iter().collect();
    for path in &named {
        let section = path.split('.').next().unwrap_or_default();
        if is_dotted_key(path) && sections.contains(section) && !config.knows(path) {
            problems.push(format!(
                "{doc} names `{path}`, but config/default.toml has no such key or table: remove \
                 it from {doc}, or add the key (with its comment) to config/default.toml"
            ));
        }
    }
    assert_none(&problems, "the configuration and its documentation differ");
}

/// The readers above read as GitHub does, and the sources as they are written.
#[test]
fn the_readers_read_markdown_and_the_sources_as_written() {
    assert_eq!(
        slug("Local stack (Docker Compose)"),
        "local-stack-docker-compose"
    );
    assert_eq!(
        slug("User policies (`policy.changed`, `policy.members_added`)"),
        "user-policies-policychanged-policymembers_added"
    );
    assert_eq!(
        anchors("# A\n## B b\n```\n# not a heading\n```\n## B b\n"),
        ["a", "b-b", "b-b-1"].map(String::from).into()
    );
    assert_eq!(
        link_targets(&prose(
            "[a](x.md#y) `[b](no.md)` [c](<z.md> \"title\")\n```\n[d](fenced.md)\n```\n![e](f.png)"
        )),
        vec![
            (1, "x.md#y".to_owned()),
            (1, "z.md".to_owned()),
            (5, "f.png".to_owned())
        ]
    );
    let (spans, blanked) = code_spans("a `b.c` and ``d ` e`` f `g\n\nh` i");
    assert_eq!(spans, ["b.c", "d ` e"]);
    assert!(blanked.starts_with("a       and ") && blanked.ends_with("`g\n\nh` i"));
    assert_eq!(
        section("# T\n## A\na\n### A.1\nb\n## B\nc\n", "## A").as_deref(),
        Some("a\n### A.1\nb")
    );
    assert!(mentions(
        "`policy-reconciler jobs list` and",
        "policy-reconciler jobs list"
    ));
    assert!(!mentions(
        "policy-reconciler jobs listing",
        "policy-reconciler jobs list"
    ));
    assert_eq!(
        metric_words("`reconciler_items_total{job_type}` x-reconciler-y policy_reconciler_z"),
        ["reconciler_items_total"].map(String::from).into()
    );

    let metrics = Metrics::declared();
    assert!(metrics.names.contains("reconciler_jobs_completed_total"));
    assert!(metrics.knows("reconciler_tenant_write_budget_wait_seconds_bucket"));
    assert!(!metrics.knows("reconciler_items_total_count"));
    let config = Config::read();
    assert!(config.keys.contains("engine.lease_seconds"));
    assert!(config.keys.contains("broker.topology.jobs_queue"));
    assert!(config.arrays.contains("schedule.off_peak_windows"));
    assert!(config.array_keys.contains("schedule.off_peak_windows.days"));
    assert!(!config.keys.contains("schedule.off_peak_windows.days"));
    assert!(config.commented.contains("tenant.client_key_path"));
    assert!(config.sections().contains("simulator"));
    assert!(is_dotted_key("engine.drift.mode") && !is_dotted_key("console.tokens.NAME.role"));
    let commands = commands();
    assert!(
        commands
            .iter()
            .any(|c| c == "policy-reconciler jobs cancel")
    );
    assert!(
        commands
            .iter()
            .any(|c| c == "policy-reconciler drift sweep")
    );
    assert!(alerts().contains_key("ReconcilerWorkerDown"));
}
