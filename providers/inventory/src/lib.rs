//! Ansible INI inventories (`inventory.ini`): read as ansible-core reads them, with every
//! mistake reported at `file:line:col` with what to do, and written back so that ansible (and
//! this parser) reads exactly what was written.
//!
//! Depends on no crate of the workspace, so every provider and the binary may use it.
//!
//! Reading follows ansible-core's `ini` inventory plugin: sections `[g]`, `[g:children]`,
//! `[g:vars]`; hosts before any section are `ungrouped`; every group without a parent is a child
//! of `all`. A host line is split like a POSIX shell (`shlex`, `#` ends it) and each value is a
//! Python literal where it spells one (`42` a number, `True` a bool, `'42'` a string), else its
//! text; a `:vars` line is `key=rest` with the rest read the same way. Variables combine as
//! ansible's do: `all` first, then groups by depth (a child over its parent), priority
//! (`ansible_group_priority`) and name, and the host's own last.
//!
//! Stricter than ansible-core, on purpose (each is a likely typo that would silently change
//! which hosts a rollout touches): a range counting down (`[5:1]`, ansible: no host), a host
//! listed twice in one group, and one variable given two values on two host lines (ansible
//! keeps the last for every group) are errors; so are a bad `ansible_port` or `ansible_become`.

mod error;
mod lex;
mod parse;
mod pattern;
mod write;

use std::collections::BTreeMap;
use std::path::Path;

pub use error::{ErrorKind, InventoryError};
pub use pattern::MAX_EXPANSION;
pub use serde_json::Value;
pub use write::{safe_group_name, InventoryWriter, WriteError};

/// One host as a connection needs it: its effective variables and the connection settings
/// ansible's ssh connection takes from them.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// The inventory name (`inventory_hostname`).
    pub name: String,
    /// Where to connect: `ansible_host` (or the older `ansible_ssh_host`), else the name.
    pub address: String,
    /// `ansible_port` (or `ansible_ssh_port`, or `host:port`); `None`: ssh's own default.
    pub port: Option<u16>,
    /// `ansible_user` (or `ansible_ssh_user`).
    pub user: Option<String>,
    /// `ansible_ssh_private_key_file` (or `ansible_private_key_file`).
    pub key_file: Option<String>,
    /// `ansible_become`, read as ansible's `boolean()` does (`yes`, `true`, `1`, `True`...).
    pub become_: bool,
    /// Every group the host is in, directly or through a child group, by name (`all` left out,
    /// as ansible's `group_names`).
    pub groups: Vec<String>,
    /// Every variable the host gets, combined as ansible combines them.
    pub vars: BTreeMap<String, Value>,
}

/// Where a variable was set.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Var {
    pub value: Value,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct GroupData {
    pub name: String,
    /// Declared by `[g]` or `[g:children]` (`[g:vars]` alone does not declare a group).
    pub defined: bool,
    pub vars: BTreeMap<String, Var>,
    /// Host indices, in the order listed.
    pub hosts: Vec<usize>,
    /// Group indices, in the order listed.
    pub children: Vec<usize>,
    pub parents: Vec<usize>,
    /// Distance from `all` along the longest path (ansible's group depth).
    pub depth: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct HostData {
    pub name: String,
    pub vars: BTreeMap<String, Var>,
}

/// A parsed inventory: groups, hosts, and their variables.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub(crate) source: String,
    /// `all` and `ungrouped` first, then in order of appearance.
    pub(crate) groups: Vec<GroupData>,
    /// In order of appearance.
    pub(crate) hosts: Vec<HostData>,
    /// Every host resolved, in the order of `hosts`.
    pub(crate) resolved: Vec<Host>,
}

/// Reads inventory text; `source_name` is how errors name it.
pub fn parse(text: &str, source_name: &str) -> Result<Inventory, InventoryError> {
    Inventory::parse(text, source_name)
}

impl Inventory {
    /// Reads an inventory file; an unreadable one is an error naming the path and the OS error.
    pub fn load(path: impl AsRef<Path>) -> Result<Inventory, InventoryError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| {
            InventoryError::new(
                ErrorKind::Unreadable,
                &name,
                format!("cannot read the inventory: {e}"),
            )
            .help(match e.kind() {
                std::io::ErrorKind::NotFound => "check the path given with -i or `inventory =`",
                std::io::ErrorKind::PermissionDenied => {
                    "make it readable by the user running pipeline"
                }
                _ => "give the path of an INI inventory file",
            })
        })?;
        let text = parse::decode(&bytes, &name)?;
        Inventory::parse(&text, &name)
    }

    /// Reads inventory text; `source_name` is how errors name it (a path, usually).
    pub fn parse(text: &str, source_name: &str) -> Result<Inventory, InventoryError> {
        parse::parse(text, source_name)
    }

    /// How errors name this inventory.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every group's name: `all`, `ungrouped`, then in order of appearance.
    pub fn group_names(&self) -> Vec<&str> {
        self.groups.iter().map(|g| g.name.as_str()).collect()
    }

    pub fn has_group(&self, group: &str) -> bool {
        self.group_index(group).is_some()
    }

    pub(crate) fn group_index(&self, group: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == group)
    }

    /// Every host, in order of appearance.
    pub fn hosts(&self) -> &[Host] {
        &self.resolved
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.resolved.iter().find(|h| h.name == name)
    }

    /// The hosts of a group and of its child groups: the group's own first, then its children's
    /// in the order listed (breadth first), each host once. A group the inventory lacks is an
    /// error naming the file, the group and the groups it has.
    pub fn hosts_of(&self, group: &str) -> Result<Vec<Host>, InventoryError> {
        let Some(g) = self.group_index(group) else {
            let have: Vec<&str> = self
                .groups
                .iter()
                .map(|g| g.name.as_str())
                .filter(|n| *n != "all" && *n != "ungrouped")
                .collect();
            let message = format!("the inventory has no group '{group}'");
            let help = if have.is_empty() {
                format!("it has no groups, only `all` and `ungrouped`: add a [{group}] section with its hosts")
            } else {
                format!(
                    "its groups are {}; add a [{group}] section or use one of them",
                    have.join(", ")
                )
            };
            return Err(
                InventoryError::new(ErrorKind::UnknownGroup, &self.source, message).help(help),
            );
        };
        Ok(self
            .host_indices(g)
            .into_iter()
            .map(|h| self.resolved[h].clone())
            .collect())
    }

    /// Host indices of group `g` and its descendants, breadth first.
    pub(crate) fn host_indices(&self, g: usize) -> Vec<usize> {
        let mut order = vec![g];
        let mut i = 0;
        while i < order.len() {
            for &c in &self.groups[order[i]].children {
                if !order.contains(&c) {
                    order.push(c);
                }
            }
            i += 1;
        }
        let mut seen = std::collections::HashSet::new();
        let mut hosts = Vec::new();
        for g in order {
            for &h in &self.groups[g].hosts {
                if seen.insert(h) {
                    hosts.push(h);
                }
            }
        }
        hosts
    }

    /// A group's own variables (`[g:vars]`), without what it inherits.
    pub fn group_vars(&self, group: &str) -> Option<BTreeMap<String, Value>> {
        let g = self.group_index(group)?;
        Some(
            self.groups[g]
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect(),
        )
    }

    /// A group's child groups, in the order listed.
    pub fn children_of(&self, group: &str) -> Option<Vec<&str>> {
        let g = self.group_index(group)?;
        Some(
            self.groups[g]
                .children
                .iter()
                .map(|&c| self.groups[c].name.as_str())
                .collect(),
        )
    }

    /// The hosts listed directly in a group (not through its children), in order.
    pub fn direct_hosts_of(&self, group: &str) -> Option<Vec<&str>> {
        let g = self.group_index(group)?;
        Some(
            self.groups[g]
                .hosts
                .iter()
                .map(|&h| self.hosts[h].name.as_str())
                .collect(),
        )
    }

    /// A host's own variables (from its host lines), without what its groups give it.
    pub fn host_vars(&self, host: &str) -> Option<BTreeMap<String, Value>> {
        let h = self.hosts.iter().find(|h| h.name == host)?;
        Some(
            h.vars
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect(),
        )
    }
}
