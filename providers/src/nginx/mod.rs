//! The `nginx` provider: `balancer`, an nginx run by pipeline under `.pipeline/run/`, its config
//! rendered from the stack (handlebars), checked with `nginx -t` before use, and reloaded only
//! when the rendered config really changes. Upstreams point at service slots, whose addresses
//! never change through updates, so rollouts need no reload at all.

mod canary;
mod describe;
mod remote;

use async_trait::async_trait;
use pipeline_engine::format::Format;
use pipeline_engine::provider::{
    ActionOutput, ActionSchema, ApplyRequest, AttrSchema, Invalid, JsonMap, KindSchema,
    PlanRequest, Planned, Provider, ProviderCtx, ProviderError, Type,
};
use pipeline_engine::value::{Value, ValueMap};
use pipeline_host::nginx::nginx_bin;
use pipeline_supervise::{private, HealthCheck, ReplicaSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The provider; `provider "nginx" { binary = "/usr/sbin/nginx" }` configures an instance that
/// runs that executable.
#[derive(Default)]
pub struct Nginx {
    /// The nginx executable the block names; None: `PIPELINE_NGINX`, else PATH (see `nginx_bin`).
    binary: Option<PathBuf>,
}

impl Nginx {
    /// The executable this instance runs: the configured one, else the one found as before.
    fn bin(&self) -> Option<PathBuf> {
        self.binary.clone().or_else(nginx_bin)
    }
    fn missing(&self) -> String {
        match &self.binary {
            Some(b) => format!("the nginx `binary` {} is not there any more", b.display()),
            None => "nginx is not installed (no nginx on PATH)".into(),
        }
    }
}

/// Where apply records which executable runs a balancer, so later `nginx -t` checks of the same
/// prefix (the canary's shifted configs) use it too.
use pipeline_host::nginx::{check_with, BINARY_RECORD};

/// The `binary` setting of a `provider "nginx"` block: an absolute path to an executable file.
fn configured_binary(config: &ValueMap) -> Result<Option<PathBuf>, Invalid> {
    pipeline_host::settings::executable(config, "nginx", "/usr/sbin/nginx")
}

const TEMPLATE: &str = include_str!("nginx.conf.hbs");

fn schema() -> KindSchema {
    KindSchema {
        kind: "balancer",
        attrs: vec![
            // Every value below is rendered into nginx.conf: each declares what it may be.
            AttrSchema::required("listen", Type::Number).format(Format::Port),
            // A host object (`on = host.lb["lb01"]`, transport "ssh"): the distribution's nginx on
            // that host, configured through the `pipeline_nginx` role (see `remote`). Absent or a
            // local host: nginx on this machine under `.pipeline/run/`.
            AttrSchema::optional("on", Type::Any),
            AttrSchema::optional("address", Type::String)
                .default(Value::str("127.0.0.1"))
                .format(Format::Address),
            // path = service.x | [service.x, ...] | { upstreams = [{ service = service.x, weight = 9 }, ...] } | { static = "dir" }
            AttrSchema::required("routes", Type::Any)
                .format_at("{}", Format::UrlPath)
                .format_at("*.static", Format::FilePath)
                .format_at("*.upstreams.*.weight", Format::Count),
            AttrSchema::optional("client_max_body_size", Type::String)
                .default(Value::str("1m"))
                .format(Format::Size),
            AttrSchema::optional("max_fails", Type::Number)
                .default(Value::Number(1.0))
                .format(Format::Count),
            AttrSchema::optional("fail_timeout", Type::String)
                .default(Value::str("2s"))
                .format(Format::Duration),
            AttrSchema::optional("keepalive_timeout", Type::String)
                .default(Value::str("65s"))
                .format(Format::Duration),
            // Retry a POST on another replica when the first one failed mid-request. Safe only when
            // requests are idempotent in effect (a preview renderer is; a payment is not).
            AttrSchema::optional("retry_non_idempotent", Type::Bool).default(Value::Bool(false)),
            AttrSchema::computed("url", Type::String).derived_from(&["listen", "address", "on"]),
            // Rendered from every input: secret when any input is.
            AttrSchema::computed("config", Type::String),
            AttrSchema::computed("access_log", Type::String).derived_from(&[]),
            // On an inventory host: the static routes' directories as shipped there,
            // [{dir, archive, sha256, dest}] (`dest` is named by the content's hash).
            AttrSchema::computed("sites", Type::Any).derived_from(&["routes", "on"]),
        ],
        instances_attr: None,
    }
}

fn prefix(ctx: &ProviderCtx, addr: &str) -> PathBuf {
    pipeline_host::names::run_dir(&ctx.work_dir, addr)
}

/// `host:port` of every backend a route names, with its weight.
fn backends(v: &Value) -> Result<Option<Vec<(String, u32)>>, String> {
    fn one(inst: &Value, weight: u32, out: &mut Vec<(String, u32)>) -> Result<bool, String> {
        match inst {
            Value::Unknown => Ok(false),
            Value::List(l) => {
                for i in l {
                    if !one(i, weight, out)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            // A remote service: every instance's url.
            Value::Map(m) if m.contains_key("instances") => match m.get("instances") {
                Some(l @ Value::List(_)) => one(l, weight, out),
                Some(Value::Unknown) => Ok(false),
                Some(Value::Sensitive(v)) => one(v, weight, out),
                _ => Err("a route target's `instances` must be a list of { url = \"http://ADDRESS:PORT\" }".into()),
            },
            Value::Map(m) => match m.get("url") {
                Some(Value::String(u)) => {
                    let hp = u
                        .trim_start_matches("http://")
                        .trim_end_matches('/')
                        .to_string();
                    Format::HostPort.check_str(&hp).map_err(|e| {
                        format!(
                            "a route target's url {} is not http://ADDRESS:PORT ({e})",
                            pipeline_engine::format::show_value(u, false)
                        )
                    })?;
                    out.push((hp, weight));
                    Ok(true)
                }
                Some(Value::Unknown) => Ok(false),
                _ => Err("a route target must be a service (its instances have a `url`, or it has `instances` that do)".into()),
            },
            Value::Sensitive(v) => one(v, weight, out),
            other => Err(format!(
                "a route target must be a service, found {}",
                other.type_name()
            )),
        }
    }
    let mut out = Vec::new();
    let known = match v {
        Value::Map(m) if m.contains_key("upstreams") => {
            let Some(Value::List(ups)) = m.get("upstreams") else {
                return Err("`upstreams` must be a list of { service = ..., weight = N }".into());
            };
            let mut known = true;
            for u in ups {
                let w = u.get("weight").and_then(Value::as_f64).unwrap_or(1.0);
                if Format::Count.check(&Value::Number(w)).is_err() {
                    return Err(format!(
                        "weight {w} must be a whole number from 0 to 1000000"
                    ));
                }
                let Some(svc) = u.get("service") else {
                    return Err("each upstream needs `service = service.NAME`".into());
                };
                known &= one(svc, w as u32, &mut out)?;
            }
            known
        }
        other => one(other, 1, &mut out)?,
    };
    Ok(known.then_some(out))
}

/// Where the files a rendered nginx.conf names live.
#[derive(Clone, Debug)]
enum Layout<'a> {
    /// nginx run by pipeline on this machine, everything under its prefix (`.pipeline/run/..`).
    Local(&'a Path),
    /// The distribution's nginx on an inventory host (under its systemd unit, which expects
    /// `/run/nginx.pid`), listening on `address`; `sites` maps a static route's directory (as
    /// the stack names it) to where its shipped copy is on the host (None: not packed yet, a
    /// placeholder is rendered).
    Remote {
        address: &'a str,
        sites: Option<&'a BTreeMap<String, String>>,
    },
}

impl Layout<'_> {
    fn file(&self, rel: &str) -> String {
        match self {
            Layout::Local(prefix) => format!("{}/{rel}", prefix.display()),
            Layout::Remote { .. } => remote::file(rel).to_string(),
        }
    }
}

/// Render nginx.conf for `config`; None while something is known only after apply.
/// With `placeholders`, backends known only after apply are rendered as a stand-in address so the
/// rest of the config can still be checked while planning.
fn render(
    c: &ValueMap,
    layout: &Layout,
    base: &Path,
    placeholders: bool,
) -> Result<Option<String>, (Option<String>, String)> {
    let Some(Value::Map(routes)) = c.get("routes").map(|v| v.unmarked().0) else {
        return Err((
            Some("routes".into()),
            "routes must be an object: { \"/\" = service.web, ... }".into(),
        ));
    };
    // Every value goes in as one quoted nginx token (quote::nginx), checked against its format
    // first: the engine checked the stack's values at plan time; these are the values assembled
    // here (paths joined to the prefix, backends taken from other resources).
    let routes_err = |m: String| (Some("routes".to_string()), m);
    let q = |attr: &str, s: &str| crate::quote::nginx(s).map_err(|e| (Some(attr.to_string()), e));
    let mut locations = Vec::new();
    let mut upstreams = Vec::new();
    for (i, (path, target)) in routes.iter().enumerate() {
        Format::UrlPath.check_str(path).map_err(|e| {
            routes_err(format!(
                "route {} is not a URL path ({e})",
                pipeline_engine::format::show_value(path, false)
            ))
        })?;
        let loc = q("routes", path)?;
        if let Some(dir) = target.get("static").and_then(Value::as_str) {
            Format::FilePath.check_str(dir).map_err(|e| {
                routes_err(format!(
                    "route {path:?}: the static directory is not a usable path ({e})"
                ))
            })?;
            let root = match layout {
                Layout::Local(_) => base.join(dir).display().to_string(),
                // A copy shipped to the host (see `remote::SITES`).
                Layout::Remote { sites, .. } => sites
                    .and_then(|s| s.get(dir).cloned())
                    .unwrap_or_else(|| format!("{}/unknown", remote::SITES)),
            };
            let root = format!("{}/", root.trim_end_matches('/'));
            locations.push(serde_json::json!({ "path": loc, "static": q("routes", &root)? }));
            continue;
        }
        let servers = match backends(target)
            .map_err(|e| (Some("routes".into()), format!("route {path:?}: {e}")))?
        {
            Some(servers) => servers,
            None if placeholders => vec![("127.0.0.1:9".to_string(), 1)],
            None => return Ok(None),
        };
        let name = format!("route_{i}");
        let servers: Vec<_> = servers
            .iter()
            .map(|(hp, w)| {
                q("routes", hp)
                    .map(|a| serde_json::json!({ "addr": a, "weight": w, "down": *w == 0 }))
            })
            .collect::<Result<_, _>>()?;
        let empty = servers.is_empty() || servers.iter().all(|s| s["down"] == true);
        locations.push(serde_json::json!({ "path": loc, "upstream": name, "empty": empty }));
        if !empty {
            upstreams.push(serde_json::json!({ "name": name, "servers": servers }));
        }
    }
    let get = |k: &str| c.get(k).map(|v| v.unmarked().0);
    // A setting's text, checked against its format and quoted.
    let setting = |k: &str, f: Format, default: &str| -> Result<String, (Option<String>, String)> {
        let v = get(k)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| default.to_string());
        f.check_str(&v).map_err(|e| {
            (
                Some(k.to_string()),
                format!(
                    "`{k}` {} is not {} ({e})",
                    pipeline_engine::format::show_value(&v, false),
                    f.noun()
                ),
            )
        })?;
        q(k, &v)
    };
    let address = match layout {
        Layout::Local(_) => setting("address", Format::Address, "127.0.0.1")?,
        Layout::Remote { address, .. } => {
            Format::Address.check_str(address).map_err(|e| {
                (
                    Some("on".to_string()),
                    format!(
                        "the host's address {} cannot be listened on ({e})",
                        pipeline_engine::format::show_value(address, false)
                    ),
                )
            })?;
            q("on", address)?
        }
    };
    let listen = get("listen").and_then(|v| v.as_f64()).unwrap_or(0.0) as u64;
    let listen = if address.contains(':') {
        format!("[{address}]:{listen}")
    } else {
        format!("{address}:{listen}")
    };
    let file = |rel: &str| crate::quote::nginx(&layout.file(rel)).map_err(|e| (None, e));
    let vars = serde_json::json!({
        "user": match layout {
            Layout::Local(_) => None,
            Layout::Remote { .. } => Some(remote::USER),
        },
        "pid": file("nginx.pid")?,
        "error_log": file("logs/error.log")?,
        "access_log": file("logs/access.log")?,
        "client_body_temp": file("tmp/client_body")?,
        "proxy_temp": file("tmp/proxy")?,
        "fastcgi_temp": file("tmp/fastcgi")?,
        "uwsgi_temp": file("tmp/uwsgi")?,
        "scgi_temp": file("tmp/scgi")?,
        "listen": q("listen", &listen)?,
        "client_max_body_size": setting("client_max_body_size", Format::Size, "1m")?,
        "keepalive_timeout": setting("keepalive_timeout", Format::Duration, "65s")?,
        "max_fails": get("max_fails").and_then(|v| v.as_f64()).unwrap_or(1.0) as u64,
        "fail_timeout": setting("fail_timeout", Format::Duration, "2s")?,
        "non_idempotent": get("retry_non_idempotent").and_then(|v| v.as_bool()).unwrap_or(false),
        "upstreams": upstreams,
        "locations": locations,
    });
    let mut hb = handlebars::Handlebars::new();
    hb.register_escape_fn(handlebars::no_escape);
    hb.render_template(TEMPLATE, &vars)
        .map(Some)
        .map_err(|e| (None, format!("cannot render the nginx config: {e}")))
}

fn port_free(address: &str, port: u16) -> bool {
    std::net::TcpListener::bind((address, port)).is_ok()
}

fn planned_object(
    ctx: &ProviderCtx,
    addr: &str,
    c: &ValueMap,
) -> Result<ValueMap, (Option<String>, String)> {
    let pre = prefix(ctx, addr);
    let mut o = c.clone();
    // A block of one inventory host is that host: the record names the host itself.
    if let Some(h) = remote::on_host(c) {
        o.insert("on".into(), Value::Map(h));
    }
    let remote_addr = remote::listen_address(c)?;
    let listen = c.get("listen").and_then(Value::as_f64).unwrap_or(0.0) as u64;
    // On an inventory host the url is the host's address (whatever `address` nginx listens on).
    let url = match remote::host_address(c) {
        Some(h) if h.contains(':') => format!("http://[{h}]:{listen}"),
        Some(h) => format!("http://{h}:{listen}"),
        None => format!(
            "http://{}:{listen}",
            c.get("address")
                .and_then(Value::as_str)
                .unwrap_or("127.0.0.1")
        ),
    };
    o.insert("url".into(), Value::String(url));
    // A remote balancer's static routes: each directory packed here, shipped by the role.
    let sites = match &remote_addr {
        Some(_) => remote::pack_sites(ctx, c)?,
        None => vec![],
    };
    let site_roots: BTreeMap<String, String> = sites
        .iter()
        .map(|s| (s.dir.clone(), s.dest.clone()))
        .collect();
    if remote_addr.is_some() {
        o.insert(
            "sites".into(),
            Value::List(sites.iter().map(remote::Site::value).collect()),
        );
    }
    let (layout, access_log) = match &remote_addr {
        Some(a) => (
            Layout::Remote {
                address: a,
                sites: Some(&site_roots),
            },
            remote::file("logs/access.log").to_string(),
        ),
        None => (
            Layout::Local(&pre),
            pre.join("logs/access.log").display().to_string(),
        ),
    };
    o.insert("access_log".into(), Value::String(access_log));
    o.insert(
        "config".into(),
        render(c, &layout, &ctx.stack_dir, false)?.map_or(Value::Unknown, Value::String),
    );
    Ok(o)
}

fn invalid((attr, message): (Option<String>, String)) -> Invalid {
    let help = match attr.as_deref() {
        None if message.contains("not installed") => "install nginx (apt-get install nginx-light), or put it on PATH".to_string(),
        Some("client_max_body_size") => "a size like \"1m\", \"512k\" or \"10m\"".to_string(),
        Some("keepalive_timeout") | Some("fail_timeout") => "a duration like \"65s\" or \"500ms\"".to_string(),
        Some("on") => "on = one host of an inventory group, e.g. host.lb[\"lb01\"], whose address nginx can listen on".to_string(),
        Some("routes") => "routes = { \"/\" = service.web, \"/static/\" = { static = \"site\" } }; weights: { upstreams = [{ service = service.a, weight = 9 }] }".to_string(),
        _ => "fix the value; the rendered config is shown by `pipeline plan` as the `config` attribute".to_string(),
    };
    Invalid {
        attr,
        message,
        help,
    }
}

#[async_trait]
impl Provider for Nginx {
    fn name(&self) -> &'static str {
        "nginx"
    }

    async fn sweep(
        &self,
        ctx: &ProviderCtx,
        owned: &[(&str, &pipeline_engine::state::ResourceState)],
    ) -> Result<Vec<String>, ProviderError> {
        // First the traffic a killed canary left shifted goes back to the stack's servers.
        let work = ctx.work_dir.clone();
        let mut report: Vec<String> =
            crate::blocking(move || canary::restore_orphaned(&work).map_err(ProviderError::new))
                .await?
                .iter()
                .map(|prefix| {
                    format!(
                "{}: the stack's config is back (a canary that shifted its traffic was killed)",
                prefix
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )
                })
                .collect();
        report.extend(
            crate::sweep_run_dirs(ctx, owned, |d| d.join("conf/nginx.conf").exists()).await?,
        );
        let remote: Vec<_> = owned
            .iter()
            .filter(|(_, rs)| remote::record_is_remote(&rs.attrs))
            .copied()
            .collect();
        report.extend(remote::restore_orphaned(ctx, &remote).await);
        Ok(report)
    }

    fn kinds(&self) -> Vec<KindSchema> {
        vec![schema()]
    }

    fn validate(&self, _kind: &str, c: &ValueMap) -> Vec<Invalid> {
        if let Some(names) = remote::several_hosts(c) {
            return vec![Invalid::new(
                Some("on"),
                format!(
                    "a balancer runs on one host, and `on` names {}: {}",
                    names.len(),
                    names.join(", ")
                ),
                format!("name one, e.g. on = host.NAME[\"{}\"], or keep one host in the inventory group", names[0]),
            )];
        }
        // `listen`, sizes, durations, route paths: the schema's formats, checked by the engine.
        // Rendered with a placeholder prefix: only the values are checked here.
        let pre = Path::new("/nonexistent-pipeline-prefix");
        let remote_addr = match remote::listen_address(c) {
            Ok(a) => a,
            Err(e) => return vec![invalid(e)],
        };
        if let Some(address) = remote_addr {
            // The host's nginx checks the config (`nginx -t`) before it takes it; here the
            // values are, and this machine's nginx checks the syntax when there is one.
            let layout = Layout::Remote {
                address: &address,
                sites: None,
            };
            return match render(c, &layout, Path::new("/"), true) {
                Err(e) => vec![invalid(e)],
                Ok(None) => vec![],
                Ok(Some(_)) => {
                    let local = render(c, &Layout::Local(pre), Path::new("/"), true);
                    match (self.bin(), local) {
                        (Some(bin), Ok(Some(text))) => check_with(&bin, &text, pre)
                            .err()
                            .map(invalid)
                            .into_iter()
                            .collect(),
                        _ => vec![],
                    }
                }
            };
        }
        let Some(bin) = self.bin() else {
            return vec![invalid((None, self.missing()))];
        };
        match render(c, &Layout::Local(pre), Path::new("/"), true) {
            Err(e) => vec![invalid(e)],
            Ok(None) => vec![],
            Ok(Some(text)) => check_with(&bin, &text, pre)
                .err()
                .map(invalid)
                .into_iter()
                .collect(),
        }
    }

    fn config_schema(&self) -> Vec<AttrSchema> {
        vec![AttrSchema::optional("binary", Type::String).format(Format::FilePath)]
    }

    fn configure(
        &self,
        config: &ValueMap,
    ) -> Result<Option<std::sync::Arc<dyn Provider>>, Vec<Invalid>> {
        match configured_binary(config).map_err(|e| vec![e])? {
            None => Ok(None),
            Some(binary) => Ok(Some(std::sync::Arc::new(Nginx {
                binary: Some(binary),
            }))),
        }
    }

    fn plan(&self, ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
        if remote::is_remote(req.config) {
            return remote::plan(ctx, req, |c| planned_object(ctx, req.addr, c));
        }
        // nginx.conf names files under the working directory; nginx cannot carry every path.
        let pre = prefix(ctx, req.addr);
        crate::quote::nginx(&pre.display().to_string()).map_err(|e| {
            ProviderError::new(format!(
                "the working directory {} cannot be named in an nginx config: {e}",
                ctx.work_dir.display()
            ))
            .help("run pipeline from a directory whose path has no `$` (or set --state-dir to one)")
        })?;
        let o = planned_object(ctx, req.addr, req.config).map_err(|e| {
            let i = invalid(e);
            ProviderError::new(i.message).help(i.help)
        })?;
        let address = req
            .config
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or("127.0.0.1");
        let listen = req
            .config
            .get("listen")
            .and_then(Value::as_f64)
            .unwrap_or(0.0) as u16;
        // A balancer that ran on an inventory host moves here: a new nginx.
        let was_remote = req.prior.is_some_and(remote::record_is_remote);
        let ours = !was_remote
            && req
                .prior
                .is_some_and(|p| p.get("listen").and_then(|v| v.as_u64()) == Some(listen as u64));
        if !ours && !port_free(address, listen) {
            return Err(ProviderError::new(format!("port {listen} on {address} is already in use by another program"))
                .help(format!("choose another `listen` port, or stop what listens there (see `ss -ltnp 'sport = :{listen}'`)")));
        }
        // A new listen port needs a new nginx; the rest is a reload.
        Ok(Planned {
            object: o,
            requires_replace: if was_remote {
                vec!["on".into()]
            } else if req.prior.is_some() && !ours {
                vec!["listen".into()]
            } else {
                vec![]
            },
        })
    }

    async fn read(
        &self,
        ctx: &ProviderCtx,
        _kind: &str,
        addr: &str,
        prior: &JsonMap,
    ) -> Result<Option<JsonMap>, ProviderError> {
        if remote::record_is_remote(prior) {
            return remote::read(ctx, prior).await;
        }
        let pre = prefix(ctx, addr);
        // nginx renames its processes, so "alive" is: supervised, and the port answers.
        let listen = prior.get("listen").and_then(|v| v.as_u64()).unwrap_or(0) as u16;
        let address = prior
            .get("address")
            .and_then(|v| v.as_str())
            .unwrap_or("127.0.0.1");
        let up = pipeline_supervise::status(&pre).is_some_and(|s| s.supervisor_alive)
            && pipeline_supervise::check_once(address, listen, &HealthCheck::tcp()).is_ok();
        if !up {
            return Ok(None);
        }
        let mut now = prior.clone();
        if let Ok(text) = std::fs::read_to_string(pre.join("conf/nginx.conf")) {
            now.insert("config".into(), text.into());
        }
        Ok(Some(now))
    }

    /// A balancer on an inventory host: the role's `--check --diff` there (nginx.conf's diff);
    /// a local balancer has nothing to preview beyond the plan.
    async fn preview(
        &self,
        ctx: &ProviderCtx,
        req: &PlanRequest<'_>,
    ) -> Result<Vec<pipeline_engine::provider::TargetPreview>, ProviderError> {
        if !remote::is_remote(req.config) {
            return Ok(Vec::new());
        }
        // As apply decides: a secret among the values rendered makes the config one.
        let secret = req
            .config
            .iter()
            .any(|(k, v)| k != "on" && v.is_sensitive());
        remote::preview(ctx, req.addr, req.config, secret).await
    }

    async fn apply(
        &self,
        ctx: &ProviderCtx,
        req: &ApplyRequest<'_>,
        step: &pipeline_engine::Step,
    ) -> Result<JsonMap, ProviderError> {
        if remote::is_remote(req.config) {
            let o = planned_object(ctx, req.addr, req.config).map_err(|e| {
                let i = invalid(e);
                ProviderError::new(i.message).help(i.help)
            })?;
            // A secret among the values rendered makes the config one (the host's own `vars`
            // are not rendered).
            let secret = req
                .config
                .iter()
                .any(|(k, v)| k != "on" && v.is_sensitive());
            // nginx cannot move its listening sockets by a reload (a wildcard socket of the
            // old config holds the port the new one binds on an address): a new balancer (the
            // distribution's nginx may be running its default site) or a changed `listen` or
            // `address` restarts it.
            let sockets = |m: &JsonMap| (m.get("listen").cloned(), m.get("address").cloned());
            let restart = req.prior.is_none_or(|p| {
                let now: JsonMap = o.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
                sockets(p) != sockets(&now)
            });
            return remote::apply(ctx, req.addr, o, secret, restart, step).await;
        }
        let (ctx, addr, config, prior, step) = (
            ctx.clone(),
            req.addr.to_string(),
            req.config.clone(),
            req.prior.cloned(),
            step.clone(),
        );
        let (bin, missing) = (self.bin(), self.missing());
        crate::blocking(move || {
            let bin = bin.ok_or_else(|| {
                ProviderError::new(missing).help("install nginx (apt-get install nginx-light)")
            })?;
            apply_blocking(&ctx, &addr, &config, prior.as_ref(), &bin, &step)
        })
        .await
    }

    async fn delete(
        &self,
        ctx: &ProviderCtx,
        _kind: &str,
        addr: &str,
        prior: &JsonMap,
        _step: &pipeline_engine::Step,
    ) -> Result<(), ProviderError> {
        if remote::record_is_remote(prior) {
            return remote::delete(ctx, prior).await;
        }
        let pre = prefix(ctx, addr);
        crate::blocking(move || {
            if pre.exists() {
                pipeline_supervise::stop(&pre, Duration::from_secs(10))
                    .map_err(|e| ProviderError::new(format!("cannot stop nginx: {e}")))?;
                std::fs::remove_dir_all(&pre).map_err(|e| {
                    ProviderError::new(format!("cannot remove {}: {e}", pre.display()))
                })?;
            }
            Ok(())
        })
        .await
    }

    async fn describe(
        &self,
        ctx: &ProviderCtx,
        _kind: &str,
        addr: &str,
        record: &JsonMap,
    ) -> Result<pipeline_engine::provider::Description, ProviderError> {
        if remote::record_is_remote(record) {
            return remote::describe(ctx, record).await;
        }
        let (work, pre, r) = (ctx.work_dir.clone(), prefix(ctx, addr), record.clone());
        crate::blocking(move || Ok(describe::balancer(&work, &pre, &r))).await
    }

    fn actions(&self, kind: &str) -> Vec<ActionSchema> {
        if kind != "balancer" {
            return vec![];
        }
        let list =
            |name: &'static str| AttrSchema::optional(name, Type::List(Box::new(Type::String)));
        vec![
            ActionSchema {
                name: CANARY_WEIGHTS,
                about: "give the `canary` servers `weight` % of every upstream's traffic to the `stable` ones (0: none); answers `upstreams`, how many route to `stable`",
                args: vec![
                    list("stable"),
                    list("canary"),
                    AttrSchema::required("weight", Type::Number),
                ],
                changes_record: false,
            },
            ActionSchema {
                name: CANARY_CLEAR,
                about: "take the `canary` servers (all when none are named) out of the balancer; with the last one the stack's config is back",
                args: vec![list("canary")],
                changes_record: false,
            },
        ]
    }

    async fn action(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        record: &JsonMap,
        name: &str,
        args: &JsonMap,
    ) -> Result<ActionOutput, ProviderError> {
        if kind != "balancer" || ![CANARY_WEIGHTS, CANARY_CLEAR].contains(&name) {
            return Err(pipeline_engine::provider::unknown_action(
                "nginx",
                kind,
                addr,
                name,
                &self.actions(kind),
            ));
        }
        let strings = |k: &str| -> Result<Vec<String>, ProviderError> {
            match args.get(k) {
                None | Some(serde_json::Value::Null) => Ok(vec![]),
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ProviderError::invalid_config(format!(
                            "{addr}: `{k}` must be a list of ADDRESS:PORT strings"
                        ))
                    }),
                Some(_) => Err(ProviderError::invalid_config(format!(
                    "{addr}: `{k}` must be a list of ADDRESS:PORT strings"
                ))),
            }
        };
        let (pre, addr) = (prefix(ctx, addr), addr.to_string());
        let canary_servers = strings("canary")?;
        let remote = remote::record_is_remote(record);
        if name == CANARY_CLEAR && remote {
            let changed = remote::canary_remove(ctx, record, &canary_servers)
                .await
                .map_err(|e| remote::prefixed(e, &addr))?;
            return Ok(ActionOutput::output(
                serde_json::json!({ "changed": changed })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ));
        }
        if name == CANARY_CLEAR {
            return crate::blocking(move || {
                let changed = canary::remove(&pre, &canary_servers)
                    .map_err(|e| ProviderError::new(format!("{addr}: {e}")))?;
                Ok(ActionOutput::output(
                    serde_json::json!({ "changed": changed })
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                ))
            })
            .await;
        }
        let stable_servers = strings("stable")?;
        let weight = args
            .get("weight")
            .and_then(|w| w.as_u64())
            .filter(|w| *w <= 100)
            .ok_or_else(|| {
                ProviderError::invalid_config(format!(
                    "{addr}: `weight` must be a whole percentage from 0 to 100"
                ))
            })? as u32;
        if remote {
            let upstreams =
                remote::canary_shift(ctx, record, &stable_servers, &canary_servers, weight)
                    .await
                    .map_err(|e| remote::prefixed(e, &addr))?;
            return Ok(ActionOutput::output(
                serde_json::json!({ "upstreams": upstreams })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ));
        }
        crate::blocking(move || {
            let upstreams = canary::shift(&pre, &stable_servers, &canary_servers, weight)
                .map_err(|e| ProviderError::new(format!("{addr}: {e}")))?;
            Ok(ActionOutput::output(
                serde_json::json!({ "upstreams": upstreams })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ))
        })
        .await
    }
}

/// The canary split's actions (see `canary`).
pub const CANARY_WEIGHTS: &str = "canary_weights";
pub const CANARY_CLEAR: &str = "canary_clear";

fn apply_blocking(
    ctx: &ProviderCtx,
    addr: &str,
    c: &ValueMap,
    prior: Option<&JsonMap>,
    bin: &Path,
    step: &pipeline_engine::Step,
) -> Result<JsonMap, ProviderError> {
    let pre = prefix(ctx, addr);
    let o = planned_object(ctx, addr, c).map_err(|e| {
        let i = invalid(e);
        ProviderError::new(i.message).help(i.help)
    })?;
    let text = o["config"].as_str().unwrap_or_default().to_string();
    let fail = |e: (Option<String>, String)| {
        let i = invalid(e);
        ProviderError::new(i.message).help(i.help)
    };
    for d in ["conf", "logs", "tmp"] {
        private::create_dir_all(&pre.join(d)).map_err(|e| {
            ProviderError::new(format!("cannot create {}: {e}", pre.join(d).display()))
        })?;
    }
    check_with(bin, &text, &pre).map_err(fail)?;
    private::write(&pre.join(BINARY_RECORD), bin.display().to_string()).map_err(|e| {
        ProviderError::new(format!(
            "cannot write {}: {e}",
            pre.join(BINARY_RECORD).display()
        ))
    })?;
    let conf = pre.join("conf/nginx.conf");
    let running =
        pipeline_supervise::status(&pre).filter(|s| s.supervisor_alive && s.child_pid.is_some());
    let old = std::fs::read_to_string(&conf).ok();
    // The stack's config replaces whatever an interrupted canary left shifted.
    let _ = std::fs::remove_file(pre.join("conf/nginx.conf.stable"));
    let tmp = conf.with_extension("tmp");
    private::write(&tmp, &text)
        .and_then(|_| std::fs::rename(&tmp, &conf))
        .map_err(|e| ProviderError::new(format!("cannot write {}: {e}", conf.display())))?;
    match (running, prior) {
        (Some(st), Some(_)) => {
            if old.as_deref() != Some(text.as_str()) {
                // Graceful: new workers take the new config, old ones finish their requests.
                let pid = st
                    .child_pid
                    .ok_or_else(|| ProviderError::new("nginx is running but its pid is unknown"))?;
                // SAFETY: a signal to the nginx master this provider started.
                unsafe { libc::kill(pid as i32, libc::SIGHUP) };
            }
        }
        _ => {
            let address = c
                .get("address")
                .and_then(Value::as_str)
                .unwrap_or("127.0.0.1")
                .to_string();
            let listen = c.get("listen").and_then(Value::as_f64).unwrap_or(0.0) as u16;
            // The plan found the port free; another program may have taken it since.
            crate::bindable(&address, listen)?;
            let spec = ReplicaSpec {
                name: format!("{addr} (nginx)"),
                command: format!(
                    "exec {} -p {} -c conf/nginx.conf -e logs/error.log -g 'daemon off;'",
                    crate::quote::shell(&bin.display().to_string()),
                    crate::quote::shell(&pre.display().to_string())
                ),
                cwd: pre.clone(),
                env: Default::default(),
                port: listen,
                address,
                health: HealthCheck::tcp(),
                restart: true,
            };
            pipeline_supervise::start(&ctx.exe, &pre, &spec, Duration::from_secs(10))
                .map_err(|e| ProviderError::new(e.to_string()))?;
            crate::wait_healthy(step, &pre, &spec, Duration::from_secs(10)).map_err(|e| {
                let _ = pipeline_supervise::stop(&pre, Duration::from_secs(5));
                e.help(format!("see {}", pre.join("logs/error.log").display()))
            })?;
        }
    }
    Ok(o.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(routes: Value, on: Option<Value>) -> ValueMap {
        let mut c = ValueMap::new();
        c.insert("listen".into(), Value::Number(8080.0));
        c.insert("address".into(), Value::str("127.0.0.1"));
        c.insert("routes".into(), routes);
        if let Some(on) = on {
            c.insert("on".into(), on);
        }
        c
    }

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    fn service(urls: &[&str]) -> Value {
        let list = urls
            .iter()
            .map(|u| map(&[("url", Value::str(*u))]))
            .collect();
        map(&[("instances", Value::List(list))])
    }

    fn host() -> Value {
        map(&[
            ("name", Value::str("lb01")),
            ("address", Value::str("10.1.2.3")),
            ("transport", Value::str("ssh")),
        ])
    }

    #[test]
    fn a_block_of_one_inventory_host_is_that_host_and_of_several_an_error() {
        let one = config(map(&[]), Some(map(&[("lb01", host())])));
        assert!(remote::is_remote(&one));
        assert_eq!(remote::host_address(&one).as_deref(), Some("10.1.2.3"));
        let two = config(map(&[]), Some(map(&[("lb01", host()), ("lb02", host())])));
        assert!(!remote::is_remote(&two));
        let bad = Nginx::default().validate("balancer", &two);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(bad[0].attr.as_deref(), Some("on"));
        assert!(bad[0].message.contains("lb01, lb02"), "{:?}", bad[0]);
    }

    #[test]
    fn a_remote_service_puts_every_instance_in_the_upstream() {
        let routes = map(&[(
            "/",
            service(&["http://10.0.0.1:8001", "http://10.0.0.2:8001"]),
        )]);
        let text = render(
            &config(routes, None),
            &Layout::Local(Path::new("/p")),
            Path::new("/"),
            false,
        )
        .unwrap()
        .unwrap();
        assert!(text.contains("server 10.0.0.1:8001 weight=1"), "{text}");
        assert!(text.contains("server 10.0.0.2:8001 weight=1"), "{text}");
        // The local layout is what it was: no user line, no blank line left by the template.
        assert!(!text.contains("\nuser "), "{text}");
        assert!(
            text.starts_with("# Rendered by pipeline from the stack; changes are applied with a graceful reload.\n# Every value is one checked, quoted token (providers/src/quote.rs).\nworker_processes 1;\npid /p/nginx.pid;\n"),
            "{text}"
        );
        let bad = map(&[("/", map(&[("instances", Value::str("x"))]))]);
        assert!(render(
            &config(bad, None),
            &Layout::Local(Path::new("/p")),
            Path::new("/"),
            false
        )
        .is_err());
        let hostile = map(&[("/", service(&["http://10.0.0.1:80; }"]))]);
        assert!(render(
            &config(hostile, None),
            &Layout::Local(Path::new("/p")),
            Path::new("/"),
            false
        )
        .is_err());
    }

    #[test]
    fn on_an_inventory_host_the_distributions_paths_and_the_hosts_address_are_used() {
        let routes = map(&[("/", service(&["http://10.0.0.1:8001"]))]);
        let c = config(routes, Some(host()));
        assert!(remote::is_remote(&c));
        let address = remote::listen_address(&c).unwrap().unwrap();
        assert_eq!(address, "10.1.2.3");
        let text = render(
            &c,
            &Layout::Remote {
                address: &address,
                sites: None,
            },
            Path::new("/"),
            false,
        )
        .unwrap()
        .unwrap();
        for want in [
            "user www-data;\nworker_processes 1;\npid /run/nginx.pid;",
            "error_log /var/log/nginx/error.log warn;",
            "proxy_temp_path /var/lib/nginx/proxy;",
            "listen 10.1.2.3:8080;",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        let ctx = ProviderCtx {
            work_dir: "/w/.pipeline".into(),
            stack_dir: "/w".into(),
            exe: "/bin/true".into(),
        };
        let o = planned_object(&ctx, "balancer.front", &c).unwrap();
        assert_eq!(o["url"], Value::str("http://10.1.2.3:8080"));
        // Listening everywhere: the url is still the host's.
        let mut all = c.clone();
        all.insert("address".into(), Value::str("0.0.0.0"));
        let o = planned_object(&ctx, "balancer.front", &all).unwrap();
        assert_eq!(o["url"], Value::str("http://10.1.2.3:8080"));
        assert!(
            o["config"]
                .as_str()
                .unwrap()
                .contains("listen 0.0.0.0:8080;"),
            "{:?}",
            o["config"]
        );
        // A static directory is served from its copy on the host.
        let st = map(&[("/s/", map(&[("static", Value::str("site"))]))]);
        let text = render(
            &config(st, Some(host())),
            &Layout::Remote {
                address: &address,
                sites: Some(&BTreeMap::from([(
                    "site".to_string(),
                    format!("{}/0123456789abcdef", remote::SITES),
                )])),
            },
            Path::new("/"),
            false,
        )
        .unwrap()
        .unwrap();
        // The copy shipped to the host, not this machine's directory.
        assert!(
            text.contains("alias \"/var/www/pipeline/0123456789abcdef/\";")
                || text.contains("alias /var/www/pipeline/0123456789abcdef/;"),
            "{text}"
        );
        // A local host (`ansible_connection=local`) is this machine.
        let local = map(&[
            ("address", Value::str("10.9.9.9")),
            ("transport", Value::str("local")),
        ]);
        assert!(!remote::is_remote(&config(map(&[]), Some(local))));
    }
}
