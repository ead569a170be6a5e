//! `apply`, `destroy` and `deploy` as one operation: take the state lock, stop the orphans,
//! plan (or take a saved plan), let the caller review it, apply it with progress through the
//! caller's [`ApplyView`], and return what was done. Rendering and the exit code are the
//! caller's.

use crate::plan::{check_plan_workspace, make_plan, PlanInputs};
use crate::workspace::{diags, recorded_ctx, Workspace};
use anyhow::{anyhow, bail, Result};
use pipeline_engine::apply::{ApplyOptions, ApplyReport, Event};
use pipeline_engine::plan::{Action, Plan};
use pipeline_engine::state::{self, OutputState, StateStore};
use pipeline_engine::value::Value;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// What to apply.
pub enum Source {
    /// A saved plan (`apply FILE`), read and checked by [`crate::plan::read_saved_plan`]
    /// before the lock is taken; applied exactly, or refused if the state moved on.
    Saved(Plan),
    /// Plan the stack under the lock (`apply`, `destroy` with `opts.destroy`); `remember`:
    /// the stack becomes this directory's default for the next command.
    Stack { inputs: PlanInputs, remember: bool },
    /// `deploy`: the service block at `revision` (see [`deploy_inputs`]).
    Deploy { inputs: PlanInputs, block: String },
}

/// One apply, destroy or deploy.
pub struct ApplyRequest {
    pub source: Source,
    /// Concurrent provider operations.
    pub parallelism: usize,
    /// After `cancel` is set, how long running steps may go on before they are stopped.
    pub grace: Duration,
    /// Set it (Ctrl-C) to start nothing new; see `grace`.
    pub cancel: Arc<AtomicBool>,
}

/// What an apply tells its caller as it goes, in this order: `stale_lock` (maybe), `orphans`,
/// `review`, then (when approved and the plan changes something) `applying` and the engine's
/// events.
pub trait ApplyView {
    /// A lock left by a process that is gone was broken.
    fn stale_lock(&mut self, info: &state::LockInfo);
    /// What the orphan sweep stopped (maybe nothing).
    fn orphans(&mut self, stopped: &[String]);
    /// The plan about to be applied: `Ok(false)` cancels, with nothing changed.
    fn review(&mut self, plan: &Plan) -> Result<bool>;
    /// Approved: the apply starts now (arm Ctrl-C on the request's `cancel` here).
    fn applying(&mut self, plan: &Plan);
    /// One of the engine's events (a step started, finished, failed, retried; progress).
    fn event(&mut self, event: &Event);
}

/// How an apply ended (failures inside it are in the report; errors before it are `Err`).
pub enum ApplyOutcome {
    /// The plan changes nothing: nothing was applied.
    NoChanges(Plan),
    /// The caller's review said no: nothing was applied.
    Cancelled(Plan),
    /// `-refresh-only`, approved: the drift recorded in the state (`updated` instances
    /// re-recorded as read, `forgotten` ones gone), nothing changed in the world.
    Refreshed {
        plan: Plan,
        updated: usize,
        forgotten: usize,
    },
    /// Applied: the engine's report and the recorded outputs afterwards.
    Applied {
        plan: Plan,
        report: ApplyReport,
        outputs: std::collections::BTreeMap<String, OutputState>,
    },
}

/// `deploy SERVICE --version V`: `inputs` targeted at the service's block, its `revision`
/// overridden. Returns the block (`service.NAME`).
pub fn deploy_inputs(
    ws: &Workspace,
    inputs: &mut PlanInputs,
    service: &str,
    version: &str,
) -> Result<String> {
    let block = crate::rollout::replica_block(ws, service, Some(&inputs.stack))?;
    inputs.opts.targets.push(block.clone());
    inputs.opts.overrides.push((
        block.clone(),
        "revision".into(),
        Value::String(version.to_string()),
    ));
    Ok(block)
}

/// Lock, sweep, plan, review, apply, record: see [`ApplyView`] for what the caller sees.
pub async fn run(
    ws: &Workspace,
    req: ApplyRequest,
    view: &mut dyn ApplyView,
) -> Result<ApplyOutcome> {
    let operation = match &req.source {
        Source::Saved(_) => "apply",
        Source::Stack { inputs, .. } if inputs.opts.destroy => "destroy",
        Source::Stack { .. } => "apply",
        Source::Deploy { .. } => "deploy",
    };
    // Held from planning to the last step: nobody changes the state in between.
    let lock = lock(ws, operation, &mut |i| view.stale_lock(i))?;
    // -refresh-only changes nothing in the world: not even orphans are stopped.
    let refresh_only = match &req.source {
        Source::Saved(p) => p.refresh_only,
        Source::Stack { inputs, .. } | Source::Deploy { inputs, .. } => inputs.refresh_only,
    };
    if !refresh_only {
        view.orphans(&sweep_orphans(ws, &lock).await?);
    }
    let plan = match req.source {
        Source::Saved(plan) => plan,
        Source::Stack { inputs, remember } => {
            let (plan, _) = make_plan(ws, &inputs).await?;
            if remember {
                ws.remember_stack(&inputs.stack);
            }
            plan
        }
        Source::Deploy { inputs, block } => {
            let (plan, config) = make_plan(ws, &inputs).await?;
            let resources = &config.modules[0].resources;
            if !resources.contains_key(&block) {
                let services: Vec<&str> = resources
                    .iter()
                    .filter(|(_, r)| {
                        ws.registry
                            .schema(&r.kind, Some(&r.provider))
                            .is_some_and(|(_, k)| k.instances_attr.is_some())
                    })
                    .map(|(k, _)| k.as_str())
                    .collect();
                bail!(
                    "the stack has no {block}\n  = help: services here: {}",
                    services.join(", ")
                );
            }
            plan
        }
    };
    if !view.review(&plan)? {
        return Ok(ApplyOutcome::Cancelled(plan));
    }
    if !plan.has_changes() {
        return Ok(ApplyOutcome::NoChanges(plan));
    }
    if plan.refresh_only {
        let (updated, forgotten) = crate::plan::record_refresh(ws, &plan, &lock)?;
        return Ok(ApplyOutcome::Refreshed {
            plan,
            updated,
            forgotten,
        });
    }
    view.applying(&plan);
    let report = apply_plan(
        ws,
        &plan,
        &lock,
        (req.parallelism, req.grace),
        req.cancel,
        &mut |e| view.event(e),
    )
    .await?;
    let outputs = ws.state()?.outputs;
    Ok(ApplyOutcome::Applied {
        plan,
        report,
        outputs,
    })
}

/// The steps a plan will run (its changes that are not no-ops).
pub fn steps(plan: &Plan) -> usize {
    plan.changes
        .iter()
        .filter(|c| c.action != Action::NoOp)
        .count()
}

/// Take the state lock for `operation`, reporting a broken stale lock through `on_stale`.
pub fn lock(
    ws: &Workspace,
    operation: &str,
    on_stale: &mut dyn FnMut(&state::LockInfo),
) -> Result<state::LockGuard> {
    let (guard, stale) = state::acquire_lock(&ws.dir, operation).map_err(|e| anyhow!("{e}"))?;
    if let Some(s) = stale {
        on_stale(&s);
    }
    Ok(guard)
}

/// Every provider stops what it started under this working directory that the state no longer
/// names (orphans of a crashed or concurrent run). Call with the state lock held, before the
/// plan is made. Returns one line per thing stopped.
pub async fn sweep_orphans(ws: &Workspace, _lock: &state::LockGuard) -> Result<Vec<String>> {
    let st = ws.state()?;
    let ctx = recorded_ctx(ws)?;
    let mut names: Vec<&str> = Vec::new();
    for k in ws.registry.kind_names() {
        for p in ws.registry.providers_of(k) {
            if !names.contains(&p) {
                names.push(p);
            }
        }
    }
    let names = dependents_first(&st, names);
    let mut out = Vec::new();
    for name in names {
        let Some(p) = ws.registry.provider(name) else {
            continue;
        };
        // Records of every configuration of the provider (`local`, `local.west`) are its own.
        let owned: Vec<(&str, &state::ResourceState)> = st
            .resources
            .iter()
            .filter(|(_, r)| pipeline_engine::provider::provider_name(&r.provider) == name)
            .map(|(a, r)| (a.as_str(), r))
            .collect();
        let lines = p.sweep(&ctx, &owned).await.map_err(|e| {
            anyhow!("stopping what the state no longer names ({name} provider): {e}")
        })?;
        out.extend(lines);
    }
    // Nothing recorded and nothing left: the working directories go too (only if empty).
    if st.resources.is_empty() {
        for d in ["run", "builds"] {
            let _ = std::fs::remove_dir(ws.dir.join(d));
        }
    }
    Ok(out)
}

/// Providers in the order their sweeps run: one whose records depend on another's records
/// first (as delete goes), so a balancer put back by its own sweep stops sending traffic before
/// the replicas it pointed at stop. Otherwise, and within a cycle, as given.
fn dependents_first<'a>(st: &state::State, names: Vec<&'a str>) -> Vec<&'a str> {
    use pipeline_engine::provider::provider_name;
    // A dependency is recorded as an instance or a block address: both map to the provider.
    let mut provider_of = std::collections::HashMap::new();
    for (a, r) in &st.resources {
        let p = provider_name(&r.provider);
        provider_of.insert(a.as_str(), p);
        provider_of.insert(a.split('[').next().unwrap_or(a), p);
    }
    // (dependent, dependency) between providers.
    let mut edges = std::collections::BTreeSet::new();
    for r in st.resources.values() {
        let p = provider_name(&r.provider);
        for d in &r.deps {
            if let Some(&q) = provider_of.get(d.as_str()) {
                if p != q {
                    edges.insert((p.to_string(), q.to_string()));
                }
            }
        }
    }
    let mut left = names;
    let mut out = Vec::new();
    while !left.is_empty() {
        // The first provider no remaining one depends on; in a cycle, the first.
        let i = left
            .iter()
            .position(|n| {
                !left
                    .iter()
                    .any(|m| m != n && edges.contains(&(m.to_string(), n.to_string())))
            })
            .unwrap_or(0);
        out.push(left.remove(i));
    }
    out
}

/// After Ctrl-C, how long running steps may go on to finish before they are told to stop (the
/// CLI's default for `-interrupt-grace`): with the engine's half second for a provider to stop
/// on its own, apply returns within 2 s.
pub const CTRL_C_GRACE: Duration = Duration::from_millis(1200);

/// Apply a plan while holding the state lock; refuses a plan made against another state.
pub async fn apply_plan(
    ws: &Workspace,
    plan: &Plan,
    _lock: &state::LockGuard,
    (parallelism, grace): (usize, Duration),
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<ApplyReport> {
    check_plan_workspace(ws, plan)?;
    let mut store = StateStore::open(&ws.dir).map_err(|e| anyhow!("{e}"))?;
    let st = store.state();
    if plan.lineage.is_empty() && st.serial != 0 {
        bail!("saved plan is stale: it was made before this state existed (serial {} now)\n  = help: run `pipeline plan` again and apply the new plan", st.serial);
    }
    if !plan.lineage.is_empty() && plan.lineage != st.lineage {
        bail!("the plan does not match the given state: it was made for state lineage {:?}, this is {:?}\n  = help: make a new plan against this state", plan.lineage, st.lineage);
    }
    if plan.serial != st.serial {
        bail!("saved plan is stale: the state changed since it was made (serial {} then, {} now)\n  = help: run `pipeline plan` again and apply the new plan", plan.serial, st.serial);
    }
    let (config, _graph) = ws.load(&plan.stack)?;
    if config.hash != plan.config_hash {
        bail!(
            "the stack files changed since this plan was made\n  = help: run `pipeline plan` again"
        );
    }
    let ctx = ws.ctx(&config)?;
    // A saved plan holds nothing of the provider blocks: they are evaluated again from the same
    // stack (hash checked above) and the plan's variables, and credentials read again.
    let registry = ws.configured(&config, &plan.variables, st)?;
    let report = pipeline_engine::apply::apply(
        &config,
        &registry,
        &ctx,
        &mut store,
        plan,
        &ApplyOptions {
            parallelism,
            cancel,
            grace,
            retry: Default::default(),
        },
        on_event,
    )
    .await
    .map_err(diags)?;
    // Nothing left to run: the working directories go too (only if empty).
    if store.state().resources.is_empty() {
        for d in ["run", "builds"] {
            let _ = std::fs::remove_dir(ws.dir.join(d));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::dependents_first;

    #[test]
    fn a_provider_whose_records_depend_on_another_s_sweeps_first() {
        let st: pipeline_engine::state::State = serde_json::from_value(serde_json::json!({
            "version": 1, "serial": 3, "lineage": "x", "outputs": {},
            "resources": {
                "service.web[0]": {"kind": "service", "provider": "local", "status": "ready", "attrs": {}, "deps": []},
                "balancer.front": {"kind": "balancer", "provider": "nginx.west", "status": "ready", "attrs": {}, "deps": ["service.web"]},
                "flags.ui": {"kind": "flags", "provider": "redis", "status": "ready", "attrs": {}, "deps": []}
            }
        }))
        .unwrap();
        assert_eq!(
            dependents_first(&st, vec!["local", "monitor", "nginx", "redis"]),
            ["monitor", "nginx", "local", "redis"]
        );
    }
}
