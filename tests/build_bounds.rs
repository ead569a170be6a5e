//! Builds are bounded and owned (issue 8, item 7): a build has a deadline, and it dies with the
//! CLI that started it (deadline, kill -9, Ctrl-C), through the real binary.

mod common;
use common::procfs::{alive, cmdline, ppid};
use common::*;
use std::process::{Child, Stdio};
use std::time::Duration;

/// A marker unique to this test run, so only our own build processes are found.
fn marker(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("h4build{tag}{}n{nanos}", std::process::id())
}

/// Live processes whose command line holds `marker`, and every descendant of them.
fn build_processes(marker: &str) -> Vec<u32> {
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&p| alive(p))
        .collect();
    let mut found: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| cmdline(p).is_some_and(|c| c.contains(marker)))
        .collect();
    loop {
        let more: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| !found.contains(p))
            .filter(|&p| ppid(p).is_some_and(|pp| found.contains(&pp)))
            .collect();
        if more.is_empty() {
            break;
        }
        found.extend(more);
    }
    found.sort_unstable();
    found
}

/// Kills whatever is left of the build and the CLI even when an assertion failed.
struct Cleanup {
    marker: String,
    cli: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = &mut self.cli {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in build_processes(&self.marker) {
            // SAFETY: plain kill of a process that runs our unique marker.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
    }
}

fn stack(t: &Scratch, build: &str, timeout: Option<&str>) -> String {
    let src = t.path().join("app");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("README"), "a source to build\n").unwrap();
    format!(
        "service \"slow\" {{\n  source = \"app\"\n  build  = \"{build}\"\n{}  run    = \"sleep 1000\"\n}}\n",
        timeout
            .map(|t| format!("  build_timeout = \"{t}\"\n"))
            .unwrap_or_default()
    )
}

/// Waits until the build runs; returns its processes.
fn wait_for_build(marker: &str, cli: &mut Child) -> Vec<u32> {
    let mut procs = vec![];
    let seen = wait_until(Duration::from_secs(60), || {
        procs = build_processes(marker);
        procs.len() >= 2 || cli.try_wait().unwrap().is_some()
    });
    assert!(seen && procs.len() >= 2, "the build never ran: {procs:?}");
    procs
}

/// An apply whose build never ends, started with its output piped: the scratch dir, the build's
/// marker, the guard that owns the CLI, and the build's processes once they run.
fn building(tag: &str) -> (Scratch, String, Cleanup, Vec<u32>) {
    let t = Scratch::new();
    let m = marker(tag);
    t.write(
        "s.hcl",
        &stack(&t, &format!("sleep 100000; echo {m}"), None),
    );
    let mut guard = Cleanup {
        marker: m.clone(),
        cli: Some(
            t.cmd(&["apply", "-auto-approve", "s.hcl"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        ),
    };
    let procs = wait_for_build(&m, guard.cli.as_mut().unwrap());
    (t, m, guard, procs)
}

#[test]
fn a_build_past_its_deadline_is_stopped_and_named() {
    let t = Scratch::new();
    let m = marker("deadline");
    let _guard = Cleanup {
        marker: m.clone(),
        cli: None,
    };
    t.write(
        "s.hcl",
        &stack(&t, &format!("sleep 100000; echo {m}"), Some("2s")),
    );
    let out = t.run(&["apply", "-auto-approve", "s.hcl"]);
    let err = s(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}\n{err}", s(&out.stdout));
    assert!(err.contains("the build of service.slow "), "{err}");
    assert!(
        err.contains("did not finish within 2s (build_timeout)"),
        "{err}"
    );
    assert!(err.contains("build_timeout"), "{err}");
    assert!(
        build_processes(&m).is_empty(),
        "build processes left: {:?}",
        build_processes(&m)
    );
    // The default is there and a bad value is a plan error at its line.
    t.write("s.hcl", &stack(&t, "true", Some("soon")));
    let out = t.run(&["plan", "s.hcl"]);
    let err = s(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("s.hcl:4:"), "{err}");
    assert!(err.contains("\"soon\" is not a duration"), "{err}");
}

#[test]
fn a_killed_cli_takes_its_build_with_it() {
    let (_t, _, mut guard, procs) = building("kill9");
    let cli = guard.cli.as_mut().unwrap();
    cli.kill().unwrap(); // SIGKILL
    cli.wait().unwrap();
    let gone = wait_until(Duration::from_secs(10), || procs.iter().all(|&p| !alive(p)));
    let left: Vec<(u32, Option<u32>, Option<String>)> = procs
        .iter()
        .filter(|&&p| alive(p))
        .map(|&p| (p, ppid(p), cmdline(p)))
        .collect();
    assert!(gone, "build processes outlived the CLI: {left:?}");
}

#[test]
fn ctrl_c_stops_a_running_build() {
    let (_t, m, mut guard, procs) = building("ctrlc");
    let pid = guard.cli.as_ref().unwrap().id();
    // SAFETY: SIGINT to the CLI we started, as Ctrl-C would.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let cli = guard.cli.as_mut().unwrap();
    let ended = wait_until(Duration::from_secs(30), || {
        cli.try_wait().unwrap().is_some()
    });
    assert!(ended, "apply still runs 30 s after Ctrl-C during a build");
    let out = guard.cli.take().unwrap().wait_with_output().unwrap();
    let err = s(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the build of service.slow "), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        procs.iter().all(|&p| !alive(p)),
        "build processes left after Ctrl-C: {:?}",
        build_processes(&m)
    );
}
