//! What a canary is configured with and what it reads, shared by `pipeline canary BASE
//! CANDIDATE` and the progressive canary of `apply`:
//!
//! - [`CanarySpec`]: a service's `canary = { ... }` settings (steps, interval, the request the
//!   canary sends, thresholds), validated with messages that say what to write instead.
//! - [`Answer`] / [`parse_access_line`]: one line of the balancer's access log
//!   (`$msec $status $request_time $upstream_addr $upstream_status`), attributed to the
//!   upstream that finally answered.
//! - [`ProgressiveRecord`]: what a progressive canary saw, for its report.

use crate::parse_duration;
use pipeline_analysis::judge::{Direction, JudgeConfig, Metric, Outcome, Verdict};
use pipeline_analysis::{Arm, MetricEvidence};
use pipeline_engine::value::Value;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The request a canary sends (and the endpoint it judges).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Option<String>,
    pub content_type: String,
    /// The stack marked the method or the path sensitive: reports and messages show a mask.
    pub secret: bool,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            method: "GET".into(),
            path: "/".into(),
            body: None,
            content_type: "application/octet-stream".into(),
            secret: false,
        }
    }
}

impl Request {
    /// Method and path as reports and messages may show them.
    pub fn shown(&self) -> (String, String) {
        if self.secret {
            let m = "(sensitive value)".to_string();
            (m.clone(), m)
        } else {
            (self.method.clone(), self.path.clone())
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CanarySpec {
    /// Progressive canary: the candidate's share of traffic (percent), step by step; the last
    /// step is 100 (promotion).
    pub steps: Vec<u32>,
    /// Progressive canary: how long each step is watched before the next.
    pub interval: Duration,
    pub request: Request,
    /// Progressive canary: synthetic requests a second sent through the balancer while it
    /// runs (0: judge real traffic only).
    pub load: u32,
    /// `pipeline canary`: how long and how fast to send load.
    pub duration: Duration,
    pub rate: u32,
    /// Relative latency increase tolerated (Kayenta's default 0.25).
    pub latency_tolerance: f64,
    /// 1 − significance (Kayenta's default 0.98).
    pub confidence: f64,
    /// Minimum answers per arm before the judge decides a metric (and before a progressive
    /// canary may promote).
    pub min_requests: u64,
}

impl Default for CanarySpec {
    fn default() -> Self {
        CanarySpec {
            steps: vec![5, 25, 50, 100],
            interval: Duration::from_secs(30),
            request: Request::default(),
            load: 0,
            duration: Duration::from_secs(30),
            rate: 100,
            latency_tolerance: 0.25,
            confidence: 0.98,
            min_requests: 50,
        }
    }
}

pub const SETTINGS: &str =
    "steps, interval, request, load, duration, rate, latency_tolerance, confidence, min_requests";
pub const EXAMPLE: &str = "e.g. canary = { steps = [5, 25, 50, 100], interval = \"30s\", request = { method = \"POST\", path = \"/preview\", body = file(\"sample.md\") } }";

impl CanarySpec {
    /// The settings of a `canary = { ... }` attribute; `Null` gives the defaults.
    pub fn from_value(v: &Value) -> Result<CanarySpec, String> {
        let mut s = CanarySpec::default();
        s.request.secret = ["method", "path"]
            .iter()
            .any(|f| v.is_sensitive_at(&["request", f]));
        let m = match v.unmarked().0 {
            Value::Null => return Ok(s),
            Value::Map(m) => m,
            _ => return Err("canary must be an object".into()),
        };
        for k in m.keys() {
            if !SETTINGS.split(", ").any(|x| x == k) {
                return Err(format!(
                    "unknown canary setting `{k}`; settings: {SETTINGS}"
                ));
            }
        }
        let dur = |k: &str| -> Result<Option<Duration>, String> {
            match m.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_str()
                    .and_then(parse_duration)
                    .filter(|d| !d.is_zero())
                    .map(Some)
                    .ok_or(format!(
                        "canary {k} must be a duration like \"10s\" or \"2m\""
                    )),
            }
        };
        let whole = |k: &str, lo: f64, hi: f64| -> Result<Option<f64>, String> {
            match m.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|n| n.fract() == 0.0 && *n >= lo && *n <= hi)
                    .map(Some)
                    .ok_or(format!(
                        "canary {k} must be a whole number from {lo} to {hi}"
                    )),
            }
        };
        if let Some(v) = m.get("steps") {
            let Value::List(l) = v else {
                return Err(
                    "canary steps must be a list of percentages like [5, 25, 50, 100]".into(),
                );
            };
            let mut steps = Vec::new();
            for x in l {
                let n = x
                    .as_f64()
                    .filter(|n| n.fract() == 0.0 && *n >= 1.0 && *n <= 100.0)
                    .ok_or("canary steps are whole percentages from 1 to 100")?;
                if steps.last().is_some_and(|&p| p >= n as u32) {
                    return Err("canary steps must increase, e.g. [5, 25, 50, 100]".into());
                }
                steps.push(n as u32);
            }
            if steps.last() != Some(&100) {
                return Err("the last canary step must be 100 (the promotion)".into());
            }
            s.steps = steps;
        }
        if let Some(d) = dur("interval")? {
            s.interval = d;
        }
        if let Some(d) = dur("duration")? {
            s.duration = d;
        }
        if let Some(n) = whole("load", 0.0, 10_000.0)? {
            s.load = n as u32;
        }
        if let Some(n) = whole("rate", 1.0, 10_000.0)? {
            s.rate = n as u32;
        }
        if let Some(n) = whole("min_requests", 1.0, 1e9)? {
            s.min_requests = n as u64;
        }
        if let Some(v) = m.get("latency_tolerance") {
            s.latency_tolerance = v
                .as_f64()
                .filter(|t| (0.0..=10.0).contains(t))
                .ok_or("canary latency_tolerance is a fraction like 0.25 (25 %)")?;
        }
        if let Some(v) = m.get("confidence") {
            s.confidence = v
                .as_f64()
                .filter(|c| *c > 0.5 && *c < 1.0)
                .ok_or("canary confidence is between 0.5 and 1, like 0.98")?;
        }
        if let Some(r) = m.get("request") {
            let Value::Map(r) = r.unmarked().0 else {
                return Err("canary request must be an object like { method = \"POST\", path = \"/preview\", body = \"...\" }".into());
            };
            for k in r.keys() {
                if !["method", "path", "body", "content_type"].contains(&k.as_str()) {
                    return Err(format!(
                        "unknown canary request setting `{k}`; settings: method, path, body, content_type"
                    ));
                }
            }
            let st = |k: &str| {
                r.get(k)
                    .and_then(|v| v.unmarked().0.as_str().map(str::to_string))
            };
            if let Some(x) = st("method") {
                if x.is_empty() || !x.chars().all(|c| c.is_ascii_uppercase()) {
                    return Err(format!("canary request method {x:?} is not an HTTP method like \"GET\" or \"POST\""));
                }
                s.request.method = x;
            }
            if let Some(x) = st("path") {
                if !x.starts_with('/') || x.contains(char::is_whitespace) {
                    return Err(format!(
                        "canary request path {x:?} must start with / and have no spaces"
                    ));
                }
                s.request.path = x;
            }
            s.request.body = st("body");
            if let Some(x) = st("content_type") {
                s.request.content_type = x;
            } else if s.request.body.is_some() {
                s.request.content_type = "application/json".into();
            }
        }
        Ok(s)
    }

    /// The fixed-horizon judge: latency (Mann-Whitney + Hodges–Lehmann within the tolerance),
    /// the 5xx share and the 4xx share (both critical: a candidate that starts refusing requests
    /// the baseline serves is as broken as one that fails them).
    pub fn judge_config(&self) -> JudgeConfig {
        let mut c = JudgeConfig::with_metrics(vec![
            Metric::continuous("latency")
                .direction(Direction::Increase)
                .tolerance(self.latency_tolerance)
                // nginx logs request times in whole milliseconds: a shift of a step or two is
                // no evidence (a fast service's arms sat at 1 ms and 2 ms for a whole CI run)
                .abs_tolerance(LATENCY_ABS_TOLERANCE_MS)
                .min_samples(self.min_requests),
            Metric::proportion("errors")
                .direction(Direction::Increase)
                .critical(true)
                .min_samples(self.min_requests),
            Metric::proportion("4xx")
                .direction(Direction::Increase)
                .critical(true)
                .abs_tolerance(0.005)
                .min_samples(self.min_requests),
        ]);
        c.confidence = self.confidence;
        c
    }

    /// The sequential judge, watched as answers arrive: the error share (critical) and the
    /// latency, observed as one median per arm per look ([`LatencyBatches`]).
    pub fn sequential_config(&self) -> JudgeConfig {
        // The mixture test is valid at every sample size; 30 answers per arm keep the normal
        // approximation of a rate sane while a 5 % step still decides within seconds.
        let mut c = JudgeConfig::with_metrics(vec![
            Metric::proportion("errors")
                .direction(Direction::Increase)
                .critical(true)
                .min_samples(30)
                // Passing needs a margin: half a percentage point, as in the simulated figures.
                .abs_tolerance(0.005)
                // Most power near a 5-point rise of the error share, the size worth stopping for.
                .mixture_scale(0.05),
            Metric::continuous("latency")
                .direction(Direction::Increase)
                .tolerance(self.latency_tolerance)
                .abs_tolerance(LATENCY_ABS_TOLERANCE_MS)
                .min_samples(10),
        ]);
        c.confidence = self.confidence;
        c
    }
}

/// What the progressive canary of `apply` saw, kept for its report (written as JSON to
/// `.pipeline/reports/<block>-<unix seconds>.json`; the CLI renders it as HTML). Times are
/// seconds since the analysis started.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProgressiveRecord {
    pub block: String,
    /// Unix time the analysis started, seconds.
    pub started_unix: f64,
    /// How long it ran, seconds.
    pub ended_s: f64,
    pub request_method: String,
    pub request_path: String,
    pub request_content_type: Option<String>,
    pub request_body_bytes: usize,
    /// Synthetic requests a second (`canary.load`; 0: real traffic only) and what the
    /// synthetic client saw.
    pub load: u32,
    pub load_stats: Option<LoadSummary>,
    /// Instances per arm.
    pub replicas: u32,
    /// The fixed judge (its confidence already divided over the steps).
    pub judge: Option<JudgeConfig>,
    /// Each step's start: (seconds, the candidate's percent of the traffic).
    pub steps: Vec<StepMark>,
    /// Every answer of either arm, in the order read, up to [`MAX_ANSWERS`].
    pub answers: Vec<AnswerRecord>,
    /// Answers not kept because the record was full (the charts and the evidence's statistics
    /// cover the kept ones; the verdict covers all).
    pub dropped_answers: u64,
    /// Every look (0.5 s).
    pub looks: Vec<LookRecord>,
    /// The sequential test stopped the canary: when, and on which metric.
    pub sequential_stop: Option<SequentialStop>,
    /// The fixed judge on everything, at the end (an abort for another reason is a failure
    /// whatever it says).
    pub verdict: Option<Verdict>,
    /// `promoted`, or `aborted at N%: reason`.
    pub result: String,
    /// The arms' median latencies of each look's window in which both answered, (baseline,
    /// candidate), as [`LatencyBatches::flush`] observed them: what the fixed judge compares
    /// ([`progressive_latency`]).
    #[serde(default)]
    pub latency_windows: Vec<(f64, f64)>,
}

/// The latency data of a progressive canary's fixed judge: the windows' paired medians once
/// there are [`pipeline_analysis::judge::MIN_PAIRS`], answer against answer before that. The
/// candidate's answers come mostly from the later, bigger steps and the baseline's from all of
/// them, so answer against answer compares one moment of the machine with another (a loaded CI
/// machine slowed a 50 % step and so failed an A/A canary); paired windows do not.
pub fn progressive_latency(
    baseline_ms: &[f64],
    candidate_ms: &[f64],
    windows: &[(f64, f64)],
) -> pipeline_analysis::MetricData {
    if windows.len() >= pipeline_analysis::judge::MIN_PAIRS {
        pipeline_analysis::MetricData::Paired {
            baseline: windows.iter().map(|w| w.0).collect(),
            candidate: windows.iter().map(|w| w.1).collect(),
        }
    } else {
        pipeline_analysis::MetricData::Continuous {
            baseline: baseline_ms.to_vec(),
            candidate: candidate_ms.to_vec(),
        }
    }
}

/// Bounds a progressive record's memory (about 40 bytes an answer).
pub const MAX_ANSWERS: usize = 200_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadSummary {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct StepMark {
    pub t: f64,
    pub percent: u32,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct AnswerRecord {
    pub t: f64,
    pub arm: Arm,
    pub status: u16,
    /// Request time, ms (0 for an attempt nginx gave up on).
    #[serde(deserialize_with = "pipeline_analysis::nan_if_null")]
    pub ms: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LookRecord {
    pub t: f64,
    /// The fixed judge's score and outcome on the data so far.
    #[serde(deserialize_with = "pipeline_analysis::nan_if_null")]
    pub score: f64,
    pub outcome: Outcome,
    /// `continue`, `pass` or `fail: METRIC`.
    pub decision: String,
    pub evidence: Vec<MetricEvidence>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SequentialStop {
    pub t: f64,
    pub metric: String,
}

/// The fixed judge's score so far, kept for a report's score-over-time: judged at every look
/// while data is small (the first 20 looks), then again each time the data has grown by a fifth,
/// so a long canary's looks stay 0.5 s apart (judging 10k+ answers an arm costs far more than a
/// look's budget).
#[derive(Default)]
pub struct ScoreSoFar {
    last: Option<(u64, pipeline_analysis::Verdict)>,
}

impl ScoreSoFar {
    /// The verdict on `n` answers at look number `look`, from `judge` when it is due.
    pub fn at(
        &mut self,
        n: u64,
        look: usize,
        judge: impl FnOnce() -> pipeline_analysis::Verdict,
    ) -> &pipeline_analysis::Verdict {
        if self
            .last
            .as_ref()
            .is_none_or(|(m, _)| n * 5 >= m * 6 || look < 20)
        {
            self.last = Some((n, judge()));
        }
        &self.last.as_ref().expect("just set").1
    }
}

/// nginx times requests to the millisecond, so a fast answer is logged as 0.000: the sequential
/// test compares log-latencies, and half a resolution step keeps those finite and comparable.
pub const SEQ_LATENCY_OFFSET_MS: f64 = 0.5;

/// Latency shifts of up to two steps of nginx's `$request_time` resolution (1 ms) are not judged.
pub const LATENCY_ABS_TOLERANCE_MS: f64 = 2.0;

/// Latency for the sequential test as batch medians: one observation per arm per look (of at
/// least 5 answers). Single requests are not independent (a busy CPU slows a burst of them
/// together, a new process is slow for its first ones) and their spread on a quiet machine is
/// tiny, so per-request samples make a mixture test see "significant" differences that are
/// only a moment's noise; medians of successive batches vary with that noise and keep the test
/// honest.
#[derive(Default)]
pub struct LatencyBatches {
    baseline: Vec<f64>,
    candidate: Vec<f64>,
}

impl LatencyBatches {
    pub fn push(&mut self, arm: Arm, ms: f64) {
        match arm {
            Arm::Baseline => self.baseline.push(ms),
            Arm::Candidate => self.candidate.push(ms),
        }
    }
    /// Once both arms have 5 answers: feed one median per arm to `metric` of `seq`, and start
    /// anew. The medians are of equally many answers (the bigger arm's evenly thinned in time),
    /// since a median's bias and spread depend on how many it is of: at a 5 % step the candidate
    /// has a twentieth of the baseline's answers.
    /// Returns the pair it observed, for a fixed-horizon judge of the same windows.
    pub fn flush(
        &mut self,
        seq: &mut pipeline_analysis::SequentialJudge,
        metric: &str,
    ) -> Option<(f64, f64)> {
        let n = self.baseline.len().min(self.candidate.len());
        if n < 5 {
            return None;
        }
        // Both medians are of the same time window, so they share its noise (a loaded machine
        // slows both): observed as a pair, that noise cancels.
        let median = |v: &mut Vec<f64>| {
            let mut batch: Vec<f64> = (0..n).map(|i| v[i * v.len() / n]).collect();
            batch.sort_by(f64::total_cmp);
            v.clear();
            batch[n / 2] + SEQ_LATENCY_OFFSET_MS
        };
        let (b, c) = (median(&mut self.baseline), median(&mut self.candidate));
        let _ = seq.observe_pair(metric, b, c);
        Some((b, c))
    }
}

/// One answer in the balancer's access log.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// Unix time the request finished, seconds.
    pub at: f64,
    pub status: u16,
    /// Request time, seconds (nginx: millisecond resolution).
    pub secs: f64,
    /// The upstream that finally answered (`host:port`); on retries nginx lists every one tried.
    pub upstream: String,
    /// Upstreams tried before it, which failed (connection refused, timeout, 502, 503: nginx
    /// moved on), with their status (502 when nginx had none). Each is a failure of its own
    /// upstream that the client never saw.
    pub failed_attempts: Vec<(String, u16)>,
}

/// A line of the balancer's access log (`pipeline_host::access_log`) as an answer: the
/// upstream that finally answered, and the attempts before it (502 where nginx had no status).
/// None when no upstream answered.
pub fn parse_access_line(line: &str) -> Option<Answer> {
    let l = pipeline_host::access_log::parse(line)?;
    let ((last, _), earlier) = l.upstreams.split_last()?;
    Some(Answer {
        at: l.at,
        status: l.status,
        secs: l.secs,
        upstream: last.clone(),
        failed_attempts: earlier
            .iter()
            .map(|(a, s)| (a.clone(), s.unwrap_or(502)))
            .collect(),
    })
}

/// Follows the balancer's access log from its end (`pipeline_host::tail`), as answers: a file
/// here, or a command that streams it from another machine.
pub enum LogTail {
    File(pipeline_host::tail::Tail),
    Stream(pipeline_host::tail::Stream),
}

impl LogTail {
    /// Starts at the current end of the file (what was logged before is not ours).
    pub fn at_end(path: &std::path::Path) -> LogTail {
        LogTail::File(pipeline_host::tail::Tail::at_end(path))
    }
    /// Follows the access log a balancer's `describe` names, from now; None: not an access log.
    pub fn of(source: &pipeline_engine::provider::MetricSource) -> Option<LogTail> {
        use pipeline_engine::provider::MetricSource;
        match source {
            MetricSource::AccessLog { path, .. } => Some(LogTail::at_end(path)),
            MetricSource::AccessLogStream { argv, .. } => {
                Some(LogTail::Stream(pipeline_host::tail::Stream::start(argv)))
            }
            _ => None,
        }
    }
    /// The answers logged since the last call.
    pub fn read_new(&mut self) -> Vec<Answer> {
        let lines = match self {
            LogTail::File(t) => t.read_lines(),
            LogTail::Stream(s) => s.read_lines(),
        };
        lines.iter().filter_map(|l| parse_access_line(l)).collect()
    }
}

/// What a load generator saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadStats {
    pub sent: u64,
    /// Answered 2xx or 3xx.
    pub ok: u64,
    pub failed: u64,
}

impl std::fmt::Display for LoadStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, {} answered 2xx/3xx, {} not",
            self.sent, self.ok, self.failed
        )
    }
}

/// Bounded load: `rate` requests a second to `target` (`host:port`) until `until` or `stop`,
/// one connection per request, from up to 8 threads.
pub fn start_load(
    target: String,
    rate: u32,
    req: Request,
    until: std::time::Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<LoadStats> {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    std::thread::spawn(move || {
        let clients = 8u32.min(rate.max(1));
        let interval = Duration::from_secs_f64(f64::from(clients) / f64::from(rate.max(1)));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let threads: Vec<_> = (0..clients)
            .map(|k| {
                let (stats, req, target, stop) =
                    (stats.clone(), req.clone(), target.clone(), stop.clone());
                std::thread::spawn(move || {
                    // Spread the clients over one interval.
                    let mut next = std::time::Instant::now() + interval * k / clients;
                    loop {
                        if let Some(d) = next.checked_duration_since(std::time::Instant::now()) {
                            std::thread::sleep(d);
                        }
                        if std::time::Instant::now() >= until || stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let ok = one_request(&target, &req);
                        let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                        s.sent += 1;
                        if ok {
                            s.ok += 1
                        } else {
                            s.failed += 1
                        }
                        drop(s);
                        next += interval;
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        let s = stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s
    })
}

/// One request on its own connection; true when answered 2xx or 3xx within 10 s.
pub fn one_request(target: &str, r: &Request) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(target) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let body = r.body.as_deref().unwrap_or("");
    let ctype = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Type: {}\r\n", r.content_type)
    };
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: canary\r\n{ctype}Content-Length: {}\r\nConnection: close\r\n\r\n",
        r.method,
        r.path,
        body.len()
    );
    if s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body.as_bytes()))
        .is_err()
    {
        return false;
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let head = String::from_utf8_lossy(&resp[..resp.len().min(16)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .is_some_and(|c| c.starts_with('2') || c.starts_with('3'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(src: &[(&str, Value)]) -> Result<CanarySpec, String> {
        CanarySpec::from_value(&Value::Map(
            src.iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        ))
    }

    fn nums(n: &[f64]) -> Value {
        Value::List(n.iter().map(|x| Value::Number(*x)).collect())
    }

    #[test]
    fn defaults_and_settings() {
        assert_eq!(
            CanarySpec::from_value(&Value::Null).unwrap(),
            CanarySpec::default()
        );
        let s = spec(&[
            ("steps", nums(&[10.0, 100.0])),
            ("interval", Value::str("2s")),
            (
                "request",
                Value::Map(
                    [
                        ("method".to_string(), Value::str("POST")),
                        ("path".to_string(), Value::str("/preview")),
                        ("body".to_string(), Value::str("{}")),
                    ]
                    .into_iter()
                    .collect(),
                ),
            ),
        ])
        .unwrap();
        assert_eq!(s.steps, vec![10, 100]);
        assert_eq!(s.interval, Duration::from_secs(2));
        assert_eq!(s.request.method, "POST");
        assert_eq!(s.request.content_type, "application/json");
    }

    #[test]
    fn wrong_settings_say_what_to_write() {
        let e = spec(&[("steps", nums(&[50.0, 25.0, 100.0]))]).unwrap_err();
        assert!(e.contains("must increase"), "{e}");
        let e = spec(&[("steps", nums(&[5.0, 50.0]))]).unwrap_err();
        assert!(e.contains("last canary step must be 100"), "{e}");
        let e = spec(&[("intervall", Value::str("2s"))]).unwrap_err();
        assert!(e.contains("unknown canary setting `intervall`"), "{e}");
        let e = spec(&[("interval", Value::str("soon"))]).unwrap_err();
        assert!(e.contains("duration"), "{e}");
    }

    #[test]
    fn access_lines_name_the_upstream_that_answered() {
        let a =
            parse_access_line("1700000000.123 200 0.004 127.0.0.1:4001, 127.0.0.1:4002 502, 200")
                .unwrap();
        assert_eq!(a.upstream, "127.0.0.1:4002");
        assert_eq!(a.status, 200);
        assert_eq!(a.failed_attempts, vec![("127.0.0.1:4001".to_string(), 502)]);
        let a = parse_access_line("1700000000.123 200 0.004 127.0.0.1:4002 200").unwrap();
        assert!(a.failed_attempts.is_empty());
        assert!(parse_access_line("1700000000.123 404 0.000 - -").is_none());
    }
}
