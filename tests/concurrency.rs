//! Two operators at once: a second apply is refused while one runs, naming the lock owner;
//! a saved plan is refused once the state moved on or belongs to another state.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn second_apply_is_refused_with_the_owner_named() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    // A replica that takes ~3 s to come up keeps the first apply busy.
    t.write(
        "slow.hcl",
        &format!(
            r#"service "slow" {{
  source        = "{}"
  run           = "sleep 3 && exec ./preview --port {{{{port}}}}"
  health        = {{ path = "/health", interval = "100ms" }}
}}
"#,
            src.display()
        ),
    );
    let mut first = t
        .cmd(&["apply", "-auto-approve", "slow.hcl"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = t.path().join(".pipeline/state.lock");
    assert!(
        wait_until(Duration::from_secs(10), || lock.exists()),
        "the first apply never took the lock"
    );
    let second = t.run(&["apply", "-auto-approve", "slow.hcl"]);
    assert_eq!(second.status.code(), Some(1));
    let err = s(&second.stderr);
    assert!(err.contains("state is locked by"), "{err}");
    assert!(
        err.contains(&format!("pid {}", first.id())),
        "the owner's pid is named: {err}"
    );
    assert!(err.contains("`apply`"), "the operation is named: {err}");
    assert!(
        err.contains("pipeline force-unlock"),
        "it says what to do: {err}"
    );
    assert!(first.wait().unwrap().success());
    assert!(!lock.exists(), "the lock is released");
    t.ok(&["destroy", "-auto-approve"]);
}

#[test]
fn stale_and_foreign_saved_plans_are_refused() {
    let t = Scratch::new();
    t.write("s.hcl", "variable \"v\" { default = \"one\" }\nfile \"f\" {\n  path    = \"out/f.txt\"\n  content = var.v\n}\n");
    t.ok(&["plan", "s.hcl", "-out", "first.plan"]);
    t.ok(&["plan", "s.hcl", "-out", "second.plan"]);
    let applied = t.ok(&["apply", "first.plan"]);
    assert!(applied.contains("Apply complete! 1 added"), "{applied}");
    assert_eq!(
        std::fs::read_to_string(t.path().join("out/f.txt")).unwrap(),
        "one"
    );

    // The state moved on since second.plan was made.
    let before = std::fs::read(t.path().join(".pipeline/state.json")).unwrap();
    let out = t.run(&["apply", "second.plan"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        s(&out.stderr).contains("saved plan is stale"),
        "{}",
        s(&out.stderr)
    );
    assert_eq!(
        before,
        std::fs::read(t.path().join(".pipeline/state.json")).unwrap(),
        "nothing changed"
    );

    // A plan made against another state (other lineage) is refused too.
    t.ok(&["plan", "s.hcl", "-var", "v=two", "-out", "mine.plan"]);
    let other = t.path().join("other-state");
    let out = t
        .cmd(&[
            "--state-dir",
            other.to_str().unwrap(),
            "apply",
            "-auto-approve",
            "s.hcl",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = t
        .cmd(&["--state-dir", other.to_str().unwrap(), "apply", "mine.plan"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        s(&out.stderr).contains("does not match the given state"),
        "{}",
        s(&out.stderr)
    );

    // Changed stack files since the plan: refused.
    t.write("s.hcl", "variable \"v\" { default = \"three\" }\nfile \"f\" {\n  path    = \"out/f.txt\"\n  content = var.v\n}\n");
    let out = t.run(&["apply", "mine.plan"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        s(&out.stderr).contains("stack files changed"),
        "{}",
        s(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(t.path().join("out/f.txt")).unwrap(),
        "one"
    );
}

#[test]
fn a_stale_lock_of_a_dead_process_is_broken_and_force_unlock_works() {
    let t = Scratch::new();
    t.write(
        "s.hcl",
        "file \"f\" {\n  path    = \"out/f.txt\"\n  content = \"x\"\n}\n",
    );
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    // A lock left by a process that is gone.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let lock = serde_json::json!({"id": "dead-lock-1", "operation": "apply", "who": "ci", "host": host, "pid": pid, "created": "2026-11-21T00:00:00Z"});
    std::fs::write(t.path().join(".pipeline/state.lock"), lock.to_string()).unwrap();
    t.write(
        "s.hcl",
        "file \"f\" {\n  path    = \"out/f.txt\"\n  content = \"y\"\n}\n",
    );
    let out = t.run(&["apply", "-auto-approve"]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert!(
        s(&out.stderr).contains("broke a stale lock"),
        "{}",
        s(&out.stderr)
    );

    // A lock of a live process on another host is not stale: refused, then force-unlock.
    let lock = serde_json::json!({"id": "other-host-2", "operation": "apply", "who": "ci", "host": "elsewhere", "pid": 1, "created": "2026-11-21T00:00:00Z"});
    std::fs::write(t.path().join(".pipeline/state.lock"), lock.to_string()).unwrap();
    t.write(
        "s.hcl",
        "file \"f\" {\n  path    = \"out/f.txt\"\n  content = \"z\"\n}\n",
    );
    let out = t.run(&["apply", "-auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        s(&out.stderr).contains("ci@elsewhere"),
        "{}",
        s(&out.stderr)
    );
    let out = t.run(&["force-unlock", "wrong-id"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(t.path().join("out/f.txt")).unwrap(),
        "y",
        "nothing applied while locked"
    );
    t.ok(&["force-unlock", "other-host-2"]);
    t.ok(&["apply", "-auto-approve"]);
    assert_eq!(
        std::fs::read_to_string(t.path().join("out/f.txt")).unwrap(),
        "z"
    );
}
