//! Alert rules of a `monitor` block, evaluated by its daemon at every heartbeat.
//!
//! ```hcl
//! monitor "dash" {
//!   listen = 9190
//!   alerts = {
//!     errors = { service = "app", metric = "error_ratio", above = 0.05, window = "5s" }
//!     slow   = { service = "app", metric = "latency_p95", above = 0.5, window = "10s", min_requests = 50 }
//!     hot    = { service = "app", metric = "cpu", above = 0.9, window = "30s", scope = "group" }
//!   }
//! }
//! ```
//!
//! A rule compares one metric, over its `window`, with `above` (the alert is active while the
//! value is strictly above it), for each instance of the service (`scope = "instance"`, the
//! default) or for the service as a whole (`scope = "group"`). Like a Prometheus rule
//! `avg_over_time(...[window]) > above` with `for`: an active alert is `pending` until it has
//! been active for `for` (default 0: it fires at once), then `firing`; it clears at the first
//! heartbeat the value is not above.
//!
//! | metric        | unit            | from                                   | group      |
//! |---------------|-----------------|----------------------------------------|------------|
//! | `error_ratio` | 0..1            | 5xx share of the balancers' access logs | pooled     |
//! | `latency_p50` / `latency_p95` / `latency_p99` | seconds | the logs' request times | pooled |
//! | `cpu`         | cores (1 = one) | mean of the replica's process samples  | sum        |
//! | `memory`      | bytes (RSS)     | mean of the replica's process samples  | sum        |
//!
//! Error and latency rules need `min_requests` answers in the window (default 20) so that one
//! failure of one request does not fire. An instance is an upstream `ip:port` as the access
//! logs name it: a recorded replica's endpoint, and also an upstream no recorded replica has (a
//! canary's candidate) when a balancer that routes to the service's replicas sends to it. CPU
//! and memory are sampled for the recorded replicas only.
//!
//! Every heartbeat the daemon shows the rules and their values in `/api/status` (`alerts`), on
//! the dashboard, in `/metrics` (`ALERTS{alertname=...,alertstate="firing"}`,
//! `ALERTS_FOR_STATE`, `pipeline_alert_value`) and writes the firing ones to
//! `alerts.json` in its run directory ([`crate::alert_file`]): a progressive canary aborts when
//! one names a candidate.

use super::collect::Status;
use crate::alert_file::{self, AlertFile, FiringAlert};
use crate::parse_duration;
use pipeline_host::access_log::AccessLine;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// The metrics a rule may watch.
pub const METRICS: [&str; 6] = [
    "error_ratio",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "cpu",
    "memory",
];
const DEFAULT_MIN_REQUESTS: u64 = 20;
const DEFAULT_WINDOW: &str = "30s";
const MIN_WINDOW: Duration = Duration::from_millis(500);
const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// Answers kept per upstream at most (a window of an hour at a very high rate is cut).
const MAX_EVENTS: usize = 500_000;
/// Rules are judged at most this often (a heartbeat can be 10 ms; a canary looks every 500 ms);
/// in between, the last judgement is shown.
const EVALUATE_EVERY_MS: u64 = 250;

/// One rule, as the daemon's config carries it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AlertRule {
    pub name: String,
    /// A service's name (`web`, `module.m.web`) or block (`service.web`); None: every service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub metric: String,
    pub above: f64,
    pub window_ms: u64,
    /// How long it must be active before it fires (Prometheus' `for`).
    #[serde(default)]
    pub for_ms: u64,
    /// `instance` or `group`.
    pub scope: String,
    pub min_requests: u64,
}

impl AlertRule {
    fn window_s(&self) -> f64 {
        self.window_ms as f64 / 1000.0
    }
    fn reads_logs(&self) -> bool {
        self.metric == "error_ratio" || self.metric.starts_with("latency_")
    }
}

/// A mistake in `alerts`: the path of the setting (`alerts.slow.metric`), what is wrong, what
/// to do.
#[derive(Debug, PartialEq)]
pub struct RuleError {
    pub path: String,
    pub message: String,
    pub help: String,
}

fn bad(path: String, message: impl Into<String>, help: impl Into<String>) -> RuleError {
    RuleError {
        path,
        message: message.into(),
        help: help.into(),
    }
}

const SHAPE: &str = "alerts = { NAME = { service = \"web\", metric = \"error_ratio\", above = 0.05, window = \"30s\" } }";

/// The rules of `alerts` (a map of name to rule), or every mistake in it. `interval`: the
/// monitor's heartbeat (a window shorter than one would see nothing).
pub fn parse(v: &serde_json::Value, interval: Duration) -> Result<Vec<AlertRule>, Vec<RuleError>> {
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    let map = match v {
        serde_json::Value::Null => return Ok(vec![]),
        serde_json::Value::Object(m) => m,
        _ => {
            return Err(vec![bad(
                "alerts".into(),
                "alerts must be a map of rule names to rules",
                format!("write e.g. {SHAPE}"),
            )])
        }
    };
    for (name, r) in map {
        let path = |k: &str| format!("alerts.{name}.{k}");
        if name.is_empty()
            || name.starts_with(|c: char| c.is_ascii_digit())
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            errors.push(bad(
                format!("alerts.{name}"),
                format!("{name:?} is not a usable alert name"),
                "name a rule with letters, digits and `_`, not starting with a digit (it becomes Prometheus' `alertname`)",
            ));
            continue;
        }
        let Some(o) = r.as_object() else {
            errors.push(bad(
                format!("alerts.{name}"),
                "a rule is an object",
                format!("write e.g. {SHAPE}"),
            ));
            continue;
        };
        for k in o.keys() {
            if ![
                "service",
                "metric",
                "above",
                "window",
                "for",
                "scope",
                "min_requests",
            ]
            .contains(&k.as_str())
            {
                errors.push(bad(
                    path(k),
                    format!("unknown setting `{k}`"),
                    "a rule takes service, metric, above, window, for, scope and min_requests",
                ));
            }
        }
        let service = match o.get("service") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(_) => {
                errors.push(bad(
                    path("service"),
                    "service is the name of a service, e.g. \"web\"",
                    "leave it out to watch every service",
                ));
                None
            }
        };
        let metric = match o.get("metric") {
            Some(serde_json::Value::String(m)) if METRICS.contains(&m.as_str()) => m.clone(),
            Some(serde_json::Value::String(m)) => {
                errors.push(bad(
                    path("metric"),
                    format!("unknown metric {m:?}"),
                    format!("metric is one of {}", METRICS.join(", ")),
                ));
                continue;
            }
            Some(_) => {
                errors.push(bad(
                    path("metric"),
                    "metric is a string",
                    format!("metric is one of {}", METRICS.join(", ")),
                ));
                continue;
            }
            None => {
                errors.push(bad(
                    path("metric"),
                    "the rule has no metric",
                    format!("add metric = one of {}", METRICS.join(", ")),
                ));
                continue;
            }
        };
        let unit = match metric.as_str() {
            "error_ratio" => "a share from 0 to 1, e.g. 0.05 for 5 %",
            "cpu" => "cores, e.g. 0.9 for 90 % of one core",
            "memory" => "bytes, e.g. 268435456 for 256 MiB",
            _ => "seconds, e.g. 0.5",
        };
        let above = match o.get("above").and_then(|a| a.as_f64()) {
            Some(a) if a < 0.0 || !a.is_finite() => {
                errors.push(bad(
                    path("above"),
                    format!("a threshold of {a} can never be crossed as meant"),
                    format!("above is {unit}, not negative"),
                ));
                continue;
            }
            Some(a) if metric == "error_ratio" && a >= 1.0 => {
                errors.push(bad(
                    path("above"),
                    format!("an error ratio is never above {a}"),
                    format!("above is {unit}"),
                ));
                continue;
            }
            Some(a) => a,
            None => {
                errors.push(bad(
                    path("above"),
                    if o.contains_key("above") {
                        "above is a number"
                    } else {
                        "the rule has no threshold"
                    },
                    format!("add above = the value the alert fires over: {unit}"),
                ));
                continue;
            }
        };
        let window = match o.get("window") {
            None | Some(serde_json::Value::Null) => parse_duration(DEFAULT_WINDOW),
            Some(serde_json::Value::String(w)) => match parse_duration(w) {
                Some(d) if d < MIN_WINDOW.max(interval) => {
                    errors.push(bad(
                        path("window"),
                        format!("a window of {w:?} is shorter than the monitor's heartbeat or half a second"),
                        format!("use at least {:?} (the interval is {interval:?})", MIN_WINDOW.max(interval)),
                    ));
                    continue;
                }
                Some(d) if d > MAX_WINDOW => {
                    errors.push(bad(
                        path("window"),
                        format!("a window of {w:?} is longer than the hour the monitor keeps"),
                        "use at most \"1h\"",
                    ));
                    continue;
                }
                Some(d) => Some(d),
                None => {
                    errors.push(bad(
                        path("window"),
                        format!("{w:?} is not a duration"),
                        "durations look like \"500ms\", \"30s\" or \"5m\"",
                    ));
                    continue;
                }
            },
            Some(_) => {
                errors.push(bad(
                    path("window"),
                    "window is a duration string",
                    "durations look like \"500ms\", \"30s\" or \"5m\"",
                ));
                continue;
            }
        }
        .expect("the default window parses");
        let for_ms = match o.get("for") {
            None | Some(serde_json::Value::Null) => 0,
            Some(f) => match f.as_str().and_then(parse_duration) {
                Some(d) if d <= MAX_WINDOW => d.as_millis() as u64,
                _ => {
                    errors.push(bad(
                        path("for"),
                        format!("{f} is not a duration of at most an hour"),
                        "for is how long the rule must hold before it fires, e.g. \"10s\" (default: at once)",
                    ));
                    continue;
                }
            },
        };
        let scope = match o.get("scope") {
            None | Some(serde_json::Value::Null) => "instance".to_string(),
            Some(serde_json::Value::String(s)) if s == "instance" || s == "group" => s.clone(),
            Some(s) => {
                errors.push(bad(
                    path("scope"),
                    format!("unknown scope {s}"),
                    "scope is \"instance\" (each instance on its own, the default) or \"group\" (the service as a whole)",
                ));
                continue;
            }
        };
        let min_requests = match o.get("min_requests") {
            None | Some(serde_json::Value::Null) => DEFAULT_MIN_REQUESTS,
            Some(n) => match n.as_f64() {
                Some(n) if n.fract() == 0.0 && (1.0..=1e9).contains(&n) => n as u64,
                _ => {
                    errors.push(bad(
                        path("min_requests"),
                        format!("{n} is not a count of requests"),
                        "min_requests is a whole number from 1, the answers a window needs before the rule judges it",
                    ));
                    continue;
                }
            },
        };
        rules.push(AlertRule {
            name: name.clone(),
            service,
            metric,
            above,
            window_ms: window.as_millis() as u64,
            for_ms,
            scope,
            min_requests,
        });
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

// ------------------------------------------------------------------------------------------------
// What /api/status, the dashboard and /metrics show.

#[derive(Clone, Debug, Default, Serialize)]
pub struct AlertsView {
    pub rules: Vec<RuleView>,
    /// Every (rule, instance or group) with a value this heartbeat, the firing ones first.
    pub alerts: Vec<AlertState>,
    pub firing: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RuleView {
    pub name: String,
    pub service: Option<String>,
    pub metric: String,
    pub above: f64,
    pub window_s: f64,
    pub for_s: f64,
    pub scope: String,
    pub min_requests: u64,
    /// Instances (or groups) it judged this heartbeat (with enough data).
    pub judged: usize,
    pub pending: usize,
    pub firing: usize,
    /// Why it judges nothing (no such service watched, too few requests).
    pub note: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AlertState {
    /// `firing`, `pending` (active for less than its `for`) or `inactive`.
    pub state: String,
    #[serde(flatten)]
    pub alert: FiringAlert,
}

// ------------------------------------------------------------------------------------------------
// Evaluation.

#[derive(Clone, Copy, Debug)]
struct Answer {
    at: f64,
    /// Request time (NaN for an attempt nginx gave up on).
    secs: f64,
    err: bool,
}

/// (unix s, CPU cores, memory bytes) of a replica at one heartbeat.
type ProcSample = (f64, Option<f64>, Option<u64>);

/// One instance a rule looks at.
struct Inst {
    /// Upstream `ip:port`, or the replica's address when it has no endpoint.
    key: String,
    /// The recorded replica (`service.web[0]`), if it is one.
    address: Option<String>,
}

#[derive(Default)]
pub struct Alerts {
    rules: Vec<AlertRule>,
    keep_s: f64,
    /// Answers per upstream, oldest first.
    upstreams: HashMap<String, VecDeque<Answer>>,
    /// Per upstream: the balancers whose logs named it, and when last.
    seen_on: HashMap<String, HashMap<String, f64>>,
    /// Per replica address: (unix s, cpu, memory) at every heartbeat.
    procs: HashMap<String, VecDeque<ProcSample>>,
    /// (rule, instance) → firing since (unix ms).
    since: HashMap<(String, String), u64>,
    /// Where `alerts.json` goes (the daemon's run directory).
    dir: Option<PathBuf>,
    monitor: String,
    interval_ms: u64,
    /// The last write failed (said once, not at every heartbeat).
    write_failed: bool,
    /// The last judgement and when (unix ms).
    last: Option<(u64, AlertsView)>,
}

impl Alerts {
    pub fn new(rules: Vec<AlertRule>, monitor: &str, interval_ms: u64) -> Alerts {
        let keep_s = rules.iter().map(AlertRule::window_s).fold(0.0, f64::max);
        Alerts {
            rules,
            keep_s,
            monitor: monitor.to_string(),
            interval_ms,
            ..Default::default()
        }
    }

    /// Publish the firing alerts to `dir/alerts.json` at every evaluation.
    pub fn publish_to(&mut self, dir: PathBuf) {
        self.dir = Some(dir);
    }

    /// One line of a balancer's access log.
    pub fn observe(&mut self, balancer: &str, line: &AccessLine) {
        if self.rules.is_empty() {
            return;
        }
        let last = line.upstreams.len().saturating_sub(1);
        for (i, (up, st)) in line.upstreams.iter().enumerate() {
            let err = st.unwrap_or(line.status) >= 500;
            // The request time is the answering attempt's (with the failed ones before it).
            let secs = if i == last { line.secs } else { f64::NAN };
            let q = self.upstreams.entry(up.clone()).or_default();
            q.push_back(Answer {
                at: line.at,
                secs,
                err,
            });
            if q.len() > MAX_EVENTS {
                q.pop_front();
            }
            self.seen_on
                .entry(up.clone())
                .or_default()
                .insert(balancer.to_string(), line.at);
        }
    }

    /// Judge every rule against what was seen up to `st.generated_ms`, put the result into
    /// `st.alerts` and publish the firing ones.
    pub fn evaluate(&mut self, st: &mut Status) {
        if self.rules.is_empty() {
            return;
        }
        let now_ms = st.generated_ms;
        if let Some((at, view)) = &self.last {
            if now_ms.saturating_sub(*at) < EVALUATE_EVERY_MS {
                st.alerts = view.clone();
                return;
            }
        }
        let now = now_ms as f64 / 1000.0;
        let cut = now - self.keep_s;
        for q in self.upstreams.values_mut() {
            while q.front().is_some_and(|a| a.at < cut) {
                q.pop_front();
            }
        }
        self.upstreams.retain(|_, q| !q.is_empty());
        let seen_cut = now - self.keep_s.max(60.0);
        for b in self.seen_on.values_mut() {
            b.retain(|_, t| *t >= seen_cut);
        }
        self.seen_on.retain(|_, b| !b.is_empty());
        let mut present = BTreeSet::new();
        for r in st.services.iter().flat_map(|s| &s.replicas) {
            present.insert(r.address.clone());
            let q = self.procs.entry(r.address.clone()).or_default();
            q.push_back((now, r.cpu_ratio, r.memory_bytes));
            while q.front().is_some_and(|(t, _, _)| *t < cut) {
                q.pop_front();
            }
        }
        self.procs.retain(|a, _| present.contains(a));

        // Each service's instances: its replicas, and the upstreams nobody knows that a
        // balancer sending to its replicas also sends to (a canary's candidates).
        let known: BTreeSet<&str> = st
            .services
            .iter()
            .flat_map(|s| &s.replicas)
            .filter_map(|r| r.endpoint.as_deref())
            .chain(st.unwatched.iter().map(String::as_str))
            .collect();
        let groups: Vec<(String, String, Vec<Inst>)> = st
            .services
            .iter()
            .map(|s| {
                let mut insts: Vec<Inst> = s
                    .replicas
                    .iter()
                    .map(|r| Inst {
                        key: r.endpoint.clone().unwrap_or_else(|| r.address.clone()),
                        address: Some(r.address.clone()),
                    })
                    .collect();
                let balancers: BTreeSet<&String> = s
                    .replicas
                    .iter()
                    .filter_map(|r| r.endpoint.as_ref())
                    .filter_map(|e| self.seen_on.get(e))
                    .flat_map(|b| b.keys())
                    .collect();
                let mut strangers: Vec<&String> = self
                    .seen_on
                    .iter()
                    .filter(|(u, b)| {
                        !known.contains(u.as_str()) && b.keys().any(|k| balancers.contains(k))
                    })
                    .map(|(u, _)| u)
                    .collect();
                strangers.sort();
                insts.extend(strangers.into_iter().map(|u| Inst {
                    key: u.clone(),
                    address: None,
                }));
                (s.name.clone(), s.block.clone(), insts)
            })
            .collect();

        let mut view = AlertsView::default();
        let mut firing_now = HashMap::new();
        for rule in &self.rules {
            let mut rv = RuleView {
                name: rule.name.clone(),
                service: rule.service.clone(),
                metric: rule.metric.clone(),
                above: rule.above,
                window_s: rule.window_s(),
                for_s: rule.for_ms as f64 / 1000.0,
                scope: rule.scope.clone(),
                min_requests: rule.min_requests,
                ..Default::default()
            };
            let mine: Vec<&(String, String, Vec<Inst>)> = groups
                .iter()
                .filter(|(name, block, _)| {
                    rule.service
                        .as_ref()
                        .is_none_or(|s| s == name || s == block)
                })
                .collect();
            if mine.is_empty() {
                rv.note = Some(match &rule.service {
                    Some(s) => format!("the monitor watches no service {s:?}"),
                    None => "the monitor watches no service".into(),
                });
            }
            let from = now - rule.window_s();
            for (name, _, insts) in mine {
                let judged: Vec<(String, Option<String>, f64)> = if rule.scope == "group" {
                    let all: Vec<&Inst> = insts.iter().collect();
                    self.value(rule, &all, from, now)
                        .map(|v| (name.clone(), None, v))
                        .into_iter()
                        .collect()
                } else {
                    insts
                        .iter()
                        .filter_map(|i| {
                            self.value(rule, &[i], from, now)
                                .map(|v| (i.key.clone(), i.address.clone(), v))
                        })
                        .collect()
                };
                for (instance, address, value) in judged {
                    let on = value > rule.above;
                    rv.judged += 1;
                    let key = (rule.name.clone(), instance.clone());
                    let (state, since) = if on {
                        let s = self.since.get(&key).copied().unwrap_or(now_ms);
                        firing_now.insert(key, s);
                        if now_ms.saturating_sub(s) >= rule.for_ms {
                            rv.firing += 1;
                            ("firing", s)
                        } else {
                            rv.pending += 1;
                            ("pending", s)
                        }
                    } else {
                        ("inactive", 0)
                    };
                    view.alerts.push(AlertState {
                        state: state.into(),
                        alert: FiringAlert {
                            alert: rule.name.clone(),
                            service: name.clone(),
                            scope: rule.scope.clone(),
                            instance,
                            address,
                            metric: rule.metric.clone(),
                            value,
                            above: rule.above,
                            window_s: rule.window_s(),
                            since_ms: since,
                        },
                    });
                }
            }
            if rv.judged == 0 && rv.note.is_none() {
                rv.note = Some(if rule.reads_logs() {
                    format!(
                        "fewer than {} answers in the last {}s",
                        rule.min_requests,
                        rule.window_s()
                    )
                } else {
                    "no process samples yet".into()
                });
            }
            view.rules.push(rv);
        }
        self.since = firing_now;
        let rank = |s: &str| match s {
            "firing" => 0,
            "pending" => 1,
            _ => 2,
        };
        view.alerts
            .sort_by_key(|a| (rank(&a.state), a.alert.alert.clone()));
        view.firing = view.alerts.iter().filter(|a| a.state == "firing").count();
        if let Some(dir) = &self.dir {
            let file = AlertFile {
                monitor: self.monitor.clone(),
                written_ms: now_ms,
                interval_ms: self.interval_ms,
                firing: view
                    .alerts
                    .iter()
                    .filter(|a| a.state == "firing")
                    .map(|a| a.alert.clone())
                    .collect(),
            };
            match alert_file::write(dir, &file) {
                Ok(()) => self.write_failed = false,
                Err(e) if !self.write_failed => {
                    self.write_failed = true;
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "pipeline monitor: cannot write {}/{}: {e}",
                        dir.display(),
                        alert_file::FILE
                    );
                }
                Err(_) => {}
            }
        }
        self.last = Some((now_ms, view.clone()));
        st.alerts = view;
    }

    /// The rule's metric over `insts` in [from, now], or None with too little data.
    fn value(&self, rule: &AlertRule, insts: &[&Inst], from: f64, now: f64) -> Option<f64> {
        if rule.reads_logs() {
            let answers: Vec<&Answer> = insts
                .iter()
                .filter_map(|i| self.upstreams.get(&i.key))
                .flatten()
                .filter(|a| a.at >= from && a.at <= now + 1.0)
                .collect();
            if (answers.len() as u64) < rule.min_requests {
                return None;
            }
            if rule.metric == "error_ratio" {
                let errs = answers.iter().filter(|a| a.err).count();
                return Some(errs as f64 / answers.len() as f64);
            }
            let q = match rule.metric.as_str() {
                "latency_p50" => 0.50,
                "latency_p95" => 0.95,
                _ => 0.99,
            };
            let mut secs: Vec<f64> = answers
                .iter()
                .map(|a| a.secs)
                .filter(|s| s.is_finite())
                .collect();
            return quantile(&mut secs, q);
        }
        let per_instance: Vec<f64> = insts
            .iter()
            .filter_map(|i| self.procs.get(i.address.as_ref()?))
            .filter_map(|q| {
                let v: Vec<f64> = q
                    .iter()
                    .filter(|(t, _, _)| *t >= from)
                    .filter_map(|(_, cpu, mem)| {
                        if rule.metric == "cpu" {
                            *cpu
                        } else {
                            mem.map(|m| m as f64)
                        }
                    })
                    .collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            })
            .collect();
        (!per_instance.is_empty()).then(|| per_instance.iter().sum())
    }
}

/// Nearest-rank quantile (None when empty).
fn quantile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

fn label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// The alerts in the Prometheus text format: `ALERTS` and `ALERTS_FOR_STATE` as Prometheus
/// itself exposes its rules' alerts, and `pipeline_alert_value`, every judged value.
pub fn metrics(v: &AlertsView, out: &mut String) {
    let labels = |a: &FiringAlert| {
        format!(
            "alertname=\"{}\",service=\"{}\",scope=\"{}\",instance=\"{}\",metric=\"{}\"",
            label(&a.alert),
            label(&a.service),
            label(&a.scope),
            label(&a.instance),
            label(&a.metric)
        )
    };
    let active: Vec<&AlertState> = v.alerts.iter().filter(|a| a.state != "inactive").collect();
    let _ = writeln!(
        out,
        "# HELP ALERTS Alerts of the monitor's rules that are pending or firing now (1)."
    );
    let _ = writeln!(out, "# TYPE ALERTS gauge");
    for a in &active {
        let _ = writeln!(
            out,
            "ALERTS{{{},alertstate=\"{}\"}} 1",
            labels(&a.alert),
            a.state
        );
    }
    let _ = writeln!(
        out,
        "# HELP ALERTS_FOR_STATE Unix time (seconds) since when each pending or firing alert has been active."
    );
    let _ = writeln!(out, "# TYPE ALERTS_FOR_STATE gauge");
    for a in &active {
        let _ = writeln!(
            out,
            "ALERTS_FOR_STATE{{{}}} {}",
            labels(&a.alert),
            a.alert.since_ms / 1000
        );
    }
    let _ = writeln!(
        out,
        "# HELP pipeline_alert_value The value each alert rule judged over its window (firing above its threshold)."
    );
    let _ = writeln!(out, "# TYPE pipeline_alert_value gauge");
    for a in &v.alerts {
        let _ = writeln!(
            out,
            "pipeline_alert_value{{{}}} {}",
            labels(&a.alert),
            a.alert.value
        );
    }
    let _ = writeln!(
        out,
        "# HELP pipeline_alert_threshold The threshold of each alert rule (it fires above it)."
    );
    let _ = writeln!(out, "# TYPE pipeline_alert_threshold gauge");
    for r in &v.rules {
        let _ = writeln!(
            out,
            "pipeline_alert_threshold{{alertname=\"{}\",metric=\"{}\"}} {}",
            label(&r.name),
            label(&r.metric),
            r.above
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::collect::{ReplicaView, ServiceView};
    use serde_json::json;

    fn rules(v: serde_json::Value) -> Result<Vec<AlertRule>, Vec<RuleError>> {
        parse(&v, Duration::from_millis(100))
    }

    #[test]
    fn rules_parse_with_defaults_and_mistakes_name_their_setting() {
        let r = rules(json!({
            "errors": { "service": "web", "metric": "error_ratio", "above": 0.05, "window": "5s" },
            "hot": { "metric": "cpu", "above": 0.9, "scope": "group" }
        }))
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].window_ms, 5000);
        assert_eq!(r[0].min_requests, DEFAULT_MIN_REQUESTS);
        assert_eq!(r[1].scope, "group");
        assert_eq!(r[1].window_ms, 30_000);
        for (bad_rule, path, words) in [
            (
                json!({"metric": "errors", "above": 1}),
                "alerts.x.metric",
                "unknown metric",
            ),
            (
                json!({"metric": "cpu", "above": -1}),
                "alerts.x.above",
                "never be crossed",
            ),
            (
                json!({"metric": "error_ratio", "above": 1.5}),
                "alerts.x.above",
                "never above",
            ),
            (json!({"metric": "cpu"}), "alerts.x.above", "no threshold"),
            (
                json!({"metric": "cpu", "above": 1, "window": "soon"}),
                "alerts.x.window",
                "not a duration",
            ),
            (
                json!({"metric": "cpu", "above": 1, "window": "50ms"}),
                "alerts.x.window",
                "shorter",
            ),
            (
                json!({"metric": "cpu", "above": 1, "scope": "pod"}),
                "alerts.x.scope",
                "unknown scope",
            ),
            (
                json!({"metric": "cpu", "above": 1, "min_requests": 0.5}),
                "alerts.x.min_requests",
                "not a count",
            ),
            (
                json!({"metric": "cpu", "above": 1, "fro": "1m"}),
                "alerts.x.fro",
                "unknown setting",
            ),
            (
                json!({"metric": "cpu", "above": 1, "for": "ever"}),
                "alerts.x.for",
                "not a duration",
            ),
        ] {
            let e = rules(json!({ "x": bad_rule })).unwrap_err();
            assert_eq!(e[0].path, path, "{e:?}");
            assert!(e[0].message.contains(words), "{e:?}");
        }
        assert_eq!(rules(json!([1])).unwrap_err()[0].path, "alerts");
        assert_eq!(
            rules(json!({"1x": {"metric": "cpu", "above": 1}})).unwrap_err()[0].path,
            "alerts.1x"
        );
    }

    fn metrics_text(v: &AlertsView) -> String {
        let mut s = String::new();
        metrics(v, &mut s);
        s
    }

    fn line(at: f64, status: u16, secs: f64, up: &str) -> AccessLine {
        AccessLine {
            at,
            status,
            secs,
            upstreams: vec![(up.into(), Some(status))],
        }
    }

    fn status(now_ms: u64) -> Status {
        Status {
            generated_ms: now_ms,
            services: vec![ServiceView {
                name: "web".into(),
                block: "service.web".into(),
                replicas: vec![
                    ReplicaView {
                        address: "service.web[0]".into(),
                        endpoint: Some("127.0.0.1:8001".into()),
                        cpu_ratio: Some(0.5),
                        memory_bytes: Some(1000),
                        ..Default::default()
                    },
                    ReplicaView {
                        address: "service.web[1]".into(),
                        endpoint: Some("127.0.0.1:8002".into()),
                        cpu_ratio: Some(0.25),
                        memory_bytes: Some(3000),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_rule_fires_per_instance_on_a_candidate_too_and_clears_after_its_window() {
        let t = tempfile::tempdir().unwrap();
        let r = rules(json!({
            "errors": { "service": "web", "metric": "error_ratio", "above": 0.1, "window": "5s", "min_requests": 10 },
            "slow": { "service": "web", "metric": "latency_p95", "above": 0.2, "window": "5s", "scope": "group", "min_requests": 10 },
            "fat": { "service": "web", "metric": "memory", "above": 2000, "window": "5s" },
            "busy": { "service": "web", "metric": "cpu", "above": 0.7, "window": "5s", "scope": "group" },
        }))
        .unwrap();
        let mut a = Alerts::new(r, "monitor.dash", 100);
        let dir = t.path().join("monitor.dash");
        std::fs::create_dir(&dir).unwrap();
        a.publish_to(dir.clone());
        let t0 = 1_700_000_000.0;
        for i in 0..40 {
            let at = t0 + i as f64 * 0.1;
            a.observe("balancer.front", &line(at, 200, 0.01, "127.0.0.1:8001"));
            a.observe("balancer.front", &line(at, 200, 0.01, "127.0.0.1:8002"));
            // A candidate the monitor does not know: half 500s, slow.
            let st = if i % 2 == 0 { 500 } else { 200 };
            a.observe("balancer.front", &line(at, st, 0.5, "127.0.0.1:9009"));
            // Another balancer's upstream, not the service's.
            a.observe("balancer.other", &line(at, 500, 0.5, "127.0.0.1:7777"));
            // A replica of a service the monitor does not watch, behind the same balancer.
            a.observe("balancer.front", &line(at, 500, 0.5, "127.0.0.1:6666"));
        }
        let now = ((t0 + 4.0) * 1000.0) as u64;
        let mut st = status(now);
        st.unwatched = vec!["127.0.0.1:6666".into()];
        a.evaluate(&mut st);
        let firing: Vec<(String, String)> = st
            .alerts
            .alerts
            .iter()
            .filter(|x| x.state == "firing")
            .map(|x| (x.alert.alert.clone(), x.alert.instance.clone()))
            .collect();
        assert!(
            firing.contains(&("errors".into(), "127.0.0.1:9009".into())),
            "{firing:?}"
        );
        assert!(
            !firing
                .iter()
                .any(|(_, i)| i == "127.0.0.1:7777" || i == "127.0.0.1:6666"),
            "{firing:?}"
        );
        assert!(!firing.contains(&("errors".into(), "127.0.0.1:8001".into())));
        // p95 of the pooled group: a third of the answers take 0.5 s.
        assert!(
            firing.contains(&("slow".into(), "web".into())),
            "{firing:?}"
        );
        // Memory per instance: only the 3000-byte one; CPU of the group: 0.75 > 0.7.
        assert!(
            firing.contains(&("fat".into(), "127.0.0.1:8002".into())),
            "{firing:?}"
        );
        assert!(
            firing.contains(&("busy".into(), "web".into())),
            "{firing:?}"
        );
        assert_eq!(st.alerts.firing, 4);
        let text = {
            let mut s = String::new();
            metrics(&st.alerts, &mut s);
            s
        };
        assert!(text.contains("ALERTS{alertname=\"errors\",service=\"web\",scope=\"instance\",instance=\"127.0.0.1:9009\",metric=\"error_ratio\",alertstate=\"firing\"} 1"), "{text}");
        assert!(text.contains("pipeline_alert_value{alertname=\"errors\",service=\"web\",scope=\"instance\",instance=\"127.0.0.1:9009\",metric=\"error_ratio\"} 0.5"), "{text}");
        // Published: the canary finds it by its candidate's address.
        let hit = alert_file::firing_on(t.path(), now, &["127.0.0.1:9009".into()]);
        assert!(hit.is_some_and(|h| h.contains("`errors`")));
        // After the window, with no more answers: too few requests, nothing fires from logs.
        let later = now + 6000;
        let mut st = status(later);
        a.evaluate(&mut st);
        assert!(st
            .alerts
            .alerts
            .iter()
            .filter(|x| x.state == "firing")
            .all(|x| !["errors", "slow"].contains(&x.alert.alert.as_str())));
        let file: AlertFile =
            serde_json::from_slice(&std::fs::read(dir.join(alert_file::FILE)).unwrap()).unwrap();
        assert!(file.firing.iter().all(|f| f.alert != "errors"), "{file:?}");
        assert_eq!(file.written_ms, later);
    }

    #[test]
    fn too_few_requests_judge_nothing() {
        let r =
            rules(json!({ "errors": { "metric": "error_ratio", "above": 0.1, "window": "5s" } }))
                .unwrap();
        let mut a = Alerts::new(r, "monitor.dash", 100);
        let t0 = 1_700_000_000.0;
        a.observe("balancer.front", &line(t0, 500, 0.01, "127.0.0.1:8001"));
        let mut st = status(((t0 + 1.0) * 1000.0) as u64);
        a.evaluate(&mut st);
        assert_eq!(st.alerts.firing, 0);
        assert!(st.alerts.rules[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("fewer than 20")));
        assert_eq!(quantile(&mut [3.0, 1.0, 2.0, 4.0], 0.5), Some(2.0));
        // `for`: pending first, firing once it held that long.
        let r = rules(
            json!({ "fat": { "metric": "memory", "above": 2000, "window": "1s", "for": "2s" } }),
        )
        .unwrap();
        let mut a = Alerts::new(r, "monitor.dash", 100);
        let states = |a: &mut Alerts, at: u64| {
            let mut st = status(at);
            a.evaluate(&mut st);
            let m = metrics_text(&st.alerts);
            (
                st.alerts
                    .alerts
                    .iter()
                    .filter(|x| x.alert.instance == "127.0.0.1:8002")
                    .map(|x| x.state.clone())
                    .collect::<Vec<_>>(),
                m,
            )
        };
        let t0 = 1_700_000_000_000;
        let (s0, m0) = states(&mut a, t0);
        assert_eq!(s0, ["pending"]);
        assert!(
            m0.contains("instance=\"127.0.0.1:8002\",metric=\"memory\",alertstate=\"pending\"} 1"),
            "{m0}"
        );
        assert_eq!(states(&mut a, t0 + 1000).0, ["pending"]);
        let (s2, m2) = states(&mut a, t0 + 2000);
        assert_eq!(s2, ["firing"]);
        assert!(m2.contains(&format!("ALERTS_FOR_STATE{{alertname=\"fat\",service=\"web\",scope=\"instance\",instance=\"127.0.0.1:8002\",metric=\"memory\"}} {}", t0 / 1000)), "{m2}");
        assert_eq!(quantile(&mut [3.0, 1.0, 2.0, 4.0], 0.95), Some(4.0));
    }
}
