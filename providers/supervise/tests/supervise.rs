//! Real-process tests: every test starts detached supervisors through the `supervise-test` bin
//! and a `Guard` stops (and if need be SIGKILLs) everything under its temp dir, even on panic.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pipeline_supervise::{
    check_once, free_port, processes_under, start, status, stop, wait_healthy, HealthCheck,
    ReplicaSpec, ReplicaStatus, Started,
};

const EXE: &str = env!("CARGO_BIN_EXE_supervise-test");
/// Upper bound for every wait; none of these is a timing assertion.
const BOUND: Duration = Duration::from_secs(30);

const SERVER: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path == "/health" else 404
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
port = int(os.environ["PORT"])
print("server listening on", port, flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

struct Guard {
    root: tempfile::TempDir,
}

impl Guard {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("server.py"), SERVER).unwrap();
        Guard { root }
    }
    fn root(&self) -> &Path {
        self.root.path()
    }
    fn dir(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }
    /// An HTTP replica running the python server, checked on /health.
    fn http_spec(&self, name: &str) -> ReplicaSpec {
        let port = free_port("127.0.0.1").unwrap();
        let mut spec = ReplicaSpec::new(name, "python3 server.py", self.root(), port);
        spec.health = fast(HealthCheck::http("/health"));
        spec
    }
    fn sh_spec(&self, name: &str, command: &str) -> ReplicaSpec {
        let port = free_port("127.0.0.1").unwrap();
        let mut spec = ReplicaSpec::new(name, command, self.root(), port);
        spec.health = fast(HealthCheck::tcp());
        spec
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(self.root.path()) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    let _ = stop(&e.path(), Duration::from_secs(10));
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_under(self.root.path());
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn fast(mut h: HealthCheck) -> HealthCheck {
    h.interval_ms = 100;
    h.timeout_ms = 1000;
    h
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn st(dir: &Path) -> ReplicaStatus {
    status(dir).expect("status: supervisor.pid missing")
}

fn kill9(pid: u32) {
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

fn start_ok(dir: &Path, spec: &ReplicaSpec) -> Started {
    start(Path::new(EXE), dir, spec, BOUND).unwrap_or_else(|e| panic!("start failed: {e}"))
}

#[test]
fn start_is_alive_and_healthy_and_stop_leaves_nothing() {
    let g = Guard::new();
    let dir = g.dir("web-0");
    let mut spec = g.http_spec("service.web[0]");
    spec.env.insert("GREETING".into(), "hello".into());
    spec.command = format!("echo greeting=$GREETING port=$PORT; {}", spec.command);

    let started = start_ok(&dir, &spec);
    let s = st(&dir);
    assert_eq!(s.supervisor_pid, started.supervisor_pid);
    assert!(s.supervisor_alive);
    assert_eq!(s.child_pid, Some(started.child_pid));
    assert!(s.child_alive);
    assert_eq!(s.port, spec.port);
    assert_eq!(s.restarts, 0);

    wait_healthy(&dir, &spec, BOUND).unwrap();
    check_once(&spec.address, spec.port, &spec.health).unwrap();
    wait_until("status healthy", || st(&dir).healthy == Some(true));

    // Files in DIR.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("spec.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let log = std::fs::read_to_string(dir.join("replica.log")).unwrap();
    assert!(
        log.contains(&format!("start attempt 1 pid {}", started.child_pid)),
        "{log}"
    );
    assert!(
        log.contains(&format!("greeting=hello port={}", spec.port)),
        "{log}"
    );
    let sup = processes_under(g.root());
    assert!(sup.contains(&started.supervisor_pid) && sup.contains(&started.child_pid));

    // A second start on a running DIR is refused.
    let err = start(Path::new(EXE), &dir, &spec, BOUND).unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");

    stop(&dir, BOUND).unwrap();
    assert_eq!(processes_under(g.root()), Vec::<u32>::new());
    assert!(status(&dir).is_none());
    assert!(check_once(&spec.address, spec.port, &spec.health).is_err());
    let final_status = std::fs::read_to_string(dir.join("status.json")).unwrap();
    assert!(final_status.contains("\"stopped\""), "{final_status}");
    // Idempotent.
    stop(&dir, BOUND).unwrap();
}

#[test]
fn killed_child_is_restarted() {
    let g = Guard::new();
    let dir = g.dir("web-1");
    let spec = g.http_spec("service.web[1]");
    let started = start_ok(&dir, &spec);
    wait_healthy(&dir, &spec, BOUND).unwrap();

    kill9(started.child_pid);
    wait_until("a new healthy child", || {
        let s = st(&dir);
        s.child_pid.is_some_and(|p| p != started.child_pid)
            && s.child_alive
            && s.healthy == Some(true)
    });
    let s = st(&dir);
    assert_eq!(s.restarts, 1);
    assert_eq!(s.supervisor_pid, started.supervisor_pid);
    assert!(s.supervisor_alive);
    check_once(&spec.address, spec.port, &spec.health).unwrap();
    let log = std::fs::read_to_string(dir.join("replica.log")).unwrap();
    assert!(log.contains("was killed by signal 9"), "{log}");
    assert!(log.contains("start attempt 2 pid"), "{log}");

    stop(&dir, BOUND).unwrap();
    assert_eq!(processes_under(g.root()), Vec::<u32>::new());
}

#[test]
fn killed_supervisor_takes_child_down() {
    let g = Guard::new();
    let dir = g.dir("web-2");
    let spec = g.http_spec("service.web[2]");
    let started = start_ok(&dir, &spec);
    wait_healthy(&dir, &spec, BOUND).unwrap();

    kill9(started.supervisor_pid);
    wait_until("no process left after supervisor SIGKILL", || {
        processes_under(g.root()).is_empty()
    });
    let s = st(&dir);
    assert!(!s.supervisor_alive && !s.child_alive);
    stop(&dir, BOUND).unwrap();
    assert!(status(&dir).is_none());
}

#[test]
fn stop_cleans_up_after_a_killed_supervisor_with_orphans() {
    let g = Guard::new();
    let dir = g.dir("orphan");
    // The setsid'd grandchild leaves the process group and has no PDEATHSIG.
    let spec = g.sh_spec("service.orphan[0]", "setsid sleep 600 & exec sleep 600");
    let started = start_ok(&dir, &spec);
    wait_until("grandchild running", || processes_under(&dir).len() >= 3);

    kill9(started.supervisor_pid);
    wait_until("supervisor and child gone", || {
        let s = st(&dir);
        !s.supervisor_alive && !s.child_alive
    });
    assert!(!processes_under(&dir).is_empty(), "orphan expected");
    stop(&dir, BOUND).unwrap();
    assert_eq!(processes_under(g.root()), Vec::<u32>::new());
}

#[test]
fn stop_with_short_timeout_kills_a_term_ignoring_child() {
    let g = Guard::new();
    let dir = g.dir("stubborn");
    let spec = g.sh_spec(
        "service.stubborn[0]",
        "trap '' TERM; sleep 600 & exec sleep 600",
    );
    start_ok(&dir, &spec);
    wait_until("background sleep running", || {
        processes_under(&dir).len() >= 3
    });
    stop(&dir, Duration::from_millis(300)).unwrap();
    assert_eq!(processes_under(g.root()), Vec::<u32>::new());
    assert!(status(&dir).is_none());
}

#[test]
fn exiting_command_fails_wait_healthy_with_log_tail() {
    let g = Guard::new();
    let dir = g.dir("crash");
    let spec = g.sh_spec("service.crash[0]", "echo boom-from-child >&2; exit 3");
    start_ok(&dir, &spec);
    let err = wait_healthy(&dir, &spec, BOUND).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("boom-from-child"), "{msg}");
    assert!(msg.contains("service.crash[0]"), "{msg}");
    assert!(
        msg.contains(&dir.canonicalize().unwrap().display().to_string()),
        "{msg}"
    );
    stop(&dir, BOUND).unwrap();
    assert_eq!(processes_under(g.root()), Vec::<u32>::new());
}

#[test]
fn exiting_command_without_restart_ends_the_supervisor() {
    let g = Guard::new();
    let dir = g.dir("once");
    let mut spec = g.sh_spec("service.once[0]", "echo ran-once; exit 0");
    spec.restart = false;
    start_ok(&dir, &spec);
    let err = wait_healthy(&dir, &spec, BOUND).unwrap_err();
    assert!(err.to_string().contains("ran-once"), "{err}");
    wait_until("supervisor exited", || !st(&dir).supervisor_alive);
    let s = st(&dir);
    assert_eq!(s.state, "exited");
    assert_eq!(s.restarts, 0);
    assert_eq!(s.last_exit.as_deref(), Some("exited with status 0"));
    stop(&dir, BOUND).unwrap();
    assert_eq!(processes_under(g.root()), Vec::<u32>::new());
}

#[test]
fn never_healthy_times_out_with_log_tail() {
    let g = Guard::new();
    let dir = g.dir("deaf");
    let mut spec = g.sh_spec(
        "service.deaf[0]",
        "echo never-healthy-marker; exec sleep 600",
    );
    spec.health = fast(HealthCheck::http("/health"));
    start_ok(&dir, &spec);
    let err = wait_healthy(&dir, &spec, Duration::from_millis(1500)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("never-healthy-marker"), "{msg}");
    assert!(msg.contains("not healthy"), "{msg}");
    assert!(msg.contains("connect"), "{msg}");
    wait_until("status unhealthy", || {
        let s = st(&dir);
        s.healthy == Some(false) && s.last_error.is_some()
    });
    assert!(st(&dir).child_alive);
    stop(&dir, BOUND).unwrap();
    assert_eq!(processes_under(g.root()), Vec::<u32>::new());
}

#[test]
fn bad_cwd_fails_start_and_cleans_up() {
    let g = Guard::new();
    let dir = g.dir("nocwd");
    let mut spec = g.sh_spec("service.nocwd[0]", "exec sleep 600");
    spec.cwd = g.root().join("does-not-exist");
    let err = start(Path::new(EXE), &dir, &spec, BOUND).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("could not start"), "{msg}");
    assert!(
        msg.contains("does-not-exist") || msg.contains("No such file"),
        "{msg}"
    );
    assert_eq!(processes_under(g.root()), Vec::<u32>::new());
}

#[test]
fn status_rejects_an_unrelated_live_pid() {
    let g = Guard::new();
    let dir = g.dir("fake");
    std::fs::create_dir_all(&dir).unwrap();
    let me = std::process::id();
    std::fs::write(dir.join("supervisor.pid"), format!("{me}\n")).unwrap();
    std::fs::write(dir.join("child.pid"), format!("{me}\n")).unwrap();
    let s = st(&dir);
    assert_eq!(s.supervisor_pid, me);
    assert!(!s.supervisor_alive);
    assert!(!s.child_alive);
    // stop must not touch the unrelated process (us), and cleans the stale files.
    stop(&dir, Duration::from_secs(1)).unwrap();
    assert!(status(&dir).is_none());
}

/// Issue 8, item 3: the CLI's environment (where `PIPELINE_VAR_*` secrets live) must not reach
/// supervisors, watchdogs or apps; they get the allow-list, their spec's env and the marker.
#[test]
fn supervised_processes_get_only_the_allowed_environment_and_their_spec() {
    const ALLOWED: &[&str] = pipeline_supervise::private::ALLOWED_ENV;
    // nextest runs each test in a process of its own, so this reaches only this test.
    std::env::set_var("PIPELINE_VAR_db_password", "s3cr3t-from-the-cli");
    std::env::set_var("SOME_CI_TOKEN", "token-from-the-cli");
    let g = Guard::new();
    let dir = g.dir("web-0");
    let mut spec = g.http_spec("service.web[0]");
    spec.env.insert("GIVEN".into(), "by-the-stack".into());
    let started = start_ok(&dir, &spec);
    wait_healthy(&dir, &spec, BOUND).unwrap();
    let pids = processes_under(g.root());
    assert!(pids.contains(&started.supervisor_pid) && pids.contains(&started.child_pid));
    for pid in pids {
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let env = String::from_utf8_lossy(&raw).replace('\0', "\n");
        assert!(
            !env.contains("s3cr3t-from-the-cli") && !env.contains("token-from-the-cli"),
            "pid {pid} inherited the CLI's environment:\n{env}"
        );
        // What pipeline spawned itself (an app may add variables of its own, e.g. a pyenv shim).
        if pid != started.supervisor_pid && pid != started.child_pid {
            continue;
        }
        for line in env.lines() {
            let key = line.split('=').next().unwrap_or_default();
            assert!(
                ALLOWED.contains(&key) || ["PIPELINE_REPLICA_DIR", "PORT", "GIVEN"].contains(&key),
                "pid {pid} has {key}, which nothing gave it"
            );
        }
        if pid == started.child_pid {
            assert!(env.contains("GIVEN=by-the-stack"), "{env}");
        }
    }
    stop(&dir, BOUND).unwrap();
}
