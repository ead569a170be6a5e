//! The daemon's HTTP side: a small HTTP/1.1 server on one tokio thread, serving the dashboard,
//! `/api/status`, `/metrics` and `/healthz`.
//!
//! Ready to leave loopback: at most [`MAX_CONNECTIONS`] connections are open (a new one evicts
//! the oldest that has not finished sending its request head), a head must arrive within
//! [`HEAD_DEADLINE`] and an answer leave within [`WRITE_DEADLINE`] (slow clients cannot pile up
//! threads or sockets); `Host` must name an address the daemon serves (DNS rebinding gets 421);
//! with a token every path but `/healthz` needs `Authorization: Bearer TOKEN` or basic auth with
//! the token as password (401 otherwise).

use super::collect::{Collector, Describer, Status};
use super::DaemonConfig;
use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::AbortHandle;

const DASHBOARD: &str = include_str!("dashboard.html");

/// Open connections at most; past it the oldest still sending its head is closed.
pub const MAX_CONNECTIONS: usize = 256;
/// The whole request head must arrive within this.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// The whole answer must be taken within this.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 16 * 1024;

/// Who may ask: the `Host` names that reach this daemon, and the token if one is set.
pub struct Gate {
    port: u16,
    hosts: HashSet<String>,
    token: Option<String>,
}

impl Gate {
    pub fn new(cfg: &DaemonConfig) -> Gate {
        let mut hosts: HashSet<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|h| h.to_string())
            .collect();
        hosts.insert(cfg.address.to_ascii_lowercase());
        let wildcard = cfg
            .address
            .parse::<IpAddr>()
            .is_ok_and(|a| a.is_unspecified());
        if wildcard {
            hosts.extend(local_addresses().iter().map(IpAddr::to_string));
            if let Some(h) = hostname() {
                hosts.insert(h.to_ascii_lowercase());
            }
        }
        hosts.extend(cfg.hosts.iter().map(|h| h.to_ascii_lowercase()));
        Gate {
            port: cfg.listen,
            hosts,
            token: cfg.token.clone().filter(|t| !t.is_empty()),
        }
    }

    /// `host` (a Host header's value) names this daemon and its port.
    fn host_ok(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let (name, port) = if let Some(rest) = host.strip_prefix('[') {
            match rest.split_once(']') {
                Some((ip, tail)) => (ip.to_string(), tail.strip_prefix(':')),
                None => return false,
            }
        } else {
            match host.rsplit_once(':') {
                Some((n, p)) => (n.to_string(), Some(p)),
                None => (host.clone(), None),
            }
        };
        let port_ok = port.is_none_or(|p| p.parse::<u16>() == Ok(self.port));
        port_ok && self.hosts.contains(name.trim_end_matches('.'))
    }

    fn authorized(&self, authorization: Option<&str>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(a) = authorization.map(str::trim) else {
            return false;
        };
        let given = if let Some(b) = strip_prefix_ci(a, "bearer ") {
            b.trim().as_bytes().to_vec()
        } else if let Some(b) = strip_prefix_ci(a, "basic ") {
            match base64_decode(b.trim()) {
                // Any user name; the token is the password.
                Some(pair) => match pair.iter().position(|&c| c == b':') {
                    Some(i) => pair[i + 1..].to_vec(),
                    None => return false,
                },
                None => return false,
            }
        } else {
            return false;
        };
        constant_time_eq(&given, token.as_bytes())
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(prefix))
        .map(|_| &s[prefix.len()..])
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in b.iter().enumerate() {
        diff |= (x ^ a.get(i).copied().unwrap_or(!x)) as usize;
    }
    diff == 0
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

/// Addresses of this machine's interfaces (what a wildcard bind serves).
fn local_addresses() -> Vec<IpAddr> {
    let mut out = vec![];
    let mut ifs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free with freeifaddrs.
    unsafe {
        if libc::getifaddrs(&mut ifs) != 0 {
            return out;
        }
        let mut p = ifs;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() {
                match (*a).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(ifs);
    }
    out
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates within it.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&buf[..end]).ok().map(str::to_string)
}

/// `dir`: the daemon's run directory (its firing alerts are published there).
pub fn run(cfg: DaemonConfig, dir: &std::path::Path, describer: Describer) -> Result<(), String> {
    let listener = std::net::TcpListener::bind((cfg.address.as_str(), cfg.listen))
        .map_err(|e| format!("cannot listen on {}:{}: {e}", cfg.address, cfg.listen))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {}:{}: {e}", cfg.address, cfg.listen))?;
    // Never panics on a stderr that cannot be written (a full disk).
    let _ = writeln!(
        Stderr,
        "pipeline monitor {} listening on {}:{}{}, state {}, every {} ms",
        cfg.name,
        cfg.address,
        cfg.listen,
        if cfg.token.is_some() {
            " (token required)"
        } else {
            ""
        },
        cfg.state_dir.display(),
        cfg.interval_ms
    );
    let gate = Arc::new(Gate::new(&cfg));
    let shared = Arc::new(Mutex::new(Status {
        monitor: cfg.name.clone(),
        ..Default::default()
    }));
    let publish = shared.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot start the server's runtime: {e}"))?;
    // Before the collector starts anything: a stop request (the supervisor's SIGTERM to this
    // process's group) must reach the code below, not end the process where it stands.
    let stopped = {
        let _in = rt.enter();
        Stopped::new().map_err(|e| format!("cannot handle stop signals: {e}"))?
    };
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("collector".into())
        .spawn(move || {
            let mut c = Collector::new(cfg, describer);
            c.alerts.publish_to(dir);
            loop {
                let start = Instant::now();
                c.tick();
                let mut st = c.status();
                c.alerts.evaluate(&mut st);
                *publish.lock().unwrap_or_else(|e| e.into_inner()) = st;
                let rest = c.interval().saturating_sub(start.elapsed());
                if !matches!(
                    stop_rx.recv_timeout(rest),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                ) {
                    break;
                }
            }
            // The followers of remote access logs kill their commands (ssh) here: they run in
            // process groups of their own, which the supervisor's signals do not reach.
            drop(c);
            let _ = done_tx.send(());
        })
        .map_err(|e| format!("cannot start the collector: {e}"))?;
    let out = rt.block_on(async {
        tokio::select! {
            r = serve(listener, shared, gate) => r,
            sig = stopped.wait() => {
                let _ = writeln!(Stderr, "pipeline monitor: {sig}: stopping");
                Ok(())
            }
        }
    });
    drop(stop_tx);
    if done_rx.recv_timeout(COLLECTOR_STOP).is_err() {
        let _ = writeln!(
            Stderr,
            "pipeline monitor: the collector did not stop within {} s",
            COLLECTOR_STOP.as_secs()
        );
    }
    out
}

/// How long the collector may take to finish its tick and stop its followers on exit (below the
/// supervisor's 5 s between SIGTERM and SIGKILL).
const COLLECTOR_STOP: Duration = Duration::from_secs(4);

/// SIGTERM, SIGINT and SIGHUP, caught so that the daemon stops in order.
struct Stopped {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Stopped {
    /// Within a tokio runtime.
    fn new() -> std::io::Result<Stopped> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Stopped {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
    /// The name of the first signal received.
    async fn wait(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// `write!` target for stderr that ignores errors instead of panicking like `eprintln!`.
struct Stderr;
impl std::fmt::Write for Stderr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        use std::io::Write;
        let _ = std::io::stderr().write_all(s.as_bytes());
        Ok(())
    }
}

/// Connections still sending their head, oldest first: the ones evicted when full.
type Reading = Mutex<VecDeque<(u64, AbortHandle)>>;

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Mutex<Status>>,
    gate: Arc<Gate>,
) -> Result<(), String> {
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| format!("cannot listen: {e}"))?;
    let open = Arc::new(AtomicUsize::new(0));
    let reading: Arc<Reading> = Arc::new(Mutex::new(VecDeque::new()));
    let ids = AtomicU64::new(0);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            // Out of descriptors or a connection that died in the queue: breathe, go on.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            let mut r = reading.lock().unwrap_or_else(|e| e.into_inner());
            r.retain(|(_, h)| !h.is_finished());
            match r.pop_front() {
                Some((_, h)) => h.abort(),
                // Every connection is busy answering: refuse this one.
                None => continue,
            }
        }
        open.fetch_add(1, Ordering::SeqCst);
        let id = ids.fetch_add(1, Ordering::SeqCst);
        let task = tokio::spawn(connection(
            stream,
            id,
            OpenGuard(open.clone()),
            reading.clone(),
            shared.clone(),
            gate.clone(),
        ));
        reading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((id, task.abort_handle()));
    }
}

/// Counts an open connection until its task ends or is aborted.
struct OpenGuard(Arc<AtomicUsize>);
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(
    mut s: tokio::net::TcpStream,
    id: u64,
    _open: OpenGuard,
    reading: Arc<Reading>,
    shared: Arc<Mutex<Status>>,
    gate: Arc<Gate>,
) {
    let head = tokio::time::timeout(HEAD_DEADLINE, read_head(&mut s)).await;
    reading
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(i, _)| *i != id);
    let Ok(Some(head)) = head else { return };
    let resp = respond(&head, &shared, &gate);
    let _ = tokio::time::timeout(WRITE_DEADLINE, async {
        let _ = s.write_all(&resp).await;
        let _ = s.shutdown().await;
    })
    .await;
}

/// The request head (up to the blank line), or None when the client closed or sent too much.
async fn read_head(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() >= MAX_HEAD {
            return None;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(buf)
}

/// The whole answer to one request head.
fn respond(head: &[u8], shared: &Mutex<Status>, gate: &Gate) -> Vec<u8> {
    let head = String::from_utf8_lossy(head);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target.split('?').next().unwrap_or("/");
    let header = |name: &str| {
        head.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let text = "text/plain; charset=utf-8";
    let snapshot = || shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (code, ctype, body) = match header("host") {
        None => (400, text, "a Host header is required\n".to_string()),
        Some(h) if !gate.host_ok(&h) => (
            421,
            text,
            "this server does not answer for that Host\n".to_string(),
        ),
        _ if !matches!(method, "GET" | "HEAD") => (405, text, "method not allowed\n".into()),
        // The supervisor's liveness probe: says nothing, needs no token.
        _ if path == "/healthz" => (200, text, "ok\n".into()),
        _ if !gate.authorized(header("authorization").as_deref()) => {
            (401, text, "a token is required\n".into())
        }
        _ => match path {
            "/" | "/index.html" => (200, "text/html; charset=utf-8", DASHBOARD.to_string()),
            "/api/status" => (
                200,
                "application/json",
                serde_json::to_string(&snapshot()).unwrap_or_else(|_| "{}".into()),
            ),
            "/metrics" => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics(&snapshot()),
            ),
            _ => (404, text, "not found\n".into()),
        },
    };
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        421 => "Misdirected Request",
        _ => "Method Not Allowed",
    };
    let challenge = if code == 401 {
        "WWW-Authenticate: Basic realm=\"pipeline monitor\", charset=\"UTF-8\"\r\n"
    } else {
        ""
    };
    let mut resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{challenge}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        resp.extend_from_slice(body.as_bytes());
    }
    resp
}

fn label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// One metric family: HELP, TYPE and its samples (`labels` already rendered).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {}", num(*v));
    }
}

/// The Prometheus text exposition format (0.0.4).
pub fn metrics(st: &Status) -> String {
    let mut out = String::new();
    let replicas: Vec<_> = st
        .services
        .iter()
        .flat_map(|s| s.replicas.iter())
        .map(|r| {
            (
                format!(
                    "service=\"{}\",replica=\"{}\"",
                    label(&r.service),
                    label(&r.address)
                ),
                r,
            )
        })
        .collect();
    let series = |f: &dyn Fn(&super::collect::ReplicaView) -> Option<f64>| -> Vec<(String, f64)> {
        replicas
            .iter()
            .filter_map(|(l, r)| f(r).map(|v| (l.clone(), v)))
            .collect()
    };
    family(
        &mut out,
        "pipeline_replica_up",
        "gauge",
        "Whether the replica's last health probe succeeded (1) or not (0).",
        &series(&|r| Some(r.up as u8 as f64)),
    );
    family(
        &mut out,
        "pipeline_replica_latency_seconds",
        "gauge",
        "Duration of the replica's last health probe.",
        &series(&|r| r.latency_ms.map(|l| l / 1000.0)),
    );
    family(
        &mut out,
        "pipeline_replica_requests_per_second",
        "gauge",
        "Requests a balancer sent to the replica per second, over the last 10 s of its access log.",
        &series(&|r| Some(r.requests_per_second)),
    );
    family(
        &mut out,
        "pipeline_replica_error_ratio",
        "gauge",
        "Share of the replica's requests answered with a 5xx status over the last 10 s.",
        &series(&|r| Some(r.error_ratio)),
    );
    family(
        &mut out,
        "pipeline_replica_cpu_ratio",
        "gauge",
        "CPU seconds per second used by the replica's processes (1 = one core).",
        &series(&|r| r.cpu_ratio),
    );
    family(
        &mut out,
        "pipeline_replica_memory_bytes",
        "gauge",
        "Memory of the replica's processes (resident; a unit's cgroup memory where the host has cgroup v2).",
        &series(&|r| r.memory_bytes.map(|m| m as f64)),
    );
    family(
        &mut out,
        "pipeline_replica_restarts",
        "gauge",
        "Restarts of the replica's process by its supervisor.",
        &series(&|r| Some(r.restarts as f64)),
    );
    family(
        &mut out,
        "pipeline_replica_uptime_seconds",
        "gauge",
        "Seconds since the replica's current process started.",
        &series(&|r| r.uptime_s.map(|u| u as f64)),
    );
    let endpoints = |v: &[super::collect::EndpointView], key: &str| -> Vec<(String, f64)> {
        v.iter()
            .map(|e| {
                (
                    format!(
                        "{key}=\"{}\",address=\"{}\"",
                        label(&e.name),
                        label(&e.address)
                    ),
                    e.up as u8 as f64,
                )
            })
            .collect()
    };
    family(
        &mut out,
        "pipeline_balancer_up",
        "gauge",
        "Whether the balancer accepts connections (1) or not (0).",
        &endpoints(&st.balancers, "balancer"),
    );
    let rates: Vec<(String, f64)> = st
        .balancers
        .iter()
        .filter_map(|b| {
            b.requests_per_second.map(|r| {
                (
                    format!(
                        "balancer=\"{}\",address=\"{}\"",
                        label(&b.name),
                        label(&b.address)
                    ),
                    r,
                )
            })
        })
        .collect();
    family(
        &mut out,
        "pipeline_balancer_requests_per_second",
        "gauge",
        "Requests per second through the balancer over the last 10 s of its access log.",
        &rates,
    );
    let errors: Vec<(String, f64)> = st
        .balancers
        .iter()
        .filter_map(|b| {
            b.error_ratio.map(|r| {
                (
                    format!(
                        "balancer=\"{}\",address=\"{}\"",
                        label(&b.name),
                        label(&b.address)
                    ),
                    r,
                )
            })
        })
        .collect();
    family(
        &mut out,
        "pipeline_balancer_error_ratio",
        "gauge",
        "Share of the balancer's requests answered with a 5xx status over the last 10 s of its access log.",
        &errors,
    );
    family(
        &mut out,
        "pipeline_flags_up",
        "gauge",
        "Whether the flag store answers (1) or not (0).",
        &endpoints(&st.flags, "flags"),
    );
    super::alerts::metrics(&st.alerts, &mut out);
    usage_metrics(&mut out, st);
    out
}

/// CPU and memory per service (sums over its replicas) and per host that instances run on;
/// a figure that is unknown has no sample.
fn usage_metrics(out: &mut String, st: &Status) {
    let services = |f: &dyn Fn(&super::collect::ServiceView) -> Option<f64>| -> Vec<(String, f64)> {
        st.services
            .iter()
            .filter_map(|s| f(s).map(|v| (format!("service=\"{}\"", label(&s.name)), v)))
            .collect()
    };
    family(
        out,
        "pipeline_service_cpu_ratio",
        "gauge",
        "CPU seconds per second used by the service's replicas together (1 = one core).",
        &services(&|s| s.cpu_ratio),
    );
    family(
        out,
        "pipeline_service_memory_bytes",
        "gauge",
        "Memory of the service's replicas together.",
        &services(&|s| s.memory_bytes.map(|m| m as f64)),
    );
    let hosts = |f: &dyn Fn(&super::collect::HostView) -> Option<f64>| -> Vec<(String, f64)> {
        st.hosts
            .iter()
            .filter_map(|h| f(h).map(|v| (format!("host=\"{}\"", label(&h.host)), v)))
            .collect()
    };
    family(
        out,
        "pipeline_host_cpu_ratio",
        "gauge",
        "CPU seconds per second used on the host, all processes (1 = one core).",
        &hosts(&|h| h.cpu_ratio),
    );
    family(
        out,
        "pipeline_host_cpus",
        "gauge",
        "CPUs of the host.",
        &hosts(&|h| h.cpus.map(f64::from)),
    );
    family(
        out,
        "pipeline_host_memory_bytes",
        "gauge",
        "Memory in use on the host (MemTotal - MemAvailable).",
        &hosts(&|h| h.memory_bytes.map(|m| m as f64)),
    );
    family(
        out,
        "pipeline_host_memory_total_bytes",
        "gauge",
        "Memory of the host (MemTotal).",
        &hosts(&|h| h.memory_total_bytes.map(|m| m as f64)),
    );
    family(
        out,
        "pipeline_host_up",
        "gauge",
        "Whether the host answered its last usage sample (1) or not (0).",
        &hosts(&|h| match (&h.memory_total_bytes, &h.error) {
            (Some(_), _) => Some(1.0),
            (None, Some(_)) => Some(0.0),
            (None, None) => None,
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(address: &str, token: Option<&str>) -> Gate {
        Gate::new(&DaemonConfig {
            name: "monitor.dash".into(),
            state_dir: "/nonexistent".into(),
            watch: serde_json::Value::Null,
            interval_ms: 100,
            address: address.into(),
            listen: 9900,
            token: token.map(str::to_string),
            hosts: vec!["dash.example.org".into()],
            alerts: vec![],
        })
    }

    #[test]
    fn host_names_this_daemon_or_is_refused() {
        let g = gate("127.0.0.1", None);
        for ok in [
            "127.0.0.1:9900",
            "localhost:9900",
            "LOCALHOST",
            "[::1]:9900",
            "dash.example.org:9900",
        ] {
            assert!(g.host_ok(ok), "{ok}");
        }
        for bad in [
            "evil.example:9900",
            "127.0.0.1:9901",
            "127.0.0.1.evil.example",
            "[::1",
            "",
            "localhost:x",
        ] {
            assert!(!g.host_ok(bad), "{bad}");
        }
        // A wildcard bind answers for this machine's own addresses.
        let w = gate("0.0.0.0", Some("t"));
        assert!(w.host_ok("0.0.0.0:9900") && w.host_ok("127.0.0.1:9900"));
        assert!(!w.host_ok("evil.example:9900"));
    }

    #[test]
    fn a_token_is_taken_as_bearer_or_basic_password_only() {
        let g = gate("0.0.0.0", Some("s3cret-token-0123"));
        assert!(g.authorized(Some("Bearer s3cret-token-0123")));
        assert!(g.authorized(Some("bearer   s3cret-token-0123 ")));
        // base64("me:s3cret-token-0123")
        assert!(g.authorized(Some("Basic bWU6czNjcmV0LXRva2VuLTAxMjM=")));
        assert!(!g.authorized(None));
        assert!(!g.authorized(Some("Bearer s3cret-token-012")));
        assert!(!g.authorized(Some("Bearer s3cret-token-01234")));
        assert!(!g.authorized(Some("s3cret-token-0123")));
        assert!(!g.authorized(Some("Basic !!!")));
        assert!(!g.authorized(Some("Bäsic x")));
        assert!(gate("127.0.0.1", None).authorized(None));
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
    }
}
