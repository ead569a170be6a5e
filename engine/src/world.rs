//! Evaluation of a config against known values. Variables, locals and outputs are evaluated
//! lazily and memoised; resources read whatever the caller recorded (planned values during plan,
//! applied values during apply). Shared by plan and apply so both evaluate identically.

use crate::config::Config;
use crate::diag::Diagnostic;
use crate::graph::Node;
use crate::lang::{Evaluator, Expr, LookupError, Resolve};
use crate::value::Value;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(untagged)]
pub enum InstanceKey {
    Int(usize),
    Str(String),
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstanceKey::Int(i) => write!(f, "[{i}]"),
            InstanceKey::Str(s) => write!(f, "[{}]", serde_json::to_string(s).unwrap_or_default()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expansion {
    Single,
    Count(usize),
    /// Keys in the order written; looked up by key once per instance, so a map (a list of pairs
    /// made planning quadratic in the number of keys).
    ForEach(IndexMap<String, Value>),
}

impl Expansion {
    pub fn keys(&self) -> Vec<Option<InstanceKey>> {
        match self {
            Expansion::Single => vec![None],
            Expansion::Count(n) => (0..*n).map(|i| Some(InstanceKey::Int(i))).collect(),
            Expansion::ForEach(kv) => kv
                .keys()
                .map(|k| Some(InstanceKey::Str(k.clone())))
                .collect(),
        }
    }
}

pub fn instance_addr(prefix: &str, resource: &str, key: &Option<InstanceKey>) -> String {
    match key {
        None => format!("{prefix}{resource}"),
        Some(k) => format!("{prefix}{resource}{k}"),
    }
}

#[derive(Clone, Debug, Default)]
pub struct ResourceValue {
    pub expansion: Option<Expansion>,
    pub instances: HashMap<Option<InstanceKey>, Value>,
}

pub struct World<'a> {
    pub config: &'a Config,
    root_vars: IndexMap<String, Value>,
    cache: RefCell<HashMap<Node, Option<Value>>>,
    pub resources: RefCell<HashMap<(usize, String), ResourceValue>>,
    pub diags: RefCell<Vec<Diagnostic>>,
}

impl<'a> World<'a> {
    pub fn new(config: &'a Config, root_vars: IndexMap<String, Value>) -> Self {
        World {
            config,
            root_vars,
            cache: RefCell::new(HashMap::new()),
            resources: RefCell::new(HashMap::new()),
            diags: RefCell::new(Vec::new()),
        }
    }

    pub fn scope(&self, module: usize) -> Scope<'_, 'a> {
        Scope {
            world: self,
            module,
            count: None,
            each: None,
        }
    }

    pub fn eval(&self, scope: &Scope<'_, 'a>, e: &Expr) -> Result<Value, Diagnostic> {
        Evaluator::new(&e.file, scope).eval(&e.expr)
    }

    /// Value of a variable, local or output; errors are recorded once in `diags`.
    pub fn node_value(&self, node: &Node) -> Option<Value> {
        if let Some(v) = self.cache.borrow().get(node) {
            return v.clone();
        }
        let result = self.compute(node);
        let v = match result {
            Ok(v) => Some(v),
            Err(d) => {
                self.diags.borrow_mut().push(d);
                None
            }
        };
        self.cache.borrow_mut().insert(node.clone(), v.clone());
        v
    }

    fn compute(&self, node: &Node) -> Result<Value, Diagnostic> {
        let cfg = self.config;
        match node {
            Node::Var(m, n) => {
                let decl = &cfg.modules[*m].variables[n];
                let raw = match cfg.modules[*m].parent {
                    None => match self.root_vars.get(n) {
                        Some(v) => v.clone(),
                        None => match &decl.default {
                            Some(d) => self.eval(&self.scope(*m), d)?,
                            None => {
                                return Err(Diagnostic::new(format!("no value for the required variable \"{n}\""))
                                    .at(Some(decl.loc.clone()))
                                    .help(format!(
                                        "pass -var {n}=VALUE, set PIPELINE_VAR_{n}, put it in a -var-file, or give the variable a default"
                                    )))
                            }
                        },
                    },
                    Some(p) => {
                        let call = cfg.modules[p].calls.values().find(|c| c.child == *m).expect("module call for a child module");
                        match call.inputs.get(n) {
                            Some(e) => self.eval(&self.scope(p), e)?,
                            None => match &decl.default {
                                Some(d) => self.eval(&self.scope(*m), d)?,
                                None => return Err(Diagnostic::new(format!("no value for variable \"{n}\"")).at(Some(call.loc.clone()))),
                            },
                        }
                    }
                };
                let v = match &decl.ty {
                    Some(t) => t.convert(raw).map_err(|e| {
                        Diagnostic::new(format!("invalid value for variable \"{n}\": {e}"))
                            .at(Some(decl.loc.clone()))
                            .help(format!("the variable is declared as {}", t.name()))
                    })?,
                    None => raw,
                };
                Ok(v.mark(decl.sensitive))
            }
            Node::Local(m, n) => self.eval(&self.scope(*m), &cfg.modules[*m].locals[n].expr),
            Node::Output(m, n) => {
                let o = &cfg.modules[*m].outputs[n];
                Ok(self.eval(&self.scope(*m), &o.expr)?.mark(o.sensitive))
            }
            Node::Resource(..) => unreachable!("resources are recorded, not computed"),
        }
    }

    /// The value of a whole resource as references see it: an object, or a list/map of them.
    pub fn resource_value(&self, m: usize, key: &str) -> Value {
        let res = self.resources.borrow();
        let Some(rv) = res.get(&(m, key.to_string())) else {
            return Value::Unknown;
        };
        let get = |k: &Option<InstanceKey>| rv.instances.get(k).cloned().unwrap_or(Value::Unknown);
        match &rv.expansion {
            None => Value::Unknown,
            Some(Expansion::Single) => get(&None),
            Some(Expansion::Count(n)) => {
                Value::List((0..*n).map(|i| get(&Some(InstanceKey::Int(i)))).collect())
            }
            Some(Expansion::ForEach(kv)) => Value::Map(
                kv.keys()
                    .map(|k| (k.clone(), get(&Some(InstanceKey::Str(k.clone())))))
                    .collect(),
            ),
        }
    }

    /// Records how a block expands before any instance is known: a block of no instances
    /// (`count = 0`, an empty `for_each`) is then an empty list or map to references, not an
    /// unknown that never resolves.
    pub fn set_expansion(&self, m: usize, key: &str, expansion: &Expansion) {
        let mut res = self.resources.borrow_mut();
        let rv = res.entry((m, key.to_string())).or_default();
        if rv.expansion.is_none() {
            rv.expansion = Some(expansion.clone());
        }
    }

    pub fn set_instance(
        &self,
        m: usize,
        key: &str,
        expansion: &Expansion,
        inst: Option<InstanceKey>,
        v: Value,
    ) {
        let mut res = self.resources.borrow_mut();
        let rv = res.entry((m, key.to_string())).or_default();
        // Every instance of a block shares one expansion: clone it once, not once per instance.
        if rv.expansion.is_none() {
            rv.expansion = Some(expansion.clone());
        }
        rv.instances.insert(inst, v);
    }
}

pub struct Scope<'w, 'a> {
    pub world: &'w World<'a>,
    pub module: usize,
    pub count: Option<usize>,
    pub each: Option<(String, Value)>,
}

impl Resolve for Scope<'_, '_> {
    fn lookup(&self, root: &str, name: &str) -> Result<Value, LookupError> {
        let cfg = self.world.config;
        let m = self.module;
        let failed = |what: String| {
            LookupError::secondary(format!(
                "{what} could not be evaluated (see the error reported for it)"
            ))
        };
        match root {
            "var" => self
                .world
                .node_value(&Node::Var(m, name.into()))
                .ok_or_else(|| failed(format!("var.{name}"))),
            "local" => self
                .world
                .node_value(&Node::Local(m, name.into()))
                .ok_or_else(|| failed(format!("local.{name}"))),
            "module" => {
                let call = &cfg.modules[m].calls[name];
                let mut out = IndexMap::new();
                for o in cfg.modules[call.child].outputs.keys() {
                    let v = self
                        .world
                        .node_value(&Node::Output(call.child, o.clone()))
                        .ok_or_else(|| failed(format!("module.{name}.{o}")))?;
                    out.insert(o.clone(), v);
                }
                Ok(Value::Map(out))
            }
            "count" => match (name, self.count) {
                ("index", Some(i)) => Ok(Value::Number(i as f64)),
                ("index", None) => Err(LookupError::new(
                    "count.index is only available in a block that sets count (or replicas)",
                    Some("add `count = N` to the block, or remove the reference".into()),
                )),
                _ => Err(LookupError::new(
                    format!("count has no attribute `{name}`"),
                    Some("use count.index".into()),
                )),
            },
            "each" => match (name, &self.each) {
                ("key", Some((k, _))) => Ok(Value::String(k.clone())),
                ("value", Some((_, v))) => Ok(v.clone()),
                (_, None) => Err(LookupError::new(
                    "each is only available in a block that sets for_each",
                    Some("add `for_each = {...}` or remove the reference".into()),
                )),
                _ => Err(LookupError::new(
                    format!("each has no attribute `{name}`"),
                    Some("use each.key or each.value".into()),
                )),
            },
            "path" => match name {
                "module" => Ok(Value::String(cfg.modules[m].dir.display().to_string())),
                "root" => Ok(Value::String(cfg.modules[0].dir.display().to_string())),
                "cwd" => Ok(Value::String(
                    std::env::current_dir()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                )),
                _ => Err(LookupError::new(
                    format!("path has no attribute `{name}`"),
                    Some("use path.module, path.root or path.cwd".into()),
                )),
            },
            kind => Ok(self.world.resource_value(m, &format!("{kind}.{name}"))),
        }
    }

    fn lookup_instance(&self, root: &str, name: &str, key: &Value) -> Option<Value> {
        if matches!(root, "var" | "local" | "module" | "count" | "each" | "path") {
            return None;
        }
        let res = self.world.resources.borrow();
        let rv = res.get(&(self.module, format!("{root}.{name}")))?;
        let k = match (&rv.expansion, key) {
            (Some(Expansion::Count(n)), Value::Number(i))
                if i.fract() == 0.0 && *i >= 0.0 && (*i as usize) < *n =>
            {
                InstanceKey::Int(*i as usize)
            }
            (Some(Expansion::ForEach(_)), Value::String(s)) => InstanceKey::Str(s.clone()),
            _ => return None,
        };
        // Out of range or not there: the general path reports it properly.
        rv.instances.get(&Some(k)).cloned()
    }

    fn base_dir(&self) -> &Path {
        &self.world.config.modules[self.module].dir
    }
}
