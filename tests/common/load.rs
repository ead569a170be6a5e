//! A bounded HTTP load generator and a heartbeat sampler, for tests that must show zero failed
//! requests while something changes underneath.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub sent: u64,
    pub ok: u64,
    /// Non-200 answers, resets, timeouts: every one counts.
    pub failed: u64,
    /// Requests sent again because a reused keep-alive connection was closed by the server
    /// before any byte of the answer (RFC 9112 9.3.1); only with `retry_stale`.
    pub stale_retries: u64,
    pub errors: Vec<String>,
    pub latencies_ms: Vec<f64>,
    /// Response bodies seen, counted (to tell versions apart).
    pub bodies: std::collections::BTreeMap<String, u64>,
}

impl LoadReport {
    pub fn percentile(&self, p: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if v.is_empty() {
            return 0.0;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
    pub fn summary(&self) -> String {
        format!(
            "{} requests, {} ok, {} failed, {} stale keep-alive retries, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.sent,
            self.ok,
            self.failed,
            self.stale_retries,
            self.percentile(0.5),
            self.percentile(0.99),
            self.percentile(1.0)
        )
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// `rate` requests per second in total from `clients` threads; each keeps one connection alive
/// (`keep_alive`) or opens one per request. Stops by itself after `max` at the latest.
#[allow(clippy::too_many_arguments)]
pub fn start(
    host_port: &str,
    method: &str,
    path: &str,
    body: &str,
    rate: u32,
    clients: u32,
    keep_alive: bool,
    max: Duration,
) -> Load {
    start_with(
        host_port, method, path, body, rate, clients, keep_alive, false, max,
    )
}

/// As `start`; with `retry_stale`, behave like a standard HTTP client: a request whose reused
/// keep-alive connection was closed before any byte of the answer is sent once more on a new
/// connection (and counted in `stale_retries`).
#[allow(clippy::too_many_arguments)]
pub fn start_with(
    host_port: &str,
    method: &str,
    path: &str,
    body: &str,
    rate: u32,
    clients: u32,
    keep_alive: bool,
    retry_stale: bool,
    max: Duration,
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let interval = Duration::from_secs_f64(clients as f64 / rate as f64);
    let started = Instant::now();
    let threads = (0..clients)
        .map(|c| {
            let (stop, report) = (stop.clone(), report.clone());
            let (host_port, method, path, body) = (
                host_port.to_string(),
                method.to_string(),
                path.to_string(),
                body.to_string(),
            );
            std::thread::spawn(move || {
                let mut conn: Option<BufReader<TcpStream>> = None;
                let mut next = Instant::now() + interval.mul_f64(c as f64 / clients as f64);
                while !stop.load(Ordering::SeqCst) && started.elapsed() < max {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    next += interval;
                    let t0 = Instant::now();
                    let reused = conn.is_some();
                    let mut result = request(&mut conn, &host_port, &method, &path, &body, keep_alive);
                    let stale = matches!(&result, Err(e) if e.starts_with("connection closed before") || e.starts_with("write") || e.starts_with("read status"));
                    if retry_stale && reused && stale {
                        report.lock().unwrap().stale_retries += 1;
                        conn = None;
                        result = request(&mut conn, &host_port, &method, &path, &body, keep_alive);
                    }
                    let ms = t0.elapsed().as_secs_f64() * 1000.0;
                    let mut r = report.lock().unwrap();
                    r.sent += 1;
                    match result {
                        Ok((200, b)) => {
                            r.ok += 1;
                            r.latencies_ms.push(ms);
                            *r.bodies.entry(b).or_default() += 1;
                        }
                        Ok((code, b)) => {
                            r.failed += 1;
                            r.errors.push(format!(
                                "HTTP {code}: {}",
                                b.chars().take(120).collect::<String>()
                            ));
                            conn = None;
                        }
                        Err(e) => {
                            r.failed += 1;
                            r.errors.push(e);
                            conn = None;
                        }
                    }
                }
            })
        })
        .collect();
    Load {
        stop,
        report,
        threads,
    }
}

fn request(
    conn: &mut Option<BufReader<TcpStream>>,
    host_port: &str,
    method: &str,
    path: &str,
    body: &str,
    keep_alive: bool,
) -> Result<(u16, String), String> {
    if conn.is_none() {
        let s = TcpStream::connect(host_port).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.set_nodelay(true).ok();
        *conn = Some(BufReader::new(s));
    }
    let r = conn.as_mut().unwrap();
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}", body.len());
    r.get_mut()
        .write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("read status: {e}"))?;
    if line.is_empty() {
        return Err("connection closed before a response".into());
    }
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("bad status line {line:?}"))?;
    let mut len = 0usize;
    let mut close = !keep_alive;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)
            .map_err(|e| format!("read header: {e}"))?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
    }
    let mut b = vec![0; len];
    r.read_exact(&mut b)
        .map_err(|e| format!("read body: {e}"))?;
    if close {
        *conn = None;
    }
    Ok((code, String::from_utf8_lossy(&b).into_owned()))
}

impl Load {
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let r = self.report.lock().unwrap().clone();
        r
    }
}

/// Samples, every `period`, how many of `urls` answer GET `path` with 200 (1 s timeout).
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    min: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<()>,
}

pub fn heartbeat(urls: Vec<String>, path: &str, period: Duration, max: Duration) -> Heartbeat {
    let stop = Arc::new(AtomicBool::new(false));
    let min = Arc::new(AtomicU64::new(u64::MAX));
    let samples = Arc::new(AtomicU64::new(0));
    let (s2, m2, n2, path) = (stop.clone(), min.clone(), samples.clone(), path.to_string());
    let handle = std::thread::spawn(move || {
        let started = Instant::now();
        while !s2.load(Ordering::SeqCst) && started.elapsed() < max {
            let t0 = Instant::now();
            let healthy = urls
                .iter()
                .filter(|u| {
                    super::http("GET", &format!("{u}{path}"), "").is_some_and(|(c, _)| c == 200)
                })
                .count() as u64;
            m2.fetch_min(healthy, Ordering::SeqCst);
            n2.fetch_add(1, Ordering::SeqCst);
            if let Some(rest) = period.checked_sub(t0.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    });
    Heartbeat {
        stop,
        min,
        samples,
        handle,
    }
}

impl Heartbeat {
    /// (fewest healthy seen, samples taken)
    pub fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.handle.join();
        (
            self.min.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}

/// An idle TCP port on loopback, reserved the same way the engine reserves its own.
pub fn free_port() -> u16 {
    pipeline_supervise::free_port("127.0.0.1").unwrap()
}
