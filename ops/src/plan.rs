//! Plans: made from a stack under a working directory's state, saved for review, and read
//! back only when whole, unchanged and made for this state directory.

use crate::workspace::{diags, Workspace};
use anyhow::{anyhow, bail, Result};
use pipeline_engine::config::Config;
use pipeline_engine::plan::{self, Plan, PlanOptions};
use std::io::Write;
use std::path::PathBuf;

pub struct PlanInputs {
    pub stack: PathBuf,
    pub opts: PlanOptions,
    /// The plan is shown for review: ask providers for their dry run of each change
    /// (`Provider::preview`, e.g. ansible's `--check --diff` per host). Needs `refresh`.
    pub preview: bool,
    /// `-refresh-only`: read what exists and plan only the drift (see [`Plan::refresh_only`]).
    pub refresh_only: bool,
}

pub async fn make_plan(ws: &Workspace, inputs: &PlanInputs) -> Result<(Plan, Config)> {
    let (config, graph) = ws.load(&inputs.stack)?;
    // Unknown -var names are a mistake worth stopping for.
    for k in inputs.opts.variables.keys() {
        if !config.modules[0].variables.contains_key(k)
            && std::env::var(format!("PIPELINE_VAR_{k}")).is_err()
        {
            let declared: Vec<&str> = config.modules[0]
                .variables
                .keys()
                .map(String::as_str)
                .collect();
            let hint = match pipeline_engine::diag::did_you_mean(k, declared.iter().copied()) {
                Some(c) => format!(
                    "did you mean `{c}`? declared variables: {}",
                    declared.join(", ")
                ),
                None => format!("declared variables: {}", declared.join(", ")),
            };
            bail!("-var {k}: the stack declares no variable \"{k}\"\n  = help: {hint}");
        }
    }
    let ctx = ws.ctx(&config)?;
    let state = ws.state()?;
    let registry = ws.configured(&config, &inputs.opts.variables, &state)?;
    if inputs.refresh_only && (!inputs.opts.refresh || inputs.opts.destroy) {
        bail!("-refresh-only reads what exists: it cannot be combined with -refresh=false or a destroy\n  = help: drop -refresh=false (or -destroy)");
    }
    let refreshed = if inputs.opts.refresh {
        Some(
            plan::refresh(&registry, &ctx, &state, inputs.opts.parallelism.max(1))
                .await
                .map_err(diags)?,
        )
    } else {
        None
    };
    let p = plan::make_plan(
        &config,
        &graph,
        &registry,
        &ctx,
        &state,
        refreshed.as_ref(),
        &inputs.opts,
    )
    .map_err(diags)?;
    let mut p = Plan {
        workspace: ws.identity(),
        ..p
    };
    if inputs.refresh_only {
        // Only the drift: what the stack would change is not this plan's business.
        let refreshed = refreshed.unwrap_or_default();
        p.refreshed = p
            .drift
            .iter()
            .map(|d| (d.addr.clone(), refreshed.get(&d.addr).cloned().flatten()))
            .collect();
        p.changes.clear();
        p.outputs.clear();
        p.refresh_only = true;
        return Ok((p, config));
    }
    if inputs.preview && inputs.opts.refresh && !inputs.opts.destroy {
        plan::preview(&mut p, &registry, &ctx, inputs.opts.parallelism.max(1))
            .await
            .map_err(diags)?;
    }
    Ok((p, config))
}

/// `apply -refresh-only`: record what the refresh read for each drifted instance (a gone one
/// is forgotten), under the state lock, changing nothing in the world. Refused when the state
/// moved on since the plan was made. Returns (updated, forgotten).
pub fn record_refresh(
    ws: &Workspace,
    plan: &Plan,
    _lock: &pipeline_engine::state::LockGuard,
) -> Result<(usize, usize)> {
    use pipeline_engine::state::{JournalEntry, StateStore};
    check_plan_workspace(ws, plan)?;
    let mut store = StateStore::open(&ws.dir).map_err(|e| anyhow!("{e}"))?;
    let st = store.state();
    if plan.serial != st.serial || plan.lineage != st.lineage {
        bail!("the refresh-only plan is stale: the state changed since it was made (serial {} then, {} now)\n  = help: run `pipeline plan -refresh-only` again", plan.serial, st.serial);
    }
    let (mut updated, mut forgotten) = (0, 0);
    for (addr, now) in &plan.refreshed {
        let entry = match now {
            Some(rs) => {
                updated += 1;
                JournalEntry::Set {
                    addr: addr.clone(),
                    resource: rs.clone(),
                }
            }
            None => {
                forgotten += 1;
                JournalEntry::Remove { addr: addr.clone() }
            }
        };
        store.record(entry).map_err(|e| anyhow!("{e}"))?;
    }
    store.compact().map_err(|e| anyhow!("{e}"))?;
    Ok((updated, forgotten))
}

/// A plan applies only to the state directory it was made against: a plan made elsewhere
/// would act on this directory's processes and files with another directory's view of them.
pub fn check_plan_workspace(ws: &Workspace, plan: &Plan) -> Result<()> {
    let here = ws.identity();
    if plan.workspace != here {
        bail!(
            "the plan does not match the given state: it was made against the state in {}, this is {}\n  = help: make a new plan here: `pipeline plan -out FILE`, review it, then `pipeline apply FILE`",
            plan.workspace.display(),
            here.display()
        );
    }
    Ok(())
}

/// `apply PATH` reads a .hcl file as a stack: a plan saved under such a name could not be applied.
pub fn check_plan_out(path: &std::path::Path) -> Result<()> {
    if path.extension().is_some_and(|e| e == "hcl") {
        bail!(
            "cannot save the plan as {}: `pipeline apply` reads a .hcl file as a stack\n  = help: name the plan file otherwise, e.g. `-out reviewed.plan`",
            path.display()
        );
    }
    Ok(())
}

pub fn save_plan(plan: &Plan, path: &std::path::Path) -> Result<()> {
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
pub fn read_saved_plan(ws: &Workspace, path: &std::path::Path) -> Result<Option<Plan>> {
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
    check_plan_workspace(ws, &plan).map_err(|e| {
        let e = e.to_string();
        let (what, help) = e.split_once("\n  = help: ").unwrap_or((&e, ""));
        anyhow!(
            "refusing to apply {}: {what}\n  = note: nothing was applied or changed\n  = help: {help}",
            path.display()
        )
    })?;
    Ok(Some(plan))
}

/// `show FILE`: the saved plan in FILE, whole and unchanged, for reading only (it is not
/// checked against this state directory: nothing is applied from it).
pub fn read_plan_to_show(path: &std::path::Path) -> Result<Plan> {
    let bytes = std::fs::read(path).map_err(|e| {
        anyhow!(
            "cannot show {}: {e}\n  = help: give a plan saved by `pipeline plan -out FILE`, or no argument to show the recorded state",
            path.display()
        )
    })?;
    Plan::from_saved(&bytes).map_err(|e| {
        anyhow!(
            "cannot show {}: {e}\n  = help: give a plan saved by `pipeline plan -out FILE` with this pipeline, or no argument to show the recorded state",
            path.display()
        )
    })
}
