//! `flags`: a redis-server feature-flag store. One primary (the only place flags are written,
//! by `pipeline flags set`) and mirrors (read-only redis replicas) next to the instances that
//! read them, so a flag read is a loopback round trip and instances keep the last values when
//! the primary is down.
//!
//! Every redis-server runs supervised (pipeline-supervise, TCP health) in
//! `.pipeline/run/<address>/primary` and `.pipeline/run/<address>/mirror-N`, with a config the
//! provider writes there (`redis.conf`, mode 0600: it holds the password). redis logs to
//! stdout, which the supervisor keeps in `replica.log` of the same directory.
//!
//! `values` are seeds: written on create (and on later applies) only for flags that do not exist
//! yet. Flags flipped at run time with `pipeline flags set` are never reverted by `apply`:
//! they are runtime toggles, not configuration.

use super::resp::{Conn, Url};
use super::store::{self, FlagValue};
use pipeline_engine::format::Format;
use pipeline_engine::provider::{
    ApplyRequest, AttrSchema, Invalid, JsonMap, KindSchema, PlanRequest, Planned, ProviderCtx,
    ProviderError, Type,
};
use pipeline_engine::value::{Value, ValueMap};
use pipeline_host::names::sanitize;
use pipeline_supervise::{HealthCheck, ReplicaSpec};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAX_MIRRORS: f64 = 32.0;
/// Written by apply to check that mirrors receive the primary's writes (expires after 10 min).
const PROBE_KEY: &str = "pipeline:sync-probe";
const INSTALL_HELP: &str =
    "install it: apt-get install redis-server (or put the redis-server binary on PATH)";

pub fn schema() -> KindSchema {
    KindSchema {
        kind: "flags",
        attrs: vec![
            // A host or a list of hosts; the primary runs on the first. On the local provider
            // every host is this machine (127.0.0.1).
            // A change replaces the store (`requires_replace`), except on inventory hosts when
            // the primary's host stays the same one (its variables or keys changed).
            AttrSchema::optional("on", Type::Any)
                .format_at("address", Format::Address)
                .format_at("*.address", Format::Address),
            // The hosts of the mirrors when `on` is an inventory host: one read-only replica on
            // each (`host.web`, a list of hosts, or one). See [`super::remote`].
            AttrSchema::optional("mirrors_on", Type::Any)
                .format_at("address", Format::Address)
                .format_at("*.address", Format::Address),
            // Mirrors on this machine: one per host that runs instances (one on the local default).
            AttrSchema::optional("mirrors", Type::Number).default(Value::Number(1.0)),
            // The primary's port: a free one when left out (then kept in state).
            AttrSchema {
                computed: true,
                ..AttrSchema::optional("port", Type::Number)
                    .force_new()
                    .derived_from(&["port"])
                    .format(Format::Port)
            },
            // Generated from /dev/urandom when left out, kept in state, never shown.
            AttrSchema {
                computed: true,
                ..AttrSchema::optional("password", Type::String)
                    .force_new()
                    .sensitive()
            },
            // Seed values, written only for flags that do not exist yet:
            // `{ tables = true, new_editor = false, beta = 25 }` (a number is a percentage).
            AttrSchema::optional("values", Type::Map(Box::new(Type::Any)))
                .default(Value::Map(Default::default())),
            AttrSchema::computed("address", Type::String).derived_from(&["on"]),
            // redis://:PASSWORD@ADDRESS:PORT of the primary.
            AttrSchema::computed("url", Type::String).sensitive(),
            // The mirror for this host: what instances read.
            AttrSchema::computed("local_url", Type::String).sensitive(),
            AttrSchema::computed("mirror_urls", Type::List(Box::new(Type::String))).sensitive(),
            AttrSchema::computed("mirror_ports", Type::List(Box::new(Type::Number)))
                .derived_from(&["port"]),
            // On inventory hosts: each host's instance (`redis://:PASSWORD@ADDRESS:PORT`) by host.
            AttrSchema::computed("local_urls", Type::Map(Box::new(Type::String))).sensitive(),
            // On inventory hosts: each host's unit state (`active` when planned; what `read` saw).
            AttrSchema::computed("instances", Type::Map(Box::new(Type::String)))
                .derived_from(&["on", "mirrors_on"]),
            // On inventory hosts: the flags on the primary when last read (`on (25%)`, `off`).
            AttrSchema::computed("current", Type::Map(Box::new(Type::String))).derived_from(&[]),
        ],
        instances_attr: None,
    }
}

/// A seed value: `true`/`false`, `"on"`/`"off"`, or a number 0..100 (on for that share).
pub fn seed_value(v: &Value) -> Result<FlagValue, String> {
    match v.unmarked().0 {
        Value::Bool(true) => Ok(FlagValue::ON),
        Value::Bool(false) => Ok(FlagValue::OFF),
        Value::Number(n) if (0.0..=100.0).contains(&n) && n.fract() == 0.0 => Ok(if n == 0.0 {
            FlagValue::OFF
        } else {
            FlagValue {
                enabled: true,
                percent: n as u8,
            }
        }),
        // `{ enabled = true, percent = 10 }`: percent defaults to 100 when enabled.
        Value::Map(m) => {
            if let Some(k) = m
                .keys()
                .find(|k| !matches!(k.as_str(), "enabled" | "percent"))
            {
                return Err(format!(
                    "`{k}` is not a flag field (an object has `enabled` and `percent`)"
                ));
            }
            let enabled = match m.get("enabled").map(|v| v.unmarked().0) {
                Some(Value::Bool(b)) => b,
                None => true,
                Some(other) => {
                    return Err(format!("enabled = {} is not true or false", other.render()))
                }
            };
            let percent = match m.get("percent").map(|v| v.unmarked().0) {
                None => 100.0,
                Some(Value::Number(n)) if (0.0..=100.0).contains(&n) && n.fract() == 0.0 => n,
                Some(other) => {
                    return Err(format!(
                        "percent = {} is not a whole number 0..100",
                        other.render()
                    ))
                }
            };
            Ok(if !enabled || percent == 0.0 {
                FlagValue::OFF
            } else {
                FlagValue {
                    enabled: true,
                    percent: percent as u8,
                }
            })
        }
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "on" | "true" => Ok(FlagValue::ON),
            "off" | "false" => Ok(FlagValue::OFF),
            _ => Err(format!("{s:?} is not a flag value")),
        },
        other => Err(format!("{} is not a flag value", other.render())),
    }
}

fn valid_password(p: &str) -> bool {
    (8..=128).contains(&p.len())
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
}

pub fn validate(c: &ValueMap) -> Vec<Invalid> {
    let mut out = vec![];
    if let Some(n) = c.get("mirrors").and_then(Value::as_f64) {
        if !(1.0..=MAX_MIRRORS).contains(&n) || n.fract() != 0.0 {
            out.push(Invalid::new(
                Some("mirrors"),
                format!("mirrors = {n} is not a whole number from 1 to {MAX_MIRRORS}"),
                "one mirror per host that runs instances; on the local provider, 1",
            ));
        }
    }
    if c.get("mirrors_on")
        .is_some_and(|v| !matches!(v, Value::Null))
        && !matches!(c.get("on"), Some(Value::Unknown))
        && !super::remote::is_remote(c)
    {
        out.push(Invalid::new(
            Some("mirrors_on"),
            "`mirrors_on` places mirrors on inventory hosts: `on` must name one (the primary's host)",
            "on = host.db[\"db01\"]; without inventory hosts use `mirrors = N`",
        ));
    }
    if let Some(n) = c.get("port").and_then(Value::as_f64) {
        if !(1.0..=65535.0).contains(&n) || n.fract() != 0.0 {
            out.push(Invalid::new(
                Some("port"),
                format!("port = {n} is not a TCP port"),
                "use a port from 1024 to 65535, or leave `port` out to use a free one",
            ));
        }
    }
    if let Some(p) = c.get("password").and_then(Value::as_str) {
        if !valid_password(p) {
            out.push(Invalid::new(
                Some("password"),
                "the password must be 8 to 128 characters of letters, digits, `-`, `_`, `.`, `~`",
                "leave `password` out to have a random one generated and kept in the state",
            ));
        }
    }
    if let Some(Value::Map(m)) = c.get("values").map(|v| v.unmarked().0) {
        for (k, v) in &m {
            if !store::valid_name(k) {
                out.push(Invalid::new(
                    Some("values"),
                    format!("{k:?} is not a flag name"),
                    "flag names are letters, digits, `_`, `-` and `.`",
                ));
            }
            if v.is_known() {
                if let Err(e) = seed_value(v) {
                    out.push(Invalid::new(
                        Some("values"),
                        format!("flag `{k}`: {e}"),
                        "write true/false, \"on\"/\"off\", a percentage 0..100, or { enabled = true, percent = 10 }: values = { tables = true, beta = 25 }",
                    ));
                }
            }
        }
    }
    out
}

// The address of the primary: `on`'s (first) host address, else 127.0.0.1.
use pipeline_host::on::address as address_of;

/// The redis-server a `provider "redis" { binary = ... }` block names, else redis-server on PATH.
pub fn find_redis_server(binary: Option<&Path>) -> Result<PathBuf, ProviderError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(b) = binary {
        return Ok(b.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let p = d.join("redis-server");
        if std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
            return Ok(p);
        }
    }
    Err(ProviderError::new(format!(
        "redis-server is not on PATH ({}); a flags store runs redis-server",
        path.to_string_lossy()
    ))
    .help(INSTALL_HELP))
}

/// Err when something already listens on (or holds) `address:port`.
fn check_port_free(addr: &str, address: &str, port: u16) -> Result<(), ProviderError> {
    match std::net::TcpListener::bind((address, port)) {
        Ok(_) => Ok(()),
        Err(e) => Err(ProviderError::new(format!(
            "port {port} on {address} is already in use ({e})"
        ))
        .help(format!(
            "pick another `port` for {addr}, or leave `port` out to use a free one; \
             `ss -ltnp 'sport = :{port}'` shows what holds it"
        ))),
    }
}

fn num(v: Option<&serde_json::Value>) -> Option<u16> {
    v.and_then(serde_json::Value::as_f64).map(|n| n as u16)
}

fn mirror_count(c: &ValueMap) -> usize {
    c.get("mirrors").and_then(Value::as_f64).unwrap_or(1.0) as usize
}

fn url(address: &str, port: u16, password: &str) -> String {
    Url::new(address, port, Some(password)).render()
}

pub fn plan(
    _ctx: &ProviderCtx,
    req: &PlanRequest<'_>,
    binary: Option<&Path>,
) -> Result<Planned, ProviderError> {
    if super::remote::is_remote(req.config) {
        return super::remote::plan(req);
    }
    find_redis_server(binary)?;
    let c = req.config;
    let mut o = c.clone();
    let given = |k: &str| c.get(k).filter(|v| !matches!(v, Value::Null));
    let address = if c.get("on").is_none_or(Value::is_known) {
        Some(address_of(c))
    } else {
        None
    };
    // The running store is kept unless a force_new attribute changes.
    let prior = req.prior.filter(|p| {
        let same = |k: &str| match given(k) {
            None => k != "on" || p.get(k).is_none_or(serde_json::Value::is_null),
            Some(v) => v.unmarked().0 == p.get(k).map(Value::from_json).unwrap_or(Value::Null),
        };
        same("on") && same("port") && same("password")
    });
    if req.prior.is_none() {
        if let (Some(a), Some(port)) = (&address, given("port").and_then(Value::as_f64)) {
            if port.is_finite() && (1.0..=65535.0).contains(&port) {
                check_port_free(req.addr, a, port as u16)?;
            }
        }
    }
    let port = match (given("port"), prior) {
        (Some(v), _) => v.clone(),
        (None, Some(p)) => p
            .get("port")
            .map(Value::from_json)
            .unwrap_or(Value::Unknown),
        (None, None) => Value::Unknown,
    };
    let password = match (given("password"), prior) {
        (Some(v), _) => v.clone(),
        (None, Some(p)) => p
            .get("password")
            .map(Value::from_json)
            .unwrap_or(Value::Unknown),
        (None, None) => Value::Unknown,
    };
    let n = mirror_count(c);
    let mirror_ports: Option<Vec<u16>> = prior
        .and_then(|p| p.get("mirror_ports"))
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(|v| num(Some(v))).collect());
    let known = |v: &Value| v.is_known() && !matches!(v, Value::Null);
    let all_known = address.is_some() && known(&port) && known(&password);
    let s = |v: String| Value::String(v).mark(true);
    let (addr_s, port_n, pw) = (
        address.clone().unwrap_or_default(),
        port.as_f64().unwrap_or(0.0) as u16,
        password.as_str().unwrap_or_default().to_string(),
    );
    o.insert(
        "address".into(),
        address.clone().map_or(Value::Unknown, Value::String),
    );
    o.insert("port".into(), port.clone());
    // Sensitive even while unknown, so whatever refers to them (an output) is marked from the plan on.
    let unknown_secret = || Value::Unknown.mark(true);
    o.insert("password".into(), password.clone().mark(true));
    o.insert(
        "url".into(),
        if all_known {
            s(url(&addr_s, port_n, &pw))
        } else {
            unknown_secret()
        },
    );
    let ports_known = mirror_ports.as_ref().filter(|m| m.len() >= n);
    o.insert(
        "local_url".into(),
        match mirror_ports.as_ref().and_then(|m| m.first()) {
            Some(&mp) if all_known => s(url(&addr_s, mp, &pw)),
            _ => unknown_secret(),
        },
    );
    o.insert(
        "mirror_urls".into(),
        match ports_known {
            Some(m) if all_known => Value::List(
                m.iter()
                    .take(n)
                    .map(|&mp| Value::String(url(&addr_s, mp, &pw)))
                    .collect(),
            )
            .mark(true),
            _ => unknown_secret(),
        },
    );
    o.insert(
        "mirror_ports".into(),
        match ports_known {
            Some(m) => Value::List(m.iter().take(n).map(|&p| Value::Number(p as f64)).collect()),
            None => Value::Unknown,
        },
    );
    Ok(Planned {
        object: o,
        requires_replace: vec!["on".into()],
    })
}

pub fn base_dir(work_dir: &Path, addr: &str) -> PathBuf {
    work_dir.join("run").join(sanitize(addr))
}

fn mirror_dir(base: &Path, i: usize) -> PathBuf {
    base.join(format!("mirror-{i}"))
}

pub fn read(
    ctx: &ProviderCtx,
    addr: &str,
    prior: &JsonMap,
) -> Result<Option<JsonMap>, ProviderError> {
    let dir = base_dir(&ctx.work_dir, addr).join("primary");
    match pipeline_supervise::status(&dir) {
        Some(s) if s.supervisor_alive => Ok(Some(prior.clone())),
        _ => Ok(None),
    }
}

fn random_password() -> Result<String, ProviderError> {
    use std::io::Read;
    let mut b = [0u8; 18];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| ProviderError::new(format!("cannot read /dev/urandom for a password: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn quote(p: &Path) -> String {
    crate::quote::redis(&p.display().to_string())
}

/// The config of one redis-server; `replicaof` for mirrors. Every value is one quoted argument
/// (quote::redis): the address and password were checked while planning, and even so cannot
/// start a directive of their own.
fn render_conf(
    dir: &Path,
    address: &str,
    port: u16,
    password: &str,
    replicaof: Option<u16>,
) -> String {
    let mut s = format!(
        "# Written by pipeline (redis provider). Do not edit: apply rewrites it.\n\
         bind {address}\n\
         port {port}\n\
         protected-mode yes\n\
         daemonize no\n\
         dir {dir}\n\
         pidfile {pid}\n\
         logfile \"\"\n\
         save \"\"\n\
         appendonly no\n\
         requirepass {pw}\n\
         masterauth {pw}\n\
         repl-diskless-sync yes\n\
         repl-diskless-sync-delay 0\n\
         repl-diskless-load on-empty-db\n\
         replica-serve-stale-data yes\n\
         replica-read-only yes\n",
        dir = quote(dir),
        pid = quote(&dir.join("redis.pid")),
        address = crate::quote::redis(address),
        pw = crate::quote::redis(password),
    );
    if let Some(p) = replicaof {
        s.push_str(&format!("replicaof {} {p}\n", crate::quote::redis(address)));
    }
    s
}

fn write_private(path: &Path, text: &str) -> Result<(), ProviderError> {
    let _ = std::fs::remove_file(path);
    pipeline_supervise::private::write(path, text)
        .map_err(|e| ProviderError::new(format!("cannot write {}: {e}", path.display())))
}

struct Server<'a> {
    ctx: &'a ProviderCtx,
    step: &'a pipeline_engine::Step,
    addr: &'a str,
    redis: &'a Path,
    address: &'a str,
    password: &'a str,
}

impl Server<'_> {
    /// Write the config and start one supervised redis-server; wait until it accepts connections.
    fn start(
        &self,
        dir: &Path,
        role: &str,
        port: u16,
        replicaof: Option<u16>,
    ) -> Result<(), ProviderError> {
        pipeline_supervise::private::create_dir_all(dir)
            .map_err(|e| ProviderError::new(format!("cannot create {}: {e}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| ProviderError::new(format!("cannot resolve {}: {e}", dir.display())))?;
        write_private(
            &dir.join("redis.conf"),
            &render_conf(&dir, self.address, port, self.password, replicaof),
        )?;
        let mut health = HealthCheck::tcp();
        health.interval_ms = 500;
        let spec = ReplicaSpec {
            name: format!("{} {role}", self.addr),
            command: format!(
                "exec {} redis.conf",
                crate::quote::shell(&self.redis.display().to_string())
            ),
            cwd: dir.clone(),
            env: Default::default(),
            port,
            address: self.address.to_string(),
            health,
            restart: true,
        };
        let fail = |e: String| {
            let _ = pipeline_supervise::stop(&dir, Duration::from_secs(5));
            ProviderError::new(format!("{} {role}: {e}", self.addr)).help(format!(
                "the redis log is {}/replica.log; check that redis-server runs and that port {port} is free",
                dir.display()
            ))
        };
        pipeline_supervise::start(&self.ctx.exe, &dir, &spec, Duration::from_secs(10))
            .map_err(|e| fail(e.to_string()))?;
        crate::wait_healthy(self.step, &dir, &spec, Duration::from_secs(15))
            .map_err(|e| fail(e.message))?;
        Ok(())
    }

    fn connect(&self, port: u16) -> Result<Conn, ProviderError> {
        let u = Url::new(self.address, port, Some(self.password));
        Conn::connect(&u, Duration::from_secs(2)).map_err(|e| {
            let err = ProviderError::new(format!("{}: cannot talk to redis at {u}: {e}", self.addr));
            if e.is_auth() {
                err.help("the password in the state does not match the running store; replace it with `pipeline apply -replace ADDR`".replace("ADDR", self.addr))
            } else {
                err
            }
        })
    }

    /// Wait until every mirror in `ports` has synced with the primary and receives its writes:
    /// a probe key written on the primary shows on each of them. (After a diskless sync the
    /// primary starts streaming writes to a replica only after the replica's first REPLCONF ACK,
    /// up to a second later, although INFO already says `state=online`; a flag flipped in
    /// between would reach that mirror late.)
    fn wait_synced(&self, primary: u16, ports: &[u16]) -> Result<(), ProviderError> {
        if ports.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let nonce = random_password()?;
        let mut p = self.connect(primary)?;
        p.cmd(&["SET", PROBE_KEY, &nonce, "PX", "600000"])
            .map_err(|e| ProviderError::new(format!("{}: {e}", self.addr)))?;
        for &port in ports {
            let mut conn = None;
            loop {
                let last = match conn.take().map_or_else(|| self.connect(port), Ok) {
                    Err(e) => e.message,
                    Ok(mut c) => match c.cmd(&["GET", PROBE_KEY]) {
                        Ok(r) if r.as_string().as_deref() == Some(nonce.as_str()) => break,
                        Ok(_) => {
                            conn = Some(c);
                            "it has not received the primary's writes yet".to_string()
                        }
                        Err(e) => e.to_string(),
                    },
                };
                if Instant::now() >= deadline {
                    return Err(ProviderError::new(format!(
                        "{}: the mirror on port {port} did not sync with the primary within 15 s ({last})",
                        self.addr
                    ))
                    .help("see replica.log of the mirror and of the primary under .pipeline/run/"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }
}

fn seed_values(srv: &Server<'_>, port: u16, c: &ValueMap) -> Result<(), ProviderError> {
    let Some(Value::Map(m)) = c.get("values").map(|v| v.unmarked().0) else {
        return Ok(());
    };
    if m.is_empty() {
        return Ok(());
    }
    let mut conn = srv.connect(port)?;
    for (k, v) in &m {
        let fv = seed_value(v).map_err(|e| ProviderError::new(format!("flag `{k}`: {e}")))?;
        store::seed(&mut conn, k, fv).map_err(|e| {
            ProviderError::new(format!("{}: cannot seed flag `{k}`: {e}", srv.addr))
        })?;
    }
    Ok(())
}

/// Stop every redis-server under the store's directory and remove it.
fn stop_all(base: &Path) -> Result<(), ProviderError> {
    if let Ok(rd) = std::fs::read_dir(base) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                pipeline_supervise::stop(&e.path(), Duration::from_secs(10))
                    .map_err(|e| ProviderError::new(e.to_string()))?;
            }
        }
    }
    if base.exists() {
        std::fs::remove_dir_all(base)
            .map_err(|e| ProviderError::new(format!("cannot remove {}: {e}", base.display())))?;
    }
    Ok(())
}

pub async fn apply(
    ctx: &ProviderCtx,
    req: &ApplyRequest<'_>,
    binary: Option<PathBuf>,
    step: &pipeline_engine::Step,
) -> Result<JsonMap, ProviderError> {
    let (ctx, addr, config, prior, step) = (
        ctx.clone(),
        req.addr.to_string(),
        req.config.clone(),
        req.prior.cloned(),
        step.clone(),
    );
    crate::blocking(move || {
        apply_blocking(
            &ctx,
            &addr,
            &config,
            prior.as_ref(),
            binary.as_deref(),
            &step,
        )
    })
    .await
}

fn apply_blocking(
    ctx: &ProviderCtx,
    addr: &str,
    c: &ValueMap,
    prior: Option<&JsonMap>,
    binary: Option<&Path>,
    step: &pipeline_engine::Step,
) -> Result<JsonMap, ProviderError> {
    let redis = find_redis_server(binary)?;
    let base = base_dir(&ctx.work_dir, addr);
    let address = address_of(c);
    let given = |k: &str| c.get(k).filter(|v| !matches!(v, Value::Null));
    let primary_alive =
        || pipeline_supervise::status(&base.join("primary")).is_some_and(|s| s.supervisor_alive);
    // An update keeps the running primary; anything else starts from nothing.
    let keep = prior.filter(|_| primary_alive());
    let (port, password, mut mirror_ports) = match keep {
        Some(p) => (
            num(p.get("port")).unwrap_or(0),
            p.get("password")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string(),
            p.get("mirror_ports")
                .and_then(serde_json::Value::as_array)
                .map(|a| a.iter().filter_map(|v| num(Some(v))).collect::<Vec<_>>())
                .unwrap_or_default(),
        ),
        None => {
            stop_all(&base)?;
            let password = match given("password").and_then(Value::as_str) {
                Some(p) => p.to_string(),
                None => random_password()?,
            };
            let port = match given("port").and_then(Value::as_f64) {
                Some(p) => {
                    check_port_free(addr, &address, p as u16)?;
                    p as u16
                }
                None => pipeline_supervise::free_port(&address).map_err(|e| {
                    ProviderError::new(format!("{addr}: no free port on {address}: {e}"))
                })?,
            };
            (port, password, Vec::new())
        }
    };
    let srv = Server {
        ctx,
        step,
        addr,
        redis: &redis,
        address: &address,
        password: &password,
    };
    let cleanup = |e: ProviderError| {
        if keep.is_none() {
            let _ = stop_all(&base);
        }
        e
    };
    if keep.is_none() {
        srv.start(&base.join("primary"), "primary", port, None)
            .map_err(cleanup)?;
    }
    seed_values(&srv, port, c).map_err(cleanup)?;
    let n = mirror_count(c);
    // Mirrors beyond the count go; missing or dead ones start (a dead one on its old port).
    for i in n..mirror_ports.len() {
        let d = mirror_dir(&base, i);
        pipeline_supervise::stop(&d, Duration::from_secs(10))
            .map_err(|e| ProviderError::new(e.to_string()))?;
        let _ = std::fs::remove_dir_all(&d);
    }
    mirror_ports.truncate(n);
    let mut started = Vec::new();
    for i in 0..n {
        let d = mirror_dir(&base, i);
        let alive = pipeline_supervise::status(&d).is_some_and(|s| s.supervisor_alive);
        if i < mirror_ports.len() && alive {
            continue;
        }
        let mport = match mirror_ports.get(i) {
            Some(&p) if check_port_free(addr, &address, p).is_ok() => p,
            _ => pipeline_supervise::free_port(&address).map_err(|e| {
                cleanup(ProviderError::new(format!(
                    "{addr}: no free port on {address}: {e}"
                )))
            })?,
        };
        srv.start(&d, &format!("mirror-{i}"), mport, Some(port))
            .map_err(cleanup)?;
        started.push(mport);
        if i < mirror_ports.len() {
            mirror_ports[i] = mport;
        } else {
            mirror_ports.push(mport);
        }
    }
    srv.wait_synced(port, &started).map_err(cleanup)?;
    let mut out: JsonMap = c
        .iter()
        .filter(|(_, v)| !matches!(v, Value::Unknown))
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect();
    out.insert("address".into(), address.clone().into());
    out.insert("port".into(), port.into());
    out.insert("password".into(), password.clone().into());
    out.insert("url".into(), url(&address, port, &password).into());
    let urls: Vec<String> = mirror_ports
        .iter()
        .map(|&p| url(&address, p, &password))
        .collect();
    out.insert(
        "local_url".into(),
        urls.first()
            .cloned()
            .map_or(serde_json::Value::Null, Into::into),
    );
    out.insert("mirror_urls".into(), urls.into());
    out.insert("mirror_ports".into(), mirror_ports.into());
    Ok(out)
}

pub async fn delete(ctx: &ProviderCtx, addr: &str) -> Result<(), ProviderError> {
    let base = base_dir(&ctx.work_dir, addr);
    let addr = addr.to_string();
    crate::blocking(move || {
        stop_all(&base)
            .map_err(|e| ProviderError::new(format!("cannot stop {addr}: {}", e.message)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_binds_only_the_address_and_mirrors_replicate() {
        let c = render_conf(Path::new("/r/p"), "127.0.0.1", 7000, "pw123456", Some(7001));
        assert!(c.contains("bind \"127.0.0.1\"\n"), "{c}");
        assert!(c.contains("requirepass \"pw123456\"\nmasterauth \"pw123456\"\n"));
        assert!(c.contains("repl-diskless-sync-delay 0\n"));
        assert!(c.contains("replicaof \"127.0.0.1\" 7001\n"));
        assert!(c.contains("dir \"/r/p\"\n"));
        assert!(!render_conf(Path::new("/r"), "127.0.0.1", 1, "x", None).contains("replicaof"));
    }

    #[test]
    fn a_value_cannot_start_a_redis_directive_of_its_own() {
        let plain = render_conf(Path::new("/r"), "127.0.0.1", 1, "pw123456", Some(2));
        let c = render_conf(
            Path::new("/r\n\"x"),
            "127.0.0.1\nreplicaof 10.0.0.1 6379",
            1,
            "pw\"\nrename-command CONFIG x",
            Some(2),
        );
        assert_eq!(c.lines().count(), plain.lines().count(), "{c}");
        assert!(!c.lines().any(|l| l.starts_with("rename-command")), "{c}");
    }

    #[test]
    fn seeds_and_validation() {
        assert_eq!(seed_value(&Value::Bool(true)), Ok(FlagValue::ON));
        assert_eq!(seed_value(&Value::str("off")), Ok(FlagValue::OFF));
        assert_eq!(seed_value(&Value::Number(25.0)).unwrap().percent, 25);
        assert!(seed_value(&Value::Number(101.0)).is_err());
        let obj = |e: bool, p: f64| {
            let mut m = ValueMap::new();
            m.insert("enabled".into(), Value::Bool(e));
            m.insert("percent".into(), Value::Number(p));
            Value::Map(m)
        };
        assert_eq!(seed_value(&obj(true, 10.0)).unwrap().percent, 10);
        assert_eq!(seed_value(&obj(false, 10.0)), Ok(FlagValue::OFF));
        assert!(seed_value(&obj(true, 150.0)).is_err());
        let mut c = ValueMap::new();
        c.insert("mirrors".into(), Value::Number(0.0));
        c.insert("password".into(), Value::str("a b"));
        let mut vals = ValueMap::new();
        vals.insert("bad name".into(), Value::Bool(true));
        vals.insert("x".into(), Value::str("maybe"));
        c.insert("values".into(), Value::Map(vals));
        let inv = validate(&c);
        assert_eq!(inv.len(), 4, "{inv:?}");
        let mut m = ValueMap::new();
        m.insert("mirrors_on".into(), Value::List(vec![]));
        let inv = validate(&m);
        assert_eq!(inv.len(), 1, "{inv:?}");
        assert_eq!(inv[0].attr.as_deref(), Some("mirrors_on"));
        assert!(valid_password(&random_password().unwrap()));
    }
}
