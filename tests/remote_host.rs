//! Inventory hosts reached for real (the lab: podman hosts with systemd and sshd in network
//! namespaces of their own): applying a host connects to it and pins the keys it offers; a
//! changed key is refused with the way to accept it, and `-replace` accepts it; an unreachable
//! host is an error naming it within 10 s and the state stays as it was.

mod common;
use common::*;
use std::time::Instant;

fn inventory(lab: &pipeline_lab::Lab, extra: &str) -> String {
    let mut s = String::from("[web]\n");
    for h in lab.hosts() {
        s.push_str(&format!("{} ansible_host={}", h.name(), h.addr()));
        if h.name() == lab.host(0).name() {
            s.push_str(extra);
        }
        s.push('\n');
    }
    // No known_hosts of the lab's: the keys are pinned on first contact.
    s.push_str(&format!(
        "\n[web:vars]\nansible_user=root\nansible_ssh_private_key_file={}\n",
        lab.key_file().display()
    ));
    s
}

/// The base64 of each key a lab host offers (read through podman exec, not over the network).
fn offered(h: &pipeline_lab::Host) -> Vec<String> {
    let mut keys: Vec<String> = h
        .exec(&["sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    keys.sort();
    keys
}

fn pinned(t: &Scratch, addr: &str) -> Vec<String> {
    let st = state(t);
    let mut keys: Vec<String> = st.resources[addr].attrs["host_key"]
        .as_array()
        .unwrap_or_else(|| panic!("{addr} has no host_key: {:?}", st.resources[addr].attrs))
        .iter()
        .map(|l| {
            l.as_str()
                .unwrap()
                .split_whitespace()
                .nth(2)
                .unwrap()
                .to_string()
        })
        .collect();
    keys.sort();
    keys
}

/// Pinned: at least one key, each of them one the host offers (ssh records the key it was
/// shown, of the type it negotiated).
fn assert_pins(pinned: &[String], offered: &[String]) {
    assert!(!pinned.is_empty());
    for k in pinned {
        assert!(offered.contains(k), "{k} is not offered: {offered:?}");
    }
}

#[test]
fn hosts_pin_their_keys_refuse_a_changed_one_and_fail_fast_when_off() {
    if !pipeline_lab::require() {
        return;
    }
    let mut lab = pipeline_lab::Lab::new(2).unwrap_or_else(|e| panic!("{e:#}"));
    let (h0, h1) = (lab.host(0), lab.host(1));
    let a0 = format!("host.web[\"{}\"]", h0.name());
    let a1 = format!("host.web[\"{}\"]", h1.name());
    let t = Scratch::new();
    t.write("inventory.ini", &inventory(&lab, ""));
    t.write(
        "s.hcl",
        "provider \"ssh\" {\n  inventory = \"inventory.ini\"\n}\nhost \"web\" {\n  provider = ssh\n  group    = \"web\"\n}\n",
    );

    // First contact: the keys the hosts offer are recorded.
    let started = Instant::now();
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    eprintln!(
        "first apply of 2 hosts: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_pins(&pinned(&t, &a0), &offered(h0));
    assert_pins(&pinned(&t, &a1), &offered(h1));
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(plan.contains("No changes"), "{plan}");

    // h1 is reinstalled: new host keys, the connections made before ended.
    lab.rekey(1).unwrap();
    let (h0, h1) = (lab.host(0), lab.host(1));
    // The next time pipeline reaches h1 (its inventory entry changed) it refuses.
    t.write(
        "inventory.ini",
        &inventory(&lab, "").replace(
            &format!("{} ansible_host", h1.name()),
            &format!("{} role=app ansible_host", h1.name()),
        ),
    );
    let out = t.run(&["apply", "-auto-approve", "s.hcl"]);
    let e = s(&out.stderr) + &s(&out.stdout);
    assert!(!out.status.success(), "a changed key was accepted: {e}");
    assert!(
        e.contains("host key") && e.contains(h1.name()) && e.contains("-replace"),
        "{e}"
    );
    let old = pinned(&t, &a1);
    assert!(
        old.iter().all(|k| !offered(h1).contains(k)),
        "the old keys stay pinned"
    );

    // Accepted deliberately: the new keys are pinned, and h0 is untouched.
    let h0_keys = pinned(&t, &a0);
    t.ok(&["apply", "-auto-approve", &format!("-replace={a1}"), "s.hcl"]);
    assert_pins(&pinned(&t, &a1), &offered(h1));
    assert_eq!(pinned(&t, &a0), h0_keys);

    // h0 is turned off: reaching it fails within 10 s, naming it; state keeps its record.
    h0.off().unwrap();
    t.write("inventory.ini", &inventory(&lab, " role=app"));
    let started = Instant::now();
    let out = t.run(&["apply", "-auto-approve", "s.hcl"]);
    let took = started.elapsed();
    let e = s(&out.stderr) + &s(&out.stdout);
    eprintln!("apply with {} off: {:.2} s", h0.name(), took.as_secs_f64());
    assert!(!out.status.success(), "{e}");
    assert!(e.contains(h0.name()) && e.contains("unreachable"), "{e}");
    assert!(took.as_secs() < 10, "held the CLI {took:?}");
    assert_eq!(pinned(&t, &a0), h0_keys);
    let st = state(&t);
    assert!(
        st.resources[&a0].attrs["vars"].get("role").is_none(),
        "the failed update is not recorded"
    );

    // Back on: the next apply converges.
    h0.on().unwrap();
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert_eq!(state(&t).resources[&a0].attrs["vars"]["role"], "app");
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(plan.contains("No changes"), "{plan}");
}
