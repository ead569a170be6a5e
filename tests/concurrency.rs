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

/// A stack of `n` quick preview replicas and one service that takes `slow_s` seconds to listen
/// (it keeps an apply busy while a second one runs).
fn two_services(src: &std::path::Path, slow_s: u32, balancer: Option<u16>) -> String {
    let balancer = balancer
        .map(|port| {
            format!("\nbalancer \"front\" {{\n  listen = {port}\n  routes = {{ \"/\" = service.preview }}\n}}\n")
        })
        .unwrap_or_default();
    format!(
        r#"variable "n" {{ default = 3 }}

service "preview" {{
  replicas = var.n
  source   = "{src}"
  run      = "exec ./preview --port {{{{port}}}}"
  health   = {{ path = "/health", interval = "100ms" }}
}}

service "slow" {{
  source        = "{src}"
  run           = "sleep {slow_s} && exec ./preview --port {{{{port}}}}"
  health        = {{ path = "/health", interval = "100ms" }}
  start_timeout = "60s"
}}
{balancer}"#,
        src = src.display()
    )
}

/// Every upstream server in the balancer's nginx.conf, and whether its /health answers 200.
fn upstreams(t: &Scratch) -> Vec<(String, bool)> {
    let conf = std::fs::read_to_string(
        t.path()
            .join(".pipeline/run/balancer.front/conf/nginx.conf"),
    )
    .unwrap();
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter_map(|r| r.split([' ', ';']).next())
        .filter(|a| a.contains(':'))
        .map(|a| {
            let ok = http("GET", &format!("http://{a}/health"), "").is_some_and(|r| r.0 == 200);
            (a.to_string(), ok)
        })
        .collect()
}

/// The lock's id while `apply` holds it.
fn lock_id(t: &Scratch) -> String {
    let lock = t.path().join(".pipeline/state.lock");
    let text = std::fs::read_to_string(lock).expect("the lock is held");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// The marked processes (dir under .pipeline/run) whose instance the state does not name, or
/// whose generation is not the one recorded as serving or standby.
fn unowned(t: &Scratch) -> Vec<(u32, String)> {
    let st = state(t);
    let owned: Vec<(String, Vec<u64>)> = st
        .resources
        .iter()
        .map(|(a, r)| {
            let gens = ["generation", "standby_generation"]
                .iter()
                .filter_map(|k| r.attrs.get(*k).and_then(|g| g.as_u64()))
                .collect();
            (pipeline_providers::local::sanitize(a), gens)
        })
        .collect();
    t.marked()
        .into_iter()
        .filter(|(_, dir)| {
            let mut parts = dir.split('/');
            let inst = parts.next().unwrap_or_default();
            let sub = parts.next().unwrap_or_default();
            let Some((_, gens)) = owned.iter().find(|(o, _)| o == inst) else {
                return true;
            };
            match sub.strip_prefix("gen-").and_then(|g| g.parse::<u64>().ok()) {
                Some(g) => !gens.contains(&g),
                None => sub == "canary-slot",
            }
        })
        .collect()
}

#[test]
fn force_unlock_of_a_live_owner_is_refused_and_force_overrides_with_a_warning() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    t.write("s.hcl", &two_services(&src, 4, None));
    let mut first = t
        .cmd(&["apply", "-auto-approve", "s.hcl"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = t.path().join(".pipeline/state.lock");
    assert!(
        wait_until(Duration::from_secs(10), || lock.exists()),
        "the first apply never took the lock"
    );
    let id = lock_id(&t);
    let held = std::fs::read(&lock).unwrap();
    let out = t.run(&["force-unlock", &id]);
    let err = s(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("pid {}", first.id())) && err.contains("running"),
        "the live owner is named: {err}"
    );
    assert!(err.contains("-force"), "it says how to override: {err}");
    assert_eq!(std::fs::read(&lock).unwrap(), held, "the lock is untouched");

    let out = t.run(&["force-unlock", "-force", &id]);
    let err = s(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning"), "a forced unlock warns: {err}");
    assert!(!lock.exists(), "the lock is gone");
    assert!(first.wait().unwrap().success());
    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
}

/// The scenario of issue 8: a forced unlock lets a second apply run alongside the first; the
/// first compacts last, so the state forgets what the second created (preview[3] and [4])
/// while their processes run. The next apply and destroy find and stop them.
#[test]
fn two_applies_after_a_forced_unlock_leave_no_orphan_after_the_next_apply_or_destroy() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    let port = common::load::free_port();
    t.write("s.hcl", &two_services(&src, 6, Some(port)));
    let first = t
        .cmd(&["apply", "-auto-approve", "s.hcl"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The quick replicas and the balancer are recorded while the slow one still starts.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let st = state(&t);
            let ready = |a: &str| {
                st.resources
                    .get(a)
                    .is_some_and(|r| r.status == pipeline_state::Status::Ready)
            };
            t.path().join(".pipeline/state.lock").exists()
                && (0..3).all(|i| ready(&format!("service.preview[{i}]")))
                && ready("balancer.front")
        }),
        "the first apply recorded its quick replicas and the balancer"
    );
    let id = lock_id(&t);
    t.ok(&["force-unlock", "-force", &id]);
    t.ok(&[
        "apply",
        "-auto-approve",
        "-var",
        "n=5",
        "-target",
        "service.preview",
        "-target",
        "balancer.front",
        "s.hcl",
    ]);
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", s(&out.stderr));
    // What the issue saw: preview[3] and [4] run, and the state does not name them.
    let st = state(&t);
    assert!(!st.resources.contains_key("service.preview[3]"));
    let orphans = unowned(&t);
    assert!(
        orphans
            .iter()
            .any(|(_, d)| d.starts_with("service.preview_3_"))
            && orphans
                .iter()
                .any(|(_, d)| d.starts_with("service.preview_4_")),
        "{orphans:?}"
    );

    // The next apply of the recorded stack stops them and says so.
    let out = t.run(&["apply", "-auto-approve", "s.hcl"]);
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("service.preview[3]") && text.contains("service.preview[4]"),
        "the stopped orphans are reported: {text}"
    );
    assert_eq!(unowned(&t), vec![], "{text}");
    assert!(!t.path().join(".pipeline/run/service.preview_3_").exists());
    for i in 0..3 {
        assert_eq!(
            http(
                "GET",
                &format!(
                    "{}/health",
                    state(&t).resources[&format!("service.preview[{i}]")].attrs["url"]
                        .as_str()
                        .unwrap()
                ),
                ""
            )
            .map(|r| r.0),
            Some(200),
            "what the state names still serves"
        );
    }
    // The balancer sends to nothing that is not there.
    let ups = upstreams(&t);
    assert_eq!(ups.len(), 3, "{ups:?}");
    assert!(ups.iter().all(|(_, ok)| *ok), "{ups:?}");
    assert_eq!(
        versions_through(port, 12).values().sum::<usize>(),
        12,
        "every request through the balancer is answered"
    );

    // Orphans again (the same race), then destroy: nothing left at all.
    let first = t
        .cmd(&[
            "apply",
            "-auto-approve",
            "-replace",
            "service.slow",
            "s.hcl",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The slow replica's replacement is under way.
    assert!(wait_until(Duration::from_secs(20), || {
        t.path().join(".pipeline/state.lock").exists()
            && state(&t)
                .resources
                .get("service.slow")
                .is_some_and(|r| r.status == pipeline_state::Status::Pending)
    }));
    let id = lock_id(&t);
    t.ok(&["force-unlock", "-force", &id]);
    t.ok(&[
        "apply",
        "-auto-approve",
        "-var",
        "n=5",
        "-target",
        "service.preview",
        "s.hcl",
    ]);
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}{}", s(&out.stdout), s(&out.stderr));
    assert!(!unowned(&t).is_empty(), "the race left orphans again");
    let out = t.run(&["destroy", "-auto-approve", "s.hcl"]);
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert_eq!(t.marked(), vec![], "{text}");
    assert!(
        !t.path().join(".pipeline/run").exists(),
        "no run dir is left: {:?}",
        std::fs::read_dir(t.path().join(".pipeline/run"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Issue 8, item 5: a balancer, flag store and monitor that the state no longer names (`state
/// rm`, or a run that was killed or raced) are stopped by the next apply and by destroy, like
/// services are: nothing pipeline started under its working directory outlives its record.
#[test]
fn balancers_flag_stores_and_monitors_the_state_forgot_are_stopped_by_apply_and_destroy() {
    let t = Scratch::new();
    let (lb, dash, redis) = (
        common::load::free_port(),
        common::load::free_port(),
        common::load::free_port(),
    );
    let full = format!(
        r#"
host "app" {{ provider = "local" }}
flags "ui" {{
  on     = host.app
  port   = {redis}
  values = {{ tables = true }}
}}
balancer "front" {{
  listen = {lb}
  routes = {{ "/" = {{ static = "site" }} }}
}}
monitor "dash" {{ listen = {dash} }}
"#
    );
    std::fs::create_dir_all(t.path().join("site")).unwrap();
    std::fs::write(t.path().join("site/index.html"), "hello\n").unwrap();
    t.write("s.hcl", &full);
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert!(listening(lb) && listening(dash) && listening(redis));

    // Forget the balancer: the next apply (of a stack that still declares it) must not find a
    // port taken by a process nobody owns; it stops the forgotten one and starts its own.
    t.ok(&["state", "rm", "balancer.front"]);
    let out = t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert!(out.contains("balancer.front: not in the state"), "{out}");
    assert!(listening(lb), "the balancer was not started again:\n{out}");

    // Forget all three and destroy: nothing may keep running.
    for a in ["balancer.front", "flags.ui", "monitor.dash"] {
        t.ok(&["state", "rm", a]);
    }
    let out = t.ok(&["destroy", "-auto-approve", "s.hcl"]);
    for a in ["balancer.front", "flags.ui", "monitor.dash"] {
        assert!(
            out.contains(&format!("{a}: not in the state")),
            "{a}:\n{out}"
        );
    }
    let gone = wait_until(Duration::from_secs(10), || {
        !listening(lb) && !listening(dash) && !listening(redis)
    });
    assert!(
        gone,
        "still listening: balancer {} monitor {} redis {}",
        listening(lb),
        listening(dash),
        listening(redis)
    );
    assert!(
        !t.path().join(".pipeline/run").exists()
            || std::fs::read_dir(t.path().join(".pipeline/run"))
                .unwrap()
                .next()
                .is_none(),
        "run directories left"
    );
    assert!(t.marked().is_empty(), "{:?}", t.marked());
}
