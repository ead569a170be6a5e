//! The `database` kind of the ssh provider: a MariaDB or MongoDB server on one inventory host,
//! one database on it and its user, made by the `pipeline_mariadb` or `pipeline_mongodb` role
//! (providers/ssh/ansible/roles/) through the ansible runner.
//!
//! ```hcl
//! database "itrust" {
//!   provider = ssh
//!   on       = host.db            # one host
//!   engine   = "mariadb"          # or "mongodb" (from MongoDB's own package repository)
//!   name     = "itrust"
//!   user     = "itrust"
//!   password = var.db_password    # optional: 32 generated alphanumerics, kept in state
//!   clients  = host.itrust        # optional: the user is created for their addresses; default '%'
//! }
//! ```
//!
//! The server listens on the host's inventory address and 127.0.0.1 (MariaDB: socket activation
//! off, it would ignore `bind-address`; MongoDB: `authorization` on, the user in `admin` with
//! `readWrite` on the database, its client sources the `clients`' addresses). The password reaches the host only through the runner's
//! 0600 secrets file and goes into SQL on the stdin of `mariadb` (`no_log` tasks), never a
//! command line. `read` asks the host whether the server runs and the database and user are
//! there, so a stopped server or a dropped database shows as drift. `delete` drops the
//! database (its data is gone) and the user, and stops the server when no other database is
//! left on it.

use crate::remote::{self as conn, HOST_KIND};
use pipeline_engine::format::Format;
use pipeline_engine::provider::{
    ApplyRequest, AttrSchema, Description, Endpoint, Health, HealthState, JsonMap, KindSchema,
    LogSource, MetricSource, PlanRequest, Planned, ProcessInfo, ProviderCtx, ProviderError, Serves,
    Step, Type,
};
use pipeline_engine::value::{Value, ValueMap};
use pipeline_ssh::ansible::Ansible;
use pipeline_ssh::transport::Remote;
use serde_json::json;
use std::time::{Duration, Instant};

pub const KIND: &str = "database";
const ENGINES: &[&str] = &["mariadb", "mongodb"];

/// The server software of a `database` block: what differs between engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Mariadb,
    Mongodb,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Mariadb => "mariadb",
            Engine::Mongodb => "mongodb",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Engine::Mariadb => "MariaDB",
            Engine::Mongodb => "MongoDB",
        }
    }
    /// Where the server listens on the host's address.
    fn port(self) -> u16 {
        match self {
            Engine::Mariadb => 3306,
            Engine::Mongodb => 27017,
        }
    }
    fn unit(self) -> &'static str {
        match self {
            Engine::Mariadb => "mariadb.service",
            Engine::Mongodb => "mongod.service",
        }
    }
    /// The role's playbook, and the prefix of its variables.
    fn playbook(self) -> &'static str {
        match self {
            Engine::Mariadb => "playbooks/mariadb.yml",
            Engine::Mongodb => "playbooks/mongodb.yml",
        }
    }
    fn var(self, k: &str) -> String {
        format!("pipeline_{}_{k}", self.name())
    }
    /// Where clients connect, without credentials.
    fn url(self, address: &str, name: &str) -> String {
        let host = if address.contains(':') {
            format!("[{address}]")
        } else {
            address.to_string()
        };
        match self {
            Engine::Mariadb => format!("jdbc:mariadb://{host}:{}/{name}", self.port()),
            Engine::Mongodb => format!("mongodb://{host}:{}/{name}", self.port()),
        }
    }
}
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
const READY_WAIT: Duration = Duration::from_secs(20);
const PASSWORD_LEN: usize = 32;

pub fn schema() -> KindSchema {
    let status = || Type::Map(Box::new(Type::String));
    KindSchema {
        kind: KIND,
        attrs: vec![
            // One inventory host (`host.db["db01"]`, or `host.db` when the group has one host).
            AttrSchema::required("on", Type::Any)
                .format_at("address", Format::Address)
                .format_at("*.address", Format::Address),
            // The server software: "mariadb" (Debian's) or "mongodb" (MongoDB's repository).
            AttrSchema::optional("engine", Type::String)
                .default(Value::str("mariadb"))
                .force_new(),
            // The database's name: 1 to 64 of A-Z a-z 0-9 _. Another name is another database
            // (the old one is dropped).
            AttrSchema::required("name", Type::String).force_new(),
            // The user the apps log in as: 1 to 64 of A-Z a-z 0-9 _.
            AttrSchema::required("user", Type::String),
            // Generated (32 letters and digits) when left out, kept in state, never shown.
            // Changing it changes the user's password in place.
            AttrSchema {
                computed: true,
                ..AttrSchema::optional("password", Type::String)
                    .sensitive()
                    .format(Format::Line)
            },
            // Hosts the user may connect from (`host.app`, a list of hosts, or one): the user
            // is created for each one's address. Left out: from anywhere ('%').
            AttrSchema::optional("clients", Type::Any)
                .format_at("address", Format::Address)
                .format_at("*.address", Format::Address),
            // The host's inventory address, where the server listens.
            AttrSchema::computed("address", Type::String).derived_from(&["on"]),
            AttrSchema::computed("port", Type::Number).derived_from(&[]),
            // jdbc:mariadb://ADDRESS:3306/NAME or mongodb://ADDRESS:27017/NAME (no credentials
            // in it).
            AttrSchema::computed("url", Type::String).derived_from(&["on", "name"]),
            // What the host says: `server` (the unit's state), `database` and `user` (present,
            // absent, or unknown when the server does not answer). Planned as wanted; `read`
            // fills in what is, so a difference is drift the next apply repairs.
            AttrSchema::computed("status", status()).derived_from(&[]),
        ],
        instances_attr: None,
    }
}

/// The database's host.
#[derive(Clone, Debug)]
struct HostRef {
    name: String,
    address: String,
    obj: JsonMap,
}

fn is_host(v: &Value) -> bool {
    v.get("address").is_some() && v.get("name").is_some() && v.get("transport").is_some()
}

fn host_ref(v: &Value, attr: &str) -> Result<HostRef, ProviderError> {
    let name = v.get("name").and_then(Value::as_str).unwrap_or("?");
    let address = v.get("address").and_then(Value::as_str).unwrap_or("");
    if v.get("transport").and_then(Value::as_str) != Some("ssh") {
        return Err(ProviderError::invalid_config(format!(
            "`{attr}`: host {name} is not reached over ssh (ansible_connection=local); a database \
             runs only on hosts reached over ssh"
        ))
        .attr(attr));
    }
    if address.parse::<std::net::IpAddr>().is_err() {
        return Err(ProviderError::invalid_config(format!(
            "`{attr}`: host {name}'s address {address:?} is not an IP address; MariaDB binds (and \
             grants to) the host's inventory address"
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

/// The hosts in `v`: one host object, a host block's map of them, or a list.
fn hosts_in(v: &Value, attr: &str) -> Result<Vec<HostRef>, ProviderError> {
    let bad = || {
        ProviderError::invalid_config(format!(
            "`{attr}` must be inventory hosts: host.db[\"db01\"], host.db, or a list of hosts"
        ))
        .attr(attr)
    };
    if is_host(v) {
        return Ok(vec![host_ref(v, attr)?]);
    }
    match v {
        Value::Map(m) if m.values().all(is_host) => m.values().map(|h| host_ref(h, attr)).collect(),
        Value::List(l) if l.iter().all(is_host) => l.iter().map(|h| host_ref(h, attr)).collect(),
        _ => Err(bad()),
    }
}

/// `on`: exactly one host.
fn server_of(on: Option<&Value>) -> Result<HostRef, ProviderError> {
    let on = on.map(|v| v.unmarked().0).unwrap_or(Value::Null);
    let mut hosts = hosts_in(&on, "on")?;
    match hosts.len() {
        1 => Ok(hosts.remove(0)),
        0 => Err(ProviderError::invalid_config("`on` names no host").attr("on")),
        _ => Err(ProviderError::invalid_config(format!(
            "`on` names {} hosts ({}); a database runs on one",
            hosts.len(),
            hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .attr("on")
        .help(format!("pick one: on = host.NAME[\"{}\"]", hosts[0].name))),
    }
}

/// `clients`: the addresses the user is created for (`%` when left out).
fn clients_of(v: Option<&Value>) -> Result<Vec<String>, ProviderError> {
    let v = match v.map(|v| v.unmarked().0) {
        None | Some(Value::Null) => return Ok(vec!["%".into()]),
        Some(v) => v,
    };
    let mut out: Vec<String> = Vec::new();
    for h in hosts_in(&v, "clients")? {
        if !out.contains(&h.address) {
            out.push(h.address);
        }
    }
    if out.is_empty() {
        return Err(ProviderError::invalid_config(
            "`clients` names no host: leave it out to allow any address",
        )
        .attr("clients"));
    }
    Ok(out)
}

/// A database or user name: 1 to 64 of `[A-Za-z0-9_]` (goes into SQL unquoted by anything
/// else).
fn identifier(c: &ValueMap, attr: &str) -> Result<Option<String>, ProviderError> {
    let v = match c.get(attr) {
        Some(v) if !v.is_known() => return Ok(None),
        Some(v) => v.unmarked().0,
        None => Value::Null,
    };
    let ok = |s: &str| {
        (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    match v.as_str() {
        Some(s) if ok(s) => Ok(Some(s.to_string())),
        _ => Err(ProviderError::invalid_config(format!(
            "`{attr}` must be 1 to 64 letters, digits or `_`, found {}",
            v.render()
        ))
        .attr(attr)
        .help(format!("write {attr} = \"itrust\""))),
    }
}

fn engine_of(c: &ValueMap) -> Result<Engine, ProviderError> {
    match c.get("engine").map(|v| v.unmarked().0) {
        None | Some(Value::Null) | Some(Value::Unknown) => Ok(Engine::Mariadb),
        Some(Value::String(e)) if e == "mariadb" => Ok(Engine::Mariadb),
        Some(Value::String(e)) if e == "mongodb" => Ok(Engine::Mongodb),
        Some(other) => Err(ProviderError::invalid_config(format!(
            "`engine` {} is not one this provider runs (it runs {})",
            other.render(),
            ENGINES.join(", ")
        ))
        .attr("engine")
        .help("write engine = \"mariadb\" or engine = \"mongodb\"")),
    }
}

fn engine_of_record(r: &JsonMap) -> Engine {
    match r.get("engine").and_then(|v| v.as_str()) {
        Some("mongodb") => Engine::Mongodb,
        _ => Engine::Mariadb,
    }
}

/// What a healthy database's host says.
fn wanted_status() -> JsonMap {
    [
        ("server", "active"),
        ("database", "present"),
        ("user", "present"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), json!(v)))
    .collect()
}

pub fn plan(_ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
    let (addr, c) = (req.addr, req.config);
    let in_addr = |e: ProviderError| e.map_message(|m| format!("{addr}: {m}"));
    let engine = engine_of(c).map_err(in_addr)?;
    let server = server_of(c.get("on")).map_err(in_addr)?;
    clients_of(c.get("clients")).map_err(in_addr)?;
    let name = identifier(c, "name").map_err(in_addr)?;
    identifier(c, "user").map_err(in_addr)?;
    let mut o = c.clone();
    let password = match (
        // (`null` from a sensitive conditional arrives marked: still no password given.)
        c.get("password")
            .filter(|v| !matches!(v.unmarked().0, Value::Null)),
        req.prior,
    ) {
        (Some(v), _) => v.clone(),
        (None, Some(p)) => p
            .get("password")
            .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
            .map(Value::from_json)
            .unwrap_or(Value::Unknown),
        (None, None) => Value::Unknown,
    };
    if password.is_known() && password.as_str() == Some("") {
        return Err(
            ProviderError::invalid_config(format!("{addr}: `password` is empty"))
                .attr("password")
                .help("leave it out to have one generated, or give one"),
        );
    }
    o.insert("password".into(), password.mark(true));
    if engine == Engine::Mongodb
        && name
            .as_deref()
            .is_some_and(|n| ["admin", "local", "config"].contains(&n))
    {
        return Err(ProviderError::invalid_config(format!(
            "{addr}: `name` {:?} is one of MongoDB's own databases",
            name.unwrap_or_default()
        ))
        .attr("name")
        .help("name the application's database, e.g. name = \"site\""));
    }
    o.insert("engine".into(), Value::str(engine.name()));
    o.insert("address".into(), Value::str(&server.address));
    o.insert("port".into(), Value::Number(engine.port() as f64));
    o.insert(
        "url".into(),
        name.map_or(Value::Unknown, |n| {
            Value::String(engine.url(&server.address, &n))
        }),
    );
    o.insert(
        "status".into(),
        Value::from_json(&serde_json::Value::Object(wanted_status())),
    );
    // Another host is another server: a new database there (the old one is dropped).
    let same_host = req
        .prior
        .and_then(|p| server_of(p.get("on").map(Value::from_json).as_ref()).ok())
        .is_none_or(|old| old.name == server.name && old.address == server.address);
    Ok(Planned {
        object: o,
        requires_replace: if same_host { vec![] } else { vec!["on".into()] },
    })
}

/// The instance address of a host object among the step's peers: named in the help of a
/// changed key.
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

fn run_dir(ctx: &ProviderCtx, engine: Engine, addr: &str) -> std::path::PathBuf {
    ctx.work_dir
        .join(engine.name())
        .join(pipeline_host::names::sanitize(addr))
}

/// What the role is asked to make on the host.
struct Wanted<'a> {
    engine: Engine,
    state: &'static str,
    name: &'a str,
    user: &'a str,
    clients: &'a [String],
    password: &'a str,
}

/// Runs the role on the database's host (its keys checked against the pinned ones); the
/// password only in the runner's secrets file.
async fn run_role(
    ctx: &ProviderCtx,
    addr: &str,
    server: &HostRef,
    w: &Wanted<'_>,
    step: Option<&Step>,
) -> Result<(), ProviderError> {
    let ssh = conn::transport(ctx)?;
    if let Some(s) = step {
        s.progress(format!("connecting to {}", server.name));
    }
    let mut v = conn::ansible_vars(ctx, &server.obj, &host_addr(step, &server.name).await)
        .await
        .map_err(|e| e.map_message(|m| format!("{addr}: {m}")))?;
    let e = w.engine;
    v.insert(e.var("state"), json!(w.state));
    v.insert(e.var("name"), json!(w.name));
    v.insert(e.var("user"), json!(w.user));
    v.insert(e.var("bind"), json!(server.address));
    v.insert(e.var("clients"), json!(w.clients));
    let mut inv_hosts = serde_json::Map::new();
    inv_hosts.insert(server.name.clone(), serde_json::Value::Object(v));
    let dir = run_dir(ctx, e, addr);
    let inventory = dir.join("inventory.json");
    conn::write_inventory(&inventory, inv_hosts)?;

    let ansible = Ansible::locate().map_err(|e| ProviderError::new(format!("{addr}: {e}")))?;
    let log = dir.join("ansible.log");
    let mut run = conn::role_run(e.playbook(), &inventory, &ssh, step, log.clone());
    run.secrets.insert(e.var("password"), json!(w.password));
    run.exclusive = vec![server.address.clone()];
    ansible
        .run(
            &run,
            &ctx.work_dir.join("ansible"),
            conn::task_progress(step),
        )
        .await
        .map(|_| ())
        .map_err(|e| conn::role_error(addr, e, &log))
}

/// 32 letters and digits from /dev/urandom (no quoting layer anywhere can change them).
fn random_password() -> Result<String, ProviderError> {
    use std::io::Read;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut f = std::fs::File::open("/dev/urandom")
        .map_err(|e| ProviderError::new(format!("cannot read /dev/urandom for a password: {e}")))?;
    let mut out = String::with_capacity(PASSWORD_LEN);
    let mut buf = [0u8; 64];
    while out.len() < PASSWORD_LEN {
        f.read_exact(&mut buf).map_err(|e| {
            ProviderError::new(format!("cannot read /dev/urandom for a password: {e}"))
        })?;
        // 248 = 4 × 62: below it every letter is equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() < PASSWORD_LEN {
                out.push(ALPHABET[(*b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// Waits until the server accepts a TCP connection at `address`, at most `wait`.
fn wait_port(
    addr: &str,
    engine: Engine,
    address: &str,
    wait: Duration,
) -> Result<(), ProviderError> {
    let deadline = Instant::now() + wait;
    let sa = std::net::SocketAddr::new(
        address
            .parse()
            .map_err(|_| ProviderError::new(format!("{addr}: {address:?} is not an address")))?,
        engine.port(),
    );
    loop {
        match std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(ProviderError::new(format!(
                    "{addr}: {} on {sa} does not accept connections from here: {e}",
                    engine.title()
                ))
                .help(format!(
                    "`journalctl -u {}` on the host shows why; a firewall may be in the way",
                    engine.unit()
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn str_attr<'a>(c: &'a ValueMap, k: &str) -> Option<&'a str> {
    c.get(k).and_then(Value::as_str)
}

pub async fn apply(
    ctx: &ProviderCtx,
    req: &ApplyRequest<'_>,
    step: &Step,
) -> Result<JsonMap, ProviderError> {
    let (addr, c) = (req.addr, req.config);
    let in_addr = |e: ProviderError| e.map_message(|m| format!("{addr}: {m}"));
    let engine = engine_of(c).map_err(in_addr)?;
    let server = server_of(c.get("on")).map_err(in_addr)?;
    let clients = clients_of(c.get("clients")).map_err(in_addr)?;
    let name = identifier(c, "name")
        .map_err(in_addr)?
        .ok_or_else(|| ProviderError::new(format!("{addr}: `name` is not known at apply")))?;
    let user = identifier(c, "user")
        .map_err(in_addr)?
        .ok_or_else(|| ProviderError::new(format!("{addr}: `user` is not known at apply")))?;
    let password = match (str_attr(c, "password"), req.prior) {
        (Some(p), _) => p.to_string(),
        (None, Some(p)) => match p.get("password").and_then(|v| v.as_str()) {
            Some(pw) if !pw.is_empty() => pw.to_string(),
            _ => random_password()?,
        },
        (None, None) => random_password()?,
    };
    let started = Instant::now();
    // A user renamed in the stack: the old one goes first (its database stays).
    if let Some(old) = req
        .prior
        .and_then(|p| p.get("user"))
        .and_then(|u| u.as_str())
        .filter(|u| *u != user)
    {
        step.progress(format!("dropping the old user {old}"));
        drop_user(ctx, addr, engine, &server, old, step).await?;
    }
    run_role(
        ctx,
        addr,
        &server,
        &Wanted {
            engine,
            state: "present",
            name: &name,
            user: &user,
            clients: &clients,
            password: &password,
        },
        Some(step),
    )
    .await?;
    step.progress(format!(
        "role ran on {} in {:.1} s; checking the port from here",
        server.name,
        started.elapsed().as_secs_f64()
    ));
    let (a, address) = (addr.to_string(), server.address.clone());
    let wait = step.remaining().map_or(READY_WAIT, |r| r.min(READY_WAIT));
    crate::blocking(move || wait_port(&a, engine, &address, wait)).await?;

    let mut out: JsonMap = c
        .iter()
        .filter(|(_, v)| !matches!(v, Value::Unknown))
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect();
    out.insert("engine".into(), json!(engine.name()));
    out.insert("address".into(), json!(server.address));
    out.insert("port".into(), json!(engine.port()));
    out.insert("url".into(), json!(engine.url(&server.address, &name)));
    out.insert("password".into(), json!(password));
    out.insert("status".into(), serde_json::Value::Object(wanted_status()));
    Ok(out)
}

/// Drops user `old` (all its accounts) on the server: the role's `absent` would drop the
/// database too, so this is a small script of its own on stdin (no secret in it).
async fn drop_user(
    ctx: &ProviderCtx,
    addr: &str,
    engine: Engine,
    server: &HostRef,
    old: &str,
    step: &Step,
) -> Result<(), ProviderError> {
    if !old.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || old.is_empty() {
        return Ok(());
    }
    if engine == Engine::Mongodb {
        return mongo_drop_user(ctx, addr, server, old, step).await;
    }
    let sql = format!(
        "SET @gone = (SELECT GROUP_CONCAT(CONCAT(QUOTE(User), '@', QUOTE(Host))) FROM mysql.user WHERE User = '{old}');\n\
         SET @s = IF(@gone IS NULL, 'DO 0', CONCAT('DROP USER ', @gone));\n\
         PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;\n"
    );
    drop_on_host(ctx, addr, server, &["mariadb", "--batch"], &sql, old, step).await
}

/// Runs `argv` as root on the database's host with `script` on its stdin (a drop of user
/// `old`, which names it in the error).
async fn drop_on_host(
    ctx: &ProviderCtx,
    addr: &str,
    server: &HostRef,
    argv: &[&str],
    script: &str,
    old: &str,
    step: &Step,
) -> Result<(), ProviderError> {
    let ssh = conn::transport(ctx)?;
    let t = conn::target(&server.obj)?;
    let keys = conn::keys(&server.obj, &host_addr(Some(step), &server.name).await);
    let argv = as_root(&server.obj, argv);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = ssh
        .run(
            &t,
            &keys,
            Remote::Argv(&argv),
            Some(script.as_bytes()),
            QUERY_TIMEOUT,
        )
        .await
        .map_err(|e| conn::error(e).map_message(|m| format!("{addr}: host {}: {m}", t.name)))?;
    if out.status != 0 {
        return Err(ProviderError::new(format!(
            "{addr}: dropping the old user {old} on {} failed: {}",
            server.name,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// `argv` as root: through `sudo -n` when the host logs in as another user with `become`.
fn as_root(host: &JsonMap, argv: &[&str]) -> Vec<String> {
    let become_ = host.get("become").and_then(|b| b.as_bool()) == Some(true);
    let mut v: Vec<String> = Vec::new();
    if become_ {
        v.extend(["sudo", "-n"].map(String::from));
    }
    v.extend(argv.iter().map(|s| s.to_string()));
    v
}

fn server_of_record(r: &JsonMap) -> Result<HostRef, ProviderError> {
    server_of(r.get("on").map(Value::from_json).as_ref())
}

fn record_str<'a>(r: &'a JsonMap, k: &str) -> &'a str {
    r.get(k).and_then(|v| v.as_str()).unwrap_or("")
}

pub async fn delete(
    ctx: &ProviderCtx,
    addr: &str,
    prior: &JsonMap,
    step: &Step,
) -> Result<(), ProviderError> {
    let server = server_of_record(prior).map_err(|e| e.map_message(|m| format!("{addr}: {m}")))?;
    let engine = engine_of_record(prior);
    let clients: Vec<String> = vec!["%".into()];
    run_role(
        ctx,
        addr,
        &server,
        &Wanted {
            engine,
            state: "absent",
            name: record_str(prior, "name"),
            user: record_str(prior, "user"),
            clients: &clients,
            password: "",
        },
        Some(step),
    )
    .await?;
    let _ = std::fs::remove_dir_all(run_dir(ctx, engine, addr));
    Ok(())
}

/// The server's unit state, main pid and restarts, and whether the database and the user
/// exist: asked over ssh (SQL on stdin, names checked), bounded. `None`: the host did not
/// answer.
async fn host_status(
    ctx: &ProviderCtx,
    engine: Engine,
    server: &HostRef,
    name: &str,
    user: &str,
) -> Option<(String, u32, u32, String, String)> {
    let ssh = conn::transport(ctx).ok()?;
    let t = conn::target(&server.obj).ok()?;
    let keys = conn::keys(&server.obj, &format!("host.NAME[\"{}\"]", server.name));
    let ident =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ident(name) || !ident(user) {
        return None;
    }
    // Line 1..3: the unit; then (when the server answers) `DATABASES USERS`.
    let (script, sql) = match engine {
        Engine::Mariadb => (
            "systemctl show -p ActiveState -p MainPID -p NRestarts -- mariadb.service; \
             mariadb --batch --skip-column-names 2>/dev/null || echo unknown",
            format!(
                "SELECT (SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{name}'), \
                 (SELECT COUNT(*) FROM mysql.user WHERE User = '{user}');\n"
            ),
        ),
        // The administrator's password is read from its root-only file by mongosh itself.
        Engine::Mongodb => (
            "systemctl show -p ActiveState -p MainPID -p NRestarts -- mongod.service; \
             mongosh --quiet --norc mongodb://127.0.0.1:27017/admin --file /dev/stdin 2>/dev/null \
             || echo unknown",
            format!(
                "{MONGO_LOGIN}\nprint((db.getMongo().getDBNames().includes('{name}') ? 1 : 0) + ' ' + \
                 (adminDb.getUser('{user}') !== null ? 1 : 0));\n"
            ),
        ),
    };
    let argv = as_root(&server.obj, &["sh", "-c", script]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = ssh
        .run(
            &t,
            &keys,
            Remote::Argv(&argv),
            Some(sql.as_bytes()),
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
    let state = field("ActiveState").unwrap_or_else(|| "unknown".into());
    let pid = field("MainPID").and_then(|p| p.parse().ok()).unwrap_or(0);
    let restarts = field("NRestarts").and_then(|p| p.parse().ok()).unwrap_or(0);
    let counts: Option<(u32, u32)> = text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let a = it.next()?.parse().ok()?;
        let b = it.next()?.parse().ok()?;
        Some((a, b))
    });
    let present = |n: u32| if n > 0 { "present" } else { "absent" }.to_string();
    let (db, us) = match counts {
        Some((d, u)) => (present(d), present(u)),
        None => ("unknown".into(), "unknown".into()),
    };
    Some((state, pid, restarts, db, us))
}

/// The start of every mongosh script: log in as the role's administrator (its password read
/// on the host from its root-only file; see roles/pipeline_mongodb).
const MONGO_LOGIN: &str = "const fs = require('fs');\n\
     const adminDb = db.getSiblingDB('admin');\n\
     adminDb.auth('pipeline_admin', fs.readFileSync('/etc/mongodb-pipeline-admin', 'utf8').trim());";

/// Drops MongoDB user `old` (a checked identifier) in `admin`; its database stays.
async fn mongo_drop_user(
    ctx: &ProviderCtx,
    addr: &str,
    server: &HostRef,
    old: &str,
    step: &Step,
) -> Result<(), ProviderError> {
    let script = format!(
        "{MONGO_LOGIN}\nif (adminDb.getUser('{old}') !== null) adminDb.dropUser('{old}');\n"
    );
    let argv = [
        "mongosh",
        "--quiet",
        "--norc",
        "mongodb://127.0.0.1:27017/admin",
        "--file",
        "/dev/stdin",
    ];
    drop_on_host(ctx, addr, server, &argv, &script, old, step).await
}

/// Refresh: whether the server runs and the database and user are there. A host that does
/// not answer keeps the record as it was.
pub async fn read(
    ctx: &ProviderCtx,
    _addr: &str,
    prior: &JsonMap,
) -> Result<Option<JsonMap>, ProviderError> {
    let Ok(server) = server_of_record(prior) else {
        return Ok(Some(prior.clone()));
    };
    let mut out = prior.clone();
    let (name, user) = (record_str(prior, "name"), record_str(prior, "user"));
    let engine = engine_of_record(prior);
    if let Some((state, _, _, db, us)) = host_status(ctx, engine, &server, name, user).await {
        let status: JsonMap = [("server", state), ("database", db), ("user", us)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        out.insert("status".into(), serde_json::Value::Object(status));
    }
    Ok(Some(out))
}

/// `describe`: the server's unit (asked over ssh), health as a TCP connect from here, the
/// journal over ssh as its log.
pub async fn describe(
    ctx: &ProviderCtx,
    _addr: &str,
    record: &JsonMap,
) -> Result<Description, ProviderError> {
    let server = server_of_record(record)?;
    let mut d = Description {
        serves: Serves::Store,
        ..Default::default()
    };
    let (name, user) = (record_str(record, "name"), record_str(record, "user"));
    let engine = engine_of_record(record);
    let port = engine.port();
    let status = host_status(ctx, engine, &server, name, user).await;
    let (state, pid, restarts) = status
        .as_ref()
        .map_or(("unreachable".to_string(), 0, 0), |s| {
            (s.0.clone(), s.1, s.2)
        });
    d.processes.push(ProcessInfo {
        role: "server".into(),
        pid: (pid > 0).then_some(pid),
        host: Some(server.name.clone()),
        running: state == "active",
        healthy: None,
        started_at: None,
        restarts,
        port: Some(port),
        supervisor: Some(format!("systemd: {state}")),
        ..Default::default()
    });
    let address = server.address.clone();
    let reach = crate::blocking(move || {
        let sa = std::net::SocketAddr::new(
            address
                .parse()
                .map_err(|_| ProviderError::new("not an address"))?,
            port,
        );
        std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| ProviderError::new(format!("connect {sa}: {e}")))
    })
    .await;
    d.health = match reach {
        Ok(()) => Health::new(HealthState::Healthy, None),
        Err(e) => Health::new(HealthState::Down, Some(e.message)),
    };
    d.endpoints.push(Endpoint {
        role: "serve".into(),
        url: format!("tcp://{}:{port}", server.address),
        secret: None,
        expect_status: None,
    });
    let ssh = conn::transport(ctx)?;
    if let Ok(t) = conn::target(&server.obj) {
        let keys = conn::keys(&server.obj, &format!("host.NAME[\"{}\"]", server.name));
        if let Ok(args) = ssh.ssh_args(&t, &keys).await {
            // The host's CPU and memory for the monitor (it appends its own sampling command).
            let mut usage = vec!["ssh".to_string()];
            usage.extend(args.iter().cloned());
            usage.extend(["--".to_string(), t.address.clone()]);
            d.metrics.push(MetricSource::RemoteUsage {
                host: server.name.clone(),
                argv: usage,
                units: vec!["mariadb.service".into()],
            });
            let mut argv = vec!["ssh".to_string()];
            argv.extend(args);
            argv.push(t.address.clone());
            argv.extend(as_root(
                &server.obj,
                &["journalctl", "--no-pager", "-n", "200", "-u", engine.unit()],
            ));
            d.logs.push(LogSource::Command {
                role: "server".into(),
                argv,
            });
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: &str, a: &str) -> Value {
        let mut m = ValueMap::new();
        m.insert("name".into(), Value::str(n));
        m.insert("address".into(), Value::str(a));
        m.insert("transport".into(), Value::str("ssh"));
        Value::Map(m)
    }

    #[test]
    fn on_is_one_host_and_a_block_of_several_names_them() {
        assert_eq!(
            server_of(Some(&h("db01", "10.0.0.1"))).unwrap().name,
            "db01"
        );
        let mut one = ValueMap::new();
        one.insert("db01".into(), h("db01", "10.0.0.1"));
        assert_eq!(
            server_of(Some(&Value::Map(one.clone()))).unwrap().address,
            "10.0.0.1"
        );
        one.insert("db02".into(), h("db02", "10.0.0.2"));
        let e = server_of(Some(&Value::Map(one))).unwrap_err();
        assert!(
            e.message.contains("db01") && e.message.contains("db02"),
            "{}",
            e.message
        );
        assert!(server_of(Some(&h("db", "db.example"))).is_err());
        assert!(server_of(Some(&Value::str("db01"))).is_err());
    }

    #[test]
    fn names_are_sql_safe_identifiers() {
        let mut c = ValueMap::new();
        for ok in ["itrust", "app_db", "A1", &"x".repeat(64)] {
            c.insert("name".into(), Value::str(ok));
            assert_eq!(identifier(&c, "name").unwrap().as_deref(), Some(ok));
        }
        for bad in ["", "it-rust", "a b", "x'; DROP", "ä", &"x".repeat(65)] {
            c.insert("name".into(), Value::str(bad));
            let e = identifier(&c, "name").unwrap_err();
            assert_eq!(e.attr.as_deref(), Some("name"), "{bad}");
        }
        c.insert("name".into(), Value::Unknown);
        assert_eq!(identifier(&c, "name").unwrap(), None);
    }

    #[test]
    fn clients_default_to_anywhere_and_else_are_addresses() {
        assert_eq!(clients_of(None).unwrap(), vec!["%"]);
        let l = Value::List(vec![
            h("a", "10.0.0.2"),
            h("b", "10.0.0.3"),
            h("a", "10.0.0.2"),
        ]);
        assert_eq!(clients_of(Some(&l)).unwrap(), vec!["10.0.0.2", "10.0.0.3"]);
        assert!(clients_of(Some(&Value::str("%"))).is_err());
    }

    #[test]
    fn a_generated_password_is_32_alphanumerics_and_differs() {
        let a = random_password().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, random_password().unwrap());
    }

    #[test]
    fn the_url_names_address_port_and_database() {
        assert_eq!(
            Engine::Mariadb.url("10.0.0.1", "itrust"),
            "jdbc:mariadb://10.0.0.1:3306/itrust"
        );
        assert_eq!(
            Engine::Mariadb.url("fd00::1", "x"),
            "jdbc:mariadb://[fd00::1]:3306/x"
        );
        assert_eq!(
            Engine::Mongodb.url("10.0.0.1", "site"),
            "mongodb://10.0.0.1:27017/site"
        );
    }

    #[test]
    fn mariadb_and_mongodb_are_the_engines() {
        let mut c = ValueMap::new();
        assert_eq!(engine_of(&c).unwrap(), Engine::Mariadb);
        c.insert("engine".into(), Value::str("mariadb"));
        assert_eq!(engine_of(&c).unwrap(), Engine::Mariadb);
        c.insert("engine".into(), Value::str("mongodb"));
        assert_eq!(engine_of(&c).unwrap(), Engine::Mongodb);
        assert_eq!(Engine::Mongodb.var("password"), "pipeline_mongodb_password");
        assert_eq!(Engine::Mongodb.playbook(), "playbooks/mongodb.yml");
        c.insert("engine".into(), Value::str("postgres"));
        let e = engine_of(&c).unwrap_err();
        assert_eq!(e.attr.as_deref(), Some("engine"));
        assert!(
            e.message.contains("postgres") && e.message.contains("mongodb"),
            "{}",
            e.message
        );
    }
}
