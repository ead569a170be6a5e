//! The detached supervisor process (`pipeline __supervise DIR`).

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::logsink::{self, LogSink};
use crate::util::{self, signal_group, timestamp, unix_ms, unix_secs, write_atomic};
use crate::{
    check_once, ReplicaSpec, StatusFile, CHILD_PID_FILE, MARKER_ENV, REPLICA_LOG, SPEC_FILE,
    STATUS_FILE, SUPERVISOR_PID_FILE,
};

/// `eprintln!` panics when stderr cannot be written (supervisor.log on a full disk), which
/// would take the supervisor and its child down: this drops the line instead.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A child that ran at least this long resets the backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
/// How long the child's group gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(25);

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_sig: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
}

fn install_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_terminate as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Entry point of the detached process: `pipeline __supervise DIR` calls this on its main
/// thread and exits with the returned code. Returns 0 after a requested stop (SIGTERM, SIGINT or SIGHUP)
/// or after a `restart: false` child exited, 2 when DIR/spec.json is unusable.
pub fn run_supervisor(dir: &Path) -> i32 {
    let dir = util::abs_dir(dir);
    let me = std::process::id();
    if let Err(e) = write_atomic(
        &dir.join(SUPERVISOR_PID_FILE),
        format!("{me}\n").as_bytes(),
        0o644,
    ) {
        say!(
            "{} pipeline-supervise: cannot write {}: {e}",
            timestamp(),
            dir.join(SUPERVISOR_PID_FILE).display()
        );
        return 2;
    }
    install_handlers();

    let spec: ReplicaSpec = match fs::read(dir.join(SPEC_FILE))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("cannot read {}: {e}", dir.join(SPEC_FILE).display());
            say!("{} pipeline-supervise: {msg}", timestamp());
            let st = StatusFile {
                supervisor_pid: me,
                last_error: Some(msg),
                state: "exited".into(),
                ..Default::default()
            };
            let _ = write_atomic(
                &dir.join(STATUS_FILE),
                &serde_json::to_vec_pretty(&st).unwrap_or_default(),
                0o644,
            );
            return 2;
        }
    };
    // Orphaned descendants of the child are re-parented to us, so we can reap them.
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };

    let mut sup = Supervisor::new(dir, spec, me);
    sup.run()
}

struct Running {
    pid: u32,
    started: Instant,
    /// Write end of the watchdog's pipe: when the supervisor dies for any reason (even SIGKILL)
    /// it closes, and the watchdog SIGKILLs the child's whole process group. PR_SET_PDEATHSIG
    /// alone only covers the direct child (`sh`), not the processes `sh` forked.
    _watchdog: Option<OwnedFd>,
    /// The thread copying the child's output into replica.log (None if it could not start).
    copier: Option<std::thread::JoinHandle<()>>,
}

/// Script of the watchdog process that sits in the child's process group.
const WATCHDOG_SCRIPT: &str = "read _ignored; kill -KILL 0";

/// Start `sh -c WATCHDOG_SCRIPT` inside process group `pgid`, stdin = a pipe whose only write end
/// (close-on-exec) is returned and stays in the supervisor.
fn spawn_watchdog(dir: &Path, pgid: u32) -> std::io::Result<OwnedFd> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two fds that we own from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fds from pipe2.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut cmd = Command::new("sh");
    crate::private::clean_env(&mut cmd)
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("pipeline-supervise-watchdog")
        .current_dir("/")
        .env(MARKER_ENV, dir)
        .stdin(Stdio::from(read_end))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pgid = pgid as libc::pid_t;
    // SAFETY: setpgid is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, pgid) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?; // reaped by `reap` via waitpid(-1)
    drop(child);
    Ok(write_end)
}

struct Supervisor {
    dir: PathBuf,
    spec: ReplicaSpec,
    status: StatusFile,
    child: Option<Running>,
    attempts: u32,
    backoff: Duration,
    /// Generation of the running child (0 = none); health results of older generations are dropped.
    generation: Arc<AtomicU64>,
    /// replica.log: the child's output and our own lines.
    log: LogSink,
}

impl Supervisor {
    fn new(dir: PathBuf, spec: ReplicaSpec, me: u32) -> Self {
        let status = StatusFile {
            supervisor_pid: me,
            port: spec.port,
            state: "starting".into(),
            ..Default::default()
        };
        Supervisor {
            log: LogSink::new(&dir.join(REPLICA_LOG), &spec.name),
            dir,
            spec,
            status,
            child: None,
            attempts: 0,
            backoff: BACKOFF_MIN,
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    fn log(&self, msg: &str) {
        self.log.line(msg);
    }

    fn write_status(&mut self) {
        self.log.recover();
        let (dropped, pending) = self.log.dropped_state();
        self.status.log_dropped_bytes = dropped;
        self.status.log_error = pending;
        if let Ok(json) = serde_json::to_vec_pretty(&self.status) {
            if let Err(e) = write_atomic(&self.dir.join(STATUS_FILE), &json, 0o644) {
                say!(
                    "{} pipeline-supervise: writing status.json: {e}",
                    timestamp()
                );
            }
        }
    }

    fn run(&mut self) -> i32 {
        let (tx, rx) = mpsc::channel();
        let stop_health = Arc::new(AtomicBool::new(false));
        spawn_health_thread(
            self.spec.clone(),
            Arc::clone(&self.generation),
            Arc::clone(&stop_health),
            tx,
        );
        self.write_status();

        let mut next_start = Some(Instant::now());
        let mut finished = false;
        while !TERMINATE.load(Ordering::SeqCst) && !finished {
            if next_start.is_some_and(|t| Instant::now() >= t) {
                next_start = None;
                if !self.start_child() {
                    next_start = Some(self.schedule_backoff(Duration::ZERO).0);
                }
            }
            if let Some(status) = self.reap() {
                match self.child_exited(status) {
                    Some(at) => next_start = Some(at),
                    None => finished = true,
                }
            }
            match rx.recv_timeout(TICK) {
                Ok((generation, result)) => self.health_result(generation, result),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(TICK),
            }
        }
        stop_health.store(true, Ordering::SeqCst);
        if finished {
            // restart: false and the child is gone. Leave the pid files so `status` can show it.
            self.status.state = "exited".into();
            self.write_status();
            return 0;
        }
        self.shutdown();
        0
    }

    /// Reap every exited child (we are a subreaper); returns the wait status of our direct child.
    fn reap(&mut self) -> Option<libc::c_int> {
        let mut ours = None;
        loop {
            let mut st: libc::c_int = 0;
            // SAFETY: waitpid with WNOHANG on any child.
            let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if self.child.as_ref().is_some_and(|c| c.pid == pid as u32) {
                ours = Some(st);
            }
        }
        ours
    }

    /// Start the child. False if spawning failed (recorded in status and log).
    fn start_child(&mut self) -> bool {
        self.attempts += 1;
        let attempt = self.attempts;
        let now = unix_secs();
        let header = format!(
            "--- {} pipeline-supervise {}: start attempt {attempt} pid ",
            timestamp(),
            self.spec.name
        )
        .into_bytes();
        // The child writes into a pipe that we copy into replica.log, so a log that cannot be
        // written (a full disk) costs log lines, never the child's ability to write.
        let (read_end, write_end) = match logsink::pipe() {
            Ok(p) => p,
            Err(e) => return self.spawn_failed(format!("cannot make a pipe for the output: {e}")),
        };
        let write_end2 = match write_end.try_clone() {
            Ok(f) => f,
            Err(e) => return self.spawn_failed(format!("cannot make a pipe for the output: {e}")),
        };
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = Command::new("sh");
        crate::private::clean_env(&mut cmd)
            .arg("-c")
            .arg(&self.spec.command)
            .current_dir(&self.spec.cwd)
            .envs(&self.spec.env)
            .env("PORT", self.spec.port.to_string())
            .env(MARKER_ENV, &self.dir)
            .stdin(Stdio::null())
            .stdout(write_end)
            .stderr(write_end2);
        // SAFETY: only async-signal-safe calls between fork and exec; no allocation
        // (the header was formatted before the fork).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setpgid(0, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The supervisor died before PDEATHSIG was armed.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                let mut digits = [0u8; 24];
                let mut n = libc::getpid() as u64;
                let mut i = digits.len() - 1;
                digits[i] = b'\n';
                loop {
                    i -= 1;
                    digits[i] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                let mut line = [0u8; 512];
                let hl = header.len().min(line.len() - (digits.len() - i));
                line[..hl].copy_from_slice(&header[..hl]);
                let dl = digits.len() - i;
                line[hl..hl + dl].copy_from_slice(&digits[i..]);
                libc::write(1, line.as_ptr().cast(), hl + dl);
                Ok(())
            });
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return self.spawn_failed(format!(
                    "cannot start `sh -c {}` in {}: {e}",
                    self.spec.command,
                    self.spec.cwd.display()
                ))
            }
        };
        let pid = child.id();
        drop(child); // reaped by `reap` via waitpid(-1)
        drop(cmd); // our copies of the pipe's write end: the copier sees EOF when the child's close
        let copier = match logsink::spawn_copier(read_end, self.log.clone()) {
            Ok(h) => Some(h),
            Err(e) => {
                self.log(&format!(
                    "cannot copy the output of pid {pid} to replica.log: {e}"
                ));
                None
            }
        };
        let watchdog = match spawn_watchdog(&self.dir, pid) {
            Ok(fd) => Some(fd),
            Err(e) => {
                // The child may already have exited (its group is gone); `reap` handles that.
                self.log(&format!("watchdog for pid {pid} not started: {e}"));
                None
            }
        };
        self.child = Some(Running {
            pid,
            started: Instant::now(),
            _watchdog: watchdog,
            copier,
        });
        if let Err(e) = write_atomic(
            &self.dir.join(CHILD_PID_FILE),
            format!("{pid}\n").as_bytes(),
            0o644,
        ) {
            self.log(&format!("cannot write child.pid: {e}"));
        }
        let generation = self
            .generation
            .load(Ordering::SeqCst)
            .wrapping_add(1)
            .max(1);
        self.generation.store(generation, Ordering::SeqCst);
        let s = &mut self.status;
        s.child_pid = Some(pid);
        s.started_at = now;
        if s.first_started_at == 0 {
            s.first_started_at = now;
        }
        s.restarts = attempt.saturating_sub(1);
        s.healthy = None;
        s.consecutive_failures = 0;
        s.state = "running".into();
        self.write_status();
        true
    }

    fn spawn_failed(&mut self, msg: String) -> bool {
        self.log(&msg);
        self.status.child_pid = None;
        self.status.restarts = self.attempts.saturating_sub(1);
        self.status.last_error = Some(msg);
        self.status.healthy = None;
        self.status.state = "spawn_failed".into();
        self.write_status();
        false
    }

    /// Next start time (and the delay) after a child ran for `uptime`; advances the backoff.
    fn schedule_backoff(&mut self, uptime: Duration) -> (Instant, Duration) {
        if uptime >= BACKOFF_RESET_AFTER {
            self.backoff = BACKOFF_MIN;
        }
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        (Instant::now() + delay, delay)
    }

    /// Handle the exit of our child. Returns when to start the next one (None: do not restart).
    fn child_exited(&mut self, wait_status: libc::c_int) -> Option<Instant> {
        let running = self.child.take()?;
        self.generation.store(0, Ordering::SeqCst);
        let uptime = running.started.elapsed();
        // Leftovers of the old process group (background jobs) would hold the port.
        signal_group(running.pid, libc::SIGKILL);
        // Its last words reach replica.log before the exit is recorded (a waiting CLI shows
        // them); bounded, in case something outside the group still holds the pipe.
        if let Some(c) = &running.copier {
            let until = Instant::now() + Duration::from_secs(1);
            while !c.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let how = describe_exit(wait_status);
        // child.pid and status.child_pid keep naming the last child until the next start (the
        // liveness check in `status` sees it is gone), so `start` never misses a quick exit.
        self.status.healthy = None;
        self.status.last_exit = Some(how.clone());
        self.status.last_error = Some(format!(
            "child pid {} {how} after {:.1}s",
            running.pid,
            uptime.as_secs_f64()
        ));
        if !self.spec.restart {
            self.log(&format!(
                "child pid {} {how} after {:.1}s; restart is off",
                running.pid,
                uptime.as_secs_f64()
            ));
            return None;
        }
        let (at, delay) = self.schedule_backoff(uptime);
        self.log(&format!(
            "child pid {} {how} after {:.1}s; restarting in {} ms",
            running.pid,
            uptime.as_secs_f64(),
            delay.as_millis()
        ));
        self.status.state = "backoff".into();
        self.write_status();
        Some(at)
    }

    fn health_result(&mut self, generation: u64, result: Result<(), String>) {
        if generation == 0
            || generation != self.generation.load(Ordering::SeqCst)
            || self.child.is_none()
        {
            return;
        }
        let s = &mut self.status;
        s.last_check_ms = unix_ms();
        match result {
            Ok(()) => {
                if s.healthy != Some(true) {
                    self.log.line("healthy");
                }
                s.healthy = Some(true);
                s.consecutive_failures = 0;
                s.last_error = None;
            }
            Err(e) => {
                if s.healthy == Some(true) {
                    self.log.line(&format!("unhealthy: {e}"));
                }
                s.healthy = Some(false);
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                s.last_error = Some(e);
            }
        }
        self.write_status();
    }

    /// SIGTERM the child's group, wait up to STOP_GRACE, SIGKILL, reap, clean up, final status.
    fn shutdown(&mut self) {
        self.status.state = "stopping".into();
        self.write_status();
        if let Some(running) = self.child.take() {
            let pgid = running.pid;
            self.log(&format!(
                "stopping child pid {pgid} (SIGTERM to its process group)"
            ));
            signal_group(pgid, libc::SIGTERM);
            util::signal_pid(pgid, libc::SIGTERM);
            let mut leader_status = None;
            let wait_group = |deadline: Instant, leader_status: &mut Option<libc::c_int>| loop {
                loop {
                    let mut st: libc::c_int = 0;
                    // SAFETY: waitpid with WNOHANG on any child.
                    let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
                    if pid <= 0 {
                        break;
                    }
                    if pid as u32 == pgid {
                        *leader_status = Some(st);
                    }
                }
                // SAFETY: probe the group.
                let group_alive = unsafe { libc::kill(-(pgid as libc::pid_t), 0) } == 0;
                if leader_status.is_some() && !group_alive {
                    return true;
                }
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let mut done = wait_group(Instant::now() + STOP_GRACE, &mut leader_status);
            if !done {
                self.log(&format!(
                    "child pid {pgid} did not stop within {}s; SIGKILL",
                    STOP_GRACE.as_secs()
                ));
                signal_group(pgid, libc::SIGKILL);
                util::signal_pid(pgid, libc::SIGKILL);
                done = wait_group(Instant::now() + Duration::from_secs(5), &mut leader_status);
            }
            let how = leader_status.map(describe_exit);
            self.log(&format!(
                "stopped child pid {pgid}{}{}",
                how.as_deref()
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default(),
                if done {
                    ""
                } else {
                    "; some processes of its group may remain"
                }
            ));
            self.status.last_exit = how;
        }
        let _ = fs::remove_file(self.dir.join(CHILD_PID_FILE));
        let _ = fs::remove_file(self.dir.join(SUPERVISOR_PID_FILE));
        self.status.child_pid = None;
        self.status.healthy = None;
        self.status.state = "stopped".into();
        self.write_status();
    }
}

fn describe_exit(st: libc::c_int) -> String {
    if libc::WIFEXITED(st) {
        format!("exited with status {}", libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        format!("was killed by signal {}", libc::WTERMSIG(st))
    } else {
        format!("ended (wait status {st})")
    }
}

/// Runs checks every `interval_ms` while a child runs, sending (generation, result).
/// Never forks: PR_SET_PDEATHSIG must stay tied to the main thread.
fn spawn_health_thread(
    spec: ReplicaSpec,
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<(u64, Result<(), String>)>,
) {
    let interval = Duration::from_millis(spec.health.interval_ms.max(50));
    let _ = std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            let mut seen = 0u64;
            // Until a new child first passes, check every 100 ms at most, so its status turns
            // healthy as soon as it is, not a whole interval later.
            let mut passed = 0u64;
            while !stop.load(Ordering::SeqCst) {
                // Sleep one interval (in small steps), restarting the wait when a new child starts.
                let mut slept = Duration::ZERO;
                let wait = if passed == seen && seen != 0 {
                    interval
                } else {
                    interval.min(Duration::from_millis(100))
                };
                while slept < wait && !stop.load(Ordering::SeqCst) {
                    let g = generation.load(Ordering::SeqCst);
                    if g != seen {
                        seen = g;
                        slept = Duration::ZERO;
                    }
                    let step = Duration::from_millis(20).min(wait - slept);
                    std::thread::sleep(step);
                    slept += step;
                }
                let g = generation.load(Ordering::SeqCst);
                if g == 0 || g != seen || stop.load(Ordering::SeqCst) {
                    continue;
                }
                let result = check_once(&spec.address, spec.port, &spec.health);
                if result.is_ok() {
                    passed = g;
                }
                if tx.send((g, result)).is_err() {
                    break;
                }
            }
        });
}
