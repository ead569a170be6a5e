//! `service`: build a source directory or git revision and run each replica as a supervised
//! process on a free loopback port. Replicas keep running after the CLI exits.

use super::build::{self, BuildSpec};
use pipeline_engine::provider::{
    ApplyRequest, AttrSchema, Invalid, JsonMap, KindSchema, PlanRequest, Planned, ProviderCtx,
    ProviderError, Type,
};
use pipeline_engine::value::{Value, ValueMap};
use pipeline_supervise::{HealthCheck, HealthKind, ReplicaSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Attributes whose change restarts a replica.
const RESTARTING: &[&str] = &[
    "source", "revision", "build", "run", "env", "health", "restart", "on",
];

pub fn schema() -> KindSchema {
    KindSchema {
        kind: "service",
        attrs: vec![
            AttrSchema::optional("on", Type::Any),
            AttrSchema::required("source", Type::String).force_new(),
            AttrSchema::optional("revision", Type::String).force_new(),
            AttrSchema::optional("build", Type::String).force_new(),
            AttrSchema::required("run", Type::String).force_new(),
            AttrSchema::optional("replicas", Type::Number).default(Value::Number(1.0)),
            AttrSchema::optional("env", Type::Map(Box::new(Type::String)))
                .default(Value::Map(Default::default()))
                .force_new(),
            AttrSchema::optional("health", Type::Any).force_new(),
            AttrSchema::optional("restart", Type::Bool)
                .default(Value::Bool(true))
                .force_new(),
            AttrSchema::optional("start_timeout", Type::String).default(Value::str("60s")),
            AttrSchema::computed("build_id", Type::String).force_new(),
            AttrSchema::computed("address", Type::String),
            AttrSchema::computed("port", Type::Number),
            AttrSchema::computed("url", Type::String),
        ],
        instances_attr: Some("replicas"),
    }
}

pub fn sanitize(addr: &str) -> String {
    addr.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn replica_dir(work_dir: &Path, addr: &str) -> PathBuf {
    work_dir.join("run").join(sanitize(addr))
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

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
    if let Some(t) = c.get("start_timeout").and_then(Value::as_str) {
        if parse_duration(t).is_none() {
            out.push(Invalid::new(
                Some("start_timeout"),
                format!("{t:?} is not a duration"),
                "durations look like \"500ms\", \"30s\" or \"2m\"",
            ));
        }
    }
    out
}

fn build_spec(ctx: &ProviderCtx, c: &ValueMap) -> BuildSpec {
    let src = PathBuf::from(c.get("source").and_then(Value::as_str).unwrap_or("."));
    BuildSpec {
        source: if src.is_absolute() {
            src
        } else {
            ctx.stack_dir.join(src)
        },
        revision: c
            .get("revision")
            .and_then(Value::as_str)
            .map(str::to_string),
        build: c.get("build").and_then(Value::as_str).map(str::to_string),
    }
}

fn address_of(c: &ValueMap) -> String {
    c.get("on")
        .and_then(|on| match on.unmarked().0 {
            Value::List(l) => l
                .first()
                .and_then(|h| h.get("address").and_then(Value::as_str).map(str::to_string)),
            v => v.get("address").and_then(Value::as_str).map(str::to_string),
        })
        .unwrap_or_else(|| "127.0.0.1".into())
}

pub fn plan(ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
    let mut o = req.config.clone();
    o.shift_remove("replicas");
    let known = ["source", "revision", "build"]
        .iter()
        .all(|k| req.config.get(*k).is_none_or(Value::is_known));
    let id = if known {
        Value::String(build::build_id(&build_spec(ctx, req.config))?)
    } else {
        Value::Unknown
    };
    o.insert("build_id".into(), id.clone());
    o.insert(
        "address".into(),
        if req.config.get("on").is_none_or(Value::is_known) {
            Value::String(address_of(req.config))
        } else {
            Value::Unknown
        },
    );
    // The running replica keeps its port unless something restarts it.
    let unchanged = req.prior.is_some_and(|p| {
        RESTARTING.iter().all(|k| {
            let before = p.get(*k).map(Value::from_json).unwrap_or(Value::Null);
            req.config
                .get(*k)
                .map(|v| v.unmarked().0)
                .unwrap_or(Value::Null)
                == before
        }) && p.get("build_id").and_then(|v| v.as_str()) == id.as_str()
    });
    for k in ["port", "url"] {
        let v = match (unchanged, req.prior.and_then(|p| p.get(k))) {
            (true, Some(v)) => Value::from_json(v),
            _ => Value::Unknown,
        };
        o.insert(k.into(), v);
    }
    Ok(Planned {
        object: o,
        requires_replace: vec![],
    })
}

pub fn read(
    ctx: &ProviderCtx,
    addr: &str,
    prior: &JsonMap,
) -> Result<Option<JsonMap>, ProviderError> {
    let dir = replica_dir(&ctx.work_dir, addr);
    match pipeline_supervise::status(&dir) {
        Some(s) if s.supervisor_alive => Ok(Some(prior.clone())),
        _ => Ok(None),
    }
}

fn replica_index(addr: &str) -> usize {
    addr.rsplit_once('[')
        .and_then(|(_, r)| r.trim_end_matches(']').parse().ok())
        .unwrap_or(0)
}

pub async fn apply(ctx: &ProviderCtx, req: &ApplyRequest<'_>) -> Result<JsonMap, ProviderError> {
    if req.prior.is_some() {
        delete(ctx, req.addr).await?;
    }
    let (ctx, addr, config) = (ctx.clone(), req.addr.to_string(), req.config.clone());
    tokio::task::spawn_blocking(move || start_replica(&ctx, &addr, &config))
        .await
        .map_err(|e| ProviderError::new(format!("the start task failed: {e}")))?
}

fn start_replica(ctx: &ProviderCtx, addr: &str, c: &ValueMap) -> Result<JsonMap, ProviderError> {
    let dir = replica_dir(&ctx.work_dir, addr);
    let spec_b = build_spec(ctx, c);
    let id = build::build_id(&spec_b)?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| ProviderError::new(format!("cannot create {}: {e}", dir.display())))?;
    // Mark the build as used before building, so a concurrent clean-up never removes it.
    std::fs::write(dir.join("build_id"), &id)
        .map_err(|e| ProviderError::new(format!("cannot write in {}: {e}", dir.display())))?;
    let cwd = build::ensure(ctx, &spec_b, &id, addr)?;
    let address = address_of(c);
    let port = pipeline_supervise::free_port(&address)
        .map_err(|e| ProviderError::new(format!("no free port on {address}: {e}")))?;
    let index = replica_index(addr);
    let mut hb = handlebars::Handlebars::new();
    hb.register_escape_fn(handlebars::no_escape);
    let vars =
        serde_json::json!({ "port": port, "address": address, "replica": index, "name": addr });
    let run = c.get("run").and_then(Value::as_str).unwrap_or_default();
    let command = hb.render_template(run, &vars).map_err(|e| {
        ProviderError::new(format!("`run` does not render: {e}"))
            .help("placeholders: {{port}}, {{address}}, {{replica}}, {{name}}")
    })?;
    let mut env: std::collections::BTreeMap<String, String> =
        match c.get("env").map(|v| v.unmarked().0) {
            Some(Value::Map(m)) => m
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            _ => Default::default(),
        };
    env.insert("PIPELINE_REPLICA".into(), index.to_string());
    let health = health_of(c).map_err(ProviderError::new)?;
    let spec = ReplicaSpec {
        name: addr.to_string(),
        command,
        cwd,
        env,
        port,
        address: address.clone(),
        health,
        restart: c.get("restart").and_then(Value::as_bool).unwrap_or(true),
    };
    let timeout = c
        .get("start_timeout")
        .and_then(Value::as_str)
        .and_then(parse_duration)
        .unwrap_or(Duration::from_secs(60));
    let cleanup = |e: String| {
        let _ = pipeline_supervise::stop(&dir, Duration::from_secs(5));
        e
    };
    pipeline_supervise::start(&ctx.exe, &dir, &spec, Duration::from_secs(10))
        .map_err(|e| ProviderError::new(cleanup(e.to_string())))?;
    pipeline_supervise::wait_healthy(&dir, &spec, timeout).map_err(|e| {
        ProviderError::new(cleanup(e.to_string())).help(format!(
            "see the log with `pipeline logs {addr}`; check `run` and `health` of the service"
        ))
    })?;
    let mut out: JsonMap = c
        .iter()
        .filter(|(k, _)| k.as_str() != "replicas")
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect();
    out.insert("build_id".into(), id.into());
    out.insert("address".into(), address.clone().into());
    out.insert("port".into(), port.into());
    out.insert("url".into(), format!("http://{address}:{port}").into());
    Ok(out)
}

pub async fn delete(ctx: &ProviderCtx, addr: &str) -> Result<(), ProviderError> {
    let (ctx, addr) = (ctx.clone(), addr.to_string());
    tokio::task::spawn_blocking(move || {
        let dir = replica_dir(&ctx.work_dir, &addr);
        if dir.exists() {
            pipeline_supervise::stop(&dir, Duration::from_secs(10))
                .map_err(|e| ProviderError::new(format!("cannot stop {addr}: {e}")))?;
            std::fs::remove_dir_all(&dir)
                .map_err(|e| ProviderError::new(format!("cannot remove {}: {e}", dir.display())))?;
        }
        build::gc(&ctx);
        Ok(())
    })
    .await
    .map_err(|e| ProviderError::new(format!("the stop task failed: {e}")))?
}
