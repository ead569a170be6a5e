//! The callback plugin's JSON lines, and the recap built from them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// What happened, as the callback plugin (`pipeline_events`) reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The plugin is loaded and the playbook begins (no host).
    PlaybookStart,
    /// A task begins on a host.
    TaskStart,
    Ok,
    /// Changed something (in check mode: would change it).
    Changed,
    Failed,
    Unreachable,
    Skipped,
    /// The host's totals at the end of the run.
    Recap,
}

/// One line of the event stream. `msg` and `diff` of a `no_log` task are never filled in:
/// `msg` is "(output hidden by no_log)". Module arguments are never part of an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub event: EventKind,
    pub host: Option<String>,
    pub task: Option<String>,
    pub role: Option<String>,
    pub msg: Option<String>,
    /// A unified diff of what changed (or would change), when the module reports one and the
    /// run asked for diffs.
    pub diff: Option<String>,
    /// A failure the task ignores (`ignore_errors`): not a failed host.
    #[serde(default)]
    pub ignored: bool,
    /// Only on `recap`.
    #[serde(default)]
    pub stats: Option<HostStats>,
}

/// Ansible's per-host totals (as in its PLAY RECAP: `ok` counts changed tasks too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStats {
    pub ok: u32,
    pub changed: u32,
    pub failed: u32,
    pub unreachable: u32,
    pub skipped: u32,
    #[serde(default)]
    pub rescued: u32,
    #[serde(default)]
    pub ignored: u32,
}

/// A task that failed on a host (or found it unreachable), with its message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub task: String,
    pub role: Option<String>,
    pub msg: String,
}

/// A task that changed (in check mode: would change) a host, with its diff when known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskChange {
    pub task: String,
    pub role: Option<String>,
    pub diff: Option<String>,
}

/// One host's part of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecap {
    pub stats: HostStats,
    /// Failed tasks in order (ignored failures excluded), and the unreachable message if any.
    pub failures: Vec<TaskFailure>,
    /// Changed tasks in order: with `check`, what a real run would change.
    pub changes: Vec<TaskChange>,
}

impl HostRecap {
    pub fn is_unreachable(&self) -> bool {
        self.stats.unreachable > 0
    }
    pub fn is_failed(&self) -> bool {
        self.stats.failed > 0
    }
}

/// The outcome of a run, per host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recap {
    pub hosts: BTreeMap<String, HostRecap>,
    /// Whether the run was `--check` (changes are then what would change).
    pub check: bool,
    pub elapsed: Duration,
}

impl Recap {
    pub fn host(&self, name: &str) -> Option<&HostRecap> {
        self.hosts.get(name)
    }
    pub fn unreachable_hosts(&self) -> Vec<&str> {
        self.names(HostRecap::is_unreachable)
    }
    pub fn failed_hosts(&self) -> Vec<&str> {
        self.names(HostRecap::is_failed)
    }
    /// Hosts with at least one change (with `check`: that would change).
    pub fn changed_hosts(&self) -> Vec<&str> {
        self.names(|h| h.stats.changed > 0)
    }
    /// Total changed tasks over every host.
    pub fn changed(&self) -> u32 {
        self.hosts.values().map(|h| h.stats.changed).sum()
    }
    fn names(&self, f: impl Fn(&HostRecap) -> bool) -> Vec<&str> {
        self.hosts
            .iter()
            .filter(|(_, h)| f(h))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Folds one event in. Results build the task lists; `recap` events set the totals.
    pub(crate) fn record(&mut self, e: &TaskEvent) {
        let Some(host) = e.host.as_deref() else {
            return;
        };
        let task = || e.task.clone().unwrap_or_default();
        match e.event {
            EventKind::PlaybookStart => {}
            EventKind::TaskStart | EventKind::Ok | EventKind::Skipped => {
                self.hosts.entry(host.to_string()).or_default();
            }
            EventKind::Changed => {
                let h = self.hosts.entry(host.to_string()).or_default();
                h.changes.push(TaskChange {
                    task: task(),
                    role: e.role.clone(),
                    diff: e.diff.clone(),
                });
            }
            EventKind::Failed | EventKind::Unreachable => {
                let h = self.hosts.entry(host.to_string()).or_default();
                if !e.ignored {
                    h.failures.push(TaskFailure {
                        task: task(),
                        role: e.role.clone(),
                        msg: e.msg.clone().unwrap_or_default(),
                    });
                }
            }
            EventKind::Recap => {
                let h = self.hosts.entry(host.to_string()).or_default();
                if let Some(s) = e.stats {
                    h.stats = s;
                }
            }
        }
    }
}

/// A line of the stream, or `None` for what is not an event (a newer plugin's kind, noise).
pub(crate) fn parse(line: &str) -> Option<TaskEvent> {
    serde_json::from_str(line.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_becomes_a_recap_with_failures_and_changes() {
        let lines = [
            r#"{"event": "task_start", "host": "a", "task": "t1", "role": "web", "msg": null, "diff": null}"#,
            r#"{"event": "changed", "host": "a", "task": "t1", "role": "web", "msg": null, "diff": "--- x\n+++ x\n"}"#,
            r#"{"event": "failed", "host": "b", "task": "t1", "role": null, "msg": "boom", "diff": null, "ignored": true}"#,
            r#"{"event": "failed", "host": "b", "task": "t2", "role": null, "msg": "disk full", "diff": null, "ignored": false}"#,
            r#"{"event": "unreachable", "host": "c", "task": "t1", "role": null, "msg": "timed out", "diff": null}"#,
            r#"{"event": "something_new", "host": "a"}"#,
            "not json at all",
            r#"{"event": "recap", "host": "a", "task": null, "role": null, "msg": null, "diff": null, "stats": {"ok": 2, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 0, "rescued": 0, "ignored": 0}}"#,
            r#"{"event": "recap", "host": "b", "task": null, "role": null, "msg": null, "diff": null, "stats": {"ok": 0, "changed": 0, "failed": 1, "unreachable": 0, "skipped": 0, "rescued": 0, "ignored": 1}}"#,
            r#"{"event": "recap", "host": "c", "task": null, "role": null, "msg": null, "diff": null, "stats": {"ok": 0, "changed": 0, "failed": 0, "unreachable": 1, "skipped": 0, "rescued": 0, "ignored": 0}}"#,
        ];
        let mut r = Recap::default();
        let mut n = 0;
        for l in lines {
            if let Some(e) = parse(l) {
                n += 1;
                r.record(&e);
            }
        }
        assert_eq!(n, 8, "the unknown kind and the noise are skipped");
        assert_eq!(r.changed_hosts(), vec!["a"]);
        assert_eq!(r.failed_hosts(), vec!["b"]);
        assert_eq!(r.unreachable_hosts(), vec!["c"]);
        let a = r.host("a").unwrap();
        assert_eq!(a.changes[0].role.as_deref(), Some("web"));
        assert_eq!(a.changes[0].diff.as_deref(), Some("--- x\n+++ x\n"));
        let b = r.host("b").unwrap();
        assert_eq!(b.failures.len(), 1, "the ignored failure is not a failure");
        assert_eq!(b.failures[0].msg, "disk full");
        assert_eq!(r.host("c").unwrap().failures[0].msg, "timed out");
    }
}
