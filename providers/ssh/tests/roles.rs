//! The roles that ship in providers/ssh/ansible, run by ansible-core against lab hosts: a service
//! under systemd on two hosts (secret env, hostile argv, idempotence, one-instance rolls, crash
//! restart, check mode) and nginx on a third proxying to it.

use pipeline_lab::{Host, Lab, LabOptions};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "s3cr3t-pa$$ \"w`o'r\\d";
/// An argument that means something to systemd and to a shell, in every way we know.
const HOSTILE: &str = "a b\"c'd\\e $HOME ${X} %n %% ; `id` \\;";

fn ansible_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tarball of the test app with VERSION `version`, and its sha256.
fn artifact(dir: &Path, version: &str) -> (PathBuf, String) {
    let src = dir.join(format!("src-{version}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/roles/app.py"),
        src.join("app.py"),
    )
    .unwrap();
    std::fs::write(src.join("VERSION"), format!("{version}\n")).unwrap();
    let tarball = dir.join(format!("app-{version}.tar.gz"));
    pipeline_lab::run(
        Command::new("tar")
            .arg("-C")
            .arg(&src)
            .args(["--owner=0", "--group=0", "-czf"])
            .arg(&tarball)
            .args(["app.py", "VERSION"]),
    )
    .unwrap();
    let sha = sha256_hex(&std::fs::read(&tarball).unwrap());
    (tarball, sha)
}

/// What one `ansible-playbook` run said and how long it took.
struct Run {
    ok: bool,
    output: String,
    took: Duration,
}

impl Run {
    /// `changed=` of each host in the PLAY RECAP.
    fn changed(&self) -> BTreeMap<String, u32> {
        let mut m = BTreeMap::new();
        let recap = self.output.split("PLAY RECAP").last().unwrap_or("");
        for line in recap.lines() {
            let Some((host, rest)) = line.split_once(" : ") else {
                continue;
            };
            let changed = rest
                .split_whitespace()
                .find_map(|f| f.strip_prefix("changed="))
                .and_then(|n| n.parse().ok());
            if let Some(n) = changed {
                m.insert(host.trim().to_string(), n);
            }
        }
        m
    }
}

struct Ansible {
    cfg: PathBuf,
    inventory: PathBuf,
    dir: PathBuf,
}

impl Ansible {
    fn new(lab: &Lab) -> Ansible {
        let dir = lab.dir().to_path_buf();
        let cfg = dir.join("ansible.cfg");
        std::fs::write(
            &cfg,
            format!(
                "[defaults]\nroles_path = {roles}\ngathering = explicit\nhost_key_checking = True\n\
                 retry_files_enabled = False\nnocolor = True\nforks = 10\nlocal_tmp = {dir}/ansible-tmp\n\
                 interpreter_python = /usr/bin/python3\n\n\
                 [ssh_connection]\npipelining = True\ncontrol_path_dir = {dir}/cp\n\
                 ssh_args = -C -o ControlMaster=auto -o ControlPersist=30s -o ServerAliveInterval=2 -o ServerAliveCountMax=2\n",
                roles = ansible_dir().join("roles").display(),
                dir = dir.display()
            ),
        )
        .unwrap();
        // The lab's inventory (key, strict known_hosts) plus the groups the playbooks target.
        let mut inv = lab.inventory();
        if lab.hosts().len() >= 3 {
            inv.push_str(&format!(
                "\n[app]\n{}\n{}\n\n[edge]\n{}\n",
                lab.host(0).name(),
                lab.host(1).name(),
                lab.host(2).name()
            ));
        }
        let inventory = dir.join("roles-inventory.ini");
        std::fs::write(&inventory, inv).unwrap();
        Ansible {
            cfg,
            inventory,
            dir,
        }
    }

    /// `ansible-playbook playbooks/PLAYBOOK -e @VARS` (a 0600 file: secrets never reach argv).
    fn play(&self, playbook: &str, vars: &Value, extra: &[&str]) -> Run {
        use std::os::unix::fs::OpenOptionsExt;
        let vars_file = self.dir.join("vars.json");
        let _ = std::fs::remove_file(&vars_file);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&vars_file)
            .unwrap()
            .write_all(vars.to_string().as_bytes())
            .unwrap();
        let t = Instant::now();
        let out = Command::new(pipeline_lab::venv_bin("ansible-playbook"))
            .env("ANSIBLE_CONFIG", &self.cfg)
            .env("ANSIBLE_HOME", self.dir.join("ansible-home"))
            .arg("-i")
            .arg(&self.inventory)
            .arg(ansible_dir().join("playbooks").join(playbook))
            .arg("-e")
            .arg(format!("@{}", vars_file.display()))
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let took = t.elapsed();
        std::fs::remove_file(&vars_file).unwrap();
        Run {
            ok: out.status.success(),
            output: String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
            took,
        }
    }
}

/// GET / from the control machine; the body, or why not.
fn get(addr: Ipv4Addr, port: u16) -> Result<String, String> {
    let sock = SocketAddr::from((addr, port));
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("{sock}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
        .map_err(|e| format!("{sock}: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("{sock}: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{sock}: no HTTP answer: {text}"))?;
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        return Err(format!("{sock}: {head}"));
    }
    Ok(body.to_string())
}

/// The app's JSON at host:port, waiting up to 10 s for it to listen.
fn app(addr: Ipv4Addr, port: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match get(addr, port) {
            Ok(body) => return serde_json::from_str(&body).unwrap(),
            Err(e) if Instant::now() >= deadline => panic!("the app never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn ssh(h: &Host, args: &[&str]) -> String {
    let out = h.ssh(args).output().unwrap();
    assert!(
        out.status.success(),
        "on {}: {args:?}: {}",
        h.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn main_pid(h: &Host, unit: &str) -> u32 {
    ssh(
        h,
        &[
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            &format!("pipeline-{unit}.service"),
        ],
    )
    .parse()
    .unwrap()
}

fn instances(ports: &[(&str, u16)]) -> Value {
    Value::Array(
        ports
            .iter()
            .map(|(unit, port)| {
                json!({
                    "unit": unit,
                    "port": port,
                    "run": ["/usr/bin/python3", "app.py", HOSTILE, ";", "two\nlines"],
                    "env_file_content": format!("EXTRA=\"{unit}\"\n"),
                })
            })
            .collect(),
    )
}

fn service_vars(artifact: &Path, sha: &str, ports: &[(&str, u16)], only: &[&str]) -> Value {
    json!({
        "pipeline_hosts": "app",
        "pipeline_service": "web",
        "pipeline_artifact": artifact,
        "pipeline_release": sha,
        "pipeline_instances": instances(ports),
        "pipeline_env": { "GREETING": "hello $USER \"world\"" },
        "pipeline_secret_env": { "DB_PASSWORD": SECRET },
        "pipeline_only": only,
    })
}

fn assert_ok(what: &str, run: &Run) {
    assert!(run.ok, "{what} failed:\n{}", run.output);
    assert!(
        !run.output.contains(SECRET) && !run.output.contains("s3cr3t"),
        "{what}: the secret is in ansible's output:\n{}",
        run.output
    );
}

#[test]
fn the_service_and_nginx_roles_run_a_service_on_lab_hosts() {
    if !pipeline_lab::require() {
        return;
    }
    let t = Instant::now();
    let lab =
        Lab::with_options(3, LabOptions { apt_cache: true }).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("Lab::with_options(3): {:.1} s", t.elapsed().as_secs_f64());
    let ansible = Ansible::new(&lab);
    let apps = [lab.host(0), lab.host(1)];
    let edge = lab.host(2);
    let (v1, sha1) = artifact(lab.dir(), "v1");
    let (v2, sha2) = artifact(lab.dir(), "v2");
    let ports = [("web-a", 8001u16), ("web-b", 8002u16)];

    // First run: user, release, env files, units, all started.
    let first = ansible.play("service.yml", &service_vars(&v1, &sha1, &ports, &[]), &[]);
    assert_ok("the first service run", &first);
    eprintln!(
        "service role, first run (2 hosts, 2 instances each): {:.1} s",
        first.took.as_secs_f64()
    );
    let secret_hash = sha256_hex(SECRET.as_bytes());
    for h in apps {
        for (unit, port) in ports {
            assert_eq!(
                ssh(
                    h,
                    &[
                        "systemctl",
                        "is-active",
                        &format!("pipeline-{unit}.service")
                    ]
                ),
                "active"
            );
            let a = app(h.addr(), port);
            assert_eq!(a["version"], "v1", "{a}");
            assert_eq!(a["instance"], unit, "{a}");
            assert_eq!(a["port"], port.to_string(), "{a}");
            assert_eq!(a["secret_sha256"], secret_hash.as_str(), "{a}");
            assert_eq!(a["greeting"], "hello $USER \"world\"", "{a}");
            assert_eq!(a["extra"], unit, "{a}");
            assert_eq!(a["argv"], json!([HOSTILE, ";", "two\nlines"]), "{a}");
            assert_eq!(a["user"], "pipeline", "{a}");
            assert_eq!(
                a["cwd"],
                format!("/opt/pipeline/web/releases/{sha1}"),
                "{a}"
            );
            assert_eq!(
                ssh(
                    h,
                    &[&format!(
                        "stat -c '%a %U %G' /etc/pipeline/web/{unit}.secret.env"
                    )]
                ),
                "600 root root"
            );
        }
        // The secret is in no unit file and no non-secret env file.
        let units = ssh(
            h,
            &[
                "cat",
                "/etc/systemd/system/pipeline-web-a.service",
                "/etc/pipeline/web/web-a.env",
            ],
        );
        assert!(!units.contains("s3cr3t"), "{units}");
    }

    // Nothing to do: nothing changes.
    let noop = ansible.play("service.yml", &service_vars(&v1, &sha1, &ports, &[]), &[]);
    assert_ok("the second service run", &noop);
    eprintln!("service role, no-op run: {:.1} s", noop.took.as_secs_f64());
    let changed = noop.changed();
    assert_eq!(changed.len(), 2, "{}", noop.output);
    assert!(
        changed.values().all(|&n| n == 0),
        "{changed:?}\n{}",
        noop.output
    );

    // A crash: systemd starts the instance again.
    let h = apps[0];
    let before = main_pid(h, "web-a");
    let t = Instant::now();
    ssh(h, &["kill", "-9", &before.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let pid = main_pid(h, "web-a");
        if pid != 0 && pid != before && get(h.addr(), 8001).is_ok() {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "web-a was not restarted within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "kill -9 of web-a: answering again (pid {before} -> {after}) after {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // One step of a roll: a new release for web-a only.
    let pids: Vec<(u32, u32)> = apps
        .iter()
        .map(|h| (main_pid(h, "web-a"), main_pid(h, "web-b")))
        .collect();
    let step = ansible.play(
        "service.yml",
        &service_vars(&v2, &sha2, &ports, &["web-a"]),
        &[],
    );
    assert_ok("the pipeline_only run", &step);
    for (h, (a, b)) in apps.iter().zip(&pids) {
        assert_ne!(
            main_pid(h, "web-a"),
            *a,
            "web-a was not restarted on {}",
            h.name()
        );
        assert_eq!(
            main_pid(h, "web-b"),
            *b,
            "web-b was restarted on {}",
            h.name()
        );
        assert_eq!(app(h.addr(), 8001)["version"], "v2");
        assert_eq!(app(h.addr(), 8002)["version"], "v1");
    }
    // The rest of the roll, then nothing left to do.
    let rest = ansible.play("service.yml", &service_vars(&v2, &sha2, &ports, &[]), &[]);
    assert_ok("the full v2 run", &rest);
    for h in apps {
        assert_eq!(app(h.addr(), 8001)["version"], "v2");
        assert_eq!(app(h.addr(), 8002)["version"], "v2");
    }
    let pids: Vec<(u32, u32)> = apps
        .iter()
        .map(|h| (main_pid(h, "web-a"), main_pid(h, "web-b")))
        .collect();

    // nginx on the third host, in front of the four instances.
    let upstream: String = apps
        .iter()
        .flat_map(|h| {
            ports
                .iter()
                .map(move |(_, p)| format!("    server {}:{p};\n", h.addr()))
        })
        .collect();
    let conf = format!(
        "user www-data;\nworker_processes 1;\npid /run/nginx.pid;\nerror_log /var/log/nginx/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  upstream web {{\n{upstream}  }}\n\
         server {{\n    listen 80;\n    location / {{ proxy_pass http://web; }}\n  }}\n}}\n"
    );
    let nginx_vars = json!({ "pipeline_hosts": "edge", "pipeline_nginx_conf": conf });
    let first = ansible.play("nginx.yml", &nginx_vars, &[]);
    assert_ok("the first nginx run", &first);
    eprintln!(
        "nginx role, first run (apt through the cache): {:.1} s",
        first.took.as_secs_f64()
    );
    let mut seen = BTreeSet::new();
    for _ in 0..8 {
        let a: Value = serde_json::from_str(&get(edge.addr(), 80).unwrap()).unwrap();
        seen.insert(format!("{}:{}", a["pid"], a["instance"]));
    }
    assert_eq!(seen.len(), 4, "nginx reached {seen:?}, not the 4 instances");
    let nginx_pid = ssh(
        edge,
        &["systemctl", "show", "-p", "MainPID", "--value", "nginx"],
    );
    let noop = ansible.play("nginx.yml", &nginx_vars, &[]);
    assert_ok("the second nginx run", &noop);
    eprintln!("nginx role, no-op run: {:.1} s", noop.took.as_secs_f64());
    assert_eq!(noop.changed().get(edge.name()), Some(&0), "{}", noop.output);
    assert_eq!(
        ssh(
            edge,
            &["systemctl", "show", "-p", "MainPID", "--value", "nginx"]
        ),
        nginx_pid
    );

    // Check mode after a port changed: the unit's diff, and nothing changes on the hosts.
    let moved = [("web-a", 8001u16), ("web-b", 8003u16)];
    let check = ansible.play(
        "service.yml",
        &service_vars(&v2, &sha2, &moved, &[]),
        &["--check", "--diff"],
    );
    assert_ok("the check run", &check);
    assert!(
        check.output.contains("-Environment=\"PORT=8002\"")
            && check.output.contains("+Environment=\"PORT=8003\""),
        "the unit's diff is not in the output:\n{}",
        check.output
    );
    for (h, (a, b)) in apps.iter().zip(&pids) {
        assert_eq!(main_pid(h, "web-a"), *a);
        assert_eq!(main_pid(h, "web-b"), *b);
        assert!(
            get(h.addr(), 8003).is_err(),
            "check mode started web-b on 8003"
        );
        assert_eq!(app(h.addr(), 8002)["instance"], "web-b");
        let unit = ssh(h, &["cat", "/etc/systemd/system/pipeline-web-b.service"]);
        assert!(unit.contains("PORT=8002"), "{unit}");
    }

    // Three older releases beside v1 and v2 (dirs with old mtimes): the next full run keeps
    // the current release and the two newest others.
    for h in apps {
        ssh(
            h,
            &["cd /opt/pipeline/web/releases && mkdir old1 old2 old3 && \
               touch -d 2020-01-01 old1 && touch -d 2021-01-01 old2 && touch -d 2022-01-01 old3"],
        );
    }
    // An instance no longer listed is stopped and its unit and env files are gone.
    let fewer = ansible.play(
        "service.yml",
        &service_vars(&v2, &sha2, &ports[..1], &[]),
        &[],
    );
    assert_ok("the run without web-b", &fewer);
    for h in apps {
        assert!(
            get(h.addr(), 8002).is_err(),
            "web-b still answers on {}",
            h.name()
        );
        let left = ssh(h, &["ls /etc/systemd/system/pipeline-* /etc/pipeline/web/"]);
        assert!(!left.contains("web-b"), "{left}");
        assert_eq!(app(h.addr(), 8001)["version"], "v2");
        let kept: BTreeSet<String> = ssh(h, &["ls", "/opt/pipeline/web/releases"])
            .lines()
            .map(str::to_string)
            .collect();
        let want: BTreeSet<String> = [sha2.as_str(), sha1.as_str(), "old3"]
            .map(str::to_string)
            .into();
        assert_eq!(kept, want, "releases kept on {}", h.name());
    }
}

/// MongoDB's role, **in syntax and check mode only**: no MongoDB server package is reachable
/// from this machine (MongoDB's repository is not one of the registries it reaches), so the
/// tasks after the package never run here. What runs for real: the variable checks, the facts,
/// the repository file as check mode would write it, and the `absent` path on a host without
/// MongoDB; the password appears nowhere in the output; the host is left as it was.
#[test]
fn the_mongodb_role_in_syntax_and_check_mode() {
    if !pipeline_lab::require() {
        return;
    }
    let lab =
        Lab::with_options(1, LabOptions { apt_cache: true }).unwrap_or_else(|e| panic!("{e:#}"));
    let ansible = Ansible::new(&lab);
    let h = lab.host(0);
    let vars = |over: Value| {
        let mut v = json!({
            "pipeline_hosts": h.name(),
            "pipeline_mongodb_name": "site",
            "pipeline_mongodb_user": "site",
            "pipeline_mongodb_bind": h.addr().to_string(),
            "pipeline_mongodb_clients": ["10.0.0.7", "10.0.0.8"],
            "pipeline_mongodb_password": SECRET,
        });
        v.as_object_mut()
            .unwrap()
            .extend(over.as_object().unwrap().clone());
        v
    };

    let syntax = ansible.play("mongodb.yml", &vars(json!({})), &["--syntax-check"]);
    assert_ok("the syntax check", &syntax);

    let t = Instant::now();
    let check = ansible.play("mongodb.yml", &vars(json!({})), &["--check", "--diff"]);
    assert_ok("the check run", &check);
    eprintln!(
        "mongodb role, check mode: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Debian 12 on the lab hosts: MongoDB's Debian repository for bookworm, key by series.
    assert!(
        check.output.contains(
            "deb [ signed-by=/usr/share/keyrings/mongodb-server-7.0.asc ] \
             https://repo.mongodb.org/apt/debian bookworm/mongodb-org/7.0 main"
        ),
        "the repository line is not in the diff:\n{}",
        check.output
    );
    assert_eq!(check.changed().get(h.name()), Some(&1), "{}", check.output);
    assert_eq!(
        ssh(
            h,
            &[
                "sh",
                "-c",
                "ls /etc/apt/sources.list.d/ | grep -c mongodb || true"
            ]
        ),
        "0",
        "check mode wrote the repository"
    );

    // Bad variables stop the run before anything else, naming what is wrong.
    for (what, over) in [
        (
            "a reserved database",
            json!({"pipeline_mongodb_name": "admin"}),
        ),
        (
            "a quote in the user",
            json!({"pipeline_mongodb_user": "site'); db.dropDatabase('x"}),
        ),
        (
            "a name for a bind address",
            json!({"pipeline_mongodb_bind": "db.example"}),
        ),
        (
            "a client that is not an address",
            json!({"pipeline_mongodb_clients": ["10.0.0.1; rm"]}),
        ),
        ("no password", json!({"pipeline_mongodb_password": ""})),
    ] {
        let bad = ansible.play("mongodb.yml", &vars(over), &["--check"]);
        assert!(!bad.ok, "{what} was accepted:\n{}", bad.output);
        assert!(
            bad.output.contains("pipeline_mongodb_"),
            "{what}: the refusal names no variable:\n{}",
            bad.output
        );
        assert!(!bad.output.contains("s3cr3t"), "{what}: {}", bad.output);
    }

    // `absent` on a host without MongoDB: nothing to drop, nothing changed, for real.
    let absent = ansible.play(
        "mongodb.yml",
        &vars(json!({"pipeline_mongodb_state": "absent", "pipeline_mongodb_password": ""})),
        &[],
    );
    assert_ok("absent on a host without MongoDB", &absent);
    assert_eq!(
        absent.changed().get(h.name()),
        Some(&0),
        "{}",
        absent.output
    );
}

/// The filters' refusals need no lab: ansible-core on the control machine alone.
#[test]
fn the_quoting_filters_refuse_what_systemd_would_misread() {
    let playbook = pipeline_lab::venv_bin("ansible-playbook");
    if !playbook.exists() {
        let must = std::env::var("CI").is_ok_and(|v| v == "true")
            || std::env::var_os("PIPELINE_LAB").is_some();
        assert!(
            !must,
            "{} is missing (scripts/lab-install makes it)",
            playbook.display()
        );
        eprintln!("SKIPPED: {} is missing", playbook.display());
        return;
    }
    let dir = std::env::temp_dir().join(format!("pipeline-roles-filters-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(&playbook)
        .env("ANSIBLE_CONFIG", dir.join("none.cfg"))
        .env("ANSIBLE_HOME", dir.join("home"))
        .env("ANSIBLE_LOCAL_TEMP", dir.join("tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env(
            "ANSIBLE_FILTER_PLUGINS",
            ansible_dir().join("roles/pipeline_service/filter_plugins"),
        )
        .args(["-i", "localhost,", "-c", "local", "-e"])
        .arg(format!(
            "ansible_python_interpreter={}",
            pipeline_lab::venv_bin("python3").display()
        ))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/roles/filters.yml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // 9 refused argv lists and 5 refused environments, each a failure the play ignored.
    assert!(text.contains("ignored=2"), "{text}");
    assert_eq!(text.matches("failed: [localhost]").count(), 14, "{text}");
}
