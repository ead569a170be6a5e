//! The static config model: stack and module files loaded into typed, validated blocks. No I/O
//! beyond reading the files themselves.

use crate::diag::{did_you_mean, display_path, Diagnostic, Diagnostics, Location, SourceFile};
use crate::lang::{self, Expr};
use crate::provider::{Registry, Type};
use hcl_edit::expr::{Expression, TraversalOperator};
use hcl_edit::structure::{Block, BlockLabel, Body, Structure};
use hcl_edit::Span;
use indexmap::IndexMap;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug)]
pub struct Config {
    /// Index 0 is the root module; children follow in load order.
    pub modules: Vec<Module>,
    pub files: Vec<Arc<SourceFile>>,
    /// sha256 over every file's path and text: a saved plan is refused when it changed.
    pub hash: String,
    pub root_path: PathBuf,
    /// `provider "NAME" { ... }` blocks of the root stack, in the order written.
    pub providers: Vec<ProviderBlock>,
}

/// A `provider "NAME" { alias = "..." ... }` block: settings for one configuration of a provider.
#[derive(Debug, Clone)]
pub struct ProviderBlock {
    pub name: String,
    pub alias: Option<String>,
    /// Settings (every attribute but `alias`), checked against `Provider::config_schema`.
    pub attrs: IndexMap<String, Expr>,
    /// Where each setting's name is written.
    pub keys: IndexMap<String, Location>,
    pub loc: Location,
}

impl ProviderBlock {
    /// `NAME` or `NAME.ALIAS`: what resources select and what the state records.
    pub fn key(&self) -> String {
        match &self.alias {
            Some(a) => format!("{}.{a}", self.name),
            None => self.name.clone(),
        }
    }
    /// `provider "local"` or `provider "local" (alias "west")`, for messages.
    pub fn describe(&self) -> String {
        describe_provider(&self.key())
    }
}

/// `provider "local"` or `provider "local" (alias "west")` for a configuration key.
pub fn describe_provider(key: &str) -> String {
    match key.split_once('.') {
        Some((n, a)) => format!("provider \"{n}\" (alias \"{a}\")"),
        None => format!("provider \"{key}\""),
    }
}

#[derive(Debug)]
pub struct Module {
    /// Address prefix: "" for the root, "module.web." for a child.
    pub prefix: String,
    pub parent: Option<usize>,
    pub dir: PathBuf,
    pub variables: IndexMap<String, VariableDecl>,
    pub locals: IndexMap<String, LocalDecl>,
    /// Keyed "kind.name".
    pub resources: IndexMap<String, ResourceDecl>,
    pub outputs: IndexMap<String, OutputDecl>,
    pub calls: IndexMap<String, ModuleCall>,
}

#[derive(Debug, Clone)]
pub struct VariableDecl {
    pub name: String,
    pub default: Option<Expr>,
    pub ty: Option<Type>,
    pub sensitive: bool,
    pub description: Option<String>,
    pub loc: Location,
}

#[derive(Debug, Clone)]
pub struct LocalDecl {
    pub name: String,
    pub expr: Expr,
}

#[derive(Debug, Clone)]
pub struct ResourceDecl {
    pub kind: String,
    pub name: String,
    /// The configuration it is bound to: `NAME` or `NAME.ALIAS` (see `ProviderBlock::key`).
    pub provider: String,
    pub count: Option<Expr>,
    pub for_each: Option<Expr>,
    pub depends_on: Vec<(String, Location)>,
    /// `timeouts = { create = "10m", update = "5m", delete = "5m" }`: what the block sets
    /// (the provider's defaults fill the rest at apply).
    pub timeouts: crate::step::Timeouts,
    pub attrs: IndexMap<String, Expr>,
    pub loc: Location,
    pub file: Arc<SourceFile>,
    /// Every attribute of the kind's schema (settable and computed), so references to
    /// `kind.name.ATTR` can be checked before anything is evaluated.
    pub schema_attrs: Vec<&'static str>,
}

#[derive(Debug, Clone)]
pub struct OutputDecl {
    pub name: String,
    pub expr: Expr,
    pub sensitive: bool,
    pub loc: Location,
}

#[derive(Debug, Clone)]
pub struct ModuleCall {
    pub name: String,
    pub child: usize,
    pub inputs: IndexMap<String, Expr>,
    /// Where each input's name is written, for errors about the name itself.
    pub input_keys: IndexMap<String, Location>,
    pub loc: Location,
}

const META: &[&str] = &["count", "for_each", "depends_on", "provider", "timeouts"];

/// Load a stack: a file, or a directory of `*.hcl` files, plus every module it calls.
pub fn load(path: &Path, registry: &Registry) -> Result<Config, Diagnostics> {
    let mut loader = Loader {
        registry,
        modules: Vec::new(),
        files: Vec::new(),
        diags: Diagnostics::default(),
        providers: Vec::new(),
        provider_refs: Vec::new(),
    };
    let root_path = path.to_path_buf();
    let meta = std::fs::metadata(path).map_err(|e| {
        Diagnostics::from(
            Diagnostic::new(format!("cannot read the stack {}: {e}", path.display()))
                .help("give the path of a stack file, e.g. `pipeline plan stacks/local.hcl`"),
        )
    })?;
    let (dir, files) = if meta.is_dir() {
        (
            path.to_path_buf(),
            hcl_files(path).map_err(|d| {
                Diagnostics::from(
                    d.help("give a stack file, or a directory that holds the stack's .hcl files"),
                )
            })?,
        )
    } else {
        (
            path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            vec![path.to_path_buf()],
        )
    };
    loader.load_module(&dir, &files, String::new(), None, &mut Vec::new());
    loader.check_provider_refs();
    if !loader.diags.is_empty() {
        return Err(loader.diags);
    }
    let mut h = sha2::Sha256::new();
    for f in &loader.files {
        h.update(f.path.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(f.text.as_bytes());
        h.update([0]);
    }
    Ok(Config {
        modules: loader.modules,
        files: loader.files,
        hash: lang::funcs::hex(&h.finalize()),
        root_path,
        providers: loader.providers,
    })
}

fn hcl_files(dir: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let rd = std::fs::read_dir(dir).map_err(|e| {
        Diagnostic::new(format!("cannot read the directory {}: {e}", dir.display()))
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hcl"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(
            Diagnostic::new(format!("{} has no .hcl files", dir.display()))
                .help("a module is a directory of .hcl files"),
        );
    }
    Ok(files)
}

struct Loader<'r> {
    registry: &'r Registry,
    modules: Vec<Module>,
    files: Vec<Arc<SourceFile>>,
    diags: Diagnostics,
    providers: Vec<ProviderBlock>,
    /// (configuration key, where a resource's `provider` selects it) for aliased selections,
    /// checked once every file is read (the block may be in a later file).
    provider_refs: Vec<(String, Option<Location>)>,
}

impl Loader<'_> {
    fn load_module(
        &mut self,
        dir: &Path,
        files: &[PathBuf],
        prefix: String,
        parent: Option<usize>,
        stack: &mut Vec<PathBuf>,
    ) -> usize {
        let idx = self.modules.len();
        self.modules.push(Module {
            prefix: prefix.clone(),
            parent,
            dir: dir.to_path_buf(),
            variables: IndexMap::new(),
            locals: IndexMap::new(),
            resources: IndexMap::new(),
            outputs: IndexMap::new(),
            calls: IndexMap::new(),
        });
        let mut pending_calls = Vec::new();
        for path in files {
            // A byte order mark is dropped first, so a bad byte's column counts from the text.
            let text = match std::fs::read(path).map(|mut b| {
                if b.starts_with("\u{feff}".as_bytes()) {
                    b.drain(..3);
                }
                b
            }) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(t) => t,
                    Err(e) => {
                        // Point at the first byte that is not UTF-8.
                        let at = e.utf8_error().valid_up_to();
                        let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
                        let shown = SourceFile::new(path, lossy);
                        let prefix = String::from_utf8_lossy(&e.as_bytes()[..at]).len();
                        self.diags.push(
                            Diagnostic::new(format!(
                                "cannot read {}: the file is not UTF-8 text",
                                shown.display
                            ))
                            .at(Some(shown.location(prefix..prefix + char::REPLACEMENT_CHARACTER.len_utf8())))
                            .help("save the file as UTF-8 (the marked character is in another encoding, e.g. Latin-1)"),
                        );
                        continue;
                    }
                },
                Err(e) => {
                    self.diags.push(
                        Diagnostic::new(format!("cannot read {}: {e}", display_path(path)))
                            .help("check that the file exists and is readable"),
                    );
                    continue;
                }
            };
            let file = SourceFile::new(path, text);
            self.files.push(file.clone());
            let body = match lang::parse(&file) {
                Ok(b) => b,
                Err(d) => {
                    self.diags.push(d);
                    continue;
                }
            };
            for s in body.iter() {
                match s {
                    Structure::Attribute(a) => self.diags.push(
                        Diagnostic::new(format!("`{}` cannot stand at the top level of a stack", a.key.as_str()))
                            .at(loc(&file, a.key.span()))
                            .help("put values in a `locals { ... }` block, or inside the block they belong to"),
                    ),
                    Structure::Block(b) => {
                        if let Some(call) = self.block(idx, &file, b) {
                            pending_calls.push(call);
                        }
                    }
                }
            }
        }
        for (name, (source, source_loc), (inputs, input_keys), l, file) in pending_calls {
            let child_dir = normalize(&dir.join(&source));
            let canon = child_dir.canonicalize().unwrap_or(child_dir.clone());
            if stack.contains(&canon) {
                self.diags.push(
                    Diagnostic::new(format!(
                        "module \"{name}\" includes itself through {}",
                        source
                    ))
                    .at(Some(l))
                    .help("modules cannot call themselves, directly or through other modules"),
                );
                continue;
            }
            let files = match hcl_files(&child_dir) {
                Ok(f) => f,
                Err(_) => {
                    let why = if child_dir.is_dir() {
                        "has no .hcl files"
                    } else if child_dir.exists() {
                        "is not a directory"
                    } else {
                        "does not exist"
                    };
                    self.diags.push(
                        Diagnostic::new(format!(
                            "module \"{name}\": the source directory {} {why}",
                            display_path(&child_dir)
                        ))
                        .at(source_loc.or(Some(l)))
                        .help("`source` is a directory of .hcl files, relative to the directory of the file that calls it"),
                    );
                    continue;
                }
            };
            stack.push(canon);
            let child = self.load_module(
                &child_dir,
                &files,
                format!("{prefix}module.{name}."),
                Some(idx),
                stack,
            );
            stack.pop();
            let _ = file;
            self.modules[idx].calls.insert(
                name.clone(),
                ModuleCall {
                    name,
                    child,
                    input_keys: inputs
                        .keys()
                        .filter_map(|k| Some((k.clone(), input_keys.get(k)?.clone())))
                        .collect(),
                    inputs,
                    loc: l,
                },
            );
        }
        // Inputs must name declared variables; required ones must be given.
        #[allow(clippy::type_complexity)]
        let calls: Vec<(String, usize, Vec<(String, Option<Location>)>, Location)> = self.modules
            [idx]
            .calls
            .values()
            .map(|c| {
                (
                    c.name.clone(),
                    c.child,
                    c.inputs
                        .iter()
                        .map(|(k, e)| {
                            (
                                k.clone(),
                                c.input_keys.get(k).cloned().or_else(|| e.location()),
                            )
                        })
                        .collect(),
                    c.loc.clone(),
                )
            })
            .collect();
        for (name, child, inputs, l) in calls {
            let vars = &self.modules[child].variables;
            for (k, kl) in &inputs {
                if !vars.contains_key(k) {
                    let all = names(vars.keys());
                    self.diags.push(
                        Diagnostic::new(format!("module \"{name}\" has no variable \"{k}\""))
                            .at(kl.clone())
                            .help(match did_you_mean(k, vars.keys().map(String::as_str)) {
                                Some(c) => format!("did you mean `{c}`? its variables: {all}"),
                                None => format!("its variables: {all}; declare `variable \"{k}\"` in the module to add one"),
                            }),
                    );
                }
            }
            for (vn, v) in vars {
                if v.default.is_none() && !inputs.iter().any(|(k, _)| k == vn) {
                    self.diags.push(
                        Diagnostic::new(format!(
                            "module \"{name}\" needs a value for variable \"{vn}\""
                        ))
                        .at(Some(l.clone()))
                        .help(format!(
                            "add `{vn} = ...` to the module block (declared at {})",
                            v.loc
                        )),
                    );
                }
            }
        }
        idx
    }

    #[allow(clippy::type_complexity)]
    fn block(
        &mut self,
        m: usize,
        file: &Arc<SourceFile>,
        b: &Block,
    ) -> Option<(
        String,
        (String, Option<Location>),
        (IndexMap<String, Expr>, IndexMap<String, Location>),
        Location,
        Arc<SourceFile>,
    )> {
        let kind = b.ident.as_str();
        let bloc = loc(file, b.ident.span()).unwrap_or_else(|| file.location(0..0));
        let labels: Vec<String> = b
            .labels
            .iter()
            .map(|l| match l {
                BlockLabel::Ident(i) => i.as_str().to_string(),
                BlockLabel::String(s) => s.value().to_string(),
            })
            .collect();
        let want_labels = if kind == "locals" { 0 } else { 1 };
        if !matches!(
            kind,
            "variable" | "locals" | "output" | "module" | "provider"
        ) && !self.registry.is_kind(kind)
        {
            self.diags.push(
                Diagnostic::new(format!("unknown block type `{kind}`"))
                    .at(Some(bloc))
                    .help({
                        let mut all = vec!["variable", "locals", "output", "module", "provider"];
                        all.extend(self.registry.kind_names());
                        match did_you_mean(kind, all.iter().copied()) {
                            Some(c) => {
                                format!("did you mean `{c}`? blocks available: {}", all.join(", "))
                            }
                            None => format!("blocks available: {}", all.join(", ")),
                        }
                    }),
            );
            return None;
        }
        if labels.len() != want_labels {
            let example = if want_labels == 0 {
                format!("{kind} {{ ... }}")
            } else {
                format!("{kind} \"NAME\" {{ ... }}")
            };
            self.diags.push(
                Diagnostic::new(format!(
                    "`{kind}` blocks take {want_labels} label(s), found {}",
                    labels.len()
                ))
                .at(Some(bloc))
                .help(format!("write `{example}`")),
            );
            return None;
        }
        let name = labels.first().cloned().unwrap_or_default();
        if !name.is_empty() && !valid_name(&name) {
            self.diags.push(
                Diagnostic::new(format!("invalid name \"{name}\""))
                    .at(Some(bloc))
                    .help("names start with a letter and contain letters, digits, `_` and `-`"),
            );
            return None;
        }
        let (attrs, keys) = self.attributes(file, &b.body, kind);
        let key_loc = |k: &str, e: &Expr| keys.get(k).cloned().or_else(|| e.location());
        if kind == "provider" {
            self.provider_block(m, name, attrs, keys, bloc);
            return None;
        }
        let module = &mut self.modules[m];
        match kind {
            "variable" => {
                if let Some(prev) = module.variables.get(&name) {
                    self.diags.push(dup("variable", &name, &bloc, &prev.loc));
                    return None;
                }
                let mut v = VariableDecl {
                    name: name.clone(),
                    default: None,
                    ty: None,
                    sensitive: false,
                    description: None,
                    loc: bloc,
                };
                for (k, e) in attrs {
                    match k.as_str() {
                        "default" => v.default = Some(e),
                        "type" => match parse_type(&e.expr) {
                            Some(t) => v.ty = Some(t),
                            None => self.diags.push(
                                Diagnostic::new("unknown type").at(e.location()).help(
                                    "types: string, number, bool, any, list(TYPE), map(TYPE)",
                                ),
                            ),
                        },
                        "sensitive" => {
                            v.sensitive = matches!(e.expr, Expression::Bool(ref b) if *b.value())
                        }
                        "description" => v.description = e.expr.as_str().map(str::to_string),
                        other => self.diags.push(unknown_attr(
                            other,
                            "variable",
                            &["default", "type", "sensitive", "description"],
                            key_loc(other, &e),
                        )),
                    }
                }
                if let (Some(t), Some(d)) = (&v.ty, &v.default) {
                    if let Some(Err(msg)) = constant(d).map(|c| t.convert(c)) {
                        self.diags.push(
                            Diagnostic::new(format!(
                                "the default of variable \"{name}\" does not match its type: {msg}"
                            ))
                            .at(d.location())
                            .help(format!(
                                "give a default of type {}, or change `type`",
                                t.name()
                            )),
                        );
                    }
                }
                self.modules[m].variables.insert(name, v);
            }
            "locals" => {
                for (k, e) in attrs {
                    if let Some(prev) = module.locals.get(&k) {
                        let mut d = Diagnostic::new(format!("local \"{k}\" is defined twice"))
                            .at(key_loc(&k, &e))
                            .help("give each local value one definition, or rename one of them");
                        if let Some(p) = prev.expr.location() {
                            d = d.detail(format!("first defined at {p}"));
                        }
                        self.diags.push(d);
                        continue;
                    }
                    module
                        .locals
                        .insert(k.clone(), LocalDecl { name: k, expr: e });
                }
            }
            "output" => {
                if let Some(prev) = module.outputs.get(&name) {
                    self.diags.push(dup("output", &name, &bloc, &prev.loc));
                    return None;
                }
                let mut value = None;
                let mut sensitive = false;
                for (k, e) in attrs {
                    match k.as_str() {
                        "value" => value = Some(e),
                        "sensitive" => {
                            sensitive = matches!(e.expr, Expression::Bool(ref b) if *b.value())
                        }
                        "description" => {}
                        other => self.diags.push(unknown_attr(
                            other,
                            "output",
                            &["value", "sensitive", "description"],
                            key_loc(other, &e),
                        )),
                    }
                }
                match value {
                    Some(expr) => {
                        self.modules[m].outputs.insert(
                            name.clone(),
                            OutputDecl {
                                name,
                                expr,
                                sensitive,
                                loc: bloc,
                            },
                        );
                    }
                    None => self.diags.push(
                        Diagnostic::new(format!("output \"{name}\" has no value"))
                            .at(Some(bloc))
                            .help("add `value = EXPRESSION`"),
                    ),
                }
            }
            "module" => {
                if let Some(prev) = module.calls.get(&name) {
                    self.diags.push(dup("module", &name, &bloc, &prev.loc));
                    return None;
                }
                let mut source = None;
                let mut inputs = IndexMap::new();
                for (k, e) in attrs {
                    match k.as_str() {
                        "source" => match e.expr.as_str() {
                            Some(s) => source = Some((s.to_string(), e.location())),
                            None => self.diags.push(
                                Diagnostic::new("a module source must be a literal string")
                                    .at(e.location())
                                    .help("write source = \"../modules/NAME\""),
                            ),
                        },
                        "count" | "for_each" => self.diags.push(
                            Diagnostic::new(format!("`{k}` on modules is not supported yet"))
                                .at(e.location())
                                .help("declare one module block per instance"),
                        ),
                        _ => {
                            inputs.insert(k, e);
                        }
                    }
                }
                let Some(source) = source else {
                    self.diags.push(
                        Diagnostic::new(format!("module \"{name}\" has no source"))
                            .at(Some(bloc))
                            .help("add source = \"../modules/NAME\""),
                    );
                    return None;
                };
                return Some((name, source, (inputs, keys.clone()), bloc, file.clone()));
            }
            _ => {
                let key = format!("{kind}.{name}");
                if let Some(prev) = module.resources.get(&key) {
                    self.diags.push(dup(kind, &name, &bloc, &prev.loc));
                    return None;
                }
                let provider = attrs
                    .get("provider")
                    .map(|e| (provider_selection(&e.expr), e.location()));
                let provider = match provider {
                    None => None,
                    Some((Some(p), l)) => {
                        if p.contains('.') {
                            self.provider_refs.push((p.clone(), l.clone()));
                        }
                        if self.registry.schema(kind, Some(&p)).is_none() {
                            self.diags.push(
                                Diagnostic::new(format!(
                                    "provider \"{p}\" does not serve `{kind}` blocks"
                                ))
                                .at(l)
                                .help(format!(
                                    "providers for {kind}: {}",
                                    self.registry.providers_of(kind).join(", ")
                                )),
                            );
                            return None;
                        }
                        Some(p)
                    }
                    Some((None, l)) => {
                        self.diags.push(
                            Diagnostic::new("`provider` must name a provider configuration")
                                .at(l)
                                .help("write provider = local (or \"local\"), or provider = local.ALIAS for a `provider \"local\" { alias = \"ALIAS\" }` block"),
                        );
                        return None;
                    }
                };
                let (pname, schema) = self.registry.schema(kind, provider.as_deref())?;
                // The configuration key: the provider's name, with the alias selected.
                let pname = match provider.as_deref().and_then(|p| p.split_once('.')) {
                    Some((_, alias)) => format!("{pname}.{alias}"),
                    None => pname.to_string(),
                };
                let mut r = ResourceDecl {
                    kind: kind.to_string(),
                    name: name.clone(),
                    provider: pname.clone(),
                    count: None,
                    for_each: None,
                    depends_on: Vec::new(),
                    timeouts: Default::default(),
                    attrs: IndexMap::new(),
                    loc: bloc.clone(),
                    file: file.clone(),
                    schema_attrs: schema.attrs.iter().map(|a| a.name).collect(),
                };
                for (k, e) in attrs {
                    match k.as_str() {
                        "provider" => {}
                        "count" => r.count = Some(e),
                        "for_each" => r.for_each = Some(e),
                        "timeouts" => r.timeouts = self.timeouts(file, &e),
                        "depends_on" => match &e.expr {
                            Expression::Array(a) => {
                                for x in a.iter() {
                                    match static_address(x) {
                                        Some(addr) => r.depends_on.push((addr, loc(file, x.span()).unwrap_or(bloc.clone()))),
                                        None => self.diags.push(
                                            Diagnostic::new("depends_on entries must be references like service.web")
                                                .at(loc(file, x.span()))
                                                .help("write depends_on = [KIND.NAME, ...]"),
                                        ),
                                    }
                                }
                            }
                            _ => self.diags.push(
                                Diagnostic::new("depends_on must be a list")
                                    .at(e.location())
                                    .help("write depends_on = [KIND.NAME, ...]"),
                            ),
                        },
                        other => match schema.attr(other) {
                            Some(a) if a.settable() => {
                                if Some(other) == schema.instances_attr {
                                    r.count = Some(e.clone());
                                }
                                r.attrs.insert(k, e);
                            }
                            Some(_) => self.diags.push(
                                Diagnostic::new(format!("`{other}` of a {kind} is set by the provider and cannot be written"))
                                    .at(key_loc(other, &e))
                                    .help(format!("remove it; read it elsewhere as {kind}.{name}.{other}")),
                            ),
                            None => {
                                let mut known: Vec<&str> = schema.attrs.iter().filter(|a| a.settable()).map(|a| a.name).collect();
                                known.extend(META);
                                self.diags.push(unknown_attr(other, kind, &known, key_loc(other, &e)));
                            }
                        },
                    }
                }
                if r.count.is_some() && r.for_each.is_some() {
                    self.diags.push(
                        Diagnostic::new(format!("{kind}.{name} sets both count and for_each"))
                            .at(Some(bloc.clone()))
                            .help("use one of them"),
                    );
                }
                for a in schema.attrs.iter().filter(|a| a.required) {
                    if !r.attrs.contains_key(a.name) {
                        self.diags.push(
                            Diagnostic::new(format!(
                                "{kind}.{name} is missing the required attribute `{}`",
                                a.name
                            ))
                            .at(Some(bloc.clone()))
                            .help(format!(
                                "add `{} = ...` ({})",
                                a.name,
                                a.ty.name()
                            )),
                        );
                    }
                }
                self.modules[m].resources.insert(key, r);
            }
        }
        None
    }

    /// A `provider "NAME" { ... }` block: known provider, root stack only, distinct aliases,
    /// settings from the provider's `config_schema`. Values are evaluated per run (configure).
    fn provider_block(
        &mut self,
        m: usize,
        name: String,
        mut attrs: IndexMap<String, Expr>,
        keys: IndexMap<String, Location>,
        bloc: Location,
    ) {
        let Some(p) = self.registry.registered(&name) else {
            let all = self.registry.provider_names();
            self.diags.push(
                Diagnostic::new(format!("unknown provider \"{name}\""))
                    .at(Some(bloc))
                    .help(match did_you_mean(&name, all.iter().copied()) {
                        Some(c) => format!("did you mean \"{c}\"? providers: {}", all.join(", ")),
                        None => format!("providers: {}", all.join(", ")),
                    }),
            );
            return;
        };
        if m != 0 {
            self.diags.push(
                Diagnostic::new(format!("provider \"{name}\" is configured inside a module"))
                    .at(Some(bloc))
                    .help("put `provider` blocks in the root stack; resources in modules select them the same way (provider = NAME or NAME.ALIAS)"),
            );
            return;
        }
        let alias = match attrs.shift_remove("alias") {
            None => None,
            Some(e) => match e.expr.as_str() {
                Some(a) if valid_name(a) => Some(a.to_string()),
                _ => {
                    self.diags.push(
                        Diagnostic::new("`alias` must be a literal name")
                            .at(e.location())
                            .help("write alias = \"west\" (letters, digits, `_` and `-`), then select it with provider = NAME.west"),
                    );
                    return;
                }
            },
        };
        let block = ProviderBlock {
            name: name.clone(),
            alias,
            attrs: IndexMap::new(),
            keys: keys.clone(),
            loc: bloc.clone(),
        };
        if let Some(prev) = self.providers.iter().find(|b| b.key() == block.key()) {
            let (summary, help) = match &block.alias {
                None => (
                    format!("provider \"{name}\" is configured twice without an alias"),
                    format!("give the extra configuration a distinct alias (alias = \"west\") and select it in resources with provider = {name}.west"),
                ),
                Some(a) => (
                    format!("provider \"{name}\" has two configurations with the alias \"{a}\""),
                    "give each configuration of a provider a distinct alias".to_string(),
                ),
            };
            self.diags.push(
                Diagnostic::new(summary)
                    .at(Some(bloc))
                    .detail(format!("first configured at {}", prev.loc))
                    .help(help),
            );
            return;
        }
        let schema = p.config_schema();
        let mut settings = IndexMap::new();
        for (k, e) in attrs.drain(..) {
            match schema.iter().find(|a| a.name == k) {
                Some(a) if a.settable() => {
                    settings.insert(k, e);
                }
                _ => {
                    let mut known: Vec<&str> = schema
                        .iter()
                        .filter(|a| a.settable())
                        .map(|a| a.name)
                        .collect();
                    known.push("alias");
                    let at = keys.get(&k).cloned().or_else(|| e.location());
                    self.diags.push(unknown_attr(
                        &k,
                        &format!("provider \"{name}\""),
                        &known,
                        at,
                    ));
                }
            }
        }
        self.providers.push(ProviderBlock {
            attrs: settings,
            ..block
        });
    }

    /// Every `provider = NAME.ALIAS` names a declared configuration.
    fn check_provider_refs(&mut self) {
        for (key, at) in std::mem::take(&mut self.provider_refs) {
            if self.providers.iter().any(|b| b.key() == key) {
                continue;
            }
            let (name, alias) = key.split_once('.').unwrap_or((&key, ""));
            let declared: Vec<String> = self
                .providers
                .iter()
                .filter(|b| b.name == name)
                .map(ProviderBlock::key)
                .collect();
            let mut help = format!(
                "declare it in the root stack: provider \"{name}\" {{ alias = \"{alias}\" }}"
            );
            if !declared.is_empty() {
                help = format!("{help}; declared for {name}: {}", declared.join(", "));
            }
            self.diags.push(
                Diagnostic::new(format!(
                    "no configuration of provider \"{name}\" has the alias \"{alias}\""
                ))
                .at(at)
                .help(help),
            );
        }
    }

    fn attributes(
        &mut self,
        file: &Arc<SourceFile>,
        body: &Body,
        kind: &str,
    ) -> (IndexMap<String, Expr>, IndexMap<String, Location>) {
        let mut out: IndexMap<String, Expr> = IndexMap::new();
        let mut keys: IndexMap<String, Location> = IndexMap::new();
        for s in body.iter() {
            match s {
                Structure::Attribute(a) => {
                    let k = a.key.as_str().to_string();
                    if out.contains_key(&k) {
                        self.diags.push(
                            Diagnostic::new(format!("`{k}` is set twice in this {kind} block"))
                                .at(loc(file, a.key.span()))
                                .help("keep one of them"),
                        );
                        continue;
                    }
                    if let Some(l) = loc(file, a.key.span()) {
                        keys.insert(k.clone(), l);
                    }
                    out.insert(
                        k,
                        Expr {
                            file: file.clone(),
                            expr: a.value.clone(),
                        },
                    );
                }
                Structure::Block(b) => self.diags.push(
                    Diagnostic::new(format!("nested blocks are not used in `{kind}` blocks"))
                        .at(loc(file, b.ident.span()))
                        .help(format!(
                            "write it as an attribute: {} = {{ ... }}",
                            b.ident.as_str()
                        )),
                ),
            }
        }
        (out, keys)
    }
}

impl Loader<'_> {
    /// The `timeouts` meta-argument: an object of literal durations under known keys; every
    /// mistake is a diagnostic at the value.
    fn timeouts(&mut self, file: &SourceFile, e: &Expr) -> crate::step::Timeouts {
        use crate::step::{parse_duration, Timeouts};
        use hcl_edit::expr::ObjectKey;
        let mut out = Timeouts::default();
        let help = "write timeouts = { create = \"10m\", update = \"5m\", delete = \"5m\" } (durations: digits with ms, s, m, h or d)";
        let Expression::Object(o) = &e.expr else {
            self.diags.push(
                Diagnostic::new("`timeouts` must be an object of durations")
                    .at(e.location())
                    .help(help),
            );
            return out;
        };
        for (k, v) in o.iter() {
            let key = match k {
                ObjectKey::Ident(i) => Some(i.as_str().to_string()),
                ObjectKey::Expression(Expression::String(s)) => Some(s.value().to_string()),
                ObjectKey::Expression(Expression::Variable(v)) => Some(v.as_str().to_string()),
                ObjectKey::Expression(_) => None,
            };
            let Some(key) = key.clone().filter(|k| Timeouts::KEYS.contains(&k.as_str())) else {
                let written = key.unwrap_or_else(|| "this key".into());
                self.diags.push(
                    Diagnostic::new(format!(
                        "`timeouts` has no `{written}`: it takes create, update and delete"
                    ))
                    .at(loc(file, k.span()))
                    .help(help),
                );
                continue;
            };
            let value = match v.expr() {
                Expression::String(s) => Some(s.value().to_string()),
                _ => None,
            };
            match value.as_deref().and_then(parse_duration) {
                Some(d) if !d.is_zero() => {
                    out.set(&key, d);
                }
                _ => self.diags.push(
                    Diagnostic::new(format!(
                        "timeouts.{key} is not a duration{}",
                        value
                            .map(|v| format!(": {v:?}"))
                            .unwrap_or_else(|| " written as a literal string".into())
                    ))
                    .at(loc(file, v.expr().span()))
                    .help(help),
                ),
            }
        }
        out
    }
}

fn loc(file: &SourceFile, span: Option<std::ops::Range<usize>>) -> Option<Location> {
    span.map(|s| file.location(s))
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn dup(kind: &str, name: &str, here: &Location, prev: &Location) -> Diagnostic {
    Diagnostic::new(format!("{kind} \"{name}\" is declared twice"))
        .at(Some(here.clone()))
        .detail(format!("first declared at {prev}"))
        .help("names must be unique per block type within a module; rename one of them")
}

fn unknown_attr(name: &str, kind: &str, known: &[&str], at: Option<Location>) -> Diagnostic {
    let help = match did_you_mean(name, known.iter().copied()) {
        Some(c) => format!(
            "did you mean `{c}`? attributes of {kind}: {}",
            known.join(", ")
        ),
        None => format!("attributes of {kind}: {}", known.join(", ")),
    };
    Diagnostic::new(format!("unknown attribute `{name}` in a {kind} block"))
        .at(at)
        .help(help)
}

/// `a/b/../c` → `a/c`, without touching the file system (so paths stay as the user wrote them).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            c => out.push(c.as_os_str()),
        }
    }
    out
}

/// The value of an expression that refers to nothing (a literal default), or None.
fn constant(e: &Expr) -> Option<crate::value::Value> {
    struct NoRefs;
    impl lang::Resolve for NoRefs {
        fn lookup(&self, _: &str, _: &str) -> Result<crate::value::Value, lang::LookupError> {
            Err(lang::LookupError::new("not a constant", None))
        }
        fn base_dir(&self) -> &Path {
            Path::new(".")
        }
    }
    if !lang::references(&e.expr).is_empty() || has_call(&e.expr) {
        return None;
    }
    lang::Evaluator::new(&e.file, &NoRefs).eval(&e.expr).ok()
}

/// Whether an expression calls a function (calls may read files; constants do not).
fn has_call(e: &Expression) -> bool {
    match e {
        Expression::FuncCall(_) => true,
        Expression::Array(a) => a.iter().any(has_call),
        Expression::Object(o) => o.iter().any(|(_, v)| has_call(v.expr())),
        Expression::Parenthesis(p) => has_call(p.inner()),
        Expression::UnaryOp(u) => has_call(&u.expr),
        Expression::BinaryOp(b) => has_call(&b.lhs_expr) || has_call(&b.rhs_expr),
        Expression::Conditional(c) => {
            has_call(&c.cond_expr) || has_call(&c.true_expr) || has_call(&c.false_expr)
        }
        Expression::Null(_)
        | Expression::Bool(_)
        | Expression::Number(_)
        | Expression::String(_) => false,
        _ => true,
    }
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == '-')
}

fn parse_type(e: &Expression) -> Option<Type> {
    match e {
        Expression::Variable(v) => match v.as_str() {
            "string" => Some(Type::String),
            "number" => Some(Type::Number),
            "bool" => Some(Type::Bool),
            "any" => Some(Type::Any),
            "list" => Some(Type::List(Box::new(Type::Any))),
            "map" | "object" => Some(Type::Map(Box::new(Type::Any))),
            _ => None,
        },
        Expression::FuncCall(f) => {
            let inner = f.args.iter().next().and_then(parse_type)?;
            match f.name.name.as_str() {
                "list" | "set" => Some(Type::List(Box::new(inner))),
                "map" => Some(Type::Map(Box::new(inner))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// What a resource's `provider` selects: `local`, `local.west` (as Terraform writes them), or
/// the same as a string (`"local"`, `"local.west"`). None: not a provider selection.
fn provider_selection(e: &Expression) -> Option<String> {
    let text = match e {
        Expression::Variable(v) => v.as_str().to_string(),
        Expression::Traversal(_) => static_address(e)?,
        e => e.as_str()?.to_string(),
    };
    let ok = match text.split_once('.') {
        Some((n, a)) => valid_name(n) && valid_name(a),
        None => valid_name(&text),
    };
    ok.then_some(text)
}

/// `service.web` in depends_on → "service.web".
fn static_address(e: &Expression) -> Option<String> {
    let Expression::Traversal(t) = e else {
        return None;
    };
    let Expression::Variable(root) = &t.expr else {
        return None;
    };
    let mut parts = vec![root.as_str().to_string()];
    for op in &t.operators {
        match op.value() {
            TraversalOperator::GetAttr(i) => parts.push(i.as_str().to_string()),
            _ => return None,
        }
    }
    (parts.len() == 2).then(|| parts.join("."))
}
