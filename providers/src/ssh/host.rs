//! The `host` kind of the ssh provider: one inventory host, its connection settings and its
//! variables.

use pipeline_engine::provider::{AttrSchema, JsonMap, KindSchema, Type};
use pipeline_engine::value::{Value, ValueMap};
use pipeline_inventory::Host;

pub const KIND: &str = crate::remote::HOST_KIND;
pub use crate::remote::instance_key;

pub fn schema() -> KindSchema {
    let strings = || Type::Map(Box::new(Type::String));
    KindSchema {
        kind: KIND,
        attrs: vec![
            // The inventory group whose hosts this block is (the engine expands it).
            AttrSchema::required("group", Type::String).force_new(),
            // Everything below comes from the inventory, none of it from a stack input.
            AttrSchema::computed("name", Type::String).derived_from(&[]),
            AttrSchema::computed("address", Type::String).derived_from(&[]),
            AttrSchema::computed("port", Type::Number).derived_from(&[]),
            AttrSchema::computed("user", Type::String).derived_from(&[]),
            AttrSchema::computed("key_file", Type::String).derived_from(&[]),
            AttrSchema::computed("become", Type::Bool).derived_from(&[]),
            AttrSchema::computed("groups", Type::List(Box::new(Type::String))).derived_from(&[]),
            // Passwords among them carry the sensitive mark (`secret_var`).
            AttrSchema::computed("vars", strings()).derived_from(&[]),
            // The host keys pinned on first contact (`[ADDR]:PORT TYPE BASE64` each; empty
            // when the user's known_hosts vouches for the host), enforced afterwards.
            AttrSchema::computed("host_key", Type::List(Box::new(Type::String))).derived_from(&[]),
            // The host instance's own address (`host.web["web01"]`), for messages of the
            // resources placed on it (how to accept a changed key names it).
            AttrSchema::computed("resource", Type::String).derived_from(&[]),
            // How resources placed on the host reach it: "ssh", or "local" for a host the
            // inventory gives `ansible_connection=local`.
            AttrSchema::computed("transport", Type::String).derived_from(&[]),
        ],
        instances_attr: None,
    }
}

/// Whether a host variable holds a secret that no output may show: `ansible_password`,
/// `ansible_become_password`, `ansible_ssh_pass`, and anything else named `*pass*` or
/// `*secret*`.
pub fn secret_var(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("pass") || n.contains("secret")
}

/// An inventory variable as a string: text as it is, anything else as JSON (`8080`, `true`,
/// `["a"]`).
fn var_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The computed attributes of an instance for inventory host `h`; `user` and `key_file` are
/// the provider block's defaults for a host whose inventory names none.
pub fn attributes(h: &Host, user: Option<&str>, key_file: Option<&str>) -> ValueMap {
    let opt = |s: Option<&str>| s.map_or(Value::Null, Value::str);
    let mut o = ValueMap::new();
    o.insert("name".into(), Value::str(&h.name));
    o.insert("transport".into(), Value::str(transport(h)));
    o.insert("address".into(), Value::str(&h.address));
    o.insert(
        "port".into(),
        h.port.map_or(Value::Null, |p| Value::Number(p as f64)),
    );
    o.insert("user".into(), opt(h.user.as_deref().or(user)));
    o.insert("key_file".into(), opt(h.key_file.as_deref().or(key_file)));
    o.insert("become".into(), Value::Bool(h.become_));
    o.insert(
        "groups".into(),
        Value::List(h.groups.iter().map(Value::str).collect()),
    );
    o.insert(
        "vars".into(),
        Value::Map(
            h.vars
                .iter()
                .map(|(k, v)| (k.clone(), Value::str(var_text(v)).mark(secret_var(k))))
                .collect(),
        ),
    );
    o
}

/// How a host is reached: "local" when the inventory says `ansible_connection=local` (this
/// machine: nothing to connect to, no key to pin), else "ssh".
pub fn transport(h: &Host) -> &'static str {
    match h.vars.get("ansible_connection").and_then(|v| v.as_str()) {
        Some("local") => "local",
        _ => "ssh",
    }
}

/// What an inventory line needs of a recorded host: `name`, `address`, `port`, `user`,
/// `key_file`, `become`, `groups` (absent ones left out).
pub fn inventory_entry(record: &JsonMap) -> JsonMap {
    [
        "name",
        "address",
        "port",
        "user",
        "key_file",
        "become",
        "groups",
        "transport",
    ]
    .into_iter()
    .filter_map(|k| {
        record
            .get(k)
            .filter(|v| !v.is_null())
            .map(|v| (k.to_string(), v.clone()))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inventory_name_comes_back_from_the_address() {
        assert_eq!(
            instance_key(r#"host.web["web01"]"#).as_deref(),
            Some("web01")
        );
        assert_eq!(
            instance_key(r#"module.m.host.web["a[\"b"]"#).as_deref(),
            Some("a[\"b")
        );
        assert_eq!(instance_key("host.web"), None);
        assert_eq!(instance_key("host.web[0]"), None);
    }

    #[test]
    fn password_variables_are_secret_and_others_are_not() {
        for s in [
            "ansible_password",
            "ansible_become_password",
            "ansible_ssh_pass",
            "db_passwd",
            "api_secret",
        ] {
            assert!(secret_var(s), "{s}");
        }
        for s in ["ansible_host", "http_port", "role"] {
            assert!(!secret_var(s), "{s}");
        }
    }
}
