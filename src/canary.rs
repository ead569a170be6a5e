//! `pipeline canary BASE CANDIDATE`: build both revisions of a service, run them as equal arms
//! behind an nginx balancer at equal weight (a throwaway stack with its own state), send bounded
//! load through the balancer, read per-arm latency and errors from nginx's access log (by
//! upstream address), judge with the canary judge, report, and take everything away again.
//! Exit codes: 0 pass, 1 fail (or an error), 3 marginal or not enough evidence.

use crate::ops::{self, PlanInputs, Workspace};
use anyhow::{anyhow, bail, Context, Result};
use pipeline_analysis::judge::{
    judge, Counts, Direction, JudgeConfig, Metric, MetricData, Outcome, Verdict,
};
use pipeline_analysis::{Arm, Decision, SequentialJudge};
use pipeline_engine::plan::PlanOptions;
use pipeline_engine::value::{format_number, Value, ValueMap};
use pipeline_providers::canary::{CanarySpec, LogTail};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The command line. Unset settings come from the service's `canary = { ... }` attribute, else
/// from [`CanarySpec`]'s defaults; each flag overrides only its own setting.
pub struct CanaryArgs {
    pub baseline: String,
    pub candidate: String,
    pub stack: Option<PathBuf>,
    pub service: Option<String>,
    pub replicas: u32,
    pub duration: Option<String>,
    pub rate: Option<u32>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub body_file: Option<PathBuf>,
    pub content_type: Option<String>,
    pub latency_tolerance: Option<f64>,
    pub confidence: Option<f64>,
    pub json: bool,
}

/// The stack's `canary` settings with the command line's over them, validated as one
/// [`CanarySpec`] (so a flag gets the same checks and messages as the attribute).
fn settings(stack_value: Option<&Value>, a: &CanaryArgs) -> Result<CanarySpec> {
    let mut m: ValueMap = match stack_value.map(|v| v.unmarked().0) {
        Some(Value::Map(m)) => m,
        _ => ValueMap::new(),
    };
    if let Some(d) = &a.duration {
        m.insert("duration".into(), Value::str(d.clone()));
    }
    if let Some(r) = a.rate {
        m.insert("rate".into(), Value::Number(r as f64));
    }
    if let Some(t) = a.latency_tolerance {
        m.insert("latency_tolerance".into(), Value::Number(t));
    }
    if let Some(c) = a.confidence {
        m.insert("confidence".into(), Value::Number(c));
    }
    let mut req: ValueMap = match m.get("request").map(|v| v.unmarked().0) {
        Some(Value::Map(r)) => r,
        _ => ValueMap::new(),
    };
    if let Some(x) = &a.method {
        req.insert("method".into(), Value::str(x.clone()));
    }
    if let Some(x) = &a.path {
        req.insert("path".into(), Value::str(x.clone()));
    }
    if let Some(f) = &a.body_file {
        let body = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the body file {}", f.display()))?;
        req.insert("body".into(), Value::str(body));
    }
    if let Some(x) = &a.content_type {
        req.insert("content_type".into(), Value::str(x.clone()));
    }
    if !req.is_empty() {
        m.insert("request".into(), Value::Map(req));
    }
    CanarySpec::from_value(&Value::Map(m)).map_err(|e| {
        anyhow!("{e}\n  = help: the settings are the service's `canary` attribute with the command-line flags over it")
    })
}

/// An evaluated value written back as an HCL literal (templates escaped).
fn hcl(v: &Value) -> Result<String> {
    Ok(match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format_number(*n),
        Value::String(s) => serde_json::to_string(s)?.replace("${", "$${").replace("%{", "%%{"),
        Value::List(l) => format!("[{}]", l.iter().map(hcl).collect::<Result<Vec<_>>>()?.join(", ")),
        Value::Map(m) => format!(
            "{{ {} }}",
            m.iter().map(|(k, v)| Ok(format!("{} = {}", serde_json::to_string(k)?, hcl(v)?))).collect::<Result<Vec<_>>>()?.join(", ")
        ),
        Value::Sensitive(v) => hcl(v)?,
        Value::Unknown => bail!("the service's configuration depends on values known only after apply; apply the stack first"),
    })
}

/// The service's evaluated configuration, from a plan of the user's stack (nothing changes).
async fn service_config(
    ws: &Workspace,
    stack: &Path,
    want: Option<&str>,
) -> Result<(String, BTreeMap<String, Value>, Option<Value>)> {
    let inputs = PlanInputs {
        stack: stack.to_path_buf(),
        opts: PlanOptions {
            refresh: false,
            parallelism: 1,
            ..Default::default()
        },
    };
    let (plan, config) = ops::make_plan(ws, &inputs).await?;
    let services: Vec<&pipeline_engine::plan::ResourceChange> = plan
        .changes
        .iter()
        .filter(|c| c.kind == "service" && c.after.is_some())
        .collect();
    let name = match want {
        Some(w) => w.trim_start_matches("service.").to_string(),
        None => {
            let mut names: Vec<String> = services
                .iter()
                .map(|c| c.resource.trim_start_matches("service.").to_string())
                .collect();
            names.dedup();
            match names.as_slice() {
                [one] => one.clone(),
                [] => bail!("{} declares no service to run a canary of", stack.display()),
                many => bail!(
                    "{} declares several services ({}); pick one with --service",
                    stack.display(),
                    many.join(", ")
                ),
            }
        }
    };
    let block = format!("service.{name}");
    let c = services
        .iter()
        .find(|c| c.resource == block && c.module == Some(0))
        .ok_or_else(|| anyhow!("{} has no {block}", stack.display()))?;
    let after = c.after.as_ref().expect("filtered above");
    // `canary` configures this command; it is not copied into the arms.
    let canary = after
        .get("canary")
        .filter(|v| !matches!(v, Value::Null))
        .cloned();
    let mut out = BTreeMap::new();
    for k in [
        "source",
        "build",
        "run",
        "env",
        "health",
        "start_timeout",
        "restart",
    ] {
        if let Some(v) = after.get(k).filter(|v| !matches!(v, Value::Null)) {
            out.insert(k.to_string(), v.clone());
        }
    }
    // Relative sources are relative to the stack; the canary stack lives elsewhere.
    if let Some(Value::String(src)) = out.get("source") {
        let p = PathBuf::from(src);
        if p.is_relative() {
            let base = std::env::current_dir()?.join(&config.modules[0].dir);
            out.insert(
                "source".into(),
                Value::String(base.join(p).display().to_string()),
            );
        }
    }
    Ok((name, out, canary))
}

fn arm_block(
    arm: &str,
    revision: &str,
    replicas: u32,
    cfg: &BTreeMap<String, Value>,
) -> Result<String> {
    let mut s = format!(
        "service \"{arm}\" {{\n  replicas = {replicas}\n  revision = {}\n",
        hcl(&Value::str(revision))?
    );
    for (k, v) in cfg {
        s.push_str(&format!("  {k} = {}\n", hcl(v)?));
    }
    s.push_str("}\n\n");
    Ok(s)
}

pub async fn run(ws: &Workspace, a: CanaryArgs) -> Result<ExitCode> {
    let stack = ws.stack(a.stack.as_deref())?;
    let (name, cfg, canary) = service_config(ws, &stack, a.service.as_deref()).await?;
    let spec = settings(canary.as_ref(), &a)?;
    let dir = ws.dir.join("canary");
    if dir.join("state.json").exists() {
        bail!("a canary seems to be running already (state in {})\n  = help: if it is not, remove that directory", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    let cws = Workspace::new(Some(dir.clone()))?;
    let port = pipeline_supervise::free_port("127.0.0.1")
        .context("no free port for the canary balancer")?;
    let replicas = a.replicas.max(1);
    let mut text = format!(
        "# The canary of service.{name}: {} (baseline) vs {} (candidate), written by pipeline.\n\n",
        a.baseline, a.candidate
    );
    text.push_str(&arm_block("baseline", &a.baseline, replicas, &cfg)?);
    text.push_str(&arm_block("candidate", &a.candidate, replicas, &cfg)?);
    text.push_str(&format!(
        "balancer \"canary\" {{\n  listen = {port}\n  routes = {{ \"/\" = {{ upstreams = [{{ service = service.baseline, weight = 1 }}, {{ service = service.candidate, weight = 1 }}] }} }}\n}}\n"
    ));
    let canary_stack = dir.join("canary.hcl");
    std::fs::write(&canary_stack, text)?;
    let result = run_arms(&cws, &canary_stack, port, &a, &spec).await;
    // Whatever happened: take the arms and the balancer away.
    let teardown = teardown(&cws, &canary_stack).await;
    let _ = std::fs::remove_dir_all(&dir);
    let code = result?;
    teardown?;
    Ok(code)
}

async fn apply(
    cws: &Workspace,
    stack: &Path,
    destroy: bool,
) -> Result<pipeline_engine::apply::ApplyReport> {
    let inputs = PlanInputs {
        stack: stack.to_path_buf(),
        opts: PlanOptions {
            refresh: true,
            destroy,
            parallelism: 10,
            ..Default::default()
        },
    };
    let lock = ops::lock(cws, "canary", &mut |_| {})?;
    let (plan, _) = ops::make_plan(cws, &inputs).await?;
    let mut quiet = |_: &pipeline_engine::apply::Event| {};
    ops::apply_plan(
        cws,
        &plan,
        &lock,
        10,
        Arc::new(AtomicBool::new(false)),
        &mut quiet,
    )
    .await
}

async fn teardown(cws: &Workspace, stack: &Path) -> Result<()> {
    if cws.state()?.resources.is_empty() {
        return Ok(());
    }
    let r = apply(cws, stack, true).await?;
    if !r.ok() {
        bail!("tearing the canary down failed: {:?}", r.failed);
    }
    Ok(())
}

/// One answer of an arm, as nginx logged it.
#[derive(Clone, Copy, Debug)]
struct Record {
    arm: Arm,
    status: u16,
    /// Request time, milliseconds.
    ms: f64,
}

/// Per-arm figures of the answers so far.
#[derive(Default)]
struct Tally {
    /// Latencies (ms) of answers below 400.
    latency: Vec<f64>,
    /// 5xx answers.
    errors: u64,
    total: u64,
    /// Answers per status code.
    statuses: BTreeMap<u16, u64>,
}

fn tally(records: &[Record], arm: Arm) -> Tally {
    let mut t = Tally::default();
    for r in records.iter().filter(|r| r.arm == arm) {
        t.total += 1;
        *t.statuses.entry(r.status).or_default() += 1;
        if r.status >= 500 {
            t.errors += 1;
        } else if r.status < 400 {
            t.latency.push(r.ms);
        }
    }
    t
}

async fn run_arms(
    cws: &Workspace,
    stack: &Path,
    port: u16,
    a: &CanaryArgs,
    spec: &CanarySpec,
) -> Result<ExitCode> {
    eprintln!(
        "canary: building and starting {} and {} ({} replica(s) each)...",
        a.baseline,
        a.candidate,
        a.replicas.max(1)
    );
    let report = apply(cws, stack, false).await?;
    if !report.ok() {
        let why: Vec<String> = report
            .failed
            .iter()
            .map(|(addr, _, e)| format!("{addr}: {e}"))
            .collect();
        bail!(
            "the arms did not come up, so there is no verdict:\n  {}",
            why.join("\n  ")
        );
    }
    let st = cws.state()?;
    let arm_of: BTreeMap<String, Arm> = st
        .resources
        .iter()
        .filter_map(|(addr, r)| {
            let url = r
                .attrs
                .get("url")?
                .as_str()?
                .trim_start_matches("http://")
                .to_string();
            let arm = if addr.starts_with("service.baseline") {
                Arm::Baseline
            } else if addr.starts_with("service.candidate") {
                Arm::Candidate
            } else {
                return None;
            };
            Some((url, arm))
        })
        .collect();
    let mut sampler = Sampler::new(cws, &st);
    let mut usage: Vec<[ArmUsage; 2]> = Vec::new();
    let mut tail = LogTail::at_end(&cws.dir.join("run/balancer.canary/logs/access.log"));
    let req = &spec.request;
    eprintln!(
        "canary: {} {} at {} req/s for {:?} through the balancer...",
        req.method, req.path, spec.rate, spec.duration
    );
    let load_spec = LoadSpec {
        port,
        rate: spec.rate,
        duration: spec.duration,
        method: req.method.clone(),
        path: req.path.clone(),
        body: req.body.clone(),
        content_type: req.content_type.clone(),
    };
    let halt = Arc::new(AtomicBool::new(false));
    let loader = {
        let halt = halt.clone();
        std::thread::spawn(move || load(load_spec, halt))
    };
    // Watch as data arrives: a clear regression of the error rate stops the canary early. The
    // sequential test's false-alarm rate holds over every look (see engine/analysis).
    let started = Instant::now();
    sampler.sample();
    let mut seq = SequentialJudge::new(spec.sequential_config());
    let mut records: Vec<Record> = Vec::new();
    // (5xx, answers) per arm in what was new.
    let mut read_new = |records: &mut Vec<Record>| -> [(Arm, u64, u64); 2] {
        let mut counts = [(Arm::Baseline, 0, 0), (Arm::Candidate, 0, 0)];
        for ans in tail.read_new() {
            let Some(&arm) = arm_of.get(&ans.upstream) else {
                continue;
            };
            records.push(Record {
                arm,
                status: ans.status,
                ms: ans.secs * 1000.0,
            });
            let c = &mut counts[usize::from(arm == Arm::Candidate)];
            c.1 += u64::from(ans.status >= 500);
            c.2 += 1;
        }
        counts
    };
    let mut early: Option<(Duration, String)> = None;
    while !loader.is_finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        usage.push(sampler.sample());
        for (arm, events, total) in read_new(&mut records) {
            let _ = seq.observe_counts(arm, "errors", events, total);
        }
        if let Decision::Fail(metric, _) = seq.decision() {
            early = Some((started.elapsed(), metric));
            halt.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let client = loader
        .join()
        .map_err(|_| anyhow!("the load generator failed"))?;
    if let Some((after, metric)) = &early {
        eprintln!(
            "canary: stopped early after {:.1}s of traffic: `{metric}` regressed (sequential test)",
            after.as_secs_f64()
        );
    }
    // nginx writes its access log as requests finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    read_new(&mut records);
    let (mut base, mut cand) = (
        tally(&records, Arm::Baseline),
        tally(&records, Arm::Candidate),
    );
    refuse_garbage(a, spec, &base, &cand, &client)?;
    let mut data = BTreeMap::new();
    data.insert(
        "latency".to_string(),
        MetricData::Continuous {
            baseline: std::mem::take(&mut base.latency),
            candidate: std::mem::take(&mut cand.latency),
        },
    );
    data.insert(
        "errors".to_string(),
        MetricData::Counts {
            baseline: Counts::new(base.errors, base.total),
            candidate: Counts::new(cand.errors, cand.total),
        },
    );
    for (name, pick) in [
        (
            "cpu",
            (|u: &ArmUsage| u.cpu_pct) as fn(&ArmUsage) -> Option<f64>,
        ),
        ("memory", |u: &ArmUsage| u.rss_mib),
    ] {
        let arm = |i: usize| usage.iter().filter_map(|u| pick(&u[i])).collect();
        data.insert(
            name.to_string(),
            MetricData::Continuous {
                baseline: arm(0),
                candidate: arm(1),
            },
        );
    }
    let mut verdict = judge(&judge_config(spec), &data);
    if let Some((after, metric)) = &early {
        // The early stop is a verdict of its own: it holds whatever the shorter sample says.
        verdict.outcome = Outcome::Fail;
        verdict.reason = format!("stopped after {:.1}s of traffic: `{metric}` regressed beyond doubt (sequential test); {}", after.as_secs_f64(), verdict.reason);
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "baseline": a.baseline, "candidate": a.candidate, "client": client.to_string(), "verdict": verdict })
        );
    } else {
        print!("{}", report_text(a, &verdict, &client));
    }
    Ok(match verdict.outcome {
        Outcome::Pass => ExitCode::SUCCESS,
        Outcome::Fail => ExitCode::from(1),
        Outcome::Marginal | Outcome::Inconclusive => ExitCode::from(3),
    })
}

/// CPU and memory of one arm at one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArmUsage {
    /// CPU over the interval since the previous sample, % of one core (None at the first).
    pub cpu_pct: Option<f64>,
    /// Resident memory, MiB (None when no process of the arm was found).
    pub rss_mib: Option<f64>,
    /// Processes counted.
    pub processes: u32,
}

/// Samples the app processes of each arm: every replica's active generation under the canary
/// workspace (`run/<instance>/gen-N/`), i.e. its supervisor's child and all its descendants.
struct Sampler {
    /// Generation directories: [baseline, candidate].
    dirs: [Vec<PathBuf>; 2],
    /// utime + stime (clock ticks) per pid at the previous sample, per arm.
    prev: [BTreeMap<u32, u64>; 2],
    prev_at: Option<Instant>,
    ticks_per_sec: f64,
    page_bytes: f64,
}

impl Sampler {
    fn new(cws: &Workspace, st: &pipeline_state::State) -> Sampler {
        let mut dirs: [Vec<PathBuf>; 2] = Default::default();
        for (addr, r) in &st.resources {
            let i = if addr.starts_with("service.baseline") {
                0
            } else if addr.starts_with("service.candidate") {
                1
            } else {
                continue;
            };
            let generation = r.attrs.get("generation").and_then(|g| g.as_u64());
            dirs[i].push(pipeline_providers::local::generation_dir(
                &cws.dir, addr, generation,
            ));
        }
        // SAFETY: sysconf only reads configuration values.
        let (hz, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        Sampler {
            dirs,
            prev: Default::default(),
            prev_at: None,
            ticks_per_sec: if hz > 0 { hz as f64 } else { 100.0 },
            page_bytes: if page > 0 { page as f64 } else { 4096.0 },
        }
    }

    /// One sample of both arms: [baseline, candidate].
    fn sample(&mut self) -> [ArmUsage; 2] {
        let procs = all_procs();
        let now = Instant::now();
        let dt = self.prev_at.map(|t| now.duration_since(t).as_secs_f64());
        self.prev_at = Some(now);
        let mut out = [ArmUsage::default(); 2];
        for (i, usage) in out.iter_mut().enumerate() {
            let roots: Vec<u32> = self.dirs[i]
                .iter()
                .filter_map(|d| pipeline_supervise::StatusFile::read(d)?.child_pid)
                .filter(|p| procs.contains_key(p))
                .collect();
            let family = descendants(&roots, &procs);
            let mut ticks = BTreeMap::new();
            let mut delta = 0u64;
            let mut rss = 0f64;
            for pid in &family {
                let t = procs[pid].1;
                // A process new since the last sample spent all its time since then.
                delta += t.saturating_sub(self.prev[i].get(pid).copied().unwrap_or(0));
                ticks.insert(*pid, t);
                rss += statm_resident_pages(*pid) * self.page_bytes;
            }
            usage.processes = family.len() as u32;
            if !family.is_empty() {
                usage.rss_mib = Some(rss / (1024.0 * 1024.0));
                usage.cpu_pct = dt
                    .filter(|d| *d > 0.0)
                    .map(|d| 100.0 * delta as f64 / self.ticks_per_sec / d);
            }
            self.prev[i] = ticks;
        }
        out
    }
}

/// pid -> (ppid, utime + stime in clock ticks) of every process.
fn all_procs() -> BTreeMap<u32, (u32, u64)> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses; field n is f[n-3].
        let Some(rest) = text.rfind(')').map(|i| &text[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
        if let (Some(ppid), Some(ut), Some(st)) = (num(1), num(11), num(12)) {
            out.insert(pid, (ppid as u32, ut + st));
        }
    }
    out
}

/// The roots and all their descendants (by parent pid).
fn descendants(roots: &[u32], procs: &BTreeMap<u32, (u32, u64)>) -> Vec<u32> {
    let mut set: std::collections::BTreeSet<u32> = roots.iter().copied().collect();
    loop {
        let before = set.len();
        for (&pid, &(ppid, _)) in procs {
            if set.contains(&ppid) {
                set.insert(pid);
            }
        }
        if set.len() == before {
            return set.into_iter().collect();
        }
    }
}

fn statm_resident_pages(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// The fixed judge: the stack's latency and error settings plus CPU and memory per arm, which
/// weigh little and are not critical. A canary too short for 10 resource samples (5 s) per arm
/// has no evidence about them: Inconclusive, never a pass by default.
fn judge_config(spec: &CanarySpec) -> JudgeConfig {
    let mut c = spec.judge_config();
    c.metrics.push(
        Metric::continuous("cpu")
            .direction(Direction::Increase)
            // one clock tick per 0.5 s sample is 2 % of a core: no smaller shift is evidence
            .tolerance(0.5)
            .abs_tolerance(2.0)
            .weight(0.25)
            .min_samples(10),
    );
    c.metrics.push(
        Metric::continuous("memory")
            .direction(Direction::Increase)
            .tolerance(0.25)
            .weight(0.25)
            .min_samples(10),
    );
    c
}

/// "404 × 200, 502 × 3": the status codes an arm answered with, most frequent first.
fn statuses(t: &Tally) -> String {
    let mut v: Vec<(&u16, &u64)> = t.statuses.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(s, n)| format!("{s} × {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuse to judge garbage: an endpoint the baseline does not serve is a wrong canary, not a
/// verdict on the candidate.
fn refuse_garbage(
    a: &CanaryArgs,
    spec: &CanarySpec,
    base: &Tally,
    cand: &Tally,
    client: &ClientStats,
) -> Result<()> {
    let (m, p) = (&spec.request.method, &spec.request.path);
    if base.total == 0 {
        bail!(
            "no request reached the baseline ({}) (client: {client}); no verdict\n  = help: the balancer answered nothing from the arms; see the errors above",
            a.baseline
        );
    }
    let bad = base.total - base.latency.len() as u64;
    if bad * 2 > base.total {
        let both = cand.total > 0 && (cand.total - cand.latency.len() as u64) * 2 > cand.total;
        bail!(
            "the baseline ({}) itself fails {bad} of {} requests to {m} {p} ({}){}; no verdict\n  = help: the endpoint must work on the baseline: check the path, method and body (--path, --method, --body-file, or the service's `canary.request`)",
            a.baseline,
            base.total,
            statuses(base),
            if both {
                format!(", and so does the candidate ({}: {})", a.candidate, statuses(cand))
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// The unit of a continuous metric's samples.
fn unit_of(metric: &str) -> &'static str {
    match metric {
        "cpu" => "%",
        "memory" => "MiB",
        _ => "ms",
    }
}

fn report_text(a: &CanaryArgs, v: &Verdict, client: &ClientStats) -> String {
    use pipeline_analysis::judge::Summary;
    let show = |name: &str, s: &Option<Summary>| match s {
        Some(Summary::Continuous(x)) => {
            let unit = unit_of(name);
            format!("n={} p50={:.2}{unit} p99={:.2}{unit}", x.n, x.median, x.p99)
        }
        Some(Summary::Proportion {
            events,
            total,
            rate,
        }) => format!("{events}/{total} ({:.2}%)", rate * 100.0),
        None => "-".into(),
    };
    let mut out = format!(
        "\nCanary: {} (baseline) vs {} (candidate); load: {client}\n\n",
        a.baseline, a.candidate
    );
    out.push_str(&format!(
        "{:<10} {:<34} {:<34} {:>10} {:>10}  {}\n",
        "METRIC", "BASELINE", "CANDIDATE", "EFFECT", "P-VALUE", "VERDICT"
    ));
    for m in &v.per_metric {
        let effect = m
            .effect
            .map_or("-".into(), |e| format!("{:+.1}%", e.relative * 100.0));
        let p = m.p_value.map_or("-".into(), |p| format!("{p:.2e}"));
        out.push_str(&format!(
            "{:<10} {:<34} {:<34} {:>10} {:>10}  {:?}{}\n",
            m.name,
            show(&m.name, &m.baseline),
            show(&m.name, &m.candidate),
            effect,
            p,
            m.status,
            if m.critical { " (critical)" } else { "" }
        ));
        out.push_str(&format!("           {}\n", m.reason));
    }
    out.push_str(&format!(
        "\nScore {:.0} (pass >= 95, marginal >= 75): {:?}. {}\n",
        v.score, v.outcome, v.reason
    ));
    out
}

#[derive(Default, Clone)]
struct ClientStats {
    sent: u64,
    ok: u64,
    other: u64,
}

impl std::fmt::Display for ClientStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, {} answered 2xx, {} not",
            self.sent, self.ok, self.other
        )
    }
}

/// Bounded load: `rate` requests a second for `duration`, one connection per request.
#[derive(Clone)]
struct LoadSpec {
    port: u16,
    rate: u32,
    duration: Duration,
    method: String,
    path: String,
    body: Option<String>,
    content_type: String,
}

fn load(l: LoadSpec, halt_flag: Arc<AtomicBool>) -> ClientStats {
    let (port, a) = (l.port, &l);
    let clients = 8u32.min(a.rate.max(1));
    let interval = Duration::from_secs_f64(clients as f64 / a.rate.max(1) as f64);
    let stats = Arc::new(Mutex::new(ClientStats::default()));
    let stop = Instant::now() + a.duration;
    let body = a.body.clone().unwrap_or_default();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stats, body, method, path, ctype) = (
                stats.clone(),
                body.clone(),
                a.method.clone(),
                a.path.clone(),
                a.content_type.clone(),
            );
            let halt = halt_flag.clone();
            std::thread::spawn(move || {
                let mut next = Instant::now();
                while Instant::now() < stop && !halt.load(std::sync::atomic::Ordering::SeqCst) {
                    let ok = one(port, &method, &path, &body, &ctype);
                    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                    s.sent += 1;
                    if ok {
                        s.ok += 1
                    } else {
                        s.other += 1
                    }
                    drop(s);
                    next += interval;
                    if let Some(d) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let s = stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
    s
}

fn one(port: u16, method: &str, path: &str, body: &str, content_type: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let ctype = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Type: {content_type}\r\n")
    };
    let req = format!("{method} {path} HTTP/1.1\r\nHost: canary\r\n{ctype}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let head = String::from_utf8_lossy(&resp[..resp.len().min(16)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .is_some_and(|c| c.starts_with('2'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> CanaryArgs {
        CanaryArgs {
            baseline: "a".into(),
            candidate: "b".into(),
            stack: None,
            service: None,
            replicas: 1,
            duration: None,
            rate: None,
            method: None,
            path: None,
            body_file: None,
            content_type: None,
            latency_tolerance: None,
            confidence: None,
            json: false,
        }
    }

    fn map(kv: &[(&str, Value)]) -> Value {
        Value::Map(kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    #[test]
    fn flags_override_the_stack_setting_by_setting() {
        let stack = map(&[
            ("rate", Value::Number(40.0)),
            ("confidence", Value::Number(0.99)),
            (
                "request",
                map(&[
                    ("method", Value::str("POST")),
                    ("path", Value::str("/preview")),
                    ("body", Value::str("{}")),
                ]),
            ),
        ]);
        let s = settings(Some(&stack), &args()).unwrap();
        assert_eq!((s.rate, s.confidence), (40, 0.99));
        assert_eq!(s.request.method, "POST");
        assert_eq!(s.request.body.as_deref(), Some("{}"));
        assert_eq!(s.judge_config().confidence, 0.99);

        let mut a = args();
        a.path = Some("/other".into());
        a.rate = Some(7);
        a.duration = Some("3s".into());
        let s = settings(Some(&stack), &a).unwrap();
        assert_eq!((s.rate, s.duration), (7, Duration::from_secs(3)));
        assert_eq!(
            (s.request.method.as_str(), s.request.path.as_str()),
            ("POST", "/other")
        );

        // No attribute: the shared defaults.
        let s = settings(None, &args()).unwrap();
        assert_eq!(s, CanarySpec::default());
    }

    #[test]
    fn the_sampler_counts_an_arm_s_process_tree() {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        // The supervisor's child waits; its own child burns a core.
        let mut child = Command::new("sh")
            .args(["-c", "sh -c 'while :; do :; done' & wait"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::fs::write(
            dir.path().join(pipeline_supervise::STATUS_FILE),
            format!("{{\"child_pid\": {}}}", child.id()),
        )
        .unwrap();
        let mut s = Sampler {
            dirs: [vec![dir.path().to_path_buf()], vec![]],
            prev: Default::default(),
            prev_at: None,
            ticks_per_sec: 100.0,
            page_bytes: 4096.0,
        };
        std::thread::sleep(Duration::from_millis(200));
        let first = s.sample();
        std::thread::sleep(Duration::from_millis(500));
        let second = s.sample();
        let busy = descendants(&[child.id()], &all_procs());
        let _ = Command::new("kill")
            .arg("-9")
            .args(busy.iter().map(|p| p.to_string()))
            .status();
        let _ = child.wait();
        assert_eq!(
            first[0].cpu_pct, None,
            "no interval before the first sample"
        );
        assert_eq!(second[0].processes, 2, "{second:?}");
        let cpu = second[0].cpu_pct.unwrap();
        eprintln!(
            "a busy loop measured {cpu:.0} % of a core, {:?} MiB",
            second[0].rss_mib
        );
        // A busy loop on a shared 2-core machine: most of one core, never more than two.
        assert!(cpu > 30.0 && cpu < 210.0, "{cpu}");
        assert!(second[0].rss_mib.unwrap() > 0.1, "{second:?}");
        assert_eq!(
            second[1],
            ArmUsage::default(),
            "an arm without processes has no figures"
        );
    }

    #[test]
    fn a_wrong_flag_gets_the_attribute_s_message() {
        let mut a = args();
        a.confidence = Some(2.0);
        let e = settings(None, &a).unwrap_err().to_string();
        assert!(e.contains("confidence is between 0.5 and 1"), "{e}");
        let mut a = args();
        a.path = Some("nope".into());
        let e = settings(None, &a).unwrap_err().to_string();
        assert!(e.contains("must start with /"), "{e}");
    }
}
