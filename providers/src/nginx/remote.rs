//! A balancer on an inventory host (`on = host.lb["lb01"]`, the host's `transport = "ssh"`):
//! the distribution's nginx under its systemd unit, configured through the bundled
//! `pipeline_nginx` role (apt install when missing, `nginx -t` before the swap, reload only on
//! change). The config is rendered by the same renderer as a local balancer (`super::render`,
//! `Layout::Remote`): only the files it names differ (the distribution's pid, log and temp
//! paths) and it listens on the host's address.
//!
//! Everything else goes over the shared transport (`crate::remote`), with the host keys pinned in
//! the host object: `read` (the config's sha256 and `systemctl is-active nginx`), `delete`
//! (stop, disable, the distribution's config back), `describe` (logs as bounded commands over
//! ssh) and the canary actions (the shifted config uploaded, `nginx -t`, swapped in, reloaded;
//! the stack's config kept beside as `nginx.conf.stable` and put back when no candidate is
//! left). No stack value is ever on a remote command line: scripts are fixed text, content goes
//! through `upload` (stdin).

use crate::remote as conn;
use pipeline_engine::provider::{
    Description, Endpoint, Health, HealthState, JsonMap, LogSource, MetricSource, PlanRequest,
    Planned, ProviderCtx, ProviderError, Serves, TargetPreview,
};
use pipeline_engine::value::{Value, ValueMap};
use pipeline_ssh::ansible::{Ansible, AnsibleError, Connection, EventKind, Recap, Run};
use pipeline_ssh::transport::{HostKeys, Remote, Source, Target};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The user nginx's workers run as on a Debian host (owner of /var/lib/nginx).
pub const USER: &str = "www-data";
/// The config the distribution's nginx.service reads.
pub const CONF: &str = "/etc/nginx/nginx.conf";
/// The stack's config while a canary has shifted the host's.
const STABLE: &str = "/etc/nginx/nginx.conf.stable";
/// Which process shifted the host's config: `MACHINE-ID PID` of the control machine.
const OWNER: &str = "/etc/nginx/nginx.conf.canary-owner";
/// A config on its way in (checked with `nginx -t`, then renamed over CONF).
const NEXT: &str = "/etc/nginx/nginx.conf.pipeline-next";
/// The role's install task: in check mode it fails on a host without the package.
const INSTALL_TASK: &str = "nginx is installed";
/// How long a short remote command may take.
const SHORT: Duration = Duration::from_secs(20);
/// How long the role may take (the first run installs nginx through apt).
const ROLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Lines of a log `describe` offers.
const LOG_LINES: &str = "200";
/// Where a remote balancer's static sites are unpacked on the host: one directory per content
/// hash, so a new version is complete before the config that names it is loaded.
pub const SITES: &str = "/var/www/pipeline";

/// A static route's directory, packed here for a remote balancer.
#[derive(Clone, Debug)]
pub struct Site {
    /// The directory as the stack names it (relative to the stack).
    pub dir: String,
    /// The reproducible tarball (`.pipeline/artifacts/<sha256>.tar.gz`).
    pub archive: String,
    pub sha256: String,
    /// Where the role unpacks it on the host: `SITES/<first 16 hex of sha256>`.
    pub dest: String,
}

impl Site {
    pub fn value(&self) -> Value {
        let mut m = ValueMap::new();
        m.insert("dir".into(), Value::str(&self.dir));
        m.insert("archive".into(), Value::str(&self.archive));
        m.insert("sha256".into(), Value::str(&self.sha256));
        m.insert("dest".into(), Value::str(&self.dest));
        Value::Map(m)
    }
}

/// Packs every static route's directory of `c` (relative to the stack): their contents decide
/// where they go on the host, so a changed file is a changed config in the plan.
pub fn pack_sites(ctx: &ProviderCtx, c: &ValueMap) -> Result<Vec<Site>, (Option<String>, String)> {
    let Some(Value::Map(routes)) = c.get("routes").map(|v| v.unmarked().0) else {
        return Ok(vec![]);
    };
    let mut out: Vec<Site> = Vec::new();
    for (path, target) in &routes {
        let Some(dir) = target.get("static").and_then(Value::as_str) else {
            continue;
        };
        if out.iter().any(|s| s.dir == dir) {
            continue;
        }
        let full = ctx.stack_dir.join(dir);
        if !full.is_dir() {
            return Err((
                Some("routes".into()),
                format!(
                    "route {path:?}: the static directory {} is not a directory",
                    full.display()
                ),
            ));
        }
        let (archive, sha) = crate::build::pack(ctx, &full, None).map_err(|e| {
            (
                Some("routes".into()),
                format!("route {path:?}: {}", e.message),
            )
        })?;
        out.push(Site {
            dir: dir.to_string(),
            archive: archive.display().to_string(),
            dest: format!("{SITES}/{}", &sha[..16]),
            sha256: sha,
        });
    }
    Ok(out)
}

/// The role's `pipeline_nginx_sites` from a record's `sites`.
fn sites_var(record: &JsonMap) -> serde_json::Value {
    let sites: Vec<serde_json::Value> = record
        .get("sites")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some(serde_json::json!({
                "archive": s.get("archive")?.as_str()?,
                "dest": s.get("dest")?.as_str()?,
            }))
        })
        .collect();
    serde_json::Value::Array(sites)
}

/// The files a rendered config names, on a Debian host (`Layout::Remote`).
pub fn file(rel: &str) -> &'static str {
    match rel {
        "nginx.pid" => "/run/nginx.pid",
        "logs/error.log" => "/var/log/nginx/error.log",
        "logs/access.log" => "/var/log/nginx/pipeline-access.log",
        "tmp/client_body" => "/var/lib/nginx/body",
        "tmp/proxy" => "/var/lib/nginx/proxy",
        "tmp/fastcgi" => "/var/lib/nginx/fastcgi",
        "tmp/uwsgi" => "/var/lib/nginx/uwsgi",
        "tmp/scgi" => "/var/lib/nginx/scgi",
        _ => "/nonexistent",
    }
}

fn is_ssh_host(v: &Value) -> bool {
    v.get("transport").and_then(Value::as_str) == Some("ssh")
}

/// The host `on` names when it is one reached over ssh: a host object (`host.lb["lb01"]`), or
/// a block of exactly one (`host.lb` of an inventory group with one host).
pub fn on_host(c: &ValueMap) -> Option<ValueMap> {
    match c.get("on").map(|v| v.unmarked().0) {
        Some(Value::Map(m)) if is_ssh_host(&Value::Map(m.clone())) => Some(m),
        Some(Value::Map(m)) if m.len() == 1 => match m.values().next().map(|h| h.unmarked().0) {
            Some(Value::Map(h)) if is_ssh_host(&Value::Map(h.clone())) => Some(h),
            _ => None,
        },
        _ => None,
    }
}

/// `on` is a block of several inventory hosts: the names, for the error (a balancer runs on
/// one host).
pub fn several_hosts(c: &ValueMap) -> Option<Vec<String>> {
    match c.get("on").map(|v| v.unmarked().0) {
        Some(Value::Map(m)) if m.len() > 1 && m.values().all(|h| is_ssh_host(&h.unmarked().0)) => {
            Some(m.keys().cloned().collect())
        }
        _ => None,
    }
}

/// Whether a balancer's config puts it on an inventory host.
pub fn is_remote(c: &ValueMap) -> bool {
    on_host(c).is_some()
}

/// The host object of a record whose balancer runs on an inventory host.
fn record_host(record: &JsonMap) -> Option<&JsonMap> {
    let ssh = |h: &&JsonMap| h.get("transport").and_then(|t| t.as_str()) == Some("ssh");
    let on = record.get("on").and_then(|o| o.as_object())?;
    if ssh(&on) {
        return Some(on);
    }
    // A host block of one host (`on = host.lb`), as `on_host` takes it.
    match on.values().next().and_then(|h| h.as_object()) {
        Some(h) if on.len() == 1 && ssh(&h) => Some(h),
        _ => None,
    }
}

pub fn record_is_remote(record: &JsonMap) -> bool {
    record_host(record).is_some()
}

/// Where a remote balancer listens: its `address` when the stack sets one other than the
/// default loopback (e.g. "0.0.0.0"), else the host's address. None: not remote.
pub fn listen_address(c: &ValueMap) -> Result<Option<String>, (Option<String>, String)> {
    let Some(h) = on_host(c) else {
        return Ok(None);
    };
    let set = c
        .get("address")
        .and_then(Value::as_str)
        .filter(|a| *a != "127.0.0.1");
    if let Some(a) = set {
        return Ok(Some(a.to_string()));
    }
    match h.get("address").and_then(Value::as_str) {
        Some(a) if !a.is_empty() => Ok(Some(a.to_string())),
        _ => Err((
            Some("on".into()),
            "the host `on` names has no address".into(),
        )),
    }
}

/// The address of the host `on` names, when it is one reached over ssh.
pub fn host_address(c: &ValueMap) -> Option<String> {
    on_host(c)?
        .get("address")
        .and_then(Value::as_str)
        .map(str::to_string)
}

pub fn prefixed(mut e: ProviderError, addr: &str) -> ProviderError {
    e.message = format!("{addr}: {}", e.message);
    e
}

/// The plan of a remote balancer: the rendered object; a balancer that moves to another host
/// (or from this machine) is replaced.
pub fn plan(
    _ctx: &ProviderCtx,
    req: &PlanRequest<'_>,
    object: impl Fn(&ValueMap) -> Result<ValueMap, (Option<String>, String)>,
) -> Result<Planned, ProviderError> {
    let o = object(req.config).map_err(|e| {
        let i = super::invalid(e);
        ProviderError::new(i.message).help(i.help)
    })?;
    let host = on_host(req.config);
    let name_of = |h: Option<&JsonMap>| {
        h.map(|h| {
            (
                h.get("name").and_then(|v| v.as_str()).map(str::to_string),
                h.get("address")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
            )
        })
    };
    let now = host.as_ref().map(|h| {
        (
            h.get("name").and_then(Value::as_str).map(str::to_string),
            h.get("address").and_then(Value::as_str).map(str::to_string),
        )
    });
    let moved = req.prior.is_some_and(|p| name_of(record_host(p)) != now);
    Ok(Planned {
        object: o,
        requires_replace: if moved { vec!["on".into()] } else { vec![] },
    })
}

/// A host object's connection: its target, the keys pinned in it, and its inventory name.
struct Host {
    target: Target,
    keys: HostKeys,
    /// Commands run through `sudo -n` (the inventory's `ansible_become`).
    become_: bool,
    obj: JsonMap,
    /// How a changed host key's help names the host instance.
    label: String,
}

impl Host {
    fn of(obj: &JsonMap) -> Result<Host, ProviderError> {
        let target = conn::target(obj)?;
        // Hosts record their instance address (`resource`), which the help names; this is for
        // records made before they did.
        let label = format!("host.<block>[\"{}\"]", target.name);
        let keys = conn::keys(obj, &label);
        let become_ = obj.get("become").and_then(|b| b.as_bool()) == Some(true)
            && obj
                .get("user")
                .and_then(|u| u.as_str())
                .is_some_and(|u| u != "root");
        Ok(Host {
            target,
            keys,
            become_,
            obj: obj.clone(),
            label,
        })
    }

    fn of_record(record: &JsonMap) -> Result<Host, ProviderError> {
        let h = record_host(record)
            .ok_or_else(|| ProviderError::new("the balancer's record names no host (`on`)"))?;
        Host::of(h)
    }

    /// Runs a fixed script (no stack value in it) as root; Ok(stdout) when it exits 0.
    async fn script(&self, ctx: &ProviderCtx, script: &str) -> Result<String, ProviderError> {
        let ssh = conn::transport(ctx)?;
        let argv_sudo = ["sudo", "-n", "sh", "-c", script];
        let argv = ["sh", "-c", script];
        let remote = if self.become_ {
            Remote::Argv(&argv_sudo)
        } else {
            Remote::Argv(&argv)
        };
        let out = ssh
            .run(&self.target, &self.keys, remote, None, SHORT)
            .await
            .map_err(conn::error)?
            .checked()
            .map_err(conn::error)?;
        Ok(out.stdout_lossy())
    }

    async fn upload(&self, ctx: &ProviderCtx, text: &str, path: &str) -> Result<(), ProviderError> {
        let ssh = conn::transport(ctx)?;
        ssh.upload(
            &self.target,
            &self.keys,
            Source::Bytes(text.as_bytes()),
            path,
            0o644,
            SHORT,
        )
        .await
        .map_err(conn::error)
    }
}

/// Canary rewrites of one host's config happen one at a time (in this process).
fn host_lock(address: &str) -> Arc<tokio::sync::Mutex<()>> {
    static ALL: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    ALL.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(address.to_string())
        .or_default()
        .clone()
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// A name ansible takes as one host of an inventory and as a pattern.
fn inventory_name(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        name.to_string()
    } else {
        "balancer-host".to_string()
    }
}

/// Applies the rendered object: the role puts the config on the host (installing nginx when
/// missing) and reloads it only when it changed.
pub async fn apply(
    ctx: &ProviderCtx,
    addr: &str,
    object: ValueMap,
    secret: bool,
    restart: bool,
    step: &pipeline_engine::Step,
) -> Result<JsonMap, ProviderError> {
    let record: JsonMap = object
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect();
    let host = Host::of_record(&record)?;
    let text = record
        .get("config")
        .and_then(|c| c.as_str())
        .ok_or_else(|| ProviderError::new(format!("{addr}: the config could not be rendered")))?
        .to_string();
    step.progress(format!("connecting to {}", host.target.address));
    conn::connect(ctx, &host.obj, &host.label).await?;
    // The stack's config replaces whatever an interrupted canary left shifted.
    host.script(ctx, &format!("rm -f {STABLE} {NEXT} {OWNER}"))
        .await?;
    let progress = step.clone();
    run_role(
        ctx,
        addr,
        &host,
        &text,
        &sites_var(&record),
        secret,
        Some(restart),
        move |task| progress.progress(format!("nginx: {task}")),
    )
    .await?;
    Ok(record)
}

/// The dry run of a planned balancer on its host (`Provider::preview`): the role in `--check
/// --diff`, read back as "1 to change: /etc/nginx/nginx.conf, nginx (reload)" and the config's
/// diff against the host's file. A config rendered from a secret is summarised, never shown.
/// Nothing changes on the host (not even a canary's leftovers, which apply clears).
pub async fn preview(
    ctx: &ProviderCtx,
    addr: &str,
    object: &ValueMap,
    secret: bool,
) -> Result<Vec<TargetPreview>, ProviderError> {
    let Some(h) = on_host(object) else {
        return Ok(vec![]);
    };
    let name = h
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("the balancer's host")
        .to_string();
    let text = match object.get("config") {
        Some(v) if v.is_known() => v.unmarked().0.as_str().map(str::to_string),
        _ => None,
    };
    let Some(text) = text else {
        return Ok(vec![TargetPreview {
            target: name,
            summary: "not previewed: the config is known only after apply".into(),
            diff: String::new(),
        }]);
    };
    // A host first met in this run has no pinned keys yet: nothing to connect to before apply.
    if object.get("on").is_some_and(|v| !v.is_known()) {
        return Ok(vec![TargetPreview {
            target: name,
            summary: "not previewed: the host is first reached by this apply".into(),
            diff: String::new(),
        }]);
    }
    let record: JsonMap = object
        .iter()
        .filter(|(_, v)| v.is_known())
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect();
    let host = Host::of_record(&record)?;
    conn::connect(ctx, &host.obj, &host.label)
        .await
        .map_err(|e| e.map_message(|m| format!("{addr}: host {name}: {m}")))?;
    let recap = run_role(
        ctx,
        addr,
        &host,
        &text,
        &sites_var(&record),
        secret,
        None,
        |_| {},
    )
    .await?;
    let inv = inventory_name(&host.target.name);
    let mut items: Vec<String> = Vec::new();
    let mut diff = String::new();
    if let Some(r) = recap.host(&inv) {
        if r.failures.iter().any(|f| f.task == INSTALL_TASK) {
            items.push("nginx (install), then its config".into());
        }
        for ch in &r.changes {
            let d = ch.diff.as_deref().unwrap_or_default();
            let paths: Vec<&str> = d
                .lines()
                .filter_map(|l| l.strip_prefix("--- ")?.strip_suffix(" (before)"))
                .collect();
            match ch.task.as_str() {
                "Reload nginx" => items.push("nginx (reload)".into()),
                "nginx.conf" if paths.is_empty() => items.push(CONF.into()),
                t if paths.is_empty() => items.push(t.to_string()),
                _ => items.extend(paths.iter().map(|p| p.to_string())),
            }
            diff.push_str(d);
        }
    }
    items.dedup();
    let summary = if items.is_empty() {
        "no change".to_string()
    } else {
        format!("{} to change: {}", items.len(), items.join(", "))
    };
    Ok(vec![TargetPreview {
        target: name,
        summary,
        diff,
    }])
}

/// One run of the `pipeline_nginx` role on the balancer's host with `text` as its nginx.conf
/// (in a secrets file when `secret`). `apply`: None is `--check` (with `--diff` unless
/// `secret`); Some(restart) applies, restarting nginx on a change when `restart` (else reload).
#[allow(clippy::too_many_arguments)]
async fn run_role(
    ctx: &ProviderCtx,
    addr: &str,
    host: &Host,
    text: &str,
    sites: &serde_json::Value,
    secret: bool,
    apply: Option<bool>,
    progress: impl Fn(&str) + Send + Sync,
) -> Result<Recap, ProviderError> {
    let ssh = conn::transport(ctx)?;
    let ansible = Ansible::locate().map_err(|e| {
        ProviderError::new(format!("{addr}: {e}"))
            .help("install ansible-core with scripts/lab-install, or set PIPELINE_ANSIBLE")
    })?;
    let dir = ctx.work_dir.join("ansible");
    let name = inventory_name(&host.target.name);
    let vars = conn::ansible_vars(ctx, &host.obj, &host.label).await?;
    // A per-run inventory (0600, removed after the run).
    let inv = dir.join(format!(
        "balancer-{}-{}.json",
        std::process::id(),
        &sha256_hex(addr)[..12]
    ));
    conn::write_inventory(
        &inv,
        serde_json::Map::from_iter([(name.clone(), vars.into())]),
    )?;
    let mut run = Run::new("playbooks/nginx.yml", &inv);
    run.exclusive = vec![host.target.address.clone()];
    let check = apply.is_none();
    run.check = check;
    // A config rendered from a secret is never shown, also not as a diff.
    run.diff = check && !secret;
    run.vars.insert("pipeline_hosts".into(), name.into());
    run.vars.insert(
        "pipeline_nginx_restart".into(),
        apply.unwrap_or(false).into(),
    );
    run.vars
        .insert("pipeline_nginx_sites".into(), sites.clone());
    // Base64: a config is never read as a Jinja template by ansible. A config rendered from a
    // secret goes in the run's secrets file (0600, removed after the run), never in its vars.
    let conf = base64(text.as_bytes()).into();
    if secret {
        run.secrets.insert("pipeline_nginx_conf_b64".into(), conf);
    } else {
        run.vars.insert("pipeline_nginx_conf_b64".into(), conf);
    }
    run.timeout = ROLE_TIMEOUT;
    run.connection = Connection {
        control_path_dir: Some(ssh.dir().join("a")),
        ..Connection::default()
    };
    let result = ansible
        .run(&run, &dir, |ev| {
            if let (EventKind::TaskStart, Some(task)) = (&ev.event, &ev.task) {
                progress(task);
            }
        })
        .await;
    let _ = std::fs::remove_file(&inv);
    let result = match result {
        // Check mode installs nothing and refreshes no package list: on a host without nginx
        // yet its install is what the dry run can tell.
        Err(AnsibleError::TasksFailed { recap })
            if check
                && recap.unreachable_hosts().is_empty()
                && recap
                    .hosts
                    .values()
                    .all(|h| h.failures.iter().all(|f| f.task == INSTALL_TASK)) =>
        {
            Ok(*recap)
        }
        r => r,
    };
    result.map_err(|e| {
        let msg = format!("{addr}: nginx on {}: {e}", host.target.name);
        match e {
            AnsibleError::Unreachable { .. } | AnsibleError::Timeout { .. } => {
                ProviderError::unreachable(msg)
            }
            _ => ProviderError::new(msg),
        }
    })
}

/// What runs on the host now: None when nginx is not active there; the record with `config`
/// marked as changed when the file's sha256 is not the recorded config's (drift).
pub async fn read(ctx: &ProviderCtx, prior: &JsonMap) -> Result<Option<JsonMap>, ProviderError> {
    let host = Host::of_record(prior)?;
    let out = host
        .script(
            ctx,
            &format!(
                "sha256sum {CONF} 2>/dev/null | cut -c1-64; echo; systemctl is-active nginx || true"
            ),
        )
        .await?;
    let mut lines = out.lines();
    let sha = lines.next().unwrap_or("").trim().to_string();
    let active = out.lines().any(|l| l.trim() == "active");
    if !active || sha.is_empty() {
        return Ok(None);
    }
    let mut now = prior.clone();
    let recorded = prior.get("config").and_then(|c| c.as_str()).unwrap_or("");
    if sha256_hex(recorded) != sha {
        now.insert(
            "config".into(),
            format!("(changed on {}: {CONF} has sha256 {sha})", host.target.name).into(),
        );
    }
    Ok(Some(now))
}

/// Stops nginx on the host, disables it, and puts the distribution's config back.
pub async fn delete(ctx: &ProviderCtx, prior: &JsonMap) -> Result<(), ProviderError> {
    let host = Host::of_record(prior)?;
    host.script(
        ctx,
        &format!(
            "systemctl stop nginx 2>/dev/null || true\n\
             systemctl disable nginx 2>/dev/null || true\n\
             rm -f {STABLE} {NEXT} {OWNER}\n\
             rm -rf {SITES}\n\
             if [ -f {CONF}.dist ]; then mv -f {CONF}.dist {CONF}; fi\n\
             if [ -e /etc/nginx/sites-available/default ] && [ ! -e /etc/nginx/sites-enabled/default ]; then \
             ln -s /etc/nginx/sites-available/default /etc/nginx/sites-enabled/default; fi\n"
        ),
    )
    .await
    .map(|_| ())
}

/// `describe` of a remote balancer: health from here (a TCP connect to its listen address),
/// its endpoints, and its logs as bounded commands over ssh.
pub async fn describe(ctx: &ProviderCtx, record: &JsonMap) -> Result<Description, ProviderError> {
    let host = Host::of_record(record)?;
    let mut d = Description {
        serves: Serves::Proxy,
        ..Default::default()
    };
    let url = record.get("url").and_then(|u| u.as_str()).unwrap_or("");
    let hostport = url.trim_start_matches("http://").to_string();
    if !url.is_empty() {
        d.endpoints.push(Endpoint {
            role: "serve".into(),
            url: url.into(),
            ..Default::default()
        });
        d.endpoints.push(Endpoint {
            role: "health".into(),
            url: format!("tcp://{hostport}"),
            ..Default::default()
        });
    }
    let probe = hostport.clone();
    let reached = crate::blocking(move || {
        use std::net::ToSocketAddrs;
        let addr = probe
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ProviderError::new(format!("{probe} is not an address")))?;
        Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(|_| ()))
    })
    .await;
    d.health = match reached {
        Ok(Ok(())) => Health::new(HealthState::Healthy, None),
        Ok(Err(e)) => Health::new(
            HealthState::Unhealthy,
            Some(format!("{hostport} does not take connections ({e})")),
        ),
        Err(e) => Health::new(HealthState::Unhealthy, Some(e.message)),
    };
    let ssh = conn::transport(ctx)?;
    if let Ok(args) = ssh.ssh_args(&host.target, &host.keys).await {
        let over_ssh = |cmd: String| {
            let mut argv = vec!["ssh".to_string()];
            argv.extend(args.iter().cloned());
            argv.push("--".into());
            argv.push(host.target.address.clone());
            argv.push(if host.become_ {
                format!("sudo -n {cmd}")
            } else {
                cmd
            });
            argv
        };
        d.logs.push(LogSource::Command {
            role: "nginx".into(),
            argv: over_ssh(format!(
                "journalctl -u nginx.service -n {LOG_LINES} --no-pager"
            )),
        });
        d.logs.push(LogSource::Command {
            role: "error".into(),
            argv: over_ssh(format!("tail -n {LOG_LINES} /var/log/nginx/error.log")),
        });
        d.logs.push(LogSource::Command {
            role: "access".into(),
            argv: over_ssh(format!("tail -n {LOG_LINES} {}", file("logs/access.log"))),
        });
        // Followed from here by the canary's judge and the monitor. A follower that vanishes
        // leaves `tail` on the host until its next line fails to go out; `timeout` bounds even
        // a quiet log's (the follower starts it again). `-s 0.2`: tail polls there (the
        // lab's hosts showed no inotify watch), 5 times a second rather than once.
        d.metrics.push(MetricSource::AccessLogStream {
            argv: over_ssh(format!(
                "timeout 600 tail -n0 -F -s 0.2 {}",
                file("logs/access.log")
            )),
            format: pipeline_host::access_log::FORMAT.into(),
        });
        // The host's CPU and memory for the monitor (it appends its own sampling command).
        if let Some(name) = host.obj.get("name").and_then(|n| n.as_str()) {
            let mut argv = vec!["ssh".to_string()];
            argv.extend(args.iter().cloned());
            argv.extend(["--".to_string(), host.target.address.clone()]);
            d.metrics.push(MetricSource::RemoteUsage {
                host: name.to_string(),
                argv,
                units: vec!["nginx.service".into()],
            });
        }
    }
    Ok(d)
}

/// The host's config, and the stack's when a canary shifted it (kept as STABLE).
async fn current(
    ctx: &ProviderCtx,
    host: &Host,
) -> Result<(String, Option<String>), ProviderError> {
    let out = host
        .script(
            ctx,
            &format!("cat {CONF}; if [ -f {STABLE} ]; then printf '\\0'; cat {STABLE}; fi"),
        )
        .await?;
    Ok(match out.split_once('\0') {
        Some((conf, stable)) => (conf.to_string(), Some(stable.to_string())),
        None => (out, None),
    })
}

/// Checks `text` with the host's nginx, keeps the stack's config as STABLE (once), swaps the
/// new one in and reloads.
async fn install(ctx: &ProviderCtx, host: &Host, text: &str) -> Result<(), ProviderError> {
    host.upload(ctx, text, NEXT).await?;
    host.script(
        ctx,
        &format!(
            "set -e\nif ! nginx -t -q -c {NEXT}; then rm -f {NEXT}; exit 1; fi\n\
             [ -f {STABLE} ] || cp -p {CONF} {STABLE}\nmv -f {NEXT} {CONF}\nsystemctl reload nginx\n"
        ),
    )
    .await
    .map(|_| ())
}

/// Puts the stack's config back (no candidate left) and reloads.
async fn restore(ctx: &ProviderCtx, host: &Host) -> Result<(), ProviderError> {
    host.script(
        ctx,
        &format!(
            "set -e\nnginx -t -q -c {STABLE}\nmv -f {STABLE} {CONF}\nrm -f {OWNER}\nsystemctl reload nginx\n"
        ),
    )
    .await
    .map(|_| ())
}

/// `canary_weights` on a remote balancer (see `canary::shift`).
pub async fn canary_shift(
    ctx: &ProviderCtx,
    record: &JsonMap,
    baseline: &[String],
    candidate: &[String],
    percent: u32,
) -> Result<usize, ProviderError> {
    for c in candidate {
        pipeline_engine::format::Format::HostPort
            .check_str(c)
            .map_err(|e| {
                ProviderError::invalid_config(format!(
                    "candidate address {c:?} is not ADDRESS:PORT ({e})"
                ))
            })?;
    }
    let host = Host::of_record(record)?;
    if percent == 0 || candidate.is_empty() {
        canary_remove(ctx, record, candidate).await?;
        let (conf, _) = current(ctx, &host).await?;
        return Ok(super::canary::upstreams_routing_to(&conf, baseline));
    }
    let lock = host_lock(&host.target.address);
    let _held = lock.lock().await;
    let (conf, stable) = current(ctx, &host).await?;
    let source = stable.unwrap_or(conf);
    let routes = super::canary::upstreams_routing_to(&source, baseline);
    if routes == 0 {
        return Ok(0);
    }
    let shifted = super::canary::shifted_config(&source, baseline, candidate, percent);
    // Who shifted it, so the sweep can put the stack's config back when that process is gone.
    if let Some(id) = machine_id() {
        host.upload(ctx, &format!("{id} {}\n", std::process::id()), OWNER)
            .await?;
    }
    install(ctx, &host, &shifted).await?;
    Ok(routes)
}

/// `canary_clear` on a remote balancer (see `canary::remove`).
pub async fn canary_remove(
    ctx: &ProviderCtx,
    record: &JsonMap,
    candidates: &[String],
) -> Result<bool, ProviderError> {
    let host = Host::of_record(record)?;
    let lock = host_lock(&host.target.address);
    let _held = lock.lock().await;
    let (conf, stable) = current(ctx, &host).await?;
    if stable.is_none() {
        return Ok(false);
    }
    let mine = |l: &str| {
        l.ends_with("# canary")
            && (candidates.is_empty()
                || super::canary::server_addr(l).is_some_and(|a| candidates.iter().any(|c| c == a)))
    };
    if !conf.lines().any(mine) && conf.lines().any(|l| l.ends_with("# canary")) {
        return Ok(false);
    }
    let left: Vec<&str> = conf.lines().filter(|l| !mine(l)).collect();
    if left.iter().any(|l| l.ends_with("# canary")) {
        let mut s = left.join("\n");
        s.push('\n');
        install(ctx, &host, &s).await?;
    } else {
        restore(ctx, &host).await?;
    }
    Ok(true)
}

/// This machine's id (`/etc/machine-id`): a canary owner's pid means something only here.
fn machine_id() -> Option<String> {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Remote balancers still shifted by a canary whose process (on this machine) is gone: the
/// stack's config goes back (the local `canary::restore_orphaned`, over ssh). A host that does
/// not answer is left as it is (the next sweep tries again). One line per balancer put back.
pub async fn restore_orphaned(
    ctx: &ProviderCtx,
    owned: &[(&str, &pipeline_engine::state::ResourceState)],
) -> Vec<String> {
    let Some(me) = machine_id() else {
        return Vec::new();
    };
    let mut restored = Vec::new();
    for (addr, rs) in owned {
        let Ok(host) = Host::of_record(&rs.attrs) else {
            continue;
        };
        let lock = host_lock(&host.target.address);
        let _held = lock.lock().await;
        let Ok(owner) = host
            .script(
                ctx,
                &format!("if [ -f {STABLE} ] && [ -f {OWNER} ]; then cat {OWNER}; fi"),
            )
            .await
        else {
            continue;
        };
        let mut it = owner.split_whitespace();
        let (Some(id), Some(pid)) = (it.next(), it.next().and_then(|p| p.parse::<i32>().ok()))
        else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
        if id != me || alive {
            continue;
        }
        if restore(ctx, &host).await.is_ok() {
            restored.push(format!(
                "{addr}: the stack's config is back on {} (a canary that shifted its traffic was killed)",
                host.target.name
            ));
        }
    }
    restored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"{{ x }}\n$a;"), "e3sgeCB9fQokYTs=");
    }

    #[test]
    fn inventory_names_are_one_host_and_one_pattern() {
        assert_eq!(inventory_name("lb01"), "lb01");
        assert_eq!(inventory_name("a,b:*"), "balancer-host");
    }
}
