//! The `flags` store on inventory hosts (the lab: podman hosts with systemd and sshd): the
//! primary on one host, a mirror on each of two others, redis-server installed by the
//! `pipeline_redis` role through the lab's apt cache. A flag reads back through every mirror
//! from this machine, `pipeline flags set` reaches every mirror, a stopped instance is drift
//! that the next apply repairs, the password is in no command line, plan, state show or
//! ansible output and the host's config is 0600, and destroy stops every instance. Bad input
//! (a password with a newline, a port out of range) is refused at plan.

mod common;
use common::lab::SecretWatch;
use common::*;
use pipeline_providers::redis::remote::token;
use pipeline_providers::redis::resp::{Conn, Url};
use pipeline_providers::redis::store::{self, FlagValue};
use std::time::{Duration, Instant};

const PASSWORD: &str = "Fl4gs-lab-s3cret.pw";
const PORT: u16 = 6390;
const ADDR: &str = "flags.features";

/// The primary's host in `db`, the mirrors' in `web`.
fn inventory(lab: &pipeline_lab::Lab) -> String {
    let h = lab.hosts();
    common::lab::inventory(lab, &[("db", &[&h[0]]), ("web", &[&h[1], &h[2]])])
}

fn stack(db: &str, password_expr: &str, port: &str) -> String {
    format!(
        r#"provider "ssh" {{
  inventory = "inventory.ini"
}}

variable "flags_password" {{
  sensitive = true
}}

host "db" {{
  provider = ssh
  group    = "db"
}}

host "web" {{
  provider = ssh
  group    = "web"
}}

flags "features" {{
  provider   = redis
  on         = host.db["{db}"]
  mirrors_on = host.web
  port       = {port}
  password   = {password_expr}
  values     = {{ new_checkout = {{ enabled = true, percent = 10 }}, dark_mode = false }}
}}
"#
    )
}

fn flag_on(url: &Url, name: &str) -> Option<FlagValue> {
    let mut c = Conn::connect(url, Duration::from_secs(2)).ok()?;
    store::get(&mut c, name).ok().flatten()
}

fn unit_state(h: &pipeline_lab::Host, unit: &str) -> String {
    // `systemctl is-active` exits non-zero for anything but active: read its answer anyway.
    h.exec(&["sh", "-c", &format!("systemctl is-active {unit} || true")])
        .unwrap()
        .trim()
        .to_string()
}

/// Runs playbooks/redis.yml of the bundle pipeline wrote, with `--check --diff`, on
/// `inventory`; asserts `changed` hosts report changes and the password shows nowhere.
fn check_mode(lab: &pipeline_lab::Lab, t: &Scratch, tok: &str, inventory: &str, changed: usize) {
    let bundle = std::fs::read_dir(t.path().join(".pipeline/ansible"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("playbooks/redis.yml").is_file())
        .expect("the materialised bundle");
    let inv = t.path().join("check-inventory.json");
    std::fs::write(&inv, inventory).unwrap();
    let vars = t.path().join("check-vars.json");
    std::fs::write(
        &vars,
        serde_json::json!({
            "pipeline_hosts": "all",
            "pipeline_redis_instance": tok,
            "pipeline_redis_password": PASSWORD,
        })
        .to_string(),
    )
    .unwrap();
    let out = lab
        .ansible("ansible-playbook")
        .env("ANSIBLE_ROLES_PATH", bundle.join("roles"))
        .arg("-i")
        .arg(&inv)
        .args(["--check", "--diff", "-e"])
        .arg(format!("@{}", vars.display()))
        .arg(bundle.join("playbooks/redis.yml"))
        .output()
        .unwrap();
    let text = s(&out.stdout) + &s(&out.stderr);
    std::fs::remove_file(&vars).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains(PASSWORD),
        "check mode showed the password:\n{text}"
    );
    let recap: Vec<&str> = text.lines().filter(|l| l.contains(" changed=")).collect();
    assert_eq!(recap.len(), 3, "{text}");
    let unchanged = recap.iter().filter(|l| l.contains(" changed=0 ")).count();
    assert_eq!(3 - unchanged, changed, "{text}");
}

#[test]
fn flags_run_on_inventory_hosts_and_mirrors_follow_the_primary() {
    if !pipeline_lab::require() {
        return;
    }
    let t0 = Instant::now();
    let lab = pipeline_lab::Lab::with_options(3, pipeline_lab::LabOptions { apt_cache: true })
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("lab of 3 hosts up in {:.1} s", t0.elapsed().as_secs_f64());
    let hosts = lab.hosts();
    let (db, web) = (&hosts[0], &hosts[1..]);
    let t = Scratch::new();
    t.write("inventory.ini", &inventory(&lab));
    t.env
        .borrow_mut()
        .push(("PIPELINE_VAR_flags_password".into(), PASSWORD.into()));

    // Bad input is refused at plan, naming the attribute.
    t.write("bad.hcl", &stack(db.name(), "\"bad\\npassword\"", "6390"));
    let out = t.run(&["plan", "bad.hcl"]);
    let e = s(&out.stderr) + &s(&out.stdout);
    assert!(
        !out.status.success(),
        "a password with a newline passed: {e}"
    );
    assert!(e.contains("password"), "{e}");
    t.write("bad.hcl", &stack(db.name(), "var.flags_password", "70000"));
    let out = t.run(&["plan", "bad.hcl"]);
    let e = s(&out.stderr) + &s(&out.stdout);
    assert!(!out.status.success(), "port 70000 passed: {e}");
    assert!(e.contains("port"), "{e}");
    assert!(!e.contains(PASSWORD), "{e}");

    t.write(
        "s.hcl",
        &stack(db.name(), "var.flags_password", &PORT.to_string()),
    );
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(
        !plan.contains(PASSWORD),
        "the plan shows the password:\n{plan}"
    );
    // Each host's dry run: redis-server is not there yet (check mode installs nothing).
    for h in lab.hosts() {
        assert!(
            plan.lines()
                .any(|l| l.trim().starts_with(&format!("# on {}: ", h.name()))
                    && l.contains("redis-server (install)")),
            "{plan}"
        );
    }

    // Apply, with every command line here and on the hosts watched for the password.
    let watcher = SecretWatch::start(PASSWORD, &["redis-server", &format!(":{PORT}")]);
    let started = Instant::now();
    let out = t.run(&["apply", "-auto-approve", "s.hcl"]);
    let took = started.elapsed();
    let (hits, scans, saw_host) = watcher.finish();
    let text = s(&out.stdout) + &s(&out.stderr);
    assert!(out.status.success(), "apply failed:\n{text}");
    eprintln!(
        "first apply (install redis on 3 hosts, primary + 2 mirrors): {:.1} s; {scans} scans of every command line",
        took.as_secs_f64()
    );
    assert!(scans > 10, "the watcher hardly looked ({scans} scans)");
    assert!(saw_host, "the watcher never saw a host's redis-server");
    assert!(
        hits.is_empty(),
        "the password was on a command line: {hits:?}"
    );
    assert!(
        !text.contains(PASSWORD),
        "apply printed the password:\n{text}"
    );

    // Each mirror, read from this machine, has the seeded value.
    let tok = token(ADDR);
    let unit = format!("pipeline-redis-{tok}.service");
    let want = FlagValue {
        enabled: true,
        percent: 10,
    };
    let mirrors: Vec<Url> = web
        .iter()
        .map(|h| Url::new(&h.addr().to_string(), PORT, Some(PASSWORD)))
        .collect();
    let primary = Url::new(&db.addr().to_string(), PORT, Some(PASSWORD));
    for m in &mirrors {
        assert_eq!(flag_on(m, "new_checkout"), Some(want), "mirror {m}");
        // A mirror is read-only.
        let mut c = Conn::connect(m, Duration::from_secs(2)).unwrap();
        assert!(
            store::set(&mut c, "x", FlagValue::ON).is_err(),
            "mirror {m} took a write"
        );
    }
    assert_eq!(flag_on(&primary, "dark_mode"), Some(FlagValue::OFF));
    // Without the password nothing is served.
    let mut anon = Conn::connect(
        &Url::new(&db.addr().to_string(), PORT, None),
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(anon.cmd(&["GET", "flag:new_checkout"]).is_err());

    // Each instance runs under systemd; its config is 0600, owned by redis, and only it holds
    // the password on the host.
    for h in hosts {
        assert_eq!(unit_state(h, &unit), "active", "{} on {}", unit, h.name());
        let st = h
            .exec(&[
                "stat",
                "-c",
                "%a %U",
                &format!("/etc/pipeline/redis/{tok}.conf"),
            ])
            .unwrap();
        assert_eq!(st.trim(), "600 redis", "{}", h.name());
        let holders = h
            .exec(&[
                "sh",
                "-c",
                &format!(
                    "grep -rl -- '{PASSWORD}' /etc /var/lib/pipeline-redis /tmp /root || true"
                ),
            ])
            .unwrap();
        assert_eq!(
            holders.trim(),
            format!("/etc/pipeline/redis/{tok}.conf"),
            "{}",
            h.name()
        );
    }
    // `local_url` is the loopback address: on each app host, that host's own instance.
    let attrs = state(&t).resources[ADDR].attrs.clone();
    assert_eq!(
        attrs["local_url"],
        format!("redis://:{PASSWORD}@127.0.0.1:{PORT}"),
        "{attrs:?}"
    );
    for h in web {
        let said = h
            .exec(&[
                "python3",
                "-c",
                &format!(
                    "import socket; s = socket.create_connection(('127.0.0.1', {PORT}), 2); \
                     s.sendall(b'PING\\r\\n'); print(s.recv(200).decode())"
                ),
            ])
            .unwrap();
        assert!(said.starts_with("-NOAUTH"), "{}: {said}", h.name());
    }
    let replica = web[0]
        .exec(&["cat", &format!("/etc/pipeline/redis/{tok}.conf")])
        .unwrap();
    assert!(
        replica.contains(&format!("replicaof \"{}\" {PORT}", db.addr())),
        "{replica}"
    );

    // Not in state show, nor in ansible's output.
    let shown = t.ok(&["state", "show", ADDR]);
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains("(sensitive value)"), "{shown}");
    let log = std::fs::read_to_string(t.path().join(format!(".pipeline/redis/{tok}/ansible.log")))
        .expect("ansible's log");
    assert!(log.contains("pipeline_redis"), "{log}");
    assert!(!log.contains(PASSWORD), "ansible printed the password");

    // Nothing to do: no changes, and a second apply does not restart anything.
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(plan.contains("No changes"), "{plan}");
    assert!(!plan.contains(PASSWORD), "{plan}");

    // The role in check mode, run by hand on the inventory pipeline wrote (it holds no
    // secret): nothing to do is changed=0 on every host; a new port is reported for the config
    // without showing it (the password is in it) and without touching the hosts.
    let run_dir = t.path().join(format!(".pipeline/redis/{tok}"));
    let inv_text = std::fs::read_to_string(run_dir.join("inventory.json")).unwrap();
    assert!(!inv_text.contains(PASSWORD));
    check_mode(&lab, &t, &tok, &inv_text, 0);
    check_mode(
        &lab,
        &t,
        &tok,
        &inv_text.replace(&format!("port {PORT}"), &format!("port {}", PORT + 1)),
        3,
    );
    for h in hosts {
        let conf = h
            .exec(&["cat", &format!("/etc/pipeline/redis/{tok}.conf")])
            .unwrap();
        assert!(
            conf.contains(&format!("port {PORT}\n")),
            "check mode changed {}",
            h.name()
        );
    }

    // A flip through `pipeline flags set` reaches every mirror.
    let started = Instant::now();
    let out = t.ok(&["flags", "set", "new_checkout", "on", "--percent", "50"]);
    assert!(!out.contains(PASSWORD), "{out}");
    let want = FlagValue {
        enabled: true,
        percent: 50,
    };
    for m in &mirrors {
        assert!(
            wait_until(Duration::from_secs(10), || flag_on(m, "new_checkout")
                == Some(want)),
            "mirror {m} did not show the flip within 10 s"
        );
    }
    eprintln!(
        "flags set (CLI) to every mirror showing it: {} ms",
        started.elapsed().as_millis()
    );
    // A write straight on the primary, timed alone.
    let mut p = Conn::connect(&primary, Duration::from_secs(2)).unwrap();
    let mut conns: Vec<Conn> = mirrors
        .iter()
        .map(|m| Conn::connect(m, Duration::from_secs(2)).unwrap())
        .collect();
    let started = Instant::now();
    store::set(&mut p, "new_checkout", FlagValue::OFF).unwrap();
    for c in &mut conns {
        let end = Instant::now() + Duration::from_secs(10);
        while store::get(c, "new_checkout").unwrap() != Some(FlagValue::OFF) {
            assert!(Instant::now() < end, "a mirror did not follow within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    eprintln!(
        "write on the primary to both mirrors showing it: {:.2} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );

    // A flip is seen as drift (the primary's flags as `current`), never reverted.
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(
        plan.contains("Changed outside of pipeline") && plan.contains("current"),
        "{plan}"
    );
    assert!(plan.contains("No changes"), "{plan}");

    // The log is the unit's journal on the primary's host, read over ssh.
    let logs = t.ok(&["logs", ADDR]);
    assert!(logs.contains("Ready to accept connections"), "{logs}");
    assert!(!logs.contains(PASSWORD));

    // A stopped mirror is drift; the next apply starts it again and restarts nothing else.
    let pid = |h: &pipeline_lab::Host| {
        h.exec(&["systemctl", "show", "-p", "MainPID", "--value", &unit])
            .unwrap()
            .trim()
            .to_string()
    };
    let (db_pid, web0_pid) = (pid(db), pid(&web[0]));
    web[1].exec(&["systemctl", "stop", &unit]).unwrap();
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(
        !plan.contains("No changes"),
        "a stopped mirror went unseen:\n{plan}"
    );
    assert!(plan.contains(ADDR) && plan.contains("instances"), "{plan}");
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert_eq!(unit_state(&web[1], &unit), "active");
    assert_eq!(
        (pid(db), pid(&web[0])),
        (db_pid.clone(), web0_pid.clone()),
        "an unchanged instance restarted"
    );
    assert_eq!(
        flag_on(&mirrors[1], "new_checkout"),
        Some(FlagValue::OFF),
        "the restarted mirror resynced"
    );
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(plan.contains("No changes"), "{plan}");

    // A host left out of mirrors_on loses its mirror; the others keep running.
    t.write(
        "s.hcl",
        &stack(db.name(), "var.flags_password", &PORT.to_string()).replace(
            "mirrors_on = host.web",
            &format!("mirrors_on = [host.web[\"{}\"]]", web[0].name()),
        ),
    );
    // The plan shows each host's dry run (the role in --check, summaries only): the mirror
    // that goes stops, the others stay as they are.
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(
        plan.contains(&format!("# on {}: ", web[1].name()))
            && plan.contains(&format!("{unit} (stop)")),
        "{plan}"
    );
    for h in [db, &web[0]] {
        assert!(
            plan.contains(&format!("# on {}: no change", h.name())),
            "{plan}"
        );
    }
    assert!(!plan.contains(PASSWORD), "{plan}");
    assert_eq!(
        unit_state(&web[1], &unit),
        "active",
        "the dry run stopped it"
    );
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert_eq!(unit_state(&web[1], &unit), "inactive");
    assert_eq!((pid(db), pid(&web[0])), (db_pid.clone(), web0_pid.clone()));
    let urls = state(&t).resources[ADDR].attrs["mirror_urls"].clone();
    assert_eq!(urls.as_array().map(Vec::len), Some(1), "{urls}");
    assert!(t.ok(&["plan", "s.hcl"]).contains("No changes"));

    // The primary's host with a new inventory variable is the same host: the store is updated
    // in place, its flags (flipped off above) and processes kept.
    t.write(
        "inventory.ini",
        &inventory(&lab).replace(
            &format!("{} ansible_host", db.name()),
            &format!("{} role=db ansible_host", db.name()),
        ),
    );
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(
        plan.contains(&format!("{ADDR} will be updated in place"))
            && !plan.contains("forces replacement"),
        "{plan}"
    );
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert_eq!((pid(db), pid(&web[0])), (db_pid.clone(), web0_pid));
    assert_eq!(flag_on(&primary, "new_checkout"), Some(FlagValue::OFF));
    assert!(t.ok(&["plan", "s.hcl"]).contains("No changes"));

    // A mirror's host off: the plan says so (drift), apply fails naming it and changes nothing
    // else; back on, the mirror is running again (enabled) and the next apply converges.
    web[0].off().unwrap();
    let started = Instant::now();
    let out = t.run(&["plan", "s.hcl"]);
    let e = s(&out.stderr) + &s(&out.stdout);
    eprintln!(
        "plan with a mirror's host off: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The refresh sees the mirror gone (drift), so the store updates; the update's dry run
    // cannot reach the host: the plan fails naming it, as the apply would.
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains(web[0].name()) && e.contains("unreachable") && e.contains(ADDR),
        "{e}"
    );
    let started = Instant::now();
    let out = t.run(&["apply", "-auto-approve", "s.hcl"]);
    let e = s(&out.stderr) + &s(&out.stdout);
    eprintln!(
        "apply with a mirror's host off: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains(web[0].name()) && e.contains("unreachable"),
        "{e}"
    );
    assert!(!e.contains(PASSWORD));
    assert_eq!(pid(db), db_pid, "the primary restarted");
    web[0].on().unwrap();
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert_eq!(flag_on(&mirrors[0], "new_checkout"), Some(FlagValue::OFF));
    assert!(t.ok(&["plan", "s.hcl"]).contains("No changes"));

    // Destroy stops and removes every instance.
    let started = Instant::now();
    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
    eprintln!("destroy: {:.1} s", started.elapsed().as_secs_f64());
    for h in hosts {
        assert_ne!(unit_state(h, &unit), "active", "{}", h.name());
        let left = h
            .exec(&["sh", "-c", &format!("ls /etc/systemd/system/{unit} /etc/pipeline/redis/{tok}.conf 2>/dev/null || true")])
            .unwrap();
        assert!(left.trim().is_empty(), "{} keeps {left}", h.name());
    }
    assert!(Conn::connect(&primary, Duration::from_secs(1)).is_err());
}
