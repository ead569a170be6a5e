//! `flags` on inventory hosts: when `on` is an ssh host object, the primary runs on that host and
//! a read-only replica on each host of `mirrors_on`, as systemd units written by the
//! `pipeline_redis` role (providers/ssh/ansible/roles/pipeline_redis) through the ansible runner.
//!
//! Every instance listens on `port` at its host's inventory address and on 127.0.0.1 (so
//! `local_url`, the loopback address, is each app host's own mirror). The password reaches the
//! hosts only through the runner's 0600 secrets file, into a 0600 redis.conf (`no_log` tasks);
//! seed values are written to the primary from this machine with the resp client (AUTH), and
//! the mirrors replicate them. `read` asks each host for its unit's state and the primary for its
//! flags (`current`), so a stopped instance or a flipped flag shows as drift in the plan.

use super::resp::{Conn, Url};
use super::store;
use crate::remote::{self as conn, HOST_KIND};
use pipeline_engine::provider::{
    ApplyRequest, Description, Endpoint, Health, HealthState, JsonMap, LogSource, PlanRequest,
    Planned, ProcessInfo, ProviderCtx, ProviderError, Serves, Step, TargetPreview,
};
use pipeline_engine::value::{Value, ValueMap};
use pipeline_ssh::ansible::{Ansible, AnsibleError, Recap};
use pipeline_ssh::transport::Remote;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The port when `port` is left out (redis' own).
pub const DEFAULT_PORT: u16 = 6379;
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
const READY_WAIT: Duration = Duration::from_secs(20);
const PROBE_KEY: &str = "pipeline:sync-probe";

/// An inventory host a store runs on.
#[derive(Clone, Debug)]
struct HostRef {
    name: String,
    address: String,
    /// The host object as JSON (what `conn` reads: target, pinned keys).
    obj: JsonMap,
}

fn is_ssh_host(v: &Value) -> bool {
    v.get("transport").and_then(Value::as_str) == Some("ssh") && v.get("address").is_some()
}

/// `on` names an inventory host reached over ssh (or a group of them: refused at plan).
pub fn is_remote(c: &ValueMap) -> bool {
    match c.get("on").map(|v| v.unmarked().0) {
        Some(v) if is_ssh_host(&v) => true,
        Some(Value::Map(m)) => m.values().any(is_ssh_host),
        Some(Value::List(l)) => l.iter().any(is_ssh_host),
        _ => false,
    }
}

/// A record made on inventory hosts.
pub fn is_remote_record(r: &JsonMap) -> bool {
    let ssh = |o: &serde_json::Value| o.get("transport").and_then(|t| t.as_str()) == Some("ssh");
    match r.get("on") {
        Some(o) if ssh(o) => true,
        // A host block of one host (`on = host.mongo`).
        Some(serde_json::Value::Object(m)) => m.len() == 1 && m.values().all(ssh),
        _ => false,
    }
}

fn on_help() -> &'static str {
    "on = host.db[\"db01\"] (the primary's host), mirrors_on = host.web (a replica on each)"
}

fn one(v: &Value, attr: &str) -> Result<HostRef, ProviderError> {
    let name = v.get("name").and_then(Value::as_str);
    let address = v.get("address").and_then(Value::as_str);
    let (Some(name), Some(address)) = (name, address) else {
        return Err(ProviderError::invalid_config(format!(
            "`{attr}` holds a host without a known name or address"
        ))
        .attr(attr)
        .help(on_help()));
    };
    if v.get("transport").and_then(Value::as_str) != Some("ssh") {
        return Err(ProviderError::invalid_config(format!(
            "`{attr}`: host {name} is not reached over ssh (ansible_connection=local); a remote flag \
             store runs only on hosts reached over ssh"
        ))
        .attr(attr)
        .help(on_help()));
    }
    // redis binds addresses, not names.
    if address.parse::<std::net::IpAddr>().is_err() {
        return Err(ProviderError::invalid_config(format!(
            "`{attr}`: host {name}'s address {address:?} is not an IP address; redis-server binds \
             to the host's inventory address"
        ))
        .attr(attr)
        .help("give the host an IP address in the inventory: ansible_host=10.0.0.5"));
    }
    Ok(HostRef {
        name: name.to_string(),
        address: address.to_string(),
        obj: match v.to_json() {
            serde_json::Value::Object(o) => o,
            _ => JsonMap::new(),
        },
    })
}

/// The primary's host: `on`, one host object (or a host block of exactly one host).
fn primary_of(on: Option<&Value>) -> Result<HostRef, ProviderError> {
    let on = on.map(|v| v.unmarked().0).unwrap_or(Value::Null);
    if is_ssh_host(&on) {
        return one(&on, "on");
    }
    if let Value::Map(m) = &on {
        if m.len() == 1 && m.values().all(is_ssh_host) {
            return one(m.values().next().unwrap_or(&Value::Null), "on");
        }
    }
    Err(ProviderError::invalid_config(
        "`on` of a remote flag store names one host, the primary's, not a group of several",
    )
    .attr("on")
    .help(on_help()))
}

/// The mirrors' hosts: `mirrors_on`, a host, a map of hosts (`host.web`) or a list of them.
fn mirrors_of(v: Option<&Value>) -> Result<Vec<HostRef>, ProviderError> {
    let v = match v.map(|v| v.unmarked().0) {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(v) => v,
    };
    let bad = || {
        ProviderError::invalid_config(
            "`mirrors_on` must be hosts: host.web (a host block's map), a list of hosts, or one",
        )
        .attr("mirrors_on")
        .help(on_help())
    };
    let hosts: Vec<HostRef> = if is_ssh_host(&v) {
        vec![one(&v, "mirrors_on")?]
    } else {
        match &v {
            Value::Map(m) => m
                .values()
                .map(|h| one(h, "mirrors_on"))
                .collect::<Result<_, _>>()?,
            Value::List(l) => l
                .iter()
                .map(|h| one(h, "mirrors_on"))
                .collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        }
    };
    let mut seen = std::collections::HashSet::new();
    for h in &hosts {
        if !seen.insert(h.name.clone()) {
            return Err(ProviderError::invalid_config(format!(
                "`mirrors_on` names host {} twice",
                h.name
            ))
            .attr("mirrors_on")
            .help("one mirror per host"));
        }
    }
    Ok(hosts)
}

fn placement(c: &ValueMap) -> Result<(HostRef, Vec<HostRef>), ProviderError> {
    let primary = primary_of(c.get("on"))?;
    let mirrors = mirrors_of(c.get("mirrors_on"))?;
    if let Some(m) = mirrors.iter().find(|m| m.name == primary.name) {
        return Err(ProviderError::invalid_config(format!(
            "host {} is in `mirrors_on` and is the primary's host (`on`): both would listen on the same port",
            m.name
        ))
        .attr("mirrors_on")
        .help("leave the primary's host out of mirrors_on; apps there read the primary (local_url)"));
    }
    Ok((primary, mirrors))
}

fn placement_of_record(r: &JsonMap) -> Result<(HostRef, Vec<HostRef>), ProviderError> {
    let on = r.get("on").map(Value::from_json);
    let mirrors = r.get("mirrors_on").map(Value::from_json);
    Ok((primary_of(on.as_ref())?, mirrors_of(mirrors.as_ref())?))
}

/// The instance's name on the hosts (unit `pipeline-redis-TOKEN.service`): the address in
/// `[a-z0-9-]` and a short hash, so two stores never share one.
pub fn token(addr: &str) -> String {
    let mut s: String = addr
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let s: String = s.trim_matches('-').chars().take(40).collect();
    let h = Sha256::digest(addr.as_bytes());
    let hex: String = h[..3].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hex}", s.trim_end_matches('-'))
}

fn unit(addr: &str) -> String {
    format!("pipeline-redis-{}.service", token(addr))
}

fn url(address: &str, port: u16, password: &str) -> String {
    Url::new(address, port, Some(password)).render()
}

fn given<'a>(c: &'a ValueMap, k: &str) -> Option<&'a Value> {
    c.get(k).filter(|v| !matches!(v, Value::Null))
}

fn port_of(c: &ValueMap) -> Value {
    match given(c, "port") {
        Some(v) => v.clone(),
        None => Value::Number(DEFAULT_PORT as f64),
    }
}

/// The configuration of one instance without its secrets (the role appends `requirepass` and
/// `masterauth`). Every value is one quoted redis.conf argument.
fn render_conf(bind: &str, port: u16, replicaof: Option<(&str, u16)>) -> String {
    let q = crate::quote::redis;
    let mut binds = vec![q(bind)];
    if bind != "127.0.0.1" {
        binds.push(q("127.0.0.1"));
    }
    let mut s = format!(
        "# Written by pipeline (redis provider, role pipeline_redis). Do not edit: apply rewrites it.\n\
         bind {}\n\
         port {port}\n\
         protected-mode yes\n\
         daemonize no\n\
         dir {}\n\
         logfile \"\"\n\
         save \"\"\n\
         appendonly no\n\
         repl-diskless-sync yes\n\
         repl-diskless-sync-delay 0\n\
         repl-diskless-load on-empty-db\n\
         replica-serve-stale-data yes\n\
         replica-read-only yes\n",
        binds.join(" "),
        q("./"),
    );
    if let Some((a, p)) = replicaof {
        s.push_str(&format!("replicaof {} {p}\n", q(a)));
    }
    s
}

/// Every instance's expected unit state: what plan and apply record, what `read` compares.
fn instances(primary: &HostRef, mirrors: &[HostRef]) -> BTreeMap<String, String> {
    std::iter::once(primary)
        .chain(mirrors)
        .map(|h| (h.name.clone(), "active".to_string()))
        .collect()
}

pub fn plan(req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
    let c = req.config;
    let (primary, mirrors) =
        placement(c).map_err(|e| e.map_message(|m| format!("{}: {m}", req.addr)))?;
    let mut o = c.clone();
    let port = port_of(c);
    let prior = req.prior;
    let password = match (given(c, "password"), prior) {
        (Some(v), _) => v.clone(),
        (None, Some(p)) => p
            .get("password")
            .filter(|v| !v.is_null())
            .map(Value::from_json)
            .unwrap_or(Value::Unknown),
        (None, None) => Value::Unknown,
    };
    let port_n = port.as_f64().filter(|_| port.is_known()).map(|p| p as u16);
    let pw = password
        .as_str()
        .filter(|_| password.is_known())
        .map(str::to_string);
    let s = |v: String| Value::String(v).mark(true);
    let secret_or_unknown = |f: &dyn Fn(u16, &str) -> Value| match (port_n, &pw) {
        (Some(p), Some(pw)) => f(p, pw),
        _ => Value::Unknown.mark(true),
    };
    o.insert("address".into(), Value::String(primary.address.clone()));
    o.insert("port".into(), port.clone());
    o.insert("password".into(), password.clone().mark(true));
    o.insert(
        "url".into(),
        secret_or_unknown(&|p, pw| s(url(&primary.address, p, pw))),
    );
    o.insert(
        "local_url".into(),
        secret_or_unknown(&|p, pw| s(url("127.0.0.1", p, pw))),
    );
    o.insert(
        "mirror_urls".into(),
        secret_or_unknown(&|p, pw| {
            Value::List(
                mirrors
                    .iter()
                    .map(|m| Value::String(url(&m.address, p, pw)))
                    .collect(),
            )
            .mark(true)
        }),
    );
    o.insert(
        "local_urls".into(),
        secret_or_unknown(&|p, pw| {
            Value::Map(
                std::iter::once(&primary)
                    .chain(&mirrors)
                    .map(|m| (m.name.clone(), Value::String(url(&m.address, p, pw))))
                    .collect(),
            )
            .mark(true)
        }),
    );
    o.insert(
        "mirror_ports".into(),
        match port_n {
            Some(p) => Value::List(mirrors.iter().map(|_| Value::Number(p as f64)).collect()),
            None => Value::Unknown,
        },
    );
    o.insert(
        "instances".into(),
        Value::Map(
            instances(&primary, &mirrors)
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ),
    );
    // The flags as the primary last showed them: what `read` saw, never planned.
    o.insert(
        "current".into(),
        prior
            .and_then(|p| p.get("current"))
            .map(Value::from_json)
            .unwrap_or(Value::Unknown),
    );
    // A new primary's host (or a store that was not on this host) is a new store; the same
    // host with other variables or keys keeps it.
    let same_primary = prior
        .and_then(|p| placement_of_record(p).ok())
        .is_some_and(|(old, _)| {
            old.name == primary.name
                && old.address == primary.address
                && old.obj.get("port") == primary.obj.get("port")
        });
    Ok(Planned {
        object: o,
        requires_replace: if same_primary {
            vec![]
        } else {
            vec!["on".into()]
        },
    })
}

/// The instance address of a host object (`host.db["db01"]`) among the step's peers: named in
/// the help of a changed key.
async fn host_addr(step: Option<&Step>, name: &str) -> String {
    let peers = match step {
        Some(s) => s.peers.list().await,
        None => Vec::new(),
    };
    peers
        .iter()
        .filter(|p| p.kind == HOST_KIND && p.dependency)
        .find(|p| conn::instance_key(&p.addr).as_deref() == Some(name))
        .map(|p| p.addr.clone())
        .unwrap_or_else(|| format!("host.NAME[\"{name}\"]"))
}

/// Every host of a run: the primary, a mirror of it on each of `mirrors`, and nothing on
/// `gone` (instances there are removed).
fn placements<'a>(
    primary: &'a HostRef,
    mirrors: &'a [HostRef],
    gone: &'a [HostRef],
    port: u16,
) -> Vec<Placed<'a>> {
    let mut placed = vec![Placed {
        host: primary,
        state: "present",
        conf: Some(render_conf(&primary.address, port, None)),
    }];
    for m in mirrors {
        placed.push(Placed {
            host: m,
            state: "present",
            conf: Some(render_conf(
                &m.address,
                port,
                Some((&primary.address, port)),
            )),
        });
    }
    for g in gone {
        placed.push(Placed {
            host: g,
            state: "absent",
            conf: None,
        });
    }
    placed
}

/// One host of a run: the role's variables for it.
struct Placed<'a> {
    host: &'a HostRef,
    state: &'static str,
    conf: Option<String>,
}

/// Connects to every host (keys checked against the pinned ones), writes the run's inventory
/// (connection settings and the role's per-host variables) and runs the role; `check`: in
/// `--check` mode (never `--diff`: the configuration holds the password), with an inventory
/// file of its own so an apply's is never overwritten.
async fn run_role(
    ctx: &ProviderCtx,
    addr: &str,
    placed: &[Placed<'_>],
    password: &str,
    step: Option<&Step>,
    check: bool,
) -> Result<Recap, ProviderError> {
    let ssh = conn::transport(ctx)?;
    let mut inv_hosts = serde_json::Map::new();
    for p in placed {
        if let Some(s) = step {
            s.progress(format!("connecting to {}", p.host.name));
        }
        let mut v = conn::ansible_vars(ctx, &p.host.obj, &host_addr(step, &p.host.name).await)
            .await
            .map_err(|e| e.map_message(|m| format!("{addr}: {m}")))?;
        v.insert("pipeline_redis_state".into(), json!(p.state));
        if let Some(conf) = &p.conf {
            v.insert("pipeline_redis_conf".into(), json!(conf));
        }
        inv_hosts.insert(p.host.name.clone(), serde_json::Value::Object(v));
    }
    let dir = run_dir(ctx, addr);
    // A dry run writes an inventory of its own: an apply may be using the other.
    let inventory = if check {
        dir.join(format!("preview-{}.json", std::process::id()))
    } else {
        dir.join("inventory.json")
    };
    conn::write_inventory(&inventory, inv_hosts)?;

    let ansible = Ansible::locate().map_err(|e| ProviderError::new(format!("{addr}: {e}")))?;
    let log = dir.join("ansible.log");
    let mut run = conn::role_run("playbooks/redis.yml", &inventory, &ssh, step, log.clone());
    run.check = check;
    run.exclusive = placed.iter().map(|p| p.host.address.clone()).collect();
    run.vars
        .insert("pipeline_redis_instance".into(), json!(token(addr)));
    run.secrets
        .insert("pipeline_redis_password".into(), json!(password));
    let result = ansible
        .run(
            &run,
            &ctx.work_dir.join("ansible"),
            conn::task_progress(step),
        )
        .await;
    if check {
        let _ = std::fs::remove_file(&inventory);
    }
    let result = match result {
        // Check mode installs nothing and refreshes no package list: on a host without
        // redis-server yet its install is what the dry run can tell.
        Err(AnsibleError::TasksFailed { recap }) if check && only_install_failed(&recap) => {
            Ok(*recap)
        }
        r => r,
    };
    result.map_err(|e| conn::role_error(addr, e, &log))
}

fn run_dir(ctx: &ProviderCtx, addr: &str) -> std::path::PathBuf {
    ctx.work_dir.join("redis").join(token(addr))
}

fn random_password() -> Result<String, ProviderError> {
    use std::io::Read;
    let mut b = [0u8; 18];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| ProviderError::new(format!("cannot read /dev/urandom for a password: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn connect_until(
    u: &Url,
    deadline: Instant,
    cancel: &pipeline_engine::CancelToken,
    addr: &str,
    what: &str,
) -> Result<Conn, ProviderError> {
    loop {
        if cancel.is_cancelled() {
            return Err(cancelled(addr));
        }
        match Conn::connect(u, Duration::from_secs(2)) {
            Ok(mut c) => match c.cmd(&["PING"]) {
                Ok(_) => return Ok(c),
                Err(e) if Instant::now() >= deadline => {
                    return Err(ProviderError::new(format!(
                        "{addr}: the {what} at {u} does not answer: {e}"
                    )))
                }
                Err(_) => {}
            },
            Err(e) if e.is_auth() => {
                return Err(ProviderError::new(format!(
                    "{addr}: the {what} at {u} refused the password: {e}"
                ))
                .help(format!(
                    "the password in the state does not match the running store; `pipeline apply -replace {addr}` makes a new one"
                )))
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(ProviderError::new(format!(
                    "{addr}: the {what} at {u} does not answer: {e}"
                ))
                .help("`journalctl -u pipeline-redis-*` on the host shows why"))
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cancelled(addr: &str) -> ProviderError {
    ProviderError::new(format!(
        "{addr}: interrupted while waiting for the store to answer"
    ))
}

/// Seeds the values on the primary and waits until every mirror shows a probe written there;
/// at most READY_WAIT (or what the step has left), ending early when the step is cancelled.
fn seed_and_sync(
    addr: &str,
    primary: &Url,
    mirrors: &[Url],
    seeds: &[(String, store::FlagValue)],
    wait: Duration,
    cancel: &pipeline_engine::CancelToken,
) -> Result<JsonMap, ProviderError> {
    let deadline = Instant::now() + wait;
    let mut p = connect_until(primary, deadline, cancel, addr, "primary")?;
    let e =
        |e: super::resp::Error| ProviderError::new(format!("{addr}: primary at {primary}: {e}"));
    for (k, v) in seeds {
        store::seed(&mut p, k, *v).map_err(e)?;
    }
    let nonce = random_password()?;
    p.cmd(&["SET", PROBE_KEY, &nonce, "PX", "600000"])
        .map_err(e)?;
    for m in mirrors {
        let mut c = connect_until(m, deadline, cancel, addr, "mirror")?;
        loop {
            if cancel.is_cancelled() {
                return Err(cancelled(addr));
            }
            let got = c.cmd(&["GET", PROBE_KEY]).ok().and_then(|r| r.as_string());
            if got.as_deref() == Some(nonce.as_str()) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ProviderError::new(format!(
                    "{addr}: the mirror at {m} did not receive the primary's writes within {} s",
                    wait.as_secs()
                ))
                .help("`journalctl -u pipeline-redis-*` on the mirror's and the primary's hosts shows why"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    current(&mut p).map_err(e)
}

/// Every flag on a store as `name = "on (25%)"`.
fn current(c: &mut Conn) -> Result<JsonMap, super::resp::Error> {
    Ok(store::list(c)?
        .into_iter()
        .map(|(n, v)| (n, v.describe().into()))
        .collect())
}

fn seeds_of(c: &ValueMap) -> Result<Vec<(String, store::FlagValue)>, ProviderError> {
    let Some(Value::Map(m)) = c.get("values").map(|v| v.unmarked().0) else {
        return Ok(vec![]);
    };
    m.iter()
        .map(|(k, v)| {
            super::flags::seed_value(v)
                .map(|fv| (k.clone(), fv))
                .map_err(|e| {
                    ProviderError::invalid_config(format!("flag `{k}`: {e}")).attr("values")
                })
        })
        .collect()
}

pub async fn apply(
    ctx: &ProviderCtx,
    req: &ApplyRequest<'_>,
    step: &Step,
) -> Result<JsonMap, ProviderError> {
    let (addr, c) = (req.addr, req.config);
    let (primary, mirrors) = placement(c).map_err(|e| e.map_message(|m| format!("{addr}: {m}")))?;
    let port = port_of(c).as_f64().unwrap_or(DEFAULT_PORT as f64) as u16;
    let password = match (given(c, "password").and_then(Value::as_str), req.prior) {
        (Some(p), _) => p.to_string(),
        (None, Some(p)) => match p.get("password").and_then(|v| v.as_str()) {
            Some(pw) if !pw.is_empty() => pw.to_string(),
            _ => random_password()?,
        },
        (None, None) => random_password()?,
    };
    let seeds = seeds_of(c)?;
    // Mirrors the stack no longer names are removed in the same run.
    let gone: Vec<HostRef> = match req.prior.map(placement_of_record) {
        Some(Ok((_, old))) => old
            .into_iter()
            .filter(|o| o.name != primary.name && !mirrors.iter().any(|m| m.name == o.name))
            .collect(),
        _ => vec![],
    };
    let placed = placements(&primary, &mirrors, &gone, port);
    let started = Instant::now();
    run_role(ctx, addr, &placed, &password, Some(step), false).await?;
    step.progress(format!(
        "role ran on {} host(s) in {:.1} s; seeding and waiting for the mirrors",
        placed.len(),
        started.elapsed().as_secs_f64()
    ));
    let primary_url = Url::new(&primary.address, port, Some(&password));
    let mirror_urls: Vec<Url> = mirrors
        .iter()
        .map(|m| Url::new(&m.address, port, Some(&password)))
        .collect();
    let a = addr.to_string();
    let wait = step.remaining().map_or(READY_WAIT, |r| r.min(READY_WAIT));
    let cancel = step.cancel.clone();
    let now = crate::blocking(move || {
        seed_and_sync(&a, &primary_url, &mirror_urls, &seeds, wait, &cancel)
    })
    .await?;

    let mut out: JsonMap = c
        .iter()
        .filter(|(_, v)| !matches!(v, Value::Unknown))
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect();
    out.insert("address".into(), primary.address.clone().into());
    out.insert("port".into(), port.into());
    out.insert("password".into(), password.clone().into());
    out.insert("url".into(), url(&primary.address, port, &password).into());
    out.insert("local_url".into(), url("127.0.0.1", port, &password).into());
    out.insert(
        "mirror_urls".into(),
        mirrors
            .iter()
            .map(|m| url(&m.address, port, &password))
            .collect::<Vec<_>>()
            .into(),
    );
    out.insert(
        "local_urls".into(),
        std::iter::once(&primary)
            .chain(&mirrors)
            .map(|m| (m.name.clone(), url(&m.address, port, &password).into()))
            .collect::<JsonMap>()
            .into(),
    );
    out.insert(
        "mirror_ports".into(),
        mirrors.iter().map(|_| port).collect::<Vec<_>>().into(),
    );
    out.insert("instances".into(), json!(instances(&primary, &mirrors)));
    out.insert("current".into(), now.into());
    Ok(out)
}

/// The dry run of a planned store on its hosts (`Provider::preview`): the role in `--check`
/// mode (no `--diff`: the configuration holds the password) on the primary's host, every
/// mirror's and the hosts of mirrors that go, in one run; per host a summary of the units and
/// files that would change ("2 to change: pipeline-redis-flags-ab12cd.service (restart),
/// configuration (not shown)"), never a diff.
pub async fn preview(
    ctx: &ProviderCtx,
    req: &PlanRequest<'_>,
) -> Result<Vec<TargetPreview>, ProviderError> {
    let (addr, c) = (req.addr, req.config);
    let (primary, mirrors) = placement(c).map_err(|e| e.map_message(|m| format!("{addr}: {m}")))?;
    let gone: Vec<HostRef> = match req.prior.map(placement_of_record) {
        Some(Ok((_, old))) => old
            .into_iter()
            .filter(|o| o.name != primary.name && !mirrors.iter().any(|m| m.name == o.name))
            .collect(),
        _ => vec![],
    };
    let all: Vec<&HostRef> = std::iter::once(&primary)
        .chain(&mirrors)
        .chain(&gone)
        .collect();
    let port = port_of(c);
    // The password the apply would write (the plan fills in the recorded one). One known only
    // after apply (a new store's is made then) gets a stand-in: the configuration is new, or
    // changes, either way.
    let password = match given(c, "password").filter(|v| v.is_known()) {
        Some(v) => v.unmarked().0.as_str().map(str::to_string),
        None => Some(random_password()?),
    };
    let (Some(port), Some(password)) = (
        port.as_f64().filter(|_| port.is_known()).map(|p| p as u16),
        password,
    ) else {
        return Ok(all
            .iter()
            .map(|h| TargetPreview {
                target: h.name.clone(),
                summary: "not previewed: the port is known only after apply".into(),
                diff: String::new(),
            })
            .collect());
    };
    let placed = placements(&primary, &mirrors, &gone, port);
    let recap = run_role(ctx, addr, &placed, &password, None, true).await?;
    let unit = unit(addr);
    Ok(all
        .iter()
        .map(|h| {
            let summary = match recap.host(&h.name) {
                Some(r) => preview_summary(r, &unit),
                None => "not reached by the dry run".into(),
            };
            TargetPreview {
                target: h.name.clone(),
                summary,
                diff: String::new(),
            }
        })
        .collect())
}

/// The role's install task: in check mode it fails on a host without the package.
const INSTALL_TASK: &str = "redis-server is installed";

fn only_install_failed(r: &Recap) -> bool {
    r.unreachable_hosts().is_empty()
        && r.hosts
            .values()
            .all(|h| h.failures.iter().all(|f| f.task == INSTALL_TASK))
}

/// One host's changed tasks as a summary line, in the role's order; the configuration (which
/// holds the password) is named, never shown.
fn preview_summary(r: &pipeline_ssh::ansible::HostRecap, unit: &str) -> String {
    let mut items: Vec<String> = Vec::new();
    if r.failures.iter().any(|f| f.task == INSTALL_TASK) {
        items.push("redis-server (install), then the instance".into());
    }
    for ch in &r.changes {
        let item = match ch.task.as_str() {
            INSTALL_TASK => "redis-server (install)".to_string(),
            "The configuration (holds the password)" => "configuration (not shown)".into(),
            "The unit" => format!("/etc/systemd/system/{unit}"),
            t if t.starts_with("The instance runs") => format!("{unit} (restart)"),
            "The instance is stopped and disabled" => format!("{unit} (stop)"),
            "Its unit, configuration and working directory are gone" => {
                "unit, configuration and data (remove)".into()
            }
            t => t.to_string(),
        };
        if !items.contains(&item) {
            items.push(item);
        }
    }
    if items.is_empty() {
        "no change".into()
    } else {
        format!("{} to change: {}", items.len(), items.join(", "))
    }
}

pub async fn delete(
    ctx: &ProviderCtx,
    addr: &str,
    prior: &JsonMap,
    step: &Step,
) -> Result<(), ProviderError> {
    let (primary, mirrors) =
        placement_of_record(prior).map_err(|e| e.map_message(|m| format!("{addr}: {m}")))?;
    let placed: Vec<Placed> = std::iter::once(&primary)
        .chain(&mirrors)
        .map(|h| Placed {
            host: h,
            state: "absent",
            conf: None,
        })
        .collect();
    run_role(ctx, addr, &placed, "", Some(step), false).await?;
    let _ = std::fs::remove_dir_all(run_dir(ctx, addr));
    Ok(())
}

/// What a host says of the store's unit: `active`, `inactive`, `failed`, ..., or `unreachable`;
/// with its main pid and restart count.
async fn unit_state(ctx: &ProviderCtx, addr: &str, h: &HostRef) -> (String, u32, u32) {
    let q = async {
        let ssh = conn::transport(ctx).ok()?;
        let t = conn::target(&h.obj).ok()?;
        let keys = conn::keys(&h.obj, &format!("host.NAME[\"{}\"]", h.name));
        let u = unit(addr);
        let out = ssh
            .run(
                &t,
                &keys,
                Remote::Argv(&[
                    "systemctl",
                    "show",
                    "-p",
                    "ActiveState",
                    "-p",
                    "MainPID",
                    "-p",
                    "NRestarts",
                    "--",
                    &u,
                ]),
                None,
                QUERY_TIMEOUT,
            )
            .await
            .ok()?;
        let text = out.stdout_lossy();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                .map(str::to_string)
        };
        Some((
            field("ActiveState").unwrap_or_else(|| "unknown".into()),
            field("MainPID").and_then(|p| p.parse().ok()).unwrap_or(0),
            field("NRestarts").and_then(|p| p.parse().ok()).unwrap_or(0),
        ))
    };
    q.await.unwrap_or_else(|| ("unreachable".into(), 0, 0))
}

/// Refresh: each instance's unit state and the primary's flags. A store whose every unit is
/// gone (`inactive` everywhere the hosts answer) is still recorded: the plan shows the drift
/// and the next apply starts the units again.
pub async fn read(
    ctx: &ProviderCtx,
    addr: &str,
    prior: &JsonMap,
) -> Result<Option<JsonMap>, ProviderError> {
    let Ok((primary, mirrors)) = placement_of_record(prior) else {
        return Ok(Some(prior.clone()));
    };
    let mut out = prior.clone();
    let mut states = JsonMap::new();
    for h in std::iter::once(&primary).chain(&mirrors) {
        states.insert(h.name.clone(), unit_state(ctx, addr, h).await.0.into());
    }
    out.insert("instances".into(), states.into());
    if let Some(u) = prior
        .get("url")
        .and_then(|v| v.as_str())
        .and_then(|u| Url::parse(u).ok())
    {
        let now = crate::blocking(move || {
            let mut c = Conn::connect(&u, Duration::from_secs(2))
                .map_err(|e| ProviderError::new(e.to_string()))?;
            current(&mut c).map_err(|e| ProviderError::new(e.to_string()))
        })
        .await;
        if let Ok(now) = now {
            out.insert("current".into(), now.into());
        }
    }
    Ok(Some(out))
}

/// `describe`: the units on their hosts (asked over ssh, bounded), the primary as the endpoint,
/// and journalctl over ssh as each instance's log.
pub async fn describe(
    ctx: &ProviderCtx,
    addr: &str,
    record: &JsonMap,
) -> Result<Description, ProviderError> {
    let mut d = Description {
        serves: Serves::Store,
        ..Default::default()
    };
    let (primary, mirrors) = placement_of_record(record)?;
    let port = record
        .get("port")
        .and_then(|v| v.as_u64())
        .unwrap_or(DEFAULT_PORT as u64) as u16;
    let password = record
        .get("password")
        .and_then(|v| v.as_str())
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    let ssh = conn::transport(ctx)?;
    let u = unit(addr);
    for (i, h) in std::iter::once(&primary).chain(&mirrors).enumerate() {
        let role = if i == 0 {
            "primary".to_string()
        } else {
            format!("mirror-{}", i - 1)
        };
        let (state, pid, restarts) = unit_state(ctx, addr, h).await;
        d.processes.push(ProcessInfo {
            role: role.clone(),
            pid: (pid > 0).then_some(pid),
            host: Some(h.name.clone()),
            running: state == "active",
            healthy: None,
            started_at: None,
            restarts,
            port: Some(port),
            supervisor: Some(format!("systemd: {state}")),
            ..Default::default()
        });
        if let Ok(t) = conn::target(&h.obj) {
            let keys = conn::keys(&h.obj, &format!("host.NAME[\"{}\"]", h.name));
            if let Ok(args) = ssh.ssh_args(&t, &keys).await {
                let mut argv = vec!["ssh".to_string()];
                argv.extend(args);
                argv.push(t.address.clone());
                argv.extend(["journalctl", "--no-pager", "-n", "200", "-u", &u].map(String::from));
                d.logs.push(LogSource::Command { role, argv });
            }
        }
    }
    let primary_up = d.processes.first().is_some_and(|p| p.running);
    d.health = if primary_up {
        Health::new(HealthState::Unknown, None)
    } else {
        Health::new(
            HealthState::Down,
            Some(format!(
                "the primary's unit on {} is not active",
                primary.name
            )),
        )
    };
    for role in ["serve", "primary"] {
        d.endpoints.push(Endpoint {
            role: role.into(),
            url: format!("redis://{}:{port}", primary.address),
            secret: password.clone(),
            expect_status: None,
        });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_summary_names_units_and_never_the_configuration() {
        use pipeline_ssh::ansible::{HostRecap, TaskChange, TaskFailure};
        let ch = |t: &str| TaskChange {
            task: t.into(),
            role: None,
            diff: None,
        };
        let unit = "pipeline-redis-flags-x-abcdef.service";
        let mut r = HostRecap::default();
        assert_eq!(preview_summary(&r, unit), "no change");
        r.changes.push(ch("The configuration (holds the password)"));
        r.changes.push(ch(
            "The instance runs (restarted only when its configuration or unit changed)",
        ));
        assert_eq!(
            preview_summary(&r, unit),
            format!("2 to change: configuration (not shown), {unit} (restart)")
        );
        let mut fresh = HostRecap::default();
        fresh.failures.push(TaskFailure {
            task: INSTALL_TASK.into(),
            role: None,
            msg: "No package matching 'redis-server' is available".into(),
        });
        let mut recap = Recap::default();
        recap.hosts.insert("db".into(), fresh.clone());
        assert!(only_install_failed(&recap));
        assert_eq!(
            preview_summary(&fresh, unit),
            "1 to change: redis-server (install), then the instance"
        );
        fresh.failures.push(TaskFailure {
            task: "The unit".into(),
            role: None,
            msg: "disk full".into(),
        });
        recap.hosts.insert("db".into(), fresh);
        assert!(!only_install_failed(&recap), "another failure is an error");
    }

    #[test]
    fn tokens_are_unit_names_and_differ() {
        let a = token("flags.features");
        assert!(a.starts_with("flags-features-"), "{a}");
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_ne!(token("flags.a[\"x\"]"), token("flags.a[\"x.\"]"));
        assert!(token(&"x".repeat(200)).len() < 50);
    }

    #[test]
    fn a_replica_conf_binds_its_host_and_loopback_and_holds_no_secret() {
        let c = render_conf("10.0.0.2", 6390, Some(("10.0.0.1", 6390)));
        assert!(c.contains("bind \"10.0.0.2\" \"127.0.0.1\"\n"), "{c}");
        assert!(c.contains("replicaof \"10.0.0.1\" 6390\n"), "{c}");
        assert!(c.contains("protected-mode yes\n"));
        assert!(!c.contains("requirepass") && !c.contains("masterauth"));
        let hostile = render_conf("10.0.0.2\nreplicaof 1.2.3.4 1", 1, None);
        assert_eq!(
            hostile.lines().count(),
            render_conf("x", 1, None).lines().count()
        );
    }

    #[test]
    fn placement_refuses_the_primary_as_a_mirror_and_names_the_attribute() {
        let h = |n: &str, a: &str| {
            let mut m = ValueMap::new();
            m.insert("name".into(), Value::str(n));
            m.insert("address".into(), Value::str(a));
            m.insert("transport".into(), Value::str("ssh"));
            Value::Map(m)
        };
        let mut c = ValueMap::new();
        c.insert("on".into(), h("db01", "10.0.0.1"));
        let mut web = ValueMap::new();
        web.insert("web01".into(), h("web01", "10.0.0.2"));
        web.insert("db01".into(), h("db01", "10.0.0.1"));
        c.insert("mirrors_on".into(), Value::Map(web));
        assert!(is_remote(&c));
        let e = placement(&c).unwrap_err();
        assert!(e.message.contains("db01"), "{}", e.message);
        c.insert("on".into(), h("db01", "db.example"));
        assert!(primary_of(c.get("on")).unwrap_err().message.contains("IP"));
        // A block of one host is that host; of several, a refusal.
        let mut group = ValueMap::new();
        group.insert("a".into(), h("a", "10.0.0.1"));
        c.insert("on".into(), Value::Map(group.clone()));
        assert!(is_remote(&c));
        assert_eq!(primary_of(c.get("on")).unwrap().name, "a");
        let rec: JsonMap = [("on".to_string(), Value::Map(group.clone()).to_json())]
            .into_iter()
            .collect();
        assert!(is_remote_record(&rec));
        group.insert("b".into(), h("b", "10.0.0.2"));
        c.insert("on".into(), Value::Map(group));
        let e = primary_of(c.get("on")).unwrap_err();
        assert!(e.message.contains("several"), "{}", e.message);
    }
}
