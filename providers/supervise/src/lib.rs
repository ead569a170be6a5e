//! Detached per-replica supervisor for the `local` provider.
//!
//! One supervisor process per replica. Everything about a replica lives in its directory `DIR`:
//!
//! | file             | written by  | contents                                                   |
//! |------------------|-------------|------------------------------------------------------------|
//! | `spec.json`      | [`start`]   | the [`ReplicaSpec`] (mode 0600)                            |
//! | `supervisor.log` | [`start`]   | stdout/stderr of the supervisor process itself             |
//! | `supervisor.pid` | supervisor  | pid of the supervisor (atomic write)                       |
//! | `child.pid`      | supervisor  | pid (= process group id) of the current child              |
//! | `status.json`    | supervisor  | [`StatusFile`], rewritten atomically on every change       |
//! | `replica.log`    | supervisor  | child stdout+stderr (through a pipe), one header line per  |
//! |                  |             | (re)start; output that cannot be written is dropped and    |
//! |                  |             | counted (`log_dropped_bytes`), never an error to the child |
//!
//! Every process started for a replica carries `PIPELINE_REPLICA_DIR=DIR` in its environment
//! ([`MARKER_ENV`]), so a CLI that was killed at any moment can still find and stop everything
//! by looking at `DIR` (see [`stop`] and [`processes_under`]).
//!
//! The supervisor itself is the hidden subcommand `pipeline __supervise DIR`, which must call
//! [`run_supervisor`] **on the main thread, before any async runtime or other threads are set up**
//! (PR_SET_PDEATHSIG is tied to the thread that forks the child) and exit with its return value.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

mod health;
mod logsink;
pub mod private;
mod supervisor;
mod util;

pub use health::{check_once, free_port};
pub use supervisor::run_supervisor;

/// Environment variable set (to DIR) in the supervisor and every child process.
pub const MARKER_ENV: &str = "PIPELINE_REPLICA_DIR";

/// File names inside a replica directory.
pub const SPEC_FILE: &str = "spec.json";
pub const STATUS_FILE: &str = "status.json";
pub const SUPERVISOR_PID_FILE: &str = "supervisor.pid";
pub const CHILD_PID_FILE: &str = "child.pid";
pub const REPLICA_LOG: &str = "replica.log";
pub const SUPERVISOR_LOG: &str = "supervisor.log";

/// How many log lines error messages include.
const LOG_TAIL_LINES: usize = 20;

fn default_true() -> bool {
    true
}
fn default_address() -> String {
    "127.0.0.1".to_string()
}

/// What to run for one replica.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReplicaSpec {
    /// Resource address, e.g. `service.preview[2]`, for logs and error messages.
    pub name: String,
    /// Run with `sh -c`.
    pub command: String,
    pub cwd: PathBuf,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Also exported to the child as `PORT`.
    pub port: u16,
    #[serde(default = "default_address")]
    pub address: String,
    pub health: HealthCheck,
    /// Restart the child when it exits (default true).
    #[serde(default = "default_true")]
    pub restart: bool,
}

impl ReplicaSpec {
    /// A spec with empty env, address 127.0.0.1, an HTTP `GET /` health check and restart on.
    pub fn new(
        name: impl Into<String>,
        command: impl Into<String>,
        cwd: impl Into<PathBuf>,
        port: u16,
    ) -> Self {
        ReplicaSpec {
            name: name.into(),
            command: command.into(),
            cwd: cwd.into(),
            env: BTreeMap::new(),
            port,
            address: default_address(),
            health: HealthCheck::default(),
            restart: true,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthCheck {
    pub kind: HealthKind,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_interval() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    1000
}
fn default_method() -> String {
    "GET".to_string()
}
fn default_path() -> String {
    "/".to_string()
}
fn default_status() -> u16 {
    200
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck::http("/")
    }
}

impl HealthCheck {
    /// `GET path` expecting 200, every 1 s with a 1 s timeout.
    pub fn http(path: impl Into<String>) -> Self {
        HealthCheck {
            kind: HealthKind::Http {
                method: default_method(),
                path: path.into(),
                body: None,
                expect_status: 200,
            },
            interval_ms: default_interval(),
            timeout_ms: default_timeout(),
        }
    }
    /// Plain TCP connect, every 1 s with a 1 s timeout.
    pub fn tcp() -> Self {
        HealthCheck {
            kind: HealthKind::Tcp,
            interval_ms: default_interval(),
            timeout_ms: default_timeout(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum HealthKind {
    Http {
        #[serde(default = "default_method")]
        method: String,
        #[serde(default = "default_path")]
        path: String,
        #[serde(default)]
        body: Option<String>,
        #[serde(default = "default_status")]
        expect_status: u16,
    },
    Tcp,
}

/// Contents of `DIR/status.json`, written by the supervisor.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StatusFile {
    pub supervisor_pid: u32,
    /// Current child, or the last one until the next start (`state` tells which); None after stop.
    pub child_pid: Option<u32>,
    pub port: u16,
    /// Unix seconds of the current child's start.
    pub started_at: u64,
    /// Unix seconds of the first child's start.
    pub first_started_at: u64,
    /// Number of starts after the first one.
    pub restarts: u32,
    /// None until the first check of the current child has completed.
    pub healthy: Option<bool>,
    /// Unix milliseconds of the last completed health check.
    pub last_check_ms: u64,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// One of `starting`, `running`, `backoff`, `spawn_failed`, `exited`, `stopping`, `stopped`.
    pub state: String,
    /// Exit description of the last child that ended, e.g. `exited with status 1`.
    pub last_exit: Option<String>,
    /// Bytes of the child's output (and the supervisor's own lines) that could not be written
    /// to `replica.log` (a full disk) and were dropped; the child kept running.
    pub log_dropped_bytes: u64,
    /// While output is being dropped: why, since when and how much (None once reported in
    /// `replica.log`).
    pub log_error: Option<String>,
}

impl StatusFile {
    pub fn read(dir: &Path) -> Option<StatusFile> {
        let text = fs::read(dir.join(STATUS_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// What [`status`] reports.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReplicaStatus {
    pub supervisor_pid: u32,
    pub supervisor_alive: bool,
    pub child_pid: Option<u32>,
    pub child_alive: bool,
    pub port: u16,
    pub started_at: u64,
    pub restarts: u32,
    pub healthy: Option<bool>,
    pub last_error: Option<String>,
    // ---- additions ----
    pub first_started_at: u64,
    pub last_check_ms: u64,
    pub consecutive_failures: u32,
    pub state: String,
    pub last_exit: Option<String>,
    /// See [`StatusFile::log_dropped_bytes`].
    #[serde(default)]
    pub log_dropped_bytes: u64,
    #[serde(default)]
    pub log_error: Option<String>,
}

/// Pids reported by [`start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    pub supervisor_pid: u32,
    pub child_pid: u32,
}

impl SuperviseError {
    /// The child's own last output carried by this error (the supervisor's lines left out),
    /// when it carries any.
    pub fn child_output(&self) -> Option<Vec<String>> {
        match self {
            SuperviseError::SpawnFailed { log_tail, .. }
            | SuperviseError::StartTimeout { log_tail, .. }
            | SuperviseError::ChildExited { log_tail, .. }
            | SuperviseError::Unhealthy { log_tail, .. } => Some(logsink::child_lines(log_tail)),
            _ => None,
        }
    }
}

fn show_tail(log: &Path, tail: &str) -> String {
    if tail.trim().is_empty() {
        format!("{} is empty", log.display())
    } else {
        let indented: Vec<String> = tail.lines().map(|l| format!("    {l}")).collect();
        format!("last lines of {}:\n{}", log.display(), indented.join("\n"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("replica {name} ({dir}): {action} failed: {source}")]
    Io {
        name: String,
        dir: PathBuf,
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "replica {name} ({dir}): a supervisor (pid {pid}) is already running there; stop it first (pipeline destroy / stop)"
    )]
    AlreadyRunning {
        name: String,
        dir: PathBuf,
        pid: u32,
    },
    #[error(
        "replica {name} ({dir}): the supervisor exited before the replica was running{}; {}\nsee {}/supervisor.log; check that the pipeline binary can run `__supervise`",
        .detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(),
        show_tail(&.dir.join(SUPERVISOR_LOG), .log_tail),
        .dir.display()
    )]
    SupervisorExited {
        name: String,
        dir: PathBuf,
        detail: Option<String>,
        log_tail: String,
    },
    #[error(
        "replica {name} ({dir}): could not start `{command}`: {reason}; {}\nfix the command or its cwd/env and apply again",
        show_tail(&.dir.join(REPLICA_LOG), .log_tail)
    )]
    SpawnFailed {
        name: String,
        dir: PathBuf,
        command: String,
        reason: String,
        log_tail: String,
    },
    #[error(
        "replica {name} ({dir}): the supervisor did not report a running child within {waited:?}; {}\nthe replica was stopped; check {}/supervisor.log",
        show_tail(&.dir.join(REPLICA_LOG), .log_tail),
        .dir.display()
    )]
    StartTimeout {
        name: String,
        dir: PathBuf,
        waited: Duration,
        log_tail: String,
    },
    #[error(
        "replica {name} ({dir}): `{command}` {exit} before becoming healthy; {}\nfix the command (it must keep running and listen on $PORT) and apply again",
        show_tail(&.dir.join(REPLICA_LOG), .log_tail)
    )]
    ChildExited {
        name: String,
        dir: PathBuf,
        command: String,
        exit: String,
        log_tail: String,
    },
    #[error(
        "replica {name} ({dir}): not healthy after {waited:?} (last check: {last_error}); {}\nmake sure the command listens on $PORT and the health check matches, or raise the timeout",
        show_tail(&.dir.join(REPLICA_LOG), .log_tail)
    )]
    Unhealthy {
        name: String,
        dir: PathBuf,
        waited: Duration,
        last_error: String,
        log_tail: String,
    },
    #[error(
        "replica {name} ({dir}): processes {pids:?} are still running after stop; kill them by hand (kill -9 {})",
        .pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ")
    )]
    StopFailed {
        name: String,
        dir: PathBuf,
        pids: Vec<u32>,
    },
}

fn io_err(
    name: &str,
    dir: &Path,
    action: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> SuperviseError {
    let name = name.to_string();
    let dir = dir.to_path_buf();
    let action = action.into();
    move |source| SuperviseError::Io {
        name,
        dir,
        action,
        source,
    }
}

fn replica_tail(dir: &Path) -> String {
    util::tail(&dir.join(REPLICA_LOG), LOG_TAIL_LINES)
}

/// Name from DIR/spec.json, for messages when the caller has no spec.
fn name_in(dir: &Path) -> String {
    fs::read(dir.join(SPEC_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<ReplicaSpec>(&b).ok())
        .map(|s| s.name)
        .unwrap_or_else(|| "<unknown>".to_string())
}

/// Write DIR/spec.json (0600) and spawn `exe __supervise DIR` fully detached (new session,
/// double fork, stdio to /dev/null and DIR/supervisor.log). Waits up to `start_timeout` for the
/// supervisor to write DIR/supervisor.pid and DIR/child.pid. On failure everything started is
/// stopped again before the error is returned.
pub fn start(
    exe: &Path,
    dir: &Path,
    spec: &ReplicaSpec,
    start_timeout: Duration,
) -> Result<Started, SuperviseError> {
    let name = spec.name.as_str();
    private::create_dir_all(dir).map_err(io_err(name, dir, "creating the replica directory"))?;
    let dir = util::abs_dir(dir);
    let dir = dir.as_path();

    if let Some(pid) = util::read_pid_file(&dir.join(SUPERVISOR_PID_FILE)) {
        if util::is_supervisor_of(pid, dir) {
            return Err(SuperviseError::AlreadyRunning {
                name: name.to_string(),
                dir: dir.to_path_buf(),
                pid,
            });
        }
    }
    // Leftovers of an earlier run (supervisor SIGKILLed, orphaned grandchildren): they are ours.
    stop(dir, Duration::from_secs(5))?;
    for f in [SUPERVISOR_PID_FILE, CHILD_PID_FILE, STATUS_FILE] {
        let _ = fs::remove_file(dir.join(f));
    }

    let mut spec = spec.clone();
    if spec.cwd.is_relative() {
        spec.cwd = util::abs_dir(&spec.cwd);
    }
    let json = serde_json::to_vec_pretty(&spec).expect("spec serializes");
    util::write_atomic(&dir.join(SPEC_FILE), &json, 0o600).map_err(io_err(
        name,
        dir,
        "writing spec.json",
    ))?;

    let log = private::append(&dir.join(SUPERVISOR_LOG)).map_err(io_err(
        name,
        dir,
        "opening supervisor.log",
    ))?;
    let log2 = log
        .try_clone()
        .map_err(io_err(name, dir, "opening supervisor.log"))?;

    // current_dir(dir) below would change what a relative exe path means.
    let exe = if exe.components().count() > 1 {
        fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf())
    } else {
        exe.to_path_buf()
    };
    let mut cmd = Command::new(&exe);
    private::clean_env(&mut cmd)
        .arg("__supervise")
        .arg(dir)
        .current_dir(dir)
        .env(MARKER_ENV, dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: only async-signal-safe calls (setsid, fork, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => Ok(()),         // grandchild: goes on to exec the supervisor
                _ => libc::_exit(0), // intermediate: exits at once, reaped below
            }
        });
    }
    let mut intermediate = cmd.spawn().map_err(io_err(
        name,
        dir,
        format!("spawning {} __supervise", exe.display()),
    ))?;
    let _ = intermediate.wait();

    let deadline = Instant::now() + start_timeout;
    let fail = |e: SuperviseError| {
        let _ = stop(dir, Duration::from_secs(10));
        Err(e)
    };
    loop {
        let sup = util::read_pid_file(&dir.join(SUPERVISOR_PID_FILE));
        let child = util::read_pid_file(&dir.join(CHILD_PID_FILE));
        let st = StatusFile::read(dir);
        if let (Some(supervisor_pid), Some(child_pid)) = (sup, child) {
            return Ok(Started {
                supervisor_pid,
                child_pid,
            });
        }
        if let Some(st) = &st {
            if st.state == "spawn_failed" {
                return fail(SuperviseError::SpawnFailed {
                    name: name.to_string(),
                    dir: dir.to_path_buf(),
                    command: spec.command.clone(),
                    reason: st.last_error.clone().unwrap_or_default(),
                    log_tail: replica_tail(dir),
                });
            }
        }
        if let Some(pid) = sup {
            if !util::is_supervisor_of(pid, dir) {
                return fail(SuperviseError::SupervisorExited {
                    name: name.to_string(),
                    dir: dir.to_path_buf(),
                    detail: st.and_then(|s| s.last_error),
                    log_tail: util::tail(&dir.join(SUPERVISOR_LOG), LOG_TAIL_LINES),
                });
            }
        }
        if Instant::now() >= deadline {
            return fail(SuperviseError::StartTimeout {
                name: name.to_string(),
                dir: dir.to_path_buf(),
                waited: start_timeout,
                log_tail: replica_tail(dir),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Read DIR/status.json plus liveness. None if DIR has no supervisor.pid.
///
/// The supervisor counts as alive only if it exists, is not a zombie, and its
/// /proc/PID/cmdline contains `__supervise DIR`; the child only if its /proc/PID/environ
/// carries `PIPELINE_REPLICA_DIR=DIR` (both guard against pid reuse).
pub fn status(dir: &Path) -> Option<ReplicaStatus> {
    let dir = util::abs_dir(dir);
    let supervisor_pid = util::read_pid_file(&dir.join(SUPERVISOR_PID_FILE))?;
    let st = StatusFile::read(&dir).unwrap_or_default();
    let supervisor_alive = util::is_supervisor_of(supervisor_pid, &dir);
    let child_pid = util::read_pid_file(&dir.join(CHILD_PID_FILE)).or(st.child_pid);
    // nginx and redis overwrite their environment block with their process title, so the
    // marker is not always there: the live supervisor's own running child is ours too.
    let child_alive = child_pid.is_some_and(|p| {
        util::is_ours(p, &dir)
            || (supervisor_alive && util::pid_running(p) && util::ppid(p) == Some(supervisor_pid))
    });
    Some(ReplicaStatus {
        supervisor_pid,
        supervisor_alive,
        child_pid,
        child_alive,
        port: st.port,
        started_at: st.started_at,
        restarts: st.restarts,
        healthy: st.healthy,
        last_error: st.last_error,
        first_started_at: st.first_started_at,
        last_check_ms: st.last_check_ms,
        consecutive_failures: st.consecutive_failures,
        state: st.state,
        last_exit: st.last_exit,
        log_dropped_bytes: st.log_dropped_bytes,
        log_error: st.log_error,
    })
}

/// Stop the replica in DIR: SIGTERM the supervisor (if alive and really ours), wait up to
/// `timeout` for it to exit (it stops the child group itself, granting the child 5 s), then
/// SIGKILL the supervisor and the child's process group, and finally SIGKILL every remaining
/// process whose environment carries `PIPELINE_REPLICA_DIR=DIR`. Idempotent; Ok if nothing runs.
pub fn stop(dir: &Path, timeout: Duration) -> Result<(), SuperviseError> {
    let dir = util::abs_dir(dir);
    let dir = dir.as_path();
    let sup_pid = util::read_pid_file(&dir.join(SUPERVISOR_PID_FILE))
        .filter(|&p| util::is_supervisor_of(p, dir));
    let child_pid = || {
        util::read_pid_file(&dir.join(CHILD_PID_FILE))
            .or_else(|| StatusFile::read(dir).and_then(|s| s.child_pid))
            .filter(|&p| util::is_ours(p, dir))
    };

    if let Some(pid) = sup_pid {
        util::signal_pid(pid, libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while util::is_supervisor_of(pid, dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if util::is_supervisor_of(pid, dir) {
            // Note the child before killing the supervisor (PDEATHSIG takes the child with it,
            // but not the rest of its process group).
            let child = child_pid();
            util::signal_pid(pid, libc::SIGKILL);
            if let Some(c) = child {
                util::signal_group(c, libc::SIGKILL);
            }
        }
    }
    if let Some(c) = child_pid() {
        util::signal_group(c, libc::SIGKILL);
        util::signal_pid(c, libc::SIGKILL);
    }
    // Sweep: anything still carrying our marker (grandchildren that left the group, ...).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left;
    loop {
        left = util::marked_pids(|m| m == dir || util::abs_dir(m) == dir);
        if left.is_empty() || Instant::now() >= deadline {
            break;
        }
        for &p in &left {
            util::signal_pid(p, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !left.is_empty() {
        return Err(SuperviseError::StopFailed {
            name: name_in(dir),
            dir: dir.to_path_buf(),
            pids: left,
        });
    }
    for f in [SUPERVISOR_PID_FILE, CHILD_PID_FILE] {
        let _ = fs::remove_file(dir.join(f));
    }
    Ok(())
}

/// Block until the health check of `spec` passes. Fails early when the child exits (or the
/// supervisor is gone) before that, and after `timeout` otherwise; errors include the tail of
/// DIR/replica.log.
///
/// Differs from the original sketch by taking `dir`: the log tail and the child's liveness
/// live there. Callers that must also honour a cancel or a deadline poll a [`HealthWait`].
pub fn wait_healthy(
    dir: &Path,
    spec: &ReplicaSpec,
    timeout: Duration,
) -> Result<(), SuperviseError> {
    let mut w = HealthWait::new(dir, spec, timeout);
    loop {
        if w.poll()?.is_ok() {
            return Ok(());
        }
        std::thread::sleep(w.every());
    }
}

/// One health wait, polled: each `poll` looks once. The caller decides how to wait between
/// looks and when to give up besides `timeout` (a step's cancel or deadline).
pub struct HealthWait<'a> {
    dir: PathBuf,
    spec: &'a ReplicaSpec,
    timeout: Duration,
    started: Instant,
    initial_restarts: Option<u32>,
}

impl<'a> HealthWait<'a> {
    pub fn new(dir: &Path, spec: &'a ReplicaSpec, timeout: Duration) -> Self {
        let dir = util::abs_dir(dir);
        let initial_restarts = status(&dir).map(|s| s.restarts);
        HealthWait {
            dir,
            spec,
            timeout,
            started: Instant::now(),
            initial_restarts,
        }
    }

    /// How often to look: the health check's interval, between 10 and 100 ms.
    pub fn every(&self) -> Duration {
        Duration::from_millis(self.spec.health.interval_ms.clamp(10, 100))
    }

    /// Ok(Ok): healthy. Ok(Err(why)): not yet. Err: it never will be (the child exited, the
    /// supervisor is gone, or `timeout` passed).
    pub fn poll(&mut self) -> Result<Result<(), String>, SuperviseError> {
        let (dir, spec) = (self.dir.as_path(), self.spec);
        let child_exited = |st: Option<&ReplicaStatus>| SuperviseError::ChildExited {
            name: spec.name.clone(),
            dir: dir.to_path_buf(),
            command: spec.command.clone(),
            exit: st
                .and_then(|s| s.last_exit.clone())
                .unwrap_or_else(|| "exited".to_string()),
            log_tail: replica_tail(dir),
        };
        let last_error = match check_once(&spec.address, spec.port, &spec.health) {
            Ok(()) => return Ok(Ok(())),
            Err(e) => e,
        };
        let st = status(dir);
        match &st {
            None => return Err(child_exited(None)),
            Some(s) => {
                let restarted = self.initial_restarts.is_some_and(|r| s.restarts > r);
                // The marker check reads /proc/PID/environ, which can fail for an instant while
                // the child execs its program: a death is confirmed by the pid itself.
                let gone = !s.child_alive && !s.child_pid.is_some_and(util::pid_running);
                if restarted || gone {
                    // The supervisor records the exit once the child's last output is in
                    // replica.log: wait for that (bounded) so the error shows it.
                    let until = Instant::now() + Duration::from_secs(2);
                    let mut st = st.clone();
                    while st
                        .as_ref()
                        .is_some_and(|s| s.state == "running" && s.supervisor_alive && !restarted)
                        && Instant::now() < until
                    {
                        std::thread::sleep(Duration::from_millis(10));
                        st = status(dir);
                    }
                    return Err(child_exited(st.as_ref()));
                }
                if !s.supervisor_alive {
                    return Err(SuperviseError::SupervisorExited {
                        name: spec.name.clone(),
                        dir: dir.to_path_buf(),
                        detail: s.last_error.clone(),
                        log_tail: util::tail(&dir.join(SUPERVISOR_LOG), LOG_TAIL_LINES),
                    });
                }
            }
        }
        if self.started.elapsed() >= self.timeout {
            return Err(SuperviseError::Unhealthy {
                name: spec.name.clone(),
                dir: dir.to_path_buf(),
                waited: self.timeout,
                last_error,
                log_tail: replica_tail(dir),
            });
        }
        Ok(Err(last_error))
    }
}

/// Every live pid whose /proc/PID/environ contains `PIPELINE_REPLICA_DIR=<a dir under root>`
/// (supervisors and children alike; zombies are not counted). For leak checks.
pub fn processes_under(root: &Path) -> Vec<u32> {
    let root = util::abs_dir(root);
    util::marked_pids(|m| m.starts_with(&root) || util::abs_dir(m).starts_with(&root))
}

/// Like [`processes_under`], with each process's marker directory (for sweeps that decide by
/// where a process belongs).
pub fn marked_under(root: &Path) -> Vec<(u32, PathBuf)> {
    let root = util::abs_dir(root);
    processes_under(&root)
        .into_iter()
        .filter_map(|pid| Some((pid, util::marker_of(pid)?)))
        .collect()
}

/// Append one line to DIR/replica.log (used by the supervisor; handy for the provider too).
pub fn append_log_line(dir: &Path, line: &str) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(REPLICA_LOG))?;
    writeln!(f, "{line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_roundtrip_and_defaults() {
        let mut s = ReplicaSpec::new("service.web[0]", "echo hi", "/tmp", 8080);
        s.env.insert("A".into(), "b".into());
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ReplicaSpec>(&json).unwrap(), s);

        let minimal = r#"{"name":"n","command":"c","cwd":"/","port":1,
            "health":{"kind":{"type":"http","path":"/health"}}}"#;
        let s: ReplicaSpec = serde_json::from_str(minimal).unwrap();
        assert!(s.restart);
        assert_eq!(s.address, "127.0.0.1");
        assert_eq!(s.health.interval_ms, 1000);
        assert_eq!(
            s.health.kind,
            HealthKind::Http {
                method: "GET".into(),
                path: "/health".into(),
                body: None,
                expect_status: 200
            }
        );
        let tcp: HealthCheck = serde_json::from_str(r#"{"kind":{"type":"tcp"}}"#).unwrap();
        assert_eq!(tcp.kind, HealthKind::Tcp);
    }

    #[test]
    fn status_of_empty_dir_is_none_and_stop_is_ok() {
        let d = tempfile::tempdir().unwrap();
        assert!(status(d.path()).is_none());
        stop(d.path(), Duration::from_secs(1)).unwrap();
        stop(d.path(), Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn error_messages_name_dir_and_replica_and_show_log() {
        let e = SuperviseError::ChildExited {
            name: "service.web[1]".into(),
            dir: "/x/y".into(),
            command: "false".into(),
            exit: "exited with status 1".into(),
            log_tail: "boom\nbang".into(),
        };
        let m = e.to_string();
        assert!(m.contains("service.web[1]") && m.contains("/x/y"), "{m}");
        assert!(m.contains("    boom\n    bang"), "{m}");
        assert!(m.contains("/x/y/replica.log"), "{m}");
    }
}
