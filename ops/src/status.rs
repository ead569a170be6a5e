//! `status` and `logs`: what each recorded instance's provider says runs for it
//! (`Provider::describe`), and where its log is.

use crate::workspace::{recorded_ctx, Workspace};
use anyhow::{anyhow, bail, Result};
use pipeline_engine::provider::{Description, Health, HealthState, LogSource};
use pipeline_engine::state;
use serde_json::Value as Json;
use std::path::PathBuf;

/// One process of `pipeline status`: an instance's main process, or a running canary's
/// candidate generation of it.
pub struct StatusRow {
    pub address: String,
    pub kind: String,
    /// A running canary's candidate (its generation in `generation`).
    pub canary: bool,
    /// The machine it runs on (an inventory host); None: this one.
    pub host: Option<String>,
    pub pid: Option<u32>,
    /// The process's port, else the recorded `port`.
    pub port: Option<Json>,
    /// Recorded attributes (secrets masked): `url`, `standby_generation`, `build_id`.
    pub url: Option<Json>,
    pub standby_generation: Option<Json>,
    pub build_id: Option<Json>,
    pub generation: Option<u64>,
    pub running: bool,
    pub healthy: Option<bool>,
    /// `healthy`, `unhealthy`, `starting`, `down`, `unknown`.
    pub health: String,
    pub health_reason: Option<String>,
    pub uptime_s: u64,
    pub restarts: u32,
    pub log_dropped_bytes: u64,
}

/// `pipeline status`: a row per running process (instances that run nothing, a file or a
/// host, have none) and a note per instance whose output was dropped.
pub struct Status {
    pub rows: Vec<StatusRow>,
    pub notes: Vec<String>,
}

pub async fn status(ws: &Workspace) -> Result<Status> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (mut rows, mut notes) = (Vec::new(), Vec::new());
    for (addr, rs, d) in describe_all(ws).await? {
        let Some(main) = d.main() else {
            continue;
        };
        if main.log_dropped_bytes > 0 {
            notes.push(format!(
                "{addr}: {} bytes of output dropped (its log could not be written{})",
                main.log_dropped_bytes,
                main.log_error
                    .as_deref()
                    .map(|e| format!("; now: {e}"))
                    .unwrap_or_else(|| ", see `pipeline logs`".into())
            ));
        }
        // A recorded attribute as status may show it: secrets (a URL with a password) masked.
        let attr = |k: &str| match rs.attrs.get(k) {
            Some(_) if rs.sensitive.iter().any(|s| s == k) => Some(Json::from("(sensitive value)")),
            v => v.cloned(),
        };
        let healthy = match d.health.state {
            HealthState::Healthy => Some(true),
            HealthState::Unhealthy => Some(false),
            _ => main.healthy,
        };
        // An instance on several machines (a service on inventory hosts): a row per process.
        let remote: Vec<_> = d
            .processes
            .iter()
            .filter(|p| p.role != "candidate" && p.host.is_some())
            .collect();
        if remote.len() > 1 {
            for p in remote {
                let health = match (p.running, p.healthy) {
                    (false, _) => "down",
                    (true, Some(true)) => "healthy",
                    (true, Some(false)) => "unhealthy",
                    (true, None) => d.health.state.name(),
                };
                rows.push(StatusRow {
                    address: addr.clone(),
                    kind: rs.kind.clone(),
                    canary: false,
                    host: p.host.clone(),
                    pid: p.pid,
                    port: p.port.map(Json::from),
                    url: None,
                    standby_generation: None,
                    build_id: attr("build_id"),
                    generation: p.generation,
                    running: p.running,
                    healthy: p.healthy,
                    health: health.into(),
                    health_reason: (!p.running).then(|| d.health.reason.clone()).flatten(),
                    uptime_s: p.started_at.map_or(0, |t| now.saturating_sub(t)),
                    restarts: p.restarts,
                    log_dropped_bytes: 0,
                });
            }
            continue;
        }
        rows.push(StatusRow {
            address: addr.clone(),
            kind: rs.kind.clone(),
            canary: false,
            host: main.host.clone(),
            pid: main.pid,
            port: main.port.map(Json::from).or_else(|| attr("port")),
            url: attr("url"),
            standby_generation: attr("standby_generation"),
            build_id: attr("build_id"),
            generation: main
                .generation
                .or_else(|| rs.attrs.get("generation").and_then(|g| g.as_u64())),
            running: main.running,
            healthy,
            health: d.health.state.name().to_string(),
            health_reason: d.health.reason.clone(),
            uptime_s: main.started_at.map_or(0, |t| now.saturating_sub(t)),
            restarts: main.restarts,
            log_dropped_bytes: main.log_dropped_bytes,
        });
        // A running canary's candidates: one row per candidate generation.
        for c in d.processes.iter().filter(|p| p.role == "candidate") {
            let health = match (c.running, c.healthy) {
                (false, _) => "down",
                (true, Some(true)) => "healthy",
                (true, Some(false)) => "unhealthy",
                (true, None) => "starting",
            };
            rows.push(StatusRow {
                address: addr.clone(),
                kind: rs.kind.clone(),
                canary: true,
                host: c.host.clone(),
                pid: c.pid,
                port: c.port.map(Json::from),
                url: None,
                standby_generation: None,
                build_id: None,
                generation: c.generation,
                running: c.running,
                healthy: c.healthy,
                health: health.into(),
                health_reason: None,
                uptime_s: c.started_at.map_or(0, |t| now.saturating_sub(t)),
                restarts: c.restarts,
                log_dropped_bytes: 0,
            });
        }
    }
    Ok(Status { rows, notes })
}

/// Where `pipeline logs ADDR` reads.
pub enum Log {
    /// A file on this machine (it exists).
    File(PathBuf),
    /// A command that prints the log (its argv, not empty).
    Command(Vec<String>),
}

/// The main process's log of `addr`; the errors name the instances that have logs.
pub async fn log_of(ws: &Workspace, addr: &str) -> Result<Log> {
    let with_logs = || async {
        let names: Vec<String> = describe_all(ws)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, _, d)| !d.logs.is_empty())
            .map(|(a, _, _)| a)
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let described = match describe_one(ws, addr).await {
        Ok((_, d)) => d,
        Err(e) => bail!(
            "{e:#}\n  = help: instances with logs here: {}",
            with_logs().await
        ),
    };
    // The main process's log comes first.
    let Some(source) = described.logs.first() else {
        bail!(
            "{addr} runs no process whose log could be shown\n  = help: instances with logs here: {}",
            with_logs().await
        );
    };
    match source {
        LogSource::File { path, .. } if path.exists() => Ok(Log::File(path.clone())),
        LogSource::File { path, .. } => bail!(
            "no log for {addr} at {}\n  = help: instances with logs here: {}",
            path.display(),
            with_logs().await
        ),
        LogSource::Command { argv, .. } if argv.is_empty() => {
            bail!("{addr}: its provider names an empty log command")
        }
        LogSource::Command { argv, .. } => Ok(Log::Command(argv.clone())),
        LogSource::Remote { what, .. } => {
            bail!("{addr}: its log is {what}, which this command cannot read from here")
        }
    }
}

/// The last `lines` lines of the log file `path`, then (with `follow`) each new line as it is
/// written, until the file is gone.
pub async fn tail(
    path: &std::path::Path,
    lines: usize,
    follow: bool,
    on_line: &mut dyn FnMut(&str) -> std::io::Result<()>,
) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let all: Vec<&str> = text.lines().collect();
    for l in &all[all.len().saturating_sub(lines)..] {
        on_line(l)?;
    }
    if follow {
        let mut tail = pipeline_host::tail::Tail::at_end(path);
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            if !path.exists() {
                break;
            }
            for l in tail.read_lines() {
                on_line(&l)?;
            }
        }
    }
    Ok(())
}

/// Every recorded instance with what its provider says runs for it (`Provider::describe`),
/// described concurrently, in state order. An instance whose provider cannot describe it is
/// shown with health unknown and the error as the reason.
pub async fn describe_all(
    ws: &Workspace,
) -> Result<
    Vec<(
        String,
        state::ResourceState,
        pipeline_engine::provider::Description,
    )>,
> {
    let st = ws.state()?;
    let ctx = recorded_ctx(ws)?;
    let mut tasks = Vec::new();
    for (addr, rs) in &st.resources {
        let Some(p) = ws.registry.provider_of(rs).cloned() else {
            continue;
        };
        let (ctx, addr, rs) = (ctx.clone(), addr.clone(), rs.clone());
        tasks.push(tokio::spawn(async move {
            let d = p
                .describe(&ctx, &rs.kind, &addr, &rs.attrs)
                .await
                .unwrap_or_else(|e| Description {
                    health: Health::new(HealthState::Unknown, Some(e.message)),
                    ..Default::default()
                });
            (addr, rs, d)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await?);
    }
    Ok(out)
}

/// One recorded instance and its description; the error names what the state has.
pub async fn describe_one(
    ws: &Workspace,
    addr: &str,
) -> Result<(state::ResourceState, pipeline_engine::provider::Description)> {
    let st = ws.state()?;
    let rs = st.resources.get(addr).cloned().ok_or_else(|| {
        anyhow!("{addr} is not in the state\n  = help: `pipeline state list` shows what is")
    })?;
    let p = ws
        .registry
        .provider_of(&rs)
        .ok_or_else(|| anyhow!("{addr}: no provider `{}` in this binary", rs.provider))?;
    let d = p
        .describe(&recorded_ctx(ws)?, &rs.kind, addr, &rs.attrs)
        .await
        .map_err(|e| anyhow!("{addr}: {e}"))?;
    Ok((rs, d))
}
