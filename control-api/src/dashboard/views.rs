//! What the dashboard's JSON endpoints answer: apps, versions and audit entries
//! as JSON objects, and the request and wake counters read back from the
//! Prometheus text of `/metrics`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::control_plane::VersionView;
use crate::model::{App, AuditEntry, Route, VersionStatus};

/// Why the request rates are for the whole ingress: what the page shows under
/// them.
pub const NO_PER_APP_NOTE: &str = "These rates are for the whole ingress, from \
ingress_requests_total (by how the host resolved and by status class). Each app's own \
request and 5xx rates are next to its name: counted per version by this node's proxy \
(not by replicas).";

/// One app: its name, hosts (routes, with their kind), active version, and the
/// versions a request can reach or that carry a label (the active one and the
/// previews, expired ones until the GC takes them), newest first. Other
/// versions (replaced, kept for rollback) are only counted.
pub fn app_json(app: &App, routes: &[Route], versions: &[VersionView]) -> Value {
    let hosts: Vec<Value> = routes
        .iter()
        .filter(|route| route.app == app.name)
        .map(|route| json!({ "host": route.key(), "kind": route.kind.as_str() }))
        .collect();
    let active = app.active_version.as_deref();
    let (shown, hidden): (Vec<&VersionView>, Vec<&VersionView>) =
        versions.iter().partition(|view| {
            view.label.is_some()
                || Some(view.id.as_str()) == active
                || view.status == VersionStatus::Active
        });
    // Every version of the app counts, shown or not (a replaced version still
    // answers its last requests).
    let (requests, errors) = versions
        .iter()
        .filter(|view| view.app == app.name)
        .fold((0, 0), |(requests, errors), view| {
            (requests + view.answers.0, errors + view.answers.1)
        });
    json!({
        "name": app.name,
        "created_at_ms": app.created_at_ms,
        "requests": requests,
        "errors": errors,
        "active_version": app.active_version,
        "hosts": hosts,
        "versions": shown
            .iter()
            .map(|view| version_json(view, Some(view.id.as_str()) == active))
            .collect::<Vec<_>>(),
        "other_versions": hidden.len(),
    })
}

/// One version as the page shows it; `active` when it is its app's active
/// version.
pub fn version_json(view: &VersionView, active: bool) -> Value {
    json!({
        "id": view.id,
        "app": view.app,
        "active": active,
        "status": view.status.as_str(),
        "label": view.label,
        "branch": view.branch,
        "env": view.env.as_str(),
        "runtime": view.runtime,
        "urls": view.urls,
        "created_at_ms": view.created_at_ms,
        "expires_at_ms": view.expires_at_ms,
        "desired_state": view.desired_state.as_str(),
        "observed_state": view.observed_state.as_str(),
        "failure": view.failure,
        "last_activity_at_ms": view.last_activity_at_ms,
        "requests": view.answers.0,
        "errors": view.answers.1,
        "last_start_ms": view.last_start_ms,
        "pending": view.pending.as_ref().map(|pending| json!({
            "desired_state": pending.desired.as_str(),
            "due_at_ms": pending.due_at_ms,
            "reason": pending.reason.as_str(),
            "actor": pending.actor,
        })),
    })
}

/// One audit entry.
pub fn audit_json(entry: &AuditEntry) -> Value {
    json!({
        "at_ms": entry.at_ms,
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "detail": entry.detail,
    })
}

/// One sample of `name{labels} value` from the Prometheus text format.
#[derive(Debug, PartialEq)]
pub struct Sample<'a> {
    /// The metric's name (`ingress_requests_total`, `ingress_wake_seconds_sum`).
    pub name: &'a str,
    /// Its labels in the order written, values unescaped.
    pub labels: Vec<(&'a str, String)>,
    /// Its value (a timestamp after it is ignored).
    pub value: f64,
}

impl Sample<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// Reads one line of the Prometheus text format; `None` for comments, blank
/// lines and anything it cannot read.
pub fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, value) = if line.contains('{') {
        let close = line.rfind('}')?;
        (&line[..close + 1], line[close + 1..].trim())
    } else {
        line.split_once(' ')?
    };
    // A timestamp may follow the value.
    let value = value.split_whitespace().next()?.parse::<f64>().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
        None => (series, Vec::new()),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `key="value",key="value"`, with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(mut text: &str) -> Option<Vec<(&str, String)>> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if text.is_empty() {
            return Some(labels);
        }
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()? {
                    (_, 'n') => value.push('\n'),
                    (_, other) => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim(), value));
        text = &rest[end + 1..];
    }
}

/// The counters the page turns into rates, from the `/metrics` text at `at_ms`:
/// requests by status class and by resolution kind (whole ingress), starts
/// (`ingress_wakes_total`) and held requests (`ingress_wake_requests_total`)
/// by result, and the `ingress_wake_seconds` sum and count. `per_app` is
/// false, with [`NO_PER_APP_NOTE`]: these are the whole ingress's (per-app
/// counters come with each app, from its versions' activity).
pub fn metrics_json(text: &str, at_ms: u64) -> Value {
    let mut total = 0.0;
    let mut by_status: BTreeMap<String, f64> = BTreeMap::new();
    let mut by_kind: BTreeMap<String, f64> = BTreeMap::new();
    let mut starts: BTreeMap<String, f64> = BTreeMap::new();
    let mut held: BTreeMap<String, f64> = BTreeMap::new();
    let mut wake_sum = 0.0;
    let mut wake_count = 0.0;
    for sample in text.lines().filter_map(parse_sample) {
        match sample.name {
            "ingress_requests_total" => {
                total += sample.value;
                if let Some(status) = sample.label("status") {
                    *by_status.entry(status.to_string()).or_default() += sample.value;
                }
                if let Some(kind) = sample.label("kind") {
                    *by_kind.entry(kind.to_string()).or_default() += sample.value;
                }
            }
            "ingress_wakes_total" => {
                if let Some(result) = sample.label("result") {
                    *starts.entry(result.to_string()).or_default() += sample.value;
                }
            }
            "ingress_wake_requests_total" => {
                if let Some(result) = sample.label("result") {
                    *held.entry(result.to_string()).or_default() += sample.value;
                }
            }
            "ingress_wake_seconds_sum" => wake_sum += sample.value,
            "ingress_wake_seconds_count" => wake_count += sample.value,
            _ => {}
        }
    }
    json!({
        "at_ms": at_ms,
        "per_app": false,
        "note": NO_PER_APP_NOTE,
        "requests": {
            "total": total,
            "by_status": by_status,
            "by_kind": by_kind,
        },
        "starts": starts,
        "held_requests": held,
        "wake_seconds": { "sum": wake_sum, "count": wake_count },
    })
}
