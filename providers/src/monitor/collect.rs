//! The collector: discovers targets from the recorded state, probes them every interval, samples
//! CPU and memory of replica processes, and follows balancer access logs (a file here, or a
//! command streaming one from another machine) for request and error rates. Its output is a
//! [`Status`], published after every tick.

use super::remote_usage::{self, RemoteUsage};
use super::DaemonConfig;
use pipeline_engine::provider::{
    Description, Endpoint as DescribedEndpoint, MetricSource, ProcessInfo, ProviderCtx, Registry,
    Serves,
};
use pipeline_host::procfs::{all_procs, family, rss_bytes};
use pipeline_host::tail::{Stream, Tail};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Request and error rates are over this sliding window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// How long the providers' descriptions may take, all together, at one discovery.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Probe timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the state is re-read and processes are sampled.
const SLOW_PERIOD: Duration = Duration::from_secs(1);
/// Every instance is described again at least this often, also when the state did not change
/// (a canary's candidates come and go without a state change).
const REDESCRIBE: Duration = Duration::from_secs(5);
/// Latency history: one bucket per this many ms, for this long.
pub const BUCKET_MS: u64 = 500;
const HISTORY: Duration = Duration::from_secs(60);
/// Healthy instances per service at every heartbeat, for this long.
const HEARTBEAT_KEEP: Duration = Duration::from_secs(180);
/// At most this much of an existing access log file is read when the monitor starts (a log
/// streamed from another machine has no backlog: see [`Follower::Stream`]).
const LOG_BACKLOG: u64 = 1 << 20;

/// Milliseconds with microsecond precision (keeps the JSON short).
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ------------------------------------------------------------------------------------------------
// What the dashboard, /api/status and /metrics show.

#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub monitor: String,
    pub generated_ms: u64,
    pub interval_ms: u64,
    pub window_s: u64,
    pub bucket_ms: u64,
    pub state_serial: u64,
    /// Why the state could not be read (the last good targets are kept meanwhile).
    pub state_error: Option<String>,
    pub watch: Option<Vec<String>>,
    pub services: Vec<ServiceView>,
    pub balancers: Vec<EndpointView>,
    pub flags: Vec<EndpointView>,
    /// The alert rules and what they judged (filled by [`super::alerts::Alerts::evaluate`]).
    pub alerts: super::alerts::AlertsView,
    /// Endpoints of recorded replicas that `watch` leaves out (for the alert rules only).
    #[serde(skip)]
    pub unwatched: Vec<String>,
    /// Other machines the instances run on (`MetricSource::RemoteUsage`), by name.
    pub hosts: Vec<HostView>,
}

/// CPU and memory of one machine instances run on; all None while it is unknown (not sampled
/// yet, or it did not answer: `error` says why).
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostView {
    pub host: String,
    /// CPU seconds per second used on the whole host (1.0 = one core).
    pub cpu_ratio: Option<f64>,
    pub cpus: Option<u32>,
    /// In use: MemTotal − MemAvailable.
    pub memory_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ServiceView {
    /// `web` (module-qualified when in a module: `module.m.web`).
    pub name: String,
    /// `service.web`.
    pub block: String,
    pub up: usize,
    pub total: usize,
    /// At every heartbeat of the last few minutes, oldest first: [unix ms, healthy, instances].
    pub heartbeat: Vec<(u64, u32, u32)>,
    /// The fewest healthy instances over `heartbeat`.
    pub fewest_up: Option<u32>,
    pub replicas: Vec<ReplicaView>,
    /// Sums over the replicas whose figure is known (None: none is).
    pub cpu_ratio: Option<f64>,
    pub memory_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplicaView {
    /// Instance address, `service.web[0]`.
    pub address: String,
    pub service: String,
    pub url: Option<String>,
    /// `address:port`, as a balancer's `$upstream_addr` names it.
    pub endpoint: Option<String>,
    /// `UP`, `DOWN` or `PENDING` (not probed yet).
    pub state: String,
    pub up: bool,
    /// Of the last probe (also when it failed).
    pub latency_ms: Option<f64>,
    pub last_error: Option<String>,
    pub requests_per_second: f64,
    pub error_ratio: f64,
    pub requests_in_window: usize,
    /// CPU seconds per second (1.0 = one core), summed over the replica's processes.
    pub cpu_ratio: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub pids: Vec<u32>,
    pub restarts: u32,
    pub uptime_s: Option<u64>,
    /// The supervisor's state (`running`, `backoff`, ...); None when there is no supervisor.
    pub supervisor: Option<String>,
    /// The recorded status of the instance: `ready`, `pending` or `tainted`.
    pub record: String,
    /// Latency (ms) per bucket of `bucket_ms`, oldest first; null where the replica was down.
    pub history: Vec<Option<f64>>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct EndpointView {
    pub address: String,
    pub name: String,
    /// What was probed: a URL or `host:port`.
    pub target: String,
    pub state: String,
    pub up: bool,
    pub latency_ms: Option<f64>,
    pub last_error: Option<String>,
    /// Balancers with an `access_log`: over the whole balancer.
    pub requests_per_second: Option<f64>,
    pub error_ratio: Option<f64>,
}

// ------------------------------------------------------------------------------------------------
// Targets, from what providers describe of the recorded instances.

/// What the collector asks about one recorded instance (address, record): its provider's
/// `describe`. The binary builds it from the engine's `Registry` ([`describer`]); the monitor
/// itself knows no other provider.
pub type Describer =
    Arc<dyn Fn(String, pipeline_state::ResourceState) -> DescribeFuture + Send + Sync + 'static>;
pub type DescribeFuture = Pin<Box<dyn Future<Output = Result<Description, String>> + Send>>;

/// The describer over `registry`: each instance described by the provider that recorded it.
pub fn describer(registry: Registry, ctx: ProviderCtx) -> Describer {
    let registry = Arc::new(registry);
    Arc::new(move |addr, rs| {
        let (registry, ctx) = (registry.clone(), ctx.clone());
        Box::pin(async move {
            let p = registry
                .provider_of(&rs)
                .cloned()
                .ok_or_else(|| format!("no provider `{}` in this binary", rs.provider))?;
            p.describe(&ctx, &rs.kind, &addr, &rs.attrs)
                .await
                .map_err(|e| e.message)
        })
    })
}

#[derive(Clone, Debug, PartialEq)]
enum Probe {
    /// GET path; `expect` None: any HTTP answer below 500 is up.
    Http {
        host: String,
        port: u16,
        path: String,
        expect: Option<u16>,
    },
    Tcp {
        host: String,
        port: u16,
    },
    /// A RESP `PING` (after `AUTH` when a password is known).
    Redis {
        host: String,
        port: u16,
        password: Option<String>,
    },
    /// Not probeable (no url, no port).
    None(String),
}

impl Probe {
    fn describe(&self) -> String {
        match self {
            Probe::Http {
                host, port, path, ..
            } => format!("http://{}{path}", hostport(host, *port)),
            Probe::Tcp { host, port } | Probe::Redis { host, port, .. } => hostport(host, *port),
            Probe::None(why) => why.clone(),
        }
    }

    /// The probe of a described endpoint: `http(s)://` a GET of its path (with its
    /// `expect_status`), `tcp://` a connect, `redis://` a PING (after AUTH with its secret).
    fn of(e: Option<&DescribedEndpoint>) -> Probe {
        let Some(e) = e else {
            return Probe::None("no url or port recorded yet".into());
        };
        let Some((scheme, rest)) = e.url.split_once("://") else {
            return Probe::None(format!("cannot probe {:?}: not a URL", e.url));
        };
        let (hp, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        // `redis://:PASSWORD@HOST:PORT`: the password is the endpoint's secret anyway.
        let hp = hp.rsplit_once('@').map_or(hp, |(_, h)| h);
        let Some((host, port)) = split_hostport(hp) else {
            return Probe::None(format!("no port in {scheme}://{hp}"));
        };
        match scheme {
            "http" | "https" => Probe::Http {
                host,
                port,
                path: path.to_string(),
                expect: e.expect_status,
            },
            "tcp" => Probe::Tcp { host, port },
            "redis" => Probe::Redis {
                host,
                port,
                password: e.secret.clone().filter(|p| !p.is_empty()),
            },
            other => Probe::None(format!("cannot probe {other}:// endpoints")),
        }
    }
}

fn hostport(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `host:port` or `[v6]:port` → (host, port).
fn split_hostport(hp: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(r) = hp.strip_prefix('[') {
        r.split_once("]:")?
    } else {
        hp.rsplit_once(':')?
    };
    Some((host.to_string(), port.parse().ok()?))
}

#[derive(Clone, Debug)]
struct Replica {
    addr: String,
    block: String,
    name: String,
    url: Option<String>,
    endpoint: Option<String>,
    probe: Probe,
    record: String,
    /// What its provider described: the figures come from these.
    processes: Vec<ProcessInfo>,
}

#[derive(Clone, Debug)]
struct Endpoint {
    addr: String,
    name: String,
    probe: Probe,
    /// What the dashboard names as the target (a balancer's URL).
    shown: String,
    access_log: Option<LogKey>,
}

#[derive(Default)]
struct Targets {
    replicas: Vec<Replica>,
    balancers: Vec<Endpoint>,
    flags: Vec<Endpoint>,
    /// Endpoints of the replicas `watch` leaves out (the alert rules must not take them for
    /// strangers of a watched service).
    unwatched: Vec<String>,
}

/// `service.web[2]` → `service.web`; `service.web["a"]` → `service.web`.
fn block_of(addr: &str) -> &str {
    if addr.ends_with(']') {
        if let Some(i) = addr.rfind('[') {
            return &addr[..i];
        }
    }
    addr
}

/// `service.web` → `web`; `module.m.service.web` → `module.m.web` (`kind` the record's).
fn name_of(block: &str, kind: &str) -> String {
    if let Some(rest) = block.strip_prefix(&format!("{kind}.")) {
        return rest.to_string();
    }
    block.replacen(&format!(".{kind}."), ".", 1)
}

/// `http://host:port/...` → (host, port).
fn parse_url(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    split_hostport(rest.split('/').next()?)
}

type Attrs = serde_json::Map<String, serde_json::Value>;

fn attr_str<'a>(a: &'a Attrs, k: &str) -> Option<&'a str> {
    a.get(k).and_then(|v| v.as_str())
}

fn record_name(s: pipeline_state::Status) -> &'static str {
    match s {
        pipeline_state::Status::Ready => "ready",
        pipeline_state::Status::Pending => "pending",
        pipeline_state::Status::Tainted => "tainted",
    }
}

/// What `watch` says: names (`web`, `service.web`, `service.web[0]`) and objects (instances,
/// matched to the replicas by `url` or `address:port`).
#[derive(Default)]
struct Watch {
    all: bool,
    names: BTreeSet<String>,
    objects: Vec<Attrs>,
    /// Blocks resolved from objects, kept across re-reads (a replaced replica has a new url).
    blocks: BTreeSet<String>,
}

impl Watch {
    fn new(v: &serde_json::Value) -> Watch {
        let mut w = Watch {
            all: v.is_null(),
            ..Default::default()
        };
        w.add(v);
        w
    }
    fn add(&mut self, v: &serde_json::Value) {
        match v {
            serde_json::Value::String(s) => {
                self.names.insert(s.clone());
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| self.add(v)),
            serde_json::Value::Object(o) => {
                if o.contains_key("url") || o.contains_key("port") {
                    self.objects.push(o.clone());
                } else {
                    // A map of instances (for_each): its values.
                    o.values().for_each(|v| self.add(v));
                }
            }
            _ => {}
        }
    }
    fn describe(&self) -> Option<Vec<String>> {
        if self.all {
            return None;
        }
        let mut v: BTreeSet<String> = self.names.clone();
        v.extend(self.blocks.iter().cloned());
        Some(v.into_iter().collect())
    }
    fn matches(&self, r: &Replica) -> bool {
        self.all
            || self.blocks.contains(&r.block)
            || [&r.name, &r.block, &r.addr]
                .iter()
                .any(|n| self.names.contains(n.as_str()))
    }
    /// The blocks of the replicas that the watched objects are (same url or `address:port`).
    fn resolve(&mut self, replicas: &[Replica]) {
        for o in &self.objects {
            let url = attr_str(o, "url");
            let ep = endpoint_of(o);
            for r in replicas {
                let same_url = url.is_some() && r.url.as_deref() == url;
                let same_ep = ep.is_some() && r.endpoint == ep;
                if same_url || same_ep {
                    self.blocks.insert(r.block.clone());
                }
            }
        }
    }
}

/// `address:port` of a watched instance object.
fn endpoint_of(a: &Attrs) -> Option<String> {
    let port = a
        .get("port")
        .and_then(|v| v.as_f64())
        .filter(|p| (1.0..=65535.0).contains(p))? as u16;
    Some(hostport(
        attr_str(a, "address").unwrap_or("127.0.0.1"),
        port,
    ))
}

/// The targets: every recorded instance sorted by what its description says it serves (state
/// order), replicas filtered by `watch`.
fn targets(
    state: &pipeline_state::State,
    described: &HashMap<String, Description>,
    watch: &mut Watch,
) -> Targets {
    let mut t = Targets::default();
    for (addr, r) in &state.resources {
        let Some(d) = described.get(addr) else {
            continue;
        };
        let block = block_of(addr).to_string();
        let name = name_of(&block, &r.kind);
        let serve = d.endpoint("serve");
        match d.serves {
            Serves::App if d.endpoints.iter().filter(|e| e.role == "serve").count() > 1 => {
                // One instance on several machines (a service on inventory hosts): each serve
                // endpoint is a replica, with its health endpoint and its process (the provider
                // lists them in the same order).
                let serves: Vec<_> = d.endpoints.iter().filter(|e| e.role == "serve").collect();
                let healths: Vec<_> = d.endpoints.iter().filter(|e| e.role == "health").collect();
                for (i, s) in serves.iter().enumerate() {
                    let endpoint = parse_url(&s.url).map(|(h, p)| hostport(&h, p));
                    let probe = match healths.get(i).filter(|_| healths.len() == serves.len()) {
                        Some(h) => Probe::of(Some(*h)),
                        None => Probe::of(Some(*s)),
                    };
                    t.replicas.push(Replica {
                        addr: format!("{addr}@{}", endpoint.as_deref().unwrap_or(&s.url)),
                        name: name.clone(),
                        block: block.clone(),
                        endpoint,
                        url: Some(s.url.clone()),
                        probe,
                        record: record_name(r.status).into(),
                        processes: d.processes.get(i).cloned().into_iter().collect(),
                    });
                }
            }
            Serves::App => {
                let url = serve.map(|e| e.url.clone());
                t.replicas.push(Replica {
                    addr: addr.clone(),
                    name,
                    block,
                    endpoint: url
                        .as_deref()
                        .and_then(parse_url)
                        .map(|(h, p)| hostport(&h, p)),
                    url,
                    probe: Probe::of(d.probe_endpoint()),
                    record: record_name(r.status).into(),
                    processes: d.processes.clone(),
                });
            }
            Serves::Proxy => {
                let probe = Probe::of(d.probe_endpoint());
                t.balancers.push(Endpoint {
                    addr: addr.clone(),
                    name,
                    shown: serve.map_or_else(|| probe.describe(), |e| e.url.clone()),
                    probe,
                    access_log: LogKey::of(d),
                });
            }
            Serves::Store => {
                let probe = Probe::of(d.probe_endpoint());
                t.flags.push(Endpoint {
                    addr: addr.clone(),
                    name,
                    shown: probe.describe(),
                    probe,
                    access_log: None,
                });
            }
            Serves::Observer | Serves::Nothing => {}
        }
    }
    watch.resolve(&t.replicas);
    t.unwatched = t
        .replicas
        .iter()
        .filter(|r| !watch.matches(r))
        .filter_map(|r| r.endpoint.clone())
        .collect();
    t.replicas.retain(|r| watch.matches(r));
    t
}

// ------------------------------------------------------------------------------------------------
// Probes.

#[derive(Clone, Debug, Default)]
struct ProbeResult {
    up: bool,
    latency: Option<Duration>,
    error: Option<String>,
}

fn connect(host: &str, port: u16, deadline: Instant) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("cannot resolve {host}");
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(s) => {
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                let _ = s.set_read_timeout(Some(left));
                let _ = s.set_write_timeout(Some(left));
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("connect {a}: {e}"),
        }
    }
    Err(last)
}

fn read_some(s: &mut TcpStream, want: impl Fn(&[u8]) -> bool) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Ok(buf),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if want(&buf) || buf.len() > 64 * 1024 {
                    return Ok(buf);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("timed out".into())
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn probe_http(host: &str, port: u16, path: &str, expect: Option<u16>) -> Result<(), String> {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut s = connect(host, port, deadline)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: pipeline-monitor\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        hostport(host, port)
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    // The status line is all we need.
    let head = read_some(&mut s, |b| b.windows(2).any(|w| w == b"\r\n"))?;
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    let status: u16 = line
        .strip_prefix("HTTP/")
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            if line.is_empty() {
                "closed without an answer".to_string()
            } else {
                format!("not an HTTP answer: {line:?}")
            }
        })?;
    match expect {
        Some(want) if status != want => Err(format!("GET {path}: status {status}, want {want}")),
        None if status >= 500 => Err(format!("GET {path}: status {status}")),
        _ => Ok(()),
    }
}

/// Ok(None): PONG. Ok(Some(reply)): the store answered with an error (NOAUTH, ...), so it is up.
fn probe_redis(host: &str, port: u16, password: Option<&str>) -> Result<Option<String>, String> {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut s = connect(host, port, deadline)?;
    let mut req = String::new();
    if let Some(p) = password {
        req.push_str(&format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{p}\r\n", p.len()));
    }
    req.push_str("*1\r\n$4\r\nPING\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let want = if password.is_some() { 2 } else { 1 };
    let got = read_some(&mut s, |b| {
        b.iter().filter(|&&c| c == b'\n').count() >= want
    })?;
    let text = String::from_utf8_lossy(&got);
    if text.contains("+PONG") {
        Ok(None)
    } else if let Some(e) = text.lines().find(|l| l.starts_with('-')) {
        Ok(Some(e.trim_start_matches('-').to_string()))
    } else {
        Err(format!("not a redis answer: {:?}", text.trim()))
    }
}

fn run_probe(p: &Probe) -> ProbeResult {
    let start = Instant::now();
    let res = match p {
        Probe::Http {
            host,
            port,
            path,
            expect,
        } => probe_http(host, *port, path, *expect),
        Probe::Tcp { host, port } => {
            connect(host, *port, Instant::now() + PROBE_TIMEOUT).map(|_| ())
        }
        Probe::Redis {
            host,
            port,
            password,
        } => match probe_redis(host, *port, password.as_deref()) {
            Ok(None) => Ok(()),
            Ok(Some(reply)) => {
                return ProbeResult {
                    up: true,
                    latency: Some(start.elapsed()),
                    error: Some(reply),
                }
            }
            Err(e) => Err(e),
        },
        Probe::None(why) => {
            return ProbeResult {
                up: false,
                latency: None,
                error: Some(why.clone()),
            }
        }
    };
    ProbeResult {
        up: res.is_ok(),
        latency: Some(start.elapsed()),
        error: res.err(),
    }
}

/// A probe still running from an earlier heartbeat (a host that stopped answering keeps its
/// probe waiting until PROBE_TIMEOUT), so no target ever holds the heartbeat back.
struct InFlight {
    since: Instant,
    rx: std::sync::mpsc::Receiver<ProbeResult>,
}

/// Probe every target at once, one short-lived thread each, and wait for their answers until
/// `until`. A target whose probe has not answered by then keeps it running into the next
/// heartbeats (its last result stands meanwhile: None here) until it answers or PROBE_TIMEOUT
/// has passed (then it is down); no new probe starts for it while one runs.
fn probe_all(
    probes: &[(String, Probe)],
    inflight: &mut HashMap<String, InFlight>,
    until: Instant,
) -> Vec<Option<ProbeResult>> {
    for (key, p) in probes {
        if !inflight.contains_key(key) {
            let (tx, rx) = std::sync::mpsc::channel();
            let p = p.clone();
            let spawned = std::thread::Builder::new()
                .name("probe".into())
                .spawn(move || {
                    let _ = tx.send(run_probe(&p));
                });
            if spawned.is_ok() {
                inflight.insert(
                    key.clone(),
                    InFlight {
                        since: Instant::now(),
                        rx,
                    },
                );
            }
        }
    }
    let out = probes
        .iter()
        .map(|(key, _)| {
            let f = inflight.get(key)?;
            let left = until.saturating_duration_since(Instant::now());
            let answer = match f.rx.recv_timeout(left) {
                Ok(r) => Some(r),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Some(ProbeResult {
                    error: Some("probe panicked".into()),
                    ..Default::default()
                }),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    if f.since.elapsed() >= PROBE_TIMEOUT =>
                {
                    Some(ProbeResult {
                        latency: Some(f.since.elapsed()),
                        error: Some(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
                        ..Default::default()
                    })
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            };
            if answer.is_some() {
                inflight.remove(key);
            }
            answer
        })
        .collect();
    let keys: BTreeSet<&String> = probes.iter().map(|(k, _)| k).collect();
    inflight.retain(|k, _| keys.contains(k));
    out
}

// ------------------------------------------------------------------------------------------------
// Processes.

#[derive(Clone, Debug, Default)]
struct ProcInfo {
    pids: Vec<u32>,
    restarts: u32,
    started_at: Option<u64>,
    supervisor: Option<String>,
    cpu_ratio: Option<f64>,
    memory_bytes: Option<u64>,
}

// ------------------------------------------------------------------------------------------------
// Access logs.

/// Where a balancer's access log is read: a file on this machine, or a command that streams the
/// lines logged on another machine (`MetricSource::AccessLogStream`, e.g. `ssh HOST timeout 600
/// tail -n0 -F PATH`), known by its whole argv.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum LogKey {
    File(PathBuf),
    Stream(Vec<String>),
}

impl LogKey {
    /// The access log a description names (the first one), if any.
    fn of(d: &Description) -> Option<LogKey> {
        d.metrics.iter().find_map(|m| match m {
            MetricSource::AccessLog { path, .. } => Some(LogKey::File(path.clone())),
            MetricSource::AccessLogStream { argv, .. } if !argv.is_empty() => {
                Some(LogKey::Stream(argv.clone()))
            }
            _ => None,
        })
    }
}

/// Follows one access log.
enum Follower {
    /// A file here: the last [`LOG_BACKLOG`] bytes it holds when the monitor starts are read,
    /// then what is appended.
    File(Tail),
    /// A command streaming a log from another machine: no backlog, only what is logged from the
    /// moment the command starts (rates of the minute before the monitor started are not known;
    /// a request logged while the command is started again, at most once a second, is missed).
    /// Dropping it kills the command's process group.
    Stream(Stream),
}

impl Follower {
    fn start(key: &LogKey) -> Follower {
        match key {
            LogKey::File(path) => Follower::File(Tail::with_backlog(path, LOG_BACKLOG)),
            LogKey::Stream(argv) => Follower::Stream(Stream::start(argv)),
        }
    }
    fn read_lines(&mut self) -> Vec<String> {
        match self {
            Follower::File(t) => t.read_lines(),
            Follower::Stream(s) => s.read_lines(),
        }
    }
}

/// Followers by what they follow, kept across ticks: started when a balancer first names a log,
/// reused while some balancer names the same one (the same path, or the very same argv), dropped
/// once none does (the balancer left the targets or is described with another log).
struct Followers<F> {
    by_key: HashMap<LogKey, F>,
}

impl<F> Default for Followers<F> {
    fn default() -> Self {
        Followers {
            by_key: HashMap::new(),
        }
    }
}

impl<F> Followers<F> {
    /// The follower of `key`, started by `start` if there is none yet.
    fn get_or_start(&mut self, key: &LogKey, start: impl FnOnce(&LogKey) -> F) -> &mut F {
        if !self.by_key.contains_key(key) {
            let f = start(key);
            self.by_key.insert(key.clone(), f);
        }
        self.by_key.get_mut(key).expect("just inserted")
    }
    /// Drops every follower whose log is not in `keys`.
    fn keep(&mut self, keys: &BTreeSet<&LogKey>) {
        self.by_key.retain(|k, _| keys.contains(k));
    }
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_key.len()
    }
}

/// One parsed line of the access log (`pipeline_host::access_log`).
use pipeline_host::access_log::parse as parse_log_line;

/// Events (time in unix seconds, error?) in a sliding window.
#[derive(Default, Clone, Debug)]
pub struct Window {
    events: VecDeque<(f64, bool)>,
}

impl Window {
    pub fn push(&mut self, at: f64, err: bool) {
        self.events.push_back((at, err));
    }
    pub fn prune(&mut self, now: f64) {
        let cut = now - WINDOW.as_secs_f64();
        // Log lines are nearly ordered; drop from the front while old.
        while self.events.front().is_some_and(|(t, _)| *t < cut) {
            self.events.pop_front();
        }
        if self.events.len() > 1_000_000 {
            self.events.drain(..self.events.len() - 1_000_000);
        }
    }
    /// (requests per second, error ratio, count).
    pub fn rates(&self, now: f64) -> (f64, f64, usize) {
        let cut = now - WINDOW.as_secs_f64();
        let (n, errs) = self
            .events
            .iter()
            .filter(|(t, _)| *t >= cut && *t <= now + 1.0)
            .fold((0usize, 0usize), |(n, e), (_, err)| {
                (n + 1, e + *err as usize)
            });
        let ratio = if n == 0 { 0.0 } else { errs as f64 / n as f64 };
        (n as f64 / WINDOW.as_secs_f64(), ratio, n)
    }
}

// ------------------------------------------------------------------------------------------------
// The collector.

#[derive(Default)]
struct ReplicaState {
    result: Option<ProbeResult>,
    history: VecDeque<(u64, Option<f64>)>,
    proc: ProcInfo,
}

#[derive(Default)]
struct EndpointState {
    result: Option<ProbeResult>,
}

pub struct Collector {
    cfg: DaemonConfig,
    watch: Watch,
    targets: Targets,
    state_serial: u64,
    state_error: Option<String>,
    replicas: HashMap<String, ReplicaState>,
    endpoints: HashMap<String, EndpointState>,
    /// One follower per access log the balancers name, kept across ticks.
    tails: Followers<Follower>,
    /// Per upstream `address:port`.
    upstreams: HashMap<String, Window>,
    /// Per balancer address, over all its requests.
    balancer_windows: HashMap<String, Window>,
    cpu_prev: HashMap<u32, u64>,
    cpu_prev_at: Option<Instant>,
    last_discovery: Option<Instant>,
    last_procs: Option<Instant>,
    /// Asks each instance's provider what runs for it.
    describer: Describer,
    /// The last descriptions, by address, and the state (lineage, serial) they were made for.
    described: HashMap<String, Description>,
    described_for: Option<(String, u64)>,
    described_at: Option<Instant>,
    /// Instances to describe again at the next discovery (a process of theirs is gone).
    stale: BTreeSet<String>,
    runtime: Option<tokio::runtime::Runtime>,
    /// Probes still waiting for an answer, by target address.
    inflight: HashMap<String, InFlight>,
    /// Per service block, at every heartbeat: (unix ms, healthy, instances).
    heartbeat: HashMap<String, VecDeque<(u64, u32, u32)>>,
    /// The alert rules: fed every access-log line, judged by the server's loop.
    pub(super) alerts: super::alerts::Alerts,
    /// CPU and memory of the hosts remote instances run on.
    usage: RemoteUsage,
}

impl Collector {
    pub fn new(cfg: DaemonConfig, describer: Describer) -> Collector {
        Collector {
            alerts: super::alerts::Alerts::new(cfg.alerts.clone(), &cfg.name, cfg.interval_ms),
            watch: Watch::new(&cfg.watch),
            cfg,
            targets: Targets::default(),
            state_serial: 0,
            state_error: None,
            replicas: HashMap::new(),
            endpoints: HashMap::new(),
            tails: Followers::default(),
            upstreams: HashMap::new(),
            balancer_windows: HashMap::new(),
            cpu_prev: HashMap::new(),
            cpu_prev_at: None,
            last_discovery: None,
            last_procs: None,
            describer,
            described: HashMap::new(),
            described_for: None,
            described_at: None,
            stale: BTreeSet::new(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok(),
            inflight: HashMap::new(),
            heartbeat: HashMap::new(),
            usage: RemoteUsage::default(),
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.cfg.interval_ms.max(10))
    }

    fn due(last: Option<Instant>) -> bool {
        last.is_none_or(|t| t.elapsed() >= SLOW_PERIOD)
    }

    /// One heartbeat: re-read the state when due, probe everything, sample processes when due,
    /// read new access-log lines.
    pub fn tick(&mut self) {
        if Self::due(self.last_discovery) {
            self.last_discovery = Some(Instant::now());
            self.discover();
        }
        self.probe();
        self.usage.poll();
        if Self::due(self.last_procs) {
            self.last_procs = Some(Instant::now());
            self.sample_procs();
        }
        self.read_logs();
    }

    /// Re-read the state; describe what changed since the last look (every instance when the
    /// state's serial moved or REDESCRIBE passed, else only the stale ones) and rebuild the
    /// targets from the descriptions.
    fn discover(&mut self) {
        match pipeline_state::StateStore::load(&self.cfg.state_dir) {
            Ok(state) => {
                let now = (state.lineage.clone(), state.serial);
                let all = self.described_for.as_ref() != Some(&now)
                    || self.described_at.is_none_or(|t| t.elapsed() >= REDESCRIBE);
                let which: Vec<String> = if all {
                    state.resources.keys().cloned().collect()
                } else {
                    std::mem::take(&mut self.stale)
                        .into_iter()
                        .filter(|a| state.resources.contains_key(a))
                        .collect()
                };
                if !which.is_empty() || all {
                    self.describe(&state, which);
                    if all {
                        self.described_for = Some(now);
                        self.described_at = Some(Instant::now());
                        self.stale.clear();
                    }
                }
                self.described
                    .retain(|a, _| state.resources.contains_key(a));
                self.targets = targets(&state, &self.described, &mut self.watch);
                self.usage.set_hosts(remote_usage::wanted(
                    self.described.values(),
                    self.targets.replicas.iter().flat_map(|r| &r.processes),
                ));
                self.state_serial = state.serial;
                self.state_error = None;
                let keep: BTreeSet<&String> =
                    self.targets.replicas.iter().map(|r| &r.addr).collect();
                self.replicas.retain(|k, _| keep.contains(k));
                let keep: BTreeSet<&String> = self
                    .targets
                    .balancers
                    .iter()
                    .chain(&self.targets.flags)
                    .map(|e| &e.addr)
                    .collect();
                self.endpoints.retain(|k, _| keep.contains(k));
                // A balancer gone, or described with another log: its follower goes (a stream's
                // command is killed).
                let logs: BTreeSet<&LogKey> = self
                    .targets
                    .balancers
                    .iter()
                    .filter_map(|b| b.access_log.as_ref())
                    .collect();
                self.tails.keep(&logs);
                let balancers: BTreeSet<&String> =
                    self.targets.balancers.iter().map(|b| &b.addr).collect();
                self.balancer_windows.retain(|a, _| balancers.contains(a));
            }
            Err(e) => self.state_error = Some(e.to_string()),
        }
    }

    fn probe(&mut self) {
        let until = Instant::now() + self.interval().mul_f64(0.8);
        let mut probes: Vec<(String, Probe)> = self
            .targets
            .replicas
            .iter()
            .map(|r| (r.addr.clone(), r.probe.clone()))
            .collect();
        let endpoints: Vec<&Endpoint> = self
            .targets
            .balancers
            .iter()
            .chain(&self.targets.flags)
            .collect();
        probes.extend(endpoints.iter().map(|e| (e.addr.clone(), e.probe.clone())));
        let results = probe_all(&probes, &mut self.inflight, until);
        let now = now_ms();
        let bucket = now / BUCKET_MS;
        let keep = (HISTORY.as_millis() as u64 / BUCKET_MS) as usize;
        let (rep_results, ep_results) = results.split_at(self.targets.replicas.len());
        let mut beat: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        for (r, res) in self.targets.replicas.iter().zip(rep_results) {
            let st = self.replicas.entry(r.addr.clone()).or_default();
            if let Some(res) = res {
                st.result = Some(res.clone());
            }
            // A probe still waiting for its answer: the last result stands.
            let Some(res) = &st.result else { continue };
            let counts = beat.entry(r.block.as_str()).or_default();
            counts.0 += res.up as u32;
            counts.1 += 1;
            let lat = res.latency.filter(|_| res.up).map(millis);
            match st.history.back_mut() {
                Some((b, l)) if *b == bucket => {
                    // Worst of the bucket: down wins, else the highest latency.
                    *l = match (*l, lat) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                }
                _ => st.history.push_back((bucket, lat)),
            }
            while st.history.len() > keep {
                st.history.pop_front();
            }
        }
        for (e, res) in endpoints.iter().zip(ep_results) {
            if let Some(res) = res {
                self.endpoints.entry(e.addr.clone()).or_default().result = Some(res.clone());
            }
        }
        let total: BTreeMap<&str, u32> =
            self.targets
                .replicas
                .iter()
                .fold(BTreeMap::new(), |mut m, r| {
                    *m.entry(r.block.as_str()).or_default() += 1;
                    m
                });
        for (block, total) in total {
            let up = beat.get(block).map_or(0, |c| c.0);
            let series = self.heartbeat.entry(block.to_string()).or_default();
            series.push_back((now, up, total));
            while series
                .front()
                .is_some_and(|(t, _, _)| now.saturating_sub(*t) > HEARTBEAT_KEEP.as_millis() as u64)
            {
                series.pop_front();
            }
        }
        let blocks: BTreeSet<&String> = self.targets.replicas.iter().map(|r| &r.block).collect();
        self.heartbeat.retain(|b, _| blocks.contains(b));
    }

    fn sample_procs(&mut self) {
        let procs = all_procs();
        let now = Instant::now();
        let elapsed = self
            .cpu_prev_at
            .map(|t| now.duration_since(t).as_secs_f64());
        let hz = pipeline_host::procfs::ticks_per_sec();
        let mut seen = HashMap::new();
        for r in &self.targets.replicas {
            // A described process that is gone (restarted, stopped) or was not running: the
            // next discovery asks its provider again.
            // Processes on other machines (`host` set) are not in this machine's /proc: their
            // provider's description is all there is of them.
            let local = || r.processes.iter().filter(|p| p.host.is_none());
            if local().any(|p| !p.running || p.pid.is_some_and(|pid| !procs.contains_key(&pid))) {
                // Keyed by the recorded instance (a replica on a host is `ADDR@HOST:PORT`).
                let addr = r.addr.split('@').next().unwrap_or(&r.addr);
                self.stale.insert(addr.to_string());
            }
            let mut info = ProcInfo::default();
            let mut children = vec![];
            for p in &r.processes {
                info.restarts += p.restarts;
                if info.supervisor.is_none() {
                    info.supervisor = p.supervisor.clone();
                }
                if p.host.is_some() {
                    continue;
                }
                if let (true, Some(c)) = (p.running, p.pid) {
                    children.push(c);
                    if let Some(t) = p.started_at {
                        info.started_at = Some(info.started_at.map_or(t, |s| s.max(t)));
                    }
                }
            }
            info.pids = family(&children, &procs);
            if !info.pids.is_empty() {
                let mut cpu = 0.0;
                let mut mem = 0u64;
                for &p in &info.pids {
                    let ticks = procs[&p].ticks;
                    if let Some(prev) = self.cpu_prev.get(&p) {
                        cpu += ticks.saturating_sub(*prev) as f64 / hz;
                    }
                    seen.insert(p, ticks);
                    mem += rss_bytes(p).unwrap_or(0);
                }
                info.cpu_ratio = elapsed.filter(|e| *e > 0.0).map(|e| cpu / e);
                info.memory_bytes = Some(mem);
            } else if let Some((cpu, mem)) = self.usage.of(&r.processes) {
                // Its units on other hosts, as their last samples found them.
                info.cpu_ratio = cpu;
                info.memory_bytes = Some(mem);
            }
            self.replicas.entry(r.addr.clone()).or_default().proc = info;
        }
        self.cpu_prev = seen;
        self.cpu_prev_at = Some(now);
    }

    /// Ask the providers about `which` instances of `state`, all at once. An instance its
    /// provider cannot describe keeps its last description (none: it is not a target).
    fn describe(&mut self, state: &pipeline_state::State, which: Vec<String>) {
        let Some(rt) = &self.runtime else { return };
        let asks: Vec<(String, DescribeFuture)> = which
            .into_iter()
            .filter_map(|a| {
                let rs = state.resources.get(&a)?.clone();
                Some((a.clone(), (self.describer)(a, rs)))
            })
            .collect();
        let answers = rt.block_on(async move {
            let tasks: Vec<_> = asks
                .into_iter()
                .map(|(a, f)| (a, tokio::spawn(f)))
                .collect();
            // A provider that must ask a host that stopped answering keeps its last
            // description: the heartbeat goes on.
            let until = tokio::time::Instant::now() + DESCRIBE_TIMEOUT;
            let mut out = Vec::new();
            for (a, t) in tasks {
                if let Ok(Ok(Ok(d))) = tokio::time::timeout_at(until, t).await {
                    out.push((a, d));
                }
            }
            out
        });
        self.described.extend(answers);
    }

    fn read_logs(&mut self) {
        for b in &self.targets.balancers {
            let Some(key) = &b.access_log else { continue };
            let tail = self.tails.get_or_start(key, Follower::start);
            let bw = self.balancer_windows.entry(b.addr.clone()).or_default();
            for line in tail.read_lines() {
                let Some(l) = parse_log_line(&line) else {
                    continue;
                };
                bw.push(l.at, l.status >= 500);
                self.alerts.observe(&b.addr, &l);
                for (up, st) in l.upstreams {
                    let err = st.unwrap_or(l.status) >= 500;
                    self.upstreams.entry(up).or_default().push(l.at, err);
                }
            }
        }
        let now = now_ms() as f64 / 1000.0;
        self.upstreams.values_mut().for_each(|w| w.prune(now));
        self.upstreams.retain(|_, w| !w.events.is_empty());
        self.balancer_windows
            .values_mut()
            .for_each(|w| w.prune(now));
    }

    pub fn status(&self) -> Status {
        let now = now_ms();
        let now_s = now as f64 / 1000.0;
        let now_secs = now / 1000;
        let mut services: BTreeMap<String, ServiceView> = BTreeMap::new();
        for r in &self.targets.replicas {
            let st = self.replicas.get(&r.addr);
            let res = st.and_then(|s| s.result.as_ref());
            let (rps, err, n) = r
                .endpoint
                .as_ref()
                .and_then(|e| self.upstreams.get(e))
                .map_or((0.0, 0.0, 0), |w| w.rates(now_s));
            let proc = st.map(|s| s.proc.clone()).unwrap_or_default();
            let up = res.is_some_and(|r| r.up);
            let view = ReplicaView {
                address: r.addr.clone(),
                service: r.name.clone(),
                url: r.url.clone(),
                endpoint: r.endpoint.clone(),
                state: match res {
                    None => "PENDING",
                    Some(x) if x.up => "UP",
                    Some(_) => "DOWN",
                }
                .into(),
                up,
                latency_ms: res.and_then(|r| r.latency).map(millis),
                last_error: res.and_then(|r| r.error.clone()),
                requests_per_second: rps,
                error_ratio: err,
                requests_in_window: n,
                cpu_ratio: proc.cpu_ratio,
                memory_bytes: proc.memory_bytes,
                pids: proc.pids,
                restarts: proc.restarts,
                uptime_s: proc.started_at.map(|t| now_secs.saturating_sub(t)),
                supervisor: proc.supervisor,
                record: r.record.clone(),
                history: st
                    .map(|s| s.history.iter().map(|(_, l)| *l).collect())
                    .unwrap_or_default(),
            };
            let s = services
                .entry(r.block.clone())
                .or_insert_with(|| ServiceView {
                    name: r.name.clone(),
                    block: r.block.clone(),
                    ..Default::default()
                });
            s.total += 1;
            s.up += up as usize;
            s.replicas.push(view);
        }
        for s in services.values_mut() {
            s.heartbeat = self
                .heartbeat
                .get(&s.block)
                .map(|h| h.iter().copied().collect())
                .unwrap_or_default();
            s.fewest_up = s.heartbeat.iter().map(|(_, up, _)| *up).min();
            let cpus = s.replicas.iter().filter_map(|r| r.cpu_ratio);
            s.cpu_ratio = cpus.clone().next().map(|_| cpus.sum());
            let mems = s.replicas.iter().filter_map(|r| r.memory_bytes);
            s.memory_bytes = mems.clone().next().map(|_| mems.sum());
        }
        let endpoint_view = |e: &Endpoint, with_rates: bool| {
            let res = self.endpoints.get(&e.addr).and_then(|s| s.result.as_ref());
            let rates = (with_rates && e.access_log.is_some()).then(|| {
                self.balancer_windows
                    .get(&e.addr)
                    .map_or((0.0, 0.0, 0), |w| w.rates(now_s))
            });
            EndpointView {
                address: e.addr.clone(),
                name: e.name.clone(),
                target: e.shown.clone(),
                state: match res {
                    None => "PENDING",
                    Some(x) if x.up => "UP",
                    Some(_) => "DOWN",
                }
                .into(),
                up: res.is_some_and(|r| r.up),
                latency_ms: res.and_then(|r| r.latency).map(millis),
                last_error: res.and_then(|r| r.error.clone()),
                requests_per_second: rates.map(|r| r.0),
                error_ratio: rates.map(|r| r.1),
            }
        };
        Status {
            monitor: self.cfg.name.clone(),
            generated_ms: now,
            interval_ms: self.cfg.interval_ms,
            window_s: WINDOW.as_secs(),
            bucket_ms: BUCKET_MS,
            state_serial: self.state_serial,
            state_error: self.state_error.clone(),
            watch: self.watch.describe(),
            services: services.into_values().collect(),
            balancers: self
                .targets
                .balancers
                .iter()
                .map(|e| endpoint_view(e, true))
                .collect(),
            flags: self
                .targets
                .flags
                .iter()
                .map(|e| endpoint_view(e, false))
                .collect(),
            alerts: Default::default(),
            unwatched: self.targets.unwatched.clone(),
            hosts: self
                .usage
                .hosts()
                .map(|(name, v)| HostView {
                    host: name.clone(),
                    cpu_ratio: v.figures.as_ref().and_then(|f| f.cpu_ratio),
                    cpus: v.figures.as_ref().map(|f| f.cpus),
                    memory_bytes: v.figures.as_ref().map(|f| f.memory_bytes),
                    memory_total_bytes: v.figures.as_ref().map(|f| f.memory_total_bytes),
                    error: v.error,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_parse_with_retries_and_no_upstream() {
        let l = parse_log_line("1700000000.123 200 0.002 127.0.0.1:8001 200").unwrap();
        assert_eq!(l.status, 200);
        assert_eq!(l.upstreams, vec![("127.0.0.1:8001".into(), Some(200))]);
        let l = parse_log_line("1700000000.5 200 0.010 127.0.0.1:8001, 127.0.0.1:8002 502, 200")
            .unwrap();
        assert_eq!(
            l.upstreams,
            vec![
                ("127.0.0.1:8001".into(), Some(502)),
                ("127.0.0.1:8002".into(), Some(200))
            ]
        );
        let l = parse_log_line("1700000000.5 404 0.000 - -").unwrap();
        assert!(l.upstreams.is_empty());
        assert!(parse_log_line("garbage").is_none());
    }

    #[test]
    fn followers_are_kept_per_log_and_dropped_once_no_balancer_names_it() {
        use std::cell::RefCell;
        use std::rc::Rc;
        struct Fake(String, Rc<RefCell<Vec<String>>>);
        impl Drop for Fake {
            fn drop(&mut self) {
                self.1.borrow_mut().push(self.0.clone());
            }
        }
        let dropped = Rc::new(RefCell::new(Vec::<String>::new()));
        let started = RefCell::new(Vec::<String>::new());
        let name = |k: &LogKey| match k {
            LogKey::File(p) => p.display().to_string(),
            LogKey::Stream(a) => a.join(" "),
        };
        let start = |k: &LogKey| {
            started.borrow_mut().push(name(k));
            Fake(name(k), dropped.clone())
        };
        let ssh = |host: &str| LogKey::Stream(vec!["ssh".into(), host.into(), "tail".into()]);
        let file = LogKey::File("/srv/access.log".into());
        let mut f: Followers<Fake> = Followers::default();
        // Every tick asks again: one follower per log, started once.
        for _ in 0..3 {
            f.get_or_start(&ssh("a"), start);
            f.get_or_start(&file, start);
        }
        assert_eq!(*started.borrow(), ["ssh a tail", "/srv/access.log"]);
        assert_eq!(f.len(), 2);
        // Named again (the same argv, described again): kept.
        f.keep(&[&ssh("a"), &file].into_iter().collect());
        assert!(dropped.borrow().is_empty());
        // The balancer is described with another command (its host changed): the old one goes.
        f.keep(&[&ssh("b"), &file].into_iter().collect());
        assert_eq!(*dropped.borrow(), ["ssh a tail"]);
        f.get_or_start(&ssh("b"), start);
        assert_eq!(started.borrow().len(), 3);
        // No balancer left: every follower goes.
        f.keep(&BTreeSet::new());
        assert_eq!(f.len(), 0);
        let mut d = dropped.borrow().clone();
        d.sort();
        assert_eq!(d, ["/srv/access.log", "ssh a tail", "ssh b tail"]);
    }

    #[test]
    fn window_rates_and_pruning() {
        let mut w = Window::default();
        for i in 0..100 {
            w.push(1000.0 + i as f64 * 0.1, i % 4 == 0);
        }
        let (rps, err, n) = w.rates(1010.0);
        assert_eq!(n, 100);
        assert!((rps - 10.0).abs() < 1e-9, "{rps}");
        assert!((err - 0.25).abs() < 1e-9, "{err}");
        w.prune(1015.0);
        assert_eq!(w.rates(1015.0).2, 50);
    }

    #[test]
    fn addresses_and_urls() {
        assert_eq!(block_of("service.web[2]"), "service.web");
        assert_eq!(block_of("service.web[\"a\"]"), "service.web");
        assert_eq!(name_of("service.web", "service"), "web");
        assert_eq!(name_of("module.m.service.web", "service"), "module.m.web");
        assert_eq!(
            parse_url("http://127.0.0.1:8080/x"),
            Some(("127.0.0.1".into(), 8080))
        );
        assert_eq!(parse_url("http://[::1]:81"), Some(("::1".into(), 81)));
    }

    #[test]
    fn watch_by_name_and_by_instance_object() {
        let mut state = pipeline_state::State::empty("x".into());
        for (addr, port) in [("service.web[0]", 5001), ("service.api[0]", 5002)] {
            let attrs: Attrs = serde_json::from_value(serde_json::json!({
                "url": format!("http://127.0.0.1:{port}"), "address": "127.0.0.1", "port": port
            }))
            .unwrap();
            state.resources.insert(
                addr.into(),
                pipeline_state::ResourceState {
                    kind: "service".into(),
                    provider: "local".into(),
                    status: pipeline_state::Status::Ready,
                    attrs,
                    sensitive: vec![],
                    deps: vec![],
                },
            );
        }
        let described: HashMap<String, Description> = state
            .resources
            .iter()
            .map(|(a, r)| (a.clone(), fake_description(r)))
            .collect();
        let names = |w: &mut Watch| -> Vec<String> {
            targets(&state, &described, w)
                .replicas
                .into_iter()
                .map(|r| r.addr)
                .collect()
        };
        assert_eq!(names(&mut Watch::new(&serde_json::Value::Null)).len(), 2);
        assert_eq!(
            names(&mut Watch::new(&serde_json::json!(["api"]))),
            vec!["service.api[0]"]
        );
        let obj = serde_json::json!([[{"url": "http://127.0.0.1:5001", "port": 5001}]]);
        assert_eq!(names(&mut Watch::new(&obj)), vec!["service.web[0]"]);
    }

    /// What the real providers describe for the records these tests make (the monitor knows
    /// none of them: the binary hands it a describer over its registry).
    fn fake_description(rs: &pipeline_state::ResourceState) -> Description {
        let a = &rs.attrs;
        let s = |k: &str| attr_str(a, k).map(str::to_string);
        let ep = |role: &str, url: String| DescribedEndpoint {
            role: role.into(),
            url,
            ..Default::default()
        };
        let mut d = Description::default();
        match rs.kind.as_str() {
            "service" => {
                d.serves = Serves::App;
                if let Some(url) = s("url") {
                    let health = a.get("health").and_then(|h| h.as_object());
                    let path = health
                        .and_then(|h| h.get("path"))
                        .and_then(|p| p.as_str())
                        .unwrap_or("/");
                    d.endpoints.push(DescribedEndpoint {
                        role: "health".into(),
                        url: format!("{url}{path}"),
                        secret: None,
                        expect_status: health.map(|_| 200),
                    });
                    d.endpoints.push(ep("serve", url));
                }
            }
            "balancer" => {
                d.serves = Serves::Proxy;
                if let Some(url) = s("url") {
                    let (host, port) = parse_url(&url).unwrap();
                    d.endpoints
                        .push(ep("health", format!("tcp://{}", hostport(&host, port))));
                    d.endpoints.push(ep("serve", url));
                }
                if let Some(log) = s("access_log") {
                    d.metrics.push(MetricSource::AccessLog {
                        path: log.into(),
                        format: "nginx-timed".into(),
                    });
                }
                // As the nginx provider describes a balancer on another machine.
                if let Some(argv) = a.get("access_log_argv").and_then(|v| v.as_array()) {
                    d.metrics.push(MetricSource::AccessLogStream {
                        argv: argv
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect(),
                        format: "nginx-timed".into(),
                    });
                }
            }
            "flags" => {
                d.serves = Serves::Store;
                let port = a.get("port").and_then(|p| p.as_u64()).unwrap();
                d.endpoints.push(DescribedEndpoint {
                    role: "serve".into(),
                    url: format!("redis://{}:{port}", s("address").unwrap()),
                    secret: s("password"),
                    expect_status: None,
                });
            }
            "monitor" => d.serves = Serves::Observer,
            _ => {}
        }
        d
    }

    fn fake_describer() -> Describer {
        Arc::new(|_, rs| Box::pin(async move { Ok(fake_description(&rs)) }))
    }

    /// Serve `reply` to every connection (after reading what the client sent) until dropped.
    fn fake_server(reply: &'static str) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = c.write_all(reply.as_bytes());
            }
        });
        port
    }

    /// Accepts connections and never answers (a host that stopped responding mid-request).
    fn silent_server() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in l.incoming().flatten() {
                held.push(c);
                if held.len() > 64 {
                    break;
                }
            }
        });
        port
    }

    #[test]
    fn a_target_that_never_answers_does_not_hold_the_heartbeat_back() {
        let d = tempfile::tempdir().unwrap();
        let state_dir = d.path().join("state");
        let up = fake_server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let silent = silent_server();
        let mut store = pipeline_state::StateStore::open(&state_dir).unwrap();
        let health = serde_json::json!({"path": "/health", "interval": "100ms"});
        for (i, port) in [up, silent].into_iter().enumerate() {
            record(
                &mut store,
                &format!("service.web[{i}]"),
                "service",
                serde_json::json!({
                    "address": "127.0.0.1", "port": port,
                    "url": format!("http://127.0.0.1:{port}"), "health": health
                }),
            );
        }
        let mut c = Collector::new(
            DaemonConfig {
                name: "monitor.dash".into(),
                state_dir,
                watch: serde_json::Value::Null,
                interval_ms: 100,
                address: "127.0.0.1".into(),
                listen: 1,
                token: None,
                hosts: vec![],
                alerts: vec![],
            },
            fake_describer(),
        );
        c.tick();
        // The answering replica is UP after one heartbeat; the silent one's probe is still
        // waiting (it would take PROBE_TIMEOUT), so that heartbeat did not wait for it.
        let st = c.status();
        let web = &st.services[0];
        let states: Vec<&str> = web.replicas.iter().map(|r| r.state.as_str()).collect();
        assert_eq!(states, ["UP", "PENDING"], "{web:?}");
        assert_eq!(c.inflight.len(), 1, "one probe still waits");
        // Heartbeats go on; once PROBE_TIMEOUT has passed the silent one is DOWN.
        let started = Instant::now();
        while started.elapsed() < PROBE_TIMEOUT + Duration::from_millis(500) {
            c.tick();
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = c.status();
        let r1 = &st.services[0].replicas[1];
        assert_eq!(r1.state, "DOWN", "{r1:?}");
        // Its own socket deadline or the collector's, whichever ends first.
        let err = r1.last_error.as_deref().unwrap_or("");
        assert!(
            err.contains("timed out") || err.contains("no answer within"),
            "{r1:?}"
        );
        assert_eq!(st.services[0].fewest_up, Some(1), "{:?}", st.services[0]);
    }

    fn unused_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn record(
        store: &mut pipeline_state::StateStore,
        addr: &str,
        kind: &str,
        attrs: serde_json::Value,
    ) {
        store
            .record(pipeline_state::JournalEntry::Set {
                addr: addr.into(),
                resource: pipeline_state::ResourceState {
                    kind: kind.into(),
                    provider: "test".into(),
                    status: pipeline_state::Status::Ready,
                    attrs: serde_json::from_value(attrs).unwrap(),
                    sensitive: vec![],
                    deps: vec![],
                },
            })
            .unwrap();
    }

    #[test]
    fn collector_probes_services_balancers_and_flags_and_reads_rates_from_the_log() {
        let d = tempfile::tempdir().unwrap();
        let state_dir = d.path().join(".pipeline");
        let up = fake_server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        let down = unused_port();
        let redis = fake_server("+OK\r\n+PONG\r\n");
        let balancer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bport = balancer.local_addr().unwrap().port();
        let log = d.path().join("access.log");
        let now = now_ms() as f64 / 1000.0;
        let mut lines = String::new();
        for i in 0..5 {
            let st = if i == 0 { 502 } else { 200 };
            lines += &format!("{:.3} {st} 0.001 127.0.0.1:{up} {st}\n", now - 1.0);
        }
        // A retry: the first attempt failed on the down replica, the second succeeded.
        lines += &format!(
            "{:.3} 200 0.003 127.0.0.1:{down}, 127.0.0.1:{up} 502, 200\n",
            now - 0.5
        );
        // Too old to count.
        lines += &format!("{:.3} 200 0.001 127.0.0.1:{up} 200\n", now - 30.0);
        std::fs::write(&log, lines).unwrap();

        let mut store = pipeline_state::StateStore::open(&state_dir).unwrap();
        let health = serde_json::json!({"path": "/health", "interval": "100ms"});
        record(
            &mut store,
            "service.web[0]",
            "service",
            serde_json::json!({
                "address": "127.0.0.1", "port": up, "url": format!("http://127.0.0.1:{up}"), "health": health
            }),
        );
        record(
            &mut store,
            "service.web[1]",
            "service",
            serde_json::json!({
                "address": "127.0.0.1", "port": down, "url": format!("http://127.0.0.1:{down}"), "health": health
            }),
        );
        record(
            &mut store,
            "balancer.front",
            "balancer",
            serde_json::json!({
                "url": format!("http://127.0.0.1:{bport}"), "access_log": log.display().to_string()
            }),
        );
        record(
            &mut store,
            "flags.ff",
            "flags",
            serde_json::json!({
                "address": "127.0.0.1", "port": redis, "password": "sesame"
            }),
        );
        record(
            &mut store,
            "monitor.dash",
            "monitor",
            serde_json::json!({"listen": 1}),
        );

        let mut c = Collector::new(
            DaemonConfig {
                name: "monitor.dash".into(),
                state_dir: state_dir.clone(),
                watch: serde_json::Value::Null,
                interval_ms: 100,
                address: "127.0.0.1".into(),
                listen: 1,
                token: None,
                hosts: vec![],
                alerts: vec![],
            },
            fake_describer(),
        );
        c.tick();
        let st = c.status();
        assert_eq!(st.services.len(), 1);
        let web = &st.services[0];
        assert_eq!((web.name.as_str(), web.up, web.total), ("web", 1, 2));
        let (r0, r1) = (&web.replicas[0], &web.replicas[1]);
        assert_eq!(
            (r0.state.as_str(), r1.state.as_str()),
            ("UP", "DOWN"),
            "{st:?}"
        );
        assert!(
            r1.last_error.as_deref().unwrap().contains("connect"),
            "{r1:?}"
        );
        // 6 requests reached web[0] in the window (one of them 502), 1 reached web[1] (502).
        assert_eq!(r0.requests_in_window, 6, "{r0:?}");
        assert!((r0.requests_per_second - 0.6).abs() < 1e-9);
        assert!((r0.error_ratio - 1.0 / 6.0).abs() < 1e-9, "{r0:?}");
        assert_eq!((r1.requests_in_window, r1.error_ratio), (1, 1.0));
        assert_eq!(r0.history.len(), 1);
        assert!(r0.history[0].is_some() && r1.history[0].is_none());
        // The heartbeat: one point, 1 of 2 healthy.
        assert_eq!(web.heartbeat.len(), 1, "{web:?}");
        assert_eq!((web.heartbeat[0].1, web.heartbeat[0].2), (1, 2));
        assert_eq!(web.fewest_up, Some(1));

        let b = &st.balancers[0];
        assert_eq!(
            (b.name.as_str(), b.state.as_str()),
            ("front", "UP"),
            "{b:?}"
        );
        assert_eq!(b.target, format!("http://127.0.0.1:{bport}"));
        assert!((b.requests_per_second.unwrap() - 0.6).abs() < 1e-9, "{b:?}");
        let f = &st.flags[0];
        assert_eq!((f.name.as_str(), f.state.as_str()), ("ff", "UP"), "{f:?}");

        let m = super::super::server::metrics(&st);
        for want in [
            "pipeline_replica_up{service=\"web\",replica=\"service.web[0]\"} 1",
            "pipeline_replica_up{service=\"web\",replica=\"service.web[1]\"} 0",
            "pipeline_replica_error_ratio{service=\"web\",replica=\"service.web[1]\"} 1",
            "pipeline_balancer_up{balancer=\"front\",address=\"balancer.front\"} 1",
            "pipeline_flags_up{flags=\"ff\",address=\"flags.ff\"} 1",
        ] {
            assert!(m.contains(want), "{want}\n{m}");
        }
        if let Ok(mut p) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            p.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
            let out = p.wait_with_output().unwrap();
            assert!(out.status.success(), "promtool: {out:?}\n{m}");
        }

        // New log lines are picked up on the next tick; the balancer going away shows DOWN.
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(
            f,
            "{:.3} 500 0.001 127.0.0.1:{up} 500",
            now_ms() as f64 / 1000.0
        )
        .unwrap();
        drop(balancer);
        c.tick();
        let st = c.status();
        assert_eq!(st.services[0].replicas[0].requests_in_window, 7);
        assert_eq!(st.balancers[0].state, "DOWN");
    }

    /// Gone, or a zombie nobody waits for.
    fn gone(pid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        matches!(
            stat.rsplit_once(") ").map(|(_, r)| &r[..1]),
            None | Some("Z")
        )
    }

    fn pid_in(p: &std::path::Path) -> Option<i32> {
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    }

    #[test]
    fn a_balancer_log_streamed_by_a_command_is_followed_kept_and_its_command_killed() {
        let d = tempfile::tempdir().unwrap();
        let state_dir = d.path().join(".pipeline");
        let up = fake_server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        let balancer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bport = balancer.local_addr().unwrap().port();
        let mut store = pipeline_state::StateStore::open(&state_dir).unwrap();
        record(
            &mut store,
            "service.web[0]",
            "service",
            serde_json::json!({
                "address": "127.0.0.1", "port": up, "url": format!("http://127.0.0.1:{up}")
            }),
        );
        // Stands for `ssh HOST tail -n0 -F LOG`: notes its pid, prints 3 lines (2 of them
        // 500s) stamped now, and runs on.
        let pidfile = |tag: &str| d.path().join(format!("{tag}.pid"));
        let stream = |tag: &str| {
            serde_json::json!(["sh", "-c", format!(
                "echo $$ > {}; for s in 200 500 500; do printf '%s %s 0.001 127.0.0.1:{up} %s\\n' \"$(date +%s.%N)\" $s $s; done; exec sleep 60",
                pidfile(tag).display()
            )])
        };
        let balancer_record = |tag: &str| {
            serde_json::json!({
                "url": format!("http://127.0.0.1:{bport}"), "access_log_argv": stream(tag)
            })
        };
        record(
            &mut store,
            "balancer.front",
            "balancer",
            balancer_record("one"),
        );
        let mut c = Collector::new(
            DaemonConfig {
                name: "monitor.dash".into(),
                state_dir: state_dir.clone(),
                watch: serde_json::Value::Null,
                interval_ms: 100,
                address: "127.0.0.1".into(),
                listen: 1,
                token: None,
                hosts: vec![],
                alerts: vec![],
            },
            fake_describer(),
        );
        let counted = |c: &mut Collector, n: usize| {
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                c.tick();
                let st = c.status();
                let r = &st.services[0].replicas[0];
                if r.requests_in_window >= n || Instant::now() > until {
                    return st;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let st = counted(&mut c, 3);
        let (r, b) = (&st.services[0].replicas[0], &st.balancers[0]);
        assert_eq!(r.requests_in_window, 3, "{st:?}");
        assert!((r.error_ratio - 2.0 / 3.0).abs() < 1e-9, "{r:?}");
        assert!((b.requests_per_second.unwrap() - 0.3).abs() < 1e-9, "{b:?}");
        assert!((b.error_ratio.unwrap() - 2.0 / 3.0).abs() < 1e-9, "{b:?}");
        let one = pid_in(&pidfile("one")).expect("the command ran");

        // Discovered and described again: the same command goes on (a new one would print its
        // 3 lines again).
        for _ in 0..3 {
            c.last_discovery = None;
            c.described_at = None;
            c.tick();
        }
        assert_eq!(c.tails.len(), 1);
        assert!(!gone(one), "the command was kept");
        assert_eq!(c.status().services[0].replicas[0].requests_in_window, 3);

        // Described with another command: the old one is killed, the new one followed.
        record(
            &mut store,
            "balancer.front",
            "balancer",
            balancer_record("two"),
        );
        c.last_discovery = None;
        c.tick();
        assert!(gone(one), "the command of the old description was killed");
        let st = counted(&mut c, 6);
        assert_eq!(st.services[0].replicas[0].requests_in_window, 6, "{st:?}");
        let two = pid_in(&pidfile("two")).expect("the new command ran");
        assert_eq!(c.tails.len(), 1);

        // The balancer leaves the state: its command is killed.
        store
            .record(pipeline_state::JournalEntry::Remove {
                addr: "balancer.front".into(),
            })
            .unwrap();
        c.last_discovery = None;
        c.tick();
        assert!(c.status().balancers.is_empty());
        assert_eq!(c.tails.len(), 0);
        assert!(gone(two), "the command of a balancer gone was killed");

        // The collector dropped (the daemon stops): its commands are killed.
        record(
            &mut store,
            "balancer.front",
            "balancer",
            balancer_record("three"),
        );
        c.last_discovery = None;
        c.tick();
        let three = pid_in(&pidfile("three"));
        let until = Instant::now() + Duration::from_secs(10);
        let three = loop {
            match pid_in(&pidfile("three")).or(three) {
                Some(p) => break p,
                None if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                None => panic!("the third command did not run"),
            }
        };
        assert!(!gone(three));
        drop(c);
        assert!(gone(three), "the collector's commands die with it");
    }
}
