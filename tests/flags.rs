//! The `flags` store (redis provider) and `pipeline flags`, against real redis-servers and the
//! real binary: a flip changes what the sample service renders, mirrors outlive the primary,
//! and bad input (port in use, wrong password, no redis-server) gets a clear message.

mod common;

use common::*;
use pipeline_providers::redis::resp::{Conn, Url};
use std::time::Duration;

const TABLE_MD: &str = r#"{"markdown":"| a | b |\n|---|---|\n| 1 | 2 |"}"#;

fn stack(t: &Scratch) {
    let src = prebuilt_source(t);
    t.write(
        "s.hcl",
        &format!(
            r#"flags "ui" {{
  values = {{ tables = true }}
}}

service "app" {{
  source = "{}"
  run    = "./preview --port {{{{port}}}}"
  env    = {{ FLAGS_URL = flags.ui.local_url }}
  health = {{ path = "/health", interval = "100ms" }}
}}

output "url" {{
  value = service.app.url
}}
"#,
            src.display()
        ),
    );
}

fn renders_table(url: &str) -> bool {
    let (status, body) =
        http("POST", &format!("{url}/preview"), TABLE_MD).expect("preview answers");
    assert_eq!(status, 200, "{body}");
    body.contains("<table>")
}

fn flags_attr(t: &Scratch, k: &str) -> serde_json::Value {
    state(t).resources["flags.ui"].attrs[k].clone()
}

fn primary(t: &Scratch) -> Url {
    Url::parse(flags_attr(t, "url").as_str().unwrap()).unwrap()
}

fn destroy_and_check(t: &Scratch) {
    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
    assert!(
        t.processes().is_empty(),
        "left running: {:?}",
        t.processes()
    );
    assert!(!t.path().join(".pipeline/run/flags.ui").exists());
}

#[test]
fn a_flag_flip_changes_the_service_and_mirrors_outlive_the_primary() {
    let t = Scratch::new();
    stack(&t);
    let out = t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert!(
        !out.contains("redis://"),
        "a secret in the apply output:\n{out}"
    );
    let url = t.ok(&["output", "url"]).trim().to_string();
    assert!(renders_table(&url), "tables are seeded on");

    // The secret stays out of what is shown.
    let shown = t.ok(&["state", "show", "flags.ui"]);
    let pw = primary(&t).password.unwrap();
    assert!(!shown.contains(&pw), "{shown}");

    let out = t.ok(&["flags", "set", "tables", "off"]);
    assert!(out.starts_with("tables = off (all 1 mirrors in "), "{out}");
    assert!(
        wait_until(Duration::from_secs(5), || !renders_table(&url)),
        "the service still renders tables after the flip"
    );
    assert_eq!(t.ok(&["flags", "get", "tables"]).trim(), "tables = off");
    assert_eq!(t.ok(&["flags", "list"]).trim(), "tables = off");
    let j: serde_json::Value =
        serde_json::from_str(&t.ok(&["flags", "get", "tables", "--json"])).unwrap();
    assert_eq!(j["enabled"], false);
    assert_eq!(j["source"], "primary");

    // A percentage: exactly that share of every 100 requests.
    t.ok(&["flags", "set", "tables", "on", "--percent", "30"]);
    let on = (0..100).filter(|_| renders_table(&url)).count();
    assert_eq!(on, 30, "requests with tables at 30%");
    assert!(t
        .ok(&["flags", "list", "--json"])
        .contains(r#""tables":{"enabled":true,"percent":30}"#));
    t.ok(&["flags", "set", "tables", "off"]);
    assert!(!renders_table(&url));

    // The primary goes away; the instance keeps the last value from its mirror.
    let p = primary(&t);
    pipeline_supervise::stop(
        &t.path().join(".pipeline/run/flags.ui/primary"),
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(Conn::connect(&p, Duration::from_millis(500)).is_err());
    for _ in 0..20 {
        assert!(!renders_table(&url), "the last value (off) is kept");
    }
    let out = t.run(&["flags", "get", "tables"]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert_eq!(s(&out.stdout).trim(), "tables = off");
    let err = s(&out.stderr);
    assert!(
        err.contains("the primary at")
            && err.contains("does not answer")
            && err.contains("mirror-0"),
        "{err}"
    );
    let out = t.run(&["flags", "set", "tables", "on"]);
    assert!(!out.status.success());
    let err = s(&out.stderr);
    assert!(
        err.contains("does not answer") && err.contains("pipeline apply"),
        "{err}"
    );
    assert!(!renders_table(&url));

    // The plan sees the store as gone.
    let out = t.run(&["plan", "s.hcl"]);
    let plan = s(&out.stdout);
    assert!(
        plan.contains("flags.ui is gone"),
        "{plan}\n{}",
        s(&out.stderr)
    );
    destroy_and_check(&t);
}

#[test]
fn seeds_never_revert_flips_and_mirrors_follow_the_count() {
    let t = Scratch::new();
    t.write("s.hcl", "flags \"ui\" {\n  values = { tables = true }\n}\n");
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    t.ok(&["flags", "set", "tables", "off"]);
    let before = flags_attr(&t, "mirror_ports");
    t.write(
        "s.hcl",
        "flags \"ui\" {\n  mirrors = 3\n  values  = { tables = true, beta = 25 }\n}\n",
    );
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(
        plan.contains("~ flags \"ui\""),
        "an update in place:\n{plan}"
    );
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let after = flags_attr(&t, "mirror_ports");
    assert_eq!(after.as_array().unwrap().len(), 3);
    assert_eq!(after[0], before[0], "the first mirror kept running");
    assert_eq!(
        t.ok(&["flags", "list"]),
        "beta   = on (25%)\ntables = off\n",
        "the new seed is written, the flipped flag is not reverted"
    );
    let out = t.ok(&["flags", "set", "tables", "on"]);
    assert!(out.starts_with("tables = on (all 3 mirrors in "), "{out}");
    for u in flags_attr(&t, "mirror_urls").as_array().unwrap() {
        let mut c = Conn::connect(
            &Url::parse(u.as_str().unwrap()).unwrap(),
            Duration::from_secs(2),
        )
        .unwrap();
        let v = pipeline_providers::redis::store::get(&mut c, "tables").unwrap();
        assert_eq!(v.unwrap().describe(), "on");
    }
    t.write("s.hcl", "flags \"ui\" {\n  mirrors = 1\n}\n");
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert!(!t.path().join(".pipeline/run/flags.ui/mirror-1").exists());
    assert!(t.ok(&["plan", "s.hcl"]).contains("No changes"));
    destroy_and_check(&t);
}

#[test]
fn a_port_in_use_is_named_before_anything_starts() {
    let t = Scratch::new();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    t.write("s.hcl", &format!("flags \"ui\" {{\n  port = {port}\n}}\n"));
    for args in [&["plan", "s.hcl"][..], &["apply", "-auto-approve", "s.hcl"]] {
        let out = t.run(args);
        let cmd = args[0];
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = s(&out.stderr);
        assert!(
            err.contains(&format!("port {port} on 127.0.0.1 is already in use"))
                && err.contains("s.hcl:1")
                && err.contains("leave `port` out"),
            "{cmd}: {err}"
        );
    }
    assert!(t.processes().is_empty());
    assert!(!t.path().join(".pipeline/run/flags.ui").exists());
}

#[test]
fn a_wrong_password_says_the_state_does_not_match() {
    let t = Scratch::new();
    t.write("s.hcl", "flags \"ui\" {\n  values = { tables = true }\n}\n");
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let p = primary(&t);
    let mut c = Conn::connect(&p, Duration::from_secs(2)).unwrap();
    c.cmd(&["CONFIG", "SET", "requirepass", "changed-by-hand"])
        .unwrap();
    for args in [
        &["flags", "set", "tables", "off"][..],
        &["flags", "get", "tables"],
    ] {
        let out = t.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = s(&out.stderr);
        assert!(
            err.contains("WRONGPASS")
                && err.contains("the password in the state does not match the running store")
                && err.contains("help:"),
            "{args:?}: {err}"
        );
        assert!(!err.contains(p.password.as_deref().unwrap()), "{err}");
    }
    destroy_and_check(&t);
}

#[test]
fn no_redis_server_on_path_says_how_to_install_it() {
    let t = Scratch::new();
    t.write("s.hcl", "flags \"ui\" {}\n");
    let empty = t.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let out = t
        .cmd(&["plan", "s.hcl"])
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = s(&out.stderr);
    assert!(
        err.contains("redis-server is not on PATH")
            && err.contains("apt-get install redis-server")
            && err.contains("s.hcl:1"),
        "{err}"
    );
    let out = t.run(&["flags", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        s(&out.stderr).contains("there is no flags store in the state"),
        "{}",
        s(&out.stderr)
    );
}
