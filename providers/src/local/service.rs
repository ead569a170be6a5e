//! `service`: build a source directory or git revision and run each replica as a supervised
//! process on a free loopback port. Replicas keep running after the CLI exits.

use super::netns;
use super::slot;
use crate::build::{self, BuildSpec};
use crate::{blocking, parse_duration};
use pipeline_engine::format::Format;
use pipeline_engine::provider::{
    ApplyRequest, AttrSchema, Invalid, JsonMap, KindSchema, PlanRequest, Planned, ProviderCtx,
    ProviderError, Type,
};
use pipeline_engine::step::Peers;
use pipeline_engine::value::{Value, ValueMap};
use pipeline_engine::Step;
use pipeline_supervise::{private, HealthCheck, HealthKind, ReplicaSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub fn schema() -> KindSchema {
    KindSchema {
        kind: "service",
        attrs: vec![
            // Where it runs; moving a slot to another host replaces it.
            AttrSchema::optional("on", Type::Any)
                .force_new()
                .format_at("address", Format::Address)
                .format_at("*.address", Format::Address),
            // A change to any of these starts a new generation behind the same slot (an update
            // in place, following `update`), never a new slot.
            // Formats: what reaches a command line, an environment or an HTTP request line.
            AttrSchema::required("source", Type::String).format(Format::FilePath),
            AttrSchema::optional("revision", Type::String).format(Format::GitRevision),
            AttrSchema::optional("build", Type::String).format(Format::NoNul),
            // How long `build` may run (default "10m"); the build is killed after it.
            AttrSchema::optional("build_timeout", Type::String),
            AttrSchema::required("run", Type::String).format(Format::NoNul),
            AttrSchema::optional("replicas", Type::Number).default(Value::Number(1.0)),
            AttrSchema::optional("env", Type::Map(Box::new(Type::String)))
                .default(Value::Map(Default::default()))
                .format_at("{}", Format::EnvName)
                .format_at("*", Format::NoNul),
            AttrSchema::optional("health", Type::Any)
                .format_at("path", Format::UrlTarget)
                .format_at("method", Format::Token),
            AttrSchema::optional("restart", Type::Bool).default(Value::Bool(true)),
            AttrSchema::optional("start_timeout", Type::String).default(Value::str("60s")),
            // { namespace = true, port = 3000 }: each generation in a network namespace of its
            // own, listening on a fixed port at an address of its own (netns.rs).
            AttrSchema::optional("network", Type::Any),
            // { strategy = "rolling" | "blue-green", max_unavailable = 1, max_surge = 0, drain_timeout = "10s" }
            AttrSchema::optional("update", Type::Any),
            // Progressive delivery and `pipeline canary` settings (see providers/src/canary.rs).
            AttrSchema::optional("canary", Type::Any)
                .format_at("request.path", Format::UrlTarget)
                .format_at("request.method", Format::Token)
                .format_at("request.content_type", Format::Line),
            // A digest of what is built: as secret as the inputs it digests.
            AttrSchema::computed("build_id", Type::String)
                .derived_from(&["source", "revision", "build"]),
            AttrSchema::computed("address", Type::String).derived_from(&["on"]),
            // The slot's port: stable for the life of the instance.
            AttrSchema::computed("port", Type::Number).derived_from(&[]),
            AttrSchema::computed("url", Type::String).derived_from(&["on"]),
        ],
        instances_attr: Some("replicas"),
    }
}

pub use pipeline_host::names::{run_dir as replica_dir, sanitize};

fn health_of(c: &ValueMap) -> Result<HealthCheck, String> {
    let Some(Value::Map(h)) = c.get("health").map(|v| v.unmarked().0) else {
        return Ok(HealthCheck::tcp());
    };
    for k in h.keys() {
        if ![
            "type",
            "path",
            "method",
            "body",
            "expect_status",
            "interval",
            "timeout",
        ]
        .contains(&k.as_str())
        {
            return Err(format!("unknown health setting `{k}`; use type, path, method, body, expect_status, interval, timeout"));
        }
    }
    let s = |k: &str| h.get(k).and_then(|v| v.as_str().map(str::to_string));
    let dur = |k: &str, d: u64| -> Result<u64, String> {
        match s(k) {
            None => Ok(d),
            Some(x) => parse_duration(&x)
                .map(|d| d.as_millis() as u64)
                .ok_or(format!(
                    "health {k} {x:?} is not a duration like \"500ms\" or \"2s\""
                )),
        }
    };
    let kind = match s("type").as_deref() {
        Some("tcp") => HealthKind::Tcp,
        None | Some("http") => HealthKind::Http {
            method: s("method").unwrap_or_else(|| "GET".into()),
            path: s("path").unwrap_or_else(|| "/".into()),
            body: s("body"),
            expect_status: h
                .get("expect_status")
                .and_then(Value::as_f64)
                .map_or(200, |n| n as u16),
        },
        Some(o) => {
            return Err(format!(
                "health type {o:?} is unknown; use \"http\" or \"tcp\""
            ))
        }
    };
    Ok(HealthCheck {
        kind,
        interval_ms: dur("interval", 1000)?,
        timeout_ms: dur("timeout", 1000)?,
    })
}

use pipeline_host::on::address as address_of;

/// How updates of a service's instances roll out.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdatePolicy {
    pub blue_green: bool,
    /// Progressive canary: staged like blue-green, then analysed (see canary.rs).
    pub canary: bool,
    /// Slots updated at once (max_unavailable + max_surge, at least 1).
    pub parallel: usize,
    pub drain_timeout: Duration,
}

pub fn update_policy(c: &ValueMap) -> Result<UpdatePolicy, String> {
    let mut p = UpdatePolicy {
        blue_green: false,
        canary: false,
        parallel: 1,
        drain_timeout: Duration::from_secs(10),
    };
    let Some(Value::Map(u)) = c.get("update").map(|v| v.unmarked().0) else {
        return Ok(p);
    };
    for k in u.keys() {
        if !["strategy", "max_unavailable", "max_surge", "drain_timeout"].contains(&k.as_str()) {
            return Err(format!("unknown update setting `{k}`"));
        }
    }
    match u.get("strategy").and_then(Value::as_str) {
        None | Some("rolling") => {}
        Some("blue-green") => p.blue_green = true,
        Some("canary") => p.canary = true,
        Some(o) => return Err(format!("update strategy {o:?} is unknown")),
    }
    let num = |k: &str, d: f64| -> Result<f64, String> {
        match u.get(k) {
            None => Ok(d),
            Some(v) => v
                .as_f64()
                .filter(|n| *n >= 0.0 && n.fract() == 0.0)
                .ok_or(format!("{k} must be a whole number >= 0")),
        }
    };
    p.parallel = ((num("max_unavailable", 1.0)? + num("max_surge", 0.0)?) as usize).max(1);
    if let Some(d) = u.get("drain_timeout").and_then(Value::as_str) {
        p.drain_timeout =
            parse_duration(d).ok_or(format!("drain_timeout {d:?} is not a duration"))?;
    }
    Ok(p)
}

pub fn validate(c: &ValueMap) -> Vec<Invalid> {
    let mut out = vec![];
    if c.get("health").is_some_and(|h| h.is_known()) {
        if let Err(e) = health_of(c) {
            out.push(Invalid::new(
                Some("health"),
                e,
                "e.g. health = { path = \"/health\", interval = \"500ms\" }; settings: type (http|tcp), path, method, body, expect_status, interval, timeout",
            ));
        }
    }
    build::check_timeouts(c, &mut out);
    if let Some(v) = c.get("canary").filter(|v| v.is_known()) {
        if let Err(e) = crate::canary::CanarySpec::from_value(v) {
            out.push(Invalid::new(Some("canary"), e, crate::canary::EXAMPLE));
        }
    }
    if c.get("network").is_some_and(|n| n.is_known()) {
        let checked = netns::port_of(c)
            .map_err(|e| (e, "e.g. network = { namespace = true, port = 3000 }; settings: namespace, port (the port the app always listens on)".to_string()))
            .and_then(|p| match p {
                Some(_) => netns::check().map(|_| ()),
                None => Ok(()),
            });
        if let Err((e, help)) = checked {
            out.push(Invalid::new(Some("network"), e, help));
        }
    }
    if c.get("update").is_some_and(|u| u.is_known()) {
        if let Err(e) = update_policy(c) {
            out.push(Invalid::new(
                Some("update"),
                e,
                "e.g. update = { strategy = \"rolling\", max_unavailable = 1 }, { strategy = \"blue-green\" } or { strategy = \"canary\" } (with canary = { steps = [5, 25, 50, 100] }); settings: strategy, max_unavailable, max_surge, drain_timeout",
            ));
        }
    }
    out
}

pub fn plan(ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
    let mut o = req.config.clone();
    o.shift_remove("replicas");
    let known = ["source", "revision", "build"]
        .iter()
        .all(|k| req.config.get(*k).is_none_or(Value::is_known));
    let id = if known {
        Value::String(build::build_id(&BuildSpec::of(ctx, req.config))?)
    } else {
        Value::Unknown
    };
    o.insert("build_id".into(), id);
    let on_known = req.config.get("on").is_none_or(Value::is_known);
    o.insert(
        "address".into(),
        if on_known {
            Value::String(address_of(req.config))
        } else {
            Value::Unknown
        },
    );
    // The slot keeps its address through updates; only a new slot gets a new one.
    let moved = req.prior.is_some_and(|p| {
        p.get("on").map(Value::from_json).unwrap_or(Value::Null)
            != req
                .config
                .get("on")
                .map(|v| v.unmarked().0)
                .unwrap_or(Value::Null)
    });
    for k in ["port", "url"] {
        let v = match req.prior.and_then(|p| p.get(k)) {
            Some(v) if !moved => Value::from_json(v),
            _ => Value::Unknown,
        };
        o.insert(k.into(), v);
    }
    Ok(Planned {
        object: o,
        requires_replace: vec![],
    })
}

fn replica_index(addr: &str) -> usize {
    addr.rsplit_once('[')
        .and_then(|(_, r)| r.trim_end_matches(']').parse().ok())
        .unwrap_or(0)
}

/// Where an instance's app generation runs (its log, pid, status); the instance dir without one.
pub fn generation_dir(work_dir: &Path, addr: &str, generation: Option<u64>) -> PathBuf {
    let d = replica_dir(work_dir, addr);
    match generation {
        Some(g) => d.join(format!("gen-{g}")),
        None => d,
    }
}

fn slot_dir(ctx: &ProviderCtx, addr: &str) -> PathBuf {
    replica_dir(&ctx.work_dir, addr).join("slot")
}

fn gen_dir(ctx: &ProviderCtx, addr: &str, generation: u64) -> PathBuf {
    replica_dir(&ctx.work_dir, addr).join(format!("gen-{generation}"))
}

/// Where the slot reaches generation `g` listening on `port`: at its network namespace's
/// address when it runs in one, else at the instance's `address`.
fn backend(ctx: &ProviderCtx, addr: &str, g: u64, address: &str, port: u64) -> String {
    match netns::of_generation(&gen_dir(ctx, addr, g)) {
        Some(ns) => format!("{}:{port}", ns.address),
        None => format!("{address}:{port}"),
    }
}

fn num(m: &JsonMap, k: &str) -> Option<u64> {
    m.get(k).and_then(|v| v.as_u64())
}

/// Is the instance's slot (and the generation it serves) alive?
pub fn read(
    ctx: &ProviderCtx,
    addr: &str,
    prior: &JsonMap,
) -> Result<Option<JsonMap>, ProviderError> {
    let alive = |d: &Path| pipeline_supervise::status(d).is_some_and(|s| s.supervisor_alive);
    let slot_ok = alive(&slot_dir(ctx, addr));
    let gen_ok = num(prior, "generation").is_some_and(|g| alive(&gen_dir(ctx, addr, g)));
    Ok((slot_ok && gen_ok).then(|| prior.clone()))
}

/// A file operation's error naming the file: "cannot write PATH: No such file or directory".
fn in_file<E: std::fmt::Display>(path: &Path, what: &'static str) -> impl Fn(E) -> ProviderError {
    let path = path.to_path_buf();
    move |e| ProviderError::new(format!("cannot {what} {}: {e}", path.display()))
}

fn err(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::new(e.to_string())
}

pub async fn apply(
    ctx: &ProviderCtx,
    req: &ApplyRequest<'_>,
    step: &Step,
) -> Result<JsonMap, ProviderError> {
    let (ctx, addr, config, prior, step) = (
        ctx.clone(),
        req.addr.to_string(),
        req.config.clone(),
        req.prior.cloned(),
        step.clone(),
    );
    blocking(move || match prior {
        None => create(&ctx, &addr, &config, &step),
        Some(prior) => {
            let staged = stage_update(&ctx, &addr, &config, &prior, &step)?;
            commit_update(&ctx, &addr, &staged, false)
        }
    })
    .await
}

/// Blue-green, phase one: start and health-check the new generation; switch nothing.
pub async fn stage(
    ctx: &ProviderCtx,
    req: &ApplyRequest<'_>,
    step: &Step,
) -> Result<JsonMap, ProviderError> {
    let (ctx, addr, config, prior, step) = (
        ctx.clone(),
        req.addr.to_string(),
        req.config.clone(),
        req.prior.cloned(),
        step.clone(),
    );
    blocking(move || match prior {
        None => create(&ctx, &addr, &config, &step),
        Some(prior) => stage_update(&ctx, &addr, &config, &prior, &step),
    })
    .await
}

/// Blue-green, phase two: switch the slot to the staged generation, keeping the old one as standby.
pub async fn commit(
    ctx: &ProviderCtx,
    addr: &str,
    staged: &JsonMap,
    peers: &Peers,
) -> Result<JsonMap, ProviderError> {
    let (ctx, addr, staged, peers) = (ctx.clone(), addr.to_string(), staged.clone(), peers.clone());
    blocking(move || {
        if staged.contains_key("staged_generation") {
            let canary = update_policy_of(&staged).canary;
            let out = commit_update(&ctx, &addr, &staged, !canary)?;
            // A promoted canary: the slot now serves the candidate; its own line leaves the
            // balancers (they were shifted to it directly). The switch is done and must be
            // recorded whatever happens here: a balancer left shifted shows as drift on the
            // next plan, and the next stage puts its stack config back.
            if let Some(c) = candidate_addr(&staged) {
                let _ = super::canary::clear_candidates(&peers, std::slice::from_ref(&c));
                retire_canary_slot(&ctx, &addr);
            }
            Ok(out)
        } else {
            Ok(staged)
        }
    })
    .await
}

/// Blue-green failed elsewhere: stop what this instance staged; the old generation keeps serving.
pub async fn abort(
    ctx: &ProviderCtx,
    addr: &str,
    staged: &JsonMap,
    peers: &Peers,
) -> Result<(), ProviderError> {
    let (ctx, addr, staged, peers) = (ctx.clone(), addr.to_string(), staged.clone(), peers.clone());
    blocking(move || {
        // An aborted canary's candidate gets no traffic before it stops; it stops even if a
        // balancer could not be rewritten (nginx then retries its other servers).
        let removed = match candidate_addr(&staged) {
            Some(c) => super::canary::clear_candidates(&peers, std::slice::from_ref(&c)),
            None => Ok(()),
        };
        stop_canary_slot(&ctx, &addr)?;
        if let Some(g) = num(&staged, "staged_generation") {
            stop_gen(&ctx, &addr, g)?;
        }
        removed.map_err(err)
    })
    .await
}

/// Where a canary sends the staged generation its traffic: its own slot (`canary_target`).
fn candidate_addr(staged: &JsonMap) -> Option<String> {
    staged
        .get("canary_target")
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// The update policy recorded with an instance's attributes.
fn update_policy_of(attrs: &JsonMap) -> UpdatePolicy {
    let mut c = ValueMap::new();
    if let Some(u) = attrs.get("update") {
        c.insert("update".into(), Value::from_json(u));
    }
    update_policy(&c).unwrap_or(UpdatePolicy {
        blue_green: false,
        canary: false,
        parallel: 1,
        drain_timeout: Duration::from_secs(10),
    })
}

/// Swap the active and standby generations (after a blue-green switch): instant, no start.
pub fn rollback(
    ctx: &ProviderCtx,
    addr: &str,
    current: &JsonMap,
) -> Result<JsonMap, ProviderError> {
    let Some(standby) = num(current, "standby_generation") else {
        return Err(ProviderError::new(format!(
            "{addr} has no previous generation to roll back to"
        ))
        .help(
            "rollback follows a blue-green deployment, which keeps the previous generation running",
        ));
    };
    let gdir = gen_dir(ctx, addr, standby);
    if !pipeline_supervise::status(&gdir).is_some_and(|s| s.supervisor_alive) {
        return Err(ProviderError::new(format!(
            "{addr}: the previous generation {standby} is not running any more"
        ))
        .help("deploy the previous version instead"));
    }
    let saved: JsonMap = serde_json::from_slice(
        &std::fs::read(gdir.join("instance.json"))
            .map_err(in_file(&gdir.join("instance.json"), "read"))?,
    )
    .map_err(err)?;
    let backend_port =
        num(&saved, "backend_port").ok_or_else(|| err("the standby generation has no port"))?;
    let address = current
        .get("address")
        .and_then(|v| v.as_str())
        .unwrap_or("127.0.0.1")
        .to_string();
    slot::switch(
        &slot_dir(ctx, addr),
        Some(backend(ctx, addr, standby, &address, backend_port)),
        Duration::from_secs(5),
    )
    .map_err(err)?;
    let mut out = saved;
    for k in ["port", "url", "address"] {
        if let Some(v) = current.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    out.insert("generation".into(), standby.into());
    out.insert(
        "standby_generation".into(),
        current.get("generation").cloned().unwrap_or_default(),
    );
    Ok(out)
}

fn create(
    ctx: &ProviderCtx,
    addr: &str,
    c: &ValueMap,
    step: &Step,
) -> Result<JsonMap, ProviderError> {
    let dir = replica_dir(&ctx.work_dir, addr);
    // Leftovers of an interrupted create are cleaned first.
    stop_all(ctx, addr)?;
    let address = address_of(c);
    let port = pipeline_supervise::free_port(&address)
        .map_err(|e| ProviderError::new(format!("no free port on {address}: {e}")))?;
    let sdir = slot_dir(ctx, addr);
    let result = (|| {
        start_slot(ctx, &format!("{addr} (slot)"), &sdir, &address, port, step)?;
        let (generation, backend_port, build_id) = start_gen(ctx, addr, c, 1, step)?;
        slot::switch(
            &sdir,
            Some(backend(
                ctx,
                addr,
                generation,
                &address,
                backend_port.into(),
            )),
            Duration::from_secs(5),
        )
        .map_err(err)?;
        let mut out = instance_attrs(c, &build_id, &address, backend_port, generation);
        out.insert("port".into(), port.into());
        out.insert("url".into(), format!("http://{address}:{port}").into());
        Ok(out)
    })();
    if result.is_err() {
        let _ = stop_all(ctx, addr);
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Start a slot (the supervised L4 forwarder) in `sdir` listening on `address:port`, pointing
/// nowhere yet.
fn start_slot(
    ctx: &ProviderCtx,
    name: &str,
    sdir: &Path,
    address: &str,
    port: u16,
    step: &Step,
) -> Result<(), ProviderError> {
    private::create_dir_all(sdir).map_err(in_file(sdir, "create"))?;
    slot::write_json(
        &sdir.join(slot::CONFIG),
        &slot::SlotConfig {
            listen: format!("{address}:{port}"),
            active: None,
            version: 1,
            connect_retry_ms: 3000,
        },
    )
    .map_err(in_file(&sdir.join(slot::CONFIG), "write"))?;
    let spec = ReplicaSpec {
        name: name.to_string(),
        command: format!(
            "exec {} __slot {}",
            crate::quote::shell(&ctx.exe.display().to_string()),
            crate::quote::shell(&sdir.display().to_string())
        ),
        cwd: sdir.to_path_buf(),
        env: Default::default(),
        port,
        address: address.to_string(),
        health: HealthCheck::tcp(),
        restart: true,
    };
    pipeline_supervise::start(&ctx.exe, sdir, &spec, Duration::from_secs(10)).map_err(err)?;
    crate::wait_healthy(step, sdir, &spec, Duration::from_secs(10))
}

/// A canary's candidate is reached through a slot of its own, as the baseline is through the
/// instance's slot: both arms pay the same forwarding hop, so the judge compares the apps.
fn canary_slot_dir(ctx: &ProviderCtx, addr: &str) -> PathBuf {
    replica_dir(&ctx.work_dir, addr).join("canary-slot")
}

/// After a promotion: nginx reloads gracefully, so its old workers may still send to the
/// canary slot for a moment and requests may be in flight through it; let them finish, then
/// stop it (best effort: the next stage stops a leftover anyway).
fn retire_canary_slot(ctx: &ProviderCtx, addr: &str) {
    let d = canary_slot_dir(ctx, addr);
    std::thread::sleep(Duration::from_millis(500));
    if let Some(target) = slot::read_config(&d).and_then(|c| c.active) {
        slot::drain(&d, &target, Duration::from_secs(5));
    }
    let _ = stop_canary_slot(ctx, addr);
}

fn stop_canary_slot(ctx: &ProviderCtx, addr: &str) -> Result<(), ProviderError> {
    let d = canary_slot_dir(ctx, addr);
    if d.exists() {
        pipeline_supervise::stop(&d, Duration::from_secs(10)).map_err(|e| {
            ProviderError::new(format!("cannot stop the canary slot of {addr}: {e}"))
        })?;
        std::fs::remove_dir_all(&d).map_err(in_file(&d, "remove"))?;
    }
    Ok(())
}

fn instance_attrs(
    c: &ValueMap,
    build_id: &str,
    address: &str,
    backend_port: u16,
    generation: u64,
) -> JsonMap {
    let mut out: JsonMap = c
        .iter()
        .filter(|(k, _)| k.as_str() != "replicas")
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect();
    out.insert("build_id".into(), build_id.into());
    out.insert("address".into(), address.into());
    out.insert("generation".into(), generation.into());
    out.insert("backend_port".into(), backend_port.into());
    out
}

/// Start generation `n` of the app on a private port and wait until it is healthy.
fn start_gen(
    ctx: &ProviderCtx,
    addr: &str,
    c: &ValueMap,
    n: u64,
    step: &Step,
) -> Result<(u64, u16, String), ProviderError> {
    let dir = gen_dir(ctx, addr, n);
    stop_gen(ctx, addr, n)?;
    let spec_b = BuildSpec::of(ctx, c);
    let id = build::build_id(&spec_b)?;
    private::create_dir_all(&dir)
        .map_err(|e| ProviderError::new(format!("cannot create {}: {e}", dir.display())))?;
    // Mark the build as used before building, so a concurrent clean-up never removes it.
    private::write(&dir.join("build_id"), &id).map_err(in_file(&dir.join("build_id"), "write"))?;
    let cwd = build::ensure(ctx, &spec_b, &id, addr)?;
    let address = address_of(c);
    // In a network namespace the app listens on its fixed port at the namespace's address.
    let ns = netns::for_generation(&ctx.work_dir, addr, c, n, &dir)?;
    let (listen, port) = match &ns {
        Some(ns) => (ns.address.to_string(), ns.port),
        None => (
            address.clone(),
            pipeline_supervise::free_port(&address)
                .map_err(|e| ProviderError::new(format!("no free port on {address}: {e}")))?,
        ),
    };
    let index = replica_index(addr);
    let mut hb = handlebars::Handlebars::new();
    hb.register_escape_fn(handlebars::no_escape);
    let vars =
        serde_json::json!({ "port": port, "address": listen, "replica": index, "name": addr });
    let run = c.get("run").and_then(Value::as_str).unwrap_or_default();
    let command = hb.render_template(run, &vars).map_err(|e| {
        let _ = stop_gen(ctx, addr, n);
        ProviderError::new(format!("`run` does not render: {e}"))
            .help("placeholders: {{port}}, {{address}}, {{replica}}, {{name}}")
    })?;
    let command = match &ns {
        Some(ns) => ns.wrap(&command),
        None => command,
    };
    let mut env: std::collections::BTreeMap<String, String> =
        match c.get("env").map(|v| v.unmarked().0) {
            Some(Value::Map(m)) => m
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            _ => Default::default(),
        };
    env.insert("PIPELINE_REPLICA".into(), index.to_string());
    env.insert("PIPELINE_GENERATION".into(), n.to_string());
    let spec = ReplicaSpec {
        name: format!("{addr} (generation {n})"),
        command,
        cwd,
        env,
        port,
        address: listen.clone(),
        health: health_of(c).map_err(ProviderError::new)?,
        restart: c.get("restart").and_then(Value::as_bool).unwrap_or(true),
    };
    let timeout = c
        .get("start_timeout")
        .and_then(Value::as_str)
        .and_then(parse_duration)
        .unwrap_or(Duration::from_secs(60));
    let started = pipeline_supervise::start(&ctx.exe, &dir, &spec, Duration::from_secs(10))
        .map_err(crate::supervise_error)
        .and_then(|_| crate::wait_healthy(step, &dir, &spec, timeout));
    if let Err(e) = started {
        let _ = stop_gen(ctx, addr, n);
        return Err(e.help(format!(
            "check `run` and `health` of the service{}; the log is in {}",
            ns.map(|ns| format!(" (in its network namespace the app must listen on 0.0.0.0:{p} or {{{{address}}}}:{p}, not on 127.0.0.1)", p = ns.port))
                .unwrap_or_default(),
            dir.join(pipeline_supervise::REPLICA_LOG).display()
        )));
    }
    // What this generation runs, for an instant rollback to it later: its env and any secret
    // in its config included, so owner-only.
    let attrs = instance_attrs(c, &id, &address, port, n);
    private::write(
        &dir.join("instance.json"),
        serde_json::to_vec(&attrs).map_err(err)?,
    )
    .map_err(err)?;
    Ok((n, port, id))
}

fn stop_gen(ctx: &ProviderCtx, addr: &str, n: u64) -> Result<(), ProviderError> {
    let dir = gen_dir(ctx, addr, n);
    if dir.exists() {
        pipeline_supervise::stop(&dir, Duration::from_secs(10))
            .map_err(|e| ProviderError::new(format!("cannot stop {addr} generation {n}: {e}")))?;
        netns::remove(&ctx.work_dir, addr, n, &dir).map_err(|e| {
            ProviderError::new(format!("{addr} generation {n}: {e}"))
                .help("remove it by hand (ip netns del NAME), then apply again")
        })?;
        std::fs::remove_dir_all(&dir)
            .map_err(|e| ProviderError::new(format!("cannot remove {}: {e}", dir.display())))?;
    }
    Ok(())
}

fn generations(ctx: &ProviderCtx, addr: &str) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read_dir(replica_dir(&ctx.work_dir, addr))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("gen-")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn stage_update(
    ctx: &ProviderCtx,
    addr: &str,
    c: &ValueMap,
    prior: &JsonMap,
    step: &Step,
) -> Result<JsonMap, ProviderError> {
    let active = num(prior, "generation").unwrap_or(0);
    let standby = num(prior, "standby_generation");
    let address = prior
        .get("address")
        .and_then(|v| v.as_str())
        .unwrap_or("127.0.0.1")
        .to_string();
    let sdir = slot_dir(ctx, addr);
    // An interrupted update may have left the slot pointing elsewhere: point it back first.
    if let Some(bp) = num(prior, "backend_port") {
        let want = backend(ctx, addr, active, &address, bp);
        if slot::read_config(&sdir).is_some_and(|c| c.active.as_deref() != Some(&want)) {
            slot::switch(&sdir, Some(want), Duration::from_secs(5)).map_err(err)?;
        }
    }
    // (A canary killed mid-way may have left balancers shifted to its candidates: their
    // provider's sweep, at the start of this apply, put them back.)
    stop_canary_slot(ctx, addr)?;
    // Generations that are neither serving nor kept as standby are leftovers.
    for g in generations(ctx, addr) {
        if g != active && Some(g) != standby {
            stop_gen(ctx, addr, g)?;
        }
    }
    let next = generations(ctx, addr)
        .into_iter()
        .max()
        .unwrap_or(active)
        .max(active)
        + 1;
    let (generation, backend_port, build_id) = start_gen(ctx, addr, c, next, step)?;
    let mut out = instance_attrs(c, &build_id, &address, backend_port, active);
    for k in ["port", "url", "backend_port"] {
        if let Some(v) = prior.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(s) = standby {
        out.insert("standby_generation".into(), s.into());
    }
    out.insert("staged_generation".into(), generation.into());
    out.insert("staged_backend_port".into(), backend_port.into());
    // A canary reaches the candidate through a slot of its own (see canary_slot_dir).
    if update_policy(c).is_ok_and(|p| p.canary) {
        let target = backend(ctx, addr, generation, &address, backend_port.into());
        let port = pipeline_supervise::free_port(&address)
            .map_err(|e| ProviderError::new(format!("no free port on {address}: {e}")))?;
        let cdir = canary_slot_dir(ctx, addr);
        let started = start_slot(
            ctx,
            &format!("{addr} (canary slot)"),
            &cdir,
            &address,
            port,
            step,
        )
        .and_then(|_| slot::switch(&cdir, Some(target), Duration::from_secs(5)).map_err(err));
        if let Err(e) = started {
            let _ = stop_canary_slot(ctx, addr);
            let _ = stop_gen(ctx, addr, generation);
            return Err(e);
        }
        out.insert("canary_target".into(), format!("{address}:{port}").into());
    }
    Ok(out)
}

fn commit_update(
    ctx: &ProviderCtx,
    addr: &str,
    staged: &JsonMap,
    keep_standby: bool,
) -> Result<JsonMap, ProviderError> {
    let mut out = staged.clone();
    let (Some(new_gen), Some(new_port)) = (
        num(staged, "staged_generation"),
        num(staged, "staged_backend_port"),
    ) else {
        return Ok(out);
    };
    let old_gen = num(staged, "generation");
    let old_port = num(staged, "backend_port");
    let old_standby = num(staged, "standby_generation");
    let address = staged
        .get("address")
        .and_then(|v| v.as_str())
        .unwrap_or("127.0.0.1")
        .to_string();
    let sdir = slot_dir(ctx, addr);
    slot::switch(
        &sdir,
        Some(backend(ctx, addr, new_gen, &address, new_port)),
        Duration::from_secs(5),
    )
    .map_err(err)?;
    out.remove("staged_generation");
    out.remove("staged_backend_port");
    out.remove("canary_target");
    out.insert("generation".into(), new_gen.into());
    out.insert("backend_port".into(), new_port.into());
    out.remove("standby_generation");
    if let Some(s) = old_standby {
        stop_gen(ctx, addr, s)?;
    }
    if let (Some(g), Some(p)) = (old_gen, old_port) {
        if keep_standby {
            out.insert("standby_generation".into(), g.into());
        } else {
            // Rolling: let requests in flight on the old generation finish, then stop it.
            let policy = serde_json::from_value::<serde_json::Value>(
                staged.get("update").cloned().unwrap_or_default(),
            )
            .ok();
            let drain = policy
                .as_ref()
                .and_then(|u| u.get("drain_timeout"))
                .and_then(|d| d.as_str())
                .and_then(parse_duration)
                .unwrap_or(Duration::from_secs(10));
            slot::drain(&sdir, &backend(ctx, addr, g, &address, p), drain);
            stop_gen(ctx, addr, g)?;
        }
    }
    Ok(out)
}

fn stop_all(ctx: &ProviderCtx, addr: &str) -> Result<(), ProviderError> {
    for g in generations(ctx, addr) {
        stop_gen(ctx, addr, g)?;
    }
    let sdir = slot_dir(ctx, addr);
    if sdir.exists() {
        pipeline_supervise::stop(&sdir, Duration::from_secs(10))
            .map_err(|e| ProviderError::new(format!("cannot stop the slot of {addr}: {e}")))?;
    }
    stop_canary_slot(ctx, addr)?;
    sweep(ctx, addr)?;
    // Namespaces of generations a crashed run never recorded.
    netns::sweep(&ctx.work_dir, addr).map_err(|e| {
        ProviderError::new(format!("{addr}: {e}"))
            .help("remove it by hand (ip netns del NAME), then apply again")
    })
}

/// Kill whatever still carries this instance's marker: a supervisor that an apply killed mid-way
/// had spawned but not yet recorded (no pid file) would otherwise run a second copy later.
fn sweep(ctx: &ProviderCtx, addr: &str) -> Result<(), ProviderError> {
    let dir = replica_dir(&ctx.work_dir, addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = pipeline_supervise::processes_under(&dir);
        if left.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(ProviderError::new(format!(
                "{addr}: processes {left:?} under {} do not stop",
                dir.display()
            ))
            .help("stop them by hand (kill -9), then apply again"));
        }
        for pid in left {
            // SAFETY: a signal to a process that carries this instance's marker.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub async fn delete(ctx: &ProviderCtx, addr: &str) -> Result<(), ProviderError> {
    let (ctx, addr) = (ctx.clone(), addr.to_string());
    blocking(move || {
        stop_all(&ctx, &addr)?;
        let dir = replica_dir(&ctx.work_dir, &addr);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| ProviderError::new(format!("cannot remove {}: {e}", dir.display())))?;
        }
        build::gc(&ctx);
        Ok(())
    })
    .await
}

/// The address an instance directory was made for, from the names its supervisors were given
/// (`service.web[0] (slot)`); the directory's own name when none is readable.
fn addr_of_dir(dir: &Path) -> String {
    let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    subs.sort();
    subs.iter()
        .find_map(|d| {
            let text = std::fs::read_to_string(d.join(pipeline_supervise::SPEC_FILE)).ok()?;
            let spec: ReplicaSpec = serde_json::from_str(&text).ok()?;
            let (addr, _) = spec.name.split_once(" (")?;
            (sanitize(addr) == dir.file_name()?.to_string_lossy()).then(|| addr.to_string())
        })
        .unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// Is `dir` (under `run/`) an instance directory of a service: a slot, a canary slot or a
/// generation inside?
fn is_instance_dir(dir: &Path) -> bool {
    dir.is_dir()
        && std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n == "slot"
                    || n == "canary-slot"
                    || n.strip_prefix("gen-")
                        .is_some_and(|g| g.parse::<u64>().is_ok())
            })
}

/// What the service instances recorded in the state account for, for the sweep.
enum Owned {
    /// Serving (and standby) generations; anything else of the instance is a leftover.
    Generations(Vec<u64>),
    /// In flight or to be replaced by the next plan (Pending, Tainted), or a canary of its block
    /// runs: everything of it stays.
    All,
}

/// Stop everything of the service instances under `ctx.work_dir` that the state (`owned`: the
/// local provider's records) does not account for: instances it no longer names (a concurrent
/// apply's, a crashed create's), generations of recorded instances that are neither serving nor
/// standby (a killed canary's candidates, an interrupted update's), canary slots with no canary
/// running, processes whose directory is gone, namespaces of none of these. (Balancers a killed
/// canary left shifted are their own provider's to put back, in its sweep.)
pub fn sweep_orphans(
    ctx: &ProviderCtx,
    owned: &[(&str, &pipeline_engine::state::ResourceState)],
) -> Result<Vec<String>, ProviderError> {
    use pipeline_engine::state::Status;
    let mut report = Vec::new();
    let instances: Vec<(String, Owned)> = owned
        .iter()
        .filter(|(_, r)| r.kind == "service")
        .map(|(addr, r)| {
            let block = pipeline_engine::plan::resource_addr(addr);
            let gens: Vec<u64> = ["generation", "standby_generation", "staged_generation"]
                .iter()
                .filter_map(|k| num(&r.attrs, k))
                .collect();
            let all = r.status != Status::Ready
                || gens.is_empty()
                || super::canary::running(&ctx.work_dir, block);
            (
                addr.to_string(),
                if all {
                    Owned::All
                } else {
                    Owned::Generations(gens)
                },
            )
        })
        .collect();
    let run = ctx.work_dir.join("run");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&run)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_instance_dir(p))
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match instances.iter().find(|(a, _)| sanitize(a) == name) {
            None => {
                let addr = addr_of_dir(&dir);
                let pids = pipeline_supervise::processes_under(&dir).len();
                stop_all(ctx, &addr)?;
                std::fs::remove_dir_all(&dir).map_err(|e| {
                    ProviderError::new(format!("cannot remove {}: {e}", dir.display()))
                })?;
                report.push(format!(
                    "{addr}: not in the state; stopped its {pids} processes and removed {}",
                    dir.display()
                ));
            }
            Some((_, Owned::All)) => {}
            Some((addr, Owned::Generations(keep))) => {
                if canary_slot_dir(ctx, addr).exists() {
                    stop_canary_slot(ctx, addr)?;
                    report.push(format!(
                        "{addr}: stopped the canary slot of a canary that is no longer running"
                    ));
                }
                for g in generations(ctx, addr) {
                    if !keep.contains(&g) {
                        stop_gen(ctx, addr, g)?;
                        report.push(format!(
                            "{addr}: stopped generation {g}, which is neither serving nor standby (a candidate or update that was interrupted)"
                        ));
                    }
                }
            }
        }
    }
    // Processes whose directory is gone (removed under them): found by their marker alone.
    for (pid, marker) in pipeline_supervise::marked_under(&run) {
        let Ok(rel) = marker.strip_prefix(pipeline_supervise_abs(&run)) else {
            continue;
        };
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let service_shaped = parts.len() == 2
            && (parts[1] == "slot"
                || parts[1] == "canary-slot"
                || parts[1]
                    .strip_prefix("gen-")
                    .is_some_and(|g| g.parse::<u64>().is_ok()));
        if service_shaped && !marker.exists() {
            // SAFETY: a signal to a process that carries this work directory's service marker.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            report.push(format!(
                "pid {pid}: stopped; it ran for {} whose directory is gone",
                rel.display()
            ));
        }
    }
    // Namespaces of no recorded generation.
    let keep_ns = |ns: &str| {
        instances.iter().any(|(addr, o)| match o {
            Owned::All => ns.starts_with(&netns::instance_names(&ctx.work_dir, addr)),
            Owned::Generations(gens) => gens
                .iter()
                .any(|&g| ns == netns::name(&ctx.work_dir, addr, g)),
        })
    };
    for ns in netns::sweep_unowned(&ctx.work_dir, keep_ns).map_err(|e| {
        ProviderError::new(e).help("remove it by hand (ip netns del NAME), then apply again")
    })? {
        report.push(format!(
            "network namespace {ns}: removed (no recorded generation runs in it)"
        ));
    }
    for f in super::canary::sweep_control_files(&ctx.work_dir) {
        report.push(format!(
            "{f}: removed (the apply running that canary is gone)"
        ));
    }
    if !report.is_empty() {
        build::gc(ctx);
    }
    Ok(report)
}

fn pipeline_supervise_abs(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A canary's candidates of instance `addr` while they run (for `status`): the generations
/// that are neither serving nor standby while the instance has a canary slot.
pub fn canary_candidates(work_dir: &Path, addr: &str, attrs: &JsonMap) -> Vec<(u64, PathBuf)> {
    let dir = replica_dir(work_dir, addr);
    if !dir.join("canary-slot").is_dir() {
        return Vec::new();
    }
    let recorded: Vec<u64> = ["generation", "standby_generation"]
        .iter()
        .filter_map(|k| num(attrs, k))
        .collect();
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let g: u64 = e.file_name().to_str()?.strip_prefix("gen-")?.parse().ok()?;
            (!recorded.contains(&g)).then(|| (g, e.path()))
        })
        .collect();
    out.sort();
    out
}
