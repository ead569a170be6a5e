//! `pipeline inventory`: an Ansible INI inventory of the hosts the state records, grouped by
//! role, so teams keep running their own playbooks against what pipeline manages.
//!
//! A recorded instance is a host when its provider answers the `inventory_host` action
//! (`INVENTORY_HOST_ACTION`) for its kind: its connection settings become the host's
//! `ansible_*` variables and it is listed in a group named after its block (`host.web["a"]`:
//! `[web]`). Every other instance that runs on a recorded host (a described process names the
//! host, or its record's `on` is that host) lists the host in a group named after its own block
//! (`service.app[0]` on `web01`: `web01` in `[app]`). No other variable is written: the
//! inventory's other variables (and its passwords) stay where they came from.

use crate::status::describe_all;
use crate::workspace::{recorded_ctx, Workspace};
use anyhow::{anyhow, Result};
use pipeline_engine::provider::{JsonMap, INVENTORY_HOST_ACTION};
use pipeline_inventory::{safe_group_name, Host, InventoryWriter};
use serde_json::Value as Json;
use std::collections::BTreeMap;

/// The inventory written from the state.
#[derive(Debug, Clone)]
pub struct Written {
    /// The INI text (it reads back in pipeline-inventory and in ansible).
    pub text: String,
    /// Host names, in the order written to their role groups.
    pub hosts: Vec<String>,
    /// Group names, sorted.
    pub groups: Vec<String>,
}

/// The block name of an address: `web` of `host.web["a"]` and of `module.m.host.web[0]`.
fn block_name(addr: &str) -> &str {
    let block = pipeline_engine::plan::resource_addr(addr);
    let block = block.rsplit('.').next().unwrap_or(block);
    block
}

fn host_of(entry: &JsonMap) -> Option<Host> {
    let s = |k: &str| entry.get(k).and_then(Json::as_str).map(str::to_string);
    let name = s("name")?;
    Some(Host {
        address: s("address").unwrap_or_else(|| name.clone()),
        port: entry
            .get("port")
            .and_then(Json::as_f64)
            .filter(|p| *p >= 1.0 && *p <= 65535.0 && p.fract() == 0.0)
            .map(|p| p as u16),
        user: s("user"),
        key_file: s("key_file"),
        become_: entry.get("become").and_then(Json::as_bool).unwrap_or(false),
        groups: entry
            .get("groups")
            .and_then(Json::as_array)
            .map(|g| {
                g.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        // A host reached without ssh stays so for whoever runs playbooks against it.
        vars: match s("transport").as_deref() {
            Some("local") => {
                BTreeMap::from([("ansible_connection".to_string(), Json::from("local"))])
            }
            _ => BTreeMap::new(),
        },
        name,
    })
}

/// Names a recorded `on` may carry for the host it runs on: its `name` and `address`, of one
/// object or of each in a list.
fn on_names(on: &Json) -> Vec<String> {
    match on {
        Json::Array(a) => a.iter().flat_map(on_names).collect(),
        Json::Object(o) => ["name", "address"]
            .iter()
            .filter_map(|k| o.get(*k).and_then(Json::as_str).map(str::to_string))
            .collect(),
        Json::String(s) => vec![s.clone()],
        _ => vec![],
    }
}

/// Build the inventory from the state.
pub async fn inventory(ws: &Workspace) -> Result<Written> {
    let ctx = recorded_ctx(ws)?;
    let described = describe_all(ws).await?;
    let mut hosts: Vec<(String, Host)> = Vec::new();
    let mut others = Vec::new();
    for (addr, rs, d) in described {
        let Some(p) = ws.registry.provider_of(&rs) else {
            continue;
        };
        if p.actions(&rs.kind)
            .iter()
            .any(|a| a.name == INVENTORY_HOST_ACTION)
        {
            let out = p
                .action(
                    &ctx,
                    &rs.kind,
                    &addr,
                    &rs.attrs,
                    INVENTORY_HOST_ACTION,
                    &JsonMap::new(),
                )
                .await
                .map_err(|e| anyhow!("{addr}: {e}"))?;
            let host = host_of(&out.output)
                .ok_or_else(|| anyhow!("{addr}: its provider names no host for the inventory"))?;
            hosts.push((addr, host));
        } else {
            let mut on: Vec<String> = d.processes.iter().filter_map(|p| p.host.clone()).collect();
            on.extend(rs.attrs.get("on").map(on_names).unwrap_or_default());
            others.push((addr, on));
        }
    }
    let mut w = InventoryWriter::new();
    let mut names = Vec::new();
    for (addr, h) in &hosts {
        w.add_host(&safe_group_name(block_name(addr)), h);
        if !names.contains(&h.name) {
            names.push(h.name.clone());
        }
    }
    for (addr, on) in &others {
        let group = safe_group_name(block_name(addr));
        for (_, h) in hosts
            .iter()
            .filter(|(_, h)| on.iter().any(|n| *n == h.name || *n == h.address))
        {
            w.host(&group, &h.name, BTreeMap::new());
        }
    }
    let text = w
        .to_ini()
        .map_err(|e| anyhow!("cannot write the inventory: {e}"))?;
    let parsed = pipeline_inventory::parse(&text, "the written inventory")
        .map_err(|e| anyhow!("the written inventory does not read back: {e}"))?;
    let mut groups: Vec<String> = parsed
        .group_names()
        .into_iter()
        .filter(|g| *g != "all" && *g != "ungrouped")
        .map(str::to_string)
        .collect();
    groups.sort();
    Ok(Written {
        text,
        hosts: names,
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_name_is_the_group() {
        assert_eq!(block_name(r#"host.web["web01"]"#), "web");
        assert_eq!(block_name(r#"module.m.service.app[0]"#), "app");
        assert_eq!(block_name("file.conf"), "conf");
    }

    /// A host record (answering the inventory action) and a record that runs `on` it: the host
    /// is in its block's group and in the other block's group, with its connection variables.
    #[tokio::test]
    async fn what_runs_on_a_recorded_host_puts_the_host_in_its_blocks_group() {
        use pipeline_engine::state::{JournalEntry, ResourceState, StateStore, Status};
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join(".pipeline");
        let mut store = StateStore::open(&work).unwrap();
        let mut set = |addr: &str, kind: &str, provider: &str, attrs: serde_json::Value| {
            store
                .record(JournalEntry::Set {
                    addr: addr.into(),
                    resource: ResourceState {
                        kind: kind.into(),
                        provider: provider.into(),
                        status: Status::Ready,
                        attrs: attrs.as_object().cloned().unwrap(),
                        sensitive: vec![],
                        deps: vec![],
                    },
                })
                .unwrap()
        };
        let host = serde_json::json!({
            "group": "web", "name": "web01", "address": "10.0.0.11", "port": 2222,
            "user": "deploy", "key_file": null, "become": true, "groups": ["web"],
            "vars": { "ansible_password": "hunter2" }
        });
        set(r#"host.web["web01"]"#, "host", "ssh", host.clone());
        let mut other = host.clone();
        other["name"] = "web02".into();
        other["address"] = "10.0.0.12".into();
        set(r#"host.web["web02"]"#, "host", "ssh", other);
        // A file recorded `on` web01 (by its record; nothing is described as running).
        let kind = "file";
        set(
            &format!("{kind}.conf"),
            kind,
            "local",
            serde_json::json!({ "path": "/nonexistent/conf", "on": host }),
        );
        drop(store);
        let ws = Workspace::new(Some(work)).unwrap();
        let w = inventory(&ws).await.unwrap();
        assert_eq!(w.hosts, vec!["web01", "web02"]);
        assert_eq!(w.groups, vec!["conf", "web"]);
        assert!(!w.text.contains("hunter2"), "{}", w.text);
        let inv = pipeline_inventory::parse(&w.text, "written").unwrap();
        let conf: Vec<String> = inv
            .hosts_of("conf")
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(conf, vec!["web01"], "{}", w.text);
        let h = inv.host("web01").unwrap();
        assert_eq!(
            (h.address.as_str(), h.port, h.user.as_deref(), h.become_),
            ("10.0.0.11", Some(2222), Some("deploy"), true)
        );
    }

    #[test]
    fn on_names_the_host_by_name_and_address() {
        let on = serde_json::json!([{ "name": "web01", "address": "10.0.0.1" }, { "address": "10.0.0.2" }]);
        assert_eq!(on_names(&on), vec!["web01", "10.0.0.1", "10.0.0.2"]);
    }
}
