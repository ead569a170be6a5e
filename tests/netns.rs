//! Service generations in network namespaces (`network = { namespace = true, port = 3000 }`):
//! an app that always listens on port 3000 (the sample service, `--port 3000`) runs three times
//! side by side, each replica in a namespace of its own behind its slot and a real nginx; an
//! update rolls through new namespaces and removes the old ones; blue-green keeps the standby's
//! namespace for an instant rollback; destroy leaves no process, namespace or veth behind.
//!
//! These tests need root (network namespaces take CAP_NET_ADMIN and CAP_SYS_ADMIN) and
//! iproute2, as CI has them (.ci/run): without them they fail and say why.

mod common;
use common::load::{self, free_port};
use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "tests/netns.rs needs root: network namespaces take CAP_NET_ADMIN and CAP_SYS_ADMIN (run the tests as root, as CI does)"
    );
    assert!(
        Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "tests/netns.rs needs iproute2's `ip` (apt-get install iproute2)"
    );
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", s(&out.stderr));
    s(&out.stdout)
}

/// A scratch directory whose network namespaces are removed on drop (after its processes, which
/// would keep them alive), whether the test passed or not.
struct Ns {
    t: Scratch,
}

impl Ns {
    fn new() -> Ns {
        require_root();
        Ns { t: Scratch::new() }
    }
    fn work_dir(&self) -> std::path::PathBuf {
        self.t.path().join(".pipeline")
    }
    /// Every namespace made for this scratch directory (`ip netns list`).
    fn namespaces(&self) -> BTreeSet<String> {
        let prefix = pipeline_providers::local::netns_prefix(&self.work_dir());
        ip(&["netns", "list"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }
    /// Host ends of veth pairs whose other end is in one of this directory's namespaces.
    fn veths(&self) -> BTreeSet<String> {
        let prefix = pipeline_providers::local::netns_prefix(&self.work_dir());
        ip(&["-o", "link"])
            .lines()
            .filter(|l| l.contains(&format!("link-netns {prefix}")))
            .filter_map(|l| Some(l.split(':').nth(1)?.trim().split('@').next()?.to_string()))
            .collect()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let run = self.work_dir().join("run");
        for e in std::fs::read_dir(&run).into_iter().flatten().flatten() {
            for g in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                let _ = pipeline_supervise::stop(&g.path(), Duration::from_secs(5));
            }
        }
        for pid in self.t.processes() {
            // SAFETY: plain kill of a pid we started (marker env under our temp dir).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        for ns in self.namespaces() {
            let pids = Command::new("ip").args(["netns", "pids", &ns]).output();
            for pid in pids.map(|o| s(&o.stdout)).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: a process inside a namespace this test made.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        // Their address claims, so no stale ones wait out their minute.
        let prefix = pipeline_providers::local::netns_prefix(&self.work_dir());
        let claims = std::env::temp_dir().join("pipeline-netns");
        for e in std::fs::read_dir(claims).into_iter().flatten().flatten() {
            if std::fs::read_to_string(e.path()).is_ok_and(|h| h.starts_with(&prefix)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn stack(src: &Path, port: u16, strategy: &str) -> String {
    format!(
        r#"variable "version" {{ default = "v1" }}

service "web" {{
  source   = "{src}"
  run      = "./preview --port 3000 --address 0.0.0.0"
  replicas = 3
  env      = {{ VERSION = var.version }}
  network  = {{ namespace = true, port = 3000 }}
  health   = {{ path = "/health", interval = "100ms" }}
  update   = {{ strategy = "{strategy}", drain_timeout = "2s" }}
}}

balancer "front" {{
  listen = {port}
  routes = {{ "/" = service.web }}
}}

output "slots" {{ value = service.web[*].url }}
"#,
        src = src.display()
    )
}

fn version_at(url: &str) -> Option<String> {
    let (c, body) = http("GET", &format!("{url}/health"), "")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    (c == 200).then(|| v["version"].as_str().unwrap_or("?").to_string())
}

/// `ADDRESS:PORT` each slot forwards to.
fn backends(t: &Scratch) -> Vec<String> {
    (0..3)
        .map(|i| {
            let cfg = std::fs::read(
                t.path()
                    .join(format!(".pipeline/run/service.web_{i}_/slot/slot.json")),
            )
            .unwrap();
            let cfg: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
            cfg["active"].as_str().unwrap().to_string()
        })
        .collect()
}

fn served(t: &Scratch, i: usize) -> u64 {
    std::fs::read(t.path().join(format!(
        ".pipeline/run/service.web_{i}_/slot/slot-status.json"
    )))
    .ok()
    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    .and_then(|v| v["served"].as_u64())
    .unwrap_or(0)
}

/// Per-instance creation times from `apply -json`, in ms.
fn apply_json(t: &Scratch, args: &[&str]) -> Vec<(String, u64)> {
    let mut all = vec!["apply", "-auto-approve", "-json"];
    all.extend_from_slice(args);
    let out = t.ok(&all);
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "apply_complete")
        .map(|v| {
            (
                v["address"].as_str().unwrap_or("").to_string(),
                v["elapsed_ms"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn a_fixed_port_app_runs_three_times_side_by_side_rolls_and_leaves_nothing() {
    let ns = Ns::new();
    let t = &ns.t;
    let src = prebuilt_source(t);
    let port = free_port();
    t.write("stack.hcl", &stack(&src, port, "rolling"));

    let started = Instant::now();
    let times = apply_json(t, &["stack.hcl"]);
    let took = started.elapsed();
    let replicas: Vec<&(String, u64)> = times
        .iter()
        .filter(|(a, _)| a.starts_with("service."))
        .collect();
    eprintln!("apply of 3 namespaced replicas + nginx: {took:?}; per replica (slot + namespace + app healthy): {replicas:?}");
    assert_eq!(replicas.len(), 3, "{times:?}");

    // Three namespaces, three addresses, one port: each slot forwards to its own namespace.
    let first = ns.namespaces();
    assert_eq!(first.len(), 3, "{first:?}");
    assert!(first.iter().all(|n| n.ends_with("-g1")), "{first:?}");
    let b = backends(t);
    assert!(
        b.iter()
            .all(|a| a.starts_with("10.213.") && a.ends_with(":3000")),
        "{b:?}"
    );
    assert_eq!(b.iter().collect::<BTreeSet<_>>().len(), 3, "{b:?}");
    let veths = ns.veths();
    assert_eq!(veths.len(), 3, "{veths:?}");
    assert!(veths.iter().all(|v| v.len() <= 15), "{veths:?}");

    // Every app process runs inside one of them, a different one each.
    let rows: Vec<serde_json::Value> = serde_json::from_str(&t.ok(&["status", "--json"])).unwrap();
    let inside: BTreeSet<String> = rows
        .iter()
        .filter(|r| r["kind"] == "service")
        .map(|r| {
            let pid = r["pid"].as_u64().expect("pid").to_string();
            ip(&["netns", "identify", &pid]).trim().to_string()
        })
        .collect();
    assert_eq!(inside, first);
    let log = t.ok(&["logs", "service.web[1]"]);
    assert!(log.contains("runs in network namespace"), "{log}");
    assert!(
        log.contains("preview listening on http://0.0.0.0:3000"),
        "{log}"
    );

    // Every slot answers, with the app itself behind it.
    let slots: Vec<String> = serde_json::from_str(&t.ok(&["output", "-json", "slots"])).unwrap();
    for url in &slots {
        assert_eq!(version_at(url).as_deref(), Some("v1"), "{url}");
        let (c, body) = http("POST", &format!("{url}/preview"), r#"{"markdown":"*ns*"}"#).unwrap();
        assert_eq!(c, 200, "{body}");
        assert!(body.contains("<em>ns</em>"), "{body}");
    }

    // nginx in front routes to all three.
    let before: Vec<u64> = (0..3).map(|i| served(t, i)).collect();
    let front = format!("http://127.0.0.1:{port}");
    for _ in 0..30 {
        assert_eq!(version_at(&front).as_deref(), Some("v1"));
    }
    assert!(
        wait_until(Duration::from_secs(3), || (0..3)
            .all(|i| served(t, i) > before[i])),
        "not every replica got traffic through nginx: before {before:?}, after {:?}",
        (0..3).map(|i| served(t, i)).collect::<Vec<_>>()
    );

    // An env change is an update in place: new generations in new namespaces, under load
    // through nginx, with not one failed request; the old namespaces and veths are gone.
    let out = t.ok(&["plan", "-json", "-var", "version=v2", "stack.hcl"]);
    let actions: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        // (The balancer's `routes` carry the services' attributes; its nginx config stays as is.)
        .filter(|v| v["type"] == "planned_change" && v["address"] != "balancer.front")
        .filter(|v| v["action"] != "no_op")
        .map(|v| {
            format!(
                "{} {}",
                v["action"].as_str().unwrap(),
                v["address"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            "update service.web[0]",
            "update service.web[1]",
            "update service.web[2]"
        ],
    );
    let load = load::start(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/health",
        "",
        100,
        4,
        false,
        Duration::from_secs(60),
    );
    let started = Instant::now();
    let times = apply_json(t, &["-var", "version=v2", "stack.hcl"]);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    eprintln!(
        "rolling update of 3 namespaced replicas: {took:?} {times:?}; load: {}",
        report.summary()
    );
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.ok > 50, "{}", report.summary());
    let second = ns.namespaces();
    assert_eq!(second.len(), 3, "{second:?}");
    assert!(second.iter().all(|n| n.ends_with("-g2")), "{second:?}");
    assert!(second.is_disjoint(&first));
    assert!(ns.veths().is_disjoint(&veths), "old veths left");
    let after: Vec<String> = serde_json::from_str(&t.ok(&["output", "-json", "slots"])).unwrap();
    assert_eq!(after, slots, "slot addresses are stable");
    for url in &slots {
        assert_eq!(version_at(url).as_deref(), Some("v2"), "{url}");
    }
    let veths = ns.veths();

    // A namespace left by a crash (made, never recorded) is swept with its instance.
    let leftover = pipeline_providers::local::netns_name(&ns.work_dir(), "service.web[1]", 99);
    ip(&["netns", "add", &leftover]);
    assert!(ns.namespaces().contains(&leftover));

    let out = t.ok(&["destroy", "-auto-approve"]);
    assert!(out.contains("4 destroyed"), "{out}");
    assert!(
        t.processes().is_empty(),
        "processes left: {:?}",
        t.processes()
    );
    assert_eq!(ns.namespaces(), BTreeSet::new(), "namespaces left");
    let links = ip(&["-o", "link"]);
    for v in &veths {
        assert!(!links.contains(v.as_str()), "veth {v} left:\n{links}");
    }
    let prefix = pipeline_providers::local::netns_prefix(&ns.work_dir());
    let claims = std::env::temp_dir().join("pipeline-netns");
    for e in std::fs::read_dir(&claims).into_iter().flatten().flatten() {
        let holder = std::fs::read_to_string(e.path()).unwrap_or_default();
        assert!(!holder.starts_with(&prefix), "claim {:?} left", e.path());
    }
}

#[test]
fn blue_green_keeps_the_standby_namespace_and_rolls_back_to_it() {
    let ns = Ns::new();
    let t = &ns.t;
    let src = prebuilt_source(t);
    let port = free_port();
    t.write("stack.hcl", &stack(&src, port, "blue-green"));
    t.ok(&["apply", "-auto-approve", "stack.hcl"]);
    t.ok(&["apply", "-auto-approve", "-var", "version=v2", "stack.hcl"]);
    // Active (g2) and standby (g1) each in their own namespace.
    let both = ns.namespaces();
    assert_eq!(both.len(), 6, "{both:?}");
    let front = format!("http://127.0.0.1:{port}");
    assert_eq!(version_at(&front).as_deref(), Some("v2"));
    let started = Instant::now();
    t.ok(&["rollback", "web"]);
    eprintln!(
        "rollback to the standby namespaces: {:?}",
        started.elapsed()
    );
    let slots: Vec<String> = serde_json::from_str(&t.ok(&["output", "-json", "slots"])).unwrap();
    for url in &slots {
        assert_eq!(version_at(url).as_deref(), Some("v1"), "{url}");
    }
    t.ok(&["destroy", "-auto-approve"]);
    assert_eq!(ns.namespaces(), BTreeSet::new(), "namespaces left");
    assert!(t.processes().is_empty());
}

/// `setpriv` with the given capabilities dropped, running the binary as `Scratch::cmd` would.
fn without_caps(t: &Scratch, caps: &str, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .arg(format!("--bounding-set={caps}"))
        .arg(BIN)
        .args(args)
        .arg("--no-color")
        .current_dir(t.path())
        .env_remove("PIPELINE_DIR")
        .output()
        .expect("run setpriv (util-linux)")
}

#[test]
fn without_root_or_iproute2_the_network_attribute_says_what_to_do() {
    let ns = Ns::new();
    let t = &ns.t;
    let src = prebuilt_source(t);
    t.write("stack.hcl", &stack(&src, free_port(), "rolling"));

    // No CAP_NET_ADMIN / CAP_SYS_ADMIN (root without them, as an unprivileged user is).
    let out = without_caps(
        t,
        "-net_admin,-sys_admin",
        &["apply", "-auto-approve", "stack.hcl"],
    );
    let err = s(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("service.web[0]: network = { namespace = true } needs root"),
        "{err}"
    );
    assert!(
        err.contains("lacks CAP_NET_ADMIN and CAP_SYS_ADMIN"),
        "{err}"
    );
    assert!(err.contains("stack.hcl:8:"), "{err}");
    assert!(err.contains("run pipeline as root"), "{err}");
    assert!(err.contains("or drop `network`"), "{err}");

    // No iproute2 (PIPELINE_IP points the lookup at a missing binary).
    t.env
        .borrow_mut()
        .push(("PIPELINE_IP".into(), "/nonexistent/sbin/ip".into()));
    let out = t.run(&["apply", "-auto-approve", "stack.hcl"]);
    let err = s(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs iproute2"), "{err}");
    assert!(err.contains("/nonexistent/sbin/ip"), "{err}");
    assert!(err.contains("apt-get install iproute2"), "{err}");
    assert!(err.contains("stack.hcl:8:"), "{err}");
    t.env.borrow_mut().clear();

    // A wrong value names what is wrong.
    t.write(
        "bad.hcl",
        &stack(&src, free_port(), "rolling")
            .replace("namespace = true, port = 3000", "namespace = true"),
    );
    let out = t.run(&["plan", "bad.hcl"]);
    let err = s(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("network.port is missing"), "{err}");

    // Nothing was created: no namespace, no process, no state.
    assert_eq!(ns.namespaces(), BTreeSet::new());
    assert!(t.processes().is_empty());
    assert!(state(t).resources.is_empty());
}
