//! Plans: desired config + recorded state (+ what providers observe now) → actions with reasons.
//! A plan is pure data; computing one never changes anything outside the process.

use crate::config::Config;
use crate::diag::{Diagnostic, Diagnostics};
use crate::graph::{ConfigGraph, Node};
use crate::provider::{KindSchema, PlanRequest, ProviderCtx, Registry};
use crate::value::{Value, ValueMap};
use crate::world::{instance_addr, Expansion, InstanceKey, Scope, World};
use indexmap::IndexMap;
use pipeline_state::{ResourceState, State, Status};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

/// Version of the saved plan file; a file of another version is refused, never guessed at.
/// 2: a header line with the format, length and sha256 of the body; the plan records its workspace.
pub const PLAN_FORMAT: u32 = 2;

/// First word of a saved plan file.
const SAVED_PLAN_MAGIC: &str = "pipeline-plan";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    NoOp,
    Create,
    Update,
    Replace,
    Delete,
}

impl Action {
    pub fn symbol(self) -> &'static str {
        match self {
            Action::NoOp => " ",
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
        }
    }
    pub fn verb(self) -> &'static str {
        match self {
            Action::NoOp => "unchanged",
            Action::Create => "created",
            Action::Update => "updated in place",
            Action::Replace => "replaced",
            Action::Delete => "destroyed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttrChange {
    pub name: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub forces_replacement: bool,
    pub sensitive: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResourceChange {
    pub addr: String,
    pub kind: String,
    pub provider: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the block lives: module index and "kind.name" (None for deletes of removed blocks).
    pub module: Option<usize>,
    pub resource: String,
    pub key: Option<InstanceKey>,
    pub before: Option<ValueMap>,
    pub after: Option<ValueMap>,
    pub changes: Vec<AttrChange>,
    pub deps: Vec<String>,
    pub sensitive: Vec<String>,
    /// The provider's dry run of this change per machine ([`preview`]); empty when not asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preview: Vec<crate::provider::TargetPreview>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Drift {
    pub addr: String,
    /// Gone entirely (deleted outside pipeline).
    pub gone: bool,
    pub changes: Vec<AttrChange>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutputPlan {
    pub name: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub sensitive: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub format: u32,
    pub lineage: String,
    pub serial: u64,
    pub config_hash: String,
    pub stack: PathBuf,
    pub destroy: bool,
    pub variables: IndexMap<String, Value>,
    pub changes: Vec<ResourceChange>,
    pub drift: Vec<Drift>,
    pub outputs: Vec<OutputPlan>,
    /// Instance expansion of every resource block, for re-evaluation during apply.
    pub expansions: Vec<(usize, String, Expansion)>,
    /// Attribute values set over the stack (`deploy --version`), applied again at apply time.
    #[serde(default)]
    pub overrides: Vec<(String, String, Value)>,
    /// The state directory the plan was made against (absolute, symlinks resolved): a saved plan
    /// applies only there, even where no state exists yet (no lineage to compare).
    #[serde(default)]
    pub workspace: PathBuf,
    /// `-refresh-only`: the plan holds only the drift (no changes, no outputs); applying it
    /// records `refreshed` in the state and changes nothing in the world.
    #[serde(default)]
    pub refresh_only: bool,
    /// `-refresh-only`: what each drifted instance's provider read (None: gone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refreshed: Vec<(String, Option<ResourceState>)>,
}

/// Why bytes are not a saved plan this binary applies. Nothing is ever applied from such a file.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SavedPlanError {
    #[error("it is empty (0 bytes)")]
    Empty,
    #[error("it is not a saved plan (it does not start with `{SAVED_PLAN_MAGIC}`)")]
    NotAPlan,
    #[error(
        "it is a saved plan of format {found}; this pipeline applies format {PLAN_FORMAT} only"
    )]
    OtherFormat { found: String },
    #[error("its header is damaged: {0}")]
    BadHeader(String),
    #[error("it is truncated: {found} of {expected} bytes of the plan are there")]
    Truncated { expected: usize, found: usize },
    #[error("it was changed after it was saved: {0}")]
    Changed(String),
    #[error("its contents cannot be read as a plan: {0}")]
    Unreadable(String),
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    crate::lang::funcs::hex(&sha2::Sha256::digest(bytes))
}

impl Plan {
    /// A saved plan file: `pipeline-plan format=2 bytes=N sha256=HEX` on the first line, then the
    /// plan as JSON (N bytes, whose sha256 is HEX). Loading checks all of it before parsing.
    pub fn to_saved(&self) -> Result<Vec<u8>, serde_json::Error> {
        let body = serde_json::to_vec(self)?;
        let mut out = format!(
            "{SAVED_PLAN_MAGIC} format={PLAN_FORMAT} bytes={} sha256={}\n",
            body.len(),
            sha256_hex(&body)
        )
        .into_bytes();
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The plan in a saved plan file, or why the file is not one that may be applied: empty,
    /// foreign bytes, another format, truncated, changed (checksum), or unparseable.
    pub fn from_saved(bytes: &[u8]) -> Result<Plan, SavedPlanError> {
        if bytes.is_empty() {
            return Err(SavedPlanError::Empty);
        }
        // Format 1 was one JSON object with the plan under `pipeline_plan`.
        if bytes.starts_with(b"{\"pipeline_plan\"") {
            return Err(SavedPlanError::OtherFormat { found: "1".into() });
        }
        let magic = format!("{SAVED_PLAN_MAGIC} ");
        if !bytes.starts_with(magic.as_bytes()) {
            return Err(SavedPlanError::NotAPlan);
        }
        let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
            return Err(SavedPlanError::BadHeader(
                "the file ends inside its first line (truncated?)".into(),
            ));
        };
        let header = std::str::from_utf8(&bytes[magic.len()..nl])
            .map_err(|_| SavedPlanError::BadHeader("the first line is not text".into()))?;
        let body = &bytes[nl + 1..];
        let mut fields = HashMap::new();
        for part in header.split(' ') {
            let Some((k, v)) = part.split_once('=') else {
                return Err(SavedPlanError::BadHeader(format!("unexpected {part:?}")));
            };
            fields.insert(k, v);
        }
        let format = fields
            .get("format")
            .ok_or_else(|| SavedPlanError::BadHeader("no format".into()))?;
        if *format != PLAN_FORMAT.to_string() {
            return Err(SavedPlanError::OtherFormat {
                found: format.to_string(),
            });
        }
        let expected: usize = fields
            .get("bytes")
            .and_then(|b| b.parse().ok())
            .ok_or_else(|| SavedPlanError::BadHeader("no length (bytes=N)".into()))?;
        let sum = fields
            .get("sha256")
            .filter(|s| s.len() == 64)
            .ok_or_else(|| SavedPlanError::BadHeader("no checksum (sha256=HEX)".into()))?;
        if body.len() < expected {
            return Err(SavedPlanError::Truncated {
                expected,
                found: body.len(),
            });
        }
        if body.len() > expected {
            return Err(SavedPlanError::Changed(format!(
                "{} bytes were added after the plan",
                body.len() - expected
            )));
        }
        if sha256_hex(body) != *sum {
            return Err(SavedPlanError::Changed(
                "its sha256 checksum does not match its contents".into(),
            ));
        }
        let plan: Plan =
            serde_json::from_slice(body).map_err(|e| SavedPlanError::Unreadable(e.to_string()))?;
        if plan.format != PLAN_FORMAT {
            return Err(SavedPlanError::OtherFormat {
                found: plan.format.to_string(),
            });
        }
        Ok(plan)
    }
}

impl Plan {
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for ch in &self.changes {
            match ch.action {
                Action::Create => c.0 += 1,
                Action::Update => c.1 += 1,
                Action::Replace => {
                    c.0 += 1;
                    c.2 += 1
                }
                Action::Delete => c.2 += 1,
                Action::NoOp => {}
            }
        }
        c
    }
    pub fn has_changes(&self) -> bool {
        if self.refresh_only {
            return !self.drift.is_empty();
        }
        self.changes.iter().any(|c| c.action != Action::NoOp)
            || self.outputs.iter().any(|o| o.before != o.after)
    }
}

#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    pub refresh: bool,
    pub destroy: bool,
    pub targets: Vec<String>,
    pub replace: Vec<String>,
    pub variables: IndexMap<String, Value>,
    pub parallelism: usize,
    /// (block address, attribute, value) set over what the stack says: `deploy --version`.
    pub overrides: Vec<(String, String, Value)>,
}

/// Read every recorded instance from its provider. Returns the refreshed attributes per address
/// (None = gone). Pure with respect to the world: providers only look.
pub async fn refresh(
    registry: &Registry,
    ctx: &ProviderCtx,
    state: &State,
    parallelism: usize,
) -> Result<HashMap<String, Option<pipeline_state::ResourceState>>, Diagnostics> {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallelism.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (addr, rs) in &state.resources {
        let Some(p) = registry.provider(&rs.provider).cloned() else {
            return Err(Diagnostic::new(format!("{addr}: the state names provider \"{}\", which this binary does not have", rs.provider))
                .help("use the pipeline version that created this state, or `pipeline state rm` the instance")
                .into());
        };
        let (ctx, addr, rs, sem) = (ctx.clone(), addr.clone(), rs.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire().await;
            let r = p.read(&ctx, &rs.kind, &addr, &rs.attrs).await;
            (addr, rs, r)
        });
    }
    let mut out = HashMap::new();
    let mut diags = Diagnostics::default();
    while let Some(j) = set.join_next().await {
        let (addr, mut rs, r) =
            j.map_err(|e| Diagnostics::from(Diagnostic::new(format!("refresh task failed: {e}"))))?;
        match r {
            Ok(Some(attrs)) => {
                rs.attrs = attrs;
                out.insert(addr, Some(rs));
            }
            Ok(None) => {
                out.insert(addr, None);
            }
            Err(e) => diags.push(
                Diagnostic::new(format!(
                    "{addr}: cannot read its current state: {}",
                    e.message
                ))
                .help(e.help.unwrap_or_else(|| {
                    "run with -refresh=false to plan from the recorded state alone".into()
                })),
            ),
        }
    }
    diags.into_result()?;
    Ok(out)
}

/// Asks each planned create, update and replace's provider for its dry run
/// ([`Provider::preview`](crate::provider::Provider::preview)) and keeps it on the change, at
/// most `parallelism` at once. A dry run that fails (a host unreachable) fails the plan, naming
/// the instance: applying would fail there too.
pub async fn preview(
    plan: &mut Plan,
    registry: &Registry,
    ctx: &ProviderCtx,
    parallelism: usize,
) -> Result<(), Diagnostics> {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallelism.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, ch) in plan.changes.iter().enumerate() {
        if !matches!(ch.action, Action::Create | Action::Update | Action::Replace) {
            continue;
        }
        let (Some(after), Some(p)) = (ch.after.clone(), registry.provider(&ch.provider).cloned())
        else {
            continue;
        };
        let prior: Option<crate::provider::JsonMap> = ch.before.as_ref().map(|b| {
            b.iter()
                .map(|(k, v)| (k.clone(), v.unmarked().0.to_json()))
                .collect()
        });
        let (ctx, kind, addr, sem) = (ctx.clone(), ch.kind.clone(), ch.addr.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire().await;
            let req = PlanRequest {
                kind: &kind,
                addr: &addr,
                config: &after,
                prior: prior.as_ref(),
            };
            (i, addr.clone(), p.preview(&ctx, &req).await)
        });
    }
    let mut diags = Diagnostics::default();
    while let Some(j) = set.join_next().await {
        let (i, addr, r) =
            j.map_err(|e| Diagnostics::from(Diagnostic::new(format!("preview task failed: {e}"))))?;
        match r {
            Ok(p) => plan.changes[i].preview = p,
            Err(e) => diags.push(
                Diagnostic::new(format!("{addr}: the dry run failed: {}", e.message)).help(
                    e.help
                        .unwrap_or_else(|| "fix what it names, then plan again".into()),
                ),
            ),
        }
    }
    diags.into_result()
}

pub fn make_plan(
    config: &Config,
    graph: &ConfigGraph,
    registry: &Registry,
    ctx: &ProviderCtx,
    state: &State,
    refreshed: Option<&HashMap<String, Option<ResourceState>>>,
    opts: &PlanOptions,
) -> Result<Plan, Diagnostics> {
    let world = World::new(config, opts.variables.clone());
    let mut diags = Diagnostics::default();
    let mut changes: Vec<ResourceChange> = Vec::new();
    let mut expansions = Vec::new();
    let mut drift = Vec::new();
    // Current view of each recorded instance: refreshed when asked, else as recorded.
    // A record that is not Ready (interrupted or failed) is kept even when nothing answers for
    // it, so the plan replaces it and the provider cleans up whatever half exists.
    let current = |addr: &str| -> Option<&ResourceState> {
        let recorded = state.resources.get(addr);
        match (refreshed, recorded) {
            (_, Some(rec)) if rec.status != Status::Ready => Some(rec),
            (Some(r), _) => r.get(addr).and_then(Option::as_ref),
            (None, rec) => rec,
        }
    };
    if let Some(r) = refreshed {
        for (addr, rec) in &state.resources {
            match r.get(addr) {
                Some(None) if rec.status == Status::Ready => drift.push(Drift {
                    addr: addr.clone(),
                    gone: true,
                    changes: vec![],
                }),
                Some(Some(now)) if now.attrs != rec.attrs && rec.status == Status::Ready => {
                    let sens: HashSet<&String> = rec.sensitive.iter().collect();
                    let mut ch = Vec::new();
                    let keys: Vec<&String> = rec
                        .attrs
                        .keys()
                        .chain(now.attrs.keys().filter(|k| !rec.attrs.contains_key(*k)))
                        .collect();
                    for k in keys {
                        let (b, a) = (rec.attrs.get(k), now.attrs.get(k));
                        if b != a {
                            ch.push(AttrChange {
                                name: k.clone(),
                                before: b.map(Value::from_json),
                                after: a.map(Value::from_json),
                                forces_replacement: false,
                                sensitive: sens.contains(k),
                            });
                        }
                    }
                    drift.push(Drift {
                        addr: addr.clone(),
                        gone: false,
                        changes: ch,
                    });
                }
                _ => {}
            }
        }
    }
    let mut desired: HashSet<String> = HashSet::new();
    for &ix in &graph.order {
        let node = &graph.graph[ix];
        let Node::Resource(m, key) = node else {
            world.node_value(node);
            continue;
        };
        let module = &config.modules[*m];
        let decl = &module.resources[key];
        let (_, schema) = registry
            .schema(&decl.kind, Some(&decl.provider))
            .expect("schema checked at load");
        // The configured instance (`configure::configure`), or the registered one when the
        // registry was not configured (no aliases then).
        let Some(provider) = registry.provider(&decl.provider) else {
            diags.push(
                Diagnostic::new(format!(
                    "{}{key}: {} is not configured for this run",
                    module.prefix,
                    crate::config::describe_provider(&decl.provider)
                ))
                .at(Some(decl.loc.clone())),
            );
            continue;
        };
        let scope = world.scope(*m);
        let expansion = match expand(&world, &scope, decl, provider.as_ref()) {
            Ok(e) => e,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        expansions.push((*m, key.clone(), expansion.clone()));
        world.set_expansion(*m, key, &expansion);
        // Dependencies are recorded per block (`file.a`), as Terraform does: per instance they
        // would grow with the product of the counts.
        let deps: Vec<String> = graph
            .resource_deps(ix)
            .iter()
            .map(|d| crate::graph::node_name(config, &graph.graph[*d]))
            .collect();
        for inst in expansion.keys() {
            let addr = instance_addr(&module.prefix, key, &inst);
            desired.insert(addr.clone());
            if opts.destroy {
                // Destroying needs no desired values: references just see unknowns.
                world.set_instance(*m, key, &expansion, inst.clone(), Value::Unknown);
                continue;
            }
            let iscope = instance_scope(&world, *m, &expansion, &inst);
            let cfg = match eval_attrs(&world, &iscope, decl, schema) {
                Ok(mut c) => {
                    let block = format!("{}{key}", module.prefix);
                    for (b, attr, v) in &opts.overrides {
                        if *b == block {
                            // From the command line (deploy --version): checked like the stack's.
                            let rules = schema.attr(attr).map_or(&[][..], |a| &a.formats[..]);
                            for bad in crate::format::check_rules(rules, v) {
                                diags.push(
                                    Diagnostic::new(format!(
                                        "{addr}: the {} given on the command line is not {}: {} ({})",
                                        bad.describe(attr),
                                        bad.format.noun(),
                                        bad.shown,
                                        bad.reason
                                    ))
                                    .help(bad.format.help()),
                                );
                            }
                            c.insert(attr.clone(), v.clone());
                        }
                    }
                    c
                }
                Err(mut d) => {
                    diags.0.append(&mut d.0);
                    world.set_instance(*m, key, &expansion, inst.clone(), Value::Unknown);
                    continue;
                }
            };
            for inv in provider.validate(&decl.kind, &cfg) {
                let at = inv
                    .attr
                    .as_ref()
                    .and_then(|a| decl.attrs.get(a))
                    .and_then(|e| e.location())
                    .or(Some(decl.loc.clone()));
                diags.push(
                    Diagnostic::new(format!("{addr}: {}", inv.message))
                        .at(at)
                        .help(inv.help),
                );
            }
            let prior = current(&addr);
            let planned = match provider.plan(
                ctx,
                &PlanRequest {
                    kind: &decl.kind,
                    addr: &addr,
                    config: &cfg,
                    prior: prior.as_ref().map(|p| &p.attrs),
                },
            ) {
                Ok(p) => p,
                Err(e) => {
                    let at = e
                        .attr
                        .as_ref()
                        .and_then(|a| decl.attrs.get(a))
                        .and_then(|x| x.location())
                        .unwrap_or_else(|| decl.loc.clone());
                    let mut d = Diagnostic::new(format!("{addr}: {}", e.message)).at(Some(at));
                    d.help = e.help;
                    diags.push(d);
                    continue;
                }
            };
            let mut planned = planned;
            let sensitive = mark_sensitive(schema, &cfg, &mut planned.object);
            let mut ch = ResourceChange {
                addr: addr.clone(),
                kind: decl.kind.clone(),
                provider: decl.provider.clone(),
                action: Action::NoOp,
                reason: None,
                module: Some(*m),
                resource: key.clone(),
                key: inst.clone(),
                before: prior.as_ref().map(|p| {
                    p.attrs
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::from_json(v)))
                        .collect()
                }),
                after: Some(planned.object.clone()),
                changes: vec![],
                deps: deps.clone(),
                sensitive: sensitive.clone(),
                preview: vec![],
            };
            match &prior {
                None => {
                    ch.action = Action::Create;
                    ch.changes = schema
                        .attrs
                        .iter()
                        .filter_map(|a| {
                            let v = planned.object.get(a.name)?;
                            (!matches!(v, Value::Null)).then(|| AttrChange {
                                name: a.name.into(),
                                before: None,
                                after: Some(v.clone()),
                                forces_replacement: false,
                                sensitive: sensitive.iter().any(|s| s == a.name),
                            })
                        })
                        .collect();
                }
                Some(p) => {
                    for a in &schema.attrs {
                        let after = planned.object.get(a.name).cloned().unwrap_or(Value::Null);
                        let before = p
                            .attrs
                            .get(a.name)
                            .map(Value::from_json)
                            .unwrap_or(Value::Null);
                        if after.unmarked().0 != before {
                            let forces =
                                a.force_new || planned.requires_replace.iter().any(|r| r == a.name);
                            ch.changes.push(AttrChange {
                                name: a.name.into(),
                                before: Some(before),
                                after: Some(after),
                                forces_replacement: forces,
                                sensitive: sensitive.iter().any(|s| s == a.name),
                            });
                        }
                    }
                    if p.status != Status::Ready {
                        ch.action = Action::Replace;
                        ch.reason = Some(if p.status == Status::Pending {
                            "a previous apply was interrupted while changing it; it is cleaned up and made again".into()
                        } else {
                            "tainted: its last change failed".into()
                        });
                    } else if opts.replace.iter().any(|r| r == &addr) {
                        ch.action = Action::Replace;
                        ch.reason = Some("replacement requested with -replace".into());
                    } else if let Some(f) = ch.changes.iter().find(|c| c.forces_replacement) {
                        ch.action = Action::Replace;
                        ch.reason = Some(format!("`{}` forces replacement", f.name));
                    } else if !ch.changes.is_empty() {
                        ch.action = Action::Update;
                        // How it will roll out, when that is worth reviewing (a canary's steps).
                        ch.reason = provider
                            .rollout(&decl.kind, &planned.object)
                            .and_then(|r| r.describe);
                        // A progressive rollout of this very change was stopped: say so, and why.
                        let fp = config_fingerprint(&cfg);
                        if let Some(a) = p.attrs.get("canary_aborted").filter(|a| {
                            a.get("target").and_then(|t| t.as_str()) == Some(fp.as_str())
                        }) {
                            ch.reason = Some(format!(
                                "{}the last canary of this change was aborted{}: {}",
                                ch.reason
                                    .as_ref()
                                    .map_or(String::new(), |r| format!("{r}; ")),
                                a.get("step")
                                    .and_then(|s| s.as_u64())
                                    .map_or(String::new(), |s| format!(" at {s}% of the traffic")),
                                a.get("reason").and_then(|r| r.as_str()).unwrap_or("")
                            ));
                        }
                    }
                }
            }
            world.set_instance(
                *m,
                key,
                &expansion,
                inst.clone(),
                Value::Map(planned.object),
            );
            changes.push(ch);
        }
    }
    if !diags.is_empty() || !world.diags.borrow().is_empty() {
        let mut all = world.diags.borrow().clone();
        all.extend(diags.0);
        dedup(&mut all);
        return Err(Diagnostics(all));
    }
    if opts.destroy {
        changes.clear();
        desired.clear();
    }
    // Recorded instances that the stack no longer declares.
    for (addr, rs) in &state.resources {
        if desired.contains(addr) {
            continue;
        }
        let cur = current(addr);
        changes.push(ResourceChange {
            addr: addr.clone(),
            kind: rs.kind.clone(),
            provider: rs.provider.clone(),
            action: Action::Delete,
            reason: Some(if opts.destroy {
                "destroy".into()
            } else {
                "no longer in the stack".into()
            }),
            module: None,
            resource: String::new(),
            key: None,
            before: Some(
                cur.unwrap_or(rs)
                    .attrs
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
            after: None,
            changes: vec![],
            deps: rs.deps.clone(),
            sensitive: rs.sensitive.clone(),
            preview: vec![],
        });
    }
    if !opts.targets.is_empty() {
        apply_targets(&mut changes, &opts.targets)?;
    }
    for r in &opts.replace {
        if !changes.iter().any(|c| &c.addr == r) {
            return Err(Diagnostic::new(format!(
                "-replace {r}: no such resource instance in the stack"
            ))
            .help("use an instance address as `pipeline state list` shows it, e.g. service.web[0]")
            .into());
        }
    }
    let mut outputs = Vec::new();
    let mut out_names: Vec<&String> = config.modules[0].outputs.keys().collect();
    out_names.extend(
        state
            .outputs
            .keys()
            .filter(|k| !config.modules[0].outputs.contains_key(*k)),
    );
    for name in out_names {
        let decl = config.modules[0].outputs.get(name);
        let after = if opts.destroy {
            None
        } else {
            decl.and_then(|_| world.node_value(&Node::Output(0, name.clone())))
        };
        let before = state.outputs.get(name).map(|o| {
            let v = Value::from_json(&o.value);
            v.mark(o.sensitive)
        });
        let sensitive = decl.is_some_and(|d| d.sensitive)
            || after.as_ref().is_some_and(Value::is_sensitive)
            || state.outputs.get(name).is_some_and(|o| o.sensitive);
        outputs.push(OutputPlan {
            name: name.clone(),
            before,
            after,
            sensitive,
        });
    }
    if !world.diags.borrow().is_empty() {
        return Err(Diagnostics(world.diags.borrow().clone()));
    }
    Ok(Plan {
        format: PLAN_FORMAT,
        lineage: state.lineage.clone(),
        serial: state.serial,
        config_hash: config.hash.clone(),
        stack: config.root_path.clone(),
        destroy: opts.destroy,
        variables: opts.variables.clone(),
        changes,
        drift,
        outputs,
        expansions,
        overrides: opts.overrides.clone(),
        workspace: PathBuf::new(),
        refresh_only: false,
        refreshed: vec![],
    })
}

/// The block an instance address belongs to: `file.a[3]` → `file.a`.
pub fn resource_addr(addr: &str) -> &str {
    addr.find('[').map_or(addr, |i| &addr[..i])
}

fn dedup(d: &mut Vec<Diagnostic>) {
    let mut seen = Vec::new();
    d.retain(|x| {
        let key = (x.summary.clone(), x.at.clone());
        if seen.contains(&key) {
            false
        } else {
            seen.push(key);
            true
        }
    });
}

fn apply_targets(changes: &mut Vec<ResourceChange>, targets: &[String]) -> Result<(), Diagnostics> {
    let matches = |addr: &str, t: &str| {
        addr == t || (addr.starts_with(t) && addr[t.len()..].starts_with('['))
    };
    let mut keep: HashSet<String> = HashSet::new();
    for t in targets {
        let hit: Vec<String> = changes
            .iter()
            .filter(|c| matches(&c.addr, t))
            .map(|c| c.addr.clone())
            .collect();
        if hit.is_empty() {
            return Err(Diagnostic::new(format!("-target {t}: no such resource in the stack or state"))
                .help("use an address as `pipeline state list` shows it, e.g. service.web or service.web[0]")
                .into());
        }
        keep.extend(hit);
    }
    // Targets bring their dependencies along (deps name blocks; take all their instances).
    let by_addr: HashMap<&str, &Vec<String>> =
        changes.iter().map(|c| (c.addr.as_str(), &c.deps)).collect();
    let mut by_resource: HashMap<&str, Vec<&str>> = HashMap::new();
    for c in changes.iter() {
        by_resource
            .entry(resource_addr(&c.addr))
            .or_default()
            .push(&c.addr);
    }
    let mut stack: Vec<String> = keep.iter().cloned().collect();
    while let Some(a) = stack.pop() {
        for d in by_addr.get(a.as_str()).copied().into_iter().flatten() {
            for inst in by_resource.get(resource_addr(d)).into_iter().flatten() {
                if keep.insert(inst.to_string()) {
                    stack.push(inst.to_string());
                }
            }
        }
    }
    changes.retain(|c| keep.contains(&c.addr));
    Ok(())
}

fn expand(
    world: &World<'_>,
    scope: &Scope<'_, '_>,
    decl: &crate::config::ResourceDecl,
    provider: &dyn crate::provider::Provider,
) -> Result<Expansion, Diagnostic> {
    if let Some((attr, e)) = provider
        .expansion(&decl.kind)
        .and_then(|a| decl.attrs.get(a).map(|e| (a, e)))
    {
        return provider_expansion(world, scope, decl, provider, attr, e);
    }
    if let Some(c) = &decl.count {
        let v = world.eval(scope, c)?;
        let what = if decl.attrs.contains_key("replicas") {
            "replicas"
        } else {
            "count"
        };
        // "2" counts as 2, as in Terraform.
        let v = crate::provider::Type::Number
            .convert(v.unmarked().0)
            .unwrap_or(v);
        return match v.unmarked().0 {
            Value::Number(n) if n >= 0.0 && n.fract() == 0.0 && n <= 100_000.0 => Ok(Expansion::Count(n as usize)),
            Value::Unknown => Err(Diagnostic::new(format!("{what} depends on a value that is known only after apply"))
                .at(c.location())
                .help(format!("{what} must be known when planning: use variables and locals, not attributes of other resources"))),
            other => Err(Diagnostic::new(format!("{what} must be a whole number from 0 to 100000, found {}", other.render()))
                .at(c.location())
                .help(format!("write {what} = 3"))),
        };
    }
    if let Some(f) = &decl.for_each {
        let v = world.eval(scope, f)?;
        return match v.unmarked().0 {
            Value::Map(m) => Ok(Expansion::ForEach(m.into_iter().collect())),
            Value::List(l) => {
                let mut out = IndexMap::new();
                for x in l {
                    match x {
                        Value::String(s) => {
                            if out.contains_key(&s) {
                                return Err(Diagnostic::new(format!(
                                    "for_each has the key \"{s}\" twice"
                                ))
                                .at(f.location())
                                .help(
                                    "for_each keys must be unique: use distinct(LIST) or a map",
                                ));
                            }
                            out.insert(s.clone(), Value::String(s));
                        }
                        other => {
                            return Err(Diagnostic::new(format!(
                                "for_each over a list needs strings, found {}",
                                other.type_name()
                            ))
                            .at(f.location())
                            .help("use a map, or a list of unique strings"))
                        }
                    }
                }
                Ok(Expansion::ForEach(out))
            }
            Value::Unknown => Err(Diagnostic::new(
                "for_each depends on a value that is known only after apply",
            )
            .at(f.location())
            .help("for_each must be known when planning")),
            other => Err(Diagnostic::new(format!(
                "for_each needs a map or a list of strings, found {}",
                other.type_name()
            ))
            .at(f.location())
            .help("write for_each = { key = value, ... } or for_each = [\"a\", \"b\"]")),
        };
    }
    Ok(Expansion::Single)
}

/// A block the provider expands (`host "web" { provider = ssh  group = "web" }`): the
/// attribute's value, known at plan, becomes the instances the provider names, keyed like
/// `for_each` (`host.web["web01"]`, `each.value` as the provider gives it).
fn provider_expansion(
    world: &World<'_>,
    scope: &Scope<'_, '_>,
    decl: &crate::config::ResourceDecl,
    provider: &dyn crate::provider::Provider,
    attr: &str,
    e: &crate::lang::Expr,
) -> Result<Expansion, Diagnostic> {
    let by = if decl.count.is_some() {
        Some(("count", &decl.count))
    } else if decl.for_each.is_some() {
        Some(("for_each", &decl.for_each))
    } else {
        None
    };
    if let Some((meta, at)) = by {
        return Err(Diagnostic::new(format!(
            "`{meta}` and `{attr}` both say which instances this block has"
        ))
        .at(at.as_ref().and_then(|x| x.location()))
        .help(format!(
            "the {} provider makes one {} per member of `{attr}`: remove `{meta}`",
            provider.name(),
            decl.kind
        )));
    }
    let v = world.eval(scope, e)?;
    if !v.is_known() {
        return Err(Diagnostic::new(format!(
            "`{attr}` depends on a value that is known only after apply"
        ))
        .at(e.location())
        .help(format!(
            "`{attr}` must be known when planning: use variables and locals, not attributes of other resources"
        )));
    }
    let members = provider.expand(&decl.kind, &v).map_err(|err| {
        let mut d = Diagnostic::new(err.message).at(e.location());
        d.help = err.help;
        d
    })?;
    let mut out = IndexMap::new();
    for (k, v) in members {
        if out.insert(k.clone(), v).is_some() {
            return Err(Diagnostic::new(format!(
                "the {} provider named the instance \"{k}\" twice for `{attr}`",
                provider.name()
            ))
            .at(e.location()));
        }
    }
    Ok(Expansion::ForEach(out))
}

pub fn instance_scope<'w, 'a>(
    world: &'w World<'a>,
    m: usize,
    expansion: &Expansion,
    inst: &Option<InstanceKey>,
) -> Scope<'w, 'a> {
    let mut s = world.scope(m);
    match (inst, expansion) {
        (Some(InstanceKey::Int(i)), _) => s.count = Some(*i),
        (Some(InstanceKey::Str(k)), Expansion::ForEach(kv)) => {
            s.each = kv.get(k).map(|v| (k.clone(), v.clone()));
        }
        _ => {}
    }
    s
}

/// Evaluate a resource instance's attributes, apply defaults and convert types.
pub fn eval_attrs(
    world: &World<'_>,
    scope: &Scope<'_, '_>,
    decl: &crate::config::ResourceDecl,
    schema: &crate::provider::KindSchema,
) -> Result<ValueMap, Diagnostics> {
    let mut out = ValueMap::new();
    let mut diags = Diagnostics::default();
    for a in &schema.attrs {
        let v = match decl.attrs.get(a.name) {
            Some(e) => match world.eval(scope, e) {
                Ok(v) => match a.ty.convert(v) {
                    Ok(v) => v,
                    Err(msg) => {
                        diags.push(
                            Diagnostic::new(format!("wrong type for `{}`: {msg}", a.name))
                                .at(e.location())
                                .help(format!(
                                    "`{}` of a {} takes a value of type {}",
                                    a.name,
                                    decl.kind,
                                    a.ty.name()
                                )),
                        );
                        continue;
                    }
                },
                Err(d) => {
                    diags.push(d);
                    continue;
                }
            },
            None if a.computed => continue,
            None => a.default.clone().unwrap_or(Value::Null),
        };
        if let Some(e) = decl.attrs.get(a.name) {
            for bad in crate::format::check_rules(&a.formats, &v) {
                diags.push(format_error(decl, a.name, e, &bad));
            }
        }
        if a.required && matches!(v, Value::Null) {
            diags.push(
                Diagnostic::new(format!(
                    "`{}` of {}.{} must not be null",
                    a.name, decl.kind, decl.name
                ))
                .at(decl.attrs.get(a.name).and_then(|e| e.location()))
                .help(format!("give it a {} value", a.ty.name())),
            );
        }
        out.insert(a.name.to_string(), v.mark(a.sensitive));
    }
    diags.into_result().map(|_| out)
}

/// Mark what an instance holds that is secret and name those attributes: attributes the schema
/// declares sensitive, values that carry a mark, and computed values derived from a sensitive
/// input (a config rendered from a secret, a URL with a password): what is derived from a
/// secret is a secret. Marks go on `object` itself, so whatever refers to them inherits them.
pub fn mark_sensitive(
    schema: &KindSchema,
    config: &ValueMap,
    object: &mut ValueMap,
) -> Vec<String> {
    let mut out = Vec::new();
    for a in &schema.attrs {
        let derived = a.derives_secret(config);
        if let Some(v) = object.get_mut(a.name) {
            if (derived || a.sensitive) && !matches!(v, Value::Null) {
                *v = std::mem::take(v).mark(true);
            }
        }
        if a.sensitive || derived || object.get(a.name).is_some_and(Value::is_sensitive) {
            out.push(a.name.to_string());
        }
    }
    out
}

/// A value that does not have the format its attribute declares, at the value itself when it is
/// written literally in the attribute (a route's key, a nested field), else at the attribute.
fn format_error(
    decl: &crate::config::ResourceDecl,
    attr: &str,
    e: &crate::lang::Expr,
    bad: &crate::format::Violation,
) -> Diagnostic {
    let at = crate::format::span_of(&e.expr, &bad.path, bad.is_key)
        .map(|r| e.file.location(r))
        .or_else(|| e.location());
    Diagnostic::new(format!(
        "{} of {}.{} is not {}: {} ({})",
        bad.describe(attr),
        decl.kind,
        decl.name,
        bad.format.noun(),
        bad.shown,
        bad.reason
    ))
    .at(at)
    .help(format!(
        "{}; the {} renders it into a config file or command line, so nothing else is accepted",
        bad.format.help(),
        decl.kind
    ))
}

/// Addresses grouped for display: every change sorted by address.
pub fn sorted(plan: &Plan) -> Vec<&ResourceChange> {
    let mut v: Vec<&ResourceChange> = plan.changes.iter().collect();
    v.sort_by(|a, b| a.addr.cmp(&b.addr));
    v
}

pub fn state_outputs(plan: &Plan) -> BTreeMap<String, pipeline_state::OutputState> {
    plan.outputs
        .iter()
        .filter_map(|o| {
            o.after.as_ref().map(|v| {
                (
                    o.name.clone(),
                    pipeline_state::OutputState {
                        value: v.to_json(),
                        sensitive: o.sensitive,
                    },
                )
            })
        })
        .collect()
}

/// A stable digest of an instance's evaluated configuration: which change an aborted canary
/// was of, so a plan names the abort only for that change.
pub fn config_fingerprint(cfg: &ValueMap) -> String {
    use std::hash::{Hash, Hasher};
    let sorted: std::collections::BTreeMap<&String, serde_json::Value> =
        cfg.iter().map(|(k, v)| (k, v.to_json())).collect();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&sorted)
        .unwrap_or_default()
        .hash(&mut h);
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{AttrSchema, Type};

    fn schema() -> KindSchema {
        KindSchema {
            kind: "balancer",
            attrs: vec![
                AttrSchema::required("listen", Type::Number),
                AttrSchema::required("routes", Type::Any),
                AttrSchema::optional("password", Type::String).sensitive(),
                // Rendered from every input.
                AttrSchema::computed("config", Type::String),
                AttrSchema::computed("url", Type::String).derived_from(&["listen"]),
                AttrSchema::computed("pid", Type::Number).derived_from(&[]),
            ],
            instances_attr: None,
        }
    }

    /// Issue 8, item 3: a computed value derived from a secret (a config rendered from a secret
    /// route) is secret, in the plan and in everything that refers to it; what the provider
    /// declares independent of the secret stays visible.
    #[test]
    fn a_computed_value_derived_from_a_secret_input_is_secret() {
        let config: ValueMap = [
            ("listen".to_string(), Value::Number(80.0)),
            (
                "routes".to_string(),
                Value::Map(
                    [("/s3cr3t".to_string(), Value::str("x"))]
                        .into_iter()
                        .collect(),
                )
                .mark(true),
            ),
        ]
        .into_iter()
        .collect();
        let mut object = config.clone();
        object.insert("config".into(), Value::str("location /s3cr3t {}"));
        object.insert("url".into(), Value::str("http://127.0.0.1:80"));
        object.insert("pid".into(), Value::Unknown);
        let names = mark_sensitive(&schema(), &config, &mut object);
        assert_eq!(names, ["routes", "password", "config"]);
        assert!(object["config"].is_sensitive());
        assert!(!object["url"].is_sensitive() && !object["pid"].is_sensitive());

        // Nothing secret in: nothing computed is marked (a declared-sensitive attribute still is).
        let plain: ValueMap = [("listen".to_string(), Value::Number(80.0))]
            .into_iter()
            .collect();
        let mut object = plain.clone();
        object.insert("config".into(), Value::str("location / {}"));
        assert_eq!(mark_sensitive(&schema(), &plain, &mut object), ["password"]);
        assert!(!object["config"].is_sensitive());
    }
}
