//! Engine operations the commands are thin wrappers over: load a stack, plan, apply, destroy.

use anyhow::{anyhow, bail, Context, Result};
use indexmap::IndexMap;
use pipeline_engine::apply::{ApplyOptions, ApplyReport, Event};
use pipeline_engine::config::{self, Config};
use pipeline_engine::diag::Diagnostics;
use pipeline_engine::graph::ConfigGraph;
use pipeline_engine::plan::{self, Plan, PlanOptions};
use pipeline_engine::provider::{ProviderCtx, Registry};
use pipeline_engine::state::{self, State, StateStore};
use pipeline_engine::value::Value;
use pipeline_supervise::private;
use std::path::{Path, PathBuf};

/// A user error that has already been rendered as diagnostics.
#[derive(Debug)]
pub struct Reported(pub Diagnostics);
impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl std::error::Error for Reported {}

pub fn diags(d: Diagnostics) -> anyhow::Error {
    anyhow::Error::new(Reported(d))
}

pub struct Workspace {
    /// `.pipeline/`: state, journal, lock, running replicas, builds.
    pub dir: PathBuf,
    pub registry: Registry,
    /// The providers configured for this run (once per run: a plan and the apply that follows
    /// share it), keyed by the stack's hash and a digest of the variables.
    configured: std::sync::Mutex<Option<(String, Registry)>>,
}

impl Workspace {
    pub fn new(dir: Option<PathBuf>) -> Result<Workspace> {
        let dir = match dir.or_else(|| std::env::var_os("PIPELINE_DIR").map(PathBuf::from)) {
            Some(d) => d,
            None => std::env::current_dir()?.join(".pipeline"),
        };
        let dir = if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir()?.join(dir)
        };
        Ok(Workspace {
            dir,
            registry: pipeline_providers::registry(),
            configured: Default::default(),
        })
    }

    /// The providers configured from the stack's `provider` blocks and the variables, once per
    /// run: a second call for the same stack and variables answers the same instances.
    pub fn configured(
        &self,
        config: &Config,
        variables: &IndexMap<String, Value>,
        state: &State,
    ) -> Result<Registry> {
        // In memory only (the variables may hold secrets).
        let key = format!(
            "{}\0{}",
            config.hash,
            serde_json::to_string(variables).unwrap_or_default()
        );
        let mut memo = self.configured.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, r)) = memo.as_ref() {
            if *k == key {
                return Ok(r.clone());
            }
        }
        let r = pipeline_engine::configure::configure(config, &self.registry, variables, state)
            .map_err(diags)?;
        *memo = Some((key, r.clone()));
        Ok(r)
    }

    pub fn state(&self) -> Result<State> {
        StateStore::load(&self.dir).map_err(|e| anyhow!("{e}"))
    }

    /// The stack to use: the one given, else the one this directory last planned, else stacks/local.hcl.
    pub fn stack(&self, given: Option<&Path>) -> Result<PathBuf> {
        if let Some(g) = given {
            return Ok(g.to_path_buf());
        }
        if let Ok(s) = std::fs::read_to_string(self.dir.join("stack")) {
            let p = PathBuf::from(s.trim());
            if p.exists() {
                return Ok(p);
            }
        }
        let default = PathBuf::from("stacks/local.hcl");
        if default.exists() {
            return Ok(default);
        }
        bail!("no stack given and none used here before\n  = help: name one, e.g. `pipeline plan stacks/local.hcl`")
    }

    /// Remember which stack this directory uses (workspace metadata, not state).
    pub fn remember_stack(&self, stack: &Path) {
        let abs = stack.canonicalize().unwrap_or_else(|_| stack.to_path_buf());
        // Owner-only: everything under it may hold secrets (state, rendered configs, envs).
        if private::create_dir_all(&self.dir).is_ok() {
            // Atomic: a kill mid-write must not leave an empty name behind.
            let _ = private::write_atomic(&self.dir.join("stack"), abs.display().to_string());
        }
    }

    /// The state directory as a plan records it: absolute with symlinks resolved, whether or
    /// not it exists yet.
    pub fn identity(&self) -> PathBuf {
        if let Ok(d) = self.dir.canonicalize() {
            return d;
        }
        match (self.dir.parent(), self.dir.file_name()) {
            (Some(p), Some(n)) => p.canonicalize().map_or(self.dir.clone(), |p| p.join(n)),
            _ => self.dir.clone(),
        }
    }

    pub fn ctx(&self, config: &Config) -> Result<ProviderCtx> {
        let stack_dir = config.modules[0].dir.clone();
        let stack_dir = if stack_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            stack_dir
        };
        Ok(ProviderCtx {
            work_dir: self.dir.clone(),
            stack_dir: stack_dir.canonicalize().unwrap_or(stack_dir),
            exe: std::env::current_exe().context("cannot find the pipeline binary")?,
        })
    }

    pub fn load(&self, stack: &Path) -> Result<(Config, ConfigGraph)> {
        let config = config::load(stack, &self.registry).map_err(diags)?;
        let graph = ConfigGraph::build(&config).map_err(diags)?;
        Ok((config, graph))
    }
}

/// Variables from -var-file, PIPELINE_VAR_*, and -var (later wins), typed later by their declarations.
pub fn variables(vars: &[String], var_files: &[PathBuf]) -> Result<IndexMap<String, Value>> {
    let mut out = IndexMap::new();
    for (k, v) in std::env::vars() {
        if let Some(name) = k.strip_prefix("PIPELINE_VAR_") {
            out.insert(name.to_string(), parse_var_value(&v));
        }
    }
    for f in var_files {
        let text = std::fs::read_to_string(f).with_context(|| {
            format!(
                "cannot read the var file {}\n  = help: check the path given to -var-file",
                f.display()
            )
        })?;
        let file = pipeline_engine::diag::SourceFile::new(f, text);
        let body = pipeline_engine::lang::parse(&file).map_err(|d| diags(d.into()))?;
        struct NoRefs(PathBuf);
        impl pipeline_engine::lang::Resolve for NoRefs {
            fn lookup(
                &self,
                root: &str,
                name: &str,
            ) -> Result<Value, pipeline_engine::lang::LookupError> {
                Err(pipeline_engine::lang::LookupError::new(
                    format!("{root}.{name}: a var file holds values only, no references"),
                    Some("write literal values (strings, numbers, bools, lists, objects); compute derived values in the stack's locals".into()),
                ))
            }
            fn base_dir(&self) -> &Path {
                &self.0
            }
        }
        let r = NoRefs(f.parent().unwrap_or(Path::new(".")).to_path_buf());
        for s in body.iter() {
            match s {
                hcl_edit::structure::Structure::Attribute(a) => {
                    let v = pipeline_engine::lang::Evaluator::new(&file, &r)
                        .eval(&a.value)
                        .map_err(|d| diags(d.into()))?;
                    out.insert(a.key.as_str().to_string(), v);
                }
                hcl_edit::structure::Structure::Block(b) => {
                    use hcl_edit::Span;
                    let d = pipeline_engine::diag::Diagnostic::new(format!(
                        "a var file holds `name = value` lines only, found a `{}` block",
                        b.ident.as_str()
                    ))
                    .at(b.ident.span().map(|r| file.location(r)))
                    .help("write each variable as NAME = VALUE");
                    return Err(diags(d.into()));
                }
            }
        }
    }
    for v in vars {
        let Some((k, val)) = v.split_once('=') else {
            bail!("-var {v:?}: expected NAME=VALUE\n  = help: e.g. -var replicas=5");
        };
        out.insert(k.trim().to_string(), parse_var_value(val));
    }
    Ok(out)
}

/// Command-line values are strings unless they read as HCL literals (numbers, bools, lists, objects).
fn parse_var_value(s: &str) -> Value {
    let t = s.trim();
    if t.starts_with('[')
        || t.starts_with('{')
        || t == "true"
        || t == "false"
        || t.parse::<f64>().is_ok()
    {
        if let Ok(e) = hcl_edit::parser::parse_expr(t) {
            let file = pipeline_engine::diag::SourceFile::new(Path::new("-var"), t.to_string());
            struct NoRefs;
            impl pipeline_engine::lang::Resolve for NoRefs {
                fn lookup(
                    &self,
                    _: &str,
                    _: &str,
                ) -> Result<Value, pipeline_engine::lang::LookupError> {
                    Err(pipeline_engine::lang::LookupError::new(
                        "no references in -var",
                        None,
                    ))
                }
                fn base_dir(&self) -> &Path {
                    Path::new(".")
                }
            }
            if let Ok(v) = pipeline_engine::lang::Evaluator::new(&file, &NoRefs).eval(&e) {
                return v;
            }
        }
    }
    Value::String(s.to_string())
}

pub struct PlanInputs {
    pub stack: PathBuf,
    pub opts: PlanOptions,
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
    let p = Plan {
        workspace: ws.identity(),
        ..p
    };
    Ok((p, config))
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
    let ctx = ProviderCtx {
        work_dir: ws.dir.clone(),
        stack_dir: std::env::current_dir()?,
        exe: std::env::current_exe().context("cannot find the pipeline binary")?,
    };
    let mut names: Vec<&str> = Vec::new();
    for k in ws.registry.kind_names() {
        for p in ws.registry.providers_of(k) {
            if !names.contains(&p) {
                names.push(p);
            }
        }
    }
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

/// After Ctrl-C, how long running steps may go on to finish before they are told to stop (the
/// CLI's default for `-interrupt-grace`): with the engine's half second for a provider to stop
/// on its own, apply returns within 2 s.
pub const CTRL_C_GRACE: std::time::Duration = std::time::Duration::from_millis(1200);

/// Apply a plan while holding the state lock; refuses a plan made against another state.
pub async fn apply_plan(
    ws: &Workspace,
    plan: &Plan,
    _lock: &state::LockGuard,
    (parallelism, grace): (usize, std::time::Duration),
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

/// Switch every instance of `block` to its standby generation (its provider's `rollback`
/// action) and record it. Holds no lock itself.
pub async fn rollback(ws: &Workspace, block: &str) -> Result<usize> {
    let mut store = StateStore::open(&ws.dir).map_err(|e| anyhow!("{e}"))?;
    let addrs: Vec<String> = store
        .state()
        .resources
        .keys()
        .filter(|a| pipeline_engine::plan::resource_addr(a) == block)
        .cloned()
        .collect();
    if addrs.is_empty() {
        bail!("{block} is not in the state\n  = help: `pipeline state list` shows what is");
    }
    let ctx = recorded_ctx(ws)?;
    // Every instance switches back at once: a block of five takes one switch's time, not five.
    let mut switching = tokio::task::JoinSet::new();
    for (i, a) in addrs.iter().enumerate() {
        let rs = store.state().resources[a].clone();
        let p = ws
            .registry
            .provider_of(&rs)
            .ok_or_else(|| anyhow!("{a}: no provider `{}` in this binary", rs.provider))?
            .clone();
        let (ctx, a) = (ctx.clone(), a.clone());
        switching.spawn(async move {
            let out = p
                .action(
                    &ctx,
                    &rs.kind,
                    &a,
                    &rs.attrs,
                    "rollback",
                    &Default::default(),
                )
                .await;
            (i, rs, out)
        });
    }
    let mut done: Vec<_> = switching.join_all().await;
    done.sort_by_key(|(i, _, _)| *i);
    // Record every switch that happened before reporting one that did not.
    let mut first_error = None;
    for (i, mut rs, out) in done {
        match out {
            Ok(out) => {
                let Some(record) = out.record else {
                    continue;
                };
                rs.attrs = record;
                store
                    .record(state::JournalEntry::Set {
                        addr: addrs[i].clone(),
                        resource: rs,
                    })
                    .map_err(|e| anyhow!("{e}"))?;
            }
            Err(e) => {
                first_error.get_or_insert_with(|| anyhow!("{}: {e}", addrs[i]));
            }
        }
    }
    if let Some(e) = first_error {
        store.compact().map_err(|e| anyhow!("{e}"))?;
        return Err(e);
    }
    store.compact().map_err(|e| anyhow!("{e}"))?;
    Ok(addrs.len())
}

/// Run a named action of `block`'s provider on its first recorded instance (a canary's
/// `canary`, `promote`, `abort` are about the whole block). None: the state has no instance.
async fn block_action(
    ws: &Workspace,
    block: &str,
    name: &str,
) -> Result<Option<pipeline_engine::provider::ActionOutput>> {
    let st = ws.state()?;
    let Some((addr, rs)) = st
        .resources
        .iter()
        .find(|(a, _)| pipeline_engine::plan::resource_addr(a) == block)
    else {
        return Ok(None);
    };
    let p = ws
        .registry
        .provider_of(rs)
        .ok_or_else(|| anyhow!("{addr}: no provider `{}` in this binary", rs.provider))?;
    p.action(
        &recorded_ctx(ws)?,
        &rs.kind,
        addr,
        &rs.attrs,
        name,
        &Default::default(),
    )
    .await
    .map(Some)
    .map_err(|e| anyhow!("{e}"))
}

/// Is an apply running a canary of `block` now?
pub async fn canary_running(ws: &Workspace, block: &str) -> bool {
    block_action(ws, block, "canary")
        .await
        .ok()
        .flatten()
        .is_some_and(|o| o.output.get("running") == Some(&serde_json::Value::Bool(true)))
}

/// Tell the apply running a canary of `block` to `promote` or `abort` it, and wait until it
/// has. Returns the step it was at and how the canary ended (it may have been aborted by its
/// judge in the same look).
pub async fn signal_canary(ws: &Workspace, block: &str, what: &str) -> Result<(u64, String)> {
    let out = block_action(ws, block, what).await?.ok_or_else(|| {
        anyhow!("no canary of {block} is running\n  = help: a canary runs during `pipeline apply` of a service with update = {{ strategy = \"canary\" }}")
    })?;
    Ok((
        out.output.get("step").and_then(|s| s.as_u64()).unwrap_or(0),
        out.output
            .get("ended")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string(),
    ))
}

/// The context for provider calls about what the state records (no stack loaded).
pub fn recorded_ctx(ws: &Workspace) -> Result<ProviderCtx> {
    Ok(ProviderCtx {
        work_dir: ws.dir.clone(),
        stack_dir: std::env::current_dir()?,
        exe: std::env::current_exe().context("cannot find the pipeline binary")?,
    })
}

/// Every recorded instance with what its provider says runs for it (`Provider::describe`),
/// described concurrently, in state order. An instance whose provider cannot describe it is
/// shown with health unknown and the error as the reason.
pub async fn describe_all(
    ws: &Workspace,
) -> Result<
    Vec<(
        String,
        state::ResourceState,
        pipeline_engine::provider::Description,
    )>,
> {
    use pipeline_engine::provider::{Description, Health, HealthState};
    let st = ws.state()?;
    let ctx = recorded_ctx(ws)?;
    let mut tasks = Vec::new();
    for (addr, rs) in &st.resources {
        let Some(p) = ws.registry.provider_of(rs).cloned() else {
            continue;
        };
        let (ctx, addr, rs) = (ctx.clone(), addr.clone(), rs.clone());
        tasks.push(tokio::spawn(async move {
            let d = p
                .describe(&ctx, &rs.kind, &addr, &rs.attrs)
                .await
                .unwrap_or_else(|e| Description {
                    health: Health::new(HealthState::Unknown, Some(e.message)),
                    ..Default::default()
                });
            (addr, rs, d)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await?);
    }
    Ok(out)
}

/// One recorded instance and its description; the error names what the state has.
pub async fn describe_one(
    ws: &Workspace,
    addr: &str,
) -> Result<(state::ResourceState, pipeline_engine::provider::Description)> {
    let st = ws.state()?;
    let rs = st.resources.get(addr).cloned().ok_or_else(|| {
        anyhow!("{addr} is not in the state\n  = help: `pipeline state list` shows what is")
    })?;
    let p = ws
        .registry
        .provider_of(&rs)
        .ok_or_else(|| anyhow!("{addr}: no provider `{}` in this binary", rs.provider))?;
    let d = p
        .describe(&recorded_ctx(ws)?, &rs.kind, addr, &rs.attrs)
        .await
        .map_err(|e| anyhow!("{addr}: {e}"))?;
    Ok((rs, d))
}
