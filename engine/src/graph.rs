//! The dependency graph of a config: variables, locals, outputs and resources as nodes,
//! references and `depends_on` as edges. Cycles are reported with every block on them.

use crate::config::Config;
use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Location};
use crate::lang::{references, Expr, Reference};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;
use std::collections::{HashMap, HashSet};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Var(usize, String),
    Local(usize, String),
    Output(usize, String),
    /// (module, "kind.name")
    Resource(usize, String),
}

pub struct ConfigGraph {
    /// Edges point from a dependency to what depends on it.
    pub graph: DiGraph<Node, ()>,
    pub index: HashMap<Node, NodeIndex>,
    /// Dependencies first.
    pub order: Vec<NodeIndex>,
}

impl ConfigGraph {
    pub fn build(config: &Config) -> Result<ConfigGraph, Diagnostics> {
        let mut g = ConfigGraph {
            graph: DiGraph::new(),
            index: HashMap::new(),
            order: Vec::new(),
        };
        for (m, module) in config.modules.iter().enumerate() {
            for n in module.variables.keys() {
                g.add(Node::Var(m, n.clone()));
            }
            for n in module.locals.keys() {
                g.add(Node::Local(m, n.clone()));
            }
            for n in module.outputs.keys() {
                g.add(Node::Output(m, n.clone()));
            }
            for n in module.resources.keys() {
                g.add(Node::Resource(m, n.clone()));
            }
        }
        let mut diags = Diagnostics::default();
        let nodes: Vec<Node> = g.index.keys().cloned().collect();
        for node in nodes {
            let (scope, exprs, extra): (usize, Vec<&Expr>, Vec<(String, Location)>) = match &node {
                Node::Var(m, n) => match config.modules[*m].parent {
                    Some(p) => {
                        let call = config.modules[p].calls.values().find(|c| c.child == *m);
                        (
                            p,
                            call.and_then(|c| c.inputs.get(n)).into_iter().collect(),
                            vec![],
                        )
                    }
                    None => (*m, vec![], vec![]),
                },
                Node::Local(m, n) => (*m, vec![&config.modules[*m].locals[n].expr], vec![]),
                Node::Output(m, n) => (*m, vec![&config.modules[*m].outputs[n].expr], vec![]),
                Node::Resource(m, k) => {
                    let r = &config.modules[*m].resources[k];
                    let mut e: Vec<&Expr> = r.attrs.values().collect();
                    e.extend(r.count.iter());
                    e.extend(r.for_each.iter());
                    (*m, e, r.depends_on.clone())
                }
            };
            let to = g.index[&node];
            for expr in exprs {
                for r in references(&expr.expr) {
                    match resolve(config, scope, &r, &node) {
                        Ok(deps) if deps.contains(&node) && !matches!(node, Node::Var(..)) => {
                            let me = node_name(config, &node);
                            diags.push(
                                Diagnostic::new(format!("{me} refers to itself"))
                                    .at(r.span.clone().map(|s| expr.file.location(s)))
                                    .help(match &node {
                                        Node::Resource(..) => "a resource cannot use its own attributes; compute the value in a local, or take it from another block",
                                        _ => "a value cannot be defined in terms of itself",
                                    }),
                            );
                        }
                        Ok(deps) => {
                            for d in deps {
                                let from = g.index[&d];
                                g.graph.update_edge(from, to, ());
                            }
                        }
                        Err(d) => diags.push(d.at(r.span.clone().map(|s| expr.file.location(s)))),
                    }
                }
            }
            for (addr, loc) in extra {
                let (kind, name) = addr.split_once('.').unwrap_or((&addr, ""));
                let dep = Node::Resource(scope, format!("{kind}.{name}"));
                match g.index.get(&dep) {
                    Some(&from) => {
                        g.graph.update_edge(from, to, ());
                    }
                    None => diags.push(
                        Diagnostic::new(format!("depends_on names {addr}, which is not declared"))
                            .at(Some(loc))
                            .help("depends_on lists resources of this module, like service.web"),
                    ),
                }
            }
        }
        diags.clone().into_result()?;
        for scc in petgraph::algo::tarjan_scc(&g.graph) {
            let self_loop = scc.len() == 1 && g.graph.contains_edge(scc[0], scc[0]);
            if scc.len() > 1 || self_loop {
                let mut names: Vec<(String, Option<Location>)> = scc
                    .iter()
                    .rev()
                    .map(|&i| {
                        (
                            node_name(config, &g.graph[i]),
                            node_location(config, &g.graph[i]),
                        )
                    })
                    .collect();
                names.sort_by(|a, b| {
                    a.1.as_ref()
                        .map(|l| (l.file.clone(), l.line))
                        .cmp(&b.1.as_ref().map(|l| (l.file.clone(), l.line)))
                });
                let chain: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
                let detail = names
                    .iter()
                    .map(|(n, l)| {
                        format!(
                            "{n} at {}",
                            l.as_ref().map_or("?".into(), |l| l.to_string())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                diags.push(
                    Diagnostic::new(format!(
                        "dependency cycle: {} -> {}",
                        chain.join(" -> "),
                        chain[0]
                    ))
                    .at(names[0].1.clone())
                    .detail(detail)
                    .help("break the cycle: one of these must not refer to the next"),
                );
            }
        }
        diags.into_result()?;
        g.order = petgraph::algo::toposort(&g.graph, None)
            .map_err(|_| Diagnostics::from(Diagnostic::new("dependency cycle")))?;
        Ok(g)
    }

    fn add(&mut self, n: Node) {
        let i = self.graph.add_node(n.clone());
        self.index.insert(n, i);
    }

    /// The resources a resource depends on, directly or through locals, variables and outputs.
    pub fn resource_deps(&self, node: NodeIndex) -> Vec<NodeIndex> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut stack: Vec<NodeIndex> = self
            .graph
            .neighbors_directed(node, Direction::Incoming)
            .collect();
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            match &self.graph[n] {
                Node::Resource(..) => out.push(n),
                _ => stack.extend(self.graph.neighbors_directed(n, Direction::Incoming)),
            }
        }
        out.sort();
        out
    }
}

/// The nodes a reference in module `m` points at.
fn resolve(config: &Config, m: usize, r: &Reference, from: &Node) -> Result<Vec<Node>, Diagnostic> {
    let module = &config.modules[m];
    let name = || {
        r.name.clone().ok_or_else(|| {
            Diagnostic::new(format!("`{}` must be followed by a name", r.root))
                .help(format!("write {}.NAME", r.root))
        })
    };
    match r.root.as_str() {
        "var" => {
            let n = name()?;
            if module.variables.contains_key(&n) {
                Ok(vec![Node::Var(m, n)])
            } else {
                Err(
                    Diagnostic::new(format!("reference to an undeclared variable var.{n}")).help(
                        match did_you_mean(&n, module.variables.keys().map(String::as_str)) {
                            Some(c) => {
                                format!(
                                    "did you mean var.{c}? declared: {}",
                                    join(module.variables.keys())
                                )
                            }
                            None => format!(
                                "declare it with `variable \"{n}\" {{}}`{}",
                                known(module.variables.keys())
                            ),
                        },
                    ),
                )
            }
        }
        "local" => {
            let n = name()?;
            if module.locals.contains_key(&n) {
                Ok(vec![Node::Local(m, n)])
            } else {
                Err(
                    Diagnostic::new(format!("reference to an undeclared local value local.{n}"))
                        .help(
                            match did_you_mean(&n, module.locals.keys().map(String::as_str)) {
                                Some(c) => format!(
                                    "did you mean local.{c}? declared: {}",
                                    join(module.locals.keys())
                                ),
                                None => format!(
                                    "define it in a `locals {{ {n} = ... }}` block{}",
                                    known(module.locals.keys())
                                ),
                            },
                        ),
                )
            }
        }
        "module" => {
            let n = name()?;
            let Some(call) = module.calls.get(&n) else {
                return Err(Diagnostic::new(format!(
                    "reference to an undeclared module module.{n}"
                ))
                .help(format!(
                    "declare it with `module \"{n}\" {{ source = \"...\" }}`{}",
                    known(module.calls.keys())
                )));
            };
            let child = &config.modules[call.child];
            match &r.attr {
                Some(o) if child.outputs.contains_key(o) => {
                    Ok(vec![Node::Output(call.child, o.clone())])
                }
                Some(o) => Err(
                    Diagnostic::new(format!("module \"{n}\" has no output \"{o}\"")).help(
                        match did_you_mean(o, child.outputs.keys().map(String::as_str)) {
                            Some(c) => format!(
                                "did you mean module.{n}.{c}? its outputs: {}",
                                join(child.outputs.keys())
                            ),
                            None => format!(
                                "its outputs: {}; declare `output \"{o}\"` in the module to add one",
                                join(child.outputs.keys())
                            ),
                        },
                    ),
                ),
                None => Ok(child
                    .outputs
                    .keys()
                    .map(|o| Node::Output(call.child, o.clone()))
                    .collect()),
            }
        }
        "count" | "each" => match from {
            Node::Resource(..) => Ok(vec![]),
            _ => {
                let meta = if r.root == "count" {
                    "count"
                } else {
                    "for_each"
                };
                Err(Diagnostic::new(format!(
                    "`{}` is only available inside a resource with {meta}",
                    r.root,
                ))
                .help(format!(
                    "{} belong to resource blocks; here refer to a resource's instances instead, e.g. KIND.NAME[0] or KIND.NAME[*].ATTRIBUTE",
                    if r.root == "count" { "count.index" } else { "each.key and each.value" }
                )))
            }
        },
        "path" | "self" => Ok(vec![]),
        kind => {
            if !config.modules[m]
                .resources
                .keys()
                .any(|k| k.starts_with(&format!("{kind}.")))
                && !is_resource_kind(config, kind)
            {
                return Err(Diagnostic::new(format!("unknown name `{kind}`")).help(
                    "references look like var.NAME, local.NAME, module.NAME.OUTPUT or KIND.NAME (e.g. service.web)",
                ));
            }
            let n = name()?;
            let key = format!("{kind}.{n}");
            if let Some(decl) = module.resources.get(&key) {
                if let Some(a) = &r.attr {
                    if !decl.schema_attrs.is_empty() && !decl.schema_attrs.contains(&a.as_str()) {
                        let all = decl.schema_attrs.join(", ");
                        return Err(
                            Diagnostic::new(format!("{key} has no attribute `{a}`")).help(
                                match did_you_mean(a, decl.schema_attrs.iter().copied()) {
                                    Some(c) => {
                                        format!("did you mean `{c}`? attributes of a {kind}: {all}")
                                    }
                                    None => format!("attributes of a {kind}: {all}"),
                                },
                            ),
                        );
                    }
                }
                Ok(vec![Node::Resource(m, key)])
            } else {
                let same: Vec<&str> = module
                    .resources
                    .keys()
                    .filter(|k| k.starts_with(&format!("{kind}.")))
                    .map(String::as_str)
                    .collect();
                let names: Vec<&str> = same.iter().map(|k| &k[kind.len() + 1..]).collect();
                Err(
                    Diagnostic::new(format!("reference to an undeclared {kind} \"{n}\"")).help(
                        match (same.is_empty(), did_you_mean(&n, names.iter().copied())) {
                            (true, _) => {
                                format!("declare it with `{kind} \"{n}\" {{ ... }}` in this module")
                            }
                            (false, Some(c)) => {
                                format!("did you mean {kind}.{c}? declared: {}", same.join(", "))
                            }
                            (false, None) => format!("declared: {}", same.join(", ")),
                        },
                    ),
                )
            }
        }
    }
}

fn is_resource_kind(config: &Config, kind: &str) -> bool {
    config
        .modules
        .iter()
        .any(|m| m.resources.values().any(|r| r.kind == kind))
        || [
            "host", "file", "service", "balancer", "flags", "monitor", "canary",
        ]
        .contains(&kind)
}

fn known<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let j = join(it);
    if j == "none" {
        String::new()
    } else {
        format!("; declared: {j}")
    }
}

fn join<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

pub fn node_name(config: &Config, n: &Node) -> String {
    match n {
        Node::Var(m, v) => format!("{}var.{v}", config.modules[*m].prefix),
        Node::Local(m, v) => format!("{}local.{v}", config.modules[*m].prefix),
        Node::Output(m, v) => format!("{}output.{v}", config.modules[*m].prefix),
        Node::Resource(m, k) => format!("{}{k}", config.modules[*m].prefix),
    }
}

pub fn node_location(config: &Config, n: &Node) -> Option<Location> {
    match n {
        Node::Var(m, v) => Some(config.modules[*m].variables[v].loc.clone()),
        Node::Local(m, v) => config.modules[*m].locals[v].expr.location(),
        Node::Output(m, v) => Some(config.modules[*m].outputs[v].loc.clone()),
        Node::Resource(m, k) => Some(config.modules[*m].resources[k].loc.clone()),
    }
}
