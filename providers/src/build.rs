//! Builds of a service's source: a directory or a git revision, copied into a content-addressed
//! build directory and built once there. Replicas run from the build directory.

use pipeline_engine::lang::funcs::hex;
use pipeline_engine::provider::{Cause, ProviderCtx, ProviderError};
use sha2::Digest;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a build may run when the service sets no `build_timeout`.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(600);

const SKIP: &[&str] = &["target", ".git", "node_modules", ".pipeline"];

#[derive(Clone, Debug)]
pub struct BuildSpec {
    pub source: PathBuf,
    pub revision: Option<String>,
    pub build: Option<String>,
    /// `build_timeout`: the build's process group is killed when it runs longer.
    pub timeout: Duration,
}

impl BuildSpec {
    /// What a service block asks to build: `source` (relative to the stack's directory),
    /// `revision`, `build` and `build_timeout`.
    pub fn of(ctx: &ProviderCtx, c: &pipeline_engine::value::ValueMap) -> BuildSpec {
        use pipeline_engine::value::Value;
        let src = PathBuf::from(c.get("source").and_then(Value::as_str).unwrap_or("."));
        BuildSpec {
            source: if src.is_absolute() {
                src
            } else {
                ctx.stack_dir.join(src)
            },
            revision: c
                .get("revision")
                .and_then(Value::as_str)
                .map(str::to_string),
            build: c.get("build").and_then(Value::as_str).map(str::to_string),
            timeout: timeout_of(c.get("build_timeout").and_then(Value::as_str))
                .unwrap_or(DEFAULT_BUILD_TIMEOUT),
        }
    }
}

/// `build_timeout` as written ("30s", "10m"), or the default; Err names what is wrong.
pub fn timeout_of(v: Option<&str>) -> Result<Duration, String> {
    match v {
        None => Ok(DEFAULT_BUILD_TIMEOUT),
        Some(t) => match crate::parse_duration(t) {
            Some(d) if d >= Duration::from_millis(100) => Ok(d),
            Some(_) => Err(format!("a build_timeout of {t:?} is too short")),
            None => Err(format!("{t:?} is not a duration")),
        },
    }
}

/// "2s", "10m", "1.5s": how a deadline is named in messages.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

pub fn builds_root(ctx: &ProviderCtx) -> PathBuf {
    ctx.work_dir.join("builds")
}

/// Content hash of what would be built. Pure: reads files (or asks git), writes nothing.
pub fn build_id(spec: &BuildSpec) -> Result<String, ProviderError> {
    let mut h = sha2::Sha256::new();
    h.update(spec.build.as_deref().unwrap_or("").as_bytes());
    h.update([0]);
    match &spec.revision {
        Some(rev) => {
            let commit = git_commit(&spec.source, rev)?;
            h.update(commit.as_bytes());
            h.update(git_prefix(&spec.source)?.as_bytes());
        }
        None => {
            if !spec.source.is_dir() {
                return Err(ProviderError::new(format!(
                    "the source directory {} does not exist",
                    spec.source.display()
                ))
                .help("`source` is a directory relative to the stack file"));
            }
            let mut files = Vec::new();
            walk(&spec.source, &spec.source, &mut files).map_err(|e| {
                ProviderError::new(format!("cannot read {}: {e}", spec.source.display()))
            })?;
            files.sort();
            for rel in files {
                h.update(rel.to_string_lossy().as_bytes());
                h.update([0]);
                let mut f = std::fs::File::open(spec.source.join(&rel)).map_err(|e| {
                    ProviderError::new(format!("cannot read {}: {e}", rel.display()))
                })?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf).map_err(|e| {
                    ProviderError::new(format!("cannot read {}: {e}", rel.display()))
                })?;
                h.update((buf.len() as u64).to_le_bytes());
                h.update(&buf);
            }
        }
    }
    Ok(hex(&h.finalize())[..16].to_string())
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        if SKIP.iter().any(|s| name == *s) {
            continue;
        }
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(root, &e.path(), out)?;
        } else if ft.is_file() {
            out.push(
                e.path()
                    .strip_prefix(root)
                    .unwrap_or(&e.path())
                    .to_path_buf(),
            );
        }
    }
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn git_commit(source: &Path, rev: &str) -> Result<String, ProviderError> {
    git(
        source,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ],
    )
    .map_err(|e| {
        ProviderError::new(format!(
            "revision \"{rev}\" does not exist in the git repository at {} {e}",
            source.display()
        ))
        .help(format!(
            "list revisions with `git -C {} branch -a` or `git log --oneline`",
            source.display()
        ))
    })
}

fn git_prefix(source: &Path) -> Result<String, ProviderError> {
    git(source, &["rev-parse", "--show-prefix"]).map_err(|e| {
        ProviderError::new(format!(
            "{} is not in a git repository: {e}",
            source.display()
        ))
    })
}

/// Make sure build `id` exists; builds it under a lock so concurrent replicas build once.
pub fn ensure(
    ctx: &ProviderCtx,
    spec: &BuildSpec,
    id: &str,
    name: &str,
) -> Result<PathBuf, ProviderError> {
    let root = builds_root(ctx);
    let dir = root.join(id);
    let lock_path = root.join(format!("{id}.lock"));
    // The clean-up (`gc`) removes the builds directory when it is empty: if that happens
    // between making it and opening the lock, make it again.
    let mut attempts = 0;
    let lock = loop {
        std::fs::create_dir_all(&root)
            .map_err(|e| ProviderError::new(format!("cannot create {}: {e}", root.display())))?;
        match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 5 => attempts += 1,
            r => {
                break r.map_err(|e| {
                    ProviderError::new(format!("cannot open {}: {e}", lock_path.display()))
                })?
            }
        }
    };
    flock(&lock)?;
    let src = dir.join("src");
    if dir.join(".done").exists() {
        return Ok(src);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&src)
        .map_err(|e| ProviderError::new(format!("cannot create {}: {e}", src.display())))?;
    let fail = |e: ProviderError| {
        let _ = std::fs::remove_dir_all(&dir);
        e
    };
    match &spec.revision {
        Some(rev) => export_revision(&spec.source, rev, &src).map_err(fail)?,
        None => copy_dir(&spec.source, &src).map_err(|e| {
            fail(ProviderError::new(format!(
                "cannot copy {} into {}: {e}",
                spec.source.display(),
                src.display()
            )))
        })?,
    }
    if let Some(cmd) = &spec.build {
        let log_path = dir.join("build.log");
        let log = std::fs::File::create(&log_path).map_err(|e| {
            ProviderError::new(format!("cannot create {}: {e}", log_path.display()))
        })?;
        let outcome = run_build(cmd, &src, log, spec.timeout)
            .map_err(|e| ProviderError::new(format!("cannot run the build of {name}: {e}")))?;
        let failed = |what: String, help: String| {
            let tail = tail(&log_path, 20);
            let _ = std::fs::remove_dir_all(&src);
            (
                ProviderError::new(format!(
                    "{what}: `{cmd}`\n--- last lines of {} ---\n{tail}",
                    log_path.display()
                ))
                .help(help),
                tail.lines().map(String::from).collect::<Vec<_>>(),
            )
        };
        match outcome {
            BuildOutcome::Exited(status) if status.success() => {}
            BuildOutcome::Exited(status) => {
                let (e, output) = failed(
                    format!("the build of {name} failed ({status})"),
                    "fix the build (run the command in the source directory to try it), then apply again".into(),
                );
                return Err(e.cause(Cause::Build {
                    command: cmd.clone(),
                    status: status.to_string(),
                    output,
                }));
            }
            BuildOutcome::TimedOut => {
                let d = show_duration(spec.timeout);
                return Err(failed(
                    format!("the build of {name} did not finish within {d} (build_timeout) and was stopped"),
                    format!("make the build finish sooner, or give it longer with build_timeout on the service (now {d}; e.g. build_timeout = \"30m\")"),
                ).0);
            }
            BuildOutcome::Interrupted => {
                return Err(failed(
                    format!("the build of {name} was interrupted (Ctrl-C) and stopped"),
                    "apply again to build it".into(),
                )
                .0)
            }
        }
    }
    std::fs::write(dir.join(".done"), id)
        .map_err(|e| ProviderError::new(format!("cannot mark the build done: {e}")))?;
    Ok(src)
}

enum BuildOutcome {
    Exited(std::process::ExitStatus),
    TimedOut,
    Interrupted,
}

/// Set once this process got SIGINT (Ctrl-C) while a build ran.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Listen for Ctrl-C once per process on the caller's tokio runtime (builds run on its blocking
/// pool). The CLI keeps its own listener: tokio hands every SIGINT to each of them.
fn watch_interrupts() {
    static WATCHING: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        WATCHING.get_or_init(|| {
            rt.spawn(async {
                while tokio::signal::ctrl_c().await.is_ok() {
                    INTERRUPTED.store(true, Ordering::SeqCst);
                }
            });
        });
    }
}

/// A build's process group: a watchdog leads it, the build command joins it. Dropping this
/// kills the whole group (deadline, Ctrl-C, a panic, success with stray background jobs), and a
/// CLI that dies any other way (even SIGKILL) closes the watchdog's pipe, so the watchdog
/// kills the group itself.
struct BuildGroup {
    watchdog: Child,
    _lifeline: OwnedFd,
    build: Option<Child>,
}

impl BuildGroup {
    fn pgid(&self) -> libc::pid_t {
        self.watchdog.id() as libc::pid_t
    }
}

impl Drop for BuildGroup {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the group we created; its leader (the watchdog) is our unreaped
        // child, so the group id cannot have been reused.
        unsafe { libc::kill(-self.pgid(), libc::SIGKILL) };
        if let Some(b) = &mut self.build {
            let _ = b.wait();
        }
        let _ = self.watchdog.wait();
    }
}

/// Run `cmd` with `sh -c` in `cwd`, output to `log`, in a process group of its own that dies
/// with this process, killed at `timeout` or on Ctrl-C.
fn run_build(
    cmd: &str,
    cwd: &Path,
    log: std::fs::File,
    timeout: Duration,
) -> std::io::Result<BuildOutcome> {
    watch_interrupts();
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two fds that we own from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fds from pipe2.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut watchdog = Command::new("sh");
    watchdog
        .args([
            "-c",
            "read _ignored; kill -KILL 0",
            "pipeline-build-watchdog",
        ])
        .current_dir("/")
        .stdin(Stdio::from(read_end))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setpgid is async-signal-safe.
    unsafe {
        watchdog.pre_exec(|| {
            if libc::setpgid(0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut group = BuildGroup {
        watchdog: watchdog.spawn()?,
        _lifeline: write_end,
        build: None,
    };
    let pgid = group.pgid();
    let parent = std::process::id() as libc::pid_t;
    let mut build = Command::new("sh");
    build
        .arg("-c")
        .arg(cmd)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // A build keeps the user's toolchain environment (CARGO_HOME, proxies, ...) but never the
    // stack's variables: `PIPELINE_VAR_*` may hold secrets the stack did not give this build.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PIPELINE_VAR_") {
            build.env_remove(&k);
        }
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        build.pre_exec(move || {
            // The watchdog is gone (this process is dying): do not start.
            if libc::setpgid(0, pgid) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let started = Instant::now();
    group.build = Some(build.spawn()?);
    loop {
        if let Some(status) = group.build.as_mut().and_then(|b| b.try_wait().transpose()) {
            return Ok(BuildOutcome::Exited(status?));
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Ok(BuildOutcome::Interrupted);
        }
        if started.elapsed() >= timeout {
            return Ok(BuildOutcome::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn flock(f: &std::fs::File) -> Result<(), ProviderError> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on an open descriptor we own; released when the file is closed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    if r != 0 {
        return Err(ProviderError::new(format!(
            "cannot lock the build: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn export_revision(source: &Path, rev: &str, dst: &Path) -> Result<(), ProviderError> {
    let commit = git_commit(source, rev)?;
    let prefix = git_prefix(source)?;
    let tree = if prefix.is_empty() {
        commit
    } else {
        format!("{commit}:{}", prefix.trim_end_matches('/'))
    };
    // From the top level: run in a subdirectory, git archive keeps only the paths below it,
    // and the subtree `commit:prefix` has none of those.
    let top = git(source, &["rev-parse", "--show-toplevel"]).map_err(|e| {
        ProviderError::new(format!(
            "{} is not in a git repository: {e}",
            source.display()
        ))
    })?;
    let archive = Command::new("git")
        .arg("-C")
        .arg(&top)
        .args(["archive", "--format=tar", &tree])
        .output()
        .map_err(|e| ProviderError::new(format!("cannot run git archive: {e}")))?;
    if !archive.status.success() {
        return Err(ProviderError::new(format!(
            "git archive {tree} failed: {}",
            String::from_utf8_lossy(&archive.stderr).trim()
        )));
    }
    let mut tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dst)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| ProviderError::new(format!("cannot run tar: {e}")))?;
    use std::io::Write;
    tar.stdin.take().map(|mut s| s.write_all(&archive.stdout));
    let st = tar
        .wait()
        .map_err(|e| ProviderError::new(format!("tar failed: {e}")))?;
    if !st.success() {
        return Err(ProviderError::new(format!(
            "unpacking revision {rev} failed"
        )));
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let name = e.file_name();
        if SKIP.iter().any(|s| name == *s) {
            continue;
        }
        let ft = e.file_type()?;
        if ft.is_dir() {
            copy_dir(&e.path(), &to.join(&name))?;
        } else if ft.is_file() {
            std::fs::copy(e.path(), to.join(&name))?;
        }
    }
    Ok(())
}

pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Remove builds that no replica directory refers to any more.
///
/// Each build's lock is taken before the markers are read: a create writes its generation's
/// `build_id` marker before it locks the build, so a marker written after this scan belongs to a
/// create that finds the build gone and builds it again, never one that starts in a removed
/// directory (reading the markers first raced with a create that reused a finished build).
pub fn gc(ctx: &ProviderCtx) {
    use std::os::fd::AsRawFd;
    let root = builds_root(ctx);
    let run = ctx.work_dir.join("run");
    let mut ids: Vec<String> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.trim_end_matches(".lock").to_string()
        })
        .collect();
    ids.sort();
    ids.dedup();
    // Builds in progress hold their lock: leave them alone; hold the others' until done.
    let mut held = Vec::new();
    for id in ids {
        let lock_path = root.join(format!("{id}.lock"));
        match std::fs::OpenOptions::new().write(true).open(&lock_path) {
            Ok(f) => {
                // SAFETY: non-blocking flock on a descriptor we own.
                if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                    held.push((id, Some((f, lock_path))));
                }
            }
            Err(_) => held.push((id, None)),
        }
    }
    let mut used = std::collections::HashSet::new();
    // Markers sit in each app generation's directory: run/<instance>/gen-N/build_id.
    if let Ok(rd) = std::fs::read_dir(&run) {
        for e in rd.flatten() {
            for d in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                if let Ok(id) = std::fs::read_to_string(d.path().join("build_id")) {
                    used.insert(id.trim().to_string());
                }
            }
        }
    }
    for (id, lock) in held {
        if used.contains(&id) {
            continue;
        }
        let _ = std::fs::remove_dir_all(root.join(&id));
        if let Some((_f, lock_path)) = lock {
            let _ = std::fs::remove_file(&lock_path);
        }
    }
    let _ = std::fs::remove_dir(&root);
    let _ = std::fs::remove_dir(&run);
}

/// The checks every service kind makes of `start_timeout` and `build_timeout`, pushed to `out`.
pub(crate) fn check_timeouts(
    c: &pipeline_engine::value::ValueMap,
    out: &mut Vec<pipeline_engine::provider::Invalid>,
) {
    use pipeline_engine::provider::Invalid;
    use pipeline_engine::value::Value;
    if let Some(t) = c.get("start_timeout").and_then(Value::as_str) {
        if crate::parse_duration(t).is_none() {
            out.push(Invalid::new(
                Some("start_timeout"),
                format!("{t:?} is not a duration"),
                "durations look like \"500ms\", \"30s\" or \"2m\"",
            ));
        }
    }
    if let Err(e) = timeout_of(c.get("build_timeout").and_then(Value::as_str)) {
        out.push(Invalid::new(
            Some("build_timeout"),
            e,
            "how long the build may run, e.g. build_timeout = \"30s\" or \"20m\" (default \"10m\")",
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Reproducible tarballs in `.pipeline/artifacts/` (a release shipped to hosts, a static site).

/// The sha256 of a file, in hex.
pub fn sha256_file(p: &Path) -> Result<String, ProviderError> {
    let mut f = std::fs::File::open(p)
        .map_err(|e| ProviderError::new(format!("cannot read {}: {e}", p.display())))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)
        .map_err(|e| ProviderError::new(format!("cannot read {}: {e}", p.display())))?;
    Ok(pipeline_engine::lang::funcs::hex(&h.finalize()))
}

/// `.pipeline/artifacts/`: tarballs named by their sha256.
pub fn artifacts_dir(ctx: &ProviderCtx) -> PathBuf {
    ctx.work_dir.join("artifacts")
}

pub fn run_tool(cmd: &mut std::process::Command, what: &str) -> Result<(), ProviderError> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ProviderError::new(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(ProviderError::new(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A reproducible tarball of `dir` (or of the one file `file` in it) in the artifacts directory,
/// named by its sha256: the same content gives the same bytes (sorted, mtime 0, owner 0, no
/// name or time in the gzip header). Returns (path, sha256).
pub fn pack(
    ctx: &ProviderCtx,
    dir: &Path,
    file: Option<&str>,
) -> Result<(PathBuf, String), ProviderError> {
    let root = artifacts_dir(ctx);
    pipeline_supervise::private::create_dir_all(&root)
        .map_err(|e| ProviderError::new(format!("cannot create {}: {e}", root.display())))?;
    let tmp = tempfile_in(&root)?;
    let tar = tmp.with_extension("tar");
    let mut cmd = std::process::Command::new("tar");
    cmd.args([
        "--sort=name",
        "--mtime=@0",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "--format=gnu",
        "--exclude=./.git",
        "-C",
    ])
    .arg(dir)
    .arg("-cf")
    .arg(&tar)
    .arg("--")
    .arg(file.unwrap_or("."));
    let done = run_tool(&mut cmd, "packing (tar)")
        .and_then(|_| {
            run_tool(
                std::process::Command::new("gzip")
                    .args(["-n", "-f", "--"])
                    .arg(&tar),
                "packing (gzip)",
            )
        })
        .and_then(|_| {
            let gz = tar.with_extension("tar.gz");
            let sha = sha256_file(&gz)?;
            let dst = root.join(format!("{sha}.tar.gz"));
            std::fs::rename(&gz, &dst).map_err(|e| {
                ProviderError::new(format!("cannot move the tarball to {}: {e}", dst.display()))
            })?;
            pipeline_supervise::private::narrow(&dst, 0o600).ok();
            Ok((dst, sha))
        });
    let _ = std::fs::remove_file(&tar);
    let _ = std::fs::remove_file(tar.with_extension("tar.gz"));
    let _ = std::fs::remove_file(&tmp);
    done
}

pub fn tempfile_in(dir: &Path) -> Result<PathBuf, ProviderError> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(dir.join(format!(".pack-{}-{n}", std::process::id())))
}
