//! ansible-core playbook runs with per-task results.
//!
//! [`Ansible::locate`] finds a pinned ansible-core ([`PINNED_VERSION`]); [`Ansible::run`] runs
//! one playbook against an inventory and reports every task result live, through the callback
//! plugin that ships in the binary with the project's roles and playbooks ([`Bundle`]).
//!
//! What a run guarantees:
//! - ansible reads only the ansible.cfg the runner writes (strict host keys, pipelining,
//!   explicit gathering, the caller's ssh options and ControlPath directory, a 5 s connect
//!   timeout) and gets a clean environment (no `PIPELINE_VAR_*`);
//! - variables and secrets go through files (`-e @FILE`, 0600 in a 0700 directory that goes
//!   when the run ends, also on error or cancellation): never a value on a command line;
//! - dropping the future (cancellation) or the run's timeout kills ansible's whole process group;
//! - exit status and recap map onto [`Recap`] or an [`AnsibleError`] that names the hosts.

mod bundle;
mod config;
mod events;
mod process;

pub use bundle::Bundle;
pub use config::{Connection, MAX_CONTROL_PATH_DIR};
pub use events::{EventKind, HostRecap, HostStats, Recap, TaskChange, TaskEvent, TaskFailure};

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

/// The ansible-core release the project's playbooks and tests are written against
/// (`scripts/lab-install` installs it).
pub const PINNED_VERSION: &str = "2.19.14";
/// Where `scripts/lab-install` puts the virtualenv's programs.
pub const DEFAULT_BIN_DIR: &str = "/opt/pipeline-venv/bin";
/// A virtualenv's bin directory that overrides [`DEFAULT_BIN_DIR`].
pub const ENV_BIN_DIR: &str = "PIPELINE_ANSIBLE";

/// Lines of ansible's stderr (or stdout) an error quotes.
const TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum AnsibleError {
    #[error(
        "ansible-core is not installed: no ansible-playbook in {searched}. Install ansible-core {PINNED_VERSION} \
         with scripts/lab-install (a virtualenv in {DEFAULT_BIN_DIR}/..), or set {ENV_BIN_DIR} to the bin \
         directory of a virtualenv that has it (python3 -m venv DIR && DIR/bin/pip install ansible-core=={PINNED_VERSION})"
    )]
    NotInstalled { searched: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ansible configuration: {0}")]
    Config(String),
    #[error("{}", unreachable_message(.recap))]
    Unreachable { recap: Box<Recap> },
    #[error("{}", failed_message(.recap))]
    TasksFailed { recap: Box<Recap> },
    #[error("ansible-playbook {playbook} did not finish within {after:?}{}", running_message(.running))]
    Timeout {
        playbook: String,
        after: Duration,
        /// The task each host was running: (host, task).
        running: Vec<(String, String)>,
    },
    #[error("ansible-playbook {playbook} failed ({status}):\n{tail}")]
    Exit {
        playbook: String,
        status: String,
        /// The last lines of its stderr (or stdout when stderr said nothing).
        tail: String,
    },
    #[error(
        "ansible-playbook {playbook} ran but its pipeline_events callback plugin reported nothing \
         (is ansible-core {PINNED_VERSION} the one in use?); its output ended with:\n{tail}"
    )]
    NoEvents { playbook: String, tail: String },
    #[error("could not read the version of {program}: {output}")]
    Version { program: String, output: String },
}

impl AnsibleError {
    /// The recap of a run that ended with failed or unreachable hosts.
    pub fn recap(&self) -> Option<&Recap> {
        match self {
            AnsibleError::Unreachable { recap } | AnsibleError::TasksFailed { recap } => {
                Some(recap)
            }
            _ => None,
        }
    }
}

fn unreachable_message(r: &Recap) -> String {
    let hosts: Vec<String> = r
        .hosts
        .iter()
        .filter(|(_, h)| h.is_unreachable())
        .map(|(name, h)| match h.failures.last() {
            Some(f) if !f.msg.is_empty() => format!("{name} ({})", f.msg.trim()),
            _ => name.clone(),
        })
        .collect();
    let mut s = format!("unreachable: {}", hosts.join("; "));
    let failed = failed_message(r);
    if !r.failed_hosts().is_empty() {
        s.push_str("; and ");
        s.push_str(&failed);
    }
    s
}

fn failed_message(r: &Recap) -> String {
    let mut parts = Vec::new();
    for (name, h) in r.hosts.iter().filter(|(_, h)| h.is_failed()) {
        match h.failures.last() {
            Some(f) => parts.push(format!(
                "{name}: task '{}' failed: {}",
                f.task,
                f.msg.trim()
            )),
            None => parts.push(format!("{name}: failed")),
        }
    }
    format!("tasks failed on {}", parts.join("; "))
}

fn running_message(running: &[(String, String)]) -> String {
    if running.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = running
        .iter()
        .map(|(h, t)| format!("{h} at '{t}'"))
        .collect();
    format!("; still running: {}", parts.join(", "))
}

/// One playbook run.
#[derive(Clone, Debug)]
pub struct Run {
    /// A playbook; a relative path is inside the project's bundle (`playbooks/service.yml`).
    pub playbook: PathBuf,
    pub inventory: PathBuf,
    /// Only these hosts or groups (`--limit`); `None`: every host the playbook targets.
    pub limit: Option<Vec<String>>,
    /// Extra variables that may be shown.
    pub vars: serde_json::Map<String, serde_json::Value>,
    /// Extra variables that must not be: written to a 0600 file removed after the run. Roles
    /// must use them only in `no_log` tasks.
    pub secrets: serde_json::Map<String, serde_json::Value>,
    /// `--check`: change nothing, report what would change.
    pub check: bool,
    /// `--diff`: report diffs of what changes.
    pub diff: bool,
    /// The run is killed (with every process it started) after this long.
    pub timeout: Duration,
    pub connection: Connection,
    /// Where ansible's own stdout and stderr go (appended, 0600); `None`: only kept in memory
    /// for error messages.
    pub log: Option<PathBuf>,
    /// The machines this run changes (their addresses). Runs of this process that change one
    /// machine take turns: two roles at once on a host race for its package lock, its system
    /// users and systemd (`useradd: user 'pipeline' already exists` under load). Check-mode
    /// runs change nothing and take no turn.
    pub exclusive: Vec<String>,
}

/// Waits for every machine of `keys` to be free of other runs of this process, and holds them
/// until the guards drop. Taken in sorted order, so two runs wanting the same machines cannot
/// each hold one and wait for the other.
async fn take_turns(keys: &[String]) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static MACHINES: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
        OnceLock::new();
    let mut keys: Vec<&String> = keys.iter().collect();
    keys.sort();
    keys.dedup();
    let mut guards = Vec::with_capacity(keys.len());
    for k in keys {
        let m = MACHINES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(k.clone())
            .or_default()
            .clone();
        guards.push(m.lock_owned().await);
    }
    guards
}

impl Run {
    /// A run of `playbook` on `inventory` with default connection settings and a 30 minute
    /// timeout.
    pub fn new(playbook: impl Into<PathBuf>, inventory: impl Into<PathBuf>) -> Run {
        Run {
            playbook: playbook.into(),
            inventory: inventory.into(),
            limit: None,
            vars: serde_json::Map::new(),
            secrets: serde_json::Map::new(),
            check: false,
            diff: false,
            timeout: Duration::from_secs(30 * 60),
            connection: Connection::default(),
            log: None,
            exclusive: Vec::new(),
        }
    }
}

/// A located ansible-core.
#[derive(Clone, Debug)]
pub struct Ansible {
    bin_dir: PathBuf,
}

impl Ansible {
    /// `$PIPELINE_ANSIBLE` (a virtualenv's bin directory), else [`DEFAULT_BIN_DIR`], else `PATH`.
    pub fn locate() -> Result<Ansible, AnsibleError> {
        if let Some(dir) = std::env::var_os(ENV_BIN_DIR).filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            // Named explicitly: no falling back to another ansible behind the user's back.
            return Ansible::in_dir(&dir).ok_or_else(|| AnsibleError::NotInstalled {
                searched: format!("{ENV_BIN_DIR}={}", dir.display()),
            });
        }
        if let Some(a) = Ansible::in_dir(Path::new(DEFAULT_BIN_DIR)) {
            return Ok(a);
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path) {
            if let Some(a) = Ansible::in_dir(&dir) {
                return Ok(a);
            }
        }
        Err(AnsibleError::NotInstalled {
            searched: format!("{DEFAULT_BIN_DIR} or PATH (and {ENV_BIN_DIR} is not set)"),
        })
    }

    /// The ansible-core whose `ansible-playbook` is in `dir` (or `dir/bin`: a virtualenv).
    pub fn in_dir(dir: &Path) -> Option<Ansible> {
        [dir.to_path_buf(), dir.join("bin")]
            .into_iter()
            .find(|d| is_executable(&d.join("ansible-playbook")))
            .map(|bin_dir| Ansible { bin_dir })
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn playbook_program(&self) -> PathBuf {
        self.bin_dir.join("ansible-playbook")
    }

    /// The ansible-core version, e.g. "2.19.14".
    pub async fn version(&self) -> Result<String, AnsibleError> {
        let program = self.playbook_program();
        let mut cmd = Command::new(&program);
        clean_env(&mut cmd);
        let out = cmd
            .arg("--version")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| AnsibleError::Io {
                what: format!("running {} --version", program.display()),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "ansible-playbook [core 2.19.14]"
        text.lines()
            .next()
            .and_then(|l| l.split("[core ").nth(1))
            .and_then(|v| v.split(']').next())
            .map(|v| v.trim().to_string())
            .filter(|v| out.status.success() && !v.is_empty())
            .ok_or_else(|| AnsibleError::Version {
                program: program.display().to_string(),
                output: format!("{text}{}", String::from_utf8_lossy(&out.stderr))
                    .trim()
                    .to_string(),
            })
    }

    /// Runs `run.playbook` with the project's ansible files materialised under `dir` (the
    /// caller's private directory, e.g. `.pipeline/ansible`), calling `on_event` for every
    /// task event as it happens.
    ///
    /// Ok when every host ran through; [`AnsibleError::TasksFailed`] or
    /// [`AnsibleError::Unreachable`] (naming the hosts, carrying the recap) otherwise.
    pub async fn run<F>(
        &self,
        run: &Run,
        dir: &Path,
        mut on_event: F,
    ) -> Result<Recap, AnsibleError>
    where
        F: FnMut(&TaskEvent) + Send,
    {
        let _turns = if run.check {
            Vec::new()
        } else {
            take_turns(&run.exclusive).await
        };
        let started = Instant::now();
        let bundle = Bundle::embedded().materialise(dir)?;
        sweep_stale_runs(dir);
        let work = RunDir::create(dir)?;
        let playbook = if run.playbook.is_relative() {
            bundle.join(&run.playbook)
        } else {
            run.playbook.clone()
        };
        if !playbook.is_file() {
            return Err(AnsibleError::Config(format!(
                "no playbook {} (a relative playbook is looked up in the project's ansible files)",
                playbook.display()
            )));
        }
        let cp_dir = match &run.connection.control_path_dir {
            Some(d) => d.clone(),
            None => dir.join("cp"),
        };
        let io = |what: String| move |source| AnsibleError::Io { what, source };
        bundle::mkdir_private(&cp_dir).map_err(io(format!("creating {}", cp_dir.display())))?;
        let local_tmp = work.path.join("tmp");
        bundle::mkdir_private(&local_tmp)
            .map_err(io(format!("creating {}", local_tmp.display())))?;
        let cfg_text = config::render(
            &run.connection,
            &config::Paths {
                bundle: &bundle,
                control_path_dir: &cp_dir,
                local_tmp: &local_tmp,
            },
        )?;
        let cfg = work.path.join("ansible.cfg");
        work.write(&cfg, cfg_text.as_bytes())?;

        let mut args: Vec<std::ffi::OsString> = vec!["-i".into(), run.inventory.clone().into()];
        for (name, map) in [("vars.json", &run.vars), ("secrets.json", &run.secrets)] {
            if map.is_empty() {
                continue;
            }
            let file = work.path.join(name);
            let json = serde_json::to_vec(map).expect("a JSON map serialises");
            work.write(&file, &json)?;
            let mut at = std::ffi::OsString::from("@");
            at.push(&file);
            args.push("-e".into());
            args.push(at);
        }
        if let Some(limit) = &run.limit {
            args.push("--limit".into());
            args.push(limit_arg(limit)?.into());
        }
        if run.check {
            args.push("--check".into());
        }
        if run.diff {
            args.push("--diff".into());
        }
        args.push(playbook.clone().into());

        // Marks every process of this run, also those that leave its process group.
        let marker = work.id.clone();
        let mut cmd = Command::new(self.playbook_program());
        clean_env(&mut cmd);
        cmd.env(process::RUN_MARKER, &marker)
            .env("ANSIBLE_CONFIG", &cfg)
            .env("ANSIBLE_LOCAL_TEMP", &local_tmp)
            .env("ANSIBLE_REMOTE_TEMP", "~/.ansible/tmp")
            .env("PIPELINE_EVENTS_FD", process::EVENTS_FD.to_string())
            // The bundle directory stays as written: no bytecode caches beside the plugin.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .args(&args)
            .current_dir(&work.path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        let mut log = match &run.log {
            Some(p) => Some(open_log(p).map_err(io(format!("opening {}", p.display())))?),
            None => None,
        };
        let mut progress = Progress {
            recap: Recap {
                check: run.check,
                ..Recap::default()
            },
            running: Default::default(),
            started: false,
            stdout_tail: VecDeque::new(),
            stderr_tail: VecDeque::new(),
        };
        let name = playbook.display().to_string();
        let outcome = tokio::time::timeout(
            run.timeout,
            self.drive(cmd, &marker, &mut progress, &mut log, &mut on_event),
        )
        .await;
        drop(work); // the secrets file goes before anything else is reported
        let status = match outcome {
            Err(_elapsed) => {
                return Err(AnsibleError::Timeout {
                    playbook: name,
                    after: run.timeout,
                    running: progress.running.into_iter().collect(),
                })
            }
            Ok(r) => r?,
        };
        let mut recap = progress.recap;
        recap.elapsed = started.elapsed();
        // The recap decides, not the code alone: 4 is also ansible's parser error.
        if !recap.unreachable_hosts().is_empty() {
            return Err(AnsibleError::Unreachable {
                recap: Box::new(recap),
            });
        }
        if !recap.failed_hosts().is_empty() {
            return Err(AnsibleError::TasksFailed {
                recap: Box::new(recap),
            });
        }
        let tail = if progress.stderr_tail.iter().any(|l| !l.trim().is_empty()) {
            &progress.stderr_tail
        } else {
            &progress.stdout_tail
        };
        if status.success() {
            // Without the plugin a run would look like one that changed nothing.
            if !progress.started {
                return Err(AnsibleError::NoEvents {
                    playbook: name,
                    tail: tail.iter().cloned().collect::<Vec<_>>().join("\n"),
                });
            }
            return Ok(recap);
        }
        Err(AnsibleError::Exit {
            playbook: name,
            status: match status.code() {
                Some(c) => format!("exit status {c}"),
                None => status.to_string(),
            },
            tail: tail.iter().cloned().collect::<Vec<_>>().join("\n"),
        })
    }

    /// Spawns ansible-playbook and reads its events, stdout and stderr until it exits.
    async fn drive<F>(
        &self,
        mut cmd: Command,
        marker: &str,
        p: &mut Progress,
        log: &mut Option<std::fs::File>,
        on_event: &mut F,
    ) -> Result<ExitStatus, AnsibleError>
    where
        F: FnMut(&TaskEvent) + Send,
    {
        let program = self.playbook_program();
        let io = |what: String| move |source| AnsibleError::Io { what, source };
        let (events_rx, events_tx) = process::pipe().map_err(io("creating a pipe".into()))?;
        let mut child = process::spawn(&mut cmd, &events_tx)
            .map_err(io(format!("starting {}", program.display())))?;
        // Declared after the child: dropped first, so the group dies before the child is reaped.
        let mut group = process::GroupGuard::new(&child, marker);
        drop(events_tx); // ours: EOF comes when ansible's copies close
        let events = tokio::net::unix::pipe::Receiver::from_owned_fd(events_rx)
            .map_err(io("reading the event pipe".into()))?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let mut ev = LineReader::new(events);
        let mut out = LineReader::new(stdout);
        let mut err = LineReader::new(stderr);
        let mut status = None;
        // After exit, what is still buffered is read; a descriptor some straggler holds is not
        // waited for long.
        let mut drain_until = None;
        loop {
            if ev.done && out.done && err.done && status.is_some() {
                break;
            }
            let deadline = drain_until
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(24 * 3600));
            tokio::select! {
                line = ev.next(), if !ev.done => {
                    if let Some(line) = line {
                        if let Some(e) = events::parse(&line) {
                            p.note(&e);
                            on_event(&e);
                        }
                    }
                }
                line = out.next(), if !out.done => {
                    if let Some(line) = line {
                        p.output(&line, false, log);
                    }
                }
                line = err.next(), if !err.done => {
                    if let Some(line) = line {
                        p.output(&line, true, log);
                    }
                }
                s = child.wait(), if status.is_none() => {
                    status = Some(s.map_err(io(format!("waiting for {}", program.display())))?);
                    group.kill_now_and_disarm();
                    drain_until = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                }
                _ = tokio::time::sleep_until(deadline), if drain_until.is_some() => break,
            }
        }
        Ok(status.expect("the loop ends after exit"))
    }
}

/// What a run has seen so far; kept outside the run's future so a timeout can report it.
struct Progress {
    recap: Recap,
    /// host → the task it started last and has not finished.
    running: std::collections::BTreeMap<String, String>,
    /// The plugin said `playbook_start`.
    started: bool,
    stdout_tail: VecDeque<String>,
    stderr_tail: VecDeque<String>,
}

impl Progress {
    fn note(&mut self, e: &TaskEvent) {
        if e.event == EventKind::PlaybookStart {
            self.started = true;
        }
        if let Some(host) = &e.host {
            match e.event {
                EventKind::TaskStart => {
                    self.running
                        .insert(host.clone(), e.task.clone().unwrap_or_default());
                }
                _ => {
                    self.running.remove(host);
                }
            }
        }
        self.recap.record(e);
    }

    fn output(&mut self, line: &str, stderr: bool, log: &mut Option<std::fs::File>) {
        let tail = if stderr {
            &mut self.stderr_tail
        } else {
            &mut self.stdout_tail
        };
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
        if let Some(f) = log {
            // A log that cannot be written must not stop the run: it is for people, later.
            if writeln!(f, "{line}").is_err() {
                *log = None;
            }
        }
    }
}

/// Lines from a stream, split on `\n`, lossily decoded (a stray byte must not stop the reading
/// and leave ansible blocked on a full pipe). Cancel-safe: a partial line stays in `buf`.
struct LineReader<R> {
    inner: BufReader<R>,
    buf: Vec<u8>,
    done: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(r: R) -> LineReader<R> {
        LineReader {
            inner: BufReader::new(r),
            buf: Vec::new(),
            done: false,
        }
    }

    /// The next line, or `None` (and `done`) at the end or on a read error.
    async fn next(&mut self) -> Option<String> {
        match self.inner.read_until(b'\n', &mut self.buf).await {
            Ok(0) | Err(_) => {
                self.done = true;
                if self.buf.is_empty() {
                    None
                } else {
                    Some(self.take())
                }
            }
            Ok(_) => Some(self.take()),
        }
    }

    fn take(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.buf)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        self.buf.clear();
        line
    }
}

/// A 0700 directory for one run's config, variable files and temp files, removed on drop.
struct RunDir {
    path: PathBuf,
    /// Unique on this machine: pid, counter and start time.
    id: String,
}

const RUN_PREFIX: &str = "run-";

impl RunDir {
    fn create(parent: &Path) -> Result<RunDir, AnsibleError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{RUN_PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let id = format!("{name}-{nanos}");
        let path = parent.join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| AnsibleError::Io {
                what: format!("creating {}", path.display()),
                source,
            })?;
        Ok(RunDir { path, id })
    }

    fn write(&self, file: &Path, bytes: &[u8]) -> Result<(), AnsibleError> {
        bundle::write_private(file, bytes).map_err(|source| AnsibleError::Io {
            what: format!("writing {}", file.display()),
            source,
        })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes the run directories of processes that are gone (a `kill -9` skips `Drop`): their
/// secrets files do not outlive them by more than one run.
fn sweep_stale_runs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(RUN_PREFIX))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// `--limit a,b`: host names and group names; `@FILE` (read a file) and empty names refused.
fn limit_arg(limit: &[String]) -> Result<String, AnsibleError> {
    if limit.is_empty() {
        return Err(AnsibleError::Config(
            "an empty limit would run on no host".into(),
        ));
    }
    for l in limit {
        if l.is_empty() || l.starts_with('@') || l.contains([',', '\n', '\0']) || l != l.trim() {
            return Err(AnsibleError::Config(format!(
                "limit {l:?}: a host or group name (no ',', no leading '@')"
            )));
        }
    }
    Ok(limit.join(","))
}

/// The environment ansible gets: where programs are, the home, a UTF-8 locale and the SSH agent.
fn clean_env(cmd: &mut Command) {
    cmd.env_clear();
    for k in ["PATH", "HOME", "USER", "LOGNAME", "TZ", "SSH_AUTH_SOCK"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    // ansible-core refuses a locale that is not UTF-8.
    let lang = std::env::var("LANG")
        .ok()
        .filter(|l| l.to_ascii_lowercase().replace('-', "").contains("utf8"));
    cmd.env("LANG", lang.as_deref().unwrap_or("C.UTF-8"));
}

fn open_log(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(p)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_on_one_machine_take_turns_and_others_do_not_wait() {
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let held = take_turns(&keys(&["10.0.0.1", "10.0.0.2"])).await;
        // The same machines in the other order: waits (no deadlock: both take them sorted).
        let other = tokio::spawn(async move {
            let _g = take_turns(&keys(&["10.0.0.2", "10.0.0.1"])).await;
            Instant::now()
        });
        // Another machine is free meanwhile.
        let free = tokio::time::timeout(
            Duration::from_secs(2),
            take_turns(&keys(&["10.0.0.3", "10.0.0.3"])),
        )
        .await;
        assert!(free.is_ok(), "a run on another machine did not wait");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !other.is_finished(),
            "the second run on the machines did not wait"
        );
        let released = Instant::now();
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(2), other)
            .await
            .expect("the second run got its turn")
            .unwrap();
        assert!(got >= released);
    }

    #[test]
    fn a_missing_ansible_says_how_to_install_the_pinned_version() {
        let e = AnsibleError::NotInstalled {
            searched: "PIPELINE_ANSIBLE=/nowhere".into(),
        }
        .to_string();
        assert!(
            e.contains("2.19.14") && e.contains("scripts/lab-install"),
            "{e}"
        );
        assert!(e.contains("/nowhere"), "{e}");
        assert!(Ansible::in_dir(Path::new("/nonexistent-venv/bin")).is_none());
    }

    /// Callers spawn runs on tokio's pool: the future must stay `Send`.
    #[allow(dead_code)]
    fn a_run_is_send(a: &Ansible, r: &Run, dir: &Path) {
        fn send<T: Send>(_: T) {}
        send(a.run(r, dir, |_: &TaskEvent| {}));
    }

    #[test]
    fn limits_are_names_never_files() {
        assert_eq!(
            limit_arg(&["web".into(), "db-1".into()]).unwrap(),
            "web,db-1"
        );
        for bad in ["@hosts.txt", "a,b", "", " web"] {
            assert!(limit_arg(&[bad.into()]).is_err(), "{bad:?} accepted");
        }
        assert!(limit_arg(&[]).is_err());
    }

    #[test]
    fn errors_name_the_hosts_and_the_failed_tasks() {
        let mut r = Recap::default();
        for l in [
            r#"{"event":"unreachable","host":"web-2","task":"write","role":null,"msg":"ssh: connect to host 10.0.0.2 port 22: Connection timed out","diff":null}"#,
            r#"{"event":"failed","host":"web-1","task":"check the disk","role":null,"msg":"disk quota exceeded","diff":null}"#,
            r#"{"event":"recap","host":"web-1","task":null,"role":null,"msg":null,"diff":null,"stats":{"ok":0,"changed":0,"failed":1,"unreachable":0,"skipped":0}}"#,
            r#"{"event":"recap","host":"web-2","task":null,"role":null,"msg":null,"diff":null,"stats":{"ok":0,"changed":0,"failed":0,"unreachable":1,"skipped":0}}"#,
        ] {
            r.record(&events::parse(l).unwrap());
        }
        let e = AnsibleError::Unreachable {
            recap: Box::new(r.clone()),
        }
        .to_string();
        assert!(e.starts_with("unreachable: web-2 (ssh: connect"), "{e}");
        assert!(
            e.contains("web-1: task 'check the disk' failed: disk quota exceeded"),
            "{e}"
        );
        let e = AnsibleError::TasksFailed { recap: Box::new(r) }.to_string();
        assert_eq!(
            e,
            "tasks failed on web-1: task 'check the disk' failed: disk quota exceeded"
        );
    }
}
