//! Prints an inventory as `ansible-inventory -i FILE --list` does (groups with their own hosts
//! and children, `_meta.hostvars` with every host's combined variables), to compare the two by
//! hand: `cargo run -p pipeline-inventory --example list -- FILE`.

use pipeline_inventory::{Inventory, Value};
use serde_json::{json, Map};

fn main() {
    let path = std::env::args().nth(1).expect("usage: list INVENTORY");
    let inv = match Inventory::load(&path) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let mut out = Map::new();
    let mut hostvars = Map::new();
    for h in inv.hosts() {
        if !h.vars.is_empty() {
            hostvars.insert(h.name.clone(), json!(h.vars));
        }
    }
    out.insert("_meta".into(), json!({ "hostvars": hostvars }));
    for g in inv.group_names() {
        let mut entry = Map::new();
        let hosts = inv.direct_hosts_of(g).unwrap_or_default();
        if !hosts.is_empty() && g != "all" {
            entry.insert("hosts".into(), json!(hosts));
        }
        let children = inv.children_of(g).unwrap_or_default();
        if !children.is_empty() {
            entry.insert("children".into(), json!(children));
        }
        if !entry.is_empty() || g == "all" {
            out.insert(g.to_string(), Value::Object(entry));
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Object(out)).unwrap()
    );
}
