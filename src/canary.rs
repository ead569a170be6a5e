//! `pipeline canary BASE CANDIDATE`: build both revisions of a service, run them as equal arms
//! behind an nginx balancer at equal weight (a throwaway stack with its own state), send bounded
//! load through the balancer, read per-arm latency and errors from nginx's access log (by
//! upstream address), judge with the canary judge, report, and take everything away again.
//! Exit codes: 0 pass, 1 fail (or an error), 3 marginal or not enough evidence.

use crate::ops::{self, PlanInputs, Workspace};
use anyhow::{anyhow, bail, Context, Result};
use pipeline_analysis::judge::{
    judge, Direction, JudgeConfig, Metric, MetricData, Outcome, Verdict,
};
use pipeline_engine::plan::PlanOptions;
use pipeline_engine::value::{format_number, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct CanaryArgs {
    pub baseline: String,
    pub candidate: String,
    pub stack: PathBuf,
    pub service: Option<String>,
    pub replicas: u32,
    pub duration: Duration,
    pub rate: u32,
    pub method: String,
    pub path: String,
    pub body: Option<String>,
    pub json: bool,
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
) -> Result<(String, BTreeMap<String, Value>)> {
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
    Ok((name, out))
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
    let (name, cfg) = service_config(ws, &a.stack, a.service.as_deref()).await?;
    let dir = ws.dir.join("canary");
    if dir.join("state.json").exists() {
        bail!("a canary seems to be running already (state in {})\n  = help: if it is not, remove that directory", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    let cws = Workspace::new(Some(dir.clone()))?;
    let port = pipeline_supervise::free_port("127.0.0.1")
        .context("no free port for the canary balancer")?;
    let mut text = format!(
        "# The canary of service.{name}: {} (baseline) vs {} (candidate), written by pipeline.\n\n",
        a.baseline, a.candidate
    );
    text.push_str(&arm_block("baseline", &a.baseline, a.replicas, &cfg)?);
    text.push_str(&arm_block("candidate", &a.candidate, a.replicas, &cfg)?);
    text.push_str(&format!(
        "balancer \"canary\" {{\n  listen = {port}\n  routes = {{ \"/\" = {{ upstreams = [{{ service = service.baseline, weight = 1 }}, {{ service = service.candidate, weight = 1 }}] }} }}\n}}\n"
    ));
    let stack = dir.join("canary.hcl");
    std::fs::write(&stack, text)?;
    let result = run_arms(&cws, &stack, port, &a).await;
    // Whatever happened: take the arms and the balancer away.
    let teardown = teardown(&cws, &stack).await;
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

async fn run_arms(cws: &Workspace, stack: &Path, port: u16, a: &CanaryArgs) -> Result<ExitCode> {
    eprintln!(
        "canary: building and starting {} and {} ({} replica(s) each)...",
        a.baseline, a.candidate, a.replicas
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
    let arm_of: BTreeMap<String, &str> = st
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
                "baseline"
            } else if addr.starts_with("service.candidate") {
                "candidate"
            } else {
                return None;
            };
            Some((url, arm))
        })
        .collect();
    let log = cws.dir.join("run/balancer.canary/logs/access.log");
    let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "canary: {} {} at {} req/s for {:?} through the balancer...",
        a.method, a.path, a.rate, a.duration
    );
    let spec = LoadSpec {
        port,
        rate: a.rate,
        duration: a.duration,
        method: a.method.clone(),
        path: a.path.clone(),
        body: a.body.clone(),
    };
    let halt = Arc::new(AtomicBool::new(false));
    let loader = {
        let halt = halt.clone();
        std::thread::spawn(move || load(spec, halt))
    };
    // Watch as data arrives: a clear regression of the error rate stops the canary early. The
    // sequential test's false-alarm rate holds over every look (see engine/analysis).
    let started = Instant::now();
    let mut seq = pipeline_analysis::SequentialJudge::new(JudgeConfig::with_metrics(vec![
        Metric::proportion("errors")
            .direction(Direction::Increase)
            .critical(true),
    ]));
    let mut pos = offset;
    let mut early: Option<(Duration, String)> = None;
    while !loader.is_finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(bytes) = std::fs::read(&log) else {
            continue;
        };
        let Some(end) = bytes
            .get(pos as usize..)
            .and_then(|b| b.iter().rposition(|&c| c == b'\n'))
        else {
            continue;
        };
        let chunk =
            String::from_utf8_lossy(&bytes[pos as usize..pos as usize + end + 1]).into_owned();
        pos += end as u64 + 1;
        for (arm, events, total) in error_counts(&chunk, &arm_of) {
            let side = if arm == "baseline" {
                pipeline_analysis::Arm::Baseline
            } else {
                pipeline_analysis::Arm::Candidate
            };
            let _ = seq.observe_counts(side, "errors", events, total);
        }
        if let pipeline_analysis::Decision::Fail(metric, _) = seq.decision() {
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
    let mut text = String::new();
    std::fs::File::open(&log)?
        .take(u64::MAX)
        .read_to_string(&mut text)?;
    let text = text.get(offset as usize..).unwrap_or("");
    let mut lat: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut errs: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut not_ok: BTreeMap<&str, u64> = BTreeMap::new();
    for (arm, status, secs) in answers(text, &arm_of) {
        let e = errs.entry(arm).or_default();
        e.1 += 1;
        if status >= 500 {
            e.0 += 1;
        } else if status < 400 {
            lat.entry(arm).or_default().push(secs * 1000.0);
        }
        if !(200..400).contains(&status) {
            *not_ok.entry(arm).or_default() += 1;
        }
    }
    // Refuse to judge garbage: an endpoint the baseline does not serve is a wrong canary.
    let (b_bad, b_total) = (
        not_ok.get("baseline").copied().unwrap_or(0),
        errs.get("baseline").map_or(0, |e| e.1),
    );
    if b_total == 0 {
        bail!("no request reached the baseline (client: {client}); no verdict");
    }
    if b_bad * 2 > b_total {
        bail!("the baseline itself fails {b_bad} of {b_total} requests to {} {} (client: {client}); no verdict\n  = help: check --path, --method and --body: the endpoint must work on the baseline", a.method, a.path);
    }
    let mut data = BTreeMap::new();
    data.insert(
        "latency".to_string(),
        MetricData::Continuous {
            baseline: lat.remove("baseline").unwrap_or_default(),
            candidate: lat.remove("candidate").unwrap_or_default(),
        },
    );
    let c = |arm: &str| {
        errs.get(arm)
            .map_or(pipeline_analysis::judge::Counts::new(0, 0), |e| {
                pipeline_analysis::judge::Counts::new(e.0, e.1)
            })
    };
    data.insert(
        "errors".to_string(),
        MetricData::Counts {
            baseline: c("baseline"),
            candidate: c("candidate"),
        },
    );
    let cfg = JudgeConfig::with_metrics(vec![
        Metric::continuous("latency")
            .direction(Direction::Increase)
            .tolerance(0.25),
        Metric::proportion("errors")
            .direction(Direction::Increase)
            .critical(true),
    ]);
    let mut verdict = judge(&cfg, &data);
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

/// Every answer in a chunk of the access log (`$msec $status $request_time $upstream_addr ...`)
/// that one of the arms gave: (arm, status, seconds).
fn answers<'a>(text: &str, arm_of: &BTreeMap<String, &'a str>) -> Vec<(&'a str, u16, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        // On a retry nginx lists every upstream tried; the last one answered.
        let upstreams = f[3..].join(" ");
        let last = upstreams
            .rsplit(", ")
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if let Some(arm) = arm_of.get(last).copied() {
            out.push((
                arm,
                f[1].parse().unwrap_or(0),
                f[2].parse().unwrap_or(f64::NAN),
            ));
        }
    }
    out
}

/// (arm, 5xx answers, answers) in a chunk of the access log.
fn error_counts<'a>(text: &str, arm_of: &BTreeMap<String, &'a str>) -> Vec<(&'a str, u64, u64)> {
    let mut out: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (arm, status, _) in answers(text, arm_of) {
        let e = out.entry(arm).or_default();
        e.1 += 1;
        e.0 += u64::from(status >= 500);
    }
    out.into_iter().map(|(a, (e, t))| (a, e, t)).collect()
}

fn report_text(a: &CanaryArgs, v: &Verdict, client: &ClientStats) -> String {
    use pipeline_analysis::judge::Summary;
    let show = |s: &Option<Summary>| match s {
        Some(Summary::Continuous(x)) => {
            format!("n={} p50={:.2}ms p99={:.2}ms", x.n, x.median, x.p99)
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
            show(&m.baseline),
            show(&m.candidate),
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
            let (stats, body, method, path) = (
                stats.clone(),
                body.clone(),
                a.method.clone(),
                a.path.clone(),
            );
            let halt = halt_flag.clone();
            std::thread::spawn(move || {
                let mut next = Instant::now();
                while Instant::now() < stop && !halt.load(std::sync::atomic::Ordering::SeqCst) {
                    let ok = one(port, &method, &path, &body);
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

fn one(port: u16, method: &str, path: &str, body: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!("{method} {path} HTTP/1.1\r\nHost: canary\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
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
