//! Checks a Prometheus text exposition against the metrics a source file
//! documents and against Prometheus naming conventions.
//!
//! Shared by the exposition tests of the client (`core/tests`) and of the
//! demo server (`demo/tests`, which includes this file by path).
//!
//! - [`parse`] reads the text format (0.0.4) into metric families.
//! - [`convention_problems`] applies the naming rules: counters end in
//!   `_total`, histograms and summaries in a base unit (`_seconds`,
//!   `_bytes`), no other unit in any name, snake_case label names.
//! - [`documented`] reads the `pub const NAME: &str = "metric";` items of a
//!   metrics module and their doc comments; [`contract_problems`] checks that
//!   the docs name exactly the labels and label values of a [`Metric`]
//!   contract, and that the exposition carries each metric with exactly those
//!   labels and values.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

/// The type a `# TYPE` line gives a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Rendered as `histogram` or `summary` (the Prometheus exporter renders
    /// a histogram without configured buckets as a summary).
    Histogram,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (with `_bucket`, `_sum`, `_count` for histograms).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A metric family: its `# TYPE`, and its samples.
#[derive(Debug, Clone, Default)]
pub struct Family {
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

impl Family {
    /// The samples' labels other than `le` and `quantile`, deduplicated.
    pub fn label_sets(&self) -> BTreeSet<BTreeMap<String, String>> {
        self.samples
            .iter()
            .map(|s| {
                let mut l = s.labels.clone();
                l.remove("le");
                l.remove("quantile");
                l
            })
            .collect()
    }

    /// The value of the sample named like the family whose labels include
    /// all of `labels`.
    pub fn value(&self, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == family
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

/// Metric families by name.
pub type Exposition = BTreeMap<String, Family>;

/// Parses the Prometheus text format. Every sample must belong to a family
/// declared by a `# TYPE` line before it. Errors name the line.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut families = Exposition::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    valid_name(name).map_err(|e| fail(&e))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(fail("unknown metric type"));
                    }
                    let family = families.entry(name.to_owned()).or_default();
                    if !family.kind.is_empty() {
                        return Err(fail("second TYPE line for a family"));
                    }
                    family.kind = kind.to_owned();
                }
                (Some("HELP"), Some(name), help) => {
                    valid_name(name).map_err(|e| fail(&e))?;
                    families.entry(name.to_owned()).or_default().help =
                        Some(help.unwrap_or_default().to_owned());
                }
                (Some("TYPE" | "HELP"), _, _) => return Err(fail("incomplete comment")),
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|e| fail(&e))?;
        let family = family_of(&families, &sample.name)
            .ok_or_else(|| fail("sample of a family without a TYPE line"))?;
        families
            .get_mut(&family)
            .map(|f| f.samples.push(sample))
            .ok_or_else(|| fail("no family"))?;
    }
    Ok(families)
}

/// The family a sample belongs to: its own name, or its name less a
/// histogram or summary suffix.
fn family_of(families: &Exposition, sample: &str) -> Option<String> {
    let typed = |n: &str| families.get(n).is_some_and(|f| !f.kind.is_empty());
    if typed(sample) {
        return Some(sample.to_owned());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = sample.strip_suffix(suffix)?;
        let kind = families.get(base).map(|f| f.kind.as_str());
        let fits = match *suffix {
            "_bucket" => kind == Some("histogram"),
            _ => matches!(kind, Some("histogram" | "summary")),
        };
        fits.then(|| base.to_owned())
    })
}

fn valid_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..end];
    valid_name(name)?;
    let mut rest = &line[end..];
    let mut labels = BTreeMap::new();
    if let Some(mut s) = rest.strip_prefix('{') {
        loop {
            s = s.trim_start();
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = s.find('=').ok_or("label without '='")?;
            let key = s[..eq].trim();
            valid_name(key).map_err(|_| format!("invalid label name {key:?}"))?;
            s = s[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = s.char_indices();
            let close = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => return Err("invalid escape in a label value".into()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            };
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key:?} twice"));
            }
            s = &s[close + 1..];
            s = s.strip_prefix(',').unwrap_or(s);
        }
    }
    let mut fields = rest.split_whitespace();
    let value = match fields.next().ok_or("no value")? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("invalid value {v:?}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("invalid timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Units that are not base units, as name parts.
const NON_BASE_UNITS: &[&str] = &[
    "milliseconds",
    "microseconds",
    "nanoseconds",
    "millis",
    "ms",
    "us",
    "ns",
    "minutes",
    "hours",
    "days",
    "kilobytes",
    "megabytes",
    "kb",
    "mb",
    "percent",
];

/// Base-unit suffixes a histogram or summary name may end with.
const BASE_UNITS: &[&str] = &["_seconds", "_bytes", "_ratio"];

/// Breaks of the Prometheus naming conventions in `expo`, one line each.
pub fn convention_problems(expo: &Exposition) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, family) in expo {
        let mut bad = |why: String| problems.push(format!("{name}: {why}"));
        if family.kind.is_empty() {
            bad("HELP without TYPE".into());
            continue;
        }
        if name.chars().any(|c| c.is_ascii_uppercase()) {
            bad("name not in snake_case".into());
        }
        if let Some(unit) = name.split('_').find(|p| NON_BASE_UNITS.contains(p)) {
            bad(format!("unit `{unit}` is not a base unit"));
        }
        let reserved = ["_total", "_count", "_sum", "_bucket"];
        match family.kind.as_str() {
            "counter" => {
                if !name.ends_with("_total") {
                    bad("a counter's name must end in `_total`".into());
                }
            }
            "histogram" | "summary" => {
                if !BASE_UNITS.iter().any(|u| name.ends_with(u)) {
                    bad(format!("a {} must end in a base unit", family.kind));
                }
            }
            "gauge" => {
                if let Some(s) = reserved.iter().find(|s| name.ends_with(*s)) {
                    bad(format!("a gauge's name must not end in `{s}`"));
                }
            }
            other => bad(format!("type {other} not expected")),
        }
        for sample in &family.samples {
            for key in sample.labels.keys() {
                if key.starts_with("__") || key.chars().any(|c| c.is_ascii_uppercase()) {
                    bad(format!("label `{key}` is reserved or not snake_case"));
                }
            }
            if family.kind == "counter" && (sample.value.is_nan() || sample.value < 0.0) {
                bad(format!(
                    "counter sample {} is {}",
                    sample.name, sample.value
                ));
            }
        }
    }
    problems
}

/// A metric constant of a metrics module and its doc comment.
#[derive(Debug, Clone)]
pub struct Documented {
    /// The constant, e.g. `CLIENT_REQUESTS`.
    pub constant: String,
    /// The metric name, e.g. `fyerrpc_client_requests_total`.
    pub name: String,
    /// The doc comment, lines joined with spaces.
    pub doc: String,
}

impl Documented {
    /// The words the doc puts in backticks (label names and label values),
    /// outside intra-doc links.
    pub fn tokens(&self) -> BTreeSet<String> {
        backticked(&self.doc)
    }

    /// The kind the doc names as its first word (`Counter:` and so on).
    pub fn kind(&self) -> Option<Kind> {
        match self.doc.split(':').next()?.trim() {
            "Counter" => Some(Kind::Counter),
            "Gauge" => Some(Kind::Gauge),
            "Histogram" => Some(Kind::Histogram),
            _ => None,
        }
    }
}

/// Backticked identifiers of `doc` (no paths, no code), except in `[...]`
/// links.
pub fn backticked(doc: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = doc;
    while let Some(start) = rest.find('`') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('`') else { break };
        let word = &after[..end];
        let in_link = rest[..start].ends_with('[');
        let ident = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ident && !in_link {
            out.insert(word.to_owned());
        }
        rest = &after[end + 1..];
    }
    out
}

/// The `pub const NAME: &str = "value";` items of `source` with their doc
/// comments.
pub fn documented(source: &str) -> Vec<Documented> {
    let mut out = Vec::new();
    let mut doc: Vec<&str> = Vec::new();
    for line in source.lines() {
        let line = line.trim();
        if let Some(d) = line.strip_prefix("///") {
            doc.push(d.trim());
            continue;
        }
        if let Some(decl) = line.strip_prefix("pub const ") {
            let parsed = decl.split_once(": &str = \"").and_then(|(c, rest)| {
                let value = rest.strip_suffix("\";")?;
                Some((c.trim().to_owned(), value.to_owned()))
            });
            if let Some((constant, name)) = parsed {
                out.push(Documented {
                    constant,
                    name,
                    doc: doc.join(" "),
                });
            }
        }
        if !line.starts_with("#[") {
            doc.clear();
        }
    }
    out
}

/// A label of a metric contract.
#[derive(Debug, Clone, Copy)]
pub struct Label {
    pub name: &'static str,
    /// Every value the label may take; `None` for values known only at run
    /// time (service, instance, method), given to [`contract_problems`].
    pub values: Option<&'static [&'static str]>,
    /// Values the doc comment must list (in backticks).
    pub documented: &'static [&'static str],
    /// Values the exposition must show.
    pub required: &'static [&'static str],
}

impl Label {
    /// A label whose values are checked against the run-time set.
    pub const fn free(name: &'static str) -> Self {
        Self {
            name,
            values: None,
            documented: &[],
            required: &[],
        }
    }

    /// A label with a closed set of values, all documented.
    pub const fn one_of(name: &'static str, values: &'static [&'static str]) -> Self {
        Self {
            name,
            values: Some(values),
            documented: values,
            required: &[],
        }
    }

    /// Values that must appear in the exposition.
    pub const fn requiring(mut self, required: &'static [&'static str]) -> Self {
        self.required = required;
        self
    }

    /// Values the docs must list (instead of all of them).
    pub const fn documenting(mut self, documented: &'static [&'static str]) -> Self {
        self.documented = documented;
        self
    }
}

/// What a metric's docs promise: its name, kind and labels.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [Label],
    /// Whether this test run emits it (false: checked in the docs only).
    pub emitted: bool,
}

/// Where the contracts and the docs or the exposition disagree, one line
/// each.
///
/// - every documented constant has a contract and every contract a
///   documented constant;
/// - the doc names the kind (when it names one), every label, and the
///   documented values, and no other backticked word; `global_labels` are
///   documented once for the module and may be missing from a constant's doc;
/// - an emitted metric is in `expo` with its kind; every sample has exactly
///   the contract's labels, values within the label's set (or `runtime`'s
///   set for that label name), and the required values appear.
pub fn contract_problems(
    contracts: &[Metric],
    docs: &[Documented],
    global_labels: &[&str],
    runtime: &BTreeMap<&str, BTreeSet<String>>,
    expo: &Exposition,
) -> Vec<String> {
    let mut problems = Vec::new();
    for d in docs {
        if !contracts.iter().any(|c| c.name == d.name) {
            problems.push(format!(
                "{} ({}) is documented but has no contract in the test",
                d.constant, d.name
            ));
        }
    }
    for c in contracts {
        let mut bad = |why: String| problems.push(format!("{}: {why}", c.name));
        let Some(doc) = docs.iter().find(|d| d.name == c.name) else {
            bad("not documented".into());
            continue;
        };
        if let Some(kind) = doc.kind() {
            if kind != c.kind {
                bad(format!(
                    "documented as {kind:?}, contract says {:?}",
                    c.kind
                ));
            }
        }
        let tokens = doc.tokens();
        let mut allowed: BTreeSet<&str> = BTreeSet::new();
        for l in c.labels {
            allowed.insert(l.name);
            allowed.extend(l.values.unwrap_or_default().iter().copied());
            if !tokens.contains(l.name) && !global_labels.contains(&l.name) {
                bad(format!("doc does not name label `{}`", l.name));
            }
            for v in l.documented {
                if !tokens.contains(*v) {
                    bad(format!(
                        "doc does not list value `{v}` of label `{}`",
                        l.name
                    ));
                }
            }
        }
        for t in &tokens {
            if !allowed.contains(t.as_str()) {
                bad(format!(
                    "doc names `{t}`, which is no label or value of the metric"
                ));
            }
        }
        if !c.emitted {
            continue;
        }
        let Some(family) = expo.get(c.name) else {
            bad("not in the exposition".into());
            continue;
        };
        let kind_ok = match c.kind {
            Kind::Counter => family.kind == "counter",
            Kind::Gauge => family.kind == "gauge",
            Kind::Histogram => family.kind == "histogram" || family.kind == "summary",
        };
        if !kind_ok {
            bad(format!(
                "exposed as {}, contract says {:?}",
                family.kind, c.kind
            ));
        }
        let names: BTreeSet<&str> = c.labels.iter().map(|l| l.name).collect();
        let sets = family.label_sets();
        for set in &sets {
            let keys: BTreeSet<&str> = set.keys().map(String::as_str).collect();
            if keys != names {
                bad(format!("sample labels {keys:?}, documented {names:?}"));
            }
        }
        for l in c.labels {
            let seen: BTreeSet<&str> = sets
                .iter()
                .filter_map(|s| s.get(l.name).map(String::as_str))
                .collect();
            for v in &seen {
                let ok = match (l.values, runtime.get(l.name)) {
                    (Some(values), _) => values.contains(v),
                    (None, Some(known)) => known.contains(*v),
                    (None, None) => true,
                };
                if !ok {
                    bad(format!("label `{}` has the unexpected value {v:?}", l.name));
                }
            }
            for v in l.required {
                if !seen.contains(v) {
                    bad(format!(
                        "label `{}` never has the value {v:?} (seen {seen:?})",
                        l.name
                    ));
                }
            }
        }
    }
    problems
}

/// The gRPC status code names, as labels carry them.
pub const CODES: &[&str] = &[
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// Asserts `problems` is empty, listing them and the exposition if not.
#[track_caller]
pub fn assert_none(what: &str, problems: &[String], text: &str) {
    assert!(
        problems.is_empty(),
        "{what}:\n  {}\n--- exposition ---\n{text}",
        problems.join("\n  ")
    );
}
