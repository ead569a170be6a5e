//! Secrets stay secret (issue 8, item 3). One value is marked sensitive (`variable { sensitive =
//! true }`, given as `PIPELINE_VAR_secret`), used everywhere a value can go, and then looked for
//! in every command's output, every file under `.pipeline` and the environment of every process
//! pipeline started, against the real binary, nginx, redis-server and the sample service.
//!
//! The rule these tests check, for a secret and everything derived from it (a config rendered
//! from it, a URL with it as the password):
//! - no command prints it (plan, plan -json, apply, state show of every address, status,
//!   status -json, output, logs);
//! - a file under `.pipeline` may hold it only when the value must be there for something to
//!   work — the state (`state.json`, `state.journal`), a supervisor's copy of the env it gives an
//!   app (`spec.json`), a generation's record for rollback (`instance.json`), a config the
//!   running program reads (`nginx.conf`, `nginx.conf.stable`, `redis.conf`) — and then the file
//!   is 0600 and every directory from `.pipeline` down to it is 0700; reports, logs, status and
//!   build files never hold it;
//! - of every process pipeline started (found by its marker variable, and their descendants),
//!   only the apps of the service whose `env` asked for it have it in `/proc/PID/environ`; no
//!   process has the CLI's `PIPELINE_VAR_*`.

mod common;
use common::load::free_port;
use common::procfs::ppid;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Legal in an env value, a redis password, a URL path and an nginx location.
const SECRET: &str = "Zq7SeCrEt4Xv9";

fn scratch_with_secret() -> Scratch {
    let t = Scratch::new();
    t.env
        .borrow_mut()
        .push(("PIPELINE_VAR_secret".into(), SECRET.into()));
    t
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            all_files(&p, out);
        } else if ft.is_file() {
            out.push(p);
        }
    }
}

/// Files under `.pipeline` that must hold a value to work (see the module doc).
const MAY_HOLD: &[&str] = &[
    "state.json",
    "state.journal",
    "spec.json",
    "instance.json",
    "nginx.conf",
    "nginx.conf.stable",
    "redis.conf",
];

/// Every file under `.pipeline` holding the secret: one of [`MAY_HOLD`], 0600, in 0700
/// directories all the way up to `.pipeline` (itself 0700). Returns the files that hold it.
fn check_files(t: &Scratch) -> Vec<String> {
    let root = t.path().join(".pipeline");
    assert_eq!(mode(&root), 0o700, ".pipeline");
    let mut files = vec![];
    all_files(&root, &mut files);
    let mut holding = vec![];
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        if !String::from_utf8_lossy(&bytes).contains(SECRET) {
            continue;
        }
        let rel = f.strip_prefix(&root).unwrap().display().to_string();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            MAY_HOLD.contains(&name.as_str()),
            ".pipeline/{rel} holds the secret"
        );
        assert_eq!(mode(&f), 0o600, ".pipeline/{rel} holds the secret");
        let mut d = f.parent().unwrap();
        while d.starts_with(&root) {
            assert_eq!(mode(d), 0o700, "{} (above {rel})", d.display());
            d = d.parent().unwrap();
        }
        holding.push(rel);
    }
    holding
}

/// Output of `pipeline ARGS` (stdout and stderr), which must succeed and not hold the secret.
fn clean(t: &Scratch, args: &[&str]) -> String {
    let out = t.run(args);
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(
        !text.contains(SECRET),
        "`pipeline {}` shows the secret:\n{text}",
        args.join(" ")
    );
    assert!(
        out.status.success(),
        "`pipeline {}` failed:\n{text}",
        args.join(" ")
    );
    text
}

fn environ(pid: u32) -> Option<Vec<(String, String)>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
    )
}

/// Every process pipeline started under this scratch dir (marker variable) and their
/// descendants (nginx workers, say).
fn started(t: &Scratch) -> Vec<u32> {
    let mut pids = t.processes();
    loop {
        let more: Vec<u32> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| !pids.contains(p) && ppid(*p).is_some_and(|pp| pids.contains(&pp)))
            .collect();
        if more.is_empty() {
            return pids;
        }
        pids.extend(more);
    }
}

/// Processes holding the secret must be apps (not supervisors) of `asked`, the block whose
/// `env` holds it; none holds `PIPELINE_VAR_*`. Returns how many were looked at and how many
/// held it.
fn check_processes(t: &Scratch, asked: &str) -> (usize, usize) {
    let pids = started(t);
    let (mut seen, mut holding) = (0, 0);
    for pid in pids {
        let Some(env) = environ(pid) else { continue };
        seen += 1;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| s(&c).replace('\0', " "))
            .unwrap_or_default();
        assert!(
            !env.iter().any(|(k, _)| k.starts_with("PIPELINE_VAR_")),
            "pid {pid} ({cmdline}) inherited the CLI's PIPELINE_VAR_*"
        );
        if env.iter().any(|(_, v)| v.contains(SECRET)) {
            holding += 1;
            let marker = env
                .iter()
                .find(|(k, _)| k == "PIPELINE_REPLICA_DIR")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            assert!(
                marker.contains(&format!("/.pipeline/run/{asked}"))
                    && !cmdline.contains("__supervise"),
                "pid {pid} ({cmdline}, {marker}) holds the secret but did not ask for it"
            );
        }
    }
    (seen, holding)
}

fn destroy(t: &Scratch, stack: &str) {
    t.ok(&["destroy", "-auto-approve", stack]);
    assert!(wait_until(Duration::from_secs(10), || t
        .processes()
        .is_empty()));
}

/// The whole stack: a secret in a service's env, a file template, a balancer route, the flag
/// store's password (and so every URL of it), a canary request and outputs.
fn full_stack(t: &Scratch, app: &Path, port: u16, monitor: u16) -> String {
    let out_file = t.path().join("app.conf");
    format!(
        r#"variable "secret" {{ sensitive = true }}
variable "version" {{ default = "v1" }}

flags "ui" {{
  password = var.secret
  values   = {{ tables = true }}
}}

service "web" {{
  source        = "{app}"
  run           = "exec ./preview --port {{{{port}}}}"
  env           = {{ VERSION = var.version, API_TOKEN = var.secret, FLAGS_URL = flags.ui.local_url }}
  health        = {{ path = "/health", interval = "100ms" }}
  start_timeout = "5s"
  update        = {{ strategy = "canary" }}
  canary        = {{ steps = [50, 100], interval = "2s", min_requests = 10, load = 60, request = {{ method = "POST", path = "/preview?key=${{var.secret}}", body = jsonencode({{ markdown = "Hi" }}) }} }}
}}

file "conf" {{
  path     = "{out}"
  template = "token={{{{token}}}} url={{{{url}}}}\n"
  vars     = {{ token = var.secret, url = flags.ui.url }}
  mode     = "0600"
}}

balancer "front" {{
  listen = {port}
  routes = {{ "/" = service.web, "/${{var.secret}}/" = service.web }}
}}

monitor "ops" {{
  listen = {monitor}
}}

output "token" {{
  value     = var.secret
  sensitive = true
}}
output "flags_url" {{ value = flags.ui.url }}
output "front_config" {{ value = balancer.front.config }}
output "rendered" {{ value = file.conf.rendered }}
output "slot" {{ value = service.web.url }}
"#,
        app = app.display(),
        out = out_file.display()
    )
}

#[test]
fn a_secret_appears_only_in_state_and_in_the_env_of_the_service_that_asked() {
    let t = scratch_with_secret();
    let app = prebuilt_source(&t);
    let port = free_port();
    let monitor = free_port();
    t.write("s.hcl", &full_stack(&t, &app, port, monitor));

    let plan = clean(&t, &["plan", "s.hcl"]);
    assert!(plan.contains("(sensitive value)"), "{plan}");
    let json = clean(&t, &["plan", "-json", "s.hcl"]);
    assert!(json.contains("after_unknown"), "{json}");
    clean(&t, &["apply", "-auto-approve", "s.hcl"]);
    // What asked for the secret has it.
    assert!(std::fs::read_to_string(t.path().join("app.conf"))
        .unwrap()
        .contains(SECRET));
    assert!(
        http(
            "GET",
            &format!("http://127.0.0.1:{port}/{SECRET}/health"),
            ""
        )
        .is_some(),
        "the secret route answers"
    );

    // A progressive canary with the secret in its request.
    let canary = clean(
        &t,
        &["apply", "-auto-approve", "-var", "version=v2", "s.hcl"],
    );
    println!("{canary}");
    assert!(canary.contains("Canary report: "), "{canary}");
    let html = canary
        .lines()
        .find_map(|l| l.strip_prefix("Canary report: "))
        .unwrap()
        .trim()
        .to_string();
    assert!(std::fs::read_to_string(t.path().join(&html))
        .unwrap()
        .contains("(sensitive value)"));

    // Every command's output.
    clean(&t, &["plan", "-var", "version=v2", "s.hcl"]);
    clean(&t, &["plan", "-json", "-var", "version=v2", "s.hcl"]);
    let list = clean(&t, &["state", "list"]);
    let addrs: Vec<&str> = list.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert!(addrs.len() >= 4, "{list}");
    for a in &addrs {
        clean(&t, &["state", "show", a]);
    }
    let show = clean(&t, &["state", "show", "balancer.front"]);
    assert!(
        show.contains("config") && show.contains("(sensitive value)"),
        "{show}"
    );
    clean(&t, &["status"]);
    let sj = clean(&t, &["status", "-json"]);
    assert!(sj.contains("flags.ui"), "{sj}");
    clean(&t, &["output"]);
    for a in ["service.web", "balancer.front", "flags.ui", "monitor.ops"] {
        clean(&t, &["logs", a]);
    }
    // The dashboard's data, once it has looked at everything.
    assert!(wait_until(Duration::from_secs(10), || http(
        "GET",
        &format!("http://127.0.0.1:{monitor}/api/status"),
        ""
    )
    .is_some_and(|(c, b)| c == 200 && b.contains("flags.ui"))));
    for path in ["/api/status", "/metrics", "/"] {
        let (_, body) = http("GET", &format!("http://127.0.0.1:{monitor}{path}"), "").unwrap();
        assert!(
            !body.contains(SECRET),
            "the monitor's {path} shows the secret"
        );
    }

    let holding = check_files(&t);
    println!("files holding the secret: {holding:?}");
    assert!(holding.iter().any(|f| f == "state.json"), "{holding:?}");
    let (seen, with) = check_processes(&t, "service.web");
    println!("{seen} processes looked at, {with} hold the secret (the apps of service.web)");
    assert!(seen >= 8 && with >= 1, "{seen} {with}");

    destroy(&t, "s.hcl");
}

// Focused regressions, one per leak found in issue 8.

fn static_balancer(t: &Scratch, port: u16, body_size: &str) {
    std::fs::create_dir_all(t.path().join("www")).unwrap();
    t.write(
        "b.hcl",
        &format!(
            r#"variable "secret" {{ sensitive = true }}
balancer "front" {{
  listen               = {port}
  client_max_body_size = "{body_size}"
  routes               = {{ "/${{var.secret}}/" = {{ static = "{www}" }} }}
}}
"#,
            www = t.path().join("www").display()
        ),
    );
}

#[test]
fn a_balancer_config_rendered_from_a_secret_is_masked_in_state_show_and_plan_diffs() {
    let t = scratch_with_secret();
    let port = free_port();
    static_balancer(&t, port, "1m");
    clean(&t, &["apply", "-auto-approve", "b.hcl"]);
    let show = clean(&t, &["state", "show", "balancer.front"]);
    assert!(show.contains("(sensitive value)"), "{show}");
    // A change to the rendered config: its diff is not shown, in text or JSON.
    static_balancer(&t, port, "2m");
    let plan = clean(&t, &["plan", "b.hcl"]);
    assert!(
        plan.contains("config") && plan.contains("(sensitive value)"),
        "{plan}"
    );
    let json = clean(&t, &["plan", "-json", "b.hcl"]);
    assert!(json.contains("\"config\":\"(sensitive value)\""), "{json}");
    // nginx.conf must hold the route: owner-only.
    let conf = t
        .path()
        .join(".pipeline/run/balancer.front/conf/nginx.conf");
    assert!(std::fs::read_to_string(&conf).unwrap().contains(SECRET));
    check_files(&t);
    destroy(&t, "b.hcl");
}

#[test]
fn after_unknown_paths_do_not_name_a_secret_route_and_plan_makes_pipeline_owner_only() {
    let t = scratch_with_secret();
    let app = prebuilt_source(&t);
    t.write(
        "p.hcl",
        &format!(
            r#"variable "secret" {{ sensitive = true }}
service "web" {{
  source = "{app}"
  run    = "exec ./preview --port {{{{port}}}}"
}}
balancer "front" {{
  listen = {port}
  routes = {{ "/${{var.secret}}/" = service.web }}
}}
"#,
            app = app.display(),
            port = free_port()
        ),
    );
    let json = clean(&t, &["plan", "-json", "p.hcl"]);
    assert!(json.contains("after_unknown"), "{json}");
    clean(&t, &["plan", "p.hcl"]);
    // The first plan created .pipeline: owner-only, like everything in it.
    check_files(&t);
}

#[test]
fn status_json_masks_the_flag_store_url() {
    let t = scratch_with_secret();
    t.write(
        "f.hcl",
        r#"variable "secret" { sensitive = true }
flags "ui" {
  password = var.secret
}
"#,
    );
    clean(&t, &["apply", "-auto-approve", "f.hcl"]);
    let sj = clean(&t, &["status", "-json"]);
    assert!(sj.contains("\"url\":\"(sensitive value)\""), "{sj}");
    clean(&t, &["state", "show", "flags.ui"]);
    let holding = check_files(&t);
    assert!(
        holding.iter().any(|f| f.ends_with("redis.conf")),
        "{holding:?}"
    );
    let (_, with) = check_processes(&t, "none");
    assert_eq!(with, 0);
    destroy(&t, "f.hcl");
}

#[test]
fn a_generation_holding_a_secret_env_is_owner_only_and_no_process_gets_the_cli_environment() {
    let t = scratch_with_secret();
    let app = prebuilt_source(&t);
    t.write(
        "w.hcl",
        &format!(
            r#"variable "secret" {{ sensitive = true }}
service "web" {{
  source = "{app}"
  run    = "exec ./preview --port {{{{port}}}}"
  env    = {{ API_TOKEN = var.secret }}
  health = {{ path = "/health", interval = "100ms" }}
}}
"#,
            app = app.display()
        ),
    );
    clean(&t, &["apply", "-auto-approve", "w.hcl"]);
    let holding = check_files(&t);
    assert!(
        holding.iter().any(|f| f.ends_with("instance.json")),
        "{holding:?}"
    );
    let (seen, with) = check_processes(&t, "service.web");
    assert!(seen >= 2 && with == 1, "{seen} {with}");
    destroy(&t, "w.hcl");
}

#[test]
fn a_progressive_canary_report_masks_a_secret_request_and_is_owner_only() {
    let t = scratch_with_secret();
    let app = prebuilt_source(&t);
    let port = free_port();
    let stack = |version: &str| {
        format!(
            r#"variable "secret" {{ sensitive = true }}
service "web" {{
  source        = "{app}"
  run           = "exec ./preview --port {{{{port}}}}"
  env           = {{ VERSION = "{version}" }}
  health        = {{ path = "/health", interval = "100ms" }}
  start_timeout = "5s"
  update        = {{ strategy = "canary" }}
  canary        = {{ steps = [50, 100], interval = "2s", min_requests = 10, load = 60, request = {{ method = "GET", path = "/health?key=${{var.secret}}" }} }}
}}
balancer "front" {{
  listen = {port}
  routes = {{ "/" = service.web }}
}}
"#,
            app = app.display()
        )
    };
    t.write("c.hcl", &stack("v1"));
    clean(&t, &["apply", "-auto-approve", "c.hcl"]);
    t.write("c.hcl", &stack("v2"));
    let out = clean(&t, &["apply", "-auto-approve", "c.hcl"]);
    println!("{out}");
    let reports = t.path().join(".pipeline/reports");
    let mut files = vec![];
    all_files(&reports, &mut files);
    assert!(files.len() >= 2, "{files:?}\n{out}");
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(!text.contains(SECRET), "{} holds the secret", f.display());
        assert!(text.contains("(sensitive value)"), "{}", f.display());
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    assert_eq!(mode(&reports), 0o700);
    check_files(&t);
    destroy(&t, "c.hcl");
}

#[test]
fn a_build_never_sees_the_stacks_variables() {
    let t = scratch_with_secret();
    let app = prebuilt_source(&t);
    t.write(
        "b.hcl",
        &format!(
            r#"variable "secret" {{ sensitive = true }}
service "built" {{
  source = "{app}"
  build  = "env > build-env.txt"
  run    = "exec ./preview --port {{{{port}}}}"
  health = {{ path = "/health", interval = "100ms" }}
}}
"#,
            app = app.display()
        ),
    );
    clean(&t, &["apply", "-auto-approve", "b.hcl"]);
    let mut files = vec![];
    all_files(&t.path().join(".pipeline/builds"), &mut files);
    let env = files
        .iter()
        .find(|f| f.ends_with("build-env.txt"))
        .unwrap_or_else(|| panic!("the build wrote no build-env.txt: {files:?}"));
    let env = std::fs::read_to_string(env).unwrap();
    assert!(env.contains("PATH="), "{env}");
    assert!(!env.contains("PIPELINE_VAR_"), "{env}");
    assert!(!env.contains(SECRET), "the build saw the secret");
    destroy(&t, "b.hcl");
}
