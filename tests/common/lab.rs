//! What the lab tests (tests/remote_*.rs, the lab part of tests/hook.rs) and benches/remote.rs
//! share: the app the ssh service runs, inventories of a lab's hosts, a scratch directory set up
//! for a stack on them, shell on a host, the service's units there, and a bounded HTTP load
//! through a balancer that keeps every answer with its send and answer time.

use super::{http, Scratch};
use pipeline_lab::{Host, Lab};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The app of the ssh service tests (tests/fixtures/remote_app/app.py): `/` answers JSON with
/// its version, release, host, port and greeting, `/health` answers ok. Its VERSION file is
/// `NAME`, `crash` (never comes up) or `NAME crash-on HOST` (never comes up on HOST).
pub const APP: &str = include_str!("../fixtures/remote_app/app.py");

/// How the service runs [`APP`].
pub const RUN: &str = "exec python3 app.py";

/// An inventory of the lab's hosts in `groups` (name and address each), root logging in with
/// the lab's key. It names no known_hosts file: pipeline pins each host's keys on first contact.
pub fn inventory(lab: &Lab, groups: &[(&str, &[&Host])]) -> String {
    let mut s = String::new();
    for (group, hosts) in groups {
        s.push_str(&format!("[{group}]\n"));
        for h in hosts.iter() {
            s.push_str(&format!("{} ansible_host={}\n", h.name(), h.addr()));
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "[all:vars]\nansible_user=root\nansible_ssh_private_key_file={}\n",
        lab.key_file().display()
    ));
    s
}

/// A scratch directory with `inventory.ini`, the stack in `file`, and [`APP`] in `app/` at
/// version `v1`. Its drop stops the ssh masters of its work directory and removes their
/// socket directory (`/tmp/pipeline-ssh-*`).
pub fn scratch(inventory: &str, file: &str, stack: &str) -> Scratch {
    let t = Scratch::new();
    t.write("inventory.ini", inventory);
    t.write("app/app.py", APP);
    set_version(&t, "v1");
    t.write(file, stack);
    t
}

/// The next release of [`APP`]: what its VERSION file says.
pub fn set_version(t: &Scratch, v: &str) {
    t.write("app/VERSION", &format!("{v}\n"));
}

/// `sh -c script` on the host (not over the network); its stdout, empty if it failed.
pub fn sh(h: &Host, script: &str) -> String {
    h.exec(&["sh", "-c", script]).unwrap_or_default()
}

/// The units of the ssh service `service` on a host: `NAME STATE` lines, sorted.
pub fn units(h: &Host, service: &str) -> Vec<String> {
    let mut v: Vec<String> = sh(
        h,
        &format!(
            "for f in /etc/systemd/system/pipeline-{service}-*.service; do [ -e \"$f\" ] || continue; u=${{f##*/}}; echo \"$u $(systemctl is-active $u)\"; done"
        ),
    )
    .lines()
    .map(str::to_string)
    .collect();
    v.sort();
    v
}

/// One request of a [`Load`]: when it was sent and answered, and what the answer said (Err:
/// why it failed).
#[derive(Clone, Debug)]
pub struct Sample {
    pub sent: Instant,
    pub done: Instant,
    /// [`APP`]'s version, or what the load's reader made of a 200 answer's body.
    pub version: Result<String, String>,
}

/// The version in an answer of [`APP`]; anything else is an error.
pub fn app_version(body: &str) -> Result<String, String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .ok_or(format!("not an app answer: {body:?}"))
}

/// A bounded GET load through `url`: `rate` requests a second in all from `clients` threads, a
/// new connection each (5 s read timeout), until stopped and at most for `max` (so at most
/// `rate × max` requests). Every request is kept as a [`Sample`].
pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `rate` requests a second to [`APP`] from 3 threads, for at most 300 s.
    pub fn start(url: &str, rate: u32) -> Load {
        Load::with(url, rate, 3, Duration::from_secs(300), app_version)
    }

    /// `read` tells what a 200 answer's body says (Err: a failed request); any other status or
    /// no answer is a failed request.
    pub fn with(
        url: &str,
        rate: u32,
        clients: u32,
        max: Duration,
        read: fn(&str) -> Result<String, String>,
    ) -> Load {
        assert!(rate > 0 && clients > 0, "a load of {rate}/s from {clients}");
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let interval = Duration::from_secs_f64(clients as f64 / rate as f64);
        let started = Instant::now();
        let threads = (0..clients)
            .map(|c| {
                let (stop, samples, url) = (stop.clone(), samples.clone(), url.to_string());
                std::thread::spawn(move || {
                    let mut next = started + interval.mul_f64(c as f64 / clients as f64);
                    while !stop.load(Ordering::SeqCst) && started.elapsed() < max {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next += interval;
                        let sent = Instant::now();
                        let version = match http("GET", &url, "") {
                            Some((200, b)) => read(&b),
                            Some((code, b)) => Err(format!("HTTP {code}: {}", b.trim())),
                            None => Err("no answer".into()),
                        };
                        samples.lock().unwrap().push(Sample {
                            sent,
                            done: Instant::now(),
                            version,
                        });
                    }
                })
            })
            .collect();
        Load {
            stop,
            samples,
            threads,
        }
    }

    /// Stops the load; every request in send order.
    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let mut v = self.samples.lock().unwrap().clone();
        v.sort_by_key(|s| s.sent);
        v
    }

    /// Stops the load once at least `n` requests were made (or it ran out of time).
    pub fn stop_after(self, n: usize) -> Vec<Sample> {
        while self.samples.lock().unwrap().len() < n
            && self.threads.iter().any(|t| !t.is_finished())
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop()
    }
}

/// The failed requests of a load.
pub fn failed(samples: &[Sample]) -> Vec<&Sample> {
    samples.iter().filter(|s| s.version.is_err()).collect()
}

/// How many answers said `version`.
pub fn answered(samples: &[Sample], version: &str) -> usize {
    samples
        .iter()
        .filter(|s| s.version.as_deref() == Ok(version))
        .count()
}

/// The 6-host stack of tests/remote_rollout.rs and benches/remote.rs: [`APP`] on every host of
/// the inventory group `web`, rolled one at a time, behind nginx on the `edge` host `lb`,
/// port 80.
pub fn edge_stack(lb: &str) -> String {
    format!(
        r#"provider "ssh" {{
  inventory = "inventory.ini"
}}

host "web" {{
  provider = ssh
  group    = "web"
}}

host "edge" {{
  provider = ssh
  group    = "edge"
}}

service "app" {{
  provider      = ssh
  on            = host.web
  source        = "app"
  run           = "{RUN}"
  port          = 8080
  health        = {{ path = "/health" }}
  update        = {{ strategy = "rolling", max_unavailable = 1 }}
  start_timeout = "30s"
}}

balancer "front" {{
  on     = host.edge["{lb}"]
  listen = 80
  routes = {{ "/" = service.app }}
}}
"#
    )
}

/// The inventory of [`edge_stack`]: the lab's first host in `edge`, the others in `web`.
pub fn edge_inventory(lab: &Lab) -> String {
    let web: Vec<&Host> = lab.hosts()[1..].iter().collect();
    inventory(lab, &[("edge", &[lab.host(0)]), ("web", &web)])
}

/// A stack of [`APP`] on every host of [`Lab::inventory`]'s group `lab`, with `GREETING` in
/// its environment and the sensitive variable `db_password` as `DB_PASSWORD` in its secret
/// environment; `service` is more of the service block's attributes (each line ending in a
/// newline).
pub fn secret_env_stack(greeting: &str, service: &str) -> String {
    format!(
        r#"variable "db_password" {{
  sensitive = true
}}
provider "ssh" {{
  inventory = "inventory.ini"
}}
host "web" {{
  provider = ssh
  group    = "lab"
}}
service "app" {{
  provider      = ssh
  on            = host.web
  source        = "app"
  run           = "{RUN}"
  port          = 8080
  env           = {{ GREETING = "{greeting}" }}
  secret_env    = {{ DB_PASSWORD = var.db_password }}
  health        = {{ path = "/health" }}
{service}  start_timeout = "10s"
}}
"#
    )
}

/// Every process command line on this machine. The lab's hosts are containers whose processes
/// this machine's /proc shows too, so this covers the control machine and every host.
pub fn command_lines() -> Vec<String> {
    let mut out = Vec::new();
    for pid in super::procfs::pids() {
        if let Some(l) = super::procfs::cmdline(pid).filter(|l| !l.is_empty()) {
            out.push(l);
        }
    }
    out
}

/// Looks at every command line (here and on the hosts, [`command_lines`]) every 20 ms until
/// finished, at most 10 minutes, for a secret, and for a witness: a process of the hosts that
/// shows the scans did see them.
pub struct SecretWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, usize, bool)>,
}

impl SecretWatch {
    /// The witness is a command line holding every one of `witness`.
    pub fn start(secret: &str, witness: &[&str]) -> SecretWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, secret) = (stop.clone(), secret.to_string());
        let witness: Vec<String> = witness.iter().map(|w| w.to_string()).collect();
        let thread = std::thread::spawn(move || {
            let (mut hits, mut scans, mut seen) = (Vec::new(), 0, false);
            let end = Instant::now() + Duration::from_secs(600);
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                for l in command_lines() {
                    seen |= witness.iter().all(|w| l.contains(w.as_str()));
                    if l.contains(&secret) {
                        hits.push(l);
                    }
                }
                scans += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (hits, scans, seen)
        });
        SecretWatch { stop, thread }
    }

    /// The command lines that held the secret, how many scans were made, and whether the
    /// witness was seen.
    pub fn finish(self) -> (Vec<String>, usize, bool) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Unix time in milliseconds (the monitor's heartbeat is stamped with it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The monitor's heartbeat of `service` (its `/api/status`): (unix ms, healthy, instances).
pub fn heartbeat(monitor: &str, service: &str) -> Vec<(u64, u64, u64)> {
    let Some((200, body)) = http("GET", &format!("{monitor}api/status"), "") else {
        return vec![];
    };
    let st: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    st["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == service)
        .flat_map(|s| s["heartbeat"].as_array().cloned().unwrap_or_default())
        .map(|b| {
            (
                b[0].as_u64().unwrap_or(0),
                b[1].as_u64().unwrap_or(0),
                b[2].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Arguments as `&str`s, for [`Scratch::run`].
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Copies `examples/NAME` into the scratch as `dst` (the source a module builds, so a test can
/// change it), without the build output `skip` (relative to it) if the checkout has one.
pub fn copy_example(t: &Scratch, name: &str, dst: &str, skip: &str) -> std::path::PathBuf {
    let to = t.path().join(dst);
    let st = std::process::Command::new("cp")
        .arg("-r")
        .arg(super::repo().join("examples").join(name))
        .arg(&to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -r examples/{name}");
    let _ = std::fs::remove_dir_all(to.join(skip));
    to
}
