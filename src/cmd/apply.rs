//! `apply`, `destroy`, `deploy`: one operation (`pipeline_ops::apply::run`: lock, sweep, plan,
//! review, apply); here the plan is shown, approval asked, and progress drawn.

use crate::commands::{plan_inputs, ApplyArgs};
use crate::render::{self, Style};
use anyhow::{bail, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pipeline_engine::apply::Event;
use pipeline_engine::plan::Plan;
use pipeline_engine::state::LockInfo;
use pipeline_ops::apply::{ApplyOutcome, ApplyRequest, ApplyView, Source};
use pipeline_ops::{plan::read_saved_plan, Workspace};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub async fn apply(ws: &Workspace, style: Style, a: ApplyArgs) -> Result<ExitCode> {
    // `apply FILE` with a saved plan applies exactly that plan, without showing or asking.
    if let Some(plan) = match &a.args.stack {
        Some(p) => read_saved_plan(ws, p)?,
        None => None,
    } {
        return run(ws, style, &a, Source::Saved(plan)).await;
    }
    let mut inputs = plan_inputs(ws, &a.args, false)?;
    // A plan someone will approve shows each host's dry run; -auto-approve skips it.
    inputs.preview = !a.auto_approve && !a.json;
    let remember = true;
    run(ws, style, &a, Source::Stack { inputs, remember }).await
}

pub async fn destroy(ws: &Workspace, style: Style, a: ApplyArgs) -> Result<ExitCode> {
    let inputs = plan_inputs(ws, &a.args, true)?;
    let remember = false;
    run(ws, style, &a, Source::Stack { inputs, remember }).await
}

pub async fn deploy(
    ws: &Workspace,
    style: Style,
    service: &str,
    version: &str,
    a: ApplyArgs,
) -> Result<ExitCode> {
    let mut inputs = plan_inputs(ws, &a.args, false)?;
    inputs.preview = !a.auto_approve && !a.json;
    let block = pipeline_ops::apply::deploy_inputs(ws, &mut inputs, service, version)?;
    let source = Source::Deploy {
        inputs,
        block: block.clone(),
    };
    let code = run(ws, style, &a, source).await?;
    if !a.json {
        eprintln!("note: {block} now runs {version}; the stack still names its own revision, so pin {version:?} there or the next apply goes back");
    }
    Ok(code)
}

/// The one path of apply, destroy and deploy: run the operation, then render its outcome.
async fn run(ws: &Workspace, style: Style, a: &ApplyArgs, source: Source) -> Result<ExitCode> {
    Ok(match run_ended(ws, style, a, source, true).await? {
        Ended::NoChanges => ExitCode::SUCCESS,
        Ended::Cancelled => ExitCode::from(1),
        Ended::Applied { ok } => {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    })
}

/// How a run ended, for a caller that says more afterwards (a module deploy: where it answers).
pub(crate) enum Ended {
    NoChanges,
    Cancelled,
    /// `ok`: every step succeeded.
    Applied {
        ok: bool,
    },
}

/// [`run`], telling how it ended; `outputs_after`: list the outputs after a successful apply.
pub(crate) async fn run_ended(
    ws: &Workspace,
    style: Style,
    a: &ApplyArgs,
    source: Source,
    outputs_after: bool,
) -> Result<Ended> {
    let json = a.json;
    // A saved plan was reviewed when it was made: it is applied without showing or asking.
    let saved = matches!(source, Source::Saved(_));
    let mut view = Terminal::new(
        style,
        json,
        (!saved, a.auto_approve || saved),
        a.args.interrupt_grace,
    );
    let req = ApplyRequest {
        source,
        parallelism: a.args.parallelism,
        grace: a.args.interrupt_grace,
        cancel: view.cancel.clone(),
    };
    let (plan, report, outputs) = match pipeline_ops::apply::run(ws, req, &mut view).await? {
        ApplyOutcome::NoChanges(_) => return Ok(Ended::NoChanges),
        ApplyOutcome::Cancelled(_) => return Ok(Ended::Cancelled),
        ApplyOutcome::Refreshed {
            updated, forgotten, ..
        } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"type": "refresh_recorded", "updated": updated, "forgotten": forgotten})
                );
            } else {
                println!(
                    "\n{} {updated} instance(s) recorded as they are now, {forgotten} gone and forgotten. Nothing outside the state was changed.",
                    style.green("Refresh recorded in the state:")
                );
            }
            return Ok(Ended::Applied { ok: true });
        }
        ApplyOutcome::Applied {
            plan,
            report,
            outputs,
        } => (plan, report, outputs),
    };
    if let Some(o) = view.overall.take() {
        o.finish_and_clear();
    }
    let mut canary_reports = Vec::new();
    for rec in &view.canary_records {
        match crate::canary::write_progressive_report(rec) {
            Ok(html) => canary_reports.push(html),
            Err(e) => eprintln!("warning: no canary report: {e:#}"),
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"type": "apply_summary", "ok": report.ok(), "succeeded": report.succeeded.len(), "failed": report.failed.len(), "skipped": report.skipped.len(), "interrupted": report.interrupted})
        );
        for html in &canary_reports {
            println!(
                "{}",
                serde_json::json!({"type": "canary_report", "path": html.display().to_string()})
            );
        }
    } else {
        print!("\n{}", render::report_text(&report, style, plan.destroy));
        for html in &canary_reports {
            println!("Canary report: {}", html.display());
        }
        if outputs_after && report.ok() && !plan.destroy && !outputs.is_empty() {
            println!("\nOutputs:\n");
            super::state::print_outputs(&outputs);
        }
    }
    Ok(Ended::Applied { ok: report.ok() })
}

/// The apply as the terminal shows it: the plan, the question, a bar per running step (or a
/// line per event when not on a terminal, JSON lines with -json).
struct Terminal {
    style: Style,
    json: bool,
    /// Show the plan before applying it; apply without asking.
    show: bool,
    auto_approve: bool,
    grace: Duration,
    cancel: Arc<AtomicBool>,
    multi: MultiProgress,
    overall: Option<ProgressBar>,
    lines: HashMap<String, ProgressBar>,
    /// Records of progressive canaries, rendered as HTML reports once the apply is over.
    canary_records: Vec<PathBuf>,
}

impl Terminal {
    fn new(style: Style, json: bool, (show, auto_approve): (bool, bool), grace: Duration) -> Self {
        Terminal {
            style,
            json,
            show,
            auto_approve,
            grace,
            cancel: Arc::new(AtomicBool::new(false)),
            multi: MultiProgress::new(),
            overall: None,
            lines: HashMap::new(),
            canary_records: Vec::new(),
        }
    }
}

impl ApplyView for Terminal {
    fn stale_lock(&mut self, info: &LockInfo) {
        stale_note(info)
    }

    /// What the sweep stopped (left by a crashed or concurrent run), before the plan.
    fn orphans(&mut self, stopped: &[String]) {
        if self.json {
            for l in stopped {
                println!(
                    "{}",
                    serde_json::json!({"type": "orphan_stopped", "message": l})
                );
            }
        } else if !stopped.is_empty() {
            println!("Stopped what no state record names (left by a crashed or concurrent run):");
            for l in stopped {
                println!("  - {l}");
            }
            println!();
        }
    }

    fn review(&mut self, plan: &Plan) -> Result<bool> {
        if self.show && !self.json {
            print!("{}", render::plan_text(plan, self.style));
        }
        // A refresh-only plan has no steps but its recording still needs approval.
        if !plan.has_changes()
            || self.auto_approve
            || (!plan.refresh_only && pipeline_ops::apply::steps(plan) == 0)
        {
            return Ok(true);
        }
        if !std::io::stdin().is_terminal() {
            bail!("cannot ask for approval: standard input is not a terminal\n  = help: review the plan, then run again with -auto-approve");
        }
        print!("\nDo you want to perform these actions? Only 'yes' will be accepted: ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            println!("Cancelled; nothing was changed.");
            return Ok(false);
        }
        Ok(true)
    }

    fn applying(&mut self, plan: &Plan) {
        let (cancel, grace) = (self.cancel.clone(), self.grace);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.store(true, Ordering::SeqCst);
                eprintln!(
                    "\nInterrupt received: nothing new starts; running steps have {} to finish, then stop and are recorded (the next apply finishes or cleans up what they left).",
                    pipeline_engine::step::format_duration(grace)
                );
            }
        });
        if std::io::stderr().is_terminal() && !self.json {
            let total = pipeline_ops::apply::steps(plan);
            let pb = self.multi.add(ProgressBar::new(total as u64));
            pb.set_style(
                ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb.enable_steady_tick(Duration::from_millis(200));
            self.overall = Some(pb);
        }
    }

    fn event(&mut self, e: &Event) {
        let (json, overall, multi) = (self.json, &self.overall, &self.multi);
        let (lines, canary_records) = (&mut self.lines, &mut self.canary_records);
        if let Event::Artifact {
            kind: pipeline_engine::provider::ArtifactKind::CanaryRecord,
            path,
            ..
        } = e
        {
            canary_records.push(path.clone());
        }
        if json {
            println!("{}", render::event_json(e));
            return;
        }
        match (overall, e) {
            (
                Some(_),
                Event::RolledBack { .. }
                | Event::Progress { .. }
                | Event::Artifact { .. }
                | Event::Retrying { .. },
            ) => {
                let _ = multi.println(render::event_line(e));
            }
            (Some(o), Event::Started { addr, .. }) => {
                let pb = multi.insert_before(o, ProgressBar::new_spinner());
                pb.set_style(
                    ProgressStyle::with_template("  {spinner} {msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                pb.set_message(render::event_line(e));
                pb.enable_steady_tick(Duration::from_millis(120));
                lines.insert(addr.clone(), pb);
            }
            (
                Some(o),
                Event::Finished { addr, .. }
                | Event::Failed { addr, .. }
                | Event::Skipped { addr, .. },
            ) => {
                if let Some(pb) = lines.remove(addr) {
                    pb.finish_and_clear();
                    multi.remove(&pb);
                }
                let _ = multi.println(render::event_line(e));
                o.inc(1);
            }
            (None, _) => eprintln!("{}", render::event_line(e)),
        }
    }
}

pub fn stale_note(info: &LockInfo) {
    eprintln!(
        "note: broke a stale lock held by pid {} on {} (`{}` since {}); that process is gone",
        info.pid, info.host, info.operation, info.created
    );
}
