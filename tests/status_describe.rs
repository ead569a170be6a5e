//! `pipeline status` asks each instance's provider what runs for it (`Provider::describe`):
//! right after an apply of a service behind an nginx balancer with a redis flag store, every
//! instance is healthy; once the balancer's nginx is gone, the balancer is down (with a
//! reason) while the rest stay healthy.

mod common;

use common::*;
use std::time::Duration;

fn stack(t: &Scratch, port: u16) {
    let src = prebuilt_source(t);
    t.write(
        "s.hcl",
        &format!(
            r#"flags "ui" {{
  values = {{ tables = true }}
}}

service "web" {{
  source   = "{}"
  replicas = 2
  run      = "./preview --port {{{{port}}}}"
  env      = {{ FLAGS_URL = flags.ui.local_url }}
  health   = {{ path = "/health", interval = "100ms" }}
}}

balancer "front" {{
  listen = {port}
  routes = {{ "/" = service.web }}
}}

file "note" {{
  path    = "note.txt"
  content = "runs nothing"
}}
"#,
            src.display()
        ),
    );
}

const RUNNING: [&str; 4] = [
    "balancer.front",
    "flags.ui",
    "service.web[0]",
    "service.web[1]",
];

fn rows(t: &Scratch) -> Vec<serde_json::Value> {
    serde_json::from_str(&t.ok(&["status", "-json"])).expect("status -json is a JSON array")
}

fn row<'a>(rows: &'a [serde_json::Value], addr: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["address"] == addr)
        .unwrap_or_else(|| panic!("no row for {addr}: {rows:?}"))
}

/// The HEALTH column of an instance in the text output.
fn health_column(text: &str, addr: &str) -> Option<String> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(addr))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
}

#[test]
fn status_shows_every_instance_healthy_and_a_stopped_nginx_down() {
    let t = Scratch::new();
    let port = common::load::free_port();
    stack(&t, port);
    t.ok(&["apply", "-auto-approve", "s.hcl"]);

    // Health checks run every 100 ms; a replica may still be "starting" for a moment.
    let healthy = wait_until(Duration::from_secs(10), || {
        let r = rows(&t);
        RUNNING.iter().all(|a| row(&r, a)["health"] == "healthy")
    });
    let r = rows(&t);
    assert!(healthy, "not every instance is healthy: {r:?}");
    for a in RUNNING {
        let x = row(&r, a);
        assert_eq!(x["running"], true, "{x}");
        assert_eq!(x["healthy"], true, "{x}");
        assert!(x["pid"].as_u64().is_some(), "{x}");
    }
    // The file runs nothing: no row.
    assert!(r.iter().all(|x| x["address"] != "file.note"), "{r:?}");
    let text = t.ok(&["status"]);
    for a in RUNNING {
        assert_eq!(
            health_column(&text, a).as_deref(),
            Some("healthy"),
            "{a}:\n{text}"
        );
    }
    // The balancer really serves, through to a replica.
    let (code, _) = http("GET", &format!("http://127.0.0.1:{port}/health"), "").expect("answers");
    assert_eq!(code, 200);

    // Stop the balancer's nginx: SIGKILL its supervisor, whose watchdog takes nginx with it.
    let nginx = row(&r, "balancer.front")["pid"].as_u64().unwrap() as u32;
    let supervisor = common::procfs::ppid(nginx).expect("nginx has a parent");
    // SAFETY: plain kill of the supervisor this test's apply started.
    unsafe { libc::kill(supervisor as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(10), || !common::procfs::alive(nginx)),
        "nginx {nginx} outlived its supervisor {supervisor}"
    );
    let down = wait_until(Duration::from_secs(5), || {
        row(&rows(&t), "balancer.front")["health"] == "down"
    });
    let r = rows(&t);
    let b = row(&r, "balancer.front");
    assert!(down, "{b}");
    assert_eq!(b["running"], false, "{b}");
    assert!(
        b["health_reason"].as_str().is_some_and(|s| !s.is_empty()),
        "a down instance says why: {b}"
    );
    for a in ["flags.ui", "service.web[0]", "service.web[1]"] {
        assert_eq!(row(&r, a)["health"], "healthy", "{a}: {r:?}");
    }
    let text = t.ok(&["status"]);
    assert_eq!(
        health_column(&text, "balancer.front").as_deref(),
        Some("down"),
        "{text}"
    );

    // `logs` reads where the provider says the main process logs.
    let logs = t.ok(&["logs", "service.web[1]"]);
    assert!(logs.contains("preview listening on"), "{logs}");
    let out = t.run(&["logs", "file.note"]);
    assert!(!out.status.success());
    let err = s(&out.stderr);
    assert!(err.contains("runs no process"), "{err}");
    assert!(err.contains("balancer.front"), "{err}");

    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
    assert!(
        t.processes().is_empty(),
        "left running: {:?}",
        t.processes()
    );
}
