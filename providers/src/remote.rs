//! Reaching inventory hosts from a provider: one transport per work directory, a host's
//! target and pinned keys from its object, and the transport's errors as provider errors.
//!
//! Every provider that works on an inventory host (the ssh `host` and `service`, nginx's
//! `balancer` on a host) goes through here, so they share masters (one per host, kept 30 s by
//! ControlPersist: a plan then an apply connects once) and pin keys the same way.
//!
//! A host object (what a `host` instance records, or the value a resource receives through
//! `on = host.web["web01"]`) carries `name`, `address`, `port`, `user`, `key_file` and
//! `host_key` (the keys pinned on first contact, `[ADDR]:PORT TYPE BASE64` each).

use pipeline_engine::provider::{JsonMap, ProviderCtx, ProviderError};
use pipeline_ssh::transport::{Error, HostKeys, Ssh, Target};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The kind of an inventory host (the ssh provider's `host`), as peers and records name it.
pub const HOST_KIND: &str = "host";

/// The inventory name of an instance from its address: `web01` of `host.web["web01"]`.
pub fn instance_key(addr: &str) -> Option<String> {
    let inner = addr.strip_suffix(']')?;
    inner
        .match_indices("[\"")
        .find_map(|(i, _)| serde_json::from_str::<String>(&inner[i + 1..]).ok())
}

/// How long opening a connection may take: a dead host fails a connect within twice this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// The transport of a work directory, made once per process. Its sockets and private
/// known_hosts files live in `$TMPDIR/pipeline-ssh-<hash of the work directory>` (control
/// socket paths must be short; the work directory may be deep).
pub fn transport(ctx: &ProviderCtx) -> Result<Arc<Ssh>, ProviderError> {
    static ALL: OnceLock<Mutex<HashMap<PathBuf, Arc<Ssh>>>> = OnceLock::new();
    let work = std::fs::canonicalize(&ctx.work_dir).unwrap_or_else(|_| ctx.work_dir.clone());
    let mut all = ALL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(t) = all.get(&work) {
        return Ok(t.clone());
    }
    let ssh = Ssh::new(socket_dir(&work))
        .map_err(|e| ProviderError::new(format!("preparing ssh: {e}")))?
        .with_connect_timeout(CONNECT_TIMEOUT);
    let ssh = Arc::new(ssh);
    all.insert(work, ssh.clone());
    Ok(ssh)
}

/// The directory of the control sockets and pinned known_hosts files of the work directory
/// `work_dir` (`.pipeline/`): what a test removes, with the masters it names, when it ends.
pub fn socket_dir_of(work_dir: &Path) -> PathBuf {
    socket_dir(&std::fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_path_buf()))
}

fn socket_dir(work: &Path) -> PathBuf {
    let hash = Sha256::digest(work.as_os_str().as_encoded_bytes());
    let hex: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    // Not TMPDIR: a long one would break the socket path limit the name is short for.
    PathBuf::from("/tmp").join(format!("pipeline-ssh-{}-{hex}", unsafe { libc::geteuid() }))
}

fn text(o: &JsonMap, k: &str) -> Option<String> {
    o.get(k)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The target of a host object.
pub fn target(host: &JsonMap) -> Result<Target, ProviderError> {
    let name = text(host, "name");
    let address = text(host, "address").ok_or_else(|| {
        ProviderError::invalid_config(format!(
            "{}: the host has no address",
            name.as_deref().unwrap_or("a host")
        ))
        .help("on = one of an inventory group's hosts, e.g. host.web[\"web01\"]")
    })?;
    let mut t = Target::new(name.unwrap_or_else(|| address.clone()), address);
    t.port = host
        .get("port")
        .and_then(|v| v.as_f64())
        .filter(|p| (1.0..=65535.0).contains(p))
        .map(|p| p as u16);
    t.user = text(host, "user");
    t.key_file = text(host, "key_file").map(PathBuf::from);
    Ok(t)
}

/// The keys pinned in a host object (none: first contact).
pub fn pinned(host: &JsonMap) -> Vec<String> {
    host.get("host_key")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// How to accept a changed key of the host instance `host_addr` deliberately.
pub fn accept_help(host_addr: &str) -> String {
    format!(
        "pipeline apply -replace='{host_addr}' records the key the host offers now (check its fingerprint first, e.g. ssh-keyscan on the host's console)"
    )
}

/// The host keys to check a host object against. The help names the host instance by the
/// address the object records (`resource`), else by `host_addr`.
pub fn keys(host: &JsonMap, host_addr: &str) -> HostKeys {
    let addr = text(host, "resource").unwrap_or_else(|| host_addr.to_string());
    HostKeys::pinned(pinned(host)).with_accept_help(accept_help(&addr))
}

/// A transport failure as a provider error, by kind: unreachable and timed-out hosts are
/// `unreachable` (not retried: a dead host fails within 10 s), a refused login `authentication`, a changed key a
/// configuration problem with the way to accept it.
pub fn error(e: Error) -> ProviderError {
    let msg = e.to_string();
    match e {
        Error::Unreachable { .. } | Error::Timeout { .. } => ProviderError::unreachable(msg),
        Error::Authentication { .. } => ProviderError::authentication(msg).help(
            "check the inventory's ansible_user and ansible_ssh_private_key_file, or the ssh agent",
        ),
        Error::HostKeyChanged { .. } | Error::HostKeyUnknown { .. } => {
            ProviderError::invalid_config(msg)
        }
        Error::Remote { .. } | Error::Io { .. } | Error::Invalid(_) => ProviderError::new(msg),
    }
}

/// Connects to a host object and returns the keys to record as its `host_key`: those pinned
/// before, those first seen now, or none when the user's known_hosts vouches for the host.
pub async fn connect(
    ctx: &ProviderCtx,
    host: &JsonMap,
    host_addr: &str,
) -> Result<Vec<String>, ProviderError> {
    let ssh = transport(ctx)?;
    let t = target(host)?;
    let connected = ssh
        .connect(&t, &keys(host, host_addr))
        .await
        .map_err(error)?;
    Ok(connected.host_keys)
}

/// Connects to a host object (its keys checked against the pinned ones) and returns the
/// inventory variables that make ansible reach it the same way: the transport's ssh options
/// (same master, same pinned keys), the connection settings, `become`, and the interpreter and
/// become settings the inventory gave (`/usr/bin/python3` unless it names another). One place
/// for every provider that runs a role; errors name the host.
pub async fn ansible_vars(
    ctx: &ProviderCtx,
    host: &JsonMap,
    host_addr: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, ProviderError> {
    use serde_json::json;
    let ssh = transport(ctx)?;
    let t = target(host)?;
    let keys = keys(host, host_addr);
    let in_host = |e: Error| error(e).map_message(|m| format!("host {}: {m}", t.name));
    ssh.connect(&t, &keys).await.map_err(in_host)?;
    let args = ssh.ssh_args(&t, &keys).await.map_err(in_host)?;
    let mut v = serde_json::Map::new();
    v.insert("ansible_host".into(), json!(t.address));
    if let Some(p) = t.port {
        v.insert("ansible_port".into(), json!(p));
    }
    if let Some(u) = &t.user {
        v.insert("ansible_user".into(), json!(u));
    }
    if let Some(k) = &t.key_file {
        v.insert(
            "ansible_ssh_private_key_file".into(),
            json!(k.display().to_string()),
        );
    }
    // ansible splits `ansible_ssh_common_args` like a POSIX shell: each option one word.
    let common: Vec<String> = args.iter().map(|a| crate::quote::shell(a)).collect();
    v.insert("ansible_ssh_common_args".into(), json!(common.join(" ")));
    v.insert(
        "ansible_python_interpreter".into(),
        json!("/usr/bin/python3"),
    );
    if let Some(vars) = host.get("vars").and_then(|v| v.as_object()) {
        for k in [
            "ansible_python_interpreter",
            "ansible_become_user",
            "ansible_become_method",
        ] {
            if let Some(x) = vars.get(k) {
                v.insert(k.into(), x.clone());
            }
        }
    }
    if host.get("become").and_then(|b| b.as_bool()) == Some(true) {
        v.insert("ansible_become".into(), json!(true));
    }
    Ok(v)
}

/// Writes a run's inventory (0600 in a 0700 directory): JSON, which ansible's yaml inventory
/// plugin reads as data, never as templates. `hosts`: inventory name → its variables.
pub fn write_inventory(
    path: &Path,
    hosts: serde_json::Map<String, serde_json::Value>,
) -> Result<(), ProviderError> {
    if let Some(dir) = path.parent() {
        pipeline_supervise::private::create_dir_all(dir)
            .map_err(|e| ProviderError::new(format!("cannot create {}: {e}", dir.display())))?;
    }
    let text = serde_json::to_vec_pretty(&serde_json::json!({ "all": { "hosts": hosts } }))
        .map_err(|e| ProviderError::new(e.to_string()))?;
    pipeline_supervise::private::write(path, text)
        .map_err(|e| ProviderError::new(format!("cannot write {}: {e}", path.display())))
}

/// A run of a bundled playbook for one resource's hosts, as every remote resource runs one:
/// over the transport's ssh masters (`ssh`), bounded by the step's time left (at most 30 min),
/// ansible's output kept in `log`.
pub fn role_run(
    playbook: &str,
    inventory: &Path,
    ssh: &Ssh,
    step: Option<&pipeline_engine::Step>,
    log: PathBuf,
) -> pipeline_ssh::ansible::Run {
    let mut run = pipeline_ssh::ansible::Run::new(playbook, inventory);
    run.vars
        .insert("pipeline_hosts".into(), serde_json::json!("all"));
    run.timeout = step
        .and_then(pipeline_engine::Step::remaining)
        .unwrap_or(Duration::from_secs(1800))
        .min(Duration::from_secs(1800));
    run.connection = pipeline_ssh::ansible::Connection {
        ssh_args: vec![],
        control_path_dir: Some(ssh.dir().to_path_buf()),
        ..pipeline_ssh::ansible::Connection::default()
    };
    run.log = Some(log);
    run
}

/// Each task a role starts, as a progress line of the step (`HOST: TASK`).
pub fn task_progress(
    step: Option<&pipeline_engine::Step>,
) -> impl Fn(&pipeline_ssh::ansible::TaskEvent) + '_ {
    move |e| {
        if let (Some(s), Some(h), Some(t)) = (step, &e.host, &e.task) {
            if e.event == pipeline_ssh::ansible::EventKind::TaskStart {
                s.progress(format!("{h}: {t}"));
            }
        }
    }
}

/// A failed role run of `addr` as its error: where ansible's output is, and `Unreachable` when
/// a host was.
pub fn role_error(addr: &str, e: pipeline_ssh::ansible::AnsibleError, log: &Path) -> ProviderError {
    let unreachable = matches!(e, pipeline_ssh::ansible::AnsibleError::Unreachable { .. });
    let err = ProviderError::new(format!("{addr}: {e}"))
        .help(format!("ansible's output is in {}", log.display()));
    if unreachable {
        err.with_kind(pipeline_engine::provider::ErrorKind::Unreachable)
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: serde_json::Value) -> JsonMap {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_host_object_gives_its_target_and_pinned_keys() {
        let h = obj(json!({
            "name": "web01", "address": "10.0.0.1", "port": 2222, "user": "deploy",
            "key_file": "/k", "host_key": ["[10.0.0.1]:2222 ssh-ed25519 AAAA"]
        }));
        let t = target(&h).unwrap();
        assert_eq!(
            (
                t.name.as_str(),
                t.address.as_str(),
                t.port,
                t.user.as_deref()
            ),
            ("web01", "10.0.0.1", Some(2222), Some("deploy"))
        );
        assert_eq!(t.key_file, Some(PathBuf::from("/k")));
        assert_eq!(pinned(&h), vec!["[10.0.0.1]:2222 ssh-ed25519 AAAA"]);
        let bare = obj(json!({"name": "x", "address": "h", "port": null}));
        assert_eq!(target(&bare).unwrap().port, None);
        assert!(pinned(&bare).is_empty());
        assert!(target(&obj(json!({"name": "x"}))).is_err());
    }

    #[test]
    fn the_socket_directory_is_short_and_differs_per_work_directory() {
        let a = socket_dir(Path::new(&"/very/deep/".repeat(30)));
        let b = socket_dir(Path::new("/other/.pipeline"));
        assert_ne!(a, b);
        assert!(a.as_os_str().len() < 40, "{a:?}");
    }
}
