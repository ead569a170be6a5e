//! A balancer on an inventory host, through the real binary, against lab hosts: nginx (the
//! distribution's, installed by the `pipeline_nginx` role through the lab's apt cache) on one
//! host, python backends on the two others. Hostile values are refused at plan and never reach
//! the host; apply routes to both backends; a no-op plan is empty; a weight change reloads
//! without dropping requests under load; a static route's directory is shipped to the host and
//! served, a changed file replaces it and the old copy goes; an edit on the host shows in plan and apply repairs
//! it; the canary actions shift traffic on the host; destroy stops nginx and puts the
//! distribution's config back.

mod common;
use common::lab::{self, sh, Load};
use common::*;

use pipeline_engine::provider::{HealthState, LogSource, Provider, ProviderCtx};
use pipeline_lab::{Host, Lab, LabOptions};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const LISTEN: u16 = 8080;

/// A threaded HTTP backend that answers its name (python's http.server has a listen backlog of
/// 5: too small under load).
const BACKEND: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = (sys.argv[2] + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True
S((sys.argv[3], int(sys.argv[1])), H).serve_forever()
"#;

fn backend(h: &Host, unit: &str, port: u16, name: &str) {
    h.exec(&[
        "systemd-run",
        &format!("--unit={unit}"),
        "python3",
        "-c",
        BACKEND,
        &port.to_string(),
        name,
        &h.addr().to_string(),
    ])
    .unwrap();
    let url = format!("http://{}:{port}/", h.addr());
    assert!(
        wait_until(Duration::from_secs(10), || http("GET", &url, "").is_some()),
        "backend {name} did not come up at {url}"
    );
}

/// Waits (at most 10 s) until nginx on `h` runs one worker and no old one finishes its
/// connections: a reload is then complete and every request meets the new config.
fn settled(h: &Host) {
    let done = wait_until(Duration::from_secs(10), || {
        let ps = sh(h, "ps -eo args");
        ps.lines()
            .filter(|l| l.starts_with("nginx: worker process"))
            .count()
            == 1
            && !ps.contains("shutting down")
    });
    assert!(done, "nginx on {} did not finish its reload", h.name());
}

/// Names answered by `n` requests through the balancer (a new connection each).
fn count(url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let name = match http("GET", url, "") {
            Some((200, b)) => b.trim().to_string(),
            Some((code, _)) => format!("status {code}"),
            None => "no answer".into(),
        };
        *m.entry(name).or_insert(0) += 1;
    }
    m
}

fn stack(lb: &str, routes: &str, extra: &str) -> String {
    format!(
        "provider \"ssh\" {{\n  inventory = \"inv.ini\"\n}}\n\n\
         host \"lb\" {{\n  provider = ssh\n  group    = \"lb\"\n}}\n\n\
         balancer \"front\" {{\n  on     = host.lb[\"{lb}\"]\n  listen = {LISTEN}\n  routes = {routes}\n{extra}}}\n"
    )
}

fn instances(urls: &[&str]) -> String {
    let list: Vec<String> = urls
        .iter()
        .map(|u| format!("{{ url = \"{u}\" }}"))
        .collect();
    format!("{{ instances = [{}] }}", list.join(", "))
}

#[test]
fn a_balancer_on_an_inventory_host_routes_reloads_repairs_shifts_and_goes() {
    if !pipeline_lab::require() {
        return;
    }
    let lab = Lab::with_options(3, LabOptions { apt_cache: true }).unwrap();
    let (lbh, h1, h2) = (lab.host(0), lab.host(1), lab.host(2));
    backend(h1, "be1", 8001, "be1");
    backend(h2, "be2", 8001, "be2");
    backend(h2, "be3", 8002, "be3");
    let be1 = format!("http://{}:8001", h1.addr());
    let be2 = format!("http://{}:8001", h2.addr());
    let t = Scratch::new();
    t.write(
        "inv.ini",
        &format!("{}\n[lb]\n{}\n", lab.inventory(), lbh.name()),
    );
    let both = format!("{{ \"/\" = {} }}", instances(&[&be1, &be2]));

    // Hostile values: refused at plan, before anything reaches the host.
    let hostile = [
        (
            format!("{{ \"/a;b\" = {} }}", instances(&[&be1])),
            String::new(),
        ),
        (
            format!("{{ \"/a}}b\" = {} }}", instances(&[&be1])),
            String::new(),
        ),
        (
            format!("{{ \"/a\\nb\" = {} }}", instances(&[&be1])),
            String::new(),
        ),
        (
            format!("{{ \"/$host\" = {} }}", instances(&[&be1])),
            String::new(),
        ),
        (
            format!("{{ \"/\" = {} }}", instances(&["http://10.0.0.1:80;x"])),
            String::new(),
        ),
        (both.clone(), "  keepalive_timeout = \"65s; }\"\n".into()),
        (both.clone(), "  client_max_body_size = \"$x\"\n".into()),
    ];
    for (routes, extra) in &hostile {
        t.write("s.hcl", &stack(lbh.name(), routes, extra));
        let out = t.run(&["plan", "s.hcl"]);
        let err = s(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{routes} {extra}: {err}");
        assert!(err.contains("s.hcl:"), "the stack location: {err}");
        eprintln!("refused: {}", err.lines().next().unwrap_or(""));
    }
    assert_eq!(
        sh(lbh, "test -e /etc/nginx && echo there || echo absent").trim(),
        "absent",
        "nothing reached the host"
    );

    // Apply: nginx installed and configured on the host, both backends reached.
    t.write("s.hcl", &stack(lbh.name(), &both, ""));
    let started = Instant::now();
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    eprintln!(
        "first apply (apt install through the cache): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let url = format!("http://{}:{LISTEN}/", lbh.addr());
    let st = state(&t);
    let rec = &st.resources["balancer.front"];
    assert_eq!(rec.attrs["url"], format!("http://{}:{LISTEN}", lbh.addr()));
    let seen = count(&url, 20);
    assert_eq!(seen.get("be1"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("be2"), Some(&10), "{seen:?}");
    assert_eq!(sh(lbh, "systemctl is-active nginx").trim(), "active");
    let pid = sh(lbh, "systemctl show -p MainPID --value nginx");

    // Nothing to do.
    let started = Instant::now();
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(plan.contains("No changes"), "{plan}");
    eprintln!("no-op plan: {:.1} s", started.elapsed().as_secs_f64());

    // A static route: the directory is packed here and shipped to the host, into a directory
    // named by its content; a changed file is a changed config in the plan.
    t.write("site/index.html", "<h1>site v1</h1>\n");
    t.write("site/css/app.css", "body { color: black }\n");
    let with_site = format!(
        "{{ \"/\" = {}, \"/site/\" = {{ static = \"site\" }} }}",
        instances(&[&be1, &be2])
    );
    t.write("s.hcl", &stack(lbh.name(), &with_site, ""));
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    settled(lbh);
    let site = format!("http://{}:{LISTEN}/site/", lbh.addr());
    assert_eq!(
        http("GET", &site, ""),
        Some((200, "<h1>site v1</h1>\n".to_string()))
    );
    assert_eq!(
        http("GET", &format!("{site}css/app.css"), "").map(|a| a.0),
        Some(200)
    );
    let dirs = |h: &Host| sh(h, "ls /var/www/pipeline 2>/dev/null");
    let first = dirs(lbh);
    assert_eq!(first.lines().count(), 1, "{first}");
    t.write("site/index.html", "<h1>site v2</h1>\n");
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(
        plan.contains("balancer.front") && plan.contains("/var/www/pipeline/"),
        "a changed site is a changed config: {plan}"
    );
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    settled(lbh);
    assert_eq!(
        http("GET", &site, ""),
        Some((200, "<h1>site v2</h1>\n".to_string()))
    );
    let second = dirs(lbh);
    assert_eq!(
        second.lines().count(),
        1,
        "the old site was pruned: {second}"
    );
    assert_ne!(first, second);
    assert_eq!(
        sh(
            lbh,
            &format!(
                "stat -c '%U %a' /var/www/pipeline/{}/index.html",
                second.trim()
            )
        ),
        "root 644\n"
    );
    assert!(t.ok(&["plan", "s.hcl"]).contains("No changes"));
    assert_eq!(
        sh(lbh, "systemctl show -p MainPID --value nginx"),
        pid,
        "reloaded, not restarted"
    );

    // A weight change under load: applied with a reload, no request dropped.
    let weighted = format!(
        "{{ \"/\" = {{ upstreams = [{{ service = {}, weight = 3 }}, {{ service = {}, weight = 1 }}] }} }}",
        instances(&[&be1]),
        instances(&[&be2])
    );
    t.write("s.hcl", &stack(lbh.name(), &weighted, ""));
    // The plan shows the host's nginx.conf diff (the role's --check --diff) and changes nothing.
    let conf_before = sh(lbh, "cat /etc/nginx/nginx.conf");
    let started = Instant::now();
    let plan = t.ok(&["plan", "s.hcl"]);
    eprintln!(
        "plan with the balancer's dry run: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        plan.contains(&format!("# on {}: ", lbh.name())) && plan.contains("/etc/nginx/nginx.conf"),
        "{plan}"
    );
    let added = |p: &str, what: &str| {
        p.lines()
            .any(|l| l.trim().starts_with('+') && l.contains(what))
    };
    assert!(
        added(&plan, &format!("{}:8001 weight=3", h1.addr())),
        "{plan}"
    );
    assert_eq!(sh(lbh, "cat /etc/nginx/nginx.conf"), conf_before);
    assert_eq!(sh(lbh, "systemctl show -p MainPID --value nginx"), pid);
    // Bounded: 50 requests a second for at most 90 s, stopped when the apply is done and at
    // least 200 were made.
    let load = Load::with(&url, 50, 1, Duration::from_secs(90), |b| {
        Ok(b.trim().to_string())
    });
    let started = Instant::now();
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let took = started.elapsed();
    let samples = load.stop_after(200);
    let failed = lab::failed(&samples).len();
    let ok = samples.len() - failed;
    let over = samples.last().unwrap().done - samples[0].sent;
    eprintln!(
        "weight change: apply {:.1} s; load {ok} ok, {failed} failed over {:.1} s",
        took.as_secs_f64(),
        over.as_secs_f64()
    );
    assert_eq!(
        failed,
        0,
        "requests failed during the reload: {:?}",
        lab::failed(&samples)
    );
    assert!(ok >= 200);
    assert_eq!(
        sh(lbh, "systemctl show -p MainPID --value nginx"),
        pid,
        "reloaded, not restarted"
    );
    settled(lbh);
    assert_eq!(dirs(lbh), "", "a site no route names is removed");
    let seen = count(&url, 200);
    eprintln!("3:1 weights over 200 requests: {seen:?}");
    assert_eq!(
        (seen.get("be1"), seen.get("be2")),
        (Some(&150), Some(&50)),
        "{seen:?}"
    );

    // Drift: an edit on the host shows in plan; apply puts the stack's config back.
    sh(lbh, "echo '# edited by hand' >> /etc/nginx/nginx.conf");
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(
        !plan.contains("No changes") && plan.contains("balancer.front"),
        "{plan}"
    );
    // The dry run shows what apply takes out.
    assert!(
        plan.lines().any(|l| l.trim() == "-# edited by hand"),
        "{plan}"
    );
    eprintln!(
        "drift plan: {}",
        plan.lines()
            .find(|l| l.contains("changed on"))
            .unwrap_or("")
    );
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert!(!sh(lbh, "cat /etc/nginx/nginx.conf").contains("edited by hand"));
    assert!(t.ok(&["plan", "s.hcl"]).contains("No changes"));
    // nginx stopped on the host: the plan starts it again.
    sh(lbh, "systemctl stop nginx");
    let plan = t.ok(&["plan", "s.hcl"]);
    assert!(
        !plan.contains("No changes") && plan.contains("balancer.front"),
        "{plan}"
    );
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert_eq!(sh(lbh, "systemctl is-active nginx").trim(), "active");
    assert!(t.ok(&["plan", "s.hcl"]).contains("No changes"));

    // The canary actions, as the progressive canary calls them: half of be1's share to be3.
    let st = state(&t);
    let record = st.resources["balancer.front"].attrs.clone();
    let ctx = ProviderCtx {
        work_dir: t.path().join(".pipeline"),
        stack_dir: t.path().to_path_buf(),
        exe: std::path::PathBuf::from(env!("CARGO_BIN_EXE_pipeline")),
    };
    let nginx = pipeline_providers::nginx::Nginx::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // describe: healthy from here, its logs readable over ssh (bounded).
    let d = rt
        .block_on(nginx.describe(&ctx, "balancer", "balancer.front", &record))
        .unwrap();
    assert_eq!(d.health.state, HealthState::Healthy, "{:?}", d.health);
    let mut logs = BTreeMap::new();
    for log in &d.logs {
        let LogSource::Command { role, argv } = log else {
            panic!("a remote balancer's log is read over ssh: {log:?}");
        };
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .unwrap();
        assert!(out.status.success(), "{role}: {}", s(&out.stderr));
        eprintln!("log {role}: {} lines", s(&out.stdout).lines().count());
        logs.insert(role.clone(), s(&out.stdout));
    }
    assert_eq!(
        logs.keys().collect::<Vec<_>>(),
        ["access", "error", "nginx"],
        "{logs:?}"
    );
    assert!(logs["nginx"].contains("nginx"), "{logs:?}");
    let access = logs["access"].lines().count();
    assert!(
        (100..=200).contains(&access),
        "the requests above are logged, 200 lines at most: {access}"
    );

    let hp = |h: &Host, p: u16| serde_json::json!(format!("{}:{p}", h.addr()));
    let args = serde_json::json!({
        "stable": [hp(h1, 8001)], "canary": [hp(h2, 8002)], "weight": 50
    });
    let out = rt
        .block_on(nginx.action(
            &ctx,
            "balancer",
            "balancer.front",
            &record,
            "canary_weights",
            args.as_object().unwrap(),
        ))
        .unwrap();
    eprintln!("canary_weights: {:?}", out.output);
    // A reload returns before the new workers take over: wait for the candidate's first answer.
    let shifted = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || count(&url, 1)
            .contains_key("be3")),
        "the candidate gets no traffic"
    );
    eprintln!(
        "candidate answering {:.2} s after canary_weights returned",
        shifted.elapsed().as_secs_f64()
    );
    settled(lbh);
    // 200 requests are whole rounds of the 3:2:3 weights, wherever the round starts.
    let seen = count(&url, 200);
    eprintln!("canary at 50 % of be1's share, 200 requests: {seen:?}");
    // be1 3 : be2 1 → be1 1.5 : be3 1.5 : be2 1 (exact with new connections and one worker).
    assert_eq!(
        (seen.get("be1"), seen.get("be3"), seen.get("be2")),
        (Some(&75), Some(&75), Some(&50)),
        "{seen:?}"
    );
    let out = rt
        .block_on(nginx.action(
            &ctx,
            "balancer",
            "balancer.front",
            &record,
            "canary_clear",
            serde_json::json!({}).as_object().unwrap(),
        ))
        .unwrap();
    eprintln!("canary_clear: {:?}", out.output);
    let mut clean = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            clean = if count(&url, 1).contains_key("be3") {
                0
            } else {
                clean + 1
            };
            clean >= 8
        }),
        "the candidate still gets traffic"
    );
    settled(lbh);
    let seen = count(&url, 40);
    assert_eq!(
        (seen.get("be1"), seen.get("be2"), seen.get("be3")),
        (Some(&30), Some(&10), None),
        "{seen:?}"
    );
    assert!(
        t.ok(&["plan", "s.hcl"]).contains("No changes"),
        "the stack's config is back"
    );

    // A canary killed while it had shifted traffic: the next apply's sweep puts the stack's
    // config back (the owner recorded on the host is a process of this machine that is gone).
    rt.block_on(nginx.action(
        &ctx,
        "balancer",
        "balancer.front",
        &record,
        "canary_weights",
        args.as_object().unwrap(),
    ))
    .unwrap();
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap();
    let owner = "/etc/nginx/nginx.conf.canary-owner";
    assert_eq!(
        sh(lbh, &format!("cat {owner}")).trim(),
        format!("{} {}", machine.trim(), std::process::id())
    );
    assert!(sh(lbh, "cat /etc/nginx/nginx.conf").contains("# canary"));
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    sh(lbh, &format!("echo '{} {dead}' > {owner}", machine.trim()));
    let out = t.run(&["apply", "-auto-approve", "s.hcl"]);
    let said = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("the stack's config is back on"), "{said}");
    eprintln!(
        "sweep: {}",
        said.lines()
            .find(|l| l.contains("is back on"))
            .unwrap_or("")
    );
    assert!(!sh(lbh, "cat /etc/nginx/nginx.conf").contains("# canary"));
    assert_eq!(
        sh(
            lbh,
            &format!("ls {owner} /etc/nginx/nginx.conf.stable 2>/dev/null | wc -l")
        )
        .trim(),
        "0"
    );
    settled(lbh);
    let seen = count(&url, 40);
    assert_eq!(
        (seen.get("be1"), seen.get("be2"), seen.get("be3")),
        (Some(&30), Some(&10), None),
        "{seen:?}"
    );

    // The host's key changes (a rebuilt host, or someone in between): refused, nothing done.
    let on = record["on"].as_object().unwrap().clone();
    let target = pipeline_providers::remote::target(&on).unwrap();
    let ssh = pipeline_providers::remote::transport(&ctx).unwrap();
    rt.block_on(ssh.close(&target)); // a new connection, which checks the key
    sh(
        lbh,
        "mkdir -p /root/keys && cp -p /etc/ssh/ssh_host_* /root/keys/ && rm -f /etc/ssh/ssh_host_* \
         && ssh-keygen -A >/dev/null && systemctl restart ssh",
    );
    let out = t.run(&["plan", "s.hcl"]);
    let err = s(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("host key")
            && err.contains(&format!("-replace='host.lb[\"{}\"]'", lbh.name())),
        "a changed key is named, with the way to accept it: {err}"
    );
    eprintln!("changed key: {}", err.lines().next().unwrap_or(""));
    sh(
        lbh,
        "rm -f /etc/ssh/ssh_host_* && cp -p /root/keys/* /etc/ssh/ && systemctl restart ssh",
    );
    rt.block_on(ssh.close(&target));
    assert!(t.ok(&["plan", "s.hcl"]).contains("No changes"));

    // Destroy: nginx stopped and disabled, the distribution's config back.
    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
    assert_eq!(
        sh(lbh, "systemctl is-active nginx || true").trim(),
        "inactive"
    );
    let conf = sh(lbh, "cat /etc/nginx/nginx.conf");
    assert!(
        !conf.contains("Rendered by pipeline") && conf.contains("sites-enabled"),
        "{conf}"
    );
    assert!(http("GET", &url, "").is_none(), "nothing listens any more");
    // The transport's master (kept 30 s after the last call) and its private directory go too.
    rt.block_on(ssh.close(&target));
    std::fs::remove_dir_all(ssh.dir()).unwrap();
}
