//! The working directory every operation acts in (`.pipeline/`: state, lock, what runs), its
//! providers, the stack it uses and the variables given to a run.

use anyhow::{anyhow, bail, Context, Result};
use indexmap::IndexMap;
use pipeline_engine::apply::ApplyReport;
use pipeline_engine::config::{self, Config};
use pipeline_engine::diag::Diagnostics;
use pipeline_engine::graph::ConfigGraph;
use pipeline_engine::plan::{Plan, PlanOptions};
use pipeline_engine::provider::{ProviderCtx, Registry};
use pipeline_engine::state::{State, StateStore};
use pipeline_engine::value::Value;
use pipeline_supervise::private;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

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
    /// Provider settings given on the command line (`-i FILE`: `inventory`), set in every
    /// configuration whose provider has that setting, over the stack's blocks.
    settings: Vec<(String, Value)>,
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
            settings: Vec::new(),
        })
    }

    /// Set provider setting `name` to `value` in every configuration of this run whose provider
    /// takes it (`config_schema`), over what the stack's blocks say: `-i FILE` is
    /// `("inventory", absolute path)`. Names no provider: any provider with the setting gets it.
    pub fn override_setting(&mut self, name: &str, value: Value) {
        self.settings.retain(|(n, _)| n != name);
        self.settings.push((name.to_string(), value));
        *self.configured.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
            "{}\0{}\0{}",
            config.hash,
            serde_json::to_string(variables).unwrap_or_default(),
            serde_json::to_string(&self.settings).unwrap_or_default()
        );
        let mut memo = self.configured.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, r)) = memo.as_ref() {
            if *k == key {
                return Ok(r.clone());
            }
        }
        let r = pipeline_engine::configure::configure_with(
            config,
            &self.registry,
            variables,
            state,
            &self.settings,
        )
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

/// The context for provider calls about what the state records (no stack loaded).
pub fn recorded_ctx(ws: &Workspace) -> Result<ProviderCtx> {
    Ok(ProviderCtx {
        work_dir: ws.dir.clone(),
        stack_dir: std::env::current_dir()?,
        exe: std::env::current_exe().context("cannot find the pipeline binary")?,
    })
}

/// The canary's stacks, planned and applied in their own working directory as `pipeline plan`
/// and `pipeline apply` do (quietly, no orphan sweep: the canary owns that directory).
pub struct LocalStacks;

#[async_trait::async_trait(?Send)]
impl crate::canary::Stacks for LocalStacks {
    async fn plan(&self, dir: &Path, stack: &Path, opts: PlanOptions) -> Result<(Plan, Config)> {
        let ws = Workspace::new(Some(dir.to_path_buf()))?;
        let inputs = crate::plan::PlanInputs {
            stack: stack.to_path_buf(),
            opts,
            preview: false,
            refresh_only: false,
        };
        crate::plan::make_plan(&ws, &inputs).await
    }

    async fn apply(&self, dir: &Path, stack: &Path, opts: PlanOptions) -> Result<ApplyReport> {
        let ws = Workspace::new(Some(dir.to_path_buf()))?;
        let parallelism = opts.parallelism;
        let inputs = crate::plan::PlanInputs {
            stack: stack.to_path_buf(),
            opts,
            preview: false,
            refresh_only: false,
        };
        let lock = crate::apply::lock(&ws, "canary", &mut |_| {})?;
        let (plan, _) = crate::plan::make_plan(&ws, &inputs).await?;
        crate::apply::apply_plan(
            &ws,
            &plan,
            &lock,
            (parallelism, crate::apply::CTRL_C_GRACE),
            Arc::new(AtomicBool::new(false)),
            &mut |_| {},
        )
        .await
    }
}

/// `state rm`: forget the instances `addrs` without touching what they describe; returns the
/// addresses removed.
pub fn forget(ws: &Workspace, addrs: &[String]) -> Result<Vec<String>> {
    if addrs.is_empty() {
        bail!("name at least one address\n  = help: `pipeline state list` shows them");
    }
    pipeline_engine::state::forget(&ws.dir, addrs).map_err(|e| match e {
        pipeline_engine::state::ForgetError::NotRecorded(_) => {
            anyhow!("{e}\n  = help: `pipeline state list` shows what is")
        }
        e => anyhow!("{e}"),
    })
}
