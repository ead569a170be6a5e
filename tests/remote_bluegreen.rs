//! Blue-green updates of the ssh `service` on lab hosts, through the real binary: nginx (the
//! distribution's, installed through the lab's apt cache) on one host in front of the service
//! on two others. Under a bounded load through nginx, a blue-green update switches every
//! response from v1 to v2 at once (nothing old after the switch point but what was in flight),
//! with no failed request, and the old units stop; a no-op plan is empty afterwards. A release
//! that fails its health check on one host stops with an error naming that host: no failed
//! request, every answer still the old version, the old units running, the new ones gone.

mod common;
use common::lab::{self, sh, units, Load, Sample};
use common::*;

use pipeline_lab::{Lab, LabOptions};
use std::time::{Duration, Instant};

const LISTEN: u16 = 8000;

fn stack(lb: &str) -> String {
    format!(
        r#"provider "ssh" {{
  inventory = "inventory.ini"
}}
host "web" {{
  provider = ssh
  group    = "web"
}}
host "lb" {{
  provider = ssh
  group    = "lb"
}}
service "app" {{
  provider      = ssh
  on            = host.web
  source        = "app"
  run           = "exec python3 app.py"
  port          = 8080
  health        = {{ path = "/health" }}
  update        = {{ strategy = "blue-green", drain_timeout = "3s" }}
  start_timeout = "10s"
}}
balancer "front" {{
  on     = host.lb["{lb}"]
  listen = {LISTEN}
  routes = {{ "/" = service.app }}
}}
"#
    )
}

fn ports(t: &Scratch) -> Vec<u64> {
    state(t).resources["service.app"].attrs["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["port"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_blue_green_update_on_ssh_hosts_switches_at_once_and_a_failed_one_moves_nothing() {
    if !pipeline_lab::require() {
        return;
    }
    let lab = Lab::with_options(3, LabOptions { apt_cache: true }).unwrap();
    let (lb, w1, w2) = (lab.host(0), lab.host(1), lab.host(2));
    let t = lab::scratch(
        &format!(
            "{}\n[web]\n{}\n{}\n\n[lb]\n{}\n",
            lab.inventory(),
            w1.name(),
            w2.name(),
            lb.name()
        ),
        "main.hcl",
        &stack(lb.name()),
    );

    // First apply: the service on slot A (8080) of both hosts, nginx in front.
    let started = Instant::now();
    t.ok(&["apply", "-auto-approve", "main.hcl"]);
    eprintln!(
        "first apply (service on 2 hosts, nginx through the apt cache): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(ports(&t), [8080, 8080]);
    let url = format!("http://{}:{LISTEN}/", lb.addr());
    for _ in 0..4 {
        let (code, body) = http("GET", &url, "").expect("the balancer answers");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"v1\""), "{body}");
    }

    // Blue-green to v2 under load: the new release starts on 8081 beside the old, then every
    // answer switches at once.
    lab::set_version(&t, "v2");
    let plan = t.ok(&["plan"]);
    assert!(
        plan.contains("balancer.front"),
        "the balancer's upstreams change in the plan: {plan}"
    );
    let load = Load::start(&url, 30);
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let out = t.run(&["apply", "-auto-approve"]);
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let samples = load.stop();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(out.status.success(), "apply failed:\n{text}");
    let failed = lab::failed(&samples);
    let (v1, v2) = (lab::answered(&samples, "v1"), lab::answered(&samples, "v2"));
    let first_v2 = samples
        .iter()
        .filter(|s| s.version.as_deref() == Ok("v2"))
        .map(|s| s.done)
        .min()
        .expect("some answer was v2");
    let last_v1_sent = samples
        .iter()
        .filter(|s| s.version.as_deref() == Ok("v1"))
        .map(|s| s.sent)
        .max()
        .expect("some answer was v1");
    let rate = samples.len() as f64
        / samples
            .last()
            .unwrap()
            .sent
            .duration_since(samples[0].sent)
            .as_secs_f64();
    eprintln!(
        "blue-green apply v1 -> v2: {:.1} s; {} requests ({rate:.1}/s), {} failed, {v1} v1, {v2} v2; switch {:.1} s into the apply",
        took.as_secs_f64(),
        samples.len(),
        failed.len(),
        first_v2.saturating_duration_since(t0).as_secs_f64()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(v1 > 0 && v2 > 0, "{v1} v1, {v2} v2");
    // At once: v1 and v2 mix only while nginx hands over to the workers of its reload (old
    // workers still accept for a moment): the requests sent between the first v2 answer and
    // the last v1 request are a handful, never a gradual shift.
    let first_v2_sent = samples
        .iter()
        .filter(|s| s.version.as_deref() == Ok("v2"))
        .map(|s| s.sent)
        .min()
        .unwrap();
    let mixed: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.sent >= first_v2_sent.min(last_v1_sent) && s.sent <= last_v1_sent.max(first_v2_sent)
        })
        .collect();
    let late = samples
        .iter()
        .filter(|s| s.sent > first_v2 && s.version.as_deref() == Ok("v1"))
        .count();
    eprintln!(
        "switch window: {} request(s) sent between the first v2 and the last v1 request ({:.0} ms); {late} v1 answer(s) to requests sent after the first v2 answer",
        mixed.len(),
        last_v1_sent
            .saturating_duration_since(first_v2_sent)
            .as_secs_f64()
            * 1000.0
    );
    assert!(
        mixed.len() <= 6,
        "v1 and v2 interleaved over {} requests: {mixed:?}",
        mixed.len()
    );
    // Before the window every answer is v1, after it every one is v2.
    let order: Vec<&str> = samples
        .iter()
        .map(|s| s.version.as_deref().unwrap())
        .collect();
    let flips = order.windows(2).filter(|w| w[0] != w[1]).count();
    eprintln!("v1/v2 changes in send order: {flips}");
    assert!(flips <= mixed.len() + 1, "{order:?}");

    if let Some(l) = text.lines().find(|l| l.contains("switched")) {
        eprintln!("progress: {}", l.trim());
    }
    // status describes the instances where they now run (slot B).
    let status = t.ok(&["status"]);
    assert!(
        status.contains("service.app") && status.contains("healthy"),
        "{status}"
    );

    // The record names slot B; the old units are gone, the new ones run; the balancer's own
    // config names the new ports (no canary leftovers).
    assert_eq!(ports(&t), [8081, 8081]);
    for h in [w1, w2] {
        assert_eq!(
            units(h, "app"),
            ["pipeline-app-1.service active"],
            "units on {}",
            h.name()
        );
    }
    let conf = sh(lb, "cat /etc/nginx/nginx.conf; ls /etc/nginx");
    assert!(
        conf.contains(&format!("{}:8081", w1.addr()))
            && conf.contains(&format!("{}:8081", w2.addr())),
        "{conf}"
    );
    assert!(!conf.contains(":8080"), "{conf}");
    assert!(
        !conf.contains("# canary") && !conf.contains("nginx.conf.stable"),
        "{conf}"
    );
    let out = t.run(&["plan", "-detailed-exitcode"]);
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(
        out.status.success() && text.contains("No changes"),
        "a no-op plan after blue-green:\n{text}"
    );

    // v3 never becomes healthy on the second host: the update stops naming it, traffic never
    // moved, the new units are gone and the old ones still serve v2.
    lab::set_version(&t, &format!("v3 crash-on {}", w2.name()));
    let load = Load::start(&url, 30);
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let out = t.run(&["apply", "-auto-approve"]);
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let samples = load.stop();
    let err = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(!out.status.success(), "the update should fail:\n{err}");
    let failed = lab::failed(&samples);
    let not_v2: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.version.as_deref() != Ok("v2"))
        .collect();
    eprintln!(
        "failed blue-green apply (v3 unhealthy on {}): {:.1} s; {} requests, {} failed, {} not v2",
        w2.name(),
        took.as_secs_f64(),
        samples.len(),
        failed.len(),
        not_v2.len()
    );
    eprintln!(
        "error: {}",
        err.lines()
            .filter(|l| l.contains("healthy") || l.contains("blue-green"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    assert!(
        err.contains(&format!("on host {} did not become healthy", w2.name())),
        "the error names the host: {err}"
    );
    assert!(err.contains("traffic never moved"), "{err}");
    assert!(samples.len() > 100, "too few requests: {}", samples.len());
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(not_v2.is_empty(), "answers other than v2: {not_v2:?}");
    assert_eq!(ports(&t), [8081, 8081]);
    for h in [w1, w2] {
        assert_eq!(
            units(h, "app"),
            ["pipeline-app-1.service active"],
            "units on {}",
            h.name()
        );
    }
    let conf = sh(lb, "cat /etc/nginx/nginx.conf; ls /etc/nginx");
    assert!(
        !conf.contains(":8080") && !conf.contains("nginx.conf.stable"),
        "the balancer was never touched: {conf}"
    );
    // The record still says what runs: back at v2 there is nothing to do.
    lab::set_version(&t, "v2");
    let out = t.run(&["plan", "-detailed-exitcode"]);
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(
        out.status.success() && text.contains("No changes"),
        "after the failed update, v2 again:\n{text}"
    );

    // Back to rolling while the instances run on slot B: v4 rolls through them in place (the
    // balancer's servers stay), nothing moves to slot A.
    lab::set_version(&t, "v4");
    t.write(
        "main.hcl",
        &stack(lb.name()).replace(
            "{ strategy = \"blue-green\", drain_timeout = \"3s\" }",
            "{ strategy = \"rolling\" }",
        ),
    );
    let load = Load::start(&url, 30);
    let t0 = Instant::now();
    let out = t.run(&["apply", "-auto-approve"]);
    let took = t0.elapsed();
    let samples = load.stop();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(out.status.success(), "rolling after blue-green:\n{text}");
    eprintln!(
        "rolling update on slot B: {:.1} s; {} requests, {} failed (nginx retries the other host)",
        took.as_secs_f64(),
        samples.len(),
        lab::failed(&samples).len()
    );
    assert_eq!(ports(&t), [8081, 8081]);
    for h in [w1, w2] {
        assert_eq!(
            units(h, "app"),
            ["pipeline-app-1.service active"],
            "units on {}",
            h.name()
        );
    }
    for _ in 0..4 {
        let (code, body) = http("GET", &url, "").expect("the balancer answers");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"v4\""), "{body}");
    }

    // Without a balancer in front, a blue-green update is refused before anything changes.
    let one = format!(
        "provider \"ssh\" {{\n  inventory = \"inventory.ini\"\n}}\nhost \"web\" {{\n  provider = ssh\n  group    = \"lab\"\n}}\n\
         service \"solo\" {{\n  provider = ssh\n  on = host.web[\"{}\"]\n  source = \"app\"\n  run = \"exec python3 app.py\"\n  port = 9080\n  update = {{ strategy = \"blue-green\" }}\n  start_timeout = \"10s\"\n}}\n",
        w1.name()
    );
    let solo = lab::scratch(&lab.inventory(), "main.hcl", &one);
    solo.ok(&["apply", "-auto-approve", "main.hcl"]);
    lab::set_version(&solo, "v2");
    let out = solo.run(&["apply", "-auto-approve"]);
    let err = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("switches traffic through the balancer in front of the service")
            && err.contains("nothing was changed"),
        "{err}"
    );
    eprintln!(
        "without a balancer: {}",
        err.lines()
            .find(|l| l.contains("balancer in front"))
            .unwrap_or("")
            .trim()
    );
    let solo_units = sh(
        w1,
        "ls /etc/systemd/system | grep pipeline-solo; systemctl is-active pipeline-solo-0",
    );
    assert_eq!(
        solo_units.split_whitespace().collect::<Vec<_>>(),
        ["pipeline-solo-0.service", "active"]
    );
    let (_, body) = http("GET", &format!("http://{}:9080/", w1.addr()), "").expect("solo answers");
    assert!(body.contains("\"v1\""), "{body}");
}
