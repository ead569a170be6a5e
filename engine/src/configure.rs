//! Provider configuration: the `provider "NAME" { ... }` blocks of a stack evaluated once per
//! run, typed against each provider's `config_schema`, and handed to `Provider::configure`
//! before anything is read or planned. The result is a registry whose lookups answer the
//! configured instances (`NAME` or `NAME.ALIAS`).
//!
//! Nothing of a block is recorded: not in the state (records name only the configuration key),
//! not in the journal, not in a plan. A saved plan is applied by configuring again from the same
//! stack (its hash is checked) and the plan's variables; credentials a block leaves out come from
//! the provider's own sources (environment, files) at each run.

use crate::config::{describe_provider, Config, ProviderBlock};
use crate::diag::{Diagnostic, Diagnostics, Location};
use crate::provider::{provider_name, AttrSchema, Invalid, Provider, Registry, Type};
use crate::state::State;
use crate::value::{Value, ValueMap};
use crate::world::World;
use indexmap::IndexMap;
use std::sync::Arc;

/// Configure every provider configuration this run uses: each block of the stack, each provider
/// a resource selects without a block, each configuration the state's records name (they are
/// read and may be deleted). `configure` is called once per configuration, in the order of the
/// blocks, then the rest by name. Returns the configured registry, or every problem found.
pub fn configure(
    config: &Config,
    registry: &Registry,
    variables: &IndexMap<String, Value>,
    state: &State,
) -> Result<Registry, Diagnostics> {
    configure_with(config, registry, variables, state, &[])
}

/// `configure`, with settings given on the command line (`-i FILE`: `("inventory", path)`):
/// each is set in every configuration whose provider's `config_schema` has that setting,
/// over what a block says. Relative paths in settings are resolved by the provider against
/// the root stack's directory (`Provider::configure_in`); a caller passes absolute ones.
pub fn configure_with(
    config: &Config,
    registry: &Registry,
    variables: &IndexMap<String, Value>,
    state: &State,
    overrides: &[(String, Value)],
) -> Result<Registry, Diagnostics> {
    let stack_dir = match config.modules.first().map(|m| m.dir.clone()) {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::PathBuf::from("."),
    };
    let stack_dir = stack_dir.canonicalize().unwrap_or(stack_dir);
    let overridden = |schema: &[AttrSchema], mut values: ValueMap| {
        for (name, v) in overrides {
            if let Some(a) = schema.iter().find(|a| a.name == name) {
                values.insert(name.clone(), v.clone().mark(a.sensitive));
            }
        }
        values
    };
    let world = World::new(config, variables.clone());
    let mut diags = Diagnostics::default();
    let mut out: Vec<(String, Arc<dyn Provider>)> = Vec::new();
    // Configurations used without a block (key → first resource or record using it).
    let mut used: IndexMap<String, String> = IndexMap::new();
    for m in &config.modules {
        for (key, r) in &m.resources {
            used.entry(r.provider.clone())
                .or_insert_with(|| format!("{}{key}", m.prefix));
        }
    }
    for (addr, rs) in &state.resources {
        used.entry(rs.provider.clone())
            .or_insert_with(|| addr.clone());
    }
    for b in &config.providers {
        let Some(p) = registry.registered(&b.name) else {
            continue; // reported at load
        };
        match settings(&world, b, &p.config_schema()) {
            Ok(values) => match p.configure_in(&stack_dir, &overridden(&p.config_schema(), values))
            {
                Ok(c) => out.push((b.key(), c.unwrap_or_else(|| p.clone()))),
                Err(inv) => {
                    for i in inv {
                        diags.push(invalid(&b.key(), Some(b), &p.config_schema(), i));
                    }
                }
            },
            Err(d) => d.0.into_iter().for_each(|d| diags.push(d)),
        }
    }
    for (key, user) in used {
        if out.iter().any(|(k, _)| *k == key) || config.providers.iter().any(|b| b.key() == key) {
            continue;
        }
        if key.contains('.') {
            // Only records can name an alias no block declares (load checks resources).
            diags.push(
                Diagnostic::new(format!(
                    "{user} is managed by {}, which the stack no longer configures",
                    describe_provider(&key)
                ))
                .help(format!(
                    "keep the block `provider \"{}\" {{ alias = \"{}\" ... }}` until what it manages is destroyed, or `pipeline state rm {user}`",
                    provider_name(&key),
                    key.split_once('.').map_or("", |(_, a)| a)
                )),
            );
            continue;
        }
        let Some(p) = registry.registered(&key) else {
            continue; // refresh reports a record of a provider this binary does not have
        };
        let schema = p.config_schema();
        let mut values = ValueMap::new();
        let mut missing = false;
        for a in &schema {
            match &a.default {
                Some(d) => {
                    values.insert(a.name.to_string(), d.clone().mark(a.sensitive));
                }
                None if a.required => {
                    missing = true;
                    diags.push(missing_setting(&key, None, a, &user));
                }
                None => {}
            }
        }
        let values = overridden(&schema, values);
        if missing {
            continue;
        }
        match p.configure_in(&stack_dir, &values) {
            Ok(c) => out.push((key, c.unwrap_or_else(|| p.clone()))),
            Err(inv) => {
                for i in inv {
                    let mut d = invalid(&key, None, &schema, i);
                    d.detail = Some(format!("used by {user}"));
                    diags.push(d);
                }
            }
        }
    }
    let world_diags = world.diags.borrow().clone();
    for d in world_diags {
        diags.push(d);
    }
    diags.into_result()?;
    Ok(registry.with_configured(out))
}

/// The settings of one block: evaluated, typed, format-checked, defaulted, marked sensitive.
fn settings(
    world: &World<'_>,
    b: &ProviderBlock,
    schema: &[AttrSchema],
) -> Result<ValueMap, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut out = ValueMap::new();
    let scope = world.scope(0);
    let what = b.describe();
    for a in schema.iter().filter(|a| a.settable()) {
        let v = match b.attrs.get(a.name) {
            Some(e) => {
                if let Some(d) = refers_to_resources(world, e) {
                    diags.push(d.help(format!(
                        "{what} is configured before anything is planned: use variables, locals and functions only"
                    )));
                    continue;
                }
                let v = match world.eval(&scope, e) {
                    Ok(v) => v,
                    Err(d) => {
                        diags.push(d);
                        continue;
                    }
                };
                let v = match a.ty.convert(v) {
                    Ok(v) => v,
                    Err(msg) => {
                        diags.push(
                            Diagnostic::new(format!(
                                "wrong type for `{}` of {what}: {msg}",
                                a.name
                            ))
                            .at(e.location())
                            .help(format!(
                                "`{}` takes a value of type {}",
                                a.name,
                                a.ty.name()
                            )),
                        );
                        continue;
                    }
                };
                if !known(&v) {
                    diags.push(
                        Diagnostic::new(format!("`{}` of {what} is not known before apply", a.name))
                            .at(e.location())
                            .help("provider settings are needed before planning: use variables, locals and functions only"),
                    );
                    continue;
                }
                for bad in crate::format::check_rules(&a.formats, &v) {
                    let at = crate::format::span_of(&e.expr, &bad.path, bad.is_key)
                        .map(|r| e.file.location(r))
                        .or_else(|| e.location());
                    diags.push(
                        Diagnostic::new(format!(
                            "{} of {what} is not {}: {} ({})",
                            bad.describe(a.name),
                            bad.format.noun(),
                            bad.shown,
                            bad.reason
                        ))
                        .at(at)
                        .help(bad.format.help()),
                    );
                }
                v
            }
            None => match &a.default {
                Some(d) => d.clone(),
                None if a.required => {
                    diags.push(missing_setting(&b.key(), Some(b), a, ""));
                    continue;
                }
                None => continue,
            },
        };
        if a.required && matches!(v, Value::Null) {
            diags.push(
                Diagnostic::new(format!("`{}` of {what} must not be null", a.name))
                    .at(b.attrs.get(a.name).and_then(|e| e.location()))
                    .help(format!("give it a {} value", a.ty.name())),
            );
            continue;
        }
        out.insert(a.name.to_string(), v.mark(a.sensitive));
    }
    diags.into_result().map(|_| out)
}

/// A reference to a resource (or module output) in a provider setting, as an error.
fn refers_to_resources(world: &World<'_>, e: &crate::lang::Expr) -> Option<Diagnostic> {
    let root = &world.config.modules[0];
    for r in crate::lang::references(&e.expr) {
        let ok = match r.root.as_str() {
            "var" => r
                .name
                .as_ref()
                .is_some_and(|n| root.variables.contains_key(n)),
            "local" => r.name.as_ref().is_some_and(|n| root.locals.contains_key(n)),
            "path" => true,
            _ => false,
        };
        if !ok {
            let shown = match &r.name {
                Some(n) => format!("{}.{n}", r.root),
                None => r.root.clone(),
            };
            let what = match r.root.as_str() {
                "var" => "an undeclared variable",
                "local" => "an undefined local value",
                _ => "something that is not a variable, local value or path",
            };
            return Some(
                Diagnostic::new(format!("a provider setting refers to {what}: `{shown}`"))
                    .at(r.span.map(|s| e.file.location(s)).or_else(|| e.location())),
            );
        }
    }
    None
}

fn known(v: &Value) -> bool {
    match v {
        Value::Unknown => false,
        Value::Sensitive(v) => known(v),
        Value::List(l) => l.iter().all(known),
        Value::Map(m) => m.values().all(known),
        _ => true,
    }
}

/// An example value of a type, for the HCL a help line shows.
fn example(ty: &Type) -> &'static str {
    match ty {
        Type::String | Type::Any => "\"...\"",
        Type::Number => "0",
        Type::Bool => "true",
        Type::List(_) => "[...]",
        Type::Map(_) => "{ ... }",
    }
}

/// The block to write (or to add a line to) for a setting: `provider "fake" { token = "..." }`.
fn hcl_for(key: &str, attr: &str, ty: &Type) -> String {
    let alias = match key.split_once('.') {
        Some((_, a)) => format!("alias = \"{a}\", "),
        None => String::new(),
    };
    format!(
        "provider \"{}\" {{ {alias}{attr} = {} }}",
        provider_name(key),
        example(ty)
    )
}

fn missing_setting(
    key: &str,
    block: Option<&ProviderBlock>,
    a: &AttrSchema,
    user: &str,
) -> Diagnostic {
    let what = describe_provider(key);
    let d = Diagnostic::new(format!("{what} needs the setting `{}`", a.name))
        .at(block.map(|b| b.loc.clone()))
        .help(format!(
            "write it in the stack: {}",
            hcl_for(key, a.name, &a.ty)
        ));
    if user.is_empty() {
        d
    } else {
        d.detail(format!("used by {user}"))
    }
}

/// What `configure` rejected, at the setting it names (or the block), with its help and, when
/// the setting is not written in the block, the HCL that adds it.
fn invalid(
    key: &str,
    block: Option<&ProviderBlock>,
    schema: &[AttrSchema],
    i: Invalid,
) -> Diagnostic {
    let what = describe_provider(key);
    let at: Option<Location> = match (block, &i.attr) {
        (Some(b), Some(a)) => b
            .keys
            .get(a)
            .cloned()
            .or_else(|| b.attrs.get(a).and_then(|e| e.location()))
            .or_else(|| Some(b.loc.clone())),
        (Some(b), None) => Some(b.loc.clone()),
        (None, _) => None,
    };
    let mut help = i.help;
    if let Some(a) = &i.attr {
        let written = block.is_some_and(|b| b.attrs.contains_key(a));
        if !written {
            let ty = schema
                .iter()
                .find(|s| s.name == a)
                .map_or(Type::String, |s| s.ty.clone());
            let hcl = hcl_for(key, a, &ty);
            help = if help.is_empty() {
                format!("write it in the stack: {hcl}")
            } else {
                format!("{help}; or write it in the stack: {hcl}")
            };
        }
    }
    let summary = match &i.attr {
        Some(a) => format!("{what}, setting `{a}`: {}", i.message),
        None => format!("{what}: {}", i.message),
    };
    let d = Diagnostic::new(summary).at(at);
    if help.is_empty() {
        d
    } else {
        d.help(help)
    }
}
