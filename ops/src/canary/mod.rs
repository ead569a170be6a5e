//! The canary of a service (`pipeline canary BASE CANDIDATE`): build both revisions, run them
//! as equal arms behind an nginx balancer at equal weight (a throwaway stack with its own state),
//! send bounded load through the balancer, read per-arm latency and errors from nginx's access
//! log (by upstream address), judge with the canary judge, and take everything away again.
//! A [`CanaryRequest`] goes in, [`Progress`] comes out through a callback while it runs, and a
//! [`CanaryOutcome`] (the [`Report`] and the load generator's figures) comes back; rendering it
//! (text, JSON, the HTML file) and the exit code are the caller's.

pub mod failure;
pub mod report;
mod sampler;

use anyhow::{anyhow, bail, Context, Result};
use failure::ArmsFailed;
use indexmap::IndexMap;
use pipeline_analysis::interval::{hodges_lehmann_interval, newcombe_interval};
use pipeline_analysis::judge::{
    judge, Counts, Direction, JudgeConfig, Metric, MetricData, Outcome, Verdict,
};
use pipeline_analysis::{Arm, Decision, SequentialJudge};
use pipeline_engine::apply::ApplyReport;
use pipeline_engine::config::Config;
use pipeline_engine::plan::{Plan, PlanOptions};
use pipeline_engine::value::{format_number, Value, ValueMap};
use pipeline_providers::canary::LoadStats;
use pipeline_providers::canary::{CanarySpec, LogTail, ProgressiveRecord};
use pipeline_supervise::private;
use report::{
    ArmPair, ArmUsage, ArmWindow, EarlyStop, LoadInfo, Look, ProgressiveInfo, Report, RequestInfo,
    Series, UsageSample, Window,
};
use sampler::{ticks_per_sec, Sampler};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the canary asks of the working directories it uses (the user's, to read the service's
/// configuration; its own throwaway one under `canary/`, to run the arms): plan and apply a
/// stack there, as `pipeline plan` and `pipeline apply` do.
#[async_trait::async_trait(?Send)]
pub trait Stacks {
    /// A plan of `stack` against the state in the working directory `dir` (nothing changes).
    async fn plan(&self, dir: &Path, stack: &Path, opts: PlanOptions) -> Result<(Plan, Config)>;
    /// Plan and apply `stack` in the working directory `dir` under its state lock, quietly.
    async fn apply(&self, dir: &Path, stack: &Path, opts: PlanOptions) -> Result<ApplyReport>;
}

/// One canary. Unset settings come from the service's `canary = { ... }` attribute, else from
/// [`CanarySpec`]'s defaults; each one given here overrides only its own setting.
pub struct CanaryRequest {
    /// The user's working directory (`.pipeline`): the canary's own lives in `canary/` below it.
    pub work_dir: PathBuf,
    /// The stack that declares the service.
    pub stack: PathBuf,
    pub baseline: String,
    pub candidate: String,
    /// The service, when the stack has several.
    pub service: Option<String>,
    /// Replicas per arm (at least 1).
    pub replicas: u32,
    pub duration: Option<String>,
    pub rate: Option<u32>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub body_file: Option<PathBuf>,
    pub content_type: Option<String>,
    pub latency_tolerance: Option<f64>,
    pub confidence: Option<f64>,
    /// The stack's variables (`-var`, `-var-file`, `PIPELINE_VAR_*`), as for plan.
    pub variables: IndexMap<String, Value>,
}

/// What a running canary reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// Building and starting both arms.
    Starting {
        baseline: String,
        candidate: String,
        replicas: u32,
    },
    /// The arms serve; load starts.
    Load {
        method: String,
        path: String,
        rate: u32,
        duration: Duration,
    },
    /// The sequential test ended the load early: a metric regressed (`Some(metric)`) or every
    /// metric is within its tolerance (`None`).
    StoppedEarly {
        after: Duration,
        regressed: Option<String>,
    },
}

/// A canary that reached a verdict.
pub struct CanaryOutcome {
    pub report: Report,
    /// What the load generator sent and got back.
    pub client: LoadStats,
    /// Taking the arms away afterwards failed: the verdict stands, the error is to be shown.
    pub teardown_error: Option<anyhow::Error>,
}

/// `pipeline canary --simulate`: the judge's operating characteristics per scenario.
pub struct Simulation {
    pub seed: u64,
    pub scenarios: Vec<pipeline_analysis::Scenario>,
    pub results: Vec<pipeline_analysis::OperatingCharacteristics>,
    pub elapsed: Duration,
}

/// `pipeline canary --simulate`: the sequential judge's operating characteristics on simulated
/// traffic (engine/analysis/src/simulate.rs), as `cargo bench -p pipeline-analysis` measures
/// them: A/A, errors 0.5 % -> 5 %, latency +25 %, 100 req/s per arm, one look a second.
pub fn simulate(runs: usize) -> Result<Simulation> {
    use pipeline_analysis::Scenario;
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    const SEED: u64 = 0x5eed;
    let scenarios = vec![
        Scenario::aa(),
        Scenario::error_regression(0.005, 0.05),
        Scenario::latency_regression(1.25),
    ];
    let started = Instant::now();
    let results = scenarios
        .iter()
        .map(|s| pipeline_analysis::simulate(s, runs, SEED))
        .collect();
    Ok(Simulation {
        seed: SEED,
        scenarios,
        results,
        elapsed: started.elapsed(),
    })
}

/// The stack's `canary` settings with the command line's over them, validated as one
/// [`CanarySpec`] (so a flag gets the same checks and messages as the attribute).
fn settings(stack_value: Option<&Value>, a: &CanaryRequest) -> Result<CanarySpec> {
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
    let mut spec = CanarySpec::from_value(&Value::Map(m)).map_err(|e| {
        anyhow!("{e}\n  = help: the settings are the service's `canary` attribute with the command-line flags over it")
    })?;
    // The marks were taken off to lay the flags over the stack's settings: a request the stack
    // marked secret stays masked unless the command line replaced both of its secret parts.
    let secret = |f: &str| stack_value.is_some_and(|v| v.is_sensitive_at(&["request", f]));
    spec.request.secret =
        (secret("method") && a.method.is_none()) || (secret("path") && a.path.is_none());
    Ok(spec)
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
/// A service is a block of replicas (its kind's schema has an instances attribute); the name
/// returned is the block's address (`service.web`).
async fn service_config(
    host: &dyn Stacks,
    work_dir: &Path,
    stack: &Path,
    want: Option<&str>,
    variables: &IndexMap<String, Value>,
) -> Result<(String, BTreeMap<String, Value>, Option<Value>)> {
    let opts = PlanOptions {
        refresh: false,
        parallelism: 1,
        variables: variables.clone(),
        ..Default::default()
    };
    let (plan, config) = host.plan(work_dir, stack, opts).await?;
    let registry = pipeline_providers::registry();
    let services: Vec<&pipeline_engine::plan::ResourceChange> = plan
        .changes
        .iter()
        .filter(|c| {
            c.after.is_some()
                && registry
                    .schema(&c.kind, Some(&c.provider))
                    .is_some_and(|(_, k)| k.instances_attr.is_some())
        })
        .collect();
    // `service.web` → `web`.
    let short = |c: &pipeline_engine::plan::ResourceChange| {
        c.resource
            .strip_prefix(&format!("{}.", c.kind))
            .unwrap_or(&c.resource)
            .to_string()
    };
    let name = match want {
        Some(w) => services
            .iter()
            .find(|c| c.resource == w)
            .map_or_else(|| w.to_string(), |c| short(c)),
        None => {
            let mut names: Vec<String> = services.iter().map(|c| short(c)).collect();
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
    let c = services
        .iter()
        .find(|c| short(c) == name && c.module == Some(0))
        .ok_or_else(|| anyhow!("{} has no service.{name}", stack.display()))?;
    let block = c.resource.clone();
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
        "network",
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
    Ok((block, out, canary))
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

/// Runs the canary of `req`: both arms up, load through the balancer, the verdict, and
/// everything taken away again whatever happened. An error means no verdict.
pub async fn run(
    host: &dyn Stacks,
    a: &CanaryRequest,
    progress: &mut dyn FnMut(Progress),
) -> Result<CanaryOutcome> {
    let stack = &a.stack;
    let (block, cfg, canary) =
        service_config(host, &a.work_dir, stack, a.service.as_deref(), &a.variables).await?;
    let spec = settings(canary.as_ref(), a)?;
    let dir = a.work_dir.join("canary");
    if dir.join("state.json").exists() {
        bail!("a canary seems to be running already (state in {})\n  = help: if it is not, remove that directory", dir.display());
    }
    private::create_dir_all(&dir)?;
    let port = pipeline_supervise::free_port("127.0.0.1")
        .context("no free port for the canary balancer")?;
    let replicas = a.replicas.max(1);
    let mut text = format!(
        "# The canary of {block}: {} (baseline) vs {} (candidate), written by pipeline.\n\n",
        a.baseline, a.candidate
    );
    text.push_str(&arm_block("baseline", &a.baseline, replicas, &cfg)?);
    text.push_str(&arm_block("candidate", &a.candidate, replicas, &cfg)?);
    text.push_str(&format!(
        "balancer \"canary\" {{\n  listen = {port}\n  routes = {{ \"/\" = {{ upstreams = [{{ service = service.baseline, weight = 1 }}, {{ service = service.candidate, weight = 1 }}] }} }}\n}}\n"
    ));
    let canary_stack = dir.join("canary.hcl");
    // It holds the service's evaluated configuration, secrets included.
    private::write(&canary_stack, text)?;
    let arms = Arms {
        host,
        dir: &dir,
        stack: &canary_stack,
    };
    let result = run_arms(&arms, port, a, &spec, &block, progress).await;
    // Whatever happened: take the arms and the balancer away.
    let teardown = teardown(&arms).await;
    let _ = std::fs::remove_dir_all(&dir);
    let mut outcome = result?;
    outcome.teardown_error = teardown.err();
    Ok(outcome)
}

/// The canary's own working directory and throwaway stack.
struct Arms<'a> {
    host: &'a dyn Stacks,
    dir: &'a Path,
    stack: &'a Path,
}

async fn apply(arms: &Arms<'_>, destroy: bool) -> Result<ApplyReport> {
    let opts = PlanOptions {
        refresh: true,
        destroy,
        parallelism: 10,
        ..Default::default()
    };
    arms.host.apply(arms.dir, arms.stack, opts).await
}

async fn teardown(arms: &Arms<'_>) -> Result<()> {
    if pipeline_state::StateStore::load(arms.dir)
        .map_err(|e| anyhow!("{e}"))?
        .resources
        .is_empty()
    {
        return Ok(());
    }
    let r = apply(arms, true).await?;
    if !r.ok() {
        let why: Vec<String> = r
            .failed
            .iter()
            .map(|f| format!("{}: {}", f.addr, f.error))
            .collect();
        bail!("tearing the canary down failed: {}", why.join("; "));
    }
    Ok(())
}

/// One answer of an arm, as nginx logged it.
#[derive(Clone, Copy, Debug)]
struct Record {
    /// Seconds after load started (from nginx's `$msec`).
    t: f64,
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
    /// 4xx answers.
    client_errors: u64,
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
        } else if r.status >= 400 {
            t.client_errors += 1;
        } else {
            t.latency.push(r.ms);
        }
    }
    t
}

/// What the fixed judge sees: latency and errors from the answers, CPU and memory from the
/// resource samples.
fn judge_data(records: &[Record], usage: &[UsageSample]) -> BTreeMap<String, MetricData> {
    let (base, cand) = (
        tally(records, Arm::Baseline),
        tally(records, Arm::Candidate),
    );
    let mut data = BTreeMap::new();
    data.insert(
        "latency".to_string(),
        MetricData::Continuous {
            baseline: base.latency,
            candidate: cand.latency,
        },
    );
    data.insert(
        "errors".to_string(),
        MetricData::Counts {
            baseline: Counts::new(base.errors, base.total),
            candidate: Counts::new(cand.errors, cand.total),
        },
    );
    data.insert(
        "4xx".to_string(),
        MetricData::Counts {
            baseline: Counts::new(base.client_errors, base.total),
            candidate: Counts::new(cand.client_errors, cand.total),
        },
    );
    for (name, pick) in [
        (
            "cpu",
            (|u: &ArmUsage| u.cpu_pct) as fn(&ArmUsage) -> Option<f64>,
        ),
        ("memory", |u: &ArmUsage| u.rss_mib),
    ] {
        data.insert(
            name.to_string(),
            MetricData::Continuous {
                baseline: usage.iter().filter_map(|u| pick(&u.baseline)).collect(),
                candidate: usage.iter().filter_map(|u| pick(&u.candidate)).collect(),
            },
        );
    }
    data
}

/// The block name of an address in the canary's stack: `baseline` of `service.baseline[1]`.
fn block_name(addr: &str) -> &str {
    let block = addr.split('[').next().unwrap_or(addr);
    block.rsplit('.').next().unwrap_or(block)
}

/// The arm of an instance of the canary's stack: its block is `baseline` or `candidate`.
fn arm_of_address(addr: &str) -> Option<Arm> {
    match block_name(addr) {
        "baseline" => Some(Arm::Baseline),
        "candidate" => Some(Arm::Candidate),
        _ => None,
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn run_arms(
    arms: &Arms<'_>,
    port: u16,
    a: &CanaryRequest,
    spec: &CanarySpec,
    service: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<CanaryOutcome> {
    progress(Progress::Starting {
        baseline: a.baseline.clone(),
        candidate: a.candidate.clone(),
        replicas: a.replicas.max(1),
    });
    let report = apply(arms, false).await.map_err(|e| {
        anyhow!(
            "{}\n  = note: no verdict; .pipeline/canary/canary.hcl was the canary's throwaway stack (service \"baseline\" at `{}`, service \"candidate\" at `{}`) and is removed again",
            format!("{e:#}").trim_end(),
            a.baseline,
            a.candidate
        )
    })?;
    if !report.ok() {
        return Err(ArmsFailed::new(&a.baseline, &a.candidate, &report.failed).into());
    }
    // What runs, as the providers describe it: each arm's replicas (where they serve, their
    // processes) and the balancer (its access log).
    let st = pipeline_state::StateStore::load(arms.dir).map_err(|e| anyhow!("{e}"))?;
    let registry = pipeline_providers::registry();
    let ctx = pipeline_engine::provider::ProviderCtx {
        work_dir: arms.dir.to_path_buf(),
        stack_dir: arms.dir.to_path_buf(),
        exe: std::env::current_exe().context("cannot find the pipeline binary")?,
    };
    let mut described = Vec::new();
    for (addr, r) in &st.resources {
        let p = registry
            .provider_of(r)
            .ok_or_else(|| anyhow!("{addr}: no provider `{}` in this binary", r.provider))?;
        let d = p
            .describe(&ctx, &r.kind, addr, &r.attrs)
            .await
            .map_err(|e| anyhow!("cannot describe {addr}: {e}"))?;
        described.push((addr.clone(), r.clone(), d));
    }
    let mut arm_of: BTreeMap<String, Arm> = BTreeMap::new();
    let mut instances: [Vec<sampler::Instance>; 2] = Default::default();
    for (addr, r, d) in &described {
        let Some(arm) = arm_of_address(addr) else {
            continue;
        };
        if let Some(e) = d.endpoint("serve") {
            // nginx names an upstream `host:port`.
            let up = e.url.split_once("://").map_or(e.url.as_str(), |(_, r)| r);
            arm_of.insert(up.trim_end_matches('/').to_string(), arm);
        }
        instances[usize::from(arm == Arm::Candidate)].push(sampler::Instance::new(addr, r, d));
    }
    let access_log = described
        .iter()
        .find_map(|(_, _, d)| d.access_log())
        .ok_or_else(|| {
            anyhow!("the canary's balancer describes no access log to read the arms' answers from")
        })?;
    let mut tail = LogTail::at_end(access_log);
    let mut sampler = Sampler::new(instances, sampler::described_roots(registry, ctx));
    let req = &spec.request;
    let (method, path) = req.shown();
    progress(Progress::Load {
        method,
        path,
        rate: spec.rate,
        duration: spec.duration,
    });
    let cfg = judge_config(spec);
    let halt = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let t0 = unix_now();
    let loader = pipeline_providers::canary::start_load(
        format!("127.0.0.1:{port}"),
        spec.rate,
        req.clone(),
        Instant::now() + spec.duration,
        halt.clone(),
    );
    // CPU and memory are sampled on their own thread and clock, so slow looks on a loaded
    // machine do not thin them out.
    let every = look_every(spec.duration);
    let sampled: Arc<std::sync::Mutex<Vec<UsageSample>>> = Arc::default();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampled, sampling) = (sampled.clone(), sampling.clone());
        std::thread::spawn(move || {
            sampler.sample();
            let mut next = Instant::now() + every;
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next = Instant::now().max(next + every);
                let t = started.elapsed().as_secs_f64();
                let [baseline, candidate] = sampler.sample();
                sampled.lock().expect("sampler lock").push(UsageSample {
                    t,
                    baseline,
                    candidate,
                });
            }
        })
    };
    // Watch as data arrives: a clear regression of the error rate or the latency (batch
    // medians, see LatencyBatches) stops the canary early. The
    // sequential test's false-alarm rate holds over every look (see engine/analysis). Each
    // look also records CPU and memory, and the fixed judge's score on the data so far.
    let mut seq = SequentialJudge::new(spec.sequential_config());
    let mut records: Vec<Record> = Vec::new();
    let mut looks: Vec<Look> = Vec::new();
    // (5xx, answers) per arm in what was new.
    let mut batches = pipeline_providers::canary::LatencyBatches::default();
    let mut read_new = |records: &mut Vec<Record>,
                        batches: &mut pipeline_providers::canary::LatencyBatches|
     -> [(Arm, u64, u64); 2] {
        let mut counts = [(Arm::Baseline, 0, 0), (Arm::Candidate, 0, 0)];
        for ans in tail.read_new() {
            // Attempts nginx gave up on and retried elsewhere fail their own arm.
            for (up, status) in &ans.failed_attempts {
                let Some(&arm) = arm_of.get(up) else {
                    continue;
                };
                records.push(Record {
                    t: ans.at - t0,
                    arm,
                    status: (*status).max(500),
                    ms: 0.0,
                });
                let c = &mut counts[usize::from(arm == Arm::Candidate)];
                c.1 += 1;
                c.2 += 1;
            }
            let Some(&arm) = arm_of.get(&ans.upstream) else {
                continue;
            };
            records.push(Record {
                t: ans.at - t0,
                arm,
                status: ans.status,
                ms: ans.secs * 1000.0,
            });
            let c = &mut counts[usize::from(arm == Arm::Candidate)];
            c.1 += u64::from(ans.status >= 500);
            c.2 += 1;
            if ans.status < 400 && ans.secs.is_finite() {
                batches.push(arm, ans.secs * 1000.0);
            }
        }
        counts
    };
    let mut early: Option<(Duration, String)> = None;
    // Passing early needs every metric shown within tolerance, and enough CPU/memory samples
    // for the fixed judge (else the early pass would end inconclusive).
    let mut passed_early: Option<Duration> = None;
    let mut scored = pipeline_providers::canary::ScoreSoFar::default();
    let mut every = tokio::time::interval(every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    while !loader.is_finished() {
        every.tick().await;
        let t = started.elapsed().as_secs_f64();
        let usage = sampled.lock().expect("sampler lock").clone();
        for (arm, events, total) in read_new(&mut records, &mut batches) {
            let _ = seq.observe_counts(arm, "errors", events, total);
        }
        batches.flush(&mut seq, "latency");
        let (decision, evidence) = match seq.decision() {
            Decision::Continue => ("continue".to_string(), seq.evidence()),
            Decision::Pass(ev) => {
                if early.is_none() && passed_early.is_none() && enough_usage(&usage) {
                    passed_early = Some(started.elapsed());
                    halt.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                ("pass".to_string(), ev)
            }
            Decision::Fail(metric, ev) => {
                if early.is_none() {
                    early = Some((started.elapsed(), metric.clone()));
                    halt.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                (format!("fail: {metric}"), ev)
            }
        };
        let so_far = scored.at(records.len() as u64, looks.len(), || {
            judge(&cfg, &judge_data(&records, &usage))
        });
        looks.push(Look {
            t,
            score: so_far.score,
            outcome: so_far.outcome,
            decision,
            evidence,
        });
    }
    let client = loader.join();
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    let _ = sampler.join();
    let usage = std::mem::take(&mut *sampled.lock().expect("sampler lock"));
    let client = client.map_err(|_| anyhow!("the load generator failed"))?;
    let ran = started.elapsed().as_secs_f64();
    if let Some((after, metric)) = &early {
        progress(Progress::StoppedEarly {
            after: *after,
            regressed: Some(metric.clone()),
        });
    }
    if let Some(after) = passed_early {
        progress(Progress::StoppedEarly {
            after,
            regressed: None,
        });
    }
    // nginx writes its access log as requests finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    read_new(&mut records, &mut batches);
    let (base, cand) = (
        tally(&records, Arm::Baseline),
        tally(&records, Arm::Candidate),
    );
    refuse_garbage(a, spec, &base, &cand, &client)?;
    let data = judge_data(&records, &usage);
    let mut verdict = judge(&cfg, &data);
    if let Some((after, metric)) = &early {
        // The early stop is a verdict of its own: it holds whatever the shorter sample says.
        verdict.outcome = Outcome::Fail;
        verdict.reason = format!("stopped after {:.1}s of traffic: `{metric}` regressed beyond doubt (sequential test); {}", after.as_secs_f64(), verdict.reason);
    }
    if let Some(after) = passed_early {
        // Enough evidence both ways: every metric's always-valid bounds sit inside its tolerance.
        // A fixed-horizon failure on the same data would still win (and be reported as such).
        if verdict.outcome != Outcome::Fail {
            verdict.outcome = Outcome::Pass;
            verdict.reason = format!("passed after {:.1}s of traffic: the sequential test shows every metric within its tolerance; {}", after.as_secs_f64(), verdict.reason);
        }
    }
    let rep = Report {
        service: service.to_string(),
        baseline: a.baseline.clone(),
        candidate: a.candidate.clone(),
        request: RequestInfo {
            method: req.shown().0,
            path: req.shown().1,
            content_type: req.body.as_ref().map(|_| req.content_type.clone()),
            body_bytes: req.body.as_ref().map_or(0, String::len),
        },
        load: LoadInfo {
            rate: spec.rate,
            duration_s: spec.duration.as_secs_f64(),
            ran_s: ran,
            replicas: a.replicas.max(1),
            sent: client.sent,
            ok_2xx: client.ok,
            other: client.failed,
            answers: ArmPair {
                baseline: base.total,
                candidate: cand.total,
            },
        },
        early_stop: early
            .as_ref()
            .map(|(after, metric)| EarlyStop {
                after_s: after.as_secs_f64(),
                metric: metric.clone(),
                passed: false,
            })
            .or(passed_early.map(|after| EarlyStop {
                after_s: after.as_secs_f64(),
                metric: String::new(),
                passed: true,
            })),
        confidence: cfg.confidence,
        pass_threshold: cfg.pass_threshold,
        marginal_threshold: cfg.marginal_threshold,
        evidence: evidence(&cfg, &data, &verdict),
        sequential: looks.last().map(|l| l.evidence.clone()).unwrap_or_default(),
        series: series(&records, usage, looks, ran),
        verdict,
        progressive: None,
    };
    Ok(CanaryOutcome {
        report: rep,
        client,
        teardown_error: None,
    })
}

/// The report of a progressive canary of `apply` from its record: the same evidence and
/// series as `pipeline canary`'s (without CPU and memory), and the traffic share per step.
pub fn progressive_report(p: &ProgressiveRecord) -> Report {
    let cfg = p
        .judge
        .clone()
        .unwrap_or_else(|| CanarySpec::default().judge_config());
    let records: Vec<Record> = p
        .answers
        .iter()
        .map(|a| Record {
            t: a.t,
            arm: a.arm,
            status: a.status,
            ms: a.ms,
        })
        .collect();
    let mut data = judge_data(&records, &[]);
    let (base, cand) = (
        tally(&records, Arm::Baseline),
        tally(&records, Arm::Candidate),
    );
    data.insert(
        "latency".into(),
        pipeline_providers::canary::progressive_latency(
            &base.latency,
            &cand.latency,
            &p.latency_windows,
        ),
    );
    // The verdict the canary acted on; a record without one is judged again here.
    let verdict = p.verdict.clone().unwrap_or_else(|| judge(&cfg, &data));
    let looks: Vec<Look> = p
        .looks
        .iter()
        .map(|l| Look {
            t: l.t,
            score: l.score,
            outcome: l.outcome,
            decision: l.decision.clone(),
            evidence: l.evidence.clone(),
        })
        .collect();
    let client = p.load_stats.clone().unwrap_or_default();
    Report {
        service: p.block.clone(),
        baseline: "the running generation".into(),
        candidate: "the staged generation".into(),
        request: RequestInfo {
            method: p.request_method.clone(),
            path: p.request_path.clone(),
            content_type: p.request_content_type.clone(),
            body_bytes: p.request_body_bytes,
        },
        load: LoadInfo {
            rate: p.load,
            duration_s: p.ended_s,
            ran_s: p.ended_s,
            replicas: p.replicas,
            sent: client.sent,
            ok_2xx: client.ok,
            other: client.failed,
            answers: ArmPair {
                baseline: base.total,
                candidate: cand.total,
            },
        },
        early_stop: p.sequential_stop.as_ref().map(|s| EarlyStop {
            after_s: s.t,
            metric: s.metric.clone(),
            passed: false,
        }),
        confidence: cfg.confidence,
        pass_threshold: cfg.pass_threshold,
        marginal_threshold: cfg.marginal_threshold,
        evidence: evidence(&cfg, &data, &verdict),
        sequential: looks.last().map(|l| l.evidence.clone()).unwrap_or_default(),
        series: series(&records, Vec::new(), looks, p.ended_s),
        verdict,
        progressive: Some(ProgressiveInfo {
            result: p.result.clone(),
            steps: p.steps.iter().map(|s| (s.t, s.percent)).collect(),
            dropped_answers: p.dropped_answers,
        }),
    }
}

/// Renders the progressive canary's record `json` (`.pipeline/reports/NAME.json`) as
/// `NAME.html` beside it.
pub fn write_progressive_report(json: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(json)
        .with_context(|| format!("cannot read the canary's record {}", json.display()))?;
    let rec: ProgressiveRecord = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a canary record", json.display()))?;
    let html = json.with_extension("html");
    private::write(&html, report::render_html(&progressive_report(&rec)))
        .with_context(|| format!("cannot write the report {}", html.display()))?;
    Ok(html)
}

/// Latency and errors per window, and the latency ECDF, from the answers.
fn series(records: &[Record], usage: Vec<UsageSample>, looks: Vec<Look>, ran: f64) -> Series {
    use pipeline_analysis::stats::quantile_sorted;
    // 1 s windows, wider for long canaries: at most 300 windows.
    let window_s = (ran / 300.0).ceil().max(1.0);
    let n = ((ran / window_s).ceil() as usize).max(1);
    let mut per: Vec<[(u64, u64, Vec<f64>); 2]> = (0..n).map(|_| Default::default()).collect();
    for r in records {
        let i = ((r.t / window_s).floor().max(0.0) as usize).min(n - 1);
        let w = &mut per[i][usize::from(r.arm == Arm::Candidate)];
        w.1 += 1;
        if r.status >= 500 {
            w.0 += 1;
        } else if r.status < 400 {
            w.2.push(r.ms);
        }
    }
    let arm_window = |(errors, answers, mut lat): (u64, u64, Vec<f64>)| {
        lat.sort_by(f64::total_cmp);
        ArmWindow {
            answers,
            errors,
            p50_ms: (!lat.is_empty()).then(|| quantile_sorted(&lat, 0.5)),
            p99_ms: (!lat.is_empty()).then(|| quantile_sorted(&lat, 0.99)),
        }
    };
    let windows = per
        .into_iter()
        .enumerate()
        .map(|(i, [b, c])| Window {
            t: (i + 1) as f64 * window_s,
            baseline: arm_window(b),
            candidate: arm_window(c),
        })
        .collect();
    let ecdf = |arm: Arm| {
        let mut v = tally(records, arm).latency;
        v.sort_by(f64::total_cmp);
        ecdf_points(&v, 300)
    };
    Series {
        window_s,
        windows,
        usage,
        looks,
        latency_ecdf: ArmPair {
            baseline: ecdf(Arm::Baseline),
            candidate: ecdf(Arm::Candidate),
        },
    }
}

/// At most about `max` points (value, share at or below it) of a sorted sample's ECDF: every
/// distinct value when there are few, else evenly spaced order statistics.
fn ecdf_points(sorted: &[f64], max: usize) -> Vec<[f64; 2]> {
    let n = sorted.len();
    let mut out: Vec<[f64; 2]> = Vec::new();
    let idx: Vec<usize> = if n <= max {
        (0..n).collect()
    } else {
        (1..=max).map(|k| (k * n).div_ceil(max) - 1).collect()
    };
    for i in idx {
        // The share at a value counts every answer equal to it.
        let (x, y) = (sorted[i], (i + 1) as f64 / n as f64);
        match out.last_mut() {
            Some(last) if last[0] == x => last[1] = y,
            _ => out.push([x, y]),
        }
    }
    out
}

/// The evidence behind each metric's verdict: the test statistic, and a confidence interval
/// for the effect at the judge's confidence (two-sided).
fn evidence(
    cfg: &JudgeConfig,
    data: &BTreeMap<String, MetricData>,
    v: &Verdict,
) -> Vec<report::Evidence> {
    use pipeline_analysis::judge::{MetricStatus, Summary, TestUsed};
    use pipeline_analysis::stats::{mann_whitney, two_proportion_z, Alternative};
    v.per_metric
        .iter()
        .zip(&cfg.metrics)
        .map(|(mv, m)| {
            let alt = match m.direction {
                Direction::Increase => Alternative::Greater,
                Direction::Decrease => Alternative::Less,
                Direction::Either => Alternative::TwoSided,
            };
            let unit = match m.kind {
                pipeline_analysis::MetricKind::Proportion => "rate",
                _ => unit_of(&m.name),
            };
            let summary = |s: &Option<Summary>| match s {
                Some(Summary::Continuous(x)) if x.n > 0 => format!(
                    "p50 {} {unit}, p99 {} {unit}, mean {} {unit}",
                    report::num(x.median),
                    report::num(x.p99),
                    report::num(x.mean)
                ),
                Some(Summary::Proportion {
                    events,
                    total,
                    rate,
                }) => format!("{events} of {total} ({} %)", report::num(100.0 * rate)),
                _ => "–".into(),
            };
            let mut e = report::Evidence {
                name: m.name.clone(),
                unit: unit.to_string(),
                kind: m.kind,
                direction: m.direction,
                critical: m.critical,
                weight: m.weight,
                test: mv.test,
                n: ArmPair::default(),
                summary: ArmPair {
                    baseline: summary(&mv.baseline),
                    candidate: summary(&mv.candidate),
                },
                statistic: None,
                p_value: mv.p_value,
                alpha: mv.threshold,
                effect: mv.effect.map(|e| e.shift),
                relative: mv.effect.map(|e| e.relative),
                interval: None,
                tolerance: m.tolerance,
                abs_tolerance: m.abs_tolerance,
                status: mv.status,
                reason: mv.reason.clone(),
            };
            match data.get(&m.name) {
                Some(MetricData::Continuous {
                    baseline,
                    candidate,
                }) => {
                    let b: Vec<f64> = baseline.iter().copied().filter(|x| x.is_finite()).collect();
                    let c: Vec<f64> = candidate
                        .iter()
                        .copied()
                        .filter(|x| x.is_finite())
                        .collect();
                    e.n = ArmPair {
                        baseline: b.len() as u64,
                        candidate: c.len() as u64,
                    };
                    if mv.test == TestUsed::MannWhitney {
                        let mw = mann_whitney(&c, &b, alt);
                        e.statistic = Some(report::Statistic {
                            name: "U".into(),
                            value: mw.u1,
                            z: Some(mw.z),
                        });
                        e.interval = hodges_lehmann_interval(&b, &c, cfg.confidence).map(
                            |(lower, upper)| report::Interval {
                                lower,
                                upper,
                                level: cfg.confidence,
                                method: "Hodges–Lehmann / Moses".into(),
                            },
                        );
                    }
                }
                // (`pipeline canary` judges answer against answer; pairs are the progressive
                // canary's.)
                Some(MetricData::Paired {
                    baseline,
                    candidate,
                }) => {
                    e.n = ArmPair {
                        baseline: baseline.len() as u64,
                        candidate: candidate.len() as u64,
                    };
                    if mv.test == TestUsed::WilcoxonSignedRank {
                        let d = pipeline_analysis::judge::log_ratios(baseline, candidate);
                        let sr = pipeline_analysis::wilcoxon_signed_rank(&d, alt);
                        e.statistic = Some(report::Statistic {
                            name: "W+".into(),
                            value: sr.r_plus,
                            z: Some(sr.z),
                        });
                    }
                }
                Some(MetricData::Counts {
                    baseline,
                    candidate,
                }) => {
                    e.n = ArmPair {
                        baseline: baseline.total,
                        candidate: candidate.total,
                    };
                    if mv.status != MetricStatus::NotEnoughData {
                        if mv.test == TestUsed::TwoProportionZ {
                            let (z, _) = two_proportion_z(
                                candidate.events,
                                candidate.total,
                                baseline.events,
                                baseline.total,
                                alt,
                            );
                            e.statistic = Some(report::Statistic {
                                name: "z".into(),
                                value: z,
                                z: None,
                            });
                        }
                        e.interval = newcombe_interval(*baseline, *candidate, cfg.confidence).map(
                            |(lower, upper)| report::Interval {
                                lower,
                                upper,
                                level: cfg.confidence,
                                method: "Newcombe".into(),
                            },
                        );
                    }
                }
                None => {}
            }
            e
        })
        .collect()
}

/// The fixed judge: the stack's latency and error settings plus CPU and memory per arm, which
/// weigh little and are not critical. A canary too short for 10 resource samples (5 s) per arm
/// has no evidence about them: Inconclusive, never a pass by default.
fn judge_config(spec: &CanarySpec) -> JudgeConfig {
    let mut c = spec.judge_config();
    c.metrics.push(
        Metric::continuous("cpu")
            .direction(Direction::Increase)
            // one clock tick per sample is the finest CPU share a sample can show (2 % of a
            // core at 0.5 s): no smaller shift is evidence
            .tolerance(0.5)
            .abs_tolerance(100.0 / (ticks_per_sec() * look_every(spec.duration).as_secs_f64()))
            .weight(0.25)
            .min_samples(USAGE_SAMPLES),
    );
    c.metrics.push(
        Metric::continuous("memory")
            .direction(Direction::Increase)
            .tolerance(0.25)
            .weight(0.25)
            .min_samples(USAGE_SAMPLES),
    );
    c
}

/// Whether both arms have the CPU and memory samples the fixed judge needs.
fn enough_usage(usage: &[UsageSample]) -> bool {
    let n = |f: fn(&UsageSample) -> &ArmUsage| {
        usage
            .iter()
            .filter(|u| f(u).cpu_pct.is_some() && f(u).rss_mib.is_some())
            .count() as u64
    };
    n(|u| &u.baseline) >= USAGE_SAMPLES && n(|u| &u.candidate) >= USAGE_SAMPLES
}

/// CPU and memory samples per arm the fixed judge needs before they are evidence.
const USAGE_SAMPLES: u64 = 10;

/// How often the canary looks (reads the log, samples CPU and memory, runs the sequential test):
/// every 0.5 s, and more often for short canaries, so that one of 6 s still gets its
/// `USAGE_SAMPLES` twice over when a loaded machine makes every look slow.
fn look_every(duration: Duration) -> Duration {
    (duration / 24).clamp(Duration::from_millis(250), Duration::from_millis(500))
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
    a: &CanaryRequest,
    spec: &CanarySpec,
    base: &Tally,
    cand: &Tally,
    client: &LoadStats,
) -> Result<()> {
    let (m, p) = spec.request.shown();
    if base.total == 0 {
        bail!(
            "no request reached the baseline (revision `{}`) (client: {client}); no verdict\n  = help: the balancer answered nothing from the arms; see the errors above",
            a.baseline
        );
    }
    let bad = base.total - base.latency.len() as u64;
    if bad * 2 > base.total {
        let both = cand.total > 0 && (cand.total - cand.latency.len() as u64) * 2 > cand.total;
        bail!(
            "the baseline (revision `{}`) itself fails {bad} of {} requests to {m} {p} ({}){}; no verdict\n  = help: the endpoint must work on the baseline: check the path, method and body (--path, --method, --body-file, or the service's `canary.request`)",
            a.baseline,
            base.total,
            statuses(base),
            if both {
                format!(
                    ", and so does the candidate (revision `{}`: {})",
                    a.candidate,
                    statuses(cand)
                )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> CanaryRequest {
        CanaryRequest {
            work_dir: PathBuf::from("/nonexistent"),
            stack: PathBuf::from("s.hcl"),
            baseline: "a".into(),
            candidate: "b".into(),
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
            variables: IndexMap::new(),
        }
    }

    /// Stacks that cannot be planned: counts the calls.
    struct Unplannable(std::cell::Cell<u32>, std::cell::Cell<u32>);

    #[async_trait::async_trait(?Send)]
    impl Stacks for Unplannable {
        async fn plan(&self, _: &Path, _: &Path, _: PlanOptions) -> Result<(Plan, Config)> {
            self.0.set(self.0.get() + 1);
            bail!("no such stack")
        }
        async fn apply(&self, _: &Path, _: &Path, _: PlanOptions) -> Result<ApplyReport> {
            self.1.set(self.1.get() + 1);
            bail!("not reached")
        }
    }

    #[tokio::test]
    async fn a_stack_that_does_not_plan_is_an_error_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = args();
        req.work_dir = dir.path().to_path_buf();
        let host = Unplannable(Default::default(), Default::default());
        let mut seen = Vec::new();
        let e = match run(&host, &req, &mut |p| seen.push(p)).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a verdict without a plan"),
        };
        assert_eq!(e, "no such stack");
        assert_eq!(
            (host.0.get(), host.1.get()),
            (1, 0),
            "planned once, applied never"
        );
        assert!(seen.is_empty(), "{seen:?}");
        assert!(!dir.path().join("canary").exists(), "no canary directory");
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
    fn confidence_intervals_of_the_effects() {
        // the intervals live in pipeline-analysis now (reference-tested there); this test kept
        // its old names so it checks, unchanged, what the canary report shows
        use pipeline_analysis::interval::{
            hodges_lehmann_interval as hl_interval, newcombe_interval as newcombe,
        };
        // Newcombe (1998), example (a): 56/70 vs 48/80, hybrid score interval 0.0524 to 0.3339.
        let (lo, hi) = newcombe(Counts::new(48, 80), Counts::new(56, 70), 0.95).unwrap();
        assert!(
            (lo - 0.0524).abs() < 5e-5 && (hi - 0.3339).abs() < 5e-5,
            "{lo} {hi}"
        );
        // A shift of exactly 5: the Moses interval holds it, and narrows with more data.
        let b: Vec<f64> = (0..40).map(|i| (i * 7 % 40) as f64).collect();
        let c: Vec<f64> = b.iter().map(|x| x + 5.0).collect();
        let (lo, hi) = hl_interval(&b, &c, 0.98).unwrap();
        assert!(lo < 5.0 && 5.0 < hi && hi - lo < 25.0, "{lo} {hi}");
        let b4: Vec<f64> = (0..4000).map(|i| (i * 7 % 40) as f64).collect();
        let c4: Vec<f64> = b4.iter().map(|x| x + 5.0).collect();
        let (lo4, hi4) = hl_interval(&b4, &c4, 0.98).unwrap();
        assert!(
            lo4 <= 5.0 && 5.0 <= hi4 && hi4 - lo4 < (hi - lo) / 3.0,
            "{lo4} {hi4}"
        );
        // Three samples per arm cannot give a 98 % interval.
        assert_eq!(hl_interval(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 0.98), None);
    }

    #[test]
    fn no_resource_samples_is_inconclusive_never_a_pass() {
        // Latency and errors fine on both arms, but no CPU or memory sample at all.
        let records: Vec<Record> = (0..400)
            .map(|i| Record {
                t: i as f64 / 100.0,
                arm: if i % 2 == 0 {
                    Arm::Baseline
                } else {
                    Arm::Candidate
                },
                status: 200,
                ms: (i % 7) as f64,
            })
            .collect();
        let v = judge(
            &judge_config(&CanarySpec::default()),
            &judge_data(&records, &[]),
        );
        assert_eq!(v.outcome, Outcome::Inconclusive, "{v:#?}");
        let cpu = v.per_metric.iter().find(|m| m.name == "cpu").unwrap();
        assert_eq!(
            cpu.status,
            pipeline_analysis::MetricStatus::NotEnoughData,
            "{cpu:#?}"
        );
        assert!(v.score < 95.0, "{}", v.score);
    }

    #[test]
    fn ecdf_points_count_ties_and_stay_small() {
        assert_eq!(
            ecdf_points(&[1.0, 1.0, 2.0, 3.0], 300),
            vec![[1.0, 0.5], [2.0, 0.75], [3.0, 1.0]]
        );
        let v: Vec<f64> = (0..10_000).map(f64::from).collect();
        let e = ecdf_points(&v, 300);
        assert_eq!(e.len(), 300);
        assert_eq!(e.last().unwrap(), &[9999.0, 1.0]);
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

    #[test]
    fn a_progressive_record_reads_back_and_renders_without_usage_charts() {
        use pipeline_providers::canary::{AnswerRecord, LookRecord, StepMark};
        let spec = CanarySpec::default();
        let mut rec = ProgressiveRecord {
            block: "service.web".into(),
            judge: Some(spec.judge_config()),
            steps: vec![
                StepMark { t: 0.0, percent: 5 },
                StepMark {
                    t: 3.0,
                    percent: 25,
                },
                StepMark { t: 4.5, percent: 0 },
            ],
            result: "aborted at 25%: `errors` regressed".into(),
            ended_s: 4.5,
            ..Default::default()
        };
        let seq = SequentialJudge::new(spec.sequential_config());
        for i in 0..400 {
            let arm = if i % 4 == 0 {
                Arm::Candidate
            } else {
                Arm::Baseline
            };
            let status = if arm == Arm::Candidate && i > 200 {
                500
            } else {
                200
            };
            rec.answers.push(AnswerRecord {
                t: i as f64 / 90.0,
                arm,
                status,
                ms: 2.0 + (i % 7) as f64,
            });
        }
        // Before any data the sequential evidence is NaN (written as null).
        rec.looks.push(LookRecord {
            t: 0.5,
            score: 0.0,
            outcome: Outcome::Inconclusive,
            decision: "continue".into(),
            evidence: seq.evidence(),
        });
        let back: ProgressiveRecord =
            serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert!(back.looks[0].evidence[0].estimate.is_nan());
        let r = progressive_report(&back);
        assert_eq!(r.load.answers.candidate, 100);
        // No verdict recorded: judged again from the answers; the 5xx of the candidate fail it.
        assert_eq!(r.verdict.outcome, Outcome::Fail);
        let h = report::render_html(&r);
        assert!(h.contains("Progressive canary of <code>service.web</code>"));
        assert!(h.contains("data-chart=\"traffic-share\""));
        assert!(!h.contains("data-chart=\"cpu-time\""));
        assert!(h.contains("data-metric=\"4xx\""));
        assert!(h.contains("5 % → 25 % → 0 %"));
    }
}
