//! The local default as a new user meets it: plan and apply stacks/local.hcl through the real
//! binary, call the service, scale it, destroy it, and check nothing is left behind.

mod common;
use common::*;
use std::time::Duration;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_name() == "target" {
            continue;
        }
        let p = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &p);
        } else {
            std::fs::copy(e.path(), p).unwrap();
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.path().display().to_string());
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[test]
fn local_stack_plan_apply_scale_destroy() {
    let t = Scratch::new();
    copy_dir(&repo().join("stacks"), &t.path().join("stacks"));
    copy_dir(
        &repo().join("examples/preview"),
        &t.path().join("examples/preview"),
    );

    // Free ports for the balancer and the dashboard, as a user would pass them.
    for var in ["port", "dashboard_port"] {
        let port = common::load::free_port().to_string();
        t.env
            .borrow_mut()
            .push((format!("PIPELINE_VAR_{var}"), port));
    }
    let plan = t.ok(&["plan", "stacks/local.hcl"]);
    assert!(
        plan.contains("Plan: 8 to add, 0 to change, 0 to destroy."),
        "{plan}"
    );
    assert!(plan.contains("+ service \"preview\""), "{plan}");

    // `apply` without a stack uses the one planned here.
    let applied = t.ok(&["apply", "-auto-approve"]);
    assert!(applied.contains("Apply complete! 8 added"), "{applied}");

    let url = t.ok(&["output", "url"]).trim().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (status, body) = http(
        "POST",
        &format!("{url}/preview"),
        r##"{"markdown":"# Hi\n\n**bold**"}"##,
    )
    .expect("service answers");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("<h1>Hi</h1>") && body.contains("<strong>bold</strong>"),
        "{body}"
    );
    // The rendered file got the real URLs of all replicas.
    let upstreams = std::fs::read_to_string(t.path().join(".pipeline/out/upstreams.txt")).unwrap();
    assert_eq!(upstreams.lines().count(), 3, "{upstreams}");
    let replicas: Vec<String> =
        serde_json::from_str(&t.ok(&["output", "-json", "replicas"])).unwrap();
    assert!(
        replicas.iter().all(|r| upstreams.contains(r.as_str())),
        "{upstreams}"
    );

    // The feature flag, read by every instance from its mirror, switches tables off.
    let table = r##"{"markdown":"| a | b |\n|---|---|\n| 1 | 2 |"}"##;
    let (_, body) = http("POST", &format!("{url}/preview"), table).unwrap();
    assert!(body.contains("<table>"), "{body}");
    let flipped = t.ok(&["flags", "set", "tables", "off"]);
    assert!(flipped.contains("tables = off"), "{flipped}");
    assert!(wait_until(Duration::from_secs(5), || (0..6).all(|_| http(
        "POST",
        &format!("{url}/preview"),
        table
    )
    .is_some_and(|(c, b)| c == 200 && !b.contains("<table>")))));
    // The dashboard is up and knows the replicas.
    let dash = t.ok(&["output", "dashboard"]).trim().to_string();
    let (c, api) = http("GET", &format!("{dash}api/status"), "").unwrap();
    assert_eq!(c, 200);
    assert!(api.contains("service.preview[2]"), "{api}");

    // Right after apply nothing is to be done: exit code 0 with -detailed-exitcode.
    let out = t.run(&["plan", "-detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        s(&out.stdout),
        s(&out.stderr)
    );

    // 3 -> 5 replicas: exactly two creates, the two new replicas.
    let out = t.run(&["plan", "-var", "replicas=5", "-json", "-detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2));
    let lines: Vec<serde_json::Value> = s(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let creates: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "planned_change" && l["action"] == "create")
        .map(|l| l["address"].as_str().unwrap())
        .collect();
    assert_eq!(creates, vec!["service.preview[3]", "service.preview[4]"]);
    assert!(!lines
        .iter()
        .any(|l| l["type"] == "planned_change"
            && (l["action"] == "replace" || l["action"] == "delete")));

    t.ok(&["apply", "-auto-approve", "-var", "replicas=5"]);
    // Status lists every process: 5 replicas, the balancer, the flag store, the dashboard.
    let status_of = |kind: &str| -> Vec<serde_json::Value> {
        let all: Vec<serde_json::Value> =
            serde_json::from_str(&t.ok(&["status", "--json"])).unwrap();
        all.into_iter().filter(|r| r["kind"] == kind).collect()
    };
    let rows = status_of("service");
    assert_eq!(rows.len(), 5);
    for kind in ["balancer", "flags", "monitor"] {
        let r = status_of(kind);
        assert_eq!(r.len(), 1, "{kind}");
        assert!(r[0]["pid"].as_u64().is_some(), "{kind}: {:?}", r[0]);
    }
    assert!(wait_until(Duration::from_secs(10), || {
        status_of("service").iter().all(|r| r["healthy"] == true)
    }));
    let logs = t.ok(&["logs", "service.preview[4]"]);
    assert!(logs.contains("preview listening on"), "{logs}");

    // The supervisor brings a killed replica back.
    let pid = rows[0]["pid"].as_u64().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(10), || {
        let rows = status_of("service");
        rows[0]["restarts"].as_u64() == Some(1) && rows[0]["healthy"] == true
    }));

    let ports: Vec<u64> = rows.iter().map(|r| r["port"].as_u64().unwrap()).collect();
    let out = t.ok(&["destroy", "-auto-approve"]);
    assert!(out.contains("Destroy complete! 10 destroyed."), "{out}");
    assert!(
        t.processes().is_empty(),
        "processes left: {:?}",
        t.processes()
    );
    for p in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", p as u16)).is_err(),
            "port {p} still open"
        );
    }
    let left: Vec<String> = std::fs::read_dir(t.path().join(".pipeline"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut under_run = Vec::new();
    for e in walk(&t.path().join(".pipeline/run")) {
        under_run.push(e);
    }
    assert!(under_run.is_empty(), "left under run/: {under_run:?}");
    for d in ["run", "builds", "out"] {
        assert!(!left.contains(&d.to_string()), "{d} left behind: {left:?}");
    }
    assert!(state(&t).resources.is_empty());
}
