//! The daemon's HTTP side: a small HTTP/1.1 server on a std `TcpListener` (one short-lived
//! thread per connection), serving the dashboard, `/api/status`, `/metrics` and `/healthz`.

use super::collect::{Collector, Status};
use super::DaemonConfig;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DASHBOARD: &str = include_str!("dashboard.html");

pub fn run(cfg: DaemonConfig) -> Result<(), String> {
    let listener = TcpListener::bind((cfg.address.as_str(), cfg.listen))
        .map_err(|e| format!("cannot listen on {}:{}: {e}", cfg.address, cfg.listen))?;
    eprintln!(
        "pipeline monitor {} listening on {}:{}, state {}, every {} ms",
        cfg.name,
        cfg.address,
        cfg.listen,
        cfg.state_dir.display(),
        cfg.interval_ms
    );
    let shared = Arc::new(Mutex::new(Status {
        monitor: cfg.name.clone(),
        ..Default::default()
    }));
    let publish = shared.clone();
    std::thread::Builder::new()
        .name("collector".into())
        .spawn(move || {
            let mut c = Collector::new(cfg);
            loop {
                let start = Instant::now();
                c.tick();
                let st = c.status();
                *publish.lock().unwrap_or_else(|e| e.into_inner()) = st;
                std::thread::sleep(c.interval().saturating_sub(start.elapsed()));
            }
        })
        .map_err(|e| format!("cannot start the collector: {e}"))?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || handle(conn, &shared));
    }
    Ok(())
}

fn handle(mut s: TcpStream, shared: &Mutex<Status>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target.split('?').next().unwrap_or("/");
    let snapshot = || shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (code, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/") | ("GET" | "HEAD", "/index.html") => {
            (200, "text/html; charset=utf-8", DASHBOARD.to_string())
        }
        ("GET" | "HEAD", "/api/status") => (
            200,
            "application/json",
            serde_json::to_string(&snapshot()).unwrap_or_else(|_| "{}".into()),
        ),
        ("GET" | "HEAD", "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(&snapshot()),
        ),
        ("GET" | "HEAD", "/healthz") => (200, "text/plain; charset=utf-8", "ok\n".into()),
        ("GET" | "HEAD", _) => (404, "text/plain; charset=utf-8", "not found\n".into()),
        _ => (
            405,
            "text/plain; charset=utf-8",
            "method not allowed\n".into(),
        ),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let mut resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        resp.extend_from_slice(body.as_bytes());
    }
    let _ = s.write_all(&resp);
    let _ = s.flush();
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
        "Resident memory of the replica's processes.",
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
    family(
        &mut out,
        "pipeline_flags_up",
        "gauge",
        "Whether the flag store answers (1) or not (0).",
        &endpoints(&st.flags, "flags"),
    );
    out
}
