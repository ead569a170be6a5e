//! Inventory hosts in stacks through the real binary: `-i FILE` and `inventory = "..."` in
//! `provider "ssh" {}`, a group's hosts as `host` instances, the inventory's errors at
//! `file:line`, and `pipeline inventory` written from the state and read back (by
//! pipeline-inventory, and by ansible-inventory when the project's venv has it). No SSH: the inventories say
//! `ansible_connection=local`.

mod common;
use common::*;

const HOSTS: &str = "\
[web]
web01 ansible_host=10.0.0.11 ansible_port=2222
web02 ansible_host=10.0.0.12 ansible_become=yes

[db]
db01 ansible_host=10.0.0.21 ansible_password=hunter2-not-shown

[all:vars]
ansible_user=deploy
# These addresses are not reachable: applying hosts here must not connect (the lab tests do).
ansible_connection=local
";

const OTHER: &str = "\
[web]
web07 ansible_host=192.0.2.7 ansible_connection=local
";

fn web_stack(provider_block: &str) -> String {
    format!("{provider_block}\nhost \"web\" {{\n  provider = ssh\n  group    = \"web\"\n}}\n")
}

fn err(out: &std::process::Output) -> String {
    s(&out.stderr)
}

#[test]
fn plan_with_i_lists_a_groups_hosts_with_their_addresses() {
    let t = Scratch::new();
    t.write("hosts.ini", HOSTS);
    t.write("s.hcl", &web_stack(""));
    let out = t.ok(&["plan", "-i", "hosts.ini", "s.hcl"]);
    let web01 = out.find(r#"host.web["web01"]"#).expect(&out);
    let web02 = out.find(r#"host.web["web02"]"#).expect(&out);
    assert!(web01 < web02, "inventory order: {out}");
    for shown in ["10.0.0.11", "10.0.0.12", "2222", "deploy"] {
        assert!(out.contains(shown), "{shown}: {out}");
    }
    assert!(!out.contains("db01"), "only the group's hosts: {out}");
    // The long flag too.
    let out = t.ok(&["plan", "--inventory", "hosts.ini", "s.hcl"]);
    assert!(out.contains("10.0.0.12"), "{out}");
}

#[test]
fn a_block_inventory_is_relative_to_the_stack_and_i_overrides_it() {
    let t = Scratch::new();
    t.write("stack/inv/hosts.ini", HOSTS);
    t.write("other.ini", OTHER);
    t.write(
        "stack/s.hcl",
        &web_stack("provider \"ssh\" {\n  inventory = \"inv/hosts.ini\"\n}\n"),
    );
    // Run from elsewhere: the block's path is the stack's, not the current directory's.
    let out = t.ok(&["plan", "stack/s.hcl"]);
    assert!(out.contains(r#"host.web["web01"]"#), "{out}");
    assert!(out.contains("10.0.0.11"), "{out}");
    let out = t.ok(&["plan", "-i", "other.ini", "stack/s.hcl"]);
    assert!(out.contains(r#"host.web["web07"]"#), "{out}");
    assert!(out.contains("192.0.2.7"), "{out}");
    assert!(
        !out.contains("web01"),
        "-i replaces the block's inventory: {out}"
    );
}

#[test]
fn a_group_the_inventory_lacks_names_the_file_the_group_and_the_groups_it_has() {
    let t = Scratch::new();
    t.write("hosts.ini", HOSTS);
    t.write(
        "s.hcl",
        "host \"api\" {\n  provider = ssh\n  group    = \"api\"\n}\n",
    );
    for cmd in [
        &["plan", "-i", "hosts.ini", "s.hcl"][..],
        &["apply", "-auto-approve", "-i", "hosts.ini", "s.hcl"],
    ] {
        let out = t.run(cmd);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}");
        let e = err(&out);
        assert!(e.contains("hosts.ini"), "{e}");
        assert!(e.contains("no group 'api'"), "{e}");
        assert!(e.contains("web, db"), "{e}");
        assert!(e.contains("s.hcl:3:14"), "at `group`: {e}");
    }
    assert!(state(&t).resources.is_empty());
}

#[test]
fn no_inventory_at_all_says_how_to_give_one() {
    let t = Scratch::new();
    t.write("s.hcl", &web_stack(""));
    let out = t.run(&["plan", "s.hcl"]);
    assert_eq!(out.status.code(), Some(1));
    let e = err(&out);
    assert!(e.contains("no inventory"), "{e}");
    assert!(e.contains("-i inventory.ini"), "{e}");
}

#[test]
fn wrong_inventories_are_errors_at_their_file_and_line() {
    let t = Scratch::new();
    t.write("s.hcl", &web_stack(""));
    for (name, text, at) in [
        ("syntax.ini", "[web\nweb01\n", "syntax.ini:1"),
        ("dup.ini", "[web]\nweb01\nweb01\n", "dup.ini:3"),
        ("range.ini", "[web]\nweb[5:1]\n", "range.ini:2"),
    ] {
        t.write(name, text);
        let out = t.run(&["plan", "-i", name, "s.hcl"]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let e = err(&out);
        assert!(e.contains(at), "{name}: {e}");
    }
    let out = t.run(&["plan", "-i", "missing.ini", "s.hcl"]);
    assert_eq!(out.status.code(), Some(1));
    let e = err(&out);
    assert!(e.contains("missing.ini"), "{e}");
    assert!(e.contains("No such file"), "the OS error: {e}");
    assert!(state(&t).resources.is_empty());
}

#[test]
fn apply_then_inventory_writes_the_hosts_back_grouped_by_role() {
    let t = Scratch::new();
    t.write("hosts.ini", HOSTS);
    t.write(
        "s.hcl",
        "host \"web\" {\n  provider = ssh\n  group = \"web\"\n}\nhost \"store\" {\n  provider = ssh\n  group = \"db\"\n}\n",
    );
    t.ok(&["apply", "-auto-approve", "-i", "hosts.ini", "s.hcl"]);
    let st = state(&t);
    assert_eq!(st.resources.len(), 3, "{:?}", st.resources.keys());
    // The password is sensitive: in no output.
    let shown = t.ok(&["state", "show", r#"host.store["db01"]"#]);
    assert!(!shown.contains("hunter2"), "{shown}");
    let plan = t.ok(&["plan", "-i", "hosts.ini", "s.hcl"]);
    assert!(!plan.contains("hunter2"), "{plan}");

    let out = t.run(&["inventory", "-o", "written.ini"]);
    assert!(out.status.success(), "{}", err(&out));
    let text = std::fs::read_to_string(t.path().join("written.ini")).unwrap();
    assert!(
        !text.contains("hunter2"),
        "only connection variables: {text}"
    );
    let inv = pipeline_inventory::Inventory::load(t.path().join("written.ini"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let web = inv.hosts_of("web").unwrap();
    let names: Vec<&str> = web.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, vec!["web01", "web02"], "{text}");
    let orig = pipeline_inventory::Inventory::load(t.path().join("hosts.ini")).unwrap();
    for h in inv.hosts() {
        let o = orig.host(&h.name).unwrap();
        assert_eq!(
            (&h.address, h.port, &h.user, h.become_),
            (&o.address, o.port, &o.user, o.become_),
            "{}",
            h.name
        );
    }
    let store = inv.hosts_of("store").unwrap();
    assert_eq!(store.len(), 1);
    assert_eq!(store[0].name, "db01");
    // The same to standard output.
    assert_eq!(t.ok(&["inventory"]), text);

    let ansible = std::path::Path::new("/opt/pipeline-venv/bin/ansible-inventory");
    if ansible.exists() {
        let out = std::process::Command::new(ansible)
            .args(["-i", "written.ini", "--list"])
            .current_dir(t.path())
            .env("ANSIBLE_LOCAL_TEMP", t.path().join(".ansible-tmp"))
            .env("ANSIBLE_HOME", t.path().join(".ansible"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", s(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let hv = &v["_meta"]["hostvars"];
        assert_eq!(hv["web01"]["ansible_host"], "10.0.0.11");
        assert_eq!(hv["web01"]["ansible_port"], 2222);
        assert_eq!(hv["web02"]["ansible_become"], true);
        assert_eq!(hv["db01"]["ansible_user"], "deploy");
        assert_eq!(hv["db01"]["ansible_connection"], "local");
        assert_eq!(v["web"]["hosts"], serde_json::json!(["web01", "web02"]));
    }
}

#[test]
fn a_local_file_can_use_an_inventory_hosts_address() {
    let t = Scratch::new();
    t.write("hosts.ini", HOSTS);
    t.write(
        "s.hcl",
        &format!(
            "{}file \"upstreams\" {{\n  path    = \"out/upstreams.txt\"\n  content = \"${{host.web[\"web02\"].address}}:${{length(host.web)}}\"\n}}\n",
            web_stack("")
        ),
    );
    let plan = t.ok(&["plan", "-i", "hosts.ini", "s.hcl"]);
    assert!(plan.contains("10.0.0.12:2"), "known at plan: {plan}");
    t.ok(&["apply", "-auto-approve", "-i", "hosts.ini", "s.hcl"]);
    let written = std::fs::read_to_string(t.path().join("out/upstreams.txt")).unwrap();
    assert_eq!(written, "10.0.0.12:2");
}
