//! The `monitor` kind: a heartbeat daemon with a live dashboard, `/api/status` and `/metrics`,
//! checked through the real binary and, for the dashboard, in headless Chromium.

mod common;
use common::chromium::chromium;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn stack(src: &Path, listen: u16) -> String {
    format!(
        r#"service "web" {{
  replicas = 3
  source   = "{}"
  run      = "./preview --port {{{{port}}}}"
  health   = {{ path = "/health", interval = "100ms" }}
}}

monitor "dash" {{
  listen   = {listen}
  interval = "100ms"
}}

output "dashboard" {{
  value = monitor.dash.url
}}
"#,
        src.display()
    )
}

fn status_json(base: &str) -> Option<serde_json::Value> {
    let (code, body) = http("GET", &format!("{base}api/status"), "")?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// (replica address, state) of every replica of service `web` in /api/status.
fn replica_states(base: &str) -> Vec<(String, String)> {
    let Some(st) = status_json(base) else {
        return vec![];
    };
    st["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == "web")
        .flat_map(|s| s["replicas"].as_array().cloned().unwrap_or_default())
        .map(|r| {
            (
                r["address"].as_str().unwrap_or("").to_string(),
                r["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn all_up(states: &[(String, String)], n: usize) -> bool {
    states.len() == n && states.iter().all(|(_, s)| s == "UP")
}

fn dump_dom(url: &str) -> String {
    chromium(
        &[
            "--virtual-time-budget=3000".into(),
            "--run-all-compositor-stages-before-draw".into(),
            "--dump-dom".into(),
        ],
        url,
    )
}

/// The `data-state` of each replica row in the dashboard's DOM.
fn dom_states(dom: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let body = dom.split("<script").next().unwrap_or("");
    for part in body.split("data-replica=\"").skip(1) {
        let addr = part.split('"').next().unwrap_or("").replace("&quot;", "\"");
        let state = part
            .split("data-state=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("")
            .to_string();
        out.push((addr, state));
    }
    out
}

/// Stop every supervisor of a replica: its directory and any subdirectory with one.
fn stop_replica(dir: &Path) {
    let mut dirs = vec![dir.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for d in dirs {
        if d.join("supervisor.pid").exists() {
            pipeline_supervise::stop(&d, Duration::from_secs(10)).unwrap();
        }
    }
}

#[test]
fn dashboard_shows_replicas_and_follows_a_stopped_one() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    let port = pipeline_supervise::free_port("127.0.0.1").unwrap();
    t.write("s.hcl", &stack(&src, port));

    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(plan.contains("+ monitor \"dash\""), "{plan}");
    let applied = t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert!(applied.contains("Apply complete!"), "{applied}");
    let base = t.ok(&["output", "dashboard"]).trim().to_string();
    let base = if base.starts_with('"') {
        serde_json::from_str::<String>(&base).unwrap()
    } else {
        base
    };
    assert_eq!(base, format!("http://127.0.0.1:{port}/"));

    // The daemon runs under a supervisor in .pipeline/run/monitor.dash/ with its config.
    let dir = t.path().join(".pipeline/run/monitor.dash");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["listen"], port);
    assert_eq!(config["interval_ms"], 100);
    assert!(pipeline_supervise::status(&dir).unwrap().supervisor_alive);
    assert_eq!(http("GET", &format!("{base}healthz"), "").unwrap().0, 200);

    // /api/status: three replicas, all up, with process figures.
    assert!(
        wait_until(Duration::from_secs(10), || all_up(
            &replica_states(&base),
            3
        )),
        "replicas not all UP: {:?}",
        replica_states(&base)
    );
    let st = status_json(&base).unwrap();
    let reps = st["services"][0]["replicas"].as_array().unwrap().clone();
    let names: Vec<&str> = reps
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["service.web[0]", "service.web[1]", "service.web[2]"]
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            status_json(&base).is_some_and(|st| {
                st["services"][0]["replicas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| {
                        r["memory_bytes"].as_u64().unwrap_or(0) > 0 && r["cpu_ratio"].is_number()
                    })
            })
        }),
        "no CPU/memory figures: {}",
        status_json(&base).unwrap()
    );
    for r in &reps {
        assert!(r["latency_ms"].as_f64().unwrap() < 1000.0, "{r}");
        assert_eq!(r["restarts"], 0, "{r}");
    }

    // /metrics: the series, in a format promtool accepts.
    let (code, metrics) = http("GET", &format!("{base}metrics"), "").unwrap();
    assert_eq!(code, 200);
    for i in 0..3 {
        assert!(
            metrics.contains(&format!(
                "pipeline_replica_up{{service=\"web\",replica=\"service.web[{i}]\"}} 1"
            )),
            "{metrics}"
        );
    }
    for family in [
        "pipeline_replica_latency_seconds",
        "pipeline_replica_requests_per_second",
        "pipeline_replica_error_ratio",
        "pipeline_replica_cpu_ratio",
        "pipeline_replica_memory_bytes",
        "pipeline_balancer_up",
        "pipeline_flags_up",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family} gauge")),
            "{family}:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(
            "pipeline_replica_latency_seconds{service=\"web\",replica=\"service.web[2]\"} "
        ),
        "{metrics}"
    );
    if let Ok(mut p) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        p.stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}\n{metrics}",
            s(&out.stdout),
            s(&out.stderr)
        );
    }

    // The dashboard in a browser: three replicas, all UP.
    let dom = dump_dom(&base);
    assert!(dom.contains("service web"), "{dom}");
    let states = dom_states(&dom);
    assert!(all_up(&states, 3), "{states:?}\n{dom}");

    // Stop replica 1: the monitor notices, the dashboard shows it DOWN and the others UP.
    stop_replica(&t.path().join(".pipeline/run/service.web_1_"));
    assert!(
        wait_until(Duration::from_secs(10), || {
            replica_states(&base)
                .iter()
                .any(|(a, s)| a == "service.web[1]" && s == "DOWN")
        }),
        "{:?}",
        replica_states(&base)
    );
    // The heartbeat series: every point counts 3 instances, and the stop shows as 2 healthy;
    // the dashboard draws it.
    let st = status_json(&base).unwrap();
    let beat = st["services"][0]["heartbeat"].as_array().unwrap().clone();
    assert!(beat.len() >= 2, "{st}");
    assert!(beat.iter().all(|b| b[2] == 3), "{beat:?}");
    let all_up_at = beat
        .iter()
        .position(|b| b[1] == 3)
        .expect("3 of 3 healthy once");
    assert_eq!(beat.last().unwrap()[1], 2, "{beat:?}");
    assert!(beat[all_up_at..].iter().any(|b| b[1] == 2), "{beat:?}");
    let dom = dump_dom(&base);
    assert!(
        dom.contains("<svg class=\"beat\""),
        "no heartbeat chart:\n{dom}"
    );
    assert!(dom.contains("healthy over the last"), "{dom}");
    let states = dom_states(&dom);
    let want: Vec<(String, String)> = [
        ("service.web[0]", "UP"),
        ("service.web[1]", "DOWN"),
        ("service.web[2]", "UP"),
    ]
    .iter()
    .map(|(a, s)| (a.to_string(), s.to_string()))
    .collect();
    assert_eq!(states, want, "{dom}");
    let (_, metrics) = http("GET", &format!("{base}metrics"), "").unwrap();
    assert!(
        metrics.contains("pipeline_replica_up{service=\"web\",replica=\"service.web[1]\"} 0"),
        "{metrics}"
    );

    // A screenshot as a test artefact.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("monitor-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &[
            "--virtual-time-budget=3000".into(),
            "--run-all-compositor-stages-before-draw".into(),
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,800".into(),
        ],
        &base,
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 10_000, "screenshot is only {} bytes", png.len());
    eprintln!("dashboard screenshot: {}", shot.display());

    // Destroy stops the daemon and removes its directory; nothing is left running.
    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
    assert!(!dir.exists());
    assert!(t.processes().is_empty(), "{:?}", t.processes());
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
}

#[test]
fn a_busy_dashboard_port_is_a_plan_error() {
    let t = Scratch::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    t.write(
        "s.hcl",
        &format!("monitor \"dash\" {{\n  listen = {port}\n}}\n"),
    );
    let out = t.run(&["plan", "s.hcl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = s(&out.stderr);
    assert!(
        err.contains(&format!(
            "the dashboard port {port} on 127.0.0.1 is not available"
        )),
        "{err}"
    );
    assert!(err.contains("pick a free port for `listen`"), "{err}");

    t.write(
        "s.hcl",
        "monitor \"dash\" {\n  listen   = 70000\n  interval = \"soon\"\n}\n",
    );
    let out = t.run(&["plan", "s.hcl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = s(&out.stderr);
    assert!(err.contains("70000 is not a TCP port"), "{err}");
    assert!(err.contains("\"soon\" is not a duration"), "{err}");
}

// ---- issue 8, item 11: the dashboard is ready to leave loopback ----

/// Applies `text` and returns the monitor daemon's pid (the supervisor's child: `exec`s itself).
fn apply_monitor(t: &Scratch, text: &str) -> u32 {
    t.write("s.hcl", text);
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let dir = t.path().join(".pipeline/run/monitor.dash");
    pipeline_supervise::status(&dir)
        .and_then(|s| s.child_pid)
        .expect("the monitor runs")
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// One raw request; the whole answer (head and body).
fn raw(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn get(port: u16, path: &str, host: &str, extra: &str) -> String {
    raw(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"),
    )
}

fn code(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn slow_connections_leave_the_dashboard_bounded_and_answering() {
    let t = Scratch::new();
    let port = pipeline_supervise::free_port("127.0.0.1").unwrap();
    let pid = apply_monitor(&t, &format!("monitor \"dash\" {{\n  listen = {port}\n}}\n"));
    let before = threads_of(pid);

    // 3000 clients that send half a request head and then nothing (slowloris), all on loopback.
    let mut slow = Vec::new();
    let mut refused = 0;
    for _ in 0..3000 {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                use std::io::Write;
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
                slow.push(s);
            }
            Err(_) => refused += 1,
        }
    }
    // Give the daemon time to accept what it will; note its largest thread count meanwhile.
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(threads_of(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    // A normal request is answered while the slow ones are still open.
    let ok = get(port, "/healthz", &format!("127.0.0.1:{port}"), "");
    most = most.max(threads_of(pid));
    eprintln!(
        "3000 slow connections ({refused} not connected): the monitor had {before} threads before, at most {most} during"
    );
    assert!(
        most <= 16,
        "the monitor grew to {most} threads under slow connections"
    );
    assert_eq!(code(&ok), 200, "{ok}");
    drop(slow);
    assert_eq!(
        code(&get(port, "/api/status", "localhost", "")),
        200,
        "after the slow clients left"
    );
}

#[test]
fn a_request_for_another_host_is_refused() {
    let t = Scratch::new();
    let port = pipeline_supervise::free_port("127.0.0.1").unwrap();
    apply_monitor(&t, &format!("monitor \"dash\" {{\n  listen = {port}\n}}\n"));
    // DNS rebinding: a page of attacker.example whose name now resolves to 127.0.0.1.
    for host in [
        format!("attacker.example:{port}"),
        "attacker.example".to_string(),
        format!("127.0.0.1.attacker.example:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
    ] {
        let resp = get(port, "/api/status", &host, "");
        assert_eq!(code(&resp), 421, "Host: {host}\n{resp}");
        assert!(!resp.contains("\"services\""), "{resp}");
    }
    let no_host = raw(
        port,
        "GET /api/status HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code(&no_host), 400, "{no_host}");
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        assert_eq!(code(&get(port, "/api/status", &host, "")), 200, "{host}");
    }
}

#[test]
fn a_dashboard_off_loopback_needs_a_token_and_keeps_it_secret() {
    let t = Scratch::new();
    let port = pipeline_supervise::free_port("127.0.0.1").unwrap();
    // Without a token a wildcard listen is a plan error at the monitor's `address`.
    t.write(
        "s.hcl",
        &format!("monitor \"dash\" {{\n  listen  = {port}\n  address = \"0.0.0.0\"\n}}\n"),
    );
    let out = t.run(&["plan", "s.hcl"]);
    let err = s(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("s.hcl:3:"), "{err}");
    assert!(err.contains("token"), "{err}");
    assert!(!t.path().join(".pipeline/run").exists());

    let token = "tok-3f9a1c7e5b2d4e6f8a0b";
    t.env
        .borrow_mut()
        .push(("PIPELINE_VAR_dash_token".into(), token.into()));
    let stack = format!(
        "variable \"dash_token\" {{\n  sensitive = true\n}}\n\nmonitor \"dash\" {{\n  listen  = {port}\n  address = \"0.0.0.0\"\n  token   = var.dash_token\n}}\n"
    );
    t.write("s.hcl", &stack);
    let mut outputs = vec![];
    for args in [
        &["plan", "s.hcl"][..],
        &["apply", "-auto-approve", "s.hcl"],
        &["plan", "-json", "s.hcl"],
        &["state", "show", "monitor.dash"],
        &["status"],
        &["status", "-json"],
        &["logs", "monitor.dash"],
    ] {
        let out = t.run(args);
        assert!(out.status.success(), "{args:?}: {}", s(&out.stderr));
        outputs.push((args, s(&out.stdout) + &s(&out.stderr)));
    }
    let host = format!("127.0.0.1:{port}");
    let denied = get(port, "/api/status", &host, "");
    assert_eq!(code(&denied), 401, "{denied}");
    assert!(denied.contains("WWW-Authenticate: Basic"), "{denied}");
    assert!(!denied.contains("\"services\""), "{denied}");
    let wrong = get(port, "/api/status", &host, "Authorization: Bearer nope\r\n");
    assert_eq!(code(&wrong), 401, "{wrong}");
    let bearer = get(
        port,
        "/api/status",
        &host,
        &format!("Authorization: Bearer {token}\r\n"),
    );
    assert_eq!(code(&bearer), 200, "{bearer}");
    // Basic auth (what a browser sends after its prompt): any user, the token as password.
    let basic = get(
        port,
        "/metrics",
        &host,
        &format!("Authorization: Basic {}\r\n", b64(&format!("me:{token}"))),
    );
    assert_eq!(code(&basic), 200, "{basic}");
    // The supervisor's liveness probe needs no token.
    assert_eq!(code(&get(port, "/healthz", &host, "")), 200);

    for (args, text) in &outputs {
        assert!(!text.contains(token), "{args:?} shows the token:\n{text}");
    }
    for (what, text) in [("401", &denied), ("wrong token", &wrong)] {
        assert!(!text.contains(token), "{what}: {text}");
    }
    // Files under the monitor's directory that hold it are private.
    use std::os::unix::fs::PermissionsExt;
    let dir = t.path().join(".pipeline/run/monitor.dash");
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let bytes = std::fs::read(e.path()).unwrap_or_default();
        if String::from_utf8_lossy(&bytes).contains(token) {
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} holds the token", e.path().display());
        }
    }
    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
}

fn b64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---- issue 11: alert rules on what the monitor collects ----

fn alert_stack(src: &Path, listen: u16, front: u16, alerts: &str) -> String {
    format!(
        r#"variable "fail_rate" {{ default = "1" }}

service "web" {{
  replicas = 2
  source   = "{}"
  run      = "./preview --port {{{{port}}}}"
  env      = {{ PREVIEW_FAIL_RATE = var.fail_rate }}
  health   = {{ path = "/health", interval = "100ms" }}
}}

balancer "front" {{
  listen = {front}
  routes = {{ "/" = service.web }}
}}

monitor "dash" {{
  listen   = {listen}
  interval = "100ms"
  alerts   = {alerts}
}}
"#,
        src.display()
    )
}

/// (alertname, instance) of every firing alert in /api/status.
fn firing(base: &str) -> Vec<(String, String)> {
    let Some(st) = status_json(base) else {
        return vec![];
    };
    st["alerts"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .map(|a| {
            (
                a["alert"].as_str().unwrap_or("").to_string(),
                a["instance"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn an_alert_fires_on_instances_answering_500s_everywhere_it_shows_and_clears_after_its_window() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    let listen = pipeline_supervise::free_port("127.0.0.1").unwrap();
    let front = pipeline_supervise::free_port("127.0.0.1").unwrap();
    // Every /preview answer of web is a 500; /health is fine, so the replicas stay UP.
    t.write(
        "s.hcl",
        &alert_stack(
            &src,
            listen,
            front,
            r#"{
    errors = { service = "web", metric = "error_ratio", above = 0.5, window = "3s", min_requests = 10 }
    slow   = { service = "web", metric = "latency_p95", above = 10, window = "3s", scope = "group" }
  }"#,
        ),
    );
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let base = format!("http://127.0.0.1:{listen}/");
    let endpoints = || -> Vec<String> {
        status_json(&base).map_or(vec![], |st| {
            st["services"][0]["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["endpoint"].as_str().map(str::to_string))
                .collect()
        })
    };
    assert!(wait_until(Duration::from_secs(10), || endpoints().len() == 2));
    let endpoints = endpoints();
    // No traffic yet: nothing fires, and the rule says why.
    let st = status_json(&base).unwrap();
    assert_eq!(st["alerts"]["firing"], 0, "{}", st["alerts"]);
    assert!(
        st["alerts"]["rules"][0]["note"]
            .as_str()
            .unwrap_or("")
            .contains("fewer than 10 answers"),
        "{}",
        st["alerts"]
    );

    // 40 failing requests a second until the checks below are done (bounded to 60 s).
    let load = common::load::start(
        &format!("127.0.0.1:{front}"),
        "POST",
        "/preview",
        "{\"markdown\":\"x\"}",
        40,
        1,
        false,
        Duration::from_secs(60),
    );
    let t0 = std::time::Instant::now();
    let fired = wait_until(Duration::from_secs(15), || {
        let f = firing(&base);
        endpoints
            .iter()
            .all(|e| f.contains(&("errors".to_string(), e.clone())))
    });
    assert!(fired, "{:?}", firing(&base));
    println!(
        "both instances' alerts fired {:.1} s after the failing load started (40/s)",
        t0.elapsed().as_secs_f64()
    );
    // A rule whose threshold is not crossed does not fire, but has its value.
    let st = status_json(&base).unwrap();
    let alerts = st["alerts"]["alerts"].as_array().unwrap();
    let slow = alerts.iter().find(|a| a["alert"] == "slow").unwrap();
    assert_eq!(slow["state"], "inactive", "{slow}");
    assert_eq!(slow["instance"], "web");
    let err = alerts
        .iter()
        .find(|a| a["alert"] == "errors" && a["state"] == "firing")
        .unwrap();
    assert_eq!(err["value"], 1.0, "{err}");
    assert!(err["address"].as_str().unwrap().starts_with("service.web["));

    // /metrics: Prometheus' ALERTS series and the judged values.
    let (code, text) = http("GET", &format!("{base}metrics"), "").unwrap();
    assert_eq!(code, 200);
    for e in &endpoints {
        let series = format!(
            "ALERTS{{alertname=\"errors\",service=\"web\",scope=\"instance\",instance=\"{e}\",metric=\"error_ratio\",alertstate=\"firing\"}} 1"
        );
        assert!(text.contains(&series), "{series}\n{text}");
        assert!(
            text.contains(&format!(
                "pipeline_alert_value{{alertname=\"errors\",service=\"web\",scope=\"instance\",instance=\"{e}\",metric=\"error_ratio\"}} 1"
            )),
            "{text}"
        );
    }
    assert!(!text.contains("ALERTS{alertname=\"slow\""), "{text}");
    assert!(text.contains("pipeline_alert_threshold{alertname=\"slow\",metric=\"latency_p95\"} 10"));

    // The dashboard's alerts panel.
    let dom = dump_dom(&base);
    assert!(dom.contains("class=\"alerts firing\""), "{dom}");
    for e in &endpoints {
        assert!(
            dom.contains(&format!(
                "data-alert=\"errors\" data-instance=\"{e}\" data-alertstate=\"firing\""
            )),
            "{e}: {dom}"
        );
    }
    assert!(
        dom.contains("data-rule=\"slow\" data-firing=\"0\""),
        "{dom}"
    );

    // The file the canaries read.
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t.path().join(".pipeline/run/monitor.dash/alerts.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(file["monitor"], "monitor.dash");
    assert_eq!(file["firing"].as_array().unwrap().len(), 2, "{file}");

    // The errors stop: once the window has passed, the alerts clear.
    let report = load.stop();
    println!("load: {}", report.summary());
    assert_eq!(report.ok, 0, "every /preview answer of web is a 500");
    let stopped = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || firing(&base).is_empty()),
        "{:?}",
        firing(&base)
    );
    println!(
        "cleared {:.1} s after the last failed request (window 3 s: its answers fell below min_requests)",
        stopped.elapsed().as_secs_f64()
    );
    assert!(wait_until(Duration::from_secs(3), || {
        std::fs::read_to_string(t.path().join(".pipeline/run/monitor.dash/alerts.json"))
            .is_ok_and(|f| f.contains("\"firing\":[]"))
    }));
    let (_, text) = http("GET", &format!("{base}metrics"), "").unwrap();
    assert!(!text.contains("ALERTS{"), "{text}");
    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
}

#[test]
fn bad_alert_rules_are_plan_errors_naming_the_setting() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    let listen = pipeline_supervise::free_port("127.0.0.1").unwrap();
    let front = pipeline_supervise::free_port("127.0.0.1").unwrap();
    for (rule, words) in [
        (
            r#"{ e = { service = "web", metric = "errors", above = 0.05 } }"#,
            vec![
                "alerts.e.metric: unknown metric \"errors\"",
                "error_ratio, latency_p50",
            ],
        ),
        (
            r#"{ e = { metric = "error_ratio", above = 0.05, window = "five" } }"#,
            vec!["alerts.e.window: \"five\" is not a duration"],
        ),
        (
            r#"{ e = { metric = "cpu", above = -1 } }"#,
            vec!["alerts.e.above: a threshold of -1", "not negative"],
        ),
        (
            r#"{ e = { metric = "memory", above = 1, scope = "pod" } }"#,
            vec!["alerts.e.scope: unknown scope", "\"group\""],
        ),
        (
            r#"{ e = { metric = "cpu", above = 1, fro = "1m" } }"#,
            vec!["alerts.e.fro: unknown setting `fro`"],
        ),
    ] {
        t.write("s.hcl", &alert_stack(&src, listen, front, rule));
        let out = t.run(&["plan", "s.hcl"]);
        let err = s(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{rule}: {err}");
        for w in words {
            assert!(err.contains(w), "{rule}: {w}: {err}");
        }
        // Where: the stack file's line of `alerts`.
        assert!(err.contains("s.hcl:19:"), "{err}");
        assert!(t.processes().is_empty());
    }
}
