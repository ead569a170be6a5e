//! A push deploys: `pipeline hook install` puts an `update` hook into a bare git repository,
//! and the hook (`pipeline __hook`) plans and applies the pushed revision of one branch.
//!
//! Why `update`: it runs once per pushed ref, before that ref moves, after git has moved the
//! pushed objects out of quarantine. A failed deploy rejects the branch (the pusher's `git push`
//! fails and shows why), so the branch always names the last revision that deployed; other
//! refs of the same push land as usual; and the checkout and every git the stack runs see a
//! plain repository. Deploys of one state directory take turns on a file lock; a push that
//! waited is refused when the branch moved meanwhile (git would refuse its ref update anyway:
//! a push is a compare-and-swap on the ref), so two pushes never both apply.
//!
//! Files, under the state directory (default `REPO/pipeline`): `state.json` and the journal as
//! for any apply, `checkout/` (the revision being or last deployed, re-extracted by each deploy
//! so relative paths in the stack resolve there), `deploys.log` (one JSON line per deploy:
//! revision, pusher, author, when, result), and `hook/` (the lock and who holds it).

use crate::apply::{self, ApplyOutcome, ApplyRequest, ApplyView, Source};
use crate::plan::PlanInputs;
use crate::workspace::Workspace;
use anyhow::{anyhow, bail, Context, Result};
use pipeline_engine::plan::PlanOptions;
use pipeline_supervise::private;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The git hook installed: per ref, before it moves, objects out of quarantine.
pub const HOOK_NAME: &str = "update";
/// The stack deployed when `--stack` is not given: a path inside the repository.
pub const DEFAULT_STACK: &str = "main.hcl";
/// The second line of every hook this module writes: how a reinstall recognises its own.
const MARKER: &str = "# pipeline deploy hook: installed by `pipeline hook install`";
/// How long a deploy that got the lock waits for the previous push's ref update to land.
const HANDOFF_WAIT: Duration = Duration::from_secs(30);

/// What a hook deploys: which branch of which repository, which stack inside it, which state.
#[derive(Clone, Debug)]
pub struct Target {
    /// The bare repository (absolute).
    pub repo: PathBuf,
    /// The branch name (`production`), checked by `git check-ref-format`.
    pub branch: String,
    /// The stack file or directory, relative, inside the repository.
    pub stack: PathBuf,
    /// The state directory (absolute), shared by successive deploys.
    pub state_dir: PathBuf,
}

/// `pipeline hook install`.
pub struct InstallRequest {
    pub repo: PathBuf,
    pub branch: String,
    /// Default [`DEFAULT_STACK`].
    pub stack: Option<PathBuf>,
    /// Default `REPO/pipeline`.
    pub state_dir: Option<PathBuf>,
    /// Replace a hook that pipeline did not install (it is kept beside as `update.replaced`).
    pub force: bool,
    /// The pipeline binary the hook runs (absolute).
    pub exe: PathBuf,
}

/// What an install found in the hook's place.
#[derive(Debug, PartialEq)]
pub enum Replaced {
    Nothing,
    /// A hook pipeline had installed (rewritten).
    Own,
    /// A foreign hook (with `-force`), kept at this path.
    Foreign(PathBuf),
}

pub struct Installed {
    pub target: Target,
    pub hook: PathBuf,
    pub replaced: Replaced,
}

/// Install the deploy hook into a bare repository. Refuses, changing nothing, a missing or
/// non-bare repository, a bad branch or stack path, and a foreign hook without `force`.
pub fn install(req: &InstallRequest) -> Result<Installed> {
    let repo = absolute(&req.repo)?;
    check_bare(&repo)?;
    check_branch(&req.branch)?;
    let stack = req
        .stack
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STACK));
    check_stack_path(&stack)?;
    if !req.exe.is_absolute() {
        bail!(
            "the pipeline binary {} is not an absolute path",
            req.exe.display()
        );
    }
    let state_dir = match &req.state_dir {
        Some(d) => absolute(d)?,
        None => repo.join("pipeline"),
    };
    let hooks = hooks_dir(&repo)?;
    let hook = hooks.join(HOOK_NAME);
    let replaced = match std::fs::read(&hook) {
        Ok(old) if String::from_utf8_lossy(&old).lines().nth(1) == Some(MARKER) => Replaced::Own,
        Ok(_) if !req.force => bail!(
            "{} exists and pipeline did not install it\n  = help: move it away (or merge it into another hook), or run again with -force to replace it (it is kept as {}.replaced)",
            hook.display(),
            HOOK_NAME
        ),
        Ok(_) => Replaced::Foreign(hooks.join(format!("{HOOK_NAME}.replaced"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Replaced::Nothing,
        Err(e) => bail!("cannot read {}: {e}", hook.display()),
    };
    let target = Target {
        repo,
        branch: req.branch.clone(),
        stack,
        state_dir,
    };
    let script = hook_script(&req.exe, &target);
    std::fs::create_dir_all(&hooks)
        .with_context(|| format!("cannot create {}", hooks.display()))?;
    if let Replaced::Foreign(keep) = &replaced {
        std::fs::rename(&hook, keep)
            .with_context(|| format!("cannot move {} to {}", hook.display(), keep.display()))?;
    }
    let tmp = hooks.join(format!(".{HOOK_NAME}.pipeline.tmp"));
    std::fs::write(&tmp, script).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &hook).with_context(|| format!("cannot write {}", hook.display()))?;
    private::create_dir_all(&target.state_dir)
        .with_context(|| format!("cannot create {}", target.state_dir.display()))?;
    Ok(Installed {
        target,
        hook,
        replaced,
    })
}

/// The hook: exec the pipeline binary by absolute path, every value single-quoted.
pub fn hook_script(exe: &Path, t: &Target) -> String {
    format!(
        "#!/bin/sh\n{MARKER}\n# A push to {branch} plans and applies the pushed revision; reinstall to change this.\nexec {exe} __hook --repo {repo} --branch {branch_q} --stack {stack} --state-dir {state} -- \"$@\"\n",
        branch = t.branch,
        exe = sh_quote(&exe.to_string_lossy()),
        repo = sh_quote(&t.repo.to_string_lossy()),
        branch_q = sh_quote(&t.branch),
        stack = sh_quote(&t.stack.to_string_lossy()),
        state = sh_quote(&t.state_dir.to_string_lossy()),
    )
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn absolute(p: &Path) -> Result<PathBuf> {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    Ok(p.canonicalize().unwrap_or(p))
}

/// `git` with none of the variables a hook inherits (GIT_DIR, quarantine paths, push options):
/// every call names its repository with `--git-dir`.
fn git(repo: &Path) -> Command {
    let mut c = Command::new("git");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GIT_") {
            c.env_remove(k);
        }
    }
    c.arg("--git-dir").arg(repo);
    c
}

fn check_bare(repo: &Path) -> Result<()> {
    if !repo.exists() {
        bail!(
            "{} does not exist\n  = help: create the repository the team pushes to with `git init --bare {}`",
            repo.display(),
            repo.display()
        );
    }
    let out = git(repo)
        .args(["rev-parse", "--is-bare-repository"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run git")?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && answer == "true" {
        return Ok(());
    }
    if (out.status.success() && answer == "false") || repo.join(".git").exists() {
        bail!(
            "{} is not a bare repository (it has a working tree, and a push to its checked-out branch would be refused or leave the tree stale)\n  = help: make a bare copy with `git clone --bare {} REPO.git`, push there and install the hook into it",
            repo.display(),
            repo.display()
        );
    }
    bail!(
        "{} is not a git repository\n  = help: name the bare repository the team pushes to (create one with `git init --bare PATH`)",
        repo.display()
    )
}

/// The repository's hooks directory (`core.hooksPath` honoured).
fn hooks_dir(repo: &Path) -> Result<PathBuf> {
    let out = git(repo)
        .args(["rev-parse", "--git-path", "hooks"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "cannot find the hooks directory of {}: {}",
            repo.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'));
    Ok(if p.is_absolute() { p } else { repo.join(p) })
}

fn check_branch(branch: &str) -> Result<()> {
    let help = "  = help: name a branch, e.g. --branch production";
    if branch.is_empty()
        || branch.starts_with('-')
        || branch.starts_with("refs/")
        || branch.contains('\u{fffd}')
    {
        bail!("{branch:?} is not a branch name\n{help}");
    }
    let ok = Command::new("git")
        .args(["check-ref-format"])
        .arg(format!("refs/heads/{branch}"))
        .stdin(Stdio::null())
        .status()
        .context("cannot run git")?
        .success();
    if !ok {
        bail!("{branch:?} is not a valid branch name (git check-ref-format)\n{help}");
    }
    Ok(())
}

fn check_stack_path(stack: &Path) -> Result<()> {
    let inside = !stack.as_os_str().is_empty()
        && stack
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !inside {
        bail!(
            "--stack {} is not a path inside the repository\n  = help: name the stack relative to the repository's top, e.g. --stack {DEFAULT_STACK} or --stack stacks/prod.hcl",
            stack.display()
        );
    }
    Ok(())
}

/// What a pushed ref asks for.
#[derive(Debug, PartialEq)]
pub enum Push {
    /// Another ref: nothing to do.
    Other,
    /// The branch is deleted: nothing is deployed, what runs stays.
    Deleted,
    /// Deploy `new`; `old` is what the branch named (None: it is created by this push).
    Deploy { old: Option<String>, new: String },
}

/// Read the `update` hook's arguments. Ref names may hold any bytes: only compared here.
/// Object names must be hex (40 or 64 digits) before they reach a command line.
pub fn classify(t: &Target, refname: &str, old: &str, new: &str) -> Result<Push> {
    if refname != format!("refs/heads/{}", t.branch) {
        return Ok(Push::Other);
    }
    let old = object_name(old)?;
    let new = object_name(new)?;
    Ok(match new {
        None => Push::Deleted,
        Some(new) => Push::Deploy { old, new },
    })
}

/// A hex object name, or None for git's all-zero "no object".
fn object_name(s: &str) -> Result<Option<String>> {
    let hex = (s.len() == 40 || s.len() == 64)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        bail!(
            "{:?} is not an object name (the hook expects 40 or 64 hex digits from git)",
            s
        );
    }
    Ok((!s.bytes().all(|b| b == b'0')).then(|| s.to_string()))
}

/// Who holds the deploy lock: shown to a push that waits for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Holder {
    pub rev: String,
    pub pid: u32,
    pub since: String,
}

/// The pushed commit, as the deploy log and the pusher see it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Commit {
    pub rev: String,
    pub author: String,
    pub subject: String,
}

/// One line of `deploys.log`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub rev: String,
    /// What the branch named before (None: created by this push).
    pub old: Option<String>,
    pub branch: String,
    /// The account that ran the push on this machine (and the SSH client, when there is one).
    pub pusher: String,
    pub author: String,
    pub subject: String,
    /// UTC, and milliseconds since the epoch for ordering.
    pub started: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    /// `applied`, `no changes`, `failed` (steps failed), `error` (before the apply: stack,
    /// checkout, lock), `refused` (the branch moved while the push waited).
    pub result: String,
    pub error: Option<String>,
    pub pid: u32,
}

/// What a deploy tells its caller beyond the apply's own [`ApplyView`] calls.
pub trait DeployView: ApplyView {
    /// Another deploy holds the lock: this one waits for it.
    fn waiting(&mut self, holder: Option<&Holder>);
    /// The lock is ours; this commit is checked out and planned next.
    fn deploying(&mut self, commit: &Commit, stack: &Path);
}

pub struct Deployed {
    pub record: Record,
    pub outcome: ApplyOutcome,
}

/// Deploy `new` for a push that moves the branch from `old`: wait for the lock, refuse if the
/// branch moved meanwhile, check the revision out, plan and apply it with the state directory,
/// and log it. `Err` (logged too) when the deploy could not run or was refused; a failed step
/// is in the outcome's report.
pub async fn deploy(
    t: &Target,
    old: Option<&str>,
    new: &str,
    view: &mut dyn DeployView,
) -> Result<Deployed> {
    let hook_dir = t.state_dir.join("hook");
    private::create_dir_all(&hook_dir)
        .with_context(|| format!("cannot create {}", hook_dir.display()))?;
    let _lock = DeployLock::acquire(&hook_dir, new, |h| view.waiting(h)).await?;
    // From here on this deploy is the only one: its log times never overlap another's.
    let started = SystemTime::now();
    let mut record = Record {
        rev: new.to_string(),
        old: old.map(str::to_string),
        branch: t.branch.clone(),
        pusher: pusher(),
        author: String::new(),
        subject: String::new(),
        started: pipeline_engine::state::format_utc(secs(started)),
        started_ms: millis(started),
        finished_ms: 0,
        result: String::new(),
        error: None,
        pid: std::process::id(),
    };
    let result = deploy_locked(t, old, new, &hook_dir, &mut record, view).await;
    record.finished_ms = millis(SystemTime::now());
    match &result {
        Ok(outcome) => {
            record.result = match outcome {
                ApplyOutcome::NoChanges(_) => "no changes",
                ApplyOutcome::Applied { report, .. } if report.ok() => "applied",
                _ => "failed",
            }
            .into();
        }
        Err(e) => {
            if record.result.is_empty() {
                record.result = "error".into();
            }
            record.error = Some(format!("{e:#}"));
        }
    }
    // The branch moves when this hook exits 0: the next deploy waits for that (see handoff).
    let ok = matches!(record.result.as_str(), "applied" | "no changes");
    if ok {
        let pending = Pending {
            old: old.map(str::to_string),
            new: new.to_string(),
            pid: std::os::unix::process::parent_id(),
        };
        private::write_atomic(
            &hook_dir.join("pending.json"),
            serde_json::to_vec(&pending)?,
        )?;
    }
    append_log(&t.state_dir, &record)?;
    let outcome = result?;
    Ok(Deployed { record, outcome })
}

async fn deploy_locked(
    t: &Target,
    old: Option<&str>,
    new: &str,
    hook_dir: &Path,
    record: &mut Record,
    view: &mut dyn DeployView,
) -> Result<ApplyOutcome> {
    handoff(t, hook_dir).await;
    let now = branch_value(t)?;
    if now.as_deref() != old {
        record.result = "refused".into();
        let now = now.as_deref().unwrap_or("(deleted)");
        bail!(
            "{} moved to {} while this push waited; nothing was deployed\n  = help: fetch, merge or rebase onto {}, and push again",
            t.branch,
            short(now),
            t.branch
        );
    }
    let commit = commit(t, new)?;
    record.author = commit.author.clone();
    record.subject = commit.subject.clone();
    let checkout = t.state_dir.join("checkout");
    view.deploying(&commit, &t.stack);
    extract(t, new, &checkout)?;
    // The deploy runs in the checkout: errors name stack files as the repository does
    // (`main.hcl:3:13`), and the pusher can find them.
    std::env::set_current_dir(&checkout)
        .with_context(|| format!("cannot enter {}", checkout.display()))?;
    let stack = t.stack.clone();
    if !stack.exists() {
        bail!(
            "revision {} has no {}\n  = help: add the stack there, or install the hook again with --stack naming it",
            short(new),
            t.stack.display()
        );
    }
    let ws = Workspace::new(Some(t.state_dir.clone()))?;
    let inputs = PlanInputs {
        stack,
        // The pusher reviews what each host would change.
        preview: true,
        refresh_only: false,
        opts: PlanOptions {
            refresh: true,
            destroy: false,
            targets: vec![],
            replace: vec![],
            // The server's PIPELINE_VAR_* (secrets stay out of the repository).
            variables: crate::variables(&[], &[])?,
            parallelism: 10,
            overrides: vec![],
        },
    };
    let req = ApplyRequest {
        source: Source::Stack {
            inputs,
            remember: true,
        },
        parallelism: 10,
        grace: apply::CTRL_C_GRACE,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    apply::run(&ws, req, view).await
}

/// A push that deployed exits, then git moves its branch: wait for that before reading the
/// branch, so a push that waited compares against what was deployed.
#[derive(Serialize, Deserialize)]
struct Pending {
    old: Option<String>,
    new: String,
    /// The `git receive-pack` that moves the branch.
    pid: u32,
}

async fn handoff(t: &Target, hook_dir: &Path) {
    let path = hook_dir.join("pending.json");
    let Some(p) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Pending>(&b).ok())
    else {
        return;
    };
    let until = std::time::Instant::now() + HANDOFF_WAIT;
    while std::time::Instant::now() < until && alive(p.pid) {
        match branch_value(t) {
            Ok(v) if v != p.old => break,
            Err(_) => break,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let _ = std::fs::remove_file(path);
}

fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// What the branch names now (None: it does not exist).
fn branch_value(t: &Target) -> Result<Option<String>> {
    let out = git(&t.repo)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("refs/heads/{}", t.branch))
        .stdin(Stdio::null())
        .output()
        .context("cannot run git")?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((out.status.success() && !v.is_empty()).then_some(v))
}

fn commit(t: &Target, rev: &str) -> Result<Commit> {
    let out = git(&t.repo)
        .args([
            "log",
            "-1",
            "--no-show-signature",
            "--format=%an <%ae>%x00%s",
            rev,
            "--",
        ])
        .stdin(Stdio::null())
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "cannot read commit {}: {}",
            short(rev),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (author, subject) = text.trim_end().split_once('\0').unwrap_or((&text, ""));
    Ok(Commit {
        rev: rev.to_string(),
        author: author.to_string(),
        subject: subject.to_string(),
    })
}

/// `git archive REV | tar -x` into a fresh `dir` (what an earlier deploy left there goes).
fn extract(t: &Target, rev: &str, dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("cannot clear {}: {e}", dir.display()),
    }
    private::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut archive = git(&t.repo)
        .args(["archive", "--format=tar", rev])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run git archive")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dir)
        .stdin(archive.stdout.take().ok_or_else(|| anyhow!("no pipe"))?)
        .output()
        .context("cannot run tar")?;
    let git_out = archive.wait_with_output()?;
    if !git_out.status.success() {
        bail!(
            "git archive {} failed: {}",
            short(rev),
            String::from_utf8_lossy(&git_out.stderr).trim()
        );
    }
    if !tar.status.success() {
        bail!(
            "unpacking {} into {} failed: {}",
            short(rev),
            dir.display(),
            String::from_utf8_lossy(&tar.stderr).trim()
        );
    }
    Ok(())
}

/// The deploy lock of a state directory: an exclusive `flock` on `hook/deploy.lock`, released
/// when the process ends however it ends; `hook/holder.json` says who holds it.
struct DeployLock {
    _file: std::fs::File,
    holder: PathBuf,
}

impl DeployLock {
    async fn acquire(
        dir: &Path,
        rev: &str,
        mut on_wait: impl FnMut(Option<&Holder>),
    ) -> Result<DeployLock> {
        use std::os::fd::AsRawFd;
        let path = dir.join("deploy.lock");
        let file =
            private::append(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let holder_path = dir.join("holder.json");
        let mut told: Option<Option<String>> = None;
        loop {
            // SAFETY: flock on a descriptor this function owns.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                bail!("cannot lock {}: {err}", path.display());
            }
            let holder = std::fs::read(&holder_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Holder>(&b).ok());
            let who = holder.as_ref().map(|h| h.rev.clone());
            if told.as_ref() != Some(&who) {
                on_wait(holder.as_ref());
                told = Some(who);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let me = Holder {
            rev: rev.to_string(),
            pid: std::process::id(),
            since: pipeline_engine::state::format_utc(secs(SystemTime::now())),
        };
        private::write_atomic(&holder_path, serde_json::to_vec(&me)?)?;
        Ok(DeployLock {
            _file: file,
            holder: holder_path,
        })
    }
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.holder);
    }
}

fn append_log(state_dir: &Path, r: &Record) -> Result<()> {
    let path = state_dir.join("deploys.log");
    let mut line = serde_json::to_vec(r)?;
    line.push(b'\n');
    private::append(&path)
        .and_then(|mut f| f.write_all(&line))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Every deploy recorded in the state directory, oldest first.
pub fn read_log(state_dir: &Path) -> Result<Vec<Record>> {
    let path = state_dir.join("deploys.log");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("{}: bad line", path.display())))
        .collect()
}

/// Remove what git sets for a hook (GIT_DIR, quarantine and push-option variables): the
/// stack's own git calls (a service's revision) must find their own repositories. Call before
/// any thread starts.
pub fn clear_git_env() {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GIT_") {
            std::env::remove_var(k);
        }
    }
}

fn pusher() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(account_name);
    match std::env::var("SSH_CONNECTION")
        .ok()
        .and_then(|c| c.split_whitespace().next().map(str::to_string))
    {
        Some(from) => format!("{user} from {from}"),
        None => user,
    }
}

/// The name of the account this process runs as, else its uid.
fn account_name() -> String {
    // SAFETY: getuid cannot fail; getpwuid returns null or an entry valid until the next call,
    // read at once on this thread.
    unsafe {
        let uid = libc::getuid();
        let pw = libc::getpwuid(uid);
        if pw.is_null() || (*pw).pw_name.is_null() {
            return format!("uid {uid}");
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

pub fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            repo: "/srv/app.git".into(),
            branch: "production".into(),
            stack: "main.hcl".into(),
            state_dir: "/srv/app.git/pipeline".into(),
        }
    }

    #[test]
    fn only_the_branch_deploys_and_only_hex_reaches_git() {
        let t = target();
        let (z, a) = ("0".repeat(40), "a".repeat(40));
        assert_eq!(
            classify(&t, "refs/heads/main", &z, &a).unwrap(),
            Push::Other
        );
        assert_eq!(
            classify(&t, "refs/heads/production/x", &z, &a).unwrap(),
            Push::Other
        );
        assert_eq!(
            classify(&t, "refs/tags/production", &z, &a).unwrap(),
            Push::Other
        );
        assert_eq!(
            classify(&t, "refs/heads/production", &z, &a).unwrap(),
            Push::Deploy {
                old: None,
                new: a.clone()
            }
        );
        assert_eq!(
            classify(&t, "refs/heads/production", &a, &z).unwrap(),
            Push::Deleted
        );
        for bad in ["--upload-pack=x", "HEAD", &"A".repeat(40), &"a".repeat(39)] {
            assert!(
                classify(&t, "refs/heads/production", &z, bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_script_quotes_every_value() {
        let mut t = target();
        t.repo = "/srv/it's here.git".into();
        let s = hook_script(Path::new("/usr/bin/pipe line"), &t);
        assert_eq!(s.lines().nth(1), Some(MARKER));
        assert!(
            s.contains(r"exec '/usr/bin/pipe line' __hook --repo '/srv/it'\''s here.git' --branch 'production'"),
            "{s}"
        );
    }

    #[test]
    fn a_stack_must_stay_inside_the_repository() {
        assert!(check_stack_path(Path::new("stacks/prod.hcl")).is_ok());
        for bad in ["/etc/x.hcl", "../x.hcl", "a/../../x.hcl", ""] {
            assert!(check_stack_path(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
