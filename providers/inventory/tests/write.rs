//! Writing inventories: what is written reads back as exactly what was given, in a fixed order.

use std::collections::{BTreeMap, BTreeSet};

use pipeline_inventory::{Host, Inventory, InventoryWriter, Value};
use serde_json::json;

const VALID: &[&str] = &[
    "groups.ini",
    "children.ini",
    "group_vars.ini",
    "priority.ini",
    "inline_vars.ini",
    "vars_types.ini",
    "ranges_numeric.ini",
    "ranges_alpha.ini",
    "connection.ini",
    "sections.ini",
    "roundtrip_values.ini",
];

fn by_name(inv: &Inventory) -> BTreeMap<String, Host> {
    inv.hosts()
        .iter()
        .map(|h| (h.name.clone(), h.clone()))
        .collect()
}

fn set<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeSet<T> {
    items.into_iter().collect()
}

#[test]
fn every_valid_fixture_reads_back_the_same_after_to_ini() {
    for name in VALID {
        let inv = Inventory::load(format!("tests/fixtures/{name}")).unwrap();
        let text = inv.to_ini().unwrap_or_else(|e| panic!("{name}: {e}"));
        let back = Inventory::parse(&text, name).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        assert_eq!(by_name(&back), by_name(&inv), "{name}:\n{text}");
        assert_eq!(set(back.group_names()), set(inv.group_names()), "{name}");
        for g in inv.group_names() {
            let hosts = |i: &Inventory| set(i.hosts_of(g).unwrap().into_iter().map(|h| h.name));
            assert_eq!(hosts(&back), hosts(&inv), "{name} [{g}]:\n{text}");
            assert_eq!(
                set(back.children_of(g).unwrap()),
                set(inv.children_of(g).unwrap()),
                "{name} [{g}:children]"
            );
            assert_eq!(back.group_vars(g), inv.group_vars(g), "{name} [{g}:vars]");
        }
        // Writing what was read back gives the same text: the output is a fixed point.
        assert_eq!(back.to_ini().unwrap(), text, "{name}");
    }
}

fn tricky_values() -> Vec<Value> {
    vec![
        json!("plain"),
        json!("two words"),
        json!("42"),
        json!("007"),
        json!("True"),
        json!("None"),
        json!("1.5"),
        json!("[1, 2]"),
        json!(""),
        json!(" leading and trailing "),
        json!("a # not a comment"),
        json!("semi;colon"),
        json!("it's"),
        json!("say \"hi\""),
        json!("back\\slash"),
        json!("line\nbreak"),
        json!("tab\there"),
        json!("form\u{c}feed and \u{2028} separator"),
        json!("ünïcödé ✓"),
        json!("a=b"),
        json!("web[1:3]"),
        json!("'quoted'"),
        json!("$HOME and {{ jinja }}"),
        json!(0),
        json!(-17),
        json!(9_007_199_254_740_993_i64),
        json!(1.5),
        json!(1e20),
        json!(-0.25),
        json!(true),
        json!(false),
        Value::Null,
        json!([1, "two", [3], {"k": "v"}]),
        json!({"name": "it's", "list": [true, null], "n": 2}),
        json!([]),
        json!({}),
    ]
}

#[test]
fn tricky_values_read_back_exactly_as_host_and_group_variables() {
    let mut w = InventoryWriter::new();
    let values = tricky_values();
    let host_vars: BTreeMap<String, Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("v{i:02}"), v.clone()))
        .collect();
    w.host("app", "app1", host_vars.clone());
    for (k, v) in &host_vars {
        w.group_var("app", k, v.clone());
        w.group_var("all", k, v.clone());
    }
    let text = w.to_ini().unwrap();
    let inv = Inventory::parse(&text, "written.ini").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let app1 = inv.host("app1").unwrap();
    for (k, v) in &host_vars {
        assert_eq!(&app1.vars[k], v, "host {k}:\n{text}");
        assert_eq!(
            &inv.group_vars("app").unwrap()[k],
            v,
            "[app:vars] {k}:\n{text}"
        );
        assert_eq!(
            &inv.group_vars("all").unwrap()[k],
            v,
            "[all:vars] {k}:\n{text}"
        );
    }
    // Every value is on one line: no line break of any kind (ansible splits at \r, \x0c,
    // U+2028 ... too) went through unescaped.
    assert!(!text.contains(['\r', '\u{b}', '\u{c}', '\u{85}', '\u{2028}', '\u{2029}']));
    assert_eq!(text.lines().count(), 2 * values.len() + 6, "{text}");
}

#[test]
fn hosts_grouped_by_role_in_a_fixed_order() {
    let host = |name: &str, address: &str, port: Option<u16>| Host {
        name: name.into(),
        address: address.into(),
        port,
        user: Some("deploy".into()),
        key_file: None,
        become_: name.starts_with("db"),
        groups: vec![],
        vars: BTreeMap::from([("instance".to_string(), json!(format!("service.{name}")))]),
    };
    let mut w = InventoryWriter::new();
    // Added out of order: groups come out by name, hosts in the order added.
    w.add_host("web", &host("web-1", "10.0.0.11", Some(2222)))
        .add_host("web", &host("web-0", "10.0.0.10", None))
        .add_host("db", &host("db-0", "db-0", None))
        .child("app", "web")
        .child("app", "db")
        .group_var(
            "all",
            "ansible_python_interpreter",
            json!("/usr/bin/python3"),
        )
        .group_var("web", "http_port", json!(8080));
    let text = w.to_ini().unwrap();
    assert_eq!(
        text,
        "[all:vars]\n\
         ansible_python_interpreter=/usr/bin/python3\n\
         \n\
         [app]\n\
         \n\
         [app:children]\n\
         web\n\
         db\n\
         \n\
         [db]\n\
         db-0 ansible_become=True ansible_user=deploy instance=service.db-0\n\
         \n\
         [web]\n\
         web-1 ansible_host=10.0.0.11 ansible_port=2222 ansible_user=deploy instance=service.web-1\n\
         web-0 ansible_host=10.0.0.10 ansible_user=deploy instance=service.web-0\n\
         \n\
         [web:vars]\n\
         http_port=8080\n"
    );
    let inv = Inventory::parse(&text, "inventory.ini").unwrap();
    let web1 = inv.host("web-1").unwrap();
    assert_eq!(
        (
            web1.address.as_str(),
            web1.port,
            web1.user.as_deref(),
            web1.become_
        ),
        ("10.0.0.11", Some(2222), Some("deploy"), false)
    );
    assert!(inv.host("db-0").unwrap().become_);
    let app: Vec<String> = inv
        .hosts_of("app")
        .unwrap()
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(app, ["web-1", "web-0", "db-0"]);
}

#[test]
fn what_an_inventory_cannot_hold_is_refused() {
    let refused = |w: &InventoryWriter| w.to_ini().unwrap_err().to_string();
    for bad in ["web 1", "web[1:2]", "web1:22", "#web", "\"web\"", ""] {
        let mut w = InventoryWriter::new();
        w.host("web", bad, BTreeMap::new());
        assert!(
            refused(&w).contains("no host name"),
            "{bad:?}: {}",
            refused(&w)
        );
    }
    let mut w = InventoryWriter::new();
    w.group("web servers");
    assert!(
        refused(&w).contains("safe_group_name gives 'web_servers'"),
        "{}",
        refused(&w)
    );
    let mut w = InventoryWriter::new();
    w.host(
        "web",
        "w1",
        BTreeMap::from([("bad key".to_string(), json!(1))]),
    );
    assert!(refused(&w).contains("no variable name"), "{}", refused(&w));
    let mut w = InventoryWriter::new();
    w.host(
        "web",
        "w1",
        BTreeMap::from([("port".to_string(), json!(1))]),
    )
    .host("db", "w1", BTreeMap::from([("port".to_string(), json!(2))]));
    assert_eq!(
        refused(&w),
        "host 'w1' is given port=2 and port=1: a host has one value per variable"
    );
}

#[test]
fn safe_group_names() {
    use pipeline_inventory::safe_group_name;
    assert_eq!(safe_group_name("web-api"), "web_api");
    assert_eq!(safe_group_name("1st"), "_1st");
    assert_eq!(safe_group_name("web"), "web");
}
