//! What a supervised process on this machine (`pipeline __supervise DIR`) looks like to
//! `Provider::describe`: its process, health and log, from the supervisor's files in DIR.

use pipeline_engine::provider::{Health, HealthState, LogSource, MetricSource, ProcessInfo};
use std::path::Path;

/// The process a supervisor in `dir` runs; None when no supervisor ever ran there.
pub fn process(dir: &Path, role: &str) -> Option<ProcessInfo> {
    let s = pipeline_supervise::status(dir)?;
    let running = s.supervisor_alive && s.child_alive;
    Some(ProcessInfo {
        role: role.into(),
        pid: s.child_pid,
        host: None,
        running,
        // No check recorded yet (just started): look now.
        healthy: s.healthy.or_else(|| live_check(dir, running)),
        started_at: (s.started_at > 0).then_some(s.started_at),
        restarts: s.restarts,
        port: (s.port > 0).then_some(s.port),
        supervisor: Some(if s.supervisor_alive {
            s.state.clone()
        } else {
            "gone".into()
        }),
        generation: None,
        unit: None,
        log_dropped_bytes: s.log_dropped_bytes,
        log_error: s.log_error,
    })
}

/// The supervisor's health check, once, now.
fn live_check(dir: &Path, running: bool) -> Option<bool> {
    if !running {
        return None;
    }
    let text = std::fs::read_to_string(dir.join(pipeline_supervise::SPEC_FILE)).ok()?;
    let spec: pipeline_supervise::ReplicaSpec = serde_json::from_str(&text).ok()?;
    Some(pipeline_supervise::check_once(&spec.address, spec.port, &spec.health).is_ok())
}

/// The last error of the supervisor's health check in `dir`.
pub fn last_error(dir: &Path) -> Option<String> {
    pipeline_supervise::status(dir)?.last_error
}

/// Health from the main process: down when it does not run, else its check.
pub fn health(main: Option<&ProcessInfo>, dir: &Path) -> Health {
    match main {
        None => Health::new(HealthState::Down, Some("it was never started here".into())),
        Some(p) if !p.running => {
            let why = match pipeline_supervise::status(dir) {
                Some(s) if !s.supervisor_alive => "its supervisor is not running".to_string(),
                Some(s) => match s.last_exit {
                    Some(e) => format!("{} exited ({e})", p.role),
                    None => format!("{} is not running", p.role),
                },
                None => "it was never started here".into(),
            };
            Health::new(HealthState::Down, Some(why))
        }
        Some(p) => match p.healthy {
            Some(true) => Health::new(HealthState::Healthy, None),
            Some(false) => Health::new(
                HealthState::Unhealthy,
                Some(last_error(dir).unwrap_or_else(|| "its health check fails".into())),
            ),
            None => Health::new(HealthState::Starting, None),
        },
    }
}

/// The log a supervisor in `dir` writes its child's output to.
pub fn log(dir: &Path, role: &str) -> LogSource {
    LogSource::File {
        role: role.into(),
        path: dir.join(pipeline_supervise::REPLICA_LOG),
    }
}

/// The process tree to sample for a running process.
pub fn procfs(p: &ProcessInfo) -> Option<MetricSource> {
    Some(MetricSource::Procfs {
        role: p.role.clone(),
        pid: p.pid.filter(|_| p.running)?,
        host: p.host.clone(),
    })
}
