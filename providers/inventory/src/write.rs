//! Writing an `inventory.ini`: groups in name order (`all` first), each group's hosts in the
//! order added, a host's variables on its first line only, and every value spelled so that
//! ansible-core (and this crate's parser) reads back exactly the value written.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use crate::parse::is_line_break;
use crate::{lex, pattern, Host, Inventory};

/// A name or value the writer cannot put into an inventory as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WriteError {
    pub message: String,
}

fn write_error(message: String) -> WriteError {
    WriteError { message }
}

#[derive(Debug, Clone, Default)]
struct WGroup {
    hosts: Vec<String>,
    members: HashSet<String>,
    children: Vec<String>,
    vars: BTreeMap<String, Value>,
}

/// Builds an inventory from hosts grouped by role (for `pipeline inventory`), or from a parsed
/// `Inventory` (`Inventory::to_ini`).
#[derive(Debug, Clone, Default)]
pub struct InventoryWriter {
    groups: BTreeMap<String, WGroup>,
    host_vars: BTreeMap<String, BTreeMap<String, Value>>,
    errors: Vec<WriteError>,
}

/// A name ansible accepts as a group without a warning: letters, digits and `_`, not starting
/// with a digit; anything else becomes `_` (`web-api` → `web_api`, `1st` → `_1st`).
pub fn safe_group_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

impl InventoryWriter {
    pub fn new() -> InventoryWriter {
        InventoryWriter::default()
    }

    fn group_mut(&mut self, group: &str) -> &mut WGroup {
        let bad = group.is_empty()
            || group
                .contains(|c: char| c.is_whitespace() || matches!(c, ':' | '[' | ']' | '#' | ';'));
        if bad {
            self.errors.push(write_error(format!(
                "'{group}' is no group name an inventory can hold: no spaces, ':', '[', ']', '#' or ';' (safe_group_name gives '{}')",
                safe_group_name(group)
            )));
        }
        self.groups.entry(group.to_string()).or_default()
    }

    /// Declares a group (written even with no hosts, so `:children` entries resolve).
    pub fn group(&mut self, group: &str) -> &mut Self {
        self.group_mut(group);
        self
    }

    /// Lists `name` in `group` with these host variables. A host may be in many groups; its
    /// variables are one set, so two different values for one variable are an error.
    pub fn host(&mut self, group: &str, name: &str, vars: BTreeMap<String, Value>) -> &mut Self {
        let ok_name = pattern::expand(name)
            .is_ok_and(|(names, port)| names == [name] && port.is_none())
            && matches!(lex::split(name).as_deref(), Ok([w]) if w.text == name)
            && !name.starts_with(['[', ';', '#']);
        if !ok_name {
            self.errors.push(write_error(format!(
                "'{name}' is no host name an inventory can hold as it is (no spaces, quotes, ranges or :port)"
            )));
        }
        let g = self.group_mut(group);
        if g.members.insert(name.to_string()) {
            g.hosts.push(name.to_string());
        }
        let mut conflicts = Vec::new();
        let mine = self.host_vars.entry(name.to_string()).or_default();
        for (k, v) in vars {
            match mine.get(&k) {
                Some(old) if *old != v => conflicts.push(format!(
                    "host '{name}' is given {k}={v} and {k}={old}: a host has one value per variable"
                )),
                _ => {
                    mine.insert(k, v);
                }
            }
        }
        self.errors.extend(conflicts.into_iter().map(write_error));
        self
    }

    /// Lists a host with its connection settings as `ansible_*` variables (`ansible_host` when
    /// the address is not the name), and its other variables as they are.
    pub fn add_host(&mut self, group: &str, host: &Host) -> &mut Self {
        let mut vars = host.vars.clone();
        for alias in [
            "ansible_ssh_host",
            "ansible_ssh_port",
            "ansible_ssh_user",
            "ansible_private_key_file",
        ] {
            vars.remove(alias);
        }
        let mut set = |k: &str, v: Option<Value>| match v {
            Some(v) => {
                vars.insert(k.to_string(), v);
            }
            None => {
                vars.remove(k);
            }
        };
        set(
            "ansible_host",
            (host.address != host.name).then(|| Value::from(host.address.clone())),
        );
        set("ansible_port", host.port.map(Value::from));
        set("ansible_user", host.user.clone().map(Value::from));
        set(
            "ansible_ssh_private_key_file",
            host.key_file.clone().map(Value::from),
        );
        set("ansible_become", host.become_.then_some(Value::Bool(true)));
        self.host(group, &host.name, vars)
    }

    /// Makes `child` a child group of `parent`.
    pub fn child(&mut self, parent: &str, child: &str) -> &mut Self {
        self.group_mut(child);
        let p = self.group_mut(parent);
        if !p.children.iter().any(|c| c == child) {
            p.children.push(child.to_string());
        }
        self
    }

    /// Sets a group variable (`all` for every host).
    pub fn group_var(&mut self, group: &str, key: &str, value: Value) -> &mut Self {
        self.group_mut(group).vars.insert(key.to_string(), value);
        self
    }

    /// The inventory text.
    pub fn to_ini(&self) -> Result<String, WriteError> {
        if let Some(e) = self.errors.first() {
            return Err(e.clone());
        }
        let mut order: Vec<&String> = self.groups.keys().filter(|g| *g != "all").collect();
        if let Some((all, _)) = self.groups.get_key_value("all") {
            order.insert(0, all);
        }
        let mut out = String::new();
        let mut written: HashSet<&str> = HashSet::new();
        for name in order {
            let g = &self.groups[name];
            if name != "all" || !g.hosts.is_empty() {
                out.push_str(&format!("[{name}]\n"));
            }
            for h in &g.hosts {
                out.push_str(h);
                if written.insert(h) {
                    for (k, v) in self.host_vars.get(h).into_iter().flatten() {
                        out.push(' ');
                        out.push_str(&host_var(k, v)?);
                    }
                }
                out.push('\n');
            }
            if !g.children.is_empty() {
                out.push_str(&format!("\n[{name}:children]\n"));
                for c in &g.children {
                    out.push_str(c);
                    out.push('\n');
                }
            }
            if !g.vars.is_empty() {
                out.push_str(&format!("\n[{name}:vars]\n"));
                for (k, v) in &g.vars {
                    out.push_str(&group_var(k, v)?);
                    out.push('\n');
                }
            }
            out.push('\n');
        }
        // No blank line first, one newline last.
        while out.ends_with("\n\n") {
            out.pop();
        }
        Ok(out.trim_start_matches('\n').to_string())
    }
}

fn check_key(k: &str) -> Result<(), WriteError> {
    let bad = k.is_empty()
        || k.starts_with(';')
        || k.contains(|c: char| c.is_whitespace() || matches!(c, '=' | '#' | '\'' | '"' | '\\'));
    if bad {
        Err(write_error(format!(
            "'{k}' is no variable name an inventory can hold: use letters, digits and '_'"
        )))
    } else {
        Ok(())
    }
}

/// `key=value` on a host line: a word that shlex splitting and literal reading give back as
/// `value`.
fn host_var(k: &str, v: &Value) -> Result<String, WriteError> {
    check_key(k)?;
    let word = match v {
        Value::String(s) if lex::value(s) == *v && !s.chars().any(is_line_break) => {
            let bare = matches!(lex::split(s).as_deref(), Ok([w]) if w.text == *s && w.start == 0);
            if bare && !s.is_empty() {
                s.clone()
            } else {
                format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
            }
        }
        Value::Number(_) | Value::Bool(_) | Value::Null => python(v),
        // A Python literal, inside shell single quotes (it holds no `'`).
        _ => format!("'{}'", python(v)),
    };
    let line = format!("{k}={word}");
    let back = lex::split(&line)
        .ok()
        .and_then(|w| (w.len() == 1).then(|| w[0].text.clone()))
        .and_then(|t| t.split_once('=').map(|(_, v)| lex::value(v)));
    if back.as_ref() != Some(v) {
        return Err(write_error(format!(
            "{k}={v} cannot be written so that it reads back the same"
        )));
    }
    Ok(line)
}

/// `key=value` in a `:vars` section, where the value is the rest of the line, trimmed.
fn group_var(k: &str, v: &Value) -> Result<String, WriteError> {
    check_key(k)?;
    let text = match v {
        Value::String(s)
            if !s.is_empty()
                && s.trim() == s
                && lex::value(s) == *v
                && !s.chars().any(is_line_break) =>
        {
            s.clone()
        }
        _ => python(v),
    };
    if lex::value(text.trim()) != *v {
        return Err(write_error(format!(
            "{k}={v} cannot be written so that it reads back the same"
        )));
    }
    Ok(format!("{k}={text}"))
}

/// The Python literal of a value, with no `'` and no line break in it.
fn python(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            // Debug keeps a `.0` or an exponent, so Python reads a float back.
            (_, _, Some(f)) => format!("{f:?}"),
            _ => n.to_string(),
        },
        Value::String(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\'' => out.push_str("\\x27"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c.is_control() || is_line_break(c) => {
                        let n = c as u32;
                        if n < 0x100 {
                            out.push_str(&format!("\\x{n:02x}"));
                        } else {
                            out.push_str(&format!("\\u{n:04x}"));
                        }
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(python).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", python(&Value::String(k.clone())), python(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

impl Inventory {
    /// This inventory as INI text that reads back to the same groups, hosts and variables
    /// (comments, ranges and layout are not kept: each host is written out).
    pub fn to_ini(&self) -> Result<String, WriteError> {
        self.writer().to_ini()
    }

    /// A writer holding this inventory, to add to before writing.
    pub fn writer(&self) -> InventoryWriter {
        let mut w = InventoryWriter::new();
        for (gi, g) in self.groups.iter().enumerate() {
            // The children of `all` follow by themselves; an empty `ungrouped` needs no section.
            if gi > 1 || (gi == 1 && !(g.hosts.is_empty() && g.vars.is_empty())) {
                w.group(&g.name);
            }
            for &h in &g.hosts {
                w.host(&g.name, &self.hosts[h].name, BTreeMap::new());
            }
            if gi != 0 {
                for &c in &g.children {
                    w.child(&g.name, &self.groups[c].name);
                }
            }
            for (k, v) in &g.vars {
                w.group_var(&g.name, k, v.value.clone());
            }
        }
        for h in &self.hosts {
            w.host_vars.insert(
                h.name.clone(),
                h.vars
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value.clone()))
                    .collect(),
            );
        }
        w
    }
}
