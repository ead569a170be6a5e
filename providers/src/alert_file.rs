//! The firing alerts a monitor daemon publishes for the canaries of this machine:
//! `.pipeline/run/monitor.NAME/alerts.json`, replaced atomically at every heartbeat.
//!
//! The monitor runs as a daemon of its own and the canary in the apply process; they share
//! nothing but the state directory. The monitor sees a candidate's traffic in the balancers'
//! access logs by its upstream address (`ip:port`), so a per-instance alert names the instance
//! by that address, and the canary stops when a fresh file names one of its candidates. A file
//! older than [`stale_after`] (its monitor stopped or hangs) is ignored, and so is a state
//! directory with no monitor: no alert, no abort, no error.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// The file's name in the monitor's run directory.
pub const FILE: &str = "alerts.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AlertFile {
    /// The monitor's address, `monitor.dash`.
    pub monitor: String,
    /// Unix ms of the heartbeat that wrote it.
    pub written_ms: u64,
    /// The monitor's heartbeat, ms.
    pub interval_ms: u64,
    pub firing: Vec<FiringAlert>,
}

/// One rule firing for one instance (or one group).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FiringAlert {
    /// The rule's name in the stack (Prometheus' `alertname`).
    pub alert: String,
    /// The service it watches (`web`), empty for a rule over every service.
    pub service: String,
    /// `instance` or `group`.
    pub scope: String,
    /// The instance as the balancers' access logs name it (`127.0.0.1:8001`), or the recorded
    /// address of a replica with no endpoint; for a group, the service's name.
    pub instance: String,
    /// The recorded instance (`service.web[0]`), when the monitor knows it (a canary's
    /// candidate is known by its upstream address only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub metric: String,
    pub value: f64,
    pub above: f64,
    pub window_s: f64,
    /// Unix ms since when it fires.
    pub since_ms: u64,
}

impl FiringAlert {
    /// One line for a canary's report: which alert, on what, with its figures.
    pub fn describe(&self, monitor: &str) -> String {
        format!(
            "alert `{}` of {monitor} fired on {} {}{}: {} = {} above {} over {}s",
            self.alert,
            self.scope,
            self.instance,
            self.address
                .as_ref()
                .map_or(String::new(), |a| format!(" ({a})")),
            self.metric,
            short(self.value),
            short(self.above),
            short(self.window_s),
        )
    }
}

fn short(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// How old a file may be and still count: a few heartbeats, never under 3 s (a heartbeat may
/// wait up to 2 s for a provider's description).
pub fn stale_after(interval_ms: u64) -> Duration {
    Duration::from_millis(interval_ms.saturating_mul(10).max(3000))
}

/// Write `file` into `dir` atomically (a reader sees the old file or the new one, whole).
pub fn write(dir: &Path, file: &AlertFile) -> std::io::Result<()> {
    let json = serde_json::to_vec(file).map_err(std::io::Error::other)?;
    pipeline_supervise::private::write_atomic(&dir.join(FILE), json)
}

/// The firing alerts of every monitor whose file under `run_root` (`.pipeline/run/`) is fresh
/// at `now_ms`: (monitor, alert).
pub fn fresh_firing(run_root: &Path, now_ms: u64) -> Vec<(String, FiringAlert)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(run_root).into_iter().flatten().flatten() {
        let Ok(bytes) = std::fs::read(e.path().join(FILE)) else {
            continue;
        };
        let Ok(f) = serde_json::from_slice::<AlertFile>(&bytes) else {
            continue;
        };
        let age = Duration::from_millis(now_ms.saturating_sub(f.written_ms));
        if age > stale_after(f.interval_ms) {
            continue;
        }
        out.extend(f.firing.into_iter().map(|a| (f.monitor.clone(), a)));
    }
    out.sort_by(|a, b| (&a.1.since_ms, &a.1.alert).cmp(&(&b.1.since_ms, &b.1.alert)));
    out
}

/// The first fresh per-instance alert that names one of `instances` (`ip:port`), as a line.
pub fn firing_on(run_root: &Path, now_ms: u64, instances: &[String]) -> Option<String> {
    fresh_firing(run_root, now_ms)
        .into_iter()
        .find(|(_, a)| a.scope == "instance" && instances.contains(&a.instance))
        .map(|(m, a)| a.describe(&m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(instance: &str, scope: &str) -> FiringAlert {
        FiringAlert {
            alert: "errors".into(),
            service: "web".into(),
            scope: scope.into(),
            instance: instance.into(),
            address: None,
            metric: "error_ratio".into(),
            value: 0.5,
            above: 0.05,
            window_s: 5.0,
            since_ms: 1,
        }
    }

    #[test]
    fn only_fresh_instance_alerts_naming_a_candidate_count() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path();
        // No monitor at all: nothing, no error.
        assert!(firing_on(run, 10_000, &["127.0.0.1:9".into()]).is_none());
        let dir = run.join("monitor.dash");
        std::fs::create_dir_all(&dir).unwrap();
        let f = AlertFile {
            monitor: "monitor.dash".into(),
            written_ms: 100_000,
            interval_ms: 100,
            firing: vec![alert("web", "group"), alert("127.0.0.1:9", "instance")],
        };
        write(&dir, &f).unwrap();
        let hit = firing_on(run, 101_000, &["127.0.0.1:9".into()]).unwrap();
        assert!(
            hit.contains("`errors`") && hit.contains("127.0.0.1:9") && hit.contains("0.500"),
            "{hit}"
        );
        // Another instance, or a group alert: no.
        assert!(firing_on(run, 101_000, &["127.0.0.1:10".into(), "web".into()]).is_none());
        // Stale: its monitor stopped writing.
        assert!(firing_on(run, 104_000, &["127.0.0.1:9".into()]).is_none());
        // A torn or foreign file is skipped.
        std::fs::write(dir.join(FILE), b"{not json").unwrap();
        assert!(fresh_firing(run, 101_000).is_empty());
    }
}
