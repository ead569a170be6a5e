//! A full disk does not take production down (issue 8, item 4): with `.pipeline` on a small
//! tmpfs that fills up while a service, a balancer, a flag store and a monitor run, every request is still
//! served, the dropped log output is counted and reported once space returns, an apply fails
//! naming the address and "no space left", and the next apply after space is freed converges.
//! Needs root (mount) and nginx, as the balancer tests do.

mod common;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted on `dir`; on drop everything started under it is stopped and it is unmounted.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs (this test needs root): {}",
            s(&out.stderr)
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("fill"));
        let run = self.dir.join("run");
        let mut dirs = vec![];
        for e in std::fs::read_dir(&run).into_iter().flatten().flatten() {
            dirs.push(e.path());
            for d in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                if d.path().is_dir() {
                    dirs.push(d.path());
                }
            }
        }
        for d in dirs.iter().rev() {
            let _ = pipeline_supervise::stop(d, Duration::from_secs(5));
        }
        for pid in pipeline_supervise::processes_under(&self.dir) {
            // SAFETY: plain kill of a process we started (marker env under our mount).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Fills the filesystem of `dir` with one file until the kernel says it is full.
fn fill(dir: &Path) -> u64 {
    let mut f = std::fs::File::create(dir.join("fill")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    // The last pages: single bytes until nothing fits.
    while let Ok(1) = f.write(&[0u8]) {
        written += 1;
    }
    written
}

/// The supervisor's count of dropped log bytes, from its status.json.
fn dropped(gen: &Path) -> u64 {
    std::fs::read(gen.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["log_dropped_bytes"].as_u64())
        .unwrap_or(0)
}

fn stack(src: &Path, lb: u16, dash: u16, build: &str) -> String {
    format!(
        r#"flags "ui" {{
  values = {{ tables = true }}
}}

service "web" {{
  replicas = 2
  source   = "{}"
  build    = "{build}"
  # A chatty app: a 2 KB log line every 50 ms besides serving.
  run      = "(while :; do printf '%2000s\\n' 'log line from the app'; sleep 0.05; done) & exec ./preview --port {{{{port}}}}"
  env      = {{ FLAGS_URL = flags.ui.local_url }}
  health   = {{ path = "/health", interval = "100ms" }}
}}

balancer "front" {{
  listen = {lb}
  routes = {{ "/" = service.web }}
}}

monitor "dash" {{
  listen = {dash}
}}
"#,
        src.display()
    )
}

#[test]
fn a_full_disk_keeps_serving_reports_dropped_logs_and_converges_after() {
    let t = Scratch::new();
    // The source (with the prebuilt binary) is outside the small filesystem.
    let src = prebuilt_source(&t);
    let dot = t.path().join(".pipeline");
    let mnt = Tmpfs::mount(&dot, "48m");
    let lb = common::load::free_port();
    let dash = common::load::free_port();
    t.write("s.hcl", &stack(&src, lb, dash, "true"));
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let url = format!("http://127.0.0.1:{lb}/health");
    assert_eq!(http("GET", &url, "").map(|r| r.0), Some(200));

    let filled = fill(&mnt.dir);
    eprintln!("filled .pipeline with {} MiB", filled / (1 << 20));

    // A bounded number of requests over ~4 s while the disk is full: all must be served.
    let (mut sent, mut served) = (0, 0);
    let mut failures = vec![];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) && sent < 400 {
        sent += 1;
        match http("GET", &url, "") {
            Some((200, _)) => served += 1,
            other => failures.push((start.elapsed(), other)),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let dash_up = http("GET", &format!("http://127.0.0.1:{dash}/healthz"), "").map(|r| r.0);
    eprintln!("while full: {served} of {sent} requests served through the balancer");
    assert_eq!(
        served,
        sent,
        "failed while the disk was full: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert_eq!(dash_up, Some(200), "the monitor stopped answering");
    // The flag store (redis, `save ""`: nothing to write) still answers.
    let flag = t.ok(&["flags", "get", "tables"]);
    assert_eq!(flag.trim(), "tables = on", "{flag}");
    // The running generation of service.web[i].
    let gen_dir = |i: usize| -> PathBuf {
        let inst = dot.join(format!("run/service.web_{i}_"));
        std::fs::read_dir(&inst)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("gen-"))
                    && p.join("supervisor.pid").exists()
            })
            .unwrap()
    };
    for i in 0..2 {
        let st = pipeline_supervise::status(&gen_dir(i)).unwrap();
        assert!(st.supervisor_alive && st.child_alive, "web[{i}]: {st:?}");
    }

    // (a) Completely full: the apply cannot even take the lock; it says so and changes nothing.
    // Every file directly in .pipeline (state, journal, lock), by name with a hash of its bytes.
    let files = |dir: &Path| -> Vec<(String, u64)> {
        use std::hash::{Hash, Hasher};
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_file() && e.file_name() != "fill")
            .map(|e| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(e.path()).unwrap().hash(&mut h);
                (e.file_name().to_string_lossy().into_owned(), h.finish())
            })
            .collect();
        v.sort();
        v
    };
    let before = files(&dot);
    t.write("s.hcl", &stack(&src, lb, dash, "test -x preview"));
    let out = t.run(&["apply", "-auto-approve", "s.hcl"]);
    let err = s(&out.stdout) + &s(&out.stderr);
    eprintln!("apply on a full disk:\n{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(files(&dot), before, "the state files changed");

    // (b) Nearly full (256 KiB free): the lock and journal fit, the new build does not. The
    // apply fails naming the instance and the cause; the old generation keeps serving.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.dir.join("fill"))
        .unwrap();
    f.set_len(filled - 256 * 1024).unwrap();
    drop(f);
    let recorded = state(&t);
    let out = t.run(&["apply", "-auto-approve", "s.hcl"]);
    let err = s(&out.stdout) + &s(&out.stderr);
    eprintln!("apply on a nearly full disk:\n{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("service.web["), "{err}");
    let after = state(&t);
    assert_eq!(
        after.resources.keys().collect::<Vec<_>>(),
        recorded.resources.keys().collect::<Vec<_>>()
    );
    assert_eq!(http("GET", &url, "").map(|r| r.0), Some(200));

    // Space returns: the supervisors say what was dropped, and the next apply converges.
    std::fs::remove_file(mnt.dir.join("fill")).unwrap();
    let mut reported = String::new();
    let said = wait_until(Duration::from_secs(10), || {
        reported = std::fs::read_to_string(gen_dir(0).join("replica.log")).unwrap_or_default();
        dropped(&gen_dir(0)) > 0 && reported.contains("bytes of output were dropped")
    });
    let st = std::fs::read_to_string(gen_dir(0).join("status.json")).unwrap_or_default();
    eprintln!(
        "reported: {} bytes dropped; log: {}",
        dropped(&gen_dir(0)),
        reported
            .lines()
            .filter(|l| l.contains("dropped"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert!(said, "no report of dropped output: {st}\n{reported}");
    let status = t.ok(&["status"]);
    eprintln!("pipeline status:\n{status}");
    assert!(status.contains("bytes of output dropped"), "{status}");
    let json: serde_json::Value = serde_json::from_str(&t.ok(&["status", "-json"])).unwrap();
    // Everything is still up: nginx and redis too (they rewrite their environment block for
    // their process titles, so `status` must not rely on finding its marker there).
    for r in json.as_array().unwrap() {
        assert_eq!(r["running"], true, "{r}\n{status}");
    }
    assert!(
        json.as_array()
            .unwrap()
            .iter()
            .any(|r| r["log_dropped_bytes"].as_u64().unwrap_or(0) > 0),
        "{json}"
    );

    let applied = t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert!(applied.contains("Apply complete!"), "{applied}");
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(plan.contains("No changes"), "{plan}");
    let body = http("GET", &format!("http://127.0.0.1:{lb}/"), "").unwrap();
    assert_eq!(body.0, 200);
    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
}
