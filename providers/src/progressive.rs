//! The progressive canary of a service (`update = { strategy = "canary" }`), whoever runs it:
//! the candidates are staged (started and healthy, no traffic) by the service's provider; then
//! the balancers that route to the service give them a growing share of their traffic, step by
//! step (`canary.steps`), while the access logs are judged:
//!
//! - every look (0.5 s): the sequential test on the 5xx share (always valid, so looking often
//!   costs no false alarms), the health of every candidate (the provider's check), the alerts
//!   of the monitors on this machine (a fresh firing per-instance alert that names a candidate's
//!   `address:port`, see [`crate::alert_file`]), and `pipeline promote` / `pipeline rollback`;
//! - at the end of each step: the fixed-horizon judge on everything so far (latency and errors),
//!   its significance split over the steps (Bonferroni).
//!
//! The balancers are the resources joined to the service in the graph (their routes name it)
//! whose provider runs the action `canary_weights`; the canary asks them, through the engine
//! (`Step::peers`), to split traffic, and reads each one's access log where its `describe` says
//! it is (a file here, or a command that streams it from another machine). It never touches
//! their files.
//!
//! A failure shifts the traffic back at once (the candidate gets 0 %) before anything else; the
//! provider then stops the candidates. A pass leaves the shifted traffic in place: the provider
//! commits (the candidates become the service) and takes them out of the balancers
//! (`canary_clear`).
//!
//! Either way, what the canary saw (every answer, every look, the steps, the verdict) is written
//! as a [`ProgressiveRecord`] to `reports/<block>-<unix seconds>.json`, for its HTML report.

use crate::canary::{
    progressive_latency, start_load, AnswerRecord, CanarySpec, LatencyBatches, LoadSummary,
    LogTail, LookRecord, ProgressiveRecord, SequentialStop, StepMark, MAX_ANSWERS,
};
use pipeline_analysis::judge::{judge, Counts, JudgeConfig, MetricData, Outcome, Verdict};
use pipeline_analysis::{Arm, Decision, SequentialJudge};
use pipeline_engine::provider::MetricSource;
use pipeline_engine::provider::{
    Aborted, ActionSchema, ArtifactKind, JsonMap, Note, Progress, ProviderError,
};
use pipeline_engine::step::Peers;
use pipeline_engine::value::ValueMap;
use pipeline_host::names::sanitize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LOOK: Duration = Duration::from_millis(500);

/// The actions a balancer in front of the service runs for its canary (whoever provides it).
const WEIGHTS: &str = "canary_weights";
const CLEAR: &str = "canary_clear";

/// A balancer that routes to the service, as the canary knows it: an address in the graph.
struct Balancer {
    addr: String,
    /// Its access log (its `describe`'s metric source), for the judge.
    access_log: Option<MetricSource>,
    /// Where it serves (`address:port`), for synthetic load.
    listen: Option<String>,
}

fn json_args(v: serde_json::Value) -> JsonMap {
    v.as_object().cloned().unwrap_or_default()
}

/// Ask the balancer at `addr` to give `candidate` `percent` % of its traffic to `baseline`;
/// how many of its upstreams route to `baseline`.
fn shift(
    peers: &Peers,
    addr: &str,
    baseline: &[String],
    candidate: &[String],
    percent: u32,
) -> Result<u64, String> {
    let args = json_args(serde_json::json!({
        "stable": baseline,
        "canary": candidate,
        "weight": percent,
    }));
    let out = peers
        .action_blocking(addr, WEIGHTS, &args)
        .map_err(|e| e.message)?;
    Ok(out
        .output
        .get("upstreams")
        .and_then(|u| u.as_u64())
        .unwrap_or(0))
}

/// The balancers joined to the service that route to `baseline`: asked with weight 0 (a
/// change for none of them) how many of their upstreams do.
fn balancers_routing_to(
    peers: &Peers,
    baseline: &[String],
    candidate: &[String],
    progress: &Progress,
) -> Vec<Balancer> {
    let mut out = Vec::new();
    for p in peers.with_action_blocking(WEIGHTS) {
        match shift(peers, &p.addr, baseline, candidate, 0) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => {
                progress(format!("{}: {e}", p.addr).into());
                continue;
            }
        }
        let d = peers.describe_blocking(&p.addr).unwrap_or_default();
        let access_log = d
            .metrics
            .iter()
            .find(|m| {
                matches!(
                    m,
                    MetricSource::AccessLog { .. } | MetricSource::AccessLogStream { .. }
                )
            })
            .cloned();
        let listen = d.endpoint("serve").map(|e| {
            let u = e.url.split_once("://").map_or(e.url.as_str(), |(_, r)| r);
            u.split('/').next().unwrap_or(u).to_string()
        });
        out.push(Balancer {
            addr: p.addr,
            access_log,
            listen,
        });
    }
    out
}

/// Promoted or aborted candidates leave every balancer joined to the service that has them.
pub fn clear_candidates(peers: &Peers, candidates: &[String]) -> Result<(), String> {
    let args = json_args(serde_json::json!({ "canary": candidates }));
    let mut errors = Vec::new();
    for p in peers.with_action_blocking(CLEAR) {
        if let Err(e) = peers.action_blocking(&p.addr, CLEAR, &args) {
            errors.push(e.message);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// `.pipeline/run/<block>.canary`: present while a canary of `block` runs (its pid and step);
/// `pipeline promote` / `rollback` write `promote` or `abort` into `<block>.canary.command`.
pub fn control_file(work_dir: &Path, block: &str) -> PathBuf {
    work_dir
        .join("run")
        .join(format!("{}.canary", sanitize(block)))
}

/// How the last canary of `block` ended (`promoted` or `aborted at N%: reason`).
pub fn result_file(work_dir: &Path, block: &str) -> PathBuf {
    work_dir
        .join("run")
        .join(format!("{}.canary.result", sanitize(block)))
}

pub fn command_file(work_dir: &Path, block: &str) -> PathBuf {
    work_dir
        .join("run")
        .join(format!("{}.canary.command", sanitize(block)))
}

/// The actions that talk to the canary an apply runs for a block (`pipeline promote`,
/// `pipeline rollback` during a canary, `pipeline status`).
pub fn control_schemas() -> Vec<ActionSchema> {
    vec![
        ActionSchema {
            name: "canary",
            about: "whether an apply runs a canary of the instance's block, and at which step",
            args: vec![],
            changes_record: false,
        },
        ActionSchema {
            name: "promote",
            about: "tell the running canary of the instance's block to promote its candidates",
            args: vec![],
            changes_record: false,
        },
        ActionSchema {
            name: "abort",
            about: "tell the running canary of the instance's block to stop",
            args: vec![],
            changes_record: false,
        },
    ]
}

fn step_of(work_dir: &Path, block: &str) -> u64 {
    std::fs::read_to_string(control_file(work_dir, block))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["step"].as_u64())
        .unwrap_or(0)
}

/// `canary` (is one running, at which step), `promote` or `abort` (signal it and wait up to
/// 30 s for it to end; blocking) for the canary of `block`.
pub fn control(work_dir: &Path, block: &str, name: &str) -> Result<JsonMap, ProviderError> {
    let mut out = JsonMap::new();
    if name == "canary" {
        let on = running(work_dir, block);
        out.insert("running".into(), on.into());
        if on {
            out.insert("step".into(), step_of(work_dir, block).into());
        }
        return Ok(out);
    }
    let ctl = control_file(work_dir, block);
    if !running(work_dir, block) {
        return Err(ProviderError::not_found(format!("no canary of {block} is running"))
            .help("a canary runs during `pipeline apply` of a service with update = { strategy = \"canary\" }"));
    }
    let step = step_of(work_dir, block);
    let result = result_file(work_dir, block);
    let _ = std::fs::remove_file(&result);
    std::fs::write(command_file(work_dir, block), name)
        .map_err(|e| ProviderError::new(format!("cannot signal the canary of {block}: {e}")))?;
    let until = Instant::now() + Duration::from_secs(30);
    while ctl.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    if ctl.exists() {
        return Err(ProviderError::new(format!(
            "the canary of {block} did not answer within 30 s; its apply may be stuck"
        )));
    }
    let ended = std::fs::read_to_string(&result).unwrap_or_default();
    let _ = std::fs::remove_file(&result);
    out.insert("step".into(), step.into());
    out.insert("ended".into(), ended.into());
    Ok(out)
}

/// Is a canary of `block` running now (its control file names a live process)?
pub fn running(work_dir: &Path, block: &str) -> bool {
    control_pid(&control_file(work_dir, block)).is_some_and(pid_alive)
}

fn control_pid(ctl: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(ctl).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    i32::try_from(v["pid"].as_u64()?).ok()
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only asks whether the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Remove the control, command and result files of canaries whose apply is gone (killed): they
/// would keep `run/` from going with the last instance. Returns the blocks' file names.
pub fn sweep_control_files(work_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(work_dir.join("run"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(base) = [".canary.command", ".canary.result", ".canary"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
        else {
            continue;
        };
        let ctl = work_dir.join("run").join(format!("{base}.canary"));
        if control_pid(&ctl).is_some_and(pid_alive) {
            continue;
        }
        if std::fs::remove_file(e.path()).is_ok() && name.ends_with(".canary") {
            out.push(name);
        }
    }
    out
}

#[derive(Default)]
struct ArmData {
    latency_ms: Vec<f64>,
    errors: u64,
    client_errors: u64,
    total: u64,
}

impl ArmData {
    fn line(&self) -> String {
        let mut l = self.latency_ms.clone();
        l.sort_by(f64::total_cmp);
        let p50 = l.get(l.len() / 2).copied().unwrap_or(f64::NAN);
        format!(
            "{} answers, {} 5xx, p50 {p50:.1} ms",
            self.total, self.errors
        )
    }
}

/// What the canary has seen so far: the per-arm tallies the judges read, and the record kept
/// for the report.
struct Recording {
    b: ArmData,
    c: ArmData,
    rec: ProgressiveRecord,
    fixed: JudgeConfig,
    started: Instant,
}

impl Recording {
    fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Keeps an answer (seconds since the start), or counts it as dropped once the record is full.
fn keep(rec: &mut ProgressiveRecord, t: f64, arm: Arm, status: u16, ms: f64) {
    if rec.answers.len() < MAX_ANSWERS {
        rec.answers.push(AnswerRecord { t, arm, status, ms });
    } else {
        rec.dropped_answers += 1;
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What a canary compares, as the service's provider staged it.
pub struct Arms<'a> {
    /// `address:port` of what serves now, as the balancers' upstreams name them.
    pub baseline: Vec<String>,
    /// `address:port` where the staged candidates answer.
    pub candidate: Vec<String>,
    /// Replicas of the service (for the report).
    pub replicas: u32,
    /// Asked every look: Err(why) when a candidate died or keeps failing its health check (an
    /// alert: the canary aborts).
    pub health: &'a mut (dyn FnMut() -> Result<(), String> + Send),
}

/// The canary of `block` (its `canary` settings in `config`), from staged to promoted (Ok) or
/// aborted (Err, with the candidates given no traffic). `work_dir` holds its control files and
/// reports.
pub fn analyze(
    work_dir: &Path,
    block: &str,
    config: &ValueMap,
    arms: Arms<'_>,
    progress: Progress,
    cancel: &AtomicBool,
    peers: &Peers,
) -> Result<(), Aborted> {
    let abort = |step: u32, reason: String| Aborted { step, reason };
    let spec = CanarySpec::from_value(
        config
            .get("canary")
            .unwrap_or(&pipeline_engine::value::Value::Null),
    )
    .map_err(|e| abort(0, e))?;
    let Arms {
        baseline,
        candidate,
        replicas,
        health,
    } = arms;
    let balancers = balancers_routing_to(peers, &baseline, &candidate, &progress);
    if balancers.is_empty() {
        return Err(abort(0, format!("no running balancer routes to {block}, and a canary shifts a balancer's traffic; add a balancer whose routes include {block}, or use update = {{ strategy = \"rolling\" }}")));
    }
    let ctl = control_file(work_dir, block);
    let cmd = command_file(work_dir, block);
    let _ = std::fs::remove_file(&cmd);
    // (A provider that runs nothing here may not have made `run/` yet.)
    if let Err(e) = ctl
        .parent()
        .map_or(Ok(()), pipeline_supervise::private::create_dir_all)
    {
        progress(
            format!("`pipeline promote` and `pipeline rollback` cannot reach this canary: {e}")
                .into(),
        );
    }
    let stop_load = Arc::new(AtomicBool::new(false));
    let load = (spec.load > 0)
        .then(|| balancers[0].listen.clone())
        .flatten()
        .map(|target| {
            let target = target.replace("0.0.0.0", "127.0.0.1");
            start_load(
                target,
                spec.load,
                spec.request.clone(),
                Instant::now() + spec.interval * spec.steps.len() as u32 + Duration::from_secs(60),
                stop_load.clone(),
            )
        });
    let n_steps = spec.steps.iter().filter(|&&p| p < 100).count();
    let mut fixed = spec.judge_config();
    // Several fixed-horizon looks (one per step): split the significance over them.
    fixed.confidence = 1.0 - (1.0 - spec.confidence) / n_steps.max(1) as f64;
    let mut rec = Recording {
        b: ArmData::default(),
        c: ArmData::default(),
        rec: ProgressiveRecord {
            block: block.to_string(),
            started_unix: unix_now(),
            // The report is for reading and sharing: a secret request (a token in the path)
            // is not written into it.
            request_method: spec.request.shown().0,
            request_path: spec.request.shown().1,
            request_content_type: spec
                .request
                .body
                .as_ref()
                .map(|_| spec.request.content_type.clone()),
            request_body_bytes: spec.request.body.as_ref().map_or(0, String::len),
            load: spec.load,
            replicas,
            judge: Some(fixed.clone()),
            ..Default::default()
        },
        fixed,
        started: Instant::now(),
    };
    let run_root = work_dir.join("run");
    let run = Run {
        spec: &spec,
        block,
        run_root: &run_root,
        balancers: &balancers,
        peers,
        baseline: &baseline,
        candidate: &candidate,
        progress: &progress,
        ctl: &ctl,
        cmd: &cmd,
        cancel,
    };
    let result = run.steps(&mut rec, health);
    if let Err(a) = &result {
        // First of all: the candidate gets no more traffic.
        for b in &balancers {
            if let Err(e) = shift(peers, &b.addr, &baseline, &candidate, 0) {
                progress(format!("{}: could not shift the traffic back: {e}", b.addr).into());
            }
        }
        progress(
            format!(
                "canary aborted at {}%: {}; the candidate gets no traffic",
                a.step, a.reason
            )
            .into(),
        );
        // nginx reloads gracefully: requests already sent to the candidate finish before it
        // is stopped.
        std::thread::sleep(Duration::from_secs(1));
    }
    let now = rec.t();
    rec.rec.steps.push(StepMark {
        t: now,
        percent: if result.is_ok() { 100 } else { 0 },
    });
    stop_load.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(l) = load {
        if let Ok(s) = l.join() {
            progress(format!("synthetic load through the balancer: {s}").into());
            rec.rec.load_stats = Some(LoadSummary {
                sent: s.sent,
                ok: s.ok,
                failed: s.failed,
            });
        }
    }
    let path = write_record(work_dir, rec, &result);
    match path {
        Ok(path) => progress(Note::Artifact {
            kind: ArtifactKind::CanaryRecord,
            path,
        }),
        Err(e) => progress(format!("could not write the canary's record: {e}").into()),
    }
    // What `pipeline promote` / `rollback` (who wrote the command file) tell their user, then
    // the canary is over.
    if cmd.exists() {
        let _ = std::fs::write(
            result_file(work_dir, block),
            match &result {
                Ok(()) => "promoted".to_string(),
                Err(a) => format!("aborted at {}%: {}", a.step, a.reason),
            },
        );
    }
    let _ = std::fs::remove_file(&ctl);
    let _ = std::fs::remove_file(&cmd);
    result
}

/// The final verdict (the fixed judge on everything; an abort fails whatever it says) and the
/// record, as JSON under `reports/`.
fn write_record(
    work_dir: &Path,
    mut rec: Recording,
    result: &Result<(), Aborted>,
) -> std::io::Result<PathBuf> {
    let mut verdict = judge_arms(&rec.fixed, &rec);
    match result {
        Ok(()) => rec.rec.result = "promoted".into(),
        Err(a) => {
            rec.rec.result = format!("aborted at {}%: {}", a.step, a.reason);
            if matches!(verdict.outcome, Outcome::Pass | Outcome::Marginal) {
                verdict.outcome = Outcome::Fail;
            }
            verdict.reason = format!(
                "{}; the judge on all the data: {}",
                rec.rec.result, verdict.reason
            );
        }
    }
    rec.rec.verdict = Some(verdict);
    rec.rec.ended_s = rec.started.elapsed().as_secs_f64();
    let dir = work_dir.join("reports");
    pipeline_supervise::private::create_dir_all(&dir)?;
    let path = dir.join(format!(
        "{}-{}.json",
        sanitize(&rec.rec.block),
        rec.rec.started_unix as u64
    ));
    pipeline_supervise::private::write(&path, serde_json::to_vec(&rec.rec)?)?;
    Ok(path)
}

struct Run<'a> {
    spec: &'a CanarySpec,
    block: &'a str,
    /// `.pipeline/run/`: where the monitors publish their firing alerts.
    run_root: &'a Path,
    balancers: &'a [Balancer],
    peers: &'a Peers,
    baseline: &'a [String],
    candidate: &'a [String],
    progress: &'a Progress,
    ctl: &'a Path,
    cmd: &'a Path,
    cancel: &'a AtomicBool,
}

impl Run<'_> {
    /// A line of progress.
    fn say(&self, line: impl Into<String>) {
        (self.progress)(Note::Line(line.into()))
    }

    fn steps(
        &self,
        rec: &mut Recording,
        health: &mut (dyn FnMut() -> Result<(), String> + Send),
    ) -> Result<(), Aborted> {
        let spec = self.spec;
        let steps: Vec<u32> = spec.steps.iter().copied().filter(|&p| p < 100).collect();
        let base: HashSet<&str> = self.baseline.iter().map(String::as_str).collect();
        let cand: HashSet<&str> = self.candidate.iter().map(String::as_str).collect();
        let mut tails: Vec<LogTail> = self
            .balancers
            .iter()
            .filter_map(|b| b.access_log.as_ref().and_then(LogTail::of))
            .collect();
        let mut seq = SequentialJudge::new(spec.sequential_config());
        let mut batches = LatencyBatches::default();
        let mut scored = crate::canary::ScoreSoFar::default();
        let fixed = rec.fixed.clone();
        let (t0, started) = (rec.rec.started_unix, rec.started);
        for (k, &p) in steps.iter().enumerate() {
            for bal in self.balancers {
                shift(self.peers, &bal.addr, self.baseline, self.candidate, p).map_err(|e| {
                    Aborted {
                        step: p,
                        reason: format!("cannot shift {}'s traffic: {e}", bal.addr),
                    }
                })?;
            }
            let now = rec.t();
            rec.rec.steps.push(StepMark { t: now, percent: p });
            let _ = std::fs::write(
                self.ctl,
                serde_json::json!({ "pid": std::process::id(), "step": p, "block": self.block })
                    .to_string(),
            );
            self.say(format!(
                "canary step {}/{}: the candidate gets {p}% of the traffic for {:?}",
                k + 1,
                steps.len() + 1,
                spec.interval
            ));
            let step_end = Instant::now() + spec.interval;
            while Instant::now() < step_end {
                std::thread::sleep(LOOK.min(step_end.saturating_duration_since(Instant::now())));
                let (mut nb, mut nc) = ((0u64, 0u64), (0u64, 0u64));
                for t in tails.iter_mut() {
                    for a in t.read_new() {
                        // Attempts nginx gave up on (and retried elsewhere) are failures of
                        // their own upstream, even if the client got an answer.
                        for (up, status) in &a.failed_attempts {
                            let (side, arm, n) = if base.contains(up.as_str()) {
                                (Arm::Baseline, &mut rec.b, &mut nb)
                            } else if cand.contains(up.as_str()) {
                                (Arm::Candidate, &mut rec.c, &mut nc)
                            } else {
                                continue;
                            };
                            keep(&mut rec.rec, a.at - t0, side, (*status).max(500), 0.0);
                            arm.total += 1;
                            arm.errors += 1;
                            n.0 += 1;
                            n.1 += 1;
                        }
                        let (side, arm, n) = if base.contains(a.upstream.as_str()) {
                            (Arm::Baseline, &mut rec.b, &mut nb)
                        } else if cand.contains(a.upstream.as_str()) {
                            (Arm::Candidate, &mut rec.c, &mut nc)
                        } else {
                            continue;
                        };
                        keep(&mut rec.rec, a.at - t0, side, a.status, a.secs * 1000.0);
                        arm.total += 1;
                        n.1 += 1;
                        if a.status >= 500 {
                            arm.errors += 1;
                            n.0 += 1;
                        } else if a.status >= 400 {
                            arm.client_errors += 1;
                        } else if a.secs.is_finite() && a.failed_attempts.is_empty() {
                            // (A retried request's time includes the failed attempt.)
                            let ms = a.secs * 1000.0;
                            arm.latency_ms.push(ms);
                            batches.push(side, ms);
                        }
                    }
                }
                if let Some(pair) = batches.flush(&mut seq, "latency") {
                    rec.rec.latency_windows.push(pair);
                }
                let _ = seq.observe_counts(Arm::Baseline, "errors", nb.0, nb.1);
                let _ = seq.observe_counts(Arm::Candidate, "errors", nc.0, nc.1);
                let decision = seq.decision();
                let so_far = scored.at(rec.b.total + rec.c.total, rec.rec.looks.len(), || {
                    judge_arms(&fixed, rec)
                });
                let (word, evidence) = match &decision {
                    Decision::Continue => ("continue".to_string(), seq.evidence()),
                    Decision::Pass(ev) => ("pass".to_string(), ev.clone()),
                    Decision::Fail(m, ev) => (format!("fail: {m}"), ev.clone()),
                };
                let now = rec.t();
                rec.rec.looks.push(LookRecord {
                    t: now,
                    score: so_far.score,
                    outcome: so_far.outcome,
                    decision: word,
                    evidence,
                });
                let (b, c) = (&rec.b, &rec.c);
                if let Decision::Fail(metric, ev) = decision {
                    rec.rec.sequential_stop = Some(SequentialStop {
                        t: now,
                        metric: metric.clone(),
                    });
                    let e = ev.iter().find(|e| e.name == metric);
                    let p_value = e.map_or(f64::NAN, |e| e.p_value);
                    let detail = if metric == "latency" {
                        format!(
                            "candidate {} vs baseline {}; latency {:+.0}% (always-valid bounds {:+.0}% to {:+.0}%, tolerance {:.0}%)",
                            c.line(),
                            b.line(),
                            e.map_or(f64::NAN, |e| e.estimate * 100.0),
                            e.map_or(f64::NAN, |e| e.lower * 100.0),
                            e.map_or(f64::NAN, |e| e.upper * 100.0),
                            spec.latency_tolerance * 100.0
                        )
                    } else {
                        format!(
                            "candidate {}/{} 5xx vs baseline {}/{}",
                            c.errors, c.total, b.errors, b.total
                        )
                    };
                    return Err(Aborted {
                        step: p,
                        reason: format!(
                            "`{metric}` regressed after {:.1}s: {detail} (sequential test, p = {p_value:.1e})",
                            started.elapsed().as_secs_f64(),
                        ),
                    });
                }
                // An alert: a candidate that died or keeps failing its health check.
                if let Err(why) = health() {
                    return Err(Aborted {
                        step: p,
                        reason: why,
                    });
                }
                // A monitor's alert rule firing on a candidate (a monitor not running: none).
                let now_ms = (unix_now() * 1000.0) as u64;
                if let Some(why) =
                    crate::alert_file::firing_on(self.run_root, now_ms, self.candidate)
                {
                    return Err(Aborted {
                        step: p,
                        reason: why,
                    });
                }
                if self.cancel.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(Aborted {
                        step: p,
                        reason: "interrupted (Ctrl-C)".into(),
                    });
                }
                match std::fs::read_to_string(self.cmd)
                    .ok()
                    .as_deref()
                    .map(str::trim)
                {
                    Some("abort") => {
                        return Err(Aborted {
                            step: p,
                            reason: "stopped by `pipeline rollback`".into(),
                        })
                    }
                    Some("promote") => {
                        self.say("promoted by `pipeline promote`");
                        return Ok(());
                    }
                    _ => {}
                }
            }
            let (b, c) = (&rec.b, &rec.c);
            let verdict = judge_arms(&fixed, rec);
            self.say(format!(
                "canary step {p}%: baseline {}; candidate {}; score {:.0}: {:?}",
                b.line(),
                c.line(),
                verdict.score + 0.0,
                verdict.outcome
            ));
            // Every verdict with its evidence: test, p-value against α, effect, reason.
            for m in &verdict.per_metric {
                let word = |v: serde_json::Result<serde_json::Value>| {
                    v.ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                };
                self.say(format!(
                    "  {}{}: {} ({}, p = {}, α = {:.3}, effect {}): {}",
                    m.name,
                    if m.critical { " (critical)" } else { "" },
                    word(serde_json::to_value(m.status)),
                    word(serde_json::to_value(m.test)),
                    m.p_value.map_or("-".into(), |p| format!("{p:.2e}")),
                    m.threshold,
                    m.effect
                        .as_ref()
                        .map_or("-".into(), |e| format!("{:+.1}%", e.relative * 100.0)),
                    m.reason
                ));
            }
            if verdict.outcome == Outcome::Fail {
                return Err(Aborted {
                    step: p,
                    reason: format!("score {:.0}: {}", verdict.score, verdict.reason),
                });
            }
        }
        let (b, c) = (&rec.b, &rec.c);
        let last = steps.last().copied().unwrap_or(0);
        if c.total < spec.min_requests || b.total < spec.min_requests {
            return Err(Aborted {
                step: last,
                reason: format!(
                    "not enough evidence: the candidate answered {} and the baseline {} requests (min_requests = {}); send traffic through the balancer or set canary.load",
                    c.total, b.total, spec.min_requests
                ),
            });
        }
        let verdict = judge_arms(&fixed, rec);
        if verdict.outcome != Outcome::Pass {
            return Err(Aborted {
                step: last,
                reason: format!(
                    "score {:.0} ({:?}): {}",
                    verdict.score, verdict.outcome, verdict.reason
                ),
            });
        }
        self.say(format!(
            "canary passed (score {:.0}); promoting: the candidate takes all the traffic",
            verdict.score
        ));
        Ok(())
    }
}

/// The fixed-horizon judge on the answers so far: latency (`progressive_latency`: paired
/// window medians once there are enough), the 5xx and the 4xx share.
fn judge_arms(cfg: &JudgeConfig, rec: &Recording) -> Verdict {
    let (b, c) = (&rec.b, &rec.c);
    let mut data = std::collections::BTreeMap::new();
    data.insert(
        "latency".to_string(),
        progressive_latency(&b.latency_ms, &c.latency_ms, &rec.rec.latency_windows),
    );
    data.insert(
        "errors".to_string(),
        MetricData::Counts {
            baseline: Counts::new(b.errors, b.total),
            candidate: Counts::new(c.errors, c.total),
        },
    );
    data.insert(
        "4xx".to_string(),
        MetricData::Counts {
            baseline: Counts::new(b.client_errors, b.total),
            candidate: Counts::new(c.client_errors, c.total),
        },
    );
    judge(cfg, &data)
}
