//! The step context through the real binary: a block's `timeouts` bound a create, Ctrl-C
//! stops a create that hangs within 2 s and leaves it recorded Pending for the next apply to
//! clean up, and a bad `timeouts` value is an error at its location.

mod common;
use common::*;
use std::io::BufRead;
use std::time::{Duration, Instant};

/// Run `pipeline ARGS`, collecting stdout lines with the moment each arrived.
fn timed_lines(t: &Scratch, args: &[&str]) -> (std::process::ExitStatus, Vec<(Instant, String)>) {
    let mut child = t
        .cmd(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pipeline runs");
    let out = child.stdout.take().expect("stdout");
    let lines: Vec<(Instant, String)> = std::io::BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .map(|l| (Instant::now(), l))
        .collect();
    (child.wait().expect("pipeline exits"), lines)
}

fn event(
    lines: &[(Instant, String)],
    ty: &str,
    addr: &str,
) -> Option<(Instant, serde_json::Value)> {
    lines.iter().find_map(|(at, l)| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["type"] == ty && v["address"] == addr).then_some((*at, v))
    })
}

#[test]
fn a_create_past_timeouts_create_fails_naming_the_address_and_the_deadline() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    // The app needs ~5 s to become healthy; the block allows its create 1 s.
    t.write(
        "s.hcl",
        &format!(
            r#"service "slow" {{
  source   = "{}"
  run      = "sleep 5 && exec ./preview --port {{{{port}}}}"
  health   = {{ path = "/health", interval = "100ms" }}
  timeouts = {{ create = "1s" }}
}}
"#,
            src.display()
        ),
    );
    let (status, lines) = timed_lines(&t, &["apply", "-auto-approve", "-json", "s.hcl"]);
    assert_eq!(status.code(), Some(1));
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    let (started, _) = event(&lines, "apply_start", "service.slow").expect("started");
    let (failed, v) = event(&lines, "apply_errored", "service.slow")
        .unwrap_or_else(|| panic!("no failure in {text:#?}"));
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("service.slow: create did not finish within 1s (timeouts.create)"),
        "{error}"
    );
    let after_deadline = failed
        .duration_since(started)
        .saturating_sub(Duration::from_secs(1));
    println!(
        "create failed {:.0} ms after it started, {:.0} ms after its 1 s deadline",
        failed.duration_since(started).as_secs_f64() * 1000.0,
        after_deadline.as_secs_f64() * 1000.0
    );
    assert!(
        after_deadline < Duration::from_secs(2),
        "{after_deadline:?}"
    );
    // The half-made instance was cleaned up by the provider and is tainted for the next plan.
    let st = state(&t);
    assert_eq!(
        st.resources["service.slow"].status,
        pipeline_state::Status::Tainted
    );
    assert!(t.processes().is_empty(), "{:?}", t.marked());
}

#[test]
fn ctrl_c_during_a_create_that_hangs_returns_within_2s_and_the_next_apply_converges() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    let stack = |run: &str| {
        format!(
            r#"service "stuck" {{
  source        = "{}"
  run           = "{run}"
  health        = {{ path = "/health", interval = "100ms" }}
  start_timeout = "10m"
}}
"#,
            src.display()
        )
    };
    // Never listens: only Ctrl-C ends this create.
    t.write("s.hcl", &stack("exec sleep 600"));
    let child = t
        .cmd(&["apply", "-auto-approve", "s.hcl"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let app_runs = || {
        t.marked().iter().any(|(pid, dir)| {
            dir.ends_with("gen-1")
                && common::procfs::cmdline(*pid).is_some_and(|c| c.contains("sleep 600"))
        })
    };
    assert!(wait_until(Duration::from_secs(30), app_runs));
    let signalled = Instant::now();
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let took = signalled.elapsed();
    println!(
        "apply exited {:.0} ms after SIGINT",
        took.as_secs_f64() * 1000.0
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(out.status.code(), Some(1));
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(text.contains("Interrupt received"), "{text}");
    assert!(text.contains("service.stuck: interrupted"), "{text}");
    // Never forgotten: recorded Pending, whatever half-exists.
    let list = t.ok(&["state", "list"]);
    assert!(list.contains("service.stuck (Pending)"), "{list}");
    // The next apply, with the stack fixed, cleans up and finishes it: nothing of the hung
    // create is left running.
    t.write(
        "s.hcl",
        &stack("exec ./preview --port {{port}}").replace("10m", "30s"),
    );
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let st = state(&t);
    assert_eq!(
        st.resources["service.stuck"].status,
        pipeline_state::Status::Ready
    );
    let url = st.resources["service.stuck"].attrs["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        http("GET", &format!("{url}/health"), "").map(|r| r.0),
        Some(200)
    );
    let hung: Vec<_> = t
        .marked()
        .into_iter()
        .filter(|(pid, _)| common::procfs::cmdline(*pid).is_some_and(|c| c.contains("sleep 600")))
        .collect();
    assert!(hung.is_empty(), "{hung:?}");
    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
    assert!(t.processes().is_empty(), "{:?}", t.marked());
}

#[test]
fn a_bad_timeouts_value_is_an_error_at_its_location() {
    let t = Scratch::new();
    t.write(
        "s.hcl",
        r#"file "a" {
  path     = "out/a.txt"
  content  = "a"
  timeouts = { create = "a while" }
}
"#,
    );
    let out = t.run(&["plan", "s.hcl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = s(&out.stderr);
    assert!(
        err.contains("timeouts.create is not a duration: \"a while\""),
        "{err}"
    );
    assert!(err.contains("s.hcl:4:25"), "{err}");
    assert!(err.contains("help: write timeouts = {"), "{err}");
    assert!(!t.path().join("out/a.txt").exists());
}
