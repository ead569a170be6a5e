//! Command-line definitions and dispatch.

use crate::render::Style;
use anyhow::Result;
use clap::{Args, CommandFactory, Parser, Subcommand};
use pipeline_engine::plan::PlanOptions;
use pipeline_ops::plan::PlanInputs;
use pipeline_ops::{Reported, Workspace};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// An Ansible INI inventory: sets `inventory` of every provider configuration that takes
    /// one, over the stack's `provider` blocks (relative to the current directory).
    #[arg(short = 'i', long = "inventory", value_name = "FILE")]
    inventory: Option<PathBuf>,
    /// Ask providers what exists now (default true).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    refresh: bool,
    /// Only read what exists and show what changed outside pipeline (no change of the stack);
    /// apply then records it in the state, changing nothing in the world.
    #[arg(long)]
    refresh_only: bool,
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

#[derive(Args, Clone)]
struct ApplyArgs {
    #[command(flatten)]
    args: PlanArgs,
    /// Do not ask before applying.
    #[arg(long)]
    auto_approve: bool,
    /// JSON lines of progress.
    #[arg(long)]
    json: bool,
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
    Apply(ApplyArgs),
    /// Take everything in the state away, in reverse dependency order.
    Destroy(ApplyArgs),
    /// Rewrite stack files in the canonical layout (like `terraform fmt`). Exit 3 with -check
    /// when a file would change, 1 when one does not parse.
    Fmt(cmd::fmt::FmtFlags),
    /// Check a stack without looking at state or providers.
    Validate { stack: Option<PathBuf> },
    /// Print the resource instance graph as DOT.
    Graph {
        stack: Option<PathBuf>,
        #[command(flatten)]
        vars: VarArgs,
    },
    /// Show a saved plan as `plan` showed it (PLANFILE), or the recorded state in human form
    /// (no argument); secrets masked.
    Show {
        /// A plan saved by `pipeline plan -out FILE`.
        planfile: Option<PathBuf>,
        /// The plan as `plan -json` prints it; the state as one JSON object.
        #[arg(long)]
        json: bool,
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
    /// Deploy a module (`deploy NAME -i inventory.ini`), or another revision of a service
    /// (`deploy SERVICE --version REF`).
    ///
    /// Without --version, NAME is a module: the directory modules/NAME/ (its .hcl files are an
    /// ordinary stack), looked for in ./modules first, then among the modules that come with
    /// pipeline (PREFIX/share/pipeline/modules beside an installed PREFIX/bin/pipeline, or the
    /// source tree's modules/ for a binary built there); a NAME with a `/` is the module's
    /// directory itself. The plan is shown, approval asked (or -auto-approve), the module
    /// applied, and its outputs printed (an output `url`: where the app answers). Its state
    /// lives in ./.pipeline/modules/NAME/ (or exactly the --state-dir / $PIPELINE_DIR given),
    /// so deploying it again changes and restarts nothing when nothing changed; look at it
    /// with `pipeline --state-dir .pipeline/modules/NAME status|output|destroy`.
    ///
    /// With --version, NAME is a service of the stack (the one given, else the one this
    /// directory used last): REF goes out through the service's update strategy (rolling,
    /// blue-green or canary). A NAME that is both a module and a service here is refused
    /// without --version: add --version REF for the service, or give the module as a path
    /// (`pipeline deploy ./modules/NAME`).
    Deploy {
        /// The module (a name under modules/, or a directory path), or with --version the
        /// service (`service.NAME` or `NAME`).
        #[arg(value_name = "NAME")]
        name: String,
        /// Deploy this git revision (branch, tag or commit) of the service NAME from its
        /// source repository (NAME is then a service, not a module).
        #[arg(long, value_name = "REF")]
        version: Option<String>,
        #[command(flatten)]
        apply: ApplyArgs,
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
    Flags(cmd::flags::FlagsCmd),
    /// Write an Ansible inventory of the recorded hosts, grouped by role (each host block, and
    /// each block of what runs on them), for your own playbooks.
    Inventory {
        /// Write it to this file (default: standard output).
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
    },
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
    /// Deploy on git push: `hook install --repo PATH --branch production [--stack FILE]`.
    #[command(subcommand)]
    Hook(cmd::hook::HookCmd),
    /// What the installed git hook runs (one pushed ref).
    #[command(name = "__hook", hide = true)]
    HookRun(cmd::hook::RunFlags),
    /// Shell completions for bash, zsh or fish: `source <(pipeline completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The man page (roff): `pipeline man | man -l -`; with --dir, one page per command there.
    Man {
        /// Write pipeline.1 and pipeline-COMMAND.1 for every command into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
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
    // fmt touches no state and needs no runtime.
    if let Cmd::Fmt(f) = cli.cmd {
        return cmd::fmt::fmt(f);
    }
    // Generated from the definition alone: no workspace, no runtime.
    let docs = match &cli.cmd {
        Cmd::Completions { shell } => Some(cmd::docs::completions(Cli::command(), *shell)),
        Cmd::Man { dir } => Some(cmd::docs::man(Cli::command(), dir.as_deref())),
        _ => None,
    };
    if let Some(r) = docs {
        return r.unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        });
    }
    // Before any thread starts: what git sets for a hook must not reach the stack's own git.
    if let Cmd::HookRun(_) = &cli.cmd {
        pipeline_ops::hook::clear_git_env();
    }
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
    if a.refresh_only && destroy {
        anyhow::bail!("-refresh-only cannot be combined with a destroy\n  = help: `pipeline plan -refresh-only` or `pipeline apply -refresh-only`");
    }
    Ok(PlanInputs {
        stack,
        preview: false,
        refresh_only: a.refresh_only,
        opts: PlanOptions {
            refresh: a.refresh,
            destroy,
            targets: a.targets.clone(),
            replace: a.replace.clone(),
            variables: pipeline_ops::variables(&a.vars.vars, &a.vars.var_files)?,
            parallelism: a.parallelism,
            overrides: vec![],
        },
    })
}

/// The inventory a command was given with `-i`, if any.
fn inventory_flag(cmd: &Cmd) -> Option<&PathBuf> {
    match cmd {
        Cmd::Plan { args, .. } => args.inventory.as_ref(),
        Cmd::Apply(a) | Cmd::Destroy(a) | Cmd::Deploy { apply: a, .. } => a.args.inventory.as_ref(),
        _ => None,
    }
}

/// Give `ws` the inventory of `-i FILE`: relative to where pipeline runs (a block's
/// `inventory` is relative to the stack).
fn set_inventory(ws: &mut Workspace, i: &std::path::Path) -> Result<()> {
    let path = std::env::current_dir()?.join(i);
    ws.override_setting(
        "inventory",
        pipeline_engine::value::Value::str(path.display().to_string()),
    );
    Ok(())
}

async fn dispatch(cli: Cli, style: Style) -> Result<ExitCode> {
    let mut ws = Workspace::new(cli.state_dir.clone())?;
    if let Some(i) = inventory_flag(&cli.cmd) {
        set_inventory(&mut ws, i)?;
    }
    if let Cmd::Deploy { apply, .. } = &cli.cmd {
        if apply.args.refresh_only {
            anyhow::bail!("-refresh-only cannot be combined with deploy\n  = help: `pipeline plan -refresh-only` or `pipeline apply -refresh-only`");
        }
    }
    match cli.cmd {
        Cmd::Plan {
            args,
            out,
            json,
            detailed_exitcode,
            destroy,
        } => cmd::plan::plan(&ws, style, args, out, json, detailed_exitcode, destroy).await,
        Cmd::Apply(a) => cmd::apply::apply(&ws, style, a).await,
        Cmd::Destroy(a) => cmd::apply::destroy(&ws, style, a).await,
        Cmd::Fmt(_) => unreachable!("fmt runs before the runtime starts"),
        Cmd::Validate { stack } => cmd::plan::validate(&ws, style, stack),
        Cmd::Graph { stack, vars } => cmd::plan::graph(&ws, stack, vars).await,
        Cmd::Show { planfile, json } => cmd::show::show(&ws, style, planfile, json),
        Cmd::State(sc) => cmd::state::state(&ws, sc),
        Cmd::Output { name, json } => cmd::state::output(&ws, name, json),
        Cmd::ForceUnlock { id, force } => cmd::state::force_unlock(&ws, &id, force),
        Cmd::Status { json } => cmd::status::status(&ws, json, style).await,
        Cmd::Deploy {
            name,
            version: Some(version),
            apply,
        } => cmd::deploy::service(&ws, style, &name, &version, apply).await,
        Cmd::Deploy {
            name,
            version: None,
            apply,
        } => cmd::deploy::module(&ws, cli.state_dir, style, &name, apply).await,
        Cmd::Canary(flags) => cmd::canary::run(&ws, flags).await,
        Cmd::Promote { service } => cmd::rollout::promote(&ws, &service).await,
        Cmd::Rollback { service } => cmd::rollout::rollback(&ws, &service).await,
        Cmd::Flags(fc) => cmd::flags::run(&ws, fc).await,
        Cmd::Inventory { out } => cmd::inventory::inventory(&ws, out).await,
        Cmd::Logs {
            addr,
            lines,
            follow,
        } => cmd::status::logs(&ws, &addr, lines, follow).await,
        Cmd::Hook(cmd::hook::HookCmd::Install(f)) => cmd::hook::install(cli.state_dir, f),
        Cmd::HookRun(f) => cmd::hook::run(cli.state_dir, f).await,
        Cmd::Completions { .. } | Cmd::Man { .. } => unreachable!("answered before dispatch"),
    }
}
