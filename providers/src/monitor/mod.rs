//! The `monitor` provider: a heartbeat and metrics collector with a live dashboard.
//!
//! `monitor "dash" { listen = 9900 }` runs one supervised daemon (`pipeline __monitor DIR`,
//! DIR = `.pipeline/run/monitor.dash/`) that re-reads the recorded state every second, asks each
//! recorded instance's provider what runs for it (`Provider::describe`: application replicas,
//! proxies, stores, their endpoints and access logs) and probes them. A balancer's access log is
//! a file here or a command streaming it from another machine (`ssh HOST tail -F`), followed
//! while the balancer is watched; on SIGTERM the daemon stops those commands before it exits.
//! CPU and memory of local replicas come from /proc; of instances on other hosts from one
//! command per host per second over ssh (`remote_usage`), with the hosts' own CPU and memory.
//! It serves:
//!
//! | path          | what                                                              |
//! |---------------|-------------------------------------------------------------------|
//! | `/`           | the dashboard (self-contained HTML; polls `/api/status`)          |
//! | `/api/status` | JSON: every target with its state, latency, rates, CPU, memory    |
//! | `/metrics`    | Prometheus text format                                            |
//! | `/healthz`    | `ok` (the supervisor's health check)                              |
//!
//! `alerts = { NAME = { service, metric, above, window, for, scope, min_requests } }` are rules on
//! what it collects (error ratio, latency quantiles, CPU, memory; per instance or per service),
//! judged at every heartbeat ([`alerts`]): shown in all three, and the firing ones written to
//! `DIR/alerts.json` ([`crate::alert_file`]), where a progressive canary on this machine finds
//! them and aborts when one names a candidate.

pub mod alerts;
mod collect;
mod describe;
mod remote_usage;
mod server;

use crate::parse_duration;
use async_trait::async_trait;
use pipeline_engine::provider::{
    ApplyRequest, AttrSchema, Invalid, JsonMap, KindSchema, PlanRequest, Planned, Provider,
    ProviderCtx, ProviderError, Type,
};
use pipeline_engine::value::{Value, ValueMap};
use pipeline_supervise::{HealthCheck, ReplicaSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pipeline_host::names::run_dir as replica_dir;

pub struct Monitor;

/// The daemon's configuration, written by apply to `DIR/config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DaemonConfig {
    /// The monitor's own address, e.g. `monitor.dash`.
    pub name: String,
    /// The `.pipeline/` directory: the state to read and the `run/` directories of replicas.
    pub state_dir: PathBuf,
    /// `watch` as written in the stack (null: every service).
    #[serde(default)]
    pub watch: serde_json::Value,
    pub interval_ms: u64,
    pub address: String,
    pub listen: u16,
    /// Required from every client but `/healthz` (bearer or basic auth) when set. Sensitive:
    /// the file is 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// More `Host` names the dashboard answers to (besides its own addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The alert rules (`alerts`), checked at plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<alerts::AlertRule>,
}

pub const CONFIG_FILE: &str = "config.json";

/// Entry point of `pipeline __monitor DIR` (a supervised daemon); returns the exit code.
/// `registry`: the providers of this binary, which describe what the state records (the
/// monitor knows none of them itself).
pub fn run_daemon(dir: &Path, registry: pipeline_engine::provider::Registry) -> i32 {
    let path = dir.join(CONFIG_FILE);
    let config: DaemonConfig = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pipeline __monitor: cannot read {}: {e}", path.display());
            return 2;
        }
    };
    let ctx = ProviderCtx {
        work_dir: config.state_dir.clone(),
        stack_dir: config
            .state_dir
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf(),
        exe: std::env::current_exe().unwrap_or_default(),
    };
    let describer = collect::describer(registry, ctx);
    match server::run(config, dir, describer) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pipeline __monitor: {e}");
            1
        }
    }
}

fn schema() -> KindSchema {
    KindSchema {
        kind: "monitor",
        attrs: vec![
            AttrSchema::required("listen", Type::Number),
            AttrSchema::optional("address", Type::String).default(Value::str("127.0.0.1")),
            AttrSchema::optional("watch", Type::Any),
            AttrSchema::optional("interval", Type::String).default(Value::str("100ms")),
            // Required when `address` is not loopback: clients send `Authorization: Bearer
            // TOKEN` (or basic auth with the token as password).
            AttrSchema::optional("token", Type::String).sensitive(),
            // Names (e.g. a DNS name pointing here) the dashboard also answers to; any other
            // `Host` is refused (DNS rebinding).
            AttrSchema::optional("hosts", Type::List(Box::new(Type::String))),
            // Alert rules by name: { service, metric, above, window, for, scope, min_requests }.
            AttrSchema::optional("alerts", Type::Any),
            AttrSchema::computed("url", Type::String).derived_from(&["listen", "address"]),
            AttrSchema::computed("metrics_url", Type::String).derived_from(&["listen", "address"]),
        ],
        instances_attr: None,
    }
}

fn listen_of(c: &ValueMap) -> Option<f64> {
    c.get("listen").and_then(Value::as_f64)
}

fn address_of(c: &ValueMap) -> String {
    c.get("address")
        .and_then(Value::as_str)
        .unwrap_or("127.0.0.1")
        .to_string()
}

fn token_of(c: &ValueMap) -> Option<String> {
    c.get("token")
        .and_then(|v| v.unmarked().0.as_str().map(str::to_string))
}

fn hosts_of(c: &ValueMap) -> Vec<String> {
    match c.get("hosts").map(|v| v.unmarked().0) {
        Some(Value::List(l)) => l
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    }
}

/// Only this machine can reach `address` (127.0.0.0/8, ::1, localhost).
fn is_loopback(address: &str) -> bool {
    address == "localhost"
        || address
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// Shortest token accepted.
const MIN_TOKEN: usize = 16;

fn interval_of(c: &ValueMap) -> Duration {
    c.get("interval")
        .and_then(Value::as_str)
        .and_then(parse_duration)
        .unwrap_or(Duration::from_millis(100))
}

/// The host part of the URLs: a wildcard bind is reached on loopback.
fn url_host(address: &str) -> String {
    match address {
        "0.0.0.0" | "" => "127.0.0.1".into(),
        "::" => "[::1]".into(),
        a if a.contains(':') => format!("[{a}]"),
        a => a.into(),
    }
}

/// The rules of `alerts` (none when unset or not known yet).
fn alerts_of(c: &ValueMap) -> Result<Vec<alerts::AlertRule>, Vec<alerts::RuleError>> {
    match c.get("alerts") {
        Some(v) if v.is_known() => alerts::parse(&v.unmarked().0.to_json(), interval_of(c)),
        _ => Ok(vec![]),
    }
}

fn validate(c: &ValueMap) -> Vec<Invalid> {
    let mut out = vec![];
    if let Err(errors) = alerts_of(c) {
        out.extend(
            errors.into_iter().map(|e| {
                Invalid::new(Some("alerts"), format!("{}: {}", e.path, e.message), e.help)
            }),
        );
    }
    if let Some(n) = listen_of(c) {
        if n.fract() != 0.0 || !(1.0..=65535.0).contains(&n) {
            out.push(Invalid::new(
                Some("listen"),
                format!("{n} is not a TCP port"),
                "listen is the dashboard's port, a whole number from 1 to 65535, e.g. listen = 9900",
            ));
        }
    }
    let address_known = c.get("address").is_none_or(Value::is_known);
    // A sensitive attribute arrives marked, even when it is null.
    let token = c
        .get("token")
        .filter(|t| !matches!(t.unmarked().0, Value::Null));
    if address_known && !is_loopback(&address_of(c)) && token.is_none() {
        out.push(Invalid::new(
            Some("address"),
            format!(
                "the dashboard would listen on {} with no token: anyone who reaches it could read it",
                address_of(c)
            ),
            format!("add token = var.dashboard_token (a sensitive variable of at least {MIN_TOKEN} characters); clients then send `Authorization: Bearer TOKEN` or basic auth with the token as password. Or keep address = \"127.0.0.1\""),
        ));
    }
    if let Some(t) = token.filter(|t| t.is_known()) {
        // Never show the value: it is a secret.
        let bad = match t.unmarked().0.as_str() {
            None => Some("the token must be a string".to_string()),
            Some(s) if s.chars().count() < MIN_TOKEN => Some(format!(
                "the token has {} characters; at least {MIN_TOKEN} are needed",
                s.chars().count()
            )),
            Some(s) if !s.bytes().all(|b| b.is_ascii_graphic()) => Some(
                "the token may hold only visible ASCII characters (no spaces or control characters)"
                    .to_string(),
            ),
            Some(_) => None,
        };
        if let Some(m) = bad {
            out.push(Invalid::new(
                Some("token"),
                m,
                "generate one, e.g. `openssl rand -hex 24`, and pass it as a sensitive variable",
            ));
        }
    }
    if let Some(i) = c.get("interval").and_then(Value::as_str) {
        match parse_duration(i) {
            None => out.push(Invalid::new(
                Some("interval"),
                format!("{i:?} is not a duration"),
                "durations look like \"100ms\", \"1s\" or \"2m\"",
            )),
            Some(d) if d < Duration::from_millis(10) => out.push(Invalid::new(
                Some("interval"),
                format!("an interval of {i:?} is too short"),
                "use at least \"10ms\"; \"100ms\" is the default",
            )),
            Some(_) => {}
        }
    }
    out
}

/// Err when nothing else may listen on `address:port`.
fn check_port_free(address: &str, port: u16) -> Result<(), ProviderError> {
    match std::net::TcpListener::bind((address, port)) {
        Ok(_) => Ok(()),
        Err(e) => Err(ProviderError::new(format!(
            "the dashboard port {port} on {address} is not available: {e}"
        ))
        .help(format!(
            "another process listens on {address}:{port} (see `ss -ltnp 'sport = :{port}'`); pick a free port for `listen`"
        ))),
    }
}

/// Our own daemon runs for `addr` (so its port being taken is fine).
fn running(ctx: &ProviderCtx, addr: &str) -> bool {
    pipeline_supervise::status(&replica_dir(&ctx.work_dir, addr))
        .is_some_and(|s| s.supervisor_alive)
}

fn plan(ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
    let mut o = req.config.clone();
    let listen = listen_of(req.config);
    let address_known = req.config.get("address").is_none_or(Value::is_known);
    let (url, metrics) = match (listen, address_known) {
        (Some(port), true) => {
            let port = port as u16;
            let address = address_of(req.config);
            let ours = req.prior.is_some_and(|p| {
                p.get("listen").and_then(|v| v.as_f64()) == listen
                    && p.get("address").and_then(|v| v.as_str()) == Some(address.as_str())
            }) && running(ctx, req.addr);
            if !ours {
                check_port_free(&address, port)?;
            }
            let base = format!("http://{}:{port}/", url_host(&address));
            (
                Value::String(base.clone()),
                Value::String(format!("{base}metrics")),
            )
        }
        _ => (Value::Unknown, Value::Unknown),
    };
    o.insert("url".into(), url);
    o.insert("metrics_url".into(), metrics);
    Ok(Planned {
        object: o,
        requires_replace: vec![],
    })
}

fn abs(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}

fn start(
    ctx: &ProviderCtx,
    addr: &str,
    c: &ValueMap,
    step: &pipeline_engine::Step,
) -> Result<JsonMap, ProviderError> {
    let dir = replica_dir(&ctx.work_dir, addr);
    if dir.exists() {
        pipeline_supervise::stop(&dir, Duration::from_secs(10))
            .map_err(|e| ProviderError::new(format!("cannot stop the old monitor: {e}")))?;
    }
    let listen = listen_of(c).ok_or_else(|| ProviderError::new("`listen` is required"))? as u16;
    let address = address_of(c);
    check_port_free(&address, listen)?;
    pipeline_supervise::private::create_dir_all(&dir)
        .map_err(|e| ProviderError::new(format!("cannot create {}: {e}", dir.display())))?;
    let dir = abs(&dir);
    let config = DaemonConfig {
        name: addr.to_string(),
        state_dir: abs(&ctx.work_dir),
        watch: c
            .get("watch")
            .map(|v| v.unmarked().0.to_json())
            .unwrap_or(serde_json::Value::Null),
        interval_ms: interval_of(c).as_millis().max(10) as u64,
        address: address.clone(),
        listen,
        token: token_of(c),
        hosts: hosts_of(c),
        alerts: alerts_of(c)
            .map_err(|e| ProviderError::new(format!("{}: {}", e[0].path, e[0].message)))?,
    };
    let json = serde_json::to_vec_pretty(&config).expect("config serializes");
    pipeline_supervise::private::write(&dir.join(CONFIG_FILE), json).map_err(|e| {
        ProviderError::new(format!("cannot write {}/{CONFIG_FILE}: {e}", dir.display()))
    })?;
    let exe = abs(&ctx.exe);
    let mut health = HealthCheck::http("/healthz");
    health.interval_ms = 1000;
    let spec = ReplicaSpec {
        name: addr.to_string(),
        command: format!(
            "exec {} __monitor {}",
            crate::quote::shell(&exe.to_string_lossy()),
            crate::quote::shell(&dir.to_string_lossy())
        ),
        cwd: dir.clone(),
        env: Default::default(),
        port: listen,
        address: address.clone(),
        health,
        restart: true,
    };
    let cleanup = |e: String| {
        let _ = pipeline_supervise::stop(&dir, Duration::from_secs(5));
        e
    };
    pipeline_supervise::start(&exe, &dir, &spec, Duration::from_secs(10))
        .map_err(|e| ProviderError::new(cleanup(e.to_string())))?;
    crate::wait_healthy(step, &dir, &spec, Duration::from_secs(15)).map_err(|e| {
        e.map_message(cleanup)
            .help(format!("see the log with `pipeline logs {addr}`"))
    })?;
    let mut out: JsonMap = c.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
    let base = format!("http://{}:{listen}/", url_host(&address));
    out.insert("url".into(), base.clone().into());
    out.insert("metrics_url".into(), format!("{base}metrics").into());
    Ok(out)
}

fn stop(ctx: &ProviderCtx, addr: &str) -> Result<(), ProviderError> {
    let dir = replica_dir(&ctx.work_dir, addr);
    if dir.exists() {
        pipeline_supervise::stop(&dir, Duration::from_secs(10))
            .map_err(|e| ProviderError::new(format!("cannot stop {addr}: {e}")))?;
        std::fs::remove_dir_all(&dir)
            .map_err(|e| ProviderError::new(format!("cannot remove {}: {e}", dir.display())))?;
    }
    Ok(())
}

#[async_trait]
impl Provider for Monitor {
    fn name(&self) -> &'static str {
        "monitor"
    }
    async fn sweep(
        &self,
        ctx: &ProviderCtx,
        owned: &[(&str, &pipeline_engine::state::ResourceState)],
    ) -> Result<Vec<String>, ProviderError> {
        crate::sweep_run_dirs(ctx, owned, |d| d.join(CONFIG_FILE).exists()).await
    }

    fn kinds(&self) -> Vec<KindSchema> {
        vec![schema()]
    }
    fn validate(&self, kind: &str, config: &ValueMap) -> Vec<Invalid> {
        match kind {
            "monitor" => validate(config),
            _ => vec![],
        }
    }
    fn plan(&self, ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
        match req.kind {
            "monitor" => plan(ctx, req),
            k => Err(ProviderError::new(format!("monitor does not serve {k}"))),
        }
    }
    async fn read(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        prior: &JsonMap,
    ) -> Result<Option<JsonMap>, ProviderError> {
        match kind {
            "monitor" => Ok(running(ctx, addr).then(|| prior.clone())),
            k => Err(ProviderError::new(format!("monitor does not serve {k}"))),
        }
    }
    async fn apply(
        &self,
        ctx: &ProviderCtx,
        req: &ApplyRequest<'_>,
        step: &pipeline_engine::Step,
    ) -> Result<JsonMap, ProviderError> {
        if req.kind != "monitor" {
            return Err(ProviderError::new(format!(
                "monitor does not serve {}",
                req.kind
            )));
        }
        let (ctx, addr, config, step) = (
            ctx.clone(),
            req.addr.to_string(),
            req.config.clone(),
            step.clone(),
        );
        crate::blocking(move || start(&ctx, &addr, &config, &step)).await
    }
    async fn delete(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        _prior: &JsonMap,
        _step: &pipeline_engine::Step,
    ) -> Result<(), ProviderError> {
        if kind != "monitor" {
            return Err(ProviderError::new(format!("monitor does not serve {kind}")));
        }
        let (ctx, addr) = (ctx.clone(), addr.to_string());
        crate::blocking(move || stop(&ctx, &addr)).await
    }
    async fn describe(
        &self,
        ctx: &ProviderCtx,
        _kind: &str,
        addr: &str,
        record: &JsonMap,
    ) -> Result<pipeline_engine::provider::Description, ProviderError> {
        let (dir, r) = (replica_dir(&ctx.work_dir, addr), record.clone());
        crate::blocking(move || Ok(describe::monitor(&dir, &r))).await
    }
}
