//! `hook install` (put the deploy hook into a bare repository) and the hidden `__hook` the hook
//! runs (`pipeline_ops::hook`: wait, check, check out, plan, apply, log). Everything `__hook`
//! writes goes to stderr, which git hands to the pusher as `remote:` lines.

use crate::render::{self, Style};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use pipeline_engine::apply::Event;
use pipeline_engine::plan::Plan;
use pipeline_engine::state::LockInfo;
use pipeline_ops::apply::{ApplyOutcome, ApplyView};
use pipeline_ops::hook::{self, Commit, DeployView, Holder, Push, Target};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A line to the pusher. A pusher who went away (Ctrl-C) must not stop a deploy halfway: the
/// write's error is dropped (and SIGPIPE ignored, see [`run`]).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

#[derive(Subcommand)]
pub enum HookCmd {
    /// Install a git hook into a bare repository: a push to BRANCH plans and applies the pushed
    /// revision (state in --state-dir, default REPO/pipeline); a failed deploy rejects the push.
    Install(InstallFlags),
}

#[derive(Args)]
pub struct InstallFlags {
    /// The bare repository the team pushes to.
    #[arg(long)]
    repo: PathBuf,
    /// The branch whose pushes deploy (e.g. production).
    #[arg(long)]
    branch: String,
    /// The stack to deploy: a file or directory inside the repository.
    #[arg(long, default_value = hook::DEFAULT_STACK)]
    stack: PathBuf,
    /// Replace an `update` hook pipeline did not install (kept as update.replaced).
    #[arg(long)]
    force: bool,
}

/// What the installed hook passes (hidden: `pipeline __hook`).
#[derive(Args)]
pub struct RunFlags {
    #[arg(long)]
    repo: PathBuf,
    #[arg(long)]
    branch: String,
    #[arg(long)]
    stack: PathBuf,
    /// git's `update` arguments: the ref, its old and its new object name.
    refname: String,
    old: String,
    new: String,
}

pub fn install(state_dir: Option<PathBuf>, f: InstallFlags) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the pipeline binary")?;
    let done = hook::install(&hook::InstallRequest {
        repo: f.repo,
        branch: f.branch,
        stack: Some(f.stack),
        state_dir,
        force: f.force,
        exe: exe.canonicalize().unwrap_or(exe),
    })?;
    let t = &done.target;
    match &done.replaced {
        hook::Replaced::Nothing => {}
        hook::Replaced::Own => println!("Replaced the deploy hook installed before."),
        hook::Replaced::Foreign(kept) => {
            println!("Replaced a foreign hook (kept as {}).", kept.display())
        }
    }
    println!(
        "Installed {}: a push to {} deploys {} from the pushed revision.\nState: {} (deploy log: deploys.log)",
        done.hook.display(),
        t.branch,
        t.stack.display(),
        t.state_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn run(state_dir: Option<PathBuf>, f: RunFlags) -> Result<ExitCode> {
    // The pusher's end of stderr may close mid-deploy: the deploy goes on and is logged.
    // SAFETY: setting a signal's disposition to ignore has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let target = Target {
        repo: f.repo,
        branch: f.branch,
        stack: f.stack,
        state_dir: state_dir.context("the hook names no --state-dir: install it again")?,
    };
    let (old, new) = match hook::classify(&target, &f.refname, &f.old, &f.new)? {
        Push::Other => return Ok(ExitCode::SUCCESS),
        Push::Deleted => {
            say!(
                "pipeline: {} deleted; nothing deployed (what runs stays as it is)",
                target.branch
            );
            return Ok(ExitCode::SUCCESS);
        }
        Push::Deploy { old, new } => (old, new),
    };
    let mut view = Remote {
        branch: target.branch.clone(),
    };
    let done = hook::deploy(&target, old.as_deref(), &new, &mut view).await?;
    let short = hook::short(&new);
    let ok = match &done.outcome {
        // The plan said so; the last line says what runs.
        ApplyOutcome::NoChanges(_) => true,
        ApplyOutcome::Cancelled(_) => false,
        ApplyOutcome::Refreshed { .. } => true,
        ApplyOutcome::Applied { plan, report, .. } => {
            let text = render::report_text(report, Style { color: false }, plan.destroy);
            say!("\n{}", text.trim_end());
            report.ok()
        }
    };
    if ok {
        say!("pipeline: {} now runs {short}", target.branch);
        Ok(ExitCode::SUCCESS)
    } else {
        say!(
            "pipeline: the deploy of {short} failed: {} stays where it was",
            target.branch
        );
        Ok(ExitCode::from(1))
    }
}

/// The deploy as the pusher sees it: plain lines on stderr (git prefixes them with `remote:`).
struct Remote {
    branch: String,
}

impl DeployView for Remote {
    fn waiting(&mut self, holder: Option<&Holder>) {
        match holder {
            Some(h) => say!(
                "pipeline: waiting for the deploy of {} (pid {}, since {})",
                hook::short(&h.rev),
                h.pid,
                h.since
            ),
            None => say!("pipeline: waiting for another deploy"),
        }
    }

    fn deploying(&mut self, c: &Commit, stack: &Path) {
        say!(
            "pipeline: deploying {} to {} ({}: {}), stack {}",
            hook::short(&c.rev),
            self.branch,
            c.author,
            c.subject,
            stack.display()
        );
    }
}

impl ApplyView for Remote {
    fn stale_lock(&mut self, info: &LockInfo) {
        say!(
            "note: broke a stale lock held by pid {} on {} (`{}` since {}); that process is gone",
            info.pid,
            info.host,
            info.operation,
            info.created
        );
    }

    fn orphans(&mut self, stopped: &[String]) {
        if !stopped.is_empty() {
            say!("Stopped what no state record names (left by a crashed or concurrent run):");
            for l in stopped {
                say!("  - {l}");
            }
        }
    }

    fn review(&mut self, plan: &Plan) -> Result<bool> {
        say!(
            "{}",
            render::plan_text(plan, Style { color: false }).trim_end()
        );
        Ok(true)
    }

    fn applying(&mut self, _plan: &Plan) {}

    fn event(&mut self, e: &Event) {
        say!("{}", render::event_line(e));
    }
}
