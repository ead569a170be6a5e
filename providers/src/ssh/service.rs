//! The `service` kind of the ssh provider: one service block's instances on inventory hosts,
//! run by systemd through the `pipeline_service` role.
//!
//! - The release is built once on this machine (`source` through local/build.rs, or a prebuilt
//!   `artifact`) into `.pipeline/artifacts/<sha256>.tar.gz`; its sha256 is the `release`.
//! - `on` is a host block (`host.web`: every host, in inventory order) or one host
//!   (`host.web["web01"]`). Each host runs `replicas` instances on ports `port`, `port+1`, …
//!   as `pipeline-<svc>-<i>.service`.
//! - A create runs the role on every host at once; an update rolls: `max_unavailable` hosts a
//!   step (`--limit`), each step's instances healthy (checked from here) before the next. A
//!   watchdog over the shared ssh masters stops the update as soon as a host of it stops
//!   answering, naming it. With `update = { strategy = "blue-green" }` the new release starts
//!   beside the old one and traffic moves at once through the balancer in front (bluegreen.rs).
//! - `instances` (`{host, address, port, url, release}` in inventory order) records the release
//!   each instance runs; `read` asks every host (one ssh call each, in parallel), so after a
//!   stopped update the next plan sees which hosts still run the old release and converges them.
//! - Secrets (`secret_env`) reach the hosts only through the runner's 0600 extra-vars file and
//!   the role's `no_log` task.

use super::host;
use crate::build::{self, BuildSpec};
use crate::parse_duration;
use crate::remote as conn;
use pipeline_engine::format::Format;
use pipeline_engine::provider::{
    ApplyRequest, AttrSchema, Description, Endpoint, Health, HealthState, Invalid, JsonMap,
    KindSchema, LogSource, MetricSource, PlanRequest, Planned, ProcessInfo, ProviderCtx,
    ProviderError, Serves, Type,
};
use pipeline_engine::value::{Value, ValueMap};
use pipeline_engine::Step;
use pipeline_ssh::ansible::{Ansible, Connection, Run};
use pipeline_ssh::transport::{Error as SshError, Remote};
use pipeline_supervise::private;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "bluegreen.rs"]
mod bluegreen;

pub const KIND: &str = "service";

// The dry run a plan shows (`Provider::preview`): its own file, beside apply's code.
#[path = "service_preview.rs"]
mod preview;
pub use preview::preview;

/// How long one remote query (refresh, describe) may take: a dead host fails well within it.
const QUERY_TIMEOUT: Duration = Duration::from_secs(9);
/// After a stopped update, how long asking the stopped step's hosts what they run may take
/// (the error waits for it: a dead host must not hold it back).
const STOPPED_QUERY: Duration = Duration::from_secs(2);
/// Lines of the journal `pipeline logs` shows.
const LOG_LINES: &str = "200";

pub fn schema() -> KindSchema {
    let strings = || Type::Map(Box::new(Type::String));
    KindSchema {
        kind: KIND,
        attrs: vec![
            // A host block (`host.web`) or one host (`host.web["web01"]`).
            AttrSchema::required("on", Type::Any),
            // What runs: a source directory (or a git revision of it), or a prebuilt artifact.
            AttrSchema::optional("source", Type::String).format(Format::FilePath),
            AttrSchema::optional("revision", Type::String).format(Format::GitRevision),
            AttrSchema::optional("artifact", Type::String).format(Format::FilePath),
            AttrSchema::optional("build", Type::String).format(Format::NoNul),
            AttrSchema::optional("build_timeout", Type::String),
            // Debian packages the hosts need to run it (a JRE, tomcat10, nodejs), installed by
            // apt before the instances start; never removed.
            AttrSchema::optional("packages", Type::List(Box::new(Type::String)))
                .default(Value::List(vec![])),
            // Run by /bin/sh -c on the host, as the local service runs it ($PORT is set).
            AttrSchema::required("run", Type::String).format(Format::NoNul),
            AttrSchema::required("port", Type::Number).format(Format::Port),
            AttrSchema::optional("replicas", Type::Number)
                .default(Value::Number(1.0))
                .format(Format::Count),
            AttrSchema::optional("env", strings())
                .default(Value::Map(Default::default()))
                .format_at("{}", Format::EnvName)
                .format_at("*", Format::NoNul),
            AttrSchema::optional("secret_env", strings())
                .default(Value::Map(Default::default()))
                .format_at("{}", Format::EnvName)
                .format_at("*", Format::NoNul),
            AttrSchema::optional("health", Type::Any)
                .format_at("path", Format::UrlTarget)
                .format_at("type", Format::Token),
            AttrSchema::optional("start_timeout", Type::String).default(Value::str("60s")),
            // { strategy = "rolling", max_unavailable = 1 }, or
            // { strategy = "blue-green", drain_timeout = "5s" }: the new release starts beside
            // the old on every host, on the other of two port slots: slot A is `port` …
            // `port+replicas-1` (units `<svc>-0` …), slot B `port+replicas` …
            // `port+2*replicas-1` (units `<svc>-<replicas>` …); a unit's number is always its
            // port minus `port`. Each update alternates, so a blue-green service needs
            // 2*replicas free ports from `port` on its hosts. Once every new instance is
            // healthy, the balancer in front (a peer with `canary_weights`) sends it all the
            // traffic at once, `instances` name the new ports (the balancer's render follows),
            // and the old units stop after `drain_timeout`. An update needs that balancer.
            // { strategy = "canary", drain_timeout = "5s" }: as blue-green, but the balancer
            // gives the new instances a growing share step by step while a judge compares
            // them with the old (`canary`); a failed judgement sends everything back.
            AttrSchema::optional("update", Type::Any),
            // The progressive canary's settings (steps, interval, request, load, thresholds).
            AttrSchema::optional("canary", Type::Any),
            AttrSchema::computed("build_id", Type::String)
                .derived_from(&["source", "revision", "build", "artifact"]),
            // The sha256 of the release tarball.
            AttrSchema::computed("release", Type::String)
                .derived_from(&["source", "revision", "build", "artifact"]),
            // [{host, address, port, url, release}] in inventory order.
            AttrSchema::computed("instances", Type::Any).derived_from(&["port", "replicas"]),
            AttrSchema::computed("url", Type::String).derived_from(&["port"]),
        ],
        instances_attr: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the configuration.

/// The token that names the service on hosts (units, directories): the block name, with the
/// module path in front (`module.m.service.app` → `m-app`).
pub fn service_token(addr: &str) -> Result<String, ProviderError> {
    let parts: Vec<&str> = addr.split('.').collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i + 1 < parts.len() {
        if parts[i] == "module" {
            names.push(parts[i + 1].split('[').next().unwrap_or_default());
            i += 2;
        } else {
            names.push(parts[i + 1].split('[').next().unwrap_or_default());
            break;
        }
    }
    let token = names.join("-");
    let ok = token.len() <= 60
        && token.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && token
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        return Err(ProviderError::invalid_config(format!(
            "{addr}: the service's name {token:?} names its systemd units and directories on the hosts, so it must be lowercase letters, digits, '-' and '_' (at most 60)"
        ))
        .help("rename the block, e.g. service \"app\""));
    }
    Ok(token)
}

/// One host the service runs on.
#[derive(Clone, Debug)]
struct HostRef {
    /// Inventory name.
    name: String,
    address: String,
    /// The host object as JSON (what conn:: reads).
    obj: JsonMap,
}

fn is_host_object(v: &Value) -> bool {
    matches!(v.unmarked().0, Value::Map(ref m) if m.contains_key("address") && m.contains_key("transport"))
}

fn on_error(what: &str) -> ProviderError {
    ProviderError::invalid_config(format!(
        "`on` must be an ssh host block or one of its hosts, found {what}"
    ))
    .attr("on")
    .help("on = host.web (every host of `host \"web\" { provider = ssh  group = \"web\" }`) or on = host.web[\"web01\"]")
}

/// The hosts `on` names, in inventory order. Unknown parts (a new host's keys) stay unknown in
/// `obj`; name and address come from the inventory and are known at plan.
fn hosts_of(config: &ValueMap) -> Result<Vec<HostRef>, ProviderError> {
    let on = config.get("on").ok_or_else(|| on_error("nothing"))?;
    // A new host's keys are unknown at plan, its name and address are not: only a wholly
    // unknown `on` cannot be placed.
    if matches!(on, Value::Unknown) {
        return Err(on_error("a value known only after apply"));
    }
    let (on, _) = on.unmarked();
    let one = |v: &Value| -> Result<HostRef, ProviderError> {
        let name = v.get("name").and_then(Value::as_str);
        let address = v.get("address").and_then(Value::as_str);
        match (name, address) {
            (Some(n), Some(a)) => Ok(HostRef {
                name: n.to_string(),
                address: a.to_string(),
                obj: match v.to_json() {
                    serde_json::Value::Object(o) => o,
                    _ => JsonMap::new(),
                },
            }),
            _ => Err(on_error("a host without a name or address")),
        }
    };
    let hosts = if is_host_object(&on) {
        vec![one(&on)?]
    } else {
        match &on {
            Value::Map(m) if !m.is_empty() && m.values().all(is_host_object) => {
                m.values().map(one).collect::<Result<_, _>>()?
            }
            Value::List(l) if !l.is_empty() && l.iter().all(is_host_object) => {
                l.iter().map(one).collect::<Result<_, _>>()?
            }
            Value::Map(m) if m.is_empty() => return Err(on_error("no hosts")),
            other => return Err(on_error(&format!("{} {}", other.type_name(), short(other)))),
        }
    };
    for h in &hosts {
        if h.obj.get("transport").and_then(|t| t.as_str()) == Some("local") {
            return Err(ProviderError::invalid_config(format!(
                "host {} has ansible_connection=local: an ssh service runs on hosts reached over ssh",
                h.name
            ))
            .attr("on")
            .help("use the local provider's service for this machine"));
        }
    }
    Ok(hosts)
}

fn short(v: &Value) -> String {
    let s = v.render();
    if s.len() > 40 {
        format!("{}…", &s[..s.floor_char_boundary(40)])
    } else {
        s
    }
}

fn num(c: &ValueMap, k: &str) -> Option<f64> {
    c.get(k).and_then(Value::as_f64)
}

fn port_of(c: &ValueMap) -> u16 {
    num(c, "port").unwrap_or(0.0) as u16
}

fn replicas_of(c: &ValueMap) -> u16 {
    num(c, "replicas").unwrap_or(1.0).max(1.0) as u16
}

fn health_path(c: &ValueMap) -> Option<String> {
    match c.get("health").map(|v| v.unmarked().0) {
        None | Some(Value::Null) => Some("/".into()),
        Some(h) => match h.get("type").and_then(Value::as_str) {
            Some("tcp") => None,
            _ => Some(
                h.get("path")
                    .and_then(Value::as_str)
                    .unwrap_or("/")
                    .to_string(),
            ),
        },
    }
}

fn expect_status(c: &ValueMap) -> u16 {
    c.get("health")
        .and_then(|h| h.get("expect_status"))
        .and_then(Value::as_f64)
        .map_or(200, |n| n as u16)
}

fn start_timeout(c: &ValueMap) -> Duration {
    c.get("start_timeout")
        .and_then(Value::as_str)
        .and_then(parse_duration)
        .unwrap_or(Duration::from_secs(60))
}

/// Hosts updated at once.
fn max_unavailable(c: &ValueMap) -> usize {
    c.get("update")
        .and_then(|u| u.get("max_unavailable"))
        .and_then(Value::as_f64)
        .map_or(1, |n| n as usize)
        .max(1)
}

fn check_update(u: &Value) -> Result<(), String> {
    let Value::Map(m) = u.unmarked().0 else {
        return Err("`update` must be an object".into());
    };
    for k in m.keys() {
        if !["strategy", "max_unavailable", "drain_timeout"].contains(&k.as_str()) {
            return Err(format!(
                "unknown update setting `{k}` (on ssh hosts: strategy, max_unavailable, drain_timeout)"
            ));
        }
    }
    let strategy = m.get("strategy").and_then(Value::as_str);
    match strategy {
        None | Some("rolling") | Some("blue-green") | Some("canary") => {}
        Some(o) => {
            return Err(format!(
                "update strategy {o:?} is unknown; use \"rolling\", \"blue-green\" or \"canary\""
            ))
        }
    }
    let two_slots = matches!(strategy, Some("blue-green") | Some("canary"));
    if let Some(d) = m.get("drain_timeout") {
        if !two_slots {
            return Err("drain_timeout applies to strategy = \"blue-green\" or \"canary\"".into());
        }
        let ok = d.as_str().and_then(parse_duration);
        if ok.is_none_or(|d| d > Duration::from_secs(3600)) {
            return Err(format!(
                "drain_timeout {} is not a duration up to 1h (e.g. \"5s\")",
                short(d)
            ));
        }
    }
    if two_slots && m.contains_key("max_unavailable") {
        return Err(format!("max_unavailable applies to strategy = \"rolling\" ({} starts every host's new instances at once)", strategy.unwrap_or_default()));
    }
    if let Some(v) = m.get("max_unavailable") {
        if !v
            .as_f64()
            .is_some_and(|n| n >= 1.0 && n.fract() == 0.0 && n <= 1000.0)
        {
            return Err("max_unavailable must be a whole number of hosts, at least 1".into());
        }
    }
    Ok(())
}

fn check_health(h: &Value) -> Result<(), String> {
    let Value::Map(m) = h.unmarked().0 else {
        return Err("`health` must be an object".into());
    };
    for k in m.keys() {
        if !["type", "path", "expect_status"].contains(&k.as_str()) {
            return Err(format!(
                "unknown health setting `{k}` (on ssh hosts: type, path, expect_status)"
            ));
        }
    }
    match m.get("type").and_then(Value::as_str) {
        None | Some("http") | Some("tcp") => {}
        Some(o) => {
            return Err(format!(
                "health type {o:?} is unknown; use \"http\" or \"tcp\""
            ))
        }
    }
    if let Some(s) = m.get("expect_status") {
        if !s
            .as_f64()
            .is_some_and(|n| (100.0..=599.0).contains(&n) && n.fract() == 0.0)
        {
            return Err("expect_status must be an HTTP status (100-599)".into());
        }
    }
    Ok(())
}

pub fn validate(c: &ValueMap) -> Vec<Invalid> {
    let mut out = vec![];
    let set = |k: &str| c.get(k).is_some_and(|v| !matches!(v, Value::Null));
    match (set("source"), set("artifact")) {
        (true, true) => out.push(Invalid::new(
            Some("artifact"),
            "a service has either `source` (built here) or `artifact` (shipped as is), not both",
            "remove one of them",
        )),
        (false, false) => out.push(Invalid::new(
            Some("source"),
            "a service on ssh hosts needs `source` (a directory, built here) or `artifact` (a prebuilt tarball, jar or war)",
            "e.g. source = \"app\" or artifact = \"dist/app.tar.gz\"",
        )),
        (false, true) if set("revision") || set("build") => out.push(Invalid::new(
            Some(if set("revision") { "revision" } else { "build" }),
            "`revision` and `build` apply to a `source`; an `artifact` is shipped as is",
            "remove them, or build from source = \"DIR\"",
        )),
        _ => {}
    }
    if let Some(on) = c.get("on") {
        if !matches!(on, Value::Unknown) {
            if let Err(e) = hosts_of(c) {
                out.push(Invalid::new(
                    Some("on"),
                    e.message,
                    e.help.unwrap_or_default(),
                ));
            }
        }
    }
    build::check_timeouts(c, &mut out);
    if let (Some(p), Some(r)) = (num(c, "port"), num(c, "replicas")) {
        if !(1.0..=100.0).contains(&r) {
            out.push(Invalid::new(
                Some("replicas"),
                format!("replicas = {r}: a host runs 1 to 100 instances"),
                "e.g. replicas = 2 (ports port, port+1)",
            ));
        } else if p + r - 1.0 > 65535.0 {
            out.push(Invalid::new(
                Some("port"),
                format!(
                    "port {p} with {r} replicas needs ports up to {}, past 65535",
                    p + r - 1.0
                ),
                "choose a lower port",
            ));
        } else if bluegreen::is_blue_green(c) && p + 2.0 * r - 1.0 > 65535.0 {
            out.push(Invalid::new(
                Some("port"),
                format!(
                    "port {p} with {r} replicas and blue-green or canary updates needs ports up to {} (two slots of {r}), past 65535",
                    p + 2.0 * r - 1.0
                ),
                "choose a lower port",
            ));
        }
    }
    if let Some(u) = c
        .get("update")
        .filter(|u| u.is_known() && !matches!(u, Value::Null))
    {
        if let Err(e) = check_update(u) {
            out.push(Invalid::new(
                Some("update"),
                e,
                "e.g. update = { strategy = \"rolling\", max_unavailable = 1 }",
            ));
        }
    }
    if let Some(Value::List(l)) = c.get("packages").map(|v| v.unmarked().0) {
        for v in l.iter().filter(|v| v.is_known()) {
            match v.as_str() {
                Some(n) if is_package_name(n) => {}
                _ => out.push(Invalid::new(
                    Some("packages"),
                    format!("{} is not a Debian package name", short(v)),
                    "lowercase letters, digits and + . -, at least 2 characters, e.g. packages = [\"tomcat10\", \"nodejs\"]",
                )),
            }
        }
    }
    if let Some(v) = c.get("canary").filter(|v| v.is_known()) {
        if let Err(e) = crate::canary::CanarySpec::from_value(v) {
            out.push(Invalid::new(Some("canary"), e, crate::canary::EXAMPLE));
        }
    }
    if let Some(h) = c
        .get("health")
        .filter(|h| h.is_known() && !matches!(h, Value::Null))
    {
        if let Err(e) = check_health(h) {
            out.push(Invalid::new(
                Some("health"),
                e,
                "e.g. health = { path = \"/health\" } (checked from this machine over HTTP)",
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Releases.

fn abs(ctx: &ProviderCtx, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        ctx.stack_dir.join(p)
    }
}

fn is_tarball(p: &Path) -> bool {
    let n = p.to_string_lossy();
    n.ends_with(".tar.gz") || n.ends_with(".tgz")
}

/// The build id at plan: the content hash of the source, or the artifact's sha256 (a prebuilt
/// tarball is its own release).
fn plan_ids(ctx: &ProviderCtx, c: &ValueMap) -> Result<(String, Option<String>), ProviderError> {
    if let Some(a) = c.get("artifact").and_then(Value::as_str) {
        let p = abs(ctx, a);
        if !p.is_file() {
            return Err(ProviderError::invalid_config(format!(
                "the artifact {} does not exist",
                p.display()
            ))
            .attr("artifact")
            .help("`artifact` is a file relative to the stack (a .tar.gz, .jar or .war)"));
        }
        let sha = build::sha256_file(&p)?;
        let release = is_tarball(&p).then(|| sha.clone());
        return Ok((sha[..16].to_string(), release));
    }
    Ok((build::build_id(&BuildSpec::of(ctx, c))?, None))
}

/// The release tarball for the configuration, built or packed once: (path, sha256, build_id).
fn release(
    ctx: &ProviderCtx,
    addr: &str,
    c: &ValueMap,
) -> Result<(PathBuf, String, String), ProviderError> {
    let (id, _) = plan_ids(ctx, c)?;
    let root = build::artifacts_dir(ctx);
    let pointer = root.join(format!("{id}.release"));
    if let Ok(sha) = std::fs::read_to_string(&pointer) {
        let sha = sha.trim().to_string();
        let p = root.join(format!("{sha}.tar.gz"));
        if sha.len() == 64 && p.is_file() && build::sha256_file(&p)? == sha {
            return Ok((p, sha, id));
        }
    }
    let (path, sha) = if let Some(a) = c.get("artifact").and_then(Value::as_str) {
        let p = abs(ctx, a);
        if is_tarball(&p) {
            // Shipped as is: a copy under its sha256, so a later change of the file cannot
            // change a release.
            private::create_dir_all(&root).map_err(|e| {
                ProviderError::new(format!("cannot create {}: {e}", root.display()))
            })?;
            let sha = build::sha256_file(&p)?;
            let dst = root.join(format!("{sha}.tar.gz"));
            if !dst.is_file() {
                let tmp = build::tempfile_in(&root)?;
                std::fs::copy(&p, &tmp)
                    .map_err(|e| ProviderError::new(format!("cannot copy {}: {e}", p.display())))?;
                std::fs::rename(&tmp, &dst).map_err(|e| {
                    ProviderError::new(format!("cannot store {}: {e}", dst.display()))
                })?;
            }
            (dst, sha)
        } else {
            // A jar or war: one file in the release directory, as it is.
            let dir = p.parent().unwrap_or(Path::new("/"));
            let name = p.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                ProviderError::invalid_config("the artifact's name is not UTF-8").attr("artifact")
            })?;
            build::pack(ctx, dir, Some(name))?
        }
    } else {
        let spec = BuildSpec::of(ctx, c);
        let src = build::ensure(ctx, &spec, &id, addr)?;
        build::pack(ctx, &src, None)?
    };
    private::write(&pointer, &sha).map_err(|e| ProviderError::new(format!("{e}")))?;
    Ok((path, sha, id))
}

// ---------------------------------------------------------------------------------------------
// Plan.

fn url_of(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("http://[{address}]:{port}")
    } else {
        format!("http://{address}:{port}")
    }
}

/// The instances of units `idxs` (unit `<svc>-<i>` listens on `port + i`) on every host.
fn instances_at(
    hosts: &[HostRef],
    port: u16,
    idxs: &[u16],
    release: &dyn Fn(&str) -> Value,
) -> Value {
    let mut out = Vec::new();
    for h in hosts {
        for i in idxs {
            let p = port + i;
            let mut m = ValueMap::new();
            m.insert("host".into(), Value::str(&h.name));
            m.insert("address".into(), Value::str(&h.address));
            m.insert("port".into(), Value::Number(p as f64));
            m.insert("url".into(), Value::str(url_of(&h.address, p)));
            m.insert("release".into(), release(&h.name));
            out.push(Value::Map(m));
        }
    }
    Value::List(out)
}

pub fn plan(ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
    service_token(req.addr)?;
    let mut o = req.config.clone();
    let known = ["source", "revision", "build", "artifact"]
        .iter()
        .all(|k| req.config.get(*k).is_none_or(Value::is_known));
    let (id, release) = if known {
        let (id, release) = plan_ids(ctx, req.config)?;
        let prior_id = req
            .prior
            .and_then(|p| p.get("build_id"))
            .and_then(|v| v.as_str());
        let prior_release = req
            .prior
            .and_then(|p| p.get("release"))
            .and_then(|v| v.as_str());
        let release = match release {
            Some(r) => Value::String(r),
            // The same source builds to the same tarball (it is reproducible, and kept).
            None if prior_id == Some(id.as_str()) => {
                prior_release.map_or(Value::Unknown, Value::str)
            }
            None => Value::Unknown,
        };
        (Value::String(id), release)
    } else {
        (Value::Unknown, Value::Unknown)
    };
    let hosts = hosts_of(req.config)?;
    let port = port_of(req.config);
    // The units the instances run as: slot A, or (blue-green) the slot the update moves to.
    let idxs = match req.prior {
        Some(prior) if bluegreen::is_blue_green(req.config) => {
            let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
            bluegreen::next_units(req.config, &id, &release, &names, prior)
                .map_err(|e| e.attr("port"))?
                .0
        }
        prior => bluegreen::rolling_units(req.config, prior),
    };
    let rel = release.clone();
    o.insert("build_id".into(), id);
    o.insert("release".into(), release);
    o.insert(
        "instances".into(),
        instances_at(&hosts, port, &idxs, &|_| rel.clone()),
    );
    o.insert(
        "url".into(),
        Value::str(url_of(&hosts[0].address, port + idxs[0])),
    );
    Ok(Planned {
        object: o,
        requires_replace: vec![],
    })
}

// ---------------------------------------------------------------------------------------------
// Reaching hosts.

/// The instance address of the host block instance that is `name`, when the engine tells
/// (apply: the step's peers); else a placeholder naming the inventory host.
async fn host_addrs(step: Option<&Step>, hosts: &[HostRef]) -> Vec<String> {
    let peers = match step {
        Some(s) => s.peers.list().await,
        None => Vec::new(),
    };
    hosts
        .iter()
        .map(|h| {
            peers
                .iter()
                .filter(|p| p.kind == host::KIND && p.dependency)
                .find(|p| host::instance_key(&p.addr).as_deref() == Some(h.name.as_str()))
                .map(|p| p.addr.clone())
                .unwrap_or_else(|| format!("host.NAME[\"{}\"]", h.name))
        })
        .collect()
}

/// The unit numbers a record's instances run as (a unit's number is its port minus `port`;
/// blue-green moves them between two slots): slot A for a record without instances.
fn recorded_idxs(record: &JsonMap) -> Vec<u16> {
    let c = prior_cfg(record);
    let port = port_of(&c);
    let mut idxs: Vec<u16> = record
        .get("instances")
        .and_then(|i| i.as_array())
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("port").and_then(|p| p.as_u64()))
        .filter_map(|p| u16::try_from(p).ok()?.checked_sub(port))
        .collect();
    idxs.sort_unstable();
    idxs.dedup();
    if idxs.is_empty() {
        idxs = (0..replicas_of(&c)).collect();
    }
    idxs
}

/// What each host answers about the units: unit → (active state, configured release).
const QUERY: &str = r#"for u in "$@"; do
f=/etc/systemd/system/pipeline-$u.service
r=$(sed -n 's/.*"PIPELINE_RELEASE=\([0-9a-f]*\)".*/\1/p' "$f" 2>/dev/null | head -n 1)
a=$(systemctl is-active "pipeline-$u.service" 2>/dev/null)
p=$(systemctl show -p MainPID --value "pipeline-$u.service" 2>/dev/null)
n=$(systemctl show -p NRestarts --value "pipeline-$u.service" 2>/dev/null)
printf '%s %s %s %s %s\n' "$u" "${a:-unknown}" "${r:--}" "${p:-0}" "${n:-0}"
done"#;

#[derive(Debug, Clone)]
struct UnitState {
    active: String,
    release: Option<String>,
    pid: u32,
    restarts: u32,
}

async fn query(
    ctx: &ProviderCtx,
    h: &HostRef,
    host_addr: &str,
    units: &[String],
) -> Result<std::collections::HashMap<String, UnitState>, SshError> {
    let ssh = conn::transport(ctx).map_err(|e| SshError::Invalid(e.message))?;
    let t = conn::target(&h.obj).map_err(|e| SshError::Invalid(e.message))?;
    let mut argv: Vec<&str> = vec!["sh", "-c", QUERY, "pipeline-query"];
    argv.extend(units.iter().map(String::as_str));
    let out = ssh
        .run(
            &t,
            &conn::keys(&h.obj, host_addr),
            Remote::Argv(&argv),
            None,
            QUERY_TIMEOUT,
        )
        .await?
        .checked()?;
    let mut m = std::collections::HashMap::new();
    for line in out.stdout_lossy().lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() == 5 {
            m.insert(
                f[0].to_string(),
                UnitState {
                    active: f[1].to_string(),
                    release: (f[2].len() == 64).then(|| f[2].to_string()),
                    pid: f[3].parse().unwrap_or(0),
                    restarts: f[4].parse().unwrap_or(0),
                },
            );
        }
    }
    Ok(m)
}

fn prior_hosts(prior: &JsonMap) -> Result<Vec<HostRef>, ProviderError> {
    let on = prior.get("on").map(Value::from_json).unwrap_or(Value::Null);
    let mut c = ValueMap::new();
    c.insert("on".into(), on);
    hosts_of(&c)
}

fn prior_cfg(prior: &JsonMap) -> ValueMap {
    prior
        .iter()
        .map(|(k, v)| (k.clone(), Value::from_json(v)))
        .collect()
}

/// Refresh: per host, which release each instance runs (an instance that is not active runs
/// none: the next apply starts it). A host whose key changed keeps its recorded state (apply
/// refuses it with the way to accept the key); an unreachable host is an error naming it.
pub async fn read(
    ctx: &ProviderCtx,
    addr: &str,
    prior: &JsonMap,
) -> Result<Option<JsonMap>, ProviderError> {
    let hosts = prior_hosts(prior)?;
    let c = prior_cfg(prior);
    let token = service_token(addr)?;
    let us: Vec<String> = recorded_idxs(prior)
        .iter()
        .map(|i| format!("{token}-{i}"))
        .collect();
    let addrs = host_addrs(None, &hosts).await;
    let answers = futures_join(hosts.iter().zip(&addrs).map(|(h, a)| query(ctx, h, a, &us))).await;
    let mut record = prior.clone();
    let Some(serde_json::Value::Array(instances)) = record.get_mut("instances") else {
        return Ok(Some(record));
    };
    for (h, answer) in hosts.iter().zip(answers) {
        let states = match answer {
            Ok(s) => s,
            Err(SshError::HostKeyChanged { .. }) | Err(SshError::HostKeyUnknown { .. }) => continue,
            Err(e) => {
                return Err(conn::error(e)
                    .map_message(|m| format!("{addr}: refreshing on host {}: {m}", h.name)))
            }
        };
        set_releases(instances, &h.name, &states, &token, port_of(&c));
    }
    Ok(Some(record))
}

/// Records, for the instances on `host`, the release each unit runs now (none when it is not
/// active).
fn set_releases(
    instances: &mut [serde_json::Value],
    host: &str,
    states: &std::collections::HashMap<String, UnitState>,
    token: &str,
    port: u16,
) {
    for inst in instances.iter_mut() {
        let Some(o) = inst.as_object_mut() else {
            continue;
        };
        if o.get("host").and_then(|v| v.as_str()) != Some(host) {
            continue;
        }
        let p = o.get("port").and_then(|v| v.as_u64()).unwrap_or(0) as u16;
        let unit = format!("{token}-{}", p.saturating_sub(port));
        let running = states
            .get(&unit)
            .filter(|s| s.active == "active" || s.active == "activating" || s.active == "reloading")
            .and_then(|s| s.release.clone());
        o.insert(
            "release".into(),
            running.map_or(serde_json::Value::Null, serde_json::Value::String),
        );
    }
}

/// Runs the futures concurrently and returns their results in order.
async fn futures_join<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let futs: Vec<_> = futs.map(Box::pin).collect();
    let mut results: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    let mut pending: Vec<(usize, std::pin::Pin<Box<F>>)> = futs.into_iter().enumerate().collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => {
                results[*i] = Some(v);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results
        .into_iter()
        .map(|r| r.expect("every future finished"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Apply.

struct Prepared {
    hosts: Vec<HostRef>,
    host_addrs: Vec<String>,
    inventory: PathBuf,
}

/// Connects to every host (host keys checked) and writes the run's inventory: each host with
/// the transport's ssh options (same masters, pinned keys) and its instances.
/// (For the instances of units `idxs`: unit i listens on `port + i`.)
async fn prepare_at(
    ctx: &ProviderCtx,
    addr: &str,
    c: &ValueMap,
    token: &str,
    idxs: &[u16],
    step: &Step,
) -> Result<Prepared, ProviderError> {
    let hosts = hosts_of(c)?;
    let host_addrs = host_addrs(Some(step), &hosts).await;
    step.progress(format!("connecting to {} host(s)", hosts.len()));
    let connected = connect_all(ctx, &hosts, &host_addrs).await;
    let mut inv_hosts = serde_json::Map::new();
    for (h, r) in hosts.iter().zip(connected) {
        let mut v = r.map_err(|e| e.map_message(|m| format!("{addr}: {m}")))?;
        v.insert("pipeline_instances".into(), instances_var(c, token, idxs));
        inv_hosts.insert(h.name.clone(), serde_json::Value::Object(v));
    }
    let inventory = ctx.work_dir.join("ssh").join(token).join("inventory.json");
    conn::write_inventory(&inventory, inv_hosts)?;
    Ok(Prepared {
        hosts,
        host_addrs,
        inventory,
    })
}

/// Every host's ansible variables (`remote::ansible_vars`), connected at once.
async fn connect_all(
    ctx: &ProviderCtx,
    hosts: &[HostRef],
    host_addrs: &[String],
) -> Vec<Result<serde_json::Map<String, serde_json::Value>, ProviderError>> {
    futures_join(
        hosts
            .iter()
            .zip(host_addrs)
            .map(|(h, a)| conn::ansible_vars(ctx, &h.obj, a)),
    )
    .await
}

/// The role's `pipeline_instances` for units `idxs` (unit i listens on `port + i`).
fn instances_var(c: &ValueMap, token: &str, idxs: &[u16]) -> serde_json::Value {
    let port = port_of(c);
    let run = c.get("run").and_then(Value::as_str).unwrap_or_default();
    idxs.iter()
        .map(|i| json!({ "unit": format!("{token}-{i}"), "port": port + i, "run": ["/bin/sh", "-c", run] }))
        .collect()
}

fn env_json(c: &ValueMap, k: &str) -> serde_json::Value {
    match c.get(k).map(|v| v.unmarked().0) {
        Some(Value::Map(m)) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), json!(v.as_str().unwrap_or_default())))
                .collect(),
        ),
        _ => json!({}),
    }
}

/// One run of the role on `limit` hosts.
/// What every step of one apply shares.
struct Job<'a> {
    ctx: &'a ProviderCtx,
    addr: &'a str,
    c: &'a ValueMap,
    token: &'a str,
    artifact: &'a Path,
    sha: &'a str,
}

async fn run_role(
    job: &Job<'_>,
    p: &Prepared,
    limit: &[String],
    step: &Step,
) -> Result<(), ProviderError> {
    run_role_only(job, p, limit, None, step).await
}

/// `run_role`; `only`: the units this run writes and starts, leaving the others alone (no
/// removal, no pruning); None: every listed unit, and the service's unlisted units go.
async fn run_role_only(
    job: &Job<'_>,
    p: &Prepared,
    limit: &[String],
    only: Option<&[String]>,
    step: &Step,
) -> Result<(), ProviderError> {
    let Job {
        ctx,
        addr,
        c,
        token,
        artifact,
        sha,
    } = *job;
    let ansible = Ansible::locate().map_err(|e| ProviderError::new(e.to_string()))?;
    let ssh = conn::transport(ctx)?;
    let mut run = Run::new("playbooks/service.yml", &p.inventory);
    run.limit = Some(limit.to_vec());
    run.exclusive = p
        .hosts
        .iter()
        .filter(|h| limit.contains(&h.name))
        .map(|h| h.address.clone())
        .collect();
    run.vars.insert("pipeline_hosts".into(), json!("all"));
    run.vars.insert("pipeline_service".into(), json!(token));
    run.vars.insert(
        "pipeline_artifact".into(),
        json!(artifact.display().to_string()),
    );
    run.vars.insert("pipeline_release".into(), json!(sha));
    if let Some(only) = only {
        run.vars.insert("pipeline_only".into(), json!(only));
    }
    run.vars.insert("pipeline_env".into(), env_json(c, "env"));
    run.vars
        .insert("pipeline_packages".into(), packages_json(c));
    run.secrets
        .insert("pipeline_secret_env".into(), env_json(c, "secret_env"));
    run.timeout = step
        .remaining()
        .unwrap_or(Duration::from_secs(1800))
        .min(Duration::from_secs(1800));
    run.connection = Connection {
        ssh_args: vec![],
        control_path_dir: Some(ssh.dir().to_path_buf()),
        ..Connection::default()
    };
    run.log = Some(ctx.work_dir.join("ssh").join(token).join("ansible.log"));
    let progress = |e: &pipeline_ssh::ansible::TaskEvent| {
        if let (Some(h), Some(t)) = (&e.host, &e.task) {
            if e.event == pipeline_ssh::ansible::EventKind::TaskStart {
                step.progress(format!("{h}: {t}"));
            }
        }
    };
    ansible
        .run(&run, &ctx.work_dir.join("ansible"), progress)
        .await
        .map(|_| ())
        .map_err(|e| {
            let kind_unreachable =
                matches!(e, pipeline_ssh::ansible::AnsibleError::Unreachable { .. });
            let err = ProviderError::new(format!("{addr}: {e}"));
            if kind_unreachable {
                err.with_kind(pipeline_engine::provider::ErrorKind::Unreachable)
            } else {
                err
            }
        })
}

/// The role's `pipeline_packages`: the names `packages` lists (checked at validate).
pub(super) fn packages_json(c: &ValueMap) -> serde_json::Value {
    let names: Vec<String> = match c.get("packages").map(|v| v.unmarked().0) {
        Some(Value::List(l)) => l
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    };
    json!(names)
}

/// A Debian package name (policy §5.6.1), as apt takes it.
fn is_package_name(n: &str) -> bool {
    let b = n.as_bytes();
    (2..=100).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+.-".contains(c))
}

/// An HTTP GET of `path` (or a TCP connect) answering `expect`; Err says what was seen.
fn check_once(address: &str, port: u16, path: Option<&str>, expect: u16) -> Result<(), String> {
    use std::io::{Read, Write};
    let sa = format!(
        "{}:{port}",
        if address.contains(':') {
            format!("[{address}]")
        } else {
            address.to_string()
        }
    );
    let sa: std::net::SocketAddr = sa.parse().map_err(|e| format!("{e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    let Some(path) = path else { return Ok(()) };
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    s.set_write_timeout(Some(Duration::from_secs(2))).ok();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&buf[..n]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {head:?}"))?;
    if status == expect {
        Ok(())
    } else {
        Err(format!("answered {status}, not {expect}"))
    }
}

/// Waits until every instance of `hosts` passes its check, bounded by start_timeout.
/// (The instances of units `idxs`: unit i listens on `port + i`.)
async fn wait_healthy_at(
    c: &ValueMap,
    addr: &str,
    hosts: &[&HostRef],
    idxs: &[u16],
    step: &Step,
) -> Result<(), ProviderError> {
    let limit = start_timeout(c);
    let started = Instant::now();
    let path = health_path(c);
    let expect = expect_status(c);
    let port = port_of(c);
    let mut pending: Vec<(String, String, u16)> = hosts
        .iter()
        .flat_map(|h| {
            idxs.iter()
                .map(move |i| (h.name.clone(), h.address.clone(), port + i))
        })
        .collect();
    let mut last = String::new();
    loop {
        let path2 = path.clone();
        let checks = pending.clone();
        let results = tokio::task::spawn_blocking(move || {
            checks
                .iter()
                .map(|(_, a, p)| check_once(a, *p, path2.as_deref(), expect))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ProviderError::new(e.to_string()))?;
        let mut still = Vec::new();
        for (inst, r) in pending.into_iter().zip(results) {
            if let Err(e) = r {
                last = format!("{} ({}:{}): {e}", inst.0, inst.1, inst.2);
                still.push(inst);
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= limit {
            return Err(ProviderError::new(format!(
                "{addr}: the instance on host {} did not become healthy within {} (start_timeout): {last}",
                pending[0].0,
                build::show_duration(limit)
            ))
            .help("check `run` and `health`; `pipeline logs` shows the instance's journal"));
        }
        step.sleep(Duration::from_millis(300)).await?;
    }
}

/// How long the running step may go on after a host outside it stopped answering: the step
/// finishes (its hosts then run one known release) unless it takes longer than this.
const FINISH_STEP: Duration = Duration::from_secs(60);

/// Every host of the update answers over its ssh master; the first that does not is an error
/// naming it (found within ~7 s of the host going away). When that host is in the running step
/// (`current`), the error ends the update at once: what the host runs is unknowable. When it is
/// not, the error goes to `halt` and the step is left to finish, so its hosts are not stopped
/// between a release unpacked and its units restarted (an ansible run cancelled here goes on
/// on the host, and a record taken then would be wrong); the update stops before the next step,
/// or after FINISH_STEP.
async fn watchdog(
    ctx: &ProviderCtx,
    addr: &str,
    p: &Prepared,
    current: &std::sync::Mutex<Vec<String>>,
    halt: &std::sync::Mutex<Option<ProviderError>>,
) -> ProviderError {
    let ssh = match conn::transport(ctx) {
        Ok(s) => s,
        Err(e) => return e,
    };
    loop {
        let answers = futures_join(p.hosts.iter().zip(&p.host_addrs).map(|(h, a)| {
            let ssh = ssh.clone();
            async move {
                let t = conn::target(&h.obj)?;
                ssh.run(
                    &t,
                    &conn::keys(&h.obj, a),
                    Remote::Argv(&["true"]),
                    None,
                    QUERY_TIMEOUT,
                )
                .await
                .map_err(conn::error)
                .map(|_| ())
            }
        }))
        .await;
        for (h, r) in p.hosts.iter().zip(answers) {
            if let Err(e) = r {
                let e = e.map_message(|m| {
                    format!(
                        "{addr}: host {} stopped answering during the update: {m}",
                        h.name
                    )
                });
                let in_step = current
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&h.name);
                if in_step {
                    return e;
                }
                *halt.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
                tokio::time::sleep(FINISH_STEP).await;
                return e;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn apply(
    ctx: &ProviderCtx,
    req: &ApplyRequest<'_>,
    step: &Step,
) -> Result<JsonMap, ProviderError> {
    let c = req.config;
    let addr = req.addr;
    let token = service_token(addr)?;
    step.progress("building the release".to_string());
    let (ctx2, addr2, c2) = (ctx.clone(), addr.to_string(), c.clone());
    let (artifact, sha, id) = tokio::task::spawn_blocking(move || release(&ctx2, &addr2, &c2))
        .await
        .map_err(|e| ProviderError::new(e.to_string()))??;
    // Slot A; B when a blue-green update left the instances there (updated in place).
    let slot = bluegreen::rolling_units(c, req.prior);
    if let Some(prior) = req.prior.filter(|_| bluegreen::is_blue_green(c)) {
        let job = Job {
            ctx,
            addr,
            c,
            token: &token,
            artifact: &artifact,
            sha: &sha,
        };
        let idxs = bluegreen::update(&job, prior, &id, step).await?;
        return Ok(applied_record(c, &id, &sha, &hosts_of(c)?, &idxs));
    }
    let p = prepare_at(ctx, addr, c, &token, &slot, step).await?;
    let hosts: Vec<String> = p.hosts.iter().map(|h| h.name.clone()).collect();
    let job = Job {
        ctx,
        addr,
        c,
        token: &token,
        artifact: &artifact,
        sha: &sha,
    };
    // Hosts a step started on, and those it finished (healthy on the new release): the record
    // of a stopped update.
    let touched = std::sync::Mutex::new(Vec::<String>::new());
    let finished = std::sync::Mutex::new(Vec::<String>::new());
    // The hosts of the running step, and a host outside it that stopped answering (watchdog).
    let current = std::sync::Mutex::new(Vec::<String>::new());
    let halt = std::sync::Mutex::new(None::<ProviderError>);
    let halted = |done: &[String]| -> Option<ProviderError> {
        let e = halt.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        let so_far = if done.is_empty() {
            "no host runs the new release yet".to_string()
        } else {
            format!("{} run(s) the new release", done.join(", "))
        };
        Some(e.map_message(|m| {
            format!("{m}\nthe rolling update stopped after the step that was running: {so_far}; the others keep the release they ran (the next apply converges them)")
        }))
    };
    let rolling = async {
        match req.prior {
            None => {
                step.progress(format!("starting on {} host(s)", hosts.len()));
                run_role(&job, &p, &hosts, step).await?;
                let all: Vec<&HostRef> = p.hosts.iter().collect();
                wait_healthy_at(c, addr, &all, &slot, step).await
            }
            Some(prior) => {
                // Hosts the service left: their units and files go.
                let old = prior_hosts(prior).unwrap_or_default();
                let gone: Vec<&HostRef> = old.iter().filter(|o| !hosts.contains(&o.name)).collect();
                let n = max_unavailable(c);
                let mut done: Vec<String> = Vec::new();
                for chunk in p.hosts.chunks(n) {
                    if let Some(e) = halted(&done) {
                        return Err(e);
                    }
                    let names: Vec<String> = chunk.iter().map(|h| h.name.clone()).collect();
                    *current.lock().unwrap_or_else(|e| e.into_inner()) = names.clone();
                    step.progress(format!("updating {}", names.join(", ")));
                    touched
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(names.iter().cloned());
                    let r = async {
                        run_role(&job, &p, &names, step).await?;
                        let chunk: Vec<&HostRef> = chunk.iter().collect();
                        wait_healthy_at(c, addr, &chunk, &slot, step).await
                    }
                    .await;
                    if let Err(e) = r {
                        let so_far = if done.is_empty() {
                            "no host runs the new release yet".to_string()
                        } else {
                            format!("{} run(s) the new release", done.join(", "))
                        };
                        return Err(e.map_message(|m| {
                            format!("{m}\nthe rolling update stopped at {}: {so_far}; the others keep the release they ran (the next apply converges them)", names.join(", "))
                        }));
                    }
                    finished
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(names.iter().cloned());
                    done.extend(names);
                }
                current.lock().unwrap_or_else(|e| e.into_inner()).clear();
                if let Some(e) = halted(&done) {
                    return Err(e);
                }
                for g in gone {
                    delete_on(ctx, addr, &token, g, &format!("host.NAME[\"{}\"]", g.name)).await?;
                }
                Ok(())
            }
        }
    };
    let outcome = if req.prior.is_some() && p.hosts.len() > 1 {
        tokio::select! {
            r = rolling => r,
            e = watchdog(ctx, addr, &p, &current, &halt) => Err(e),
        }
    } else {
        rolling.await
    };
    if let Err(e) = outcome {
        // A stopped update: the record says which hosts run what (the next apply converges).
        let touched = touched.into_inner().unwrap_or_else(|e| e.into_inner());
        let finished = finished.into_inner().unwrap_or_else(|e| e.into_inner());
        return Err(match req.prior {
            Some(prior) if !touched.is_empty() => {
                let mut now = partly_updated(prior, &finished, &sha);
                // The step that stopped: what its hosts run, asked briefly (a dead host keeps
                // what was recorded).
                let stopped: Vec<(&HostRef, &String)> = p
                    .hosts
                    .iter()
                    .zip(&p.host_addrs)
                    .filter(|(h, _)| touched.contains(&h.name) && !finished.contains(&h.name))
                    .collect();
                let us: Vec<String> = slot.iter().map(|i| format!("{token}-{i}")).collect();
                let answers = futures_join(
                    stopped
                        .iter()
                        .map(|(h, a)| tokio::time::timeout(STOPPED_QUERY, query(ctx, h, a, &us))),
                )
                .await;
                if let Some(serde_json::Value::Array(insts)) = now.get_mut("instances") {
                    for ((h, _), a) in stopped.iter().zip(answers) {
                        if let Ok(Ok(states)) = a {
                            set_releases(insts, &h.name, &states, &token, port_of(c));
                        }
                    }
                }
                e.partial(now)
            }
            _ => e,
        });
    }
    Ok(applied_record(c, &id, &sha, &p.hosts, &slot))
}

/// The record of an applied configuration whose instances run as units `idxs`.
fn applied_record(c: &ValueMap, id: &str, sha: &str, hosts: &[HostRef], idxs: &[u16]) -> JsonMap {
    let mut record: JsonMap = c.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
    record.insert("build_id".into(), json!(id));
    record.insert("release".into(), json!(sha));
    let rel = Value::str(sha);
    record.insert(
        "instances".into(),
        instances_at(hosts, port_of(c), idxs, &|_| rel.clone()).to_json(),
    );
    record.insert(
        "url".into(),
        json!(url_of(&hosts[0].address, port_of(c) + idxs[0])),
    );
    record
}

/// The prior record with the instances on `hosts` marked as running `release`: what runs after
/// a rolling update stopped part-way. Everything else (the settings, the block's `release`)
/// stays as before, so the next plan updates again and converges the rest.
fn partly_updated(prior: &JsonMap, hosts: &[String], release: &str) -> JsonMap {
    let mut now = prior.clone();
    if let Some(serde_json::Value::Array(insts)) = now.get_mut("instances") {
        for i in insts.iter_mut() {
            let on = i.get("host").and_then(|h| h.as_str()).unwrap_or("");
            if hosts.iter().any(|h| h == on) {
                i["release"] = json!(release);
            }
        }
    }
    now
}

// ---------------------------------------------------------------------------------------------
// Delete, describe.

const DELETE: &str = r#"set -e
s=$1
for f in /etc/systemd/system/pipeline-*.service; do
  [ -e "$f" ] || continue
  grep -qx "X-PipelineService=$s" "$f" || continue
  u=${f##*/}
  systemctl disable --now "$u" >/dev/null 2>&1 || true
  rm -f -- "$f"
done
systemctl daemon-reload
rm -rf -- "/etc/pipeline/$s" "/opt/pipeline/$s""#;

async fn delete_on(
    ctx: &ProviderCtx,
    addr: &str,
    token: &str,
    h: &HostRef,
    host_addr: &str,
) -> Result<(), ProviderError> {
    let ssh = conn::transport(ctx)?;
    let t = conn::target(&h.obj)?;
    ssh.run(
        &t,
        &conn::keys(&h.obj, host_addr),
        Remote::Argv(&["sh", "-c", DELETE, "pipeline-delete", token]),
        None,
        Duration::from_secs(60),
    )
    .await
    .and_then(|o| o.checked())
    .map(|_| ())
    .map_err(|e| {
        conn::error(e).map_message(|m| format!("{addr}: removing it from host {}: {m}", h.name))
    })
}

pub async fn delete(
    ctx: &ProviderCtx,
    addr: &str,
    prior: &JsonMap,
    step: &Step,
) -> Result<(), ProviderError> {
    let token = service_token(addr)?;
    let hosts = prior_hosts(prior)?;
    let addrs = host_addrs(Some(step), &hosts).await;
    step.progress(format!("removing from {} host(s)", hosts.len()));
    let results = futures_join(
        hosts
            .iter()
            .zip(&addrs)
            .map(|(h, a)| delete_on(ctx, addr, &token, h, a)),
    )
    .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(())
}

/// The systemd unit of instance `u` (`<svc>-<i>`): the token is checked by `service_token`.
fn unit_name(u: &str) -> String {
    format!("pipeline-{u}.service")
}

pub async fn describe(
    ctx: &ProviderCtx,
    addr: &str,
    record: &JsonMap,
) -> Result<Description, ProviderError> {
    let token = service_token(addr)?;
    let hosts = prior_hosts(record)?;
    let c = prior_cfg(record);
    let idxs = recorded_idxs(record);
    let us: Vec<String> = idxs.iter().map(|i| format!("{token}-{i}")).collect();
    let addrs = host_addrs(None, &hosts).await;
    let answers = futures_join(hosts.iter().zip(&addrs).map(|(h, a)| query(ctx, h, a, &us))).await;
    let ssh = conn::transport(ctx)?;
    let port = port_of(&c);
    let mut d = Description {
        serves: Serves::App,
        ..Default::default()
    };
    let mut bad = Vec::new();
    for ((h, a), answer) in hosts.iter().zip(&addrs).zip(answers) {
        let t = conn::target(&h.obj)?;
        let args = ssh
            .ssh_args(&t, &conn::keys(&h.obj, a))
            .await
            .unwrap_or_default();
        for (i, u) in idxs.iter().zip(&us) {
            let p = port + i;
            let st = answer.as_ref().ok().and_then(|m| m.get(u)).cloned();
            let running = st.as_ref().is_some_and(|s| s.active == "active");
            if !running {
                bad.push(match &answer {
                    Err(e) => format!("{}: {e}", h.name),
                    Ok(_) => format!(
                        "{} {u}: {}",
                        h.name,
                        st.as_ref().map_or("not installed", |s| s.active.as_str())
                    ),
                });
            }
            d.processes.push(ProcessInfo {
                role: "app".into(),
                pid: st.as_ref().map(|s| s.pid).filter(|p| *p > 0),
                host: Some(h.name.clone()),
                running,
                healthy: None,
                port: Some(p),
                restarts: st.as_ref().map_or(0, |s| s.restarts),
                supervisor: Some(format!(
                    "systemd: {}",
                    st.as_ref().map_or("unknown", |s| s.active.as_str())
                )),
                unit: Some(unit_name(u)),
                ..Default::default()
            });
            d.endpoints.push(Endpoint {
                role: "serve".into(),
                url: url_of(&h.address, p),
                ..Default::default()
            });
            if let Some(path) = health_path(&c) {
                d.endpoints.push(Endpoint {
                    role: "health".into(),
                    url: format!("{}{path}", url_of(&h.address, p)),
                    expect_status: Some(expect_status(&c)),
                    ..Default::default()
                });
            }
            let mut argv = vec!["ssh".to_string()];
            argv.extend(args.iter().cloned());
            argv.extend([
                "--".to_string(),
                t.address.clone(),
                format!("timeout 20 journalctl --no-pager -o short-iso -n {LOG_LINES} -u pipeline-{u}.service"),
            ]);
            d.logs.push(LogSource::Command {
                role: format!("app {} {u}", h.name),
                argv,
            });
        }
        // CPU and memory of the host and of these units: the monitor appends its sampling
        // command (one call per host for all the units it samples there).
        if !args.is_empty() {
            let mut argv = vec!["ssh".to_string()];
            argv.extend(args.iter().cloned());
            argv.extend(["--".to_string(), t.address.clone()]);
            d.metrics.push(MetricSource::RemoteUsage {
                host: h.name.clone(),
                argv,
                units: us.iter().map(|u| unit_name(u)).collect(),
            });
        }
    }
    d.health = if bad.is_empty() {
        Health::new(HealthState::Healthy, None)
    } else {
        Health::new(HealthState::Down, Some(bad.join("; ")))
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, address: &str) -> Value {
        let mut m = ValueMap::new();
        m.insert("name".into(), Value::str(name));
        m.insert("address".into(), Value::str(address));
        m.insert("transport".into(), Value::str("ssh"));
        m.insert("host_key".into(), Value::Unknown);
        Value::Map(m)
    }

    #[test]
    fn a_stopped_update_records_the_hosts_it_moved_and_keeps_the_rest() {
        let prior: JsonMap = serde_json::from_value(json!({
            "release": "old", "port": 8080,
            "instances": [
                {"host": "a", "release": "old"},
                {"host": "b", "release": "old"},
                {"host": "c", "release": "old"}
            ]
        }))
        .unwrap();
        let now = partly_updated(&prior, &["a".into(), "b".into()], "new");
        let rel: Vec<&str> = now["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["release"].as_str().unwrap())
            .collect();
        assert_eq!(rel, ["new", "new", "old"]);
        assert_eq!(now["release"], "old", "the next plan updates again");
        assert_eq!(now["port"], 8080);
    }

    fn with_on(on: Value) -> ValueMap {
        let mut c = ValueMap::new();
        c.insert("on".into(), on);
        c
    }

    #[test]
    fn the_service_token_is_the_block_name_with_its_modules() {
        assert_eq!(service_token("service.app").unwrap(), "app");
        assert_eq!(service_token("module.m.service.app").unwrap(), "m-app");
        assert_eq!(
            service_token("module.a.module.b.service.web_1").unwrap(),
            "a-b-web_1"
        );
        let e = service_token("service.App").unwrap_err();
        assert!(e.message.contains("lowercase"), "{}", e.message);
    }

    #[test]
    fn on_is_a_host_block_or_one_host_in_inventory_order() {
        let mut block = ValueMap::new();
        block.insert("web02".into(), host("web02", "10.0.0.2"));
        block.insert("web01".into(), host("web01", "10.0.0.1"));
        let hosts = hosts_of(&with_on(Value::Map(block))).unwrap();
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["web02", "web01"], "the block's order");
        let one = hosts_of(&with_on(host("web01", "10.0.0.1"))).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].address, "10.0.0.1");
        for bad in [
            Value::str("web01"),
            Value::Number(1.0),
            Value::Map(ValueMap::new()),
        ] {
            let e = hosts_of(&with_on(bad.clone())).unwrap_err();
            assert_eq!(e.attr.as_deref(), Some("on"), "{bad:?}");
        }
    }

    #[test]
    fn rolling_blue_green_and_canary_updates_are_accepted_on_ssh_hosts() {
        let u = |kv: &[(&str, Value)]| {
            let mut m = ValueMap::new();
            for (k, v) in kv {
                m.insert(k.to_string(), v.clone());
            }
            Value::Map(m)
        };
        let s = |s: &str| ("strategy", Value::str(s));
        assert!(check_update(&u(&[s("rolling")])).is_ok());
        assert!(check_update(&u(&[s("blue-green")])).is_ok());
        assert!(check_update(&u(&[s("canary"), ("drain_timeout", Value::str("2s"))])).is_ok());
        let e =
            check_update(&u(&[s("canary"), ("max_unavailable", Value::Number(1.0))])).unwrap_err();
        assert!(e.contains("canary starts every host"), "{e}");
        let e = check_update(&u(&[s("sideways")])).unwrap_err();
        assert!(e.contains("\"canary\""), "{e}");
    }

    #[test]
    fn packages_are_debian_package_names() {
        for ok in ["tomcat10", "libmariadb-java", "g++", "python3.11", "0ad"] {
            assert!(is_package_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "Tomcat",
            "-o",
            "a b",
            "x;rm",
            "jq=1.6",
            "pkg/bookworm",
            "a\n",
        ] {
            assert!(!is_package_name(bad), "{bad:?}");
        }
        let mut c = ValueMap::new();
        c.insert("on".into(), host("a", "10.0.0.1"));
        c.insert("source".into(), Value::str("app"));
        c.insert(
            "packages".into(),
            Value::List(vec![
                Value::str("nodejs"),
                Value::str("--allow-unauthenticated"),
            ]),
        );
        let v = validate(&c);
        assert!(
            v.iter().any(|i| i.attr.as_deref() == Some("packages")
                && i.message.contains("--allow-unauthenticated")),
            "{v:?}"
        );
        assert_eq!(
            packages_json(&c),
            json!(["nodejs", "--allow-unauthenticated"])
        );
    }

    #[test]
    fn canary_settings_are_checked_like_the_local_services() {
        let mut c = ValueMap::new();
        c.insert("on".into(), host("a", "10.0.0.1"));
        c.insert("source".into(), Value::str("app"));
        c.insert("port".into(), Value::Number(8080.0));
        c.insert("replicas".into(), Value::Number(1.0));
        let mut bad = ValueMap::new();
        bad.insert("steps".into(), Value::str("soon"));
        c.insert("canary".into(), Value::Map(bad));
        let v = validate(&c);
        assert!(
            v.iter().any(|i| i.attr.as_deref() == Some("canary")),
            "{v:?}"
        );
    }

    #[test]
    fn instances_are_per_host_then_per_replica() {
        let hosts = hosts_of(&with_on(Value::List(vec![
            host("a", "10.0.0.1"),
            host("b", "fd00::2"),
        ])))
        .unwrap();
        let v = instances_at(&hosts, 8080, &[0, 1], &|h| Value::str(format!("r-{h}")));
        let urls: Vec<String> = match v {
            Value::List(l) => l
                .iter()
                .map(|i| {
                    format!(
                        "{} {}",
                        i.get("url").and_then(Value::as_str).unwrap(),
                        i.get("release").and_then(Value::as_str).unwrap()
                    )
                })
                .collect(),
            _ => panic!(),
        };
        assert_eq!(
            urls,
            [
                "http://10.0.0.1:8080 r-a",
                "http://10.0.0.1:8081 r-a",
                "http://[fd00::2]:8080 r-b",
                "http://[fd00::2]:8081 r-b"
            ]
        );
    }
}
