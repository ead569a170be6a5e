//! The ssh provider's `database` on an inventory host (the lab: podman hosts with systemd and
//! sshd): MariaDB installed by the `pipeline_mariadb` role through the lab's apt cache, a
//! database and its user with a generated password, reached from the other host with the
//! mariadb client (the password in a 0600 option file there, never a command line). The
//! generated password is in state (sensitive) and in no plan or apply output, no command line
//! here or on the hosts during apply, and no file on the hosts that others may read. The role
//! run again changes nothing and restarts nothing; a stopped server is drift that apply
//! repairs; a new password is what the user logs in with afterwards; destroy drops the
//! database. Bad input (`on` a block of two hosts, a name that is not an identifier) is refused
//! at plan.

mod common;
use common::*;
use pipeline_lab::{Host, Lab};
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ADDR: &str = "database.itrust";
/// A quote for SQL, a backslash for every escaping layer (Jinja once silently ate one).
const NEW_PASSWORD: &str = "N3w'pa\\ss-w0rd$x";

const CLIENTS: &str = "  clients  = host.app\n";

/// `extra`: more lines of the database block (each ending in a newline).
fn stack(on: &str, name: &str, extra: &str) -> String {
    format!(
        r#"provider "ssh" {{
  inventory = "inventory.ini"
}}

variable "db_password" {{
  sensitive = true
  default   = ""
}}

host "db" {{
  provider = ssh
  group    = "db"
}}

host "app" {{
  provider = ssh
  group    = "app"
}}

host "both" {{
  provider = ssh
  group    = "both"
}}

database "itrust" {{
  provider = ssh
  on       = {on}
  engine   = "mariadb"
  name     = "{name}"
  user     = "itrust"
{extra}}}
"#
    )
}

/// `sh -c script` in the host's container with `input` on its stdin (a secret goes there,
/// never into an argument); its stdout, or why it failed.
fn sh_in(h: &Host, script: &str, input: &str) -> Result<String, String> {
    let mut child = Command::new("podman")
        .args(["exec", "-i", h.container(), "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(s(&out.stdout))
    } else {
        Err(s(&out.stdout) + &s(&out.stderr))
    }
}

/// SQL run on `client` as the database's user over the network, the password in a 0600
/// option file there.
fn sql_as_user(client: &Host, server: &str, password: &str, sql: &str) -> Result<String, String> {
    let cnf = format!(
        "[client]\nhost={server}\nport=3306\nuser=itrust\npassword=\"{}\"\n",
        password.replace('\\', "\\\\").replace('"', "\\\"")
    );
    sh_in(
        client,
        "umask 077 && cat > /root/itrust.cnf && ls -l /root/itrust.cnf",
        &cnf,
    )
    .map(|ls| assert!(ls.starts_with("-rw------- "), "{ls}"))?;
    sh_in(
        client,
        "mariadb --defaults-extra-file=/root/itrust.cnf --batch --skip-column-names itrust",
        sql,
    )
}

fn main_pid(h: &Host) -> u32 {
    lab::sh(h, "systemctl show -p MainPID --value mariadb.service")
        .trim()
        .parse()
        .unwrap_or(0)
}

fn is_active(h: &Host) -> String {
    lab::sh(h, "systemctl is-active mariadb.service || true")
        .trim()
        .to_string()
}

/// Files on the host that others may read and that hold `secret` (the secret goes in on stdin).
fn readable_files_with(h: &Host, secret: &str) -> String {
    sh_in(
        h,
        "umask 077; cat > /root/.needle; \
         find / \\( -path /proc -o -path /sys -o -path /dev \\) -prune \
           -o -type f -perm -o=r -size -20M -print0 2>/dev/null \
           | xargs -0 -r grep -lF -f /root/.needle 2>/dev/null; \
         rm -f /root/.needle; true",
        secret,
    )
    .unwrap()
}

/// Every distinct command line here and on the hosts, every 20 ms, while `f` runs.
fn watching_command_lines<T>(f: impl FnOnce() -> T) -> (T, BTreeSet<String>, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let (st, se) = (stop.clone(), seen.clone());
    let watcher = std::thread::spawn(move || {
        let mut scans = 0;
        let end = Instant::now() + Duration::from_secs(900);
        while !st.load(Ordering::Relaxed) && Instant::now() < end {
            let lines = lab::command_lines();
            se.lock().unwrap().extend(lines);
            scans += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        scans
    });
    let out = f();
    stop.store(true, Ordering::Relaxed);
    let scans = watcher.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    (out, seen, scans)
}

/// Runs playbooks/mariadb.yml of the bundle pipeline wrote on the inventory it wrote (no
/// secret in it), the password in a 0600 vars file; ansible's output.
fn role_again(lab: &Lab, t: &Scratch, run_dir: &std::path::Path, password: &str) -> String {
    let bundle = std::fs::read_dir(t.path().join(".pipeline/ansible"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("playbooks/mariadb.yml").is_file())
        .expect("the materialised bundle");
    let vars = t.path().join("again-vars.json");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&vars)
            .unwrap();
        f.write_all(
            serde_json::json!({
                "pipeline_hosts": "all",
                "pipeline_mariadb_password": password,
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
    }
    let out = lab
        .ansible("ansible-playbook")
        .env("ANSIBLE_ROLES_PATH", bundle.join("roles"))
        .arg("-i")
        .arg(run_dir.join("inventory.json"))
        .arg("-e")
        .arg(format!("@{}", vars.display()))
        .arg(bundle.join("playbooks/mariadb.yml"))
        .output()
        .unwrap();
    std::fs::remove_file(&vars).unwrap();
    let text = s(&out.stdout) + &s(&out.stderr);
    assert!(out.status.success(), "{text}");
    text
}

#[test]
fn a_mariadb_database_on_an_inventory_host_serves_the_app_hosts() {
    if !pipeline_lab::require() {
        return;
    }
    let t0 = Instant::now();
    let lab = Lab::with_options(2, pipeline_lab::LabOptions { apt_cache: true })
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("lab of 2 hosts up in {:.1} s", t0.elapsed().as_secs_f64());
    let (db, app) = (lab.host(0), lab.host(1));
    let t = Scratch::new();
    t.write(
        "inventory.ini",
        &lab::inventory(
            &lab,
            &[("db", &[db]), ("app", &[app]), ("both", &[db, app])],
        ),
    );
    let on = format!("host.db[\"{}\"]", db.name());

    // Bad input is refused at plan, naming the attribute (and the hosts).
    t.write("bad.hcl", &stack("host.both", "itrust", CLIENTS));
    let out = t.run(&["plan", "bad.hcl"]);
    let e = s(&out.stderr) + &s(&out.stdout);
    assert!(!out.status.success(), "a database on two hosts passed: {e}");
    assert!(
        e.contains("`on`") && e.contains(db.name()) && e.contains(app.name()),
        "{e}"
    );
    t.write("bad.hcl", &stack(&on, "it-rust", CLIENTS));
    let out = t.run(&["plan", "bad.hcl"]);
    let e = s(&out.stderr) + &s(&out.stdout);
    assert!(!out.status.success(), "a bad name passed: {e}");
    assert!(e.contains("`name`") && e.contains("it-rust"), "{e}");

    // The client host gets the mariadb client (through the apt cache) while the server goes on.
    let client_install = {
        let app_c = app.container().to_string();
        std::thread::spawn(move || {
            let started = Instant::now();
            let out = Command::new("podman")
                .args([
                    "exec",
                    &app_c,
                    "sh",
                    "-c",
                    "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
                     apt-get install -y -q --no-install-recommends mariadb-client-core >/dev/null",
                ])
                .output()
                .unwrap();
            (out, started.elapsed())
        })
    };

    t.write("s.hcl", &stack(&on, "itrust", CLIENTS));
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(plan.contains(ADDR), "{plan}");

    // Apply with every command line here and on the hosts kept.
    let started = Instant::now();
    let (out, lines, scans) =
        watching_command_lines(|| t.run(&["apply", "-auto-approve", "s.hcl"]));
    let took = started.elapsed();
    let apply_text = s(&out.stdout) + &s(&out.stderr);
    assert!(out.status.success(), "apply failed:\n{apply_text}");
    eprintln!(
        "first apply (install mariadb-server, database, user): {:.1} s; {scans} scans, {} distinct command lines",
        took.as_secs_f64(),
        lines.len()
    );
    let (install, install_took) = client_install.join().unwrap();
    assert!(
        install.status.success(),
        "installing the client: {}",
        s(&install.stderr)
    );
    eprintln!("client install: {:.1} s", install_took.as_secs_f64());

    // The generated password: in state, 32 letters and digits, shown nowhere.
    let attrs = state(&t).resources[ADDR].attrs.clone();
    let password = attrs["password"]
        .as_str()
        .expect("a password in state")
        .to_string();
    assert_eq!(password.len(), 32, "{password}");
    assert!(password.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(
        attrs["url"],
        format!("jdbc:mariadb://{}:3306/itrust", db.addr())
    );
    assert_eq!(attrs["address"], db.addr().to_string());
    assert_eq!(attrs["port"], 3306);
    assert!(scans > 10, "the watcher hardly looked ({scans} scans)");
    assert!(
        lines.iter().any(|l| l.contains("mariadbd")),
        "the watcher never saw the host's server"
    );
    let hits: Vec<&String> = lines.iter().filter(|l| l.contains(&password)).collect();
    assert!(
        hits.is_empty(),
        "the password was on a command line: {hits:?}"
    );
    assert!(!plan.contains(&password) && !apply_text.contains(&password));
    let shown = t.ok(&["state", "show", ADDR]);
    assert!(!shown.contains(&password), "{shown}");
    assert!(shown.contains("(sensitive value)"), "{shown}");
    let run_dir = std::fs::read_dir(t.path().join(".pipeline/mariadb"))
        .unwrap()
        .flatten()
        .next()
        .expect("the run's directory")
        .path();
    let log = std::fs::read_to_string(run_dir.join("ansible.log")).expect("ansible's log");
    assert!(log.contains("pipeline_mariadb"), "{log}");
    assert!(!log.contains(&password), "ansible printed the password");
    // The search finds what it looks for, on tmpfs too (a planted file, removed again).
    sh_in(app, "umask 022; cat > /run/planted", &password).unwrap();
    let planted = readable_files_with(app, &password);
    lab::sh(app, "rm -f /run/planted");
    assert_eq!(planted.trim(), "/run/planted");
    for h in lab.hosts() {
        let found = readable_files_with(h, &password);
        assert!(found.trim().is_empty(), "{}: {found}", h.name());
    }

    // The server listens on the host's address and loopback, not every address.
    let listening = lab::sh(db, "ss -Hltn 'sport = :3306'");
    assert!(
        listening.contains(&format!("{}:3306", db.addr())),
        "{listening}"
    );
    assert!(listening.contains("127.0.0.1:3306"), "{listening}");
    assert!(
        !listening.contains("*:3306") && !listening.contains("0.0.0.0:3306"),
        "{listening}"
    );

    // From the app host: create a table, insert, select.
    let got = sql_as_user(
        app,
        &db.addr().to_string(),
        &password,
        "CREATE TABLE patients (id INT PRIMARY KEY, name VARCHAR(40));\n\
         INSERT INTO patients VALUES (1, 'Ada');\n\
         SELECT name FROM patients WHERE id = 1;\n",
    )
    .unwrap_or_else(|e| panic!("the app host cannot use the database: {e}"));
    assert_eq!(got.trim(), "Ada");
    // Only from the clients: this host (the db host's own address) is not one.
    let from_db = sql_as_user(db, &db.addr().to_string(), &password, "SELECT 1;\n");
    assert!(
        from_db
            .as_ref()
            .is_err_and(|e| e.contains("is not allowed to connect")),
        "the user logged in from a host not in clients: {from_db:?}"
    );

    // Nothing to do: no changes; the role run again changes nothing and restarts nothing.
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(plan.contains("No changes"), "{plan}");
    let pid = main_pid(db);
    assert!(pid > 0);
    let again = role_again(&lab, &t, &run_dir, &password);
    let recap: Vec<&str> = again.lines().filter(|l| l.contains(" changed=")).collect();
    assert_eq!(recap.len(), 1, "{again}");
    assert!(recap[0].contains(" changed=0 "), "{again}");
    assert!(!again.contains(&password));
    assert_eq!(main_pid(db), pid, "the role restarted the server");

    // A stopped server is drift the next apply repairs; the data is still there.
    lab::sh(db, "systemctl stop mariadb.service");
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(
        !plan.contains("No changes") && plan.contains("inactive"),
        "{plan}"
    );
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert_eq!(is_active(db), "active");
    let got = sql_as_user(
        app,
        &db.addr().to_string(),
        &password,
        "SELECT COUNT(*) FROM patients;\n",
    )
    .unwrap();
    assert_eq!(got.trim(), "1");

    // A new password: the user logs in with it, not with the old one; no restart.
    let pid = main_pid(db);
    t.env
        .borrow_mut()
        .push(("PIPELINE_VAR_db_password".into(), NEW_PASSWORD.into()));
    t.write(
        "s.hcl",
        &stack(
            &on,
            "itrust",
            &format!("{CLIENTS}  password = var.db_password\n"),
        ),
    );
    let out = t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert!(!out.contains(NEW_PASSWORD), "{out}");
    let got = sql_as_user(
        app,
        &db.addr().to_string(),
        NEW_PASSWORD,
        "SELECT name FROM patients;\n",
    )
    .unwrap_or_else(|e| panic!("the new password does not log in: {e}"));
    assert_eq!(got.trim(), "Ada");
    assert!(
        sql_as_user(app, &db.addr().to_string(), &password, "SELECT 1;\n").is_err(),
        "the old password still logs in"
    );
    assert_eq!(
        main_pid(db),
        pid,
        "changing the password restarted the server"
    );
    assert!(t.ok(&["plan", "s.hcl"]).contains("No changes"));

    // Without `clients` the user may connect from anywhere: the account at the app host's
    // address goes, the one at '%' comes (the db host itself now logs in).
    t.write(
        "s.hcl",
        &stack(&on, "itrust", "  password = var.db_password\n"),
    );
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let accounts = lab::sh(
        db,
        "mariadb --batch --skip-column-names -e \"SELECT Host FROM mysql.user WHERE User='itrust'\"",
    );
    assert_eq!(accounts.trim(), "%", "{accounts}");
    let got = sql_as_user(
        db,
        &db.addr().to_string(),
        NEW_PASSWORD,
        "SELECT COUNT(*) FROM patients;\n",
    )
    .unwrap_or_else(|e| panic!("the db host cannot log in with clients left out: {e}"));
    assert_eq!(got.trim(), "1");
    assert_eq!(
        main_pid(db),
        pid,
        "changing the clients restarted the server"
    );

    // Destroy drops the database and the user, and stops the server (no other database).
    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
    assert_ne!(is_active(db), "active");
    lab::sh(db, "systemctl start mariadb.service");
    let left = lab::sh(
        db,
        "mariadb --batch --skip-column-names -e \"SELECT (SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='itrust') + (SELECT COUNT(*) FROM mysql.user WHERE User='itrust')\"",
    );
    assert_eq!(left.trim(), "0", "the database or the user is left");
    eprintln!("whole story: {:.1} s", t0.elapsed().as_secs_f64());
}
