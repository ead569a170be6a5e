//! The monitor on this machine reads the access log of a balancer on another machine: nginx on
//! one lab host, the service on a second, a `monitor` block here. 200 requests through nginx at
//! 50 a second, a quarter of them to a path the service answers with 500: the monitor's status
//! and /metrics show them, and their 5xx, for the balancer and for the service's instance
//! (named by the `address:port` nginx logs). The monitor follows the log with `ssh HOST tail`;
//! stopping the monitor (SIGTERM, as its supervisor does) or destroying the stack leaves no such
//! ssh behind, here or on the host. The monitor also samples CPU and memory of the service host
//! and of its units over ssh (and of the balancer's host): a second service on the same host that
//! burns CPU on request shows more CPU than the idle one, and both show memory below the host's;
//! the host turned off shows as unknown, not 0, and is known again once it is back.

mod common;
use common::lab;
use common::*;
use std::time::{Duration, Instant};

const REQUESTS: usize = 200;
const RATE: u64 = 50;
/// Every FAIL_EVERY-th request goes to `/fail`.
const FAIL_EVERY: usize = 4;
const APP_PORT: u16 = 8080;
/// The second service (`busy`), on the same host: burnt on purpose.
const BUSY_PORT: u16 = 8090;
/// At most this many `/burn` requests (0.3 s of CPU each) to make `busy` busy.
const BURNS: usize = 60;

/// `/` answers 200, `/fail` 500, `/health` ok, `/burn` after 0.3 s of CPU.
const APP: &str = r#"
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/burn":
            end = time.process_time() + 0.3
            while time.process_time() < end:
                pass
        code = 500 if self.path == "/fail" else 200
        body = b"ok\n" if code == 200 else b"failed on purpose\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

class S(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True

S(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

fn stack(lb: &str, monitor_port: u16) -> String {
    format!(
        r#"provider "ssh" {{
  inventory = "inventory.ini"
}}

host "web" {{
  provider = ssh
  group    = "web"
}}

host "edge" {{
  provider = ssh
  group    = "edge"
}}

service "app" {{
  provider      = ssh
  on            = host.web
  source        = "app"
  run           = "exec python3 app.py"
  port          = {APP_PORT}
  health        = {{ path = "/health" }}
  start_timeout = "30s"
}}

service "busy" {{
  provider      = ssh
  on            = host.web
  source        = "app"
  run           = "exec python3 app.py"
  port          = {BUSY_PORT}
  health        = {{ path = "/health" }}
  start_timeout = "30s"
}}

balancer "front" {{
  on     = host.edge["{lb}"]
  listen = 80
  routes = {{ "/" = service.app }}
}}

monitor "watch" {{
  listen   = {monitor_port}
  interval = "100ms"
  watch    = ["app", "busy"]
}}
"#
    )
}

fn status(monitor: &str) -> serde_json::Value {
    match http("GET", &format!("{monitor}api/status"), "") {
        Some((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

/// (requests in the window, error ratio) of the balancer and of the `app` instance at
/// `endpoint`, as the monitor's status shows them.
#[derive(Debug, PartialEq)]
struct Seen {
    balancer: (f64, f64),
    instance: (f64, f64),
}

fn seen(st: &serde_json::Value, endpoint: &str) -> Option<Seen> {
    let window = st["window_s"].as_f64()?;
    let b = st["balancers"]
        .as_array()?
        .iter()
        .find(|b| b["name"] == "front")?;
    let r = st["services"]
        .as_array()?
        .iter()
        .filter(|s| s["name"] == "app")
        .flat_map(|s| s["replicas"].as_array().cloned().unwrap_or_default())
        .find(|r| r["endpoint"] == endpoint)?;
    Some(Seen {
        balancer: (
            (b["requests_per_second"].as_f64()? * window).round(),
            b["error_ratio"].as_f64()?,
        ),
        instance: (
            r["requests_in_window"].as_f64()?,
            r["error_ratio"].as_f64()?,
        ),
    })
}

/// The value of one series in Prometheus text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The `service`'s one replica in the monitor's status.
fn replica(st: &serde_json::Value, service: &str) -> Option<serde_json::Value> {
    st["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == service)?["replicas"]
        .as_array()?
        .first()
        .cloned()
}

/// Processes of this machine following a remote access log over this test's ssh connections.
fn followers(sockets: &str) -> Vec<u32> {
    procfs::pids()
        .into_iter()
        .filter(|&p| {
            procfs::alive(p)
                && procfs::cmdline(p)
                    .is_some_and(|c| c.contains("tail -n0 -F") && c.contains(sockets))
        })
        .collect()
}

/// The `tail -n0 -F` processes on a host (not the `timeout` that starts them).
fn tails(h: &pipeline_lab::Host) -> Vec<u32> {
    h.exec(&["ps", "-eo", "pid=,args="])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, args) = l.trim().split_once(' ')?;
            args.trim()
                .starts_with("tail -n0 -F")
                .then(|| pid.parse().ok())?
        })
        .collect()
}

/// The monitor daemon of this test (`pipeline __monitor DIR`).
fn monitor_pid(t: &Scratch) -> Option<u32> {
    let dir = t.path().canonicalize().unwrap();
    let needle = dir.join(".pipeline/run").display().to_string();
    procfs::pids().into_iter().find(|&p| {
        procfs::alive(p)
            && procfs::cmdline(p).is_some_and(|c| c.contains("__monitor") && c.contains(&needle))
    })
}

#[test]
fn the_monitor_counts_requests_and_errors_of_a_balancer_on_another_machine() {
    if !pipeline_lab::require() {
        return;
    }
    let started = Instant::now();
    let lab = pipeline_lab::Lab::with_options(2, pipeline_lab::LabOptions { apt_cache: true })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (edge, web) = (lab.host(0), lab.host(1));
    let t = Scratch::new();
    t.write("app/app.py", APP);
    t.write(
        "inventory.ini",
        &lab::inventory(&lab, &[("edge", &[lab.host(0)]), ("web", &[lab.host(1)])]),
    );
    let monitor_port = load::free_port();
    t.write("s.hcl", &stack(edge.name(), monitor_port));
    let monitor = format!("http://127.0.0.1:{monitor_port}/");
    let url = format!("http://{}:80", edge.addr());
    let endpoint = format!("{}:{APP_PORT}", web.addr());
    let sockets = pipeline_providers::remote::socket_dir_of(&t.path().join(".pipeline"))
        .display()
        .to_string();
    let elsewhere = followers(&sockets);
    assert!(elsewhere.is_empty(), "{elsewhere:?}");

    let t0 = Instant::now();
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    eprintln!(
        "apply (nginx + service + monitor): {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(http("GET", &format!("{url}/"), "").map(|a| a.0), Some(200));
    assert_eq!(
        http("GET", &format!("{url}/fail"), "").map(|a| a.0),
        Some(500)
    );

    // The monitor follows the balancer's log over ssh: one follower.
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || followers(&sockets).len() == 1),
        "the monitor follows the access log over ssh: {:?}",
        followers(&sockets)
    );
    eprintln!(
        "follower running {:.1} s after the apply",
        t0.elapsed().as_secs_f64()
    );
    // A stream starts at "now": send until the monitor counts a request, then let the window
    // empty so that the count below is of the load alone.
    let t0 = Instant::now();
    let counting = wait_until(Duration::from_secs(20), || {
        let _ = http("GET", &format!("{url}/"), "");
        std::thread::sleep(Duration::from_millis(200));
        seen(&status(&monitor), &endpoint).is_some_and(|s| s.balancer.0 > 0.0)
    });
    assert!(
        counting,
        "the monitor never counted a request: {}",
        status(&monitor)
    );
    eprintln!(
        "first request counted {:.1} s after the follower started",
        t0.elapsed().as_secs_f64()
    );
    let quiet = Seen {
        balancer: (0.0, 0.0),
        instance: (0.0, 0.0),
    };
    assert!(
        wait_until(Duration::from_secs(15), || seen(
            &status(&monitor),
            &endpoint
        )
        .is_some_and(|s| s == quiet)),
        "the window empties: {:?}",
        seen(&status(&monitor), &endpoint)
    );

    // The load: REQUESTS at RATE a second, one in FAIL_EVERY to /fail.
    let t0 = Instant::now();
    let (mut ok, mut failed, mut other) = (0usize, 0usize, 0usize);
    for i in 0..REQUESTS {
        let due = t0 + Duration::from_millis(i as u64 * 1000 / RATE);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let path = if i % FAIL_EVERY == 0 { "/fail" } else { "/" };
        match http("GET", &format!("{url}{path}"), "").map(|a| a.0) {
            Some(200) => ok += 1,
            Some(500) => failed += 1,
            _ => other += 1,
        }
    }
    let sent_in = t0.elapsed();
    eprintln!(
        "load: {REQUESTS} requests in {:.2} s: {ok} answered 200, {failed} 500, {other} otherwise",
        sent_in.as_secs_f64()
    );
    assert_eq!(
        (ok, failed, other),
        (REQUESTS - REQUESTS / FAIL_EVERY, REQUESTS / FAIL_EVERY, 0)
    );
    // Every request is in the monitor's 10 s window until 10 s after the first: the monitor must
    // show them all before then.
    let ratio = (REQUESTS / FAIL_EVERY) as f64 / REQUESTS as f64;
    let want = Seen {
        balancer: (REQUESTS as f64, ratio),
        instance: (REQUESTS as f64, ratio),
    };
    let mut last = None;
    let shown = wait_until(Duration::from_secs(10).saturating_sub(t0.elapsed()), || {
        last = seen(&status(&monitor), &endpoint);
        last.as_ref() == Some(&want)
    });
    let lag = t0.elapsed().saturating_sub(sent_in);
    assert!(
        shown,
        "the monitor shows {last:?}, want {want:?}: {}",
        status(&monitor)
    );
    let metrics = http("GET", &format!("{monitor}metrics"), "").unwrap().1;
    eprintln!(
        "monitor shows all {REQUESTS} requests, {} with 5xx, {:.2} s after the last was sent",
        REQUESTS / FAIL_EVERY,
        lag.as_secs_f64()
    );
    let rate = REQUESTS as f64 / 10.0;
    for (series, value) in [
        (
            "pipeline_balancer_requests_per_second{balancer=\"front\",address=\"balancer.front\"}",
            rate,
        ),
        (
            "pipeline_balancer_error_ratio{balancer=\"front\",address=\"balancer.front\"}",
            ratio,
        ),
        (
            "pipeline_replica_requests_per_second{service=\"app\",replica=\"service.app\"}",
            rate,
        ),
        (
            "pipeline_replica_error_ratio{service=\"app\",replica=\"service.app\"}",
            ratio,
        ),
    ] {
        let got = sample(&metrics, series);
        assert!(
            got.is_some_and(|g| (g - value).abs() < 1e-9),
            "{series}: {got:?}, want {value}\n{metrics}"
        );
    }

    remote_usage(&monitor, web, edge.name());

    assert_eq!(
        tails(edge).len(),
        1,
        "one follower's tail on {}",
        edge.name()
    );
    // The monitor stopped as its supervisor stops it (SIGTERM): its follower goes with it.
    let old = followers(&sockets);
    let pid = monitor_pid(&t).expect("the monitor runs");
    let t0 = Instant::now();
    // SAFETY: plain kill of the monitor daemon this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(
        wait_until(Duration::from_secs(10), || !procfs::alive(pid)
            && old.iter().all(|&p| !procfs::alive(p))),
        "after SIGTERM: monitor {pid} alive {}, followers {old:?} alive {:?}",
        procfs::alive(pid),
        old.iter()
            .filter(|&&p| procfs::alive(p))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "SIGTERM: monitor and its follower gone in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    // Its supervisor starts it again; it follows the log again.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let now = followers(&sockets);
            now.len() == 1 && !old.contains(&now[0])
        }),
        "the restarted monitor follows the log: {:?}",
        followers(&sockets)
    );
    // On the host too: the killed follower's `tail` went with its ssh session, the new one runs.
    assert!(
        wait_until(Duration::from_secs(10), || tails(edge).len() == 1),
        "one tail on {} after the monitor's restart: {:?}",
        edge.name(),
        tails(edge)
    );
    let tail = tails(edge)[0];
    eprintln!(
        "the follower's tail on {}: pid {tail}, it watches the log {}",
        edge.name(),
        if edge
            .exec(&["sh", "-c", &format!("ls -l /proc/{tail}/fd")])
            .unwrap_or_default()
            .contains("inotify")
        {
            "with inotify"
        } else {
            "by polling it every second"
        }
    );

    let t0 = Instant::now();
    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
    eprintln!("destroy: {:.1} s", t0.elapsed().as_secs_f64());
    let left = followers(&sockets);
    assert!(left.is_empty(), "followers left after destroy: {left:?}");
    assert_eq!(monitor_pid(&t), None, "the monitor is gone");
    assert!(
        wait_until(Duration::from_secs(10), || tails(edge).is_empty()),
        "tails left on {} after destroy: {:?}",
        edge.name(),
        tails(edge)
    );
    eprintln!("whole test: {:.1} s", started.elapsed().as_secs_f64());
}

/// CPU and memory of the service host and of its two services' units, sampled over ssh: known
/// and plausible, and the service that burns CPU shows more of it than the idle one.
fn remote_usage(monitor: &str, web: &pipeline_lab::Host, edge_name: &str) {
    let host = |st: &serde_json::Value| -> Option<serde_json::Value> {
        st["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["host"] == web.name())
            .cloned()
    };
    let known = |st: &serde_json::Value| {
        host(st).is_some_and(|h| h["cpu_ratio"].is_number())
            && ["app", "busy"].iter().all(|s| {
                replica(st, s).is_some_and(|r| {
                    r["cpu_ratio"].is_number() && r["memory_bytes"].as_u64() > Some(0)
                })
            })
    };
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || known(&status(monitor))),
        "CPU and memory of {} and of its units are known: {}",
        web.name(),
        status(monitor)
    );
    eprintln!(
        "remote usage known {:.1} s after the load",
        t0.elapsed().as_secs_f64()
    );
    let st = status(monitor);
    let h = host(&st).unwrap();
    let total = h["memory_total_bytes"].as_u64().unwrap();
    let used = h["memory_bytes"].as_u64().unwrap();
    let cpus = h["cpus"].as_f64().unwrap();
    assert!(
        used > 0 && used < total && cpus >= 1.0,
        "host memory {used} of {total}, {cpus} CPUs"
    );
    let host_cpu = h["cpu_ratio"].as_f64().unwrap();
    assert!((0.0..=cpus).contains(&host_cpu), "host CPU {host_cpu}");
    assert!(h["error"].is_null(), "{h}");
    // The balancer's host is sampled too (its description names it), with no unit of it shown.
    let names: Vec<&str> = st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["host"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{}", st["hosts"]);
    assert!(names.contains(&edge_name), "{}", st["hosts"]);
    for s in ["app", "busy"] {
        let r = replica(&st, s).unwrap();
        let mem = r["memory_bytes"].as_u64().unwrap();
        // A python http.server: megabytes, far below the host's memory.
        assert!(mem > 1 << 20 && mem < total, "{s}: memory {mem} of {total}");
        eprintln!(
            "{s}: cpu {:.3}, memory {:.1} MiB (host: cpu {host_cpu:.2} of {cpus}, memory {:.0} of {:.0} MiB)",
            r["cpu_ratio"].as_f64().unwrap(),
            mem as f64 / 1048576.0,
            used as f64 / 1048576.0,
            total as f64 / 1048576.0
        );
    }

    // Burn CPU in `busy` (requests straight to it, one at a time) until the monitor shows it
    // busier than `app`, which has nothing to do now.
    let busy_url = format!("http://{}:{BUSY_PORT}/burn", web.addr());
    let t0 = Instant::now();
    let mut sent = 0;
    let mut last = (None, None);
    let busier = wait_until(Duration::from_secs(30), || {
        if sent < BURNS {
            let _ = http("GET", &busy_url, "");
            sent += 1;
        }
        let st = status(monitor);
        let cpu = |s| replica(&st, s).and_then(|r| r["cpu_ratio"].as_f64());
        last = (cpu("busy"), cpu("app"));
        matches!(last, (Some(b), Some(a)) if b > 0.1 && b > a)
    });
    assert!(
        busier,
        "after {sent} burns, busy {:?} vs app {:?}",
        last.0, last.1
    );
    eprintln!(
        "busy shows cpu {:.3} vs idle app {:.3} after {sent} burns in {:.1} s",
        last.0.unwrap(),
        last.1.unwrap(),
        t0.elapsed().as_secs_f64()
    );

    let metrics = http("GET", &format!("{monitor}metrics"), "").unwrap().1;
    let hl = format!("{{host=\"{}\"}}", web.name());
    for series in [
        format!("pipeline_host_cpu_ratio{hl}"),
        format!("pipeline_host_memory_bytes{hl}"),
        format!("pipeline_host_memory_total_bytes{hl}"),
        "pipeline_replica_cpu_ratio{service=\"busy\",replica=\"service.busy\"}".into(),
        "pipeline_replica_memory_bytes{service=\"app\",replica=\"service.app\"}".into(),
        "pipeline_service_memory_bytes{service=\"busy\"}".into(),
    ] {
        let got = sample(&metrics, &series);
        assert!(
            got.is_some_and(|v| v >= 0.0),
            "{series}: {got:?}\n{metrics}"
        );
    }
    assert_eq!(
        sample(&metrics, &format!("pipeline_host_memory_total_bytes{hl}")),
        Some(total as f64)
    );
    assert_eq!(
        sample(&metrics, &format!("pipeline_host_up{hl}")),
        Some(1.0)
    );

    // The dashboard shows them: a row per host with its CPU and memory, each service's sums.
    let dom = common::chromium::chromium(
        &[
            "--virtual-time-budget=3000".into(),
            "--run-all-compositor-stages-before-draw".into(),
            "--dump-dom".into(),
        ],
        monitor,
    );
    let row = dom
        .split(&format!("data-host=\"{}\"", web.name()))
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row of {} on the dashboard:\n{dom}", web.name()));
    assert!(
        row.contains(" %") && row.contains("GiB") && !row.contains('–'),
        "{row}"
    );
    // Rendered sums (the page's own script holds the template, with no digit after `cpu `).
    let sums = dom
        .match_indices("data-usage=\"service\">cpu ")
        .filter(|(i, m)| dom[i + m.len()..].starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(sums, 2, "{dom}");

    // The host turned off: unknown (no figures, the reason), not 0; back on: known again.
    let t0 = Instant::now();
    web.off().unwrap_or_else(|e| panic!("{e:#}"));
    // The host at once, its instances at the next process sample (once a second).
    let mut last = serde_json::Value::Null;
    let unknown = wait_until(Duration::from_secs(20), || {
        let st = status(monitor);
        last = host(&st).unwrap_or_default();
        let app = replica(&st, "app").unwrap_or_default();
        last["memory_bytes"].is_null()
            && last["cpu_ratio"].is_null()
            && last["error"].is_string()
            && app["cpu_ratio"].is_null()
            && app["memory_bytes"].is_null()
    });
    assert!(unknown, "{} off: {last}\n{}", web.name(), status(monitor));
    let metrics = http("GET", &format!("{monitor}metrics"), "").unwrap().1;
    assert_eq!(
        sample(&metrics, &format!("pipeline_host_up{hl}")),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, &format!("pipeline_host_memory_bytes{hl}")),
        None
    );
    eprintln!(
        "{} off: unknown after {:.1} s ({})",
        web.name(),
        t0.elapsed().as_secs_f64(),
        last["error"]
    );
    web.on().unwrap_or_else(|e| panic!("{e:#}"));
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(60), || known(&status(monitor))),
        "{} back on: {}",
        web.name(),
        status(monitor)
    );
    eprintln!(
        "{} back on: its figures and its units' known again after {:.1} s",
        web.name(),
        t0.elapsed().as_secs_f64()
    );
}
