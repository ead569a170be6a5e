//! One pass over the lines (sections, host lines, `:vars` and `:children` entries), then the
//! checks that need the whole file (undefined groups, cycles), the implicit `all` and
//! `ungrouped`, and every host's variables combined.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::error::{ErrorKind, InventoryError};
use crate::{lex, pattern, GroupData, Host, HostData, Inventory, Var};

const ALL: usize = 0;
const UNGROUPED: usize = 1;

/// Inventory bytes as text. As ansible-core, a comment line that is not UTF-8 is let through
/// (as an empty line, so line numbers stay); any other such line is an error naming it.
pub(crate) fn decode(bytes: &[u8], file: &str) -> Result<String, InventoryError> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(bytes.len());
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match std::str::from_utf8(line) {
            Ok(s) => out.push_str(s),
            Err(_) if matches!(line.first(), Some(b'#' | b';')) => {}
            Err(e) => {
                let good = String::from_utf8_lossy(&line[..e.valid_up_to()]).into_owned();
                let col = good.chars().count() + 1;
                let shown = String::from_utf8_lossy(line).into_owned();
                return Err(InventoryError::new(
                    ErrorKind::Encoding,
                    file,
                    "this line is not UTF-8 text",
                )
                .at(i + 1, Some(col), &shown)
                .help("save the inventory as UTF-8"));
            }
        }
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Hosts,
    Children,
    Vars,
}

/// A `[parent:children]` entry, checked once the whole file is read.
struct Edge {
    parent: usize,
    child: String,
    line: usize,
    column: usize,
    text: String,
}

struct Parser<'a> {
    file: &'a str,
    groups: Vec<GroupData>,
    hosts: Vec<HostData>,
    /// Host name -> index.
    host_index: HashMap<String, usize>,
    /// (group, host) -> the line that listed the host in the group.
    listed: HashMap<(usize, usize), usize>,
    edges: Vec<Edge>,
    /// `[g:vars]` headers: group, line, text.
    vars_sections: Vec<(usize, usize, String)>,
}

pub(crate) fn parse(text: &str, file: &str) -> Result<Inventory, InventoryError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut p = Parser {
        file,
        groups: Vec::new(),
        hosts: Vec::new(),
        host_index: HashMap::new(),
        listed: HashMap::new(),
        edges: Vec::new(),
        vars_sections: Vec::new(),
    };
    for name in ["all", "ungrouped"] {
        let g = p.group(name);
        p.groups[g].defined = true;
    }
    p.groups[ALL].children.push(UNGROUPED);
    p.groups[UNGROUPED].parents.push(ALL);

    let lines = split_lines(text);
    let mut group = UNGROUPED;
    let mut state = State::Hosts;
    for (i, &raw) in lines.iter().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        // Columns are 1-based characters of the raw line.
        let indent = raw[..raw.len() - raw.trim_start().len()].chars().count();
        if line.starts_with('[') {
            if let Some((g, s)) = p.section(line, n, raw, indent)? {
                group = g;
                state = s;
                continue;
            }
        }
        match state {
            State::Hosts => p.host_line(group, line, n, raw, indent)?,
            State::Vars => p.vars_line(group, line, n, raw, indent)?,
            State::Children => p.children_line(group, line, n, raw, indent)?,
        }
    }
    p.finish(&lines)
}

/// Lines as Python's `str.splitlines()` cuts them (ansible-core's reading): at `\n`, `\r\n`,
/// `\r`, and the rarer breaks (`\x0b`, `\x0c`, `\x1c`-`\x1e`, `\x85`, U+2028, U+2029).
pub(crate) fn split_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if is_line_break(c) {
            lines.push(&text[start..i]);
            start = i + c.len_utf8();
            if c == '\r' && chars.peek().is_some_and(|&(_, n)| n == '\n') {
                chars.next();
                start += 1;
            }
        }
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

pub(crate) fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\x0b'
            | '\x0c'
            | '\x1c'
            | '\x1d'
            | '\x1e'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    }
}

impl Parser<'_> {
    fn error(
        &self,
        kind: ErrorKind,
        message: String,
        line: usize,
        col: usize,
        raw: &str,
    ) -> InventoryError {
        InventoryError::new(kind, self.file, message).at(line, Some(col), raw)
    }

    fn group(&mut self, name: &str) -> usize {
        if let Some(g) = self.groups.iter().position(|g| g.name == name) {
            return g;
        }
        self.groups.push(GroupData {
            name: name.to_string(),
            ..GroupData::default()
        });
        self.groups.len() - 1
    }

    /// A `[...]` line: the group and what its lines hold; `None` for a host line that starts
    /// with a range or a bracketed address (`[a:c].example.com`, `[::1]:22`).
    fn section(
        &mut self,
        line: &str,
        n: usize,
        raw: &str,
        indent: usize,
    ) -> Result<Option<(usize, State)>, InventoryError> {
        // `^\[([^:\]\s]+)(?::(\w+))?\]\s*(#.*)?$`, as ansible-core matches a section.
        let body = &line[1..];
        let name_len = body
            .find(|c: char| c == ':' || c == ']' || c.is_whitespace())
            .unwrap_or(body.len());
        let name = &body[..name_len];
        let mut rest = &body[name_len..];
        let mut tag = None;
        if let Some(t) = rest.strip_prefix(':') {
            let len = t
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(t.len());
            if len > 0 {
                tag = Some(&t[..len]);
                rest = &t[len..];
            }
        }
        let header = !name.is_empty() && rest.starts_with(']');
        let after = if header { rest[1..].trim_start() } else { "" };
        if header && (after.is_empty() || after.starts_with('#')) {
            let state = match tag {
                None | Some("hosts") => State::Hosts,
                Some("children") => State::Children,
                Some("vars") => State::Vars,
                Some(other) => {
                    return Err(self
                        .error(
                            ErrorKind::Section,
                            format!("unknown section type ':{other}' in [{name}:{other}]"),
                            n,
                            indent + 2 + name.chars().count(),
                            raw,
                        )
                        .help(format!(
                            "a section is [{name}] (its hosts), [{name}:children] (its groups) or [{name}:vars] (its variables)"
                        )));
                }
            };
            let g = self.group(name);
            if state == State::Vars {
                self.vars_sections.push((g, n, raw.to_string()));
            } else {
                self.groups[g].defined = true;
            }
            return Ok(Some((g, state)));
        }
        let first_word = line.split_whitespace().next().unwrap_or(line);
        if header && first_word.ends_with(']') {
            let junk = &line[line.len() - after.len()..];
            let col = indent + line[..line.len() - after.len()].chars().count() + 1;
            return Err(self
                .error(
                    ErrorKind::Section,
                    format!("only a '#' comment may follow a section header, not '{junk}'"),
                    n,
                    col,
                    raw,
                )
                .help(format!(
                    "write the comment with '#': {} # {}",
                    first_word,
                    junk.trim_start_matches([';', '#', ' '])
                )));
        }
        if line.ends_with(']') {
            return Err(self
                .error(
                    ErrorKind::Section,
                    format!("'{line}' is no section header"),
                    n,
                    indent + 1,
                    raw,
                )
                .help(
                    "a section is [GROUP], [GROUP:children] or [GROUP:vars], and a group name has no spaces, ':' or ']'",
                ));
        }
        Ok(None)
    }

    fn host_line(
        &mut self,
        group: usize,
        line: &str,
        n: usize,
        raw: &str,
        indent: usize,
    ) -> Result<(), InventoryError> {
        let words = lex::split(line).map_err(|e| match e {
            lex::SplitError::Unclosed { quote, at } => self
                .error(
                    ErrorKind::Quoting,
                    format!("the quote {quote} opened here is never closed"),
                    n,
                    indent + at + 1,
                    raw,
                )
                .help(format!(
                    "close it on the same line: key={quote}some value{quote}"
                )),
            lex::SplitError::TrailingBackslash { at } => self
                .error(
                    ErrorKind::Quoting,
                    "the line ends in a backslash, which escapes nothing".to_string(),
                    n,
                    indent + at + 1,
                    raw,
                )
                .help("a host line is one line: remove the '\\' or quote it: key='a\\'"),
        })?;
        let Some(first) = words.first() else {
            return Ok(());
        };
        let pattern_col = indent + first.start + 1;
        let (names, port) = pattern::expand(&first.text).map_err(|e| {
            self.error(
                if e.is_range {
                    ErrorKind::Range
                } else {
                    ErrorKind::HostPattern
                },
                e.message,
                n,
                pattern_col + e.offset,
                raw,
            )
            .help(e.help)
        })?;
        let mut vars: Vec<(String, Value, usize)> = Vec::new();
        if let Some(port) = port {
            vars.push(("ansible_port".into(), Value::from(port), pattern_col));
        }
        for w in &words[1..] {
            let col = indent + w.start + 1;
            let Some((k, v)) = w.text.split_once('=') else {
                let help = if w.text.starts_with(';') {
                    "';' starts a comment only at the start of a line: use '#' after a host"
                        .to_string()
                } else {
                    format!(
                        "after the host come variables: {}=VALUE (quote a value with spaces: key=\"a b\")",
                        w.text
                    )
                };
                return Err(self
                    .error(
                        ErrorKind::HostVariable,
                        format!("expected key=value after the host, got '{}'", w.text),
                        n,
                        col,
                        raw,
                    )
                    .help(help));
            };
            if k.is_empty() {
                return Err(self
                    .error(
                        ErrorKind::HostVariable,
                        format!("'{}' has no variable name before '='", w.text),
                        n,
                        col,
                        raw,
                    )
                    .help("write key=value"));
            }
            vars.push((k.to_string(), lex::value(v), col));
        }
        for name in names {
            let h = match self.host_index.get(&name) {
                Some(&h) => h,
                None => {
                    self.host_index.insert(name.clone(), self.hosts.len());
                    self.hosts.push(HostData {
                        name: name.clone(),
                        vars: BTreeMap::new(),
                    });
                    self.hosts.len() - 1
                }
            };
            if let Some(first) = self.listed.get(&(group, h)) {
                let gname = &self.groups[group].name;
                return Err(self
                    .error(
                        ErrorKind::DuplicateHost,
                        format!("host '{name}' is listed twice in group '{gname}': first at line {first}"),
                        n,
                        pattern_col,
                        raw,
                    )
                    .help(format!(
                        "list a host once in a group, with all its variables on that line (line {first})"
                    )));
            }
            self.listed.insert((group, h), n);
            self.groups[group].hosts.push(h);
            for (k, v, col) in &vars {
                if let Some(old) = self.hosts[h].vars.get(k) {
                    if old.value != *v {
                        let (where_, also) = if old.line == n {
                            ("earlier on this line".to_string(), "once")
                        } else {
                            (format!("at line {}", old.line), "on one line")
                        };
                        return Err(self
                            .error(
                                ErrorKind::ConflictingHostVariable,
                                format!(
                                    "host '{name}' gets {k}={} here but {k}={} {where_}",
                                    show(v),
                                    show(&old.value)
                                ),
                                n,
                                *col,
                                raw,
                            )
                            .help(format!(
                                "a host has one set of variables whichever group lists it (ansible would keep the last value everywhere): set {k} {also}, or per group in [GROUP:vars]"
                            )));
                    }
                    continue;
                }
                self.hosts[h].vars.insert(
                    k.clone(),
                    Var {
                        value: v.clone(),
                        line: n,
                        column: *col,
                    },
                );
            }
        }
        Ok(())
    }

    fn vars_line(
        &mut self,
        group: usize,
        line: &str,
        n: usize,
        raw: &str,
        indent: usize,
    ) -> Result<(), InventoryError> {
        let gname = self.groups[group].name.clone();
        let Some((k, v)) = line.split_once('=') else {
            return Err(self
                .error(
                    ErrorKind::GroupVariable,
                    format!("expected key=value in [{gname}:vars], got '{line}'"),
                    n,
                    indent + 1,
                    raw,
                )
                .help(format!(
                    "a [{gname}:vars] line sets one variable: {}=VALUE; hosts go in [{gname}]",
                    line.split_whitespace().next().unwrap_or("key")
                )));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(self
                .error(
                    ErrorKind::GroupVariable,
                    format!("'{line}' has no variable name before '='"),
                    n,
                    indent + 1,
                    raw,
                )
                .help("write key=value"));
        }
        self.groups[group].vars.insert(
            k.to_string(),
            Var {
                value: lex::value(v.trim()),
                line: n,
                column: indent + 1,
            },
        );
        Ok(())
    }

    fn children_line(
        &mut self,
        group: usize,
        line: &str,
        n: usize,
        raw: &str,
        indent: usize,
    ) -> Result<(), InventoryError> {
        let len = line
            .find(|c: char| c == ':' || c == ']' || c.is_whitespace())
            .unwrap_or(line.len());
        let (name, rest) = line.split_at(len);
        let rest = rest.trim_start();
        if name.is_empty() || !(rest.is_empty() || rest.starts_with('#')) {
            let gname = &self.groups[group].name;
            return Err(self
                .error(
                    ErrorKind::ChildName,
                    format!("expected one group name in [{gname}:children], got '{line}'"),
                    n,
                    indent + 1,
                    raw,
                )
                .help(format!(
                    "[{gname}:children] lists groups, one a line; hosts go in [{gname}], variables in [{gname}:vars]"
                )));
        }
        self.edges.push(Edge {
            parent: group,
            child: name.to_string(),
            line: n,
            column: indent + 1,
            text: raw.to_string(),
        });
        Ok(())
    }

    fn defined_groups(&self) -> String {
        let names: Vec<&str> = self
            .groups
            .iter()
            .filter(|g| g.defined)
            .map(|g| g.name.as_str())
            .collect();
        names.join(", ")
    }

    fn finish(mut self, lines: &[&str]) -> Result<Inventory, InventoryError> {
        // Names that are never defined: the first such line is reported.
        let mut undefined: Vec<(usize, InventoryError)> = Vec::new();
        for e in &self.edges {
            let defined = self.groups.iter().any(|g| g.name == e.child && g.defined);
            if !defined {
                let parent = &self.groups[e.parent].name;
                undefined.push((
                    e.line,
                    self.error(
                        ErrorKind::UndefinedChild,
                        format!(
                            "[{parent}:children] names group '{}', which this inventory never defines",
                            e.child
                        ),
                        e.line,
                        e.column,
                        &e.text,
                    )
                    .help(format!(
                        "define it with a [{}] section (or fix the name); the groups here are {}",
                        e.child,
                        self.defined_groups()
                    )),
                ));
            }
        }
        for (g, line, text) in &self.vars_sections {
            if !self.groups[*g].defined {
                let name = &self.groups[*g].name;
                undefined.push((
                    *line,
                    self.error(
                        ErrorKind::UndefinedGroup,
                        format!("[{name}:vars] sets variables of group '{name}', which this inventory never defines"),
                        *line,
                        2,
                        text,
                    )
                    .help(format!(
                        "add a [{name}] section with its hosts (or fix the name); the groups here are {}",
                        self.defined_groups()
                    )),
                ));
            }
        }
        if let Some((_, e)) = undefined.into_iter().min_by_key(|(line, _)| *line) {
            return Err(e);
        }

        // Child groups, in the order listed; a cycle is reported where it closes.
        let edges = std::mem::take(&mut self.edges);
        let mut edge_line: HashMap<(usize, usize), usize> = HashMap::new();
        for e in &edges {
            let c = self.group(&e.child);
            let parent = self.groups[e.parent].name.clone();
            if c == ALL {
                return Err(self
                    .error(
                        ErrorKind::ChildCycle,
                        format!("[{parent}:children] names 'all', which contains every group"),
                        e.line,
                        e.column,
                        &e.text,
                    )
                    .help("remove this line: every group is in 'all' already"));
            }
            if self.groups[e.parent].children.contains(&c) {
                continue;
            }
            if let Some(path) = self.path(c, e.parent) {
                let mut chain: Vec<&str> = vec![parent.as_str()];
                chain.extend(path.iter().map(|&g| self.groups[g].name.as_str()));
                let help = if path.len() < 2 {
                    "a group cannot contain itself: remove this line".to_string()
                } else {
                    let (x, y) = (path[path.len() - 2], path[path.len() - 1]);
                    format!(
                        "remove '{}' here, or '{}' from [{}:children] at line {}",
                        e.child,
                        self.groups[y].name,
                        self.groups[x].name,
                        edge_line[&(x, y)]
                    )
                };
                return Err(self
                    .error(
                        ErrorKind::ChildCycle,
                        format!("groups contain each other: {}", chain.join(" → ")),
                        e.line,
                        e.column,
                        &e.text,
                    )
                    .help(help));
            }
            self.groups[e.parent].children.push(c);
            self.groups[c].parents.push(e.parent);
            edge_line.insert((e.parent, c), e.line);
        }

        // Every group without a parent is a child of `all`.
        for g in UNGROUPED + 1..self.groups.len() {
            if self.groups[g].parents.is_empty() {
                self.groups[ALL].children.push(g);
                self.groups[g].parents.push(ALL);
            }
        }
        // `ungrouped` holds exactly the hosts no other group (but `all`) lists.
        let mut direct: Vec<Vec<usize>> = vec![Vec::new(); self.hosts.len()];
        for (g, d) in self.groups.iter().enumerate() {
            for &h in &d.hosts {
                direct[h].push(g);
            }
        }
        let elsewhere: Vec<bool> = direct
            .iter()
            .map(|gs| gs.iter().any(|&g| g != ALL && g != UNGROUPED))
            .collect();
        let mut ungrouped: Vec<usize> = self.groups[UNGROUPED]
            .hosts
            .iter()
            .copied()
            .filter(|&h| !elsewhere[h])
            .collect();
        for (h, gs) in direct.iter_mut().enumerate() {
            if elsewhere[h] {
                gs.retain(|&g| g != UNGROUPED);
            } else if !gs.contains(&UNGROUPED) {
                ungrouped.push(h);
                gs.push(UNGROUPED);
            }
        }
        self.groups[UNGROUPED].hosts = ungrouped;
        let mut depth = vec![None; self.groups.len()];
        for g in 0..self.groups.len() {
            self.depth(g, &mut depth);
        }
        for (g, d) in depth.into_iter().enumerate() {
            self.groups[g].depth = d.unwrap_or(0);
        }

        let mut inv = Inventory {
            source: self.file.to_string(),
            groups: self.groups,
            hosts: self.hosts,
            resolved: Vec::new(),
        };
        let resolved = (0..inv.hosts.len())
            .map(|h| resolve(&inv, h, &direct[h], lines))
            .collect::<Result<Vec<_>, _>>()?;
        inv.resolved = resolved;
        Ok(inv)
    }

    /// Groups from `from` down to `to` through children (both included), if `to` is below.
    fn path(&self, from: usize, to: usize) -> Option<Vec<usize>> {
        if from == to {
            return Some(vec![from]);
        }
        for &c in &self.groups[from].children {
            if let Some(mut rest) = self.path(c, to) {
                rest.insert(0, from);
                return Some(rest);
            }
        }
        None
    }

    fn depth(&self, g: usize, memo: &mut Vec<Option<usize>>) -> usize {
        if let Some(d) = memo[g] {
            return d;
        }
        let d = if g == ALL {
            0
        } else {
            self.groups[g]
                .parents
                .clone()
                .into_iter()
                .map(|p| self.depth(p, memo) + 1)
                .max()
                .unwrap_or(1)
        };
        memo[g] = Some(d);
        d
    }
}

fn var_error(
    inv: &Inventory,
    lines: &[&str],
    v: &Var,
    message: String,
    help: &str,
) -> InventoryError {
    let text = lines.get(v.line - 1).copied().unwrap_or_default();
    InventoryError::new(ErrorKind::ConnectionVariable, &inv.source, message)
        .at(v.line, Some(v.column), text)
        .help(help)
}

/// A host's groups (direct and inherited), its combined variables and connection settings.
fn resolve(
    inv: &Inventory,
    h: usize,
    direct: &[usize],
    lines: &[&str],
) -> Result<Host, InventoryError> {
    let name = inv.hosts[h].name.clone();
    let mut member: Vec<usize> = Vec::new();
    let mut stack: Vec<usize> = direct.to_vec();
    while let Some(g) = stack.pop() {
        if !member.contains(&g) {
            member.push(g);
            stack.extend(inv.groups[g].parents.iter().copied());
        }
    }
    if !member.contains(&ALL) {
        member.push(ALL);
    }
    let mut keyed = Vec::new();
    for &g in &member {
        let priority =
            match inv.groups[g].vars.get("ansible_group_priority") {
                None => 1,
                Some(v) => match &v.value {
                    Value::Number(n) if n.as_i64().is_some() => n.as_i64().unwrap_or(1),
                    Value::String(s) if s.trim().parse::<i64>().is_ok() => {
                        s.trim().parse().unwrap_or(1)
                    }
                    other => return Err(var_error(
                        inv,
                        lines,
                        v,
                        format!(
                            "ansible_group_priority of group '{}' is {}, not a whole number",
                            inv.groups[g].name,
                            show(other)
                        ),
                        "write ansible_group_priority=10 (higher wins among groups of one depth)",
                    )),
                },
            };
        keyed.push((
            (inv.groups[g].depth, priority, inv.groups[g].name.clone()),
            g,
        ));
    }
    keyed.sort();
    let mut vars: BTreeMap<String, &Var> = BTreeMap::new();
    for (_, g) in &keyed {
        // The priority orders groups; ansible does not hand it on as a variable.
        for (k, v) in &inv.groups[*g].vars {
            if k != "ansible_group_priority" {
                vars.insert(k.clone(), v);
            }
        }
    }
    for (k, v) in &inv.hosts[h].vars {
        vars.insert(k.clone(), v);
    }
    // ansible's ssh connection reads each setting from the last of its names that is set.
    let last = |names: &[&'static str]| -> Option<(&'static str, &Var)> {
        names
            .iter()
            .rev()
            .find_map(|n| vars.get(*n).map(|v| (*n, *v)))
    };
    let text = |names: &[&'static str]| -> Result<Option<String>, InventoryError> {
        let Some((key, v)) = last(names) else {
            return Ok(None);
        };
        match &v.value {
            Value::String(s) => Ok(Some(s.clone())),
            Value::Number(n) => Ok(Some(n.to_string())),
            Value::Bool(b) => Ok(Some(if *b { "True" } else { "False" }.to_string())),
            other => Err(var_error(
                inv,
                lines,
                v,
                format!("{key} of host '{name}' is {}, not a text", show(other)),
                "give it as text: key=value",
            )),
        }
    };
    let address = text(&["ansible_host", "ansible_ssh_host"])?.unwrap_or_else(|| name.clone());
    let user = text(&["ansible_user", "ansible_ssh_user"])?;
    let key_file = text(&["ansible_private_key_file", "ansible_ssh_private_key_file"])?;
    let port = match last(&["ansible_port", "ansible_ssh_port"]) {
        None => None,
        Some((key, v)) => {
            let n = match &v.value {
                Value::Number(n) => n.as_u64(),
                Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    s.parse().ok()
                }
                _ => None,
            };
            match n.and_then(|n| u16::try_from(n).ok()).filter(|&p| p > 0) {
                Some(p) => Some(p),
                None => {
                    return Err(var_error(
                        inv,
                        lines,
                        v,
                        format!(
                            "{key} of host '{name}' is {}, not a port number from 1 to 65535",
                            show(&v.value)
                        ),
                        "write ansible_port=2222, or the host as HOST:2222",
                    ))
                }
            }
        }
    };
    let become_ = match vars.get("ansible_become") {
        None => false,
        Some(v) => match boolean(&v.value) {
            Some(b) => b,
            None => {
                return Err(var_error(
                    inv,
                    lines,
                    v,
                    format!(
                        "ansible_become of host '{name}' is {}, not a yes/no value",
                        show(&v.value)
                    ),
                    "write ansible_become=true (or false; yes/no, on/off and 1/0 work too)",
                ))
            }
        },
    };
    let mut groups: Vec<String> = member
        .iter()
        .filter(|&&g| g != ALL)
        .map(|&g| inv.groups[g].name.clone())
        .collect();
    groups.sort();
    Ok(Host {
        name,
        address,
        port,
        user,
        key_file,
        become_,
        groups,
        vars: vars
            .into_iter()
            .map(|(k, v)| (k, v.value.clone()))
            .collect(),
    })
}

/// ansible's `boolean()`: `True`, `yes`, `on`, `1`, `true`, `t`, `y` (any case), 1 and 1.0 are
/// true; their opposites false; anything else (`None` too) is no boolean.
fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => {
            let x = n.as_f64()?;
            (x == 1.0 || x == 0.0).then_some(x == 1.0)
        }
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "y" | "yes" | "on" | "1" | "true" | "t" => Some(true),
            "n" | "no" | "off" | "0" | "false" | "f" => Some(false),
            _ => None,
        },
        _ => None,
    }
}
