//! `deploy`: a module (`deploy NAME -i inventory.ini`) or another revision of a service
//! (`deploy SERVICE --version REF`). Which one is decided here, before anything is locked or
//! written: `--version` given → a service; else a module; a name that is both a module and a
//! service of this directory's stack is refused without `--version`, saying how to pick.

use crate::commands::ApplyArgs;
use crate::render::Style;
use anyhow::{bail, Result};
use pipeline_ops::apply::Source;
use pipeline_ops::module::{self, Module};
use pipeline_ops::Workspace;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::apply::{run_ended, Ended};

fn search_path() -> Result<(PathBuf, Vec<PathBuf>)> {
    let cwd = std::env::current_dir()?;
    let exe = std::env::current_exe().ok();
    let path = module::search_path(&cwd, exe.as_deref());
    Ok((cwd, path))
}

/// `deploy SERVICE --version REF`: as before; a module of that name (and no such service)
/// gets an error that says a module deploys without --version.
pub async fn service(
    ws: &Workspace,
    style: Style,
    name: &str,
    version: &str,
    a: ApplyArgs,
) -> Result<ExitCode> {
    let stack = ws.stack(a.args.stack.as_deref()).ok();
    if module::service_named(ws, name, stack.as_deref()).is_none() {
        let (_, path) = search_path()?;
        if let Ok(Some(m)) = module::find(name, &path) {
            let of = stack
                .as_ref()
                .map(|s| format!(" of {}", s.display()))
                .unwrap_or_default();
            bail!(
                "{name} is a module ({}), not a service{of}: a module deploys without --version\n  = help: `pipeline deploy {name} -i inventory.ini` (its variables with -var NAME=VALUE)",
                m.dir.display()
            );
        }
    }
    super::apply::deploy(ws, style, name, version, a).await
}

/// `deploy NAME [-i FILE] [-var ...]`: the module NAME planned, reviewed and applied in its
/// own working directory; its outputs (where it answers) printed, also when nothing changed.
/// `here`: the workspace of the current directory (for telling a module from a service).
pub async fn module(
    here: &Workspace,
    state_dir: Option<PathBuf>,
    style: Style,
    name: &str,
    mut a: ApplyArgs,
) -> Result<ExitCode> {
    if let Some(f) = &a.args.stack {
        bail!(
            "deploy {name} takes no stack file ({}): a module's directory is its stack\n  = help: `pipeline deploy SERVICE --version REF {}` deploys a revision of a service of that stack; `pipeline apply {}` applies it",
            f.display(),
            f.display(),
            f.display()
        );
    }
    if let Some(i) = &a.args.inventory {
        check_inventory(i)?;
    }
    let (cwd, path) = search_path()?;
    let here_stack = here.stack(None).ok();
    let Some(m) = module::find(name, &path)? else {
        if let Some(block) = module::service_named(here, name, here_stack.as_deref()) {
            bail!(
                "{name} is no module, but {block} is a service here: deploying a revision of it needs --version\n  = help: `pipeline deploy {name} --version REF` (a branch, tag or commit)"
            );
        }
        return Err(module::unknown(name, &path, &cwd));
    };
    // The stack this directory uses, unless it is the module itself (its own state dir).
    let other_stack = here_stack.filter(|s| !same_dir(s, &m.dir));
    if !module::is_path(name) {
        if let Some(block) = other_stack
            .as_deref()
            .and_then(|s| module::service_named(here, name, Some(s)))
        {
            bail!(
                "{name} is both a module ({}) and {block} of {}\n  = help: `pipeline deploy {name} --version REF` deploys a revision of the service; `pipeline deploy {} -i inventory.ini` (the module's directory) deploys the module",
                m.dir.display(),
                other_stack.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
                shown(&m.dir, &cwd, true)
            );
        }
    }
    // A module that does not load is an error before its state directory exists.
    here.load(&m.dir)?;
    let mut ws = Workspace::new(Some(module::workspace_dir(state_dir, &m, &cwd)))?;
    if let Some(i) = &a.args.inventory {
        crate::commands::set_inventory(&mut ws, i)?;
    }
    module::check_workspace(&ws, &m)?;
    a.args.stack = Some(m.dir.clone());
    let mut inputs = crate::commands::plan_inputs(&ws, &a.args, false)?;
    // As `apply`: a plan someone will approve shows each host's dry run.
    inputs.preview = !a.auto_approve && !a.json;
    let state = shown(&ws.dir, &cwd, false);
    if !a.json {
        println!(
            "Module {}: {}\nState: {state}\n",
            m.name,
            shown(&m.dir, &cwd, true)
        );
    }
    let source = Source::Stack {
        inputs,
        remember: true,
    };
    let ended = run_ended(&ws, style, &a, source, false).await?;
    let ok = match ended {
        Ended::Cancelled => return Ok(ExitCode::from(1)),
        Ended::NoChanges => true,
        Ended::Applied { ok } => ok,
    };
    if ok {
        answers(&ws, &m, a.json)?;
    }
    if !a.json {
        let st = if state.contains(char::is_whitespace) {
            format!("'{state}'")
        } else {
            state
        };
        eprintln!(
            "note: the module's state is in {st}: `pipeline --state-dir {st} status` (also output, plan, destroy; give -i again where the module reads an inventory)"
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The module's outputs, and where it answers (an output `url`: one address, or a list of
/// them when it answers on several hosts).
fn answers(ws: &Workspace, m: &Module, json: bool) -> Result<()> {
    let outputs = ws.state()?.outputs;
    let url = outputs
        .get("url")
        .filter(|o| !o.sensitive)
        .and_then(|o| match &o.value {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(l) if !l.is_empty() => l
                .iter()
                .map(|u| u.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(|l| l.join(", ")),
            _ => None,
        });
    if json {
        let shown: serde_json::Map<String, serde_json::Value> = outputs
            .iter()
            .map(|(k, o)| {
                let v = if o.sensitive {
                    serde_json::Value::String("(sensitive value)".into())
                } else {
                    o.value.clone()
                };
                (k.clone(), v)
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"type": "module_outputs", "module": m.name, "outputs": shown, "url": url})
        );
        return Ok(());
    }
    if !outputs.is_empty() {
        println!("\nOutputs:\n");
        super::state::print_outputs(&outputs);
    }
    if let Some(url) = url {
        println!("\n{} answers at {url}", m.name);
    }
    Ok(())
}

/// `-i FILE` must be a file pipeline can read: said before anything is locked or written, also
/// when no provider of the module takes an inventory.
fn check_inventory(i: &Path) -> Result<()> {
    let help = "give the path of an Ansible INI inventory file, relative to the current directory";
    let meta = std::fs::metadata(i).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the inventory {} (given with -i): {e}\n  = help: {help}",
            i.display()
        )
    })?;
    if !meta.is_file() {
        bail!(
            "the inventory {} (given with -i) is not a file\n  = help: {help}",
            i.display()
        );
    }
    if let Err(e) = std::fs::File::open(i) {
        bail!(
            "cannot read the inventory {} (given with -i): {e}\n  = help: {help}",
            i.display()
        );
    }
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// `p` relative to the current directory when under it (`./x` for a path to type as a module),
/// else as it is.
fn shown(p: &Path, cwd: &Path, dot: bool) -> String {
    let canon = |d: &Path| d.canonicalize().unwrap_or_else(|_| d.to_path_buf());
    let rel = p.strip_prefix(cwd).ok().map(Path::to_path_buf).or_else(|| {
        canon(p)
            .strip_prefix(canon(cwd))
            .ok()
            .map(Path::to_path_buf)
    });
    match rel {
        Some(r) if dot => format!("./{}", r.display()),
        Some(r) => r.display().to_string(),
        None => p.display().to_string(),
    }
}
