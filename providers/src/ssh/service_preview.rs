//! The dry run of a planned `service` change on its hosts (`Provider::preview`): the
//! `pipeline_service` role in `--check --diff` mode, once for the whole resource (every host in
//! one ansible run, over the shared ssh masters apply uses), read back per host as a summary
//! ("2 to change: pipeline-app-0.service (restart), /etc/pipeline/app/app-0.env") and the
//! unified diff of the unit and environment files.
//!
//! - The release must be known for the role to say whether the unit changes: when the plan
//!   could not know it (the source changed), the preview builds it as apply would — the build is
//!   cached by its input in `.pipeline/artifacts`, so the apply that follows ships that very
//!   tarball without building again. Only this machine is touched by that; the hosts never are.
//! - The secret environment file is written by a `no_log`, `diff: false` task: the preview
//!   names it ("secret environment (not shown)") and never shows its content.
//! - Nothing changes on the hosts (check mode); the run's inventory is its own file, removed
//!   after the run, so a concurrent apply's inventory is never overwritten.
//! - An unreachable host fails the preview naming it (the engine fails the plan naming the
//!   instance).

use super::*;
use pipeline_engine::provider::TargetPreview;
use pipeline_ssh::ansible::{AnsibleError, HostRecap};

/// How long the whole dry run may take (it changes nothing, so it is quick when hosts answer).
const PREVIEW_TIMEOUT: Duration = Duration::from_secs(300);

/// The attributes whose values the role needs: a preview of a change that depends on values
/// known only after apply says so instead of guessing.
const NEEDED: [&str; 9] = [
    "run",
    "port",
    "replicas",
    "env",
    "secret_env",
    "source",
    "revision",
    "build",
    "artifact",
];

pub async fn preview(
    ctx: &ProviderCtx,
    req: &PlanRequest<'_>,
) -> Result<Vec<TargetPreview>, ProviderError> {
    let c = req.config;
    let addr = req.addr;
    let token = service_token(addr)?;
    let hosts = hosts_of(c)?;
    let unknown: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|k| c.get(*k).is_some_and(|v| !v.is_known()))
        .collect();
    if !unknown.is_empty() {
        let why = format!(
            "not previewed: {} known only after apply",
            unknown.join(", ")
        );
        return Ok(hosts
            .iter()
            .map(|h| TargetPreview {
                target: h.name.clone(),
                summary: why.clone(),
                diff: String::new(),
            })
            .collect());
    }
    // The release the apply would ship (built now when the plan could not know it; cached).
    let (ctx2, addr2, c2) = (ctx.clone(), addr.to_string(), c.clone());
    let (artifact, sha, _) = tokio::task::spawn_blocking(move || release(&ctx2, &addr2, &c2))
        .await
        .map_err(|e| ProviderError::new(e.to_string()))??;

    let inventory = inventory(ctx, addr, c, &token, &hosts).await?;
    let ansible = Ansible::locate().map_err(|e| {
        ProviderError::new(format!("{addr}: {e}"))
            .help("install ansible-core with scripts/lab-install, or set PIPELINE_ANSIBLE")
    })?;
    let ssh = conn::transport(ctx)?;
    // A sensitive value in `env` or `run` (not `secret_env`, which has its own no_log file)
    // would be in the unit or env file's diff: then no diff at all.
    let shown = !c
        .iter()
        .any(|(k, v)| k != "on" && k != "secret_env" && v.is_sensitive());
    let mut run = Run::new("playbooks/service.yml", &inventory.file.0);
    run.check = true;
    run.diff = shown;
    run.vars.insert("pipeline_hosts".into(), json!("all"));
    run.vars.insert("pipeline_service".into(), json!(token));
    run.vars.insert(
        "pipeline_artifact".into(),
        json!(artifact.display().to_string()),
    );
    run.vars.insert("pipeline_release".into(), json!(sha));
    run.vars.insert("pipeline_env".into(), env_json(c, "env"));
    run.vars
        .insert("pipeline_packages".into(), packages_json(c));
    run.secrets
        .insert("pipeline_secret_env".into(), env_json(c, "secret_env"));
    run.timeout = PREVIEW_TIMEOUT;
    run.connection = Connection {
        ssh_args: vec![],
        control_path_dir: Some(ssh.dir().to_path_buf()),
        ..Connection::default()
    };
    run.log = Some(ctx.work_dir.join("ssh").join(&token).join("ansible.log"));
    let recap = if inventory.hosts > 0 {
        let result = ansible
            .run(&run, &ctx.work_dir.join("ansible"), |_| {})
            .await;
        result.map_err(|e| run_error(addr, e))?
    } else {
        Default::default()
    };
    let refused = inventory.refused;
    let planned: JsonMap = c.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
    let units: Vec<String> = recorded_idxs(&planned)
        .iter()
        .map(|i| format!("{token}-{i}"))
        .collect();
    Ok(hosts
        .iter()
        .map(|h| {
            let refused = refused.iter().find(|(n, _)| *n == h.name);
            let (summary, diff) = match (refused, recap.host(&h.name)) {
                (Some((_, why)), _) => (format!("not previewed: {why}"), String::new()),
                (None, Some(r)) => host_preview(r, &units, shown),
                (None, None) => ("not reached by the dry run".to_string(), String::new()),
            };
            TargetPreview {
                target: h.name.clone(),
                summary,
                diff,
            }
        })
        .collect())
}

/// A failed dry run as an error naming the hosts (an unreachable one is `unreachable`).
fn run_error(addr: &str, e: AnsibleError) -> ProviderError {
    let unreachable = matches!(
        e,
        AnsibleError::Unreachable { .. } | AnsibleError::Timeout { .. }
    );
    let err = ProviderError::new(format!("{addr}: {e}"));
    if unreachable {
        err.with_kind(pipeline_engine::provider::ErrorKind::Unreachable)
            .help("bring the host back (or take it out of the inventory), then plan again")
    } else {
        err
    }
}

/// The preview's own inventory file, removed on drop.
struct InventoryFile(PathBuf);

/// The run's inventory: the hosts it holds, and those left out because their key changed.
struct Inventory {
    file: InventoryFile,
    hosts: usize,
    /// (host, why): refused by their pinned key.
    refused: Vec<(String, String)>,
}

impl Drop for InventoryFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Connects to every host (host keys checked, a dead host fails naming it) and writes the run's
/// inventory as apply's `prepare` does, to a file of this preview's own.
async fn inventory(
    ctx: &ProviderCtx,
    addr: &str,
    c: &ValueMap,
    token: &str,
    hosts: &[HostRef],
) -> Result<Inventory, ProviderError> {
    let host_addrs = host_addrs(None, hosts).await;
    let connected = connect_all(ctx, hosts, &host_addrs).await;
    // The units the plan says the instances will run as (slot A, or a blue-green update's).
    let planned: JsonMap = c.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
    let idxs = recorded_idxs(&planned);
    let mut inv_hosts = serde_json::Map::new();
    let mut refused = Vec::new();
    for (h, r) in hosts.iter().zip(connected) {
        let mut v = match r {
            Ok(v) => v,
            // A changed host key (as refresh: the record stays, apply refuses the host with
            // the way to accept its key): the plan says so for this host, previews the others.
            Err(e) if e.kind == pipeline_engine::provider::ErrorKind::InvalidConfig => {
                refused.push((h.name.clone(), e.message));
                continue;
            }
            Err(e) => return Err(e.map_message(|m| format!("{addr}: {m}"))),
        };
        v.insert("pipeline_instances".into(), instances_var(c, token, &idxs));
        inv_hosts.insert(h.name.clone(), serde_json::Value::Object(v));
    }
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = InventoryFile(
        ctx.work_dir
            .join("ssh")
            .join(token)
            .join(format!("preview-{}-{n}.json", std::process::id())),
    );
    let hosts_in = inv_hosts.len();
    conn::write_inventory(&file.0, inv_hosts)?;
    Ok(Inventory {
        file,
        hosts: hosts_in,
        refused,
    })
}

/// The role's task names the preview reads (providers/ssh/ansible/roles/pipeline_service).
const TASK_FILES: &str = "Environment files and units";
const TASK_SECRET: &str = "Secret environment of each instance";
const TASK_RESTART: &str = "Restart instances whose unit, environment or release changed";
const TASK_START: &str = "Every instance enabled and running";
const TASK_RELEASE_DIR: &str = "The release directory";

/// The files a unified diff names (`--- PATH (before)` headers), in order.
fn diff_paths(diff: &str) -> Vec<String> {
    diff.lines()
        .filter_map(|l| l.strip_prefix("--- ")?.strip_suffix(" (before)"))
        .map(str::to_string)
        .collect()
}

/// The instance (`app-0`) a service file belongs to: its unit or its env files.
fn unit_of(path: &str, units: &[String]) -> Option<String> {
    let name = path.rsplit('/').next()?;
    let stem = name
        .strip_prefix("pipeline-")
        .and_then(|n| n.strip_suffix(".service"))
        .or_else(|| name.strip_suffix(".secret.env"))
        .or_else(|| name.strip_suffix(".env"))?;
    units.iter().find(|u| *u == stem).cloned()
}

/// One host's dry run as (summary, diff): what would restart or start, then the files and
/// other changes, in the role's order. The secret file is named, never shown; nor are the
/// unit and env files when they hold a sensitive value (`shown` false: the run had no diff).
fn host_preview(r: &HostRecap, units: &[String], shown: bool) -> (String, String) {
    let mut items: Vec<String> = Vec::new();
    let mut diff = String::new();
    let mut touched: Vec<String> = Vec::new();
    let (mut restart, mut start, mut secret) = (false, false, false);
    for ch in &r.changes {
        let task = ch.task.as_str();
        match task {
            TASK_RESTART => restart = true,
            TASK_START => start = true,
            TASK_SECRET => {
                secret = true;
                items.push("secret environment (not shown)".into());
            }
            TASK_RELEASE_DIR => items.push("the release to unpack".into()),
            TASK_FILES if !shown => {
                items.push("unit and env files (not shown: they hold a sensitive value)".into())
            }
            _ => {
                let d = ch.diff.as_deref().unwrap_or_default();
                let paths = if task == TASK_FILES || !d.is_empty() {
                    diff_paths(d)
                } else {
                    vec![]
                };
                if paths.is_empty() {
                    items.push(task.to_string());
                }
                for p in paths {
                    if task == TASK_FILES {
                        if let Some(u) = unit_of(&p, units) {
                            if !touched.contains(&u) {
                                touched.push(u);
                            }
                        }
                    }
                    if !items.contains(&p) {
                        items.push(p);
                    }
                }
                diff.push_str(d);
                if !d.is_empty() && !d.ends_with('\n') {
                    diff.push('\n');
                }
            }
        }
    }
    // The role restarts the instances whose files changed (all of them when only the secret
    // file did: its content is the same for every instance), and starts the new ones.
    if touched.is_empty() && (secret || restart || start) {
        touched = units.to_vec();
    }
    let verb = if restart { "restart" } else { "start" };
    let mut head: Vec<String> = if restart || start || !touched.is_empty() {
        touched
            .iter()
            .map(|u| format!("pipeline-{u}.service ({verb})"))
            .collect()
    } else {
        vec![]
    };
    if items.is_empty() && head.is_empty() {
        return ("no change".into(), String::new());
    }
    head.extend(items);
    (
        format!("{} to change: {}", head.len(), head.join(", ")),
        diff,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_ssh::ansible::{Recap, TaskChange};

    /// The whole run's recap as previews, for tests.
    fn previews(recap: &Recap, hosts: &[&str], units: &[String]) -> Vec<(String, String, String)> {
        hosts
            .iter()
            .map(|h| {
                let (s, d) = recap
                    .host(h)
                    .map(|r| host_preview(r, units, true))
                    .unwrap_or_default();
                (h.to_string(), s, d)
            })
            .collect()
    }

    fn change(task: &str, diff: Option<&str>) -> TaskChange {
        TaskChange {
            task: task.into(),
            role: Some("pipeline_service".into()),
            diff: diff.map(str::to_string),
        }
    }

    #[test]
    fn an_env_change_restarts_its_instance_and_shows_the_file_diff() {
        let d = "--- /etc/pipeline/app/app-0.env (before)\n+++ /etc/pipeline/app/app-0.env (after)\n@@ -1 +1 @@\n-GREETING=\"a\"\n+GREETING=\"b\"\n";
        let mut recap = Recap::default();
        let mut h = HostRecap::default();
        h.changes.push(change(TASK_FILES, Some(d)));
        h.changes.push(change(TASK_RESTART, None));
        recap.hosts.insert("web1".into(), h);
        recap.hosts.insert("web2".into(), HostRecap::default());
        let units = vec!["app-0".to_string()];
        let p = previews(&recap, &["web1", "web2"], &units);
        assert_eq!(
            p[0].1,
            "2 to change: pipeline-app-0.service (restart), /etc/pipeline/app/app-0.env"
        );
        assert_eq!(p[0].2, d);
        assert_eq!(p[1].1, "no change");
        assert_eq!(p[1].2, "");
    }

    #[test]
    fn a_secret_change_is_named_never_shown_and_restarts_every_instance() {
        let mut h = HostRecap::default();
        // The plugin gives a no_log task no diff; the preview must not invent one.
        h.changes.push(change(TASK_SECRET, None));
        h.changes.push(change(TASK_RESTART, None));
        let units = vec!["app-0".to_string(), "app-1".to_string()];
        let (s, d) = host_preview(&h, &units, true);
        assert_eq!(
            s,
            "3 to change: pipeline-app-0.service (restart), pipeline-app-1.service (restart), secret environment (not shown)"
        );
        assert_eq!(d, "");
        // A sensitive env value: the files are named, never diffed.
        let mut h = HostRecap::default();
        h.changes.push(change(TASK_FILES, None));
        h.changes.push(change(TASK_RESTART, None));
        let (s, d) = host_preview(&h, &units[..1], false);
        assert_eq!(
            s,
            "2 to change: pipeline-app-0.service (restart), unit and env files (not shown: they hold a sensitive value)"
        );
        assert_eq!(d, "");
    }

    #[test]
    fn units_are_read_from_unit_and_env_paths() {
        let units = vec!["app-0".to_string(), "app-1".to_string()];
        assert_eq!(
            unit_of("/etc/systemd/system/pipeline-app-1.service", &units).as_deref(),
            Some("app-1")
        );
        assert_eq!(
            unit_of("/etc/pipeline/app/app-0.env", &units).as_deref(),
            Some("app-0")
        );
        assert_eq!(unit_of("/etc/pipeline/app", &units), None);
        assert_eq!(
            diff_paths("--- /a (before)\n+++ /a (after)\n-x\n+y\n--- before\n--- x\n"),
            ["/a"]
        );
    }
}
