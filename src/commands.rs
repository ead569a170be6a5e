//! Command-line definitions and dispatch.

use crate::ops::{self, PlanInputs, Reported, Workspace};
use crate::render::{self, Style};
use anyhow::{anyhow, bail, Result};
use clap::{Args, Parser, Subcommand};
use pipeline_engine::plan::{Plan, PlanOptions};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[path = "cmd/mod.rs"]
mod cmd;

#[derive(Parser)]
#[command(
    name = "pipeline",
    version,
    about = "Declarative deployments: HCL stacks, plan, apply, strategies and canaries"
)]
struct Cli {
    /// Working directory for state, running replicas and builds (default ./.pipeline, or $PIPELINE_DIR).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Never colour output.
    #[arg(long, global = true)]
    no_color: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone, Default)]
struct VarArgs {
    /// Set a variable: -var NAME=VALUE (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// Read variables from a file of `name = value` lines.
    #[arg(long = "var-file", value_name = "FILE")]
    var_files: Vec<PathBuf>,
}

#[derive(Args, Clone)]
struct PlanArgs {
    /// The stack file (or directory). Default: the stack this directory used last, else stacks/local.hcl.
    stack: Option<PathBuf>,
    #[command(flatten)]
    vars: VarArgs,
    /// Ask providers what exists now (default true).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    refresh: bool,
    /// Plan only these resources (and what they depend on).
    #[arg(long = "target", value_name = "ADDR")]
    targets: Vec<String>,
    /// Force replacement of this instance.
    #[arg(long = "replace", value_name = "ADDR")]
    replace: Vec<String>,
    /// Concurrent provider operations.
    #[arg(long, default_value_t = 10)]
    parallelism: usize,
    /// After Ctrl-C, how long running steps may go on to finish before they are stopped
    /// (recorded Pending; the next apply finishes or cleans up what they left).
    #[arg(long, default_value = "1.2s", value_parser = parse_grace, value_name = "DURATION")]
    interrupt_grace: std::time::Duration,
}

fn parse_grace(s: &str) -> Result<std::time::Duration, String> {
    pipeline_engine::step::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. \"1.2s\", \"500ms\", \"1m\")"))
}

#[derive(Subcommand)]
enum Cmd {
    /// Show what apply would change, as a reviewable diff.
    Plan {
        #[command(flatten)]
        args: PlanArgs,
        /// Save the plan for `pipeline apply FILE`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
        /// Exit 0 when there are no changes, 2 when there are, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Plan the destruction of everything in the state.
        #[arg(long)]
        destroy: bool,
    },
    /// Make it so: apply a stack (after showing its plan) or a saved plan file.
    Apply {
        #[command(flatten)]
        args: PlanArgs,
        /// Do not ask before applying.
        #[arg(long)]
        auto_approve: bool,
        /// JSON lines of progress.
        #[arg(long)]
        json: bool,
    },
    /// Take everything in the state away, in reverse dependency order.
    Destroy {
        #[command(flatten)]
        args: PlanArgs,
        #[arg(long)]
        auto_approve: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check a stack without looking at state or providers.
    Validate { stack: Option<PathBuf> },
    /// Print the resource instance graph as DOT.
    Graph {
        stack: Option<PathBuf>,
        #[command(flatten)]
        vars: VarArgs,
    },
    /// Read or edit the recorded state.
    #[command(subcommand)]
    State(StateCmd),
    /// Show outputs of the last apply.
    Output {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove a lock whose owner is gone (refused while it runs on this host, unless -force).
    ForceUnlock {
        id: String,
        /// Remove it even though its owner still runs here: a second run may then change the
        /// state alongside it.
        #[arg(long)]
        force: bool,
    },
    /// Every running replica with pid, port, health and uptime.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Deploy another revision of a service through its update strategy (rolling or blue-green).
    Deploy {
        /// The service: `service.NAME` or `NAME`.
        service: String,
        /// The git revision to deploy (branch, tag or commit) from the service's source repository.
        #[arg(long)]
        version: String,
        #[command(flatten)]
        args: PlanArgs,
        #[arg(long)]
        auto_approve: bool,
        #[arg(long)]
        json: bool,
    },
    /// Compare two revisions of a service side by side under load and judge the candidate.
    /// Exit 0 pass, 1 fail, 3 marginal or not enough evidence.
    Canary(cmd::canary::CanaryFlags),
    /// Switch a service back to the generation it ran before its last blue-green deployment,
    /// or stop the canary of it that an apply is running (the candidate gets no traffic).
    Rollback {
        /// The service: `service.NAME` or `NAME`.
        service: String,
    },
    /// Promote the canary of a service that an apply is running now: skip the remaining steps.
    Promote {
        /// The service: `service.NAME` or `NAME`.
        service: String,
    },
    /// Feature flags in a `flags` store: list, get NAME, set NAME on|off [--percent N].
    #[command(subcommand)]
    Flags(crate::flags_cmd::FlagsCmd),
    /// Show a replica's log.
    Logs {
        addr: String,
        /// Lines from the end.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        /// Keep printing as the log grows.
        #[arg(short = 'f', long)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum StateCmd {
    /// Every recorded instance address.
    List,
    /// One instance's recorded attributes (sensitive ones masked).
    Show { addr: String },
    /// Forget instances without touching what they are.
    Rm { addrs: Vec<String> },
}

/// Accept Terraform-style single-dash long flags (`-var`, `-auto-approve`, `-refresh=false`).
pub fn normalize_flags(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut after_dashdash = false;
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || after_dashdash {
            out.push(a);
            continue;
        }
        if a == "--" {
            after_dashdash = true;
        }
        let b = a.as_bytes();
        if b.len() > 2
            && b[0] == b'-'
            && b[1] != b'-'
            && b[1].is_ascii_alphabetic()
            && b[2].is_ascii_alphabetic()
        {
            out.push(format!("-{a}"));
        } else {
            out.push(a);
        }
    }
    out
}

pub fn run(args: Vec<String>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let style = Style {
        color: !cli.no_color
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(dispatch(cli, style));
    // A provider call the engine stopped waiting for (Ctrl-C, a deadline) may still run on a
    // blocking thread: it does not hold the exit up for long; its record says Pending.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(r) = e.downcast_ref::<Reported>() {
                eprint!("{}", r.0);
            } else {
                // Messages carry user values (paths, -var names): escaped like diagnostics.
                let msg = pipeline_engine::diag::escape_control(&format!("{e:#}"));
                if msg.starts_with("error") {
                    eprintln!("{msg}");
                } else {
                    eprintln!("error: {msg}");
                }
            }
            ExitCode::from(1)
        }
    }
}

fn plan_inputs(ws: &Workspace, a: &PlanArgs, destroy: bool) -> Result<PlanInputs> {
    let stack = ws.stack(a.stack.as_deref())?;
    Ok(PlanInputs {
        stack,
        opts: PlanOptions {
            refresh: a.refresh,
            destroy,
            targets: a.targets.clone(),
            replace: a.replace.clone(),
            variables: ops::variables(&a.vars.vars, &a.vars.var_files)?,
            parallelism: a.parallelism,
            overrides: vec![],
        },
    })
}

async fn dispatch(cli: Cli, style: Style) -> Result<ExitCode> {
    let ws = Workspace::new(cli.state_dir.clone())?;
    match cli.cmd {
        Cmd::Plan {
            args,
            out,
            json,
            detailed_exitcode,
            destroy,
        } => cmd::plan::plan(&ws, style, args, out, json, detailed_exitcode, destroy).await,
        Cmd::Apply {
            args,
            auto_approve,
            json,
        } => cmd::apply::apply(&ws, style, args, auto_approve, json).await,
        Cmd::Destroy {
            args,
            auto_approve,
            json,
        } => cmd::apply::destroy(&ws, style, args, auto_approve, json).await,
        Cmd::Validate { stack } => cmd::plan::validate(&ws, style, stack),
        Cmd::Graph { stack, vars } => cmd::plan::graph(&ws, stack, vars).await,
        Cmd::State(sc) => state_cmd(&ws, sc),
        Cmd::Output { name, json } => cmd::state::output(&ws, name, json),
        Cmd::ForceUnlock { id, force } => cmd::state::force_unlock(&ws, &id, force),
        Cmd::Status { json } => status_cmd(&ws, json, style).await,
        Cmd::Deploy {
            service,
            version,
            args,
            auto_approve,
            json,
        } => {
            let f = cmd::apply::DeployFlags {
                service,
                version,
                auto_approve,
                json,
            };
            cmd::apply::deploy(&ws, style, args, f).await
        }
        Cmd::Canary(flags) => cmd::canary::run(&ws, style, flags).await,
        Cmd::Promote { service } => cmd::rollout::promote(&ws, &service).await,
        Cmd::Rollback { service } => cmd::rollout::rollback(&ws, &service).await,
        Cmd::Flags(fc) => crate::flags_cmd::run(&ws, fc, style).await,
        Cmd::Logs {
            addr,
            lines,
            follow,
        } => logs_cmd(&ws, &addr, lines, follow).await,
    }
}

/// `apply PATH` reads a .hcl file as a stack: a plan saved under such a name could not be applied.
fn check_plan_out(path: &std::path::Path) -> Result<()> {
    if path.extension().is_some_and(|e| e == "hcl") {
        bail!(
            "cannot save the plan as {}: `pipeline apply` reads a .hcl file as a stack\n  = help: name the plan file otherwise, e.g. `-out reviewed.plan`",
            path.display()
        );
    }
    Ok(())
}

fn save_plan(plan: &Plan, path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    check_plan_out(path)?;
    let data = plan.to_saved()?;
    // Written beside the target and renamed over it: a crash never leaves half a plan under its name.
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("cannot write the plan to {}: {e}", path.display())
    })
}

/// `apply PATH`: the saved plan in PATH, None when PATH is a stack (a directory or a .hcl file).
/// Any other file must be a whole, unchanged plan saved by this version for this state
/// directory: otherwise it is refused before anything is locked, read or changed.
fn read_saved_plan(ws: &Workspace, path: &std::path::Path) -> Result<Option<Plan>> {
    if path.is_dir() || path.extension().is_some_and(|e| e == "hcl") {
        return Ok(None);
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        // Not there: the stack loader names the missing path.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("cannot read the saved plan {}: {e}", path.display()),
    };
    let plan = Plan::from_saved(&bytes).map_err(|e| {
        let help = match e {
            pipeline_engine::plan::SavedPlanError::OtherFormat { .. } => {
                "make the plan again with this pipeline: `pipeline plan -out FILE`, review it, then `pipeline apply FILE`"
            }
            pipeline_engine::plan::SavedPlanError::NotAPlan
            | pipeline_engine::plan::SavedPlanError::Empty => {
                "give a plan saved by `pipeline plan -out FILE`, or a stack (a .hcl file or a directory of them)"
            }
            _ => "do not apply it; make and review a new plan: `pipeline plan -out FILE`, then `pipeline apply FILE`",
        };
        anyhow!(
            "refusing to apply {}: {e}\n  = note: nothing was applied or changed\n  = help: {help}",
            path.display()
        )
    })?;
    ops::check_plan_workspace(ws, &plan).map_err(|e| {
        let e = e.to_string();
        let (what, help) = e.split_once("\n  = help: ").unwrap_or((&e, ""));
        anyhow!(
            "refusing to apply {}: {what}\n  = note: nothing was applied or changed\n  = help: {help}",
            path.display()
        )
    })?;
    Ok(Some(plan))
}

/// What the sweep stopped (left by a crashed or concurrent run), before the plan.
fn report_orphans(lines: &[String], json: bool) {
    if json {
        for l in lines {
            println!(
                "{}",
                serde_json::json!({"type": "orphan_stopped", "message": l})
            );
        }
    } else if !lines.is_empty() {
        println!("Stopped what no state record names (left by a crashed or concurrent run):");
        for l in lines {
            println!("  - {l}");
        }
        println!();
    }
}

fn stale_note(info: &pipeline_engine::state::LockInfo) {
    eprintln!(
        "note: broke a stale lock held by pid {} on {} (`{}` since {}); that process is gone",
        info.pid, info.host, info.operation, info.created
    );
}

#[allow(clippy::too_many_arguments)]
async fn run_apply(
    ws: &Workspace,
    plan: Plan,
    lock: &pipeline_engine::state::LockGuard,
    auto_approve: bool,
    json: bool,
    (parallelism, grace): (usize, std::time::Duration),
    style: Style,
    show: bool,
) -> Result<ExitCode> {
    if show && !json {
        print!("{}", render::plan_text(&plan, style));
    }
    if !plan.has_changes() {
        return Ok(ExitCode::SUCCESS);
    }
    if !auto_approve
        && plan
            .changes
            .iter()
            .any(|c| c.action != pipeline_engine::plan::Action::NoOp)
    {
        if !std::io::stdin().is_terminal() {
            bail!("cannot ask for approval: standard input is not a terminal\n  = help: review the plan, then run again with -auto-approve");
        }
        print!("\nDo you want to perform these actions? Only 'yes' will be accepted: ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            println!("Cancelled; nothing was changed.");
            return Ok(ExitCode::from(1));
        }
    }
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.store(true, Ordering::SeqCst);
                eprintln!(
                    "\nInterrupt received: nothing new starts; running steps have {} to finish, then stop and are recorded (the next apply finishes or cleans up what they left).",
                    pipeline_engine::step::format_duration(grace)
                );
            }
        });
    }
    let total = plan
        .changes
        .iter()
        .filter(|c| c.action != pipeline_engine::plan::Action::NoOp)
        .count();
    let tty = std::io::stderr().is_terminal() && !json;
    let multi = indicatif::MultiProgress::new();
    let overall = if tty {
        let pb = multi.add(indicatif::ProgressBar::new(total as u64));
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "[{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb.enable_steady_tick(std::time::Duration::from_millis(200));
        Some(pb)
    } else {
        None
    };
    let mut lines: std::collections::HashMap<String, indicatif::ProgressBar> =
        std::collections::HashMap::new();
    // Records of progressive canaries, rendered as HTML reports once the apply is over.
    let mut canary_records: Vec<std::path::PathBuf> = Vec::new();
    let mut on_event = |e: &pipeline_engine::apply::Event| {
        use pipeline_engine::apply::Event;
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
        match (&overall, e) {
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
                let pb = multi.insert_before(o, indicatif::ProgressBar::new_spinner());
                pb.set_style(
                    indicatif::ProgressStyle::with_template("  {spinner} {msg} ({elapsed})")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                pb.set_message(render::event_line(e));
                pb.enable_steady_tick(std::time::Duration::from_millis(120));
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
    };
    let report =
        ops::apply_plan(ws, &plan, lock, (parallelism, grace), cancel, &mut on_event).await?;
    if let Some(o) = overall {
        o.finish_and_clear();
    }
    let mut canary_reports = Vec::new();
    for rec in &canary_records {
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
        if report.ok() && !plan.destroy {
            let state = ws.state()?;
            if !state.outputs.is_empty() {
                println!("\nOutputs:\n");
                for (k, o) in &state.outputs {
                    let v = if o.sensitive {
                        "(sensitive value)".to_string()
                    } else {
                        pipeline_engine::value::Value::from_json(&o.value).render()
                    };
                    println!("{k} = {v}");
                }
            }
        }
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn state_cmd(ws: &Workspace, sc: StateCmd) -> Result<ExitCode> {
    match sc {
        StateCmd::List => {
            for (addr, rs) in &ws.state()?.resources {
                match rs.status {
                    pipeline_engine::state::Status::Ready => println!("{addr}"),
                    s => println!("{addr} ({s:?})"),
                }
            }
        }
        StateCmd::Show { addr } => {
            let st = ws.state()?;
            let rs = st.resources.get(&addr).ok_or_else(|| {
                anyhow!("{addr} is not in the state\n  = help: `pipeline state list` shows what is")
            })?;
            println!("# {addr} ({} by {}, {:?})", rs.kind, rs.provider, rs.status);
            let w = rs.attrs.keys().map(String::len).max().unwrap_or(0);
            for (k, v) in &rs.attrs {
                let shown = if rs.sensitive.contains(k) {
                    "(sensitive value)".into()
                } else {
                    pipeline_engine::value::Value::from_json(v).render()
                };
                println!("  {k:w$} = {}", shown.replace('\n', "\n  "));
            }
            if !rs.deps.is_empty() {
                println!("  # depends on: {}", rs.deps.join(", "));
            }
        }
        StateCmd::Rm { addrs } => {
            if addrs.is_empty() {
                bail!("name at least one address\n  = help: `pipeline state list` shows them");
            }
            let removed = pipeline_engine::state::forget(&ws.dir, &addrs).map_err(|e| match e {
                pipeline_engine::state::ForgetError::NotRecorded(_) => {
                    anyhow!("{e}\n  = help: `pipeline state list` shows what is")
                }
                e => anyhow!("{e}"),
            })?;
            for a in removed {
                println!("Removed {a} from the state; what it described was left as it is.");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn status_cmd(ws: &Workspace, json: bool, style: Style) -> Result<ExitCode> {
    use pipeline_engine::provider::HealthState;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    // What each instance's provider says runs for it; instances that run nothing (a file, a
    // host) have no row.
    for (addr, rs, d) in ops::describe_all(ws).await? {
        let Some(main) = d.main() else {
            continue;
        };
        if main.log_dropped_bytes > 0 {
            notes.push(format!(
                "{addr}: {} bytes of output dropped (its log could not be written{})",
                main.log_dropped_bytes,
                main.log_error
                    .as_deref()
                    .map(|e| format!("; now: {e}"))
                    .unwrap_or_else(|| ", see `pipeline logs`".into())
            ));
        }
        // A recorded attribute as status may show it: secrets (a URL with a password) masked.
        let attr = |k: &str| match rs.attrs.get(k) {
            Some(_) if rs.sensitive.iter().any(|s| s == k) => {
                Some(serde_json::Value::from("(sensitive value)"))
            }
            v => v.cloned(),
        };
        let healthy = match d.health.state {
            HealthState::Healthy => Some(true),
            HealthState::Unhealthy => Some(false),
            _ => main.healthy,
        };
        let port = main
            .port
            .map(serde_json::Value::from)
            .or_else(|| attr("port"));
        let generation = main
            .generation
            .or_else(|| rs.attrs.get("generation").and_then(|g| g.as_u64()));
        rows.push(serde_json::json!({"address": addr, "kind": rs.kind, "pid": main.pid, "port": port, "url": attr("url"),
            "generation": generation, "standby_generation": attr("standby_generation"), "build_id": attr("build_id"),
            "running": main.running, "healthy": healthy, "health": d.health.state.name(), "health_reason": d.health.reason,
            "uptime_s": main.started_at.map_or(0, |t| now.saturating_sub(t)), "restarts": main.restarts,
            "log_dropped_bytes": main.log_dropped_bytes}));
        // A running canary's candidates: one row per candidate generation.
        for c in d.processes.iter().filter(|p| p.role == "candidate") {
            rows.push(serde_json::json!({"address": addr, "kind": rs.kind, "canary": true, "generation": c.generation,
                "pid": c.pid, "port": c.port, "running": c.running, "healthy": c.healthy,
                "health": if !c.running { "down" } else { match c.healthy { Some(true) => "healthy", Some(false) => "unhealthy", None => "starting" } },
                "uptime_s": c.started_at.map_or(0, |t| now.saturating_sub(t)), "restarts": c.restarts}));
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("No processes are recorded here.");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:>8} {:>6} {:<10} {:>9} {:>8}",
        "INSTANCE", "PID", "PORT", "HEALTH", "UPTIME", "RESTARTS"
    );
    for mut r in rows {
        if r["canary"] == true {
            r["address"] = format!(
                "{} canary g{}",
                r["address"].as_str().unwrap_or(""),
                r["generation"]
            )
            .into();
        }
        let health = match r["health"].as_str().unwrap_or("unknown") {
            "healthy" => style.green("healthy"),
            h @ ("starting" | "unknown") => h.to_string(),
            h => style.red(h),
        };
        // Pad before colouring so escape codes do not skew the columns.
        let pad = 10usize.saturating_sub(strip_len(&health));
        println!(
            "{:<32} {:>8} {:>6} {}{} {:>8} {:>8}",
            r["address"].as_str().unwrap_or(""),
            r["pid"].as_u64().map_or("-".into(), |p| p.to_string()),
            r["port"].as_u64().map_or("-".into(), |p| p.to_string()),
            health,
            " ".repeat(pad),
            format!("{}s", r["uptime_s"].as_u64().unwrap_or(0)),
            r["restarts"].as_u64().unwrap_or(0)
        );
    }
    for n in notes {
        println!("{n}");
    }
    Ok(ExitCode::SUCCESS)
}

fn strip_len(s: &str) -> usize {
    let mut n = 0;
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (false, _) => n += 1,
            _ => {}
        }
    }
    n
}

async fn logs_cmd(ws: &Workspace, addr: &str, lines: usize, follow: bool) -> Result<ExitCode> {
    use pipeline_engine::provider::LogSource;
    let with_logs = || async {
        let all = ops::describe_all(ws).await.unwrap_or_default();
        let names: Vec<String> = all
            .into_iter()
            .filter(|(_, _, d)| !d.logs.is_empty())
            .map(|(a, _, _)| a)
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let described = match ops::describe_one(ws, addr).await {
        Ok((_, d)) => d,
        Err(e) => bail!(
            "{e:#}\n  = help: instances with logs here: {}",
            with_logs().await
        ),
    };
    // The main process's log comes first.
    let Some(source) = described.logs.first() else {
        bail!(
            "{addr} runs no process whose log could be shown\n  = help: instances with logs here: {}",
            with_logs().await
        );
    };
    let path = match source {
        LogSource::File { path, .. } => path.clone(),
        LogSource::Command { argv, .. } => {
            let (prog, args) = argv
                .split_first()
                .ok_or_else(|| anyhow!("{addr}: its provider names an empty log command"))?;
            let status = std::process::Command::new(prog).args(args).status()?;
            return Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        LogSource::Remote { what, .. } => {
            bail!("{addr}: its log is {what}, which this command cannot read from here")
        }
    };
    if !path.exists() {
        bail!(
            "no log for {addr} at {}\n  = help: instances with logs here: {}",
            path.display(),
            with_logs().await
        );
    }
    let text = std::fs::read_to_string(&path)?;
    let all: Vec<&str> = text.lines().collect();
    for l in &all[all.len().saturating_sub(lines)..] {
        println!("{l}");
    }
    if follow {
        let mut tail = pipeline_host::tail::Tail::at_end(&path);
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            if !path.exists() {
                break;
            }
            for l in tail.read_lines() {
                println!("{l}");
            }
            std::io::stdout().flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn service_block(service: &str) -> String {
    if service.starts_with("service.") {
        service.to_string()
    } else {
        format!("service.{service}")
    }
}
