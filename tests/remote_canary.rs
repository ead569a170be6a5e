//! The progressive canary of the ssh `service` on lab hosts, through the real binary: nginx (the
//! distribution's, through the lab's apt cache) on one host in front of the service on two
//! others. The canary's judge reads nginx's access log streamed from its host over ssh.
//!
//! - The service's `packages` are installed, and each instance writes to its own state directory.
//! - A good release under bounded load: the new instances start beside the old, take a growing
//!   share step by step (both versions answer during the apply), are promoted, and then serve
//!   everything; no request failed; the old units are gone; a report was written; a no-op plan
//!   is empty.
//! - A release that answers 500: the judge stops it at the first step with the failing metric
//!   named; every answer afterwards is the old version; the new units are gone on every host,
//!   nginx's config is the stack's again, and the record still says what runs.
//! - `pipeline rollback service.app` during a canary stops it: the apply fails saying so, and
//!   the old release keeps serving.

mod common;
use common::lab::{self, answered, failed, sh, Load};
use common::*;

use pipeline_lab::{Host, Lab, LabOptions};
use std::time::{Duration, Instant};

const LISTEN: u16 = 8000;

fn stack(lb: &str, interval: &str) -> String {
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
  run           = "{run}"
  packages      = ["jq"]
  port          = 8080
  health        = {{ path = "/health" }}
  update        = {{ strategy = "canary", drain_timeout = "2s" }}
  canary        = {{ steps = [20, 50, 100], interval = "{interval}", min_requests = 20 }}
  start_timeout = "10s"
}}
balancer "front" {{
  on     = host.lb["{lb}"]
  listen = {LISTEN}
  routes = {{ "/" = service.app }}
}}
"#,
        run = lab::RUN
    )
}

fn units(h: &Host) -> Vec<String> {
    lab::units(h, "app")
}

fn ports(t: &Scratch) -> Vec<u64> {
    state(t).resources["service.app"].attrs["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["port"].as_u64().unwrap())
        .collect()
}

/// Answers per body (version) of `n` requests through the balancer.
fn versions(lb: &Host, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n {
        let v = match http("GET", &format!("http://{}:{LISTEN}/", lb.addr()), "") {
            Some((200, b)) => lab::app_version(&b).unwrap_or(b),
            Some((code, _)) => format!("HTTP {code}"),
            None => "no answer".into(),
        };
        *out.entry(v).or_default() += 1;
    }
    out
}

fn load(lb: &Host) -> Load {
    Load::start(&format!("http://{}:{LISTEN}/", lb.addr()), 30)
}

fn summary(samples: &[lab::Sample]) -> String {
    format!(
        "{} requests, {} failed, {} v1, {} v2",
        samples.len(),
        failed(samples).len(),
        answered(samples, "v1"),
        answered(samples, "v2")
    )
}

/// Followers of the balancer host's access log still running here (the canary's stream: an
/// `ssh` whose remote command is `tail -n0 -F`).
fn followers(lb: &Host) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("{} timeout 600 tail -n0 -F", lb.addr())])
        .output()
        .unwrap();
    s(&out.stdout).lines().count()
}

#[test]
fn a_canary_on_ssh_hosts_promotes_a_good_release_and_stops_a_bad_one() {
    if !pipeline_lab::require() {
        return;
    }
    let lab = Lab::with_options(3, LabOptions { apt_cache: true }).unwrap();
    let (lb, w1, w2) = (lab.host(0), lab.host(1), lab.host(2));
    let t = lab::scratch(
        &lab::inventory(&lab, &[("web", &[w1, w2]), ("lb", &[lb])]),
        "main.hcl",
        &stack(lb.name(), "4s"),
    );
    let started = Instant::now();
    t.ok(&["apply", "-auto-approve", "main.hcl"]);
    eprintln!(
        "first apply (service on 2 hosts, nginx through the apt cache): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(ports(&t), [8080, 8080]);
    assert_eq!(versions(lb, 4).get("v1"), Some(&4));
    // `packages` were installed by apt; each instance has a writable directory of its own.
    for h in [w1, w2] {
        assert!(
            sh(h, "jq --version").starts_with("jq-"),
            "jq on {}",
            h.name()
        );
        assert_eq!(
            sh(
                h,
                "cat /var/lib/pipeline/app/app-0/started; stat -c %U /var/lib/pipeline/app/app-0"
            ),
            "v1\npipeline\n",
            "the state directory on {}",
            h.name()
        );
    }
    let (_, body) = http("GET", &format!("http://{}:8080/", w1.addr()), "").unwrap();
    assert!(
        body.contains("\"state_directory\": \"/var/lib/pipeline/app/app-0\""),
        "{body}"
    );
    let followers_before = followers(lb);

    // A good release: promoted step by step under load, nothing failed.
    lab::set_version(&t, "v2");
    let l = load(lb);
    let t0 = Instant::now();
    let out = t.run(&["apply", "-auto-approve"]);
    let took = t0.elapsed();
    let samples = l.stop();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    eprintln!(
        "canary v1 -> v2: {:.1} s; load: {}",
        took.as_secs_f64(),
        summary(&samples)
    );
    for l in text.lines().filter(|l| l.contains("canary")) {
        eprintln!("  {}", l.trim());
    }
    assert!(out.status.success(), "the canary should pass:\n{text}");
    for step in ["candidate gets 20%", "candidate gets 50%", "canary passed"] {
        assert!(text.contains(step), "{step:?} missing:\n{text}");
    }
    assert!(
        failed(&samples).is_empty(),
        "failed requests: {:?}",
        failed(&samples)
    );
    let (v1, v2) = (answered(&samples, "v1"), answered(&samples, "v2"));
    assert!(
        v1 > 0 && v2 > 0,
        "both versions answer during a canary: {v1} v1, {v2} v2"
    );
    // The judge saw the candidate's answers in the streamed access log.
    let reports: Vec<_> = std::fs::read_dir(t.path().join(".pipeline/reports"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&reports[0]).unwrap()).unwrap();
    assert_eq!(rec["result"], "promoted", "{}", rec["result"]);
    let arms = |arm: &str| {
        rec["answers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["arm"] == arm)
            .count()
    };
    eprintln!(
        "judged answers: baseline {}, candidate {}",
        arms("baseline"),
        arms("candidate")
    );
    assert!(
        arms("candidate") >= 20 && arms("baseline") >= 20,
        "baseline {}, candidate {}",
        arms("baseline"),
        arms("candidate")
    );
    assert_eq!(ports(&t), [8081, 8081]);
    for h in [w1, w2] {
        assert_eq!(units(h), ["pipeline-app-1.service active"], "{}", h.name());
    }
    assert_eq!(versions(lb, 6).get("v2"), Some(&6));
    let conf = sh(lb, "cat /etc/nginx/nginx.conf; ls /etc/nginx");
    assert!(
        !conf.contains("# canary")
            && !conf.contains("nginx.conf.stable")
            && !conf.contains(":8080"),
        "{conf}"
    );
    let out = t.run(&["plan", "-detailed-exitcode"]);
    let plan = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(
        out.status.success() && plan.contains("No changes"),
        "a no-op plan after the canary:\n{plan}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || followers(lb) <= followers_before),
        "the access log's follower outlived the canary"
    );

    // A release that answers 500: stopped at the first step, everything back on v2.
    lab::set_version(&t, "v3 failing");
    let l = load(lb);
    let t0 = Instant::now();
    let out = t.run(&["apply", "-auto-approve"]);
    let took = t0.elapsed();
    let samples = l.stop();
    let err = format!("{}{}", s(&out.stdout), s(&out.stderr));
    eprintln!(
        "canary v2 -> v3 failing: {:.1} s; load: {}",
        took.as_secs_f64(),
        summary(&samples)
    );
    eprintln!(
        "error: {}",
        err.lines()
            .filter(|l| l.contains("aborted"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("canary aborted at 20%"), "{err}");
    assert!(err.contains("errors"), "the failing metric is named: {err}");
    assert!(
        err.contains("all the traffic is back on the old one"),
        "{err}"
    );
    let bad = failed(&samples);
    assert!(
        !bad.is_empty() && bad.len() < samples.len() / 2,
        "the candidate got a share of the traffic, and only a share: {}",
        summary(&samples)
    );
    // Every failed request was the candidate's 500 (none refused, none cut off).
    assert!(
        bad.iter()
            .all(|b| b.version.as_ref().unwrap_err().starts_with("HTTP 500")),
        "{bad:?}"
    );
    assert_eq!(versions(lb, 10).get("v2"), Some(&10));
    assert_eq!(ports(&t), [8081, 8081]);
    for h in [w1, w2] {
        assert_eq!(units(h), ["pipeline-app-1.service active"], "{}", h.name());
    }
    let conf = sh(lb, "cat /etc/nginx/nginx.conf; ls /etc/nginx");
    assert!(
        !conf.contains("# canary")
            && !conf.contains("nginx.conf.stable")
            && !conf.contains(":8080"),
        "{conf}"
    );
    lab::set_version(&t, "v2");
    let out = t.run(&["plan", "-detailed-exitcode"]);
    let plan = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(
        out.status.success() && plan.contains("No changes"),
        "after the stopped canary, v2 again:\n{plan}"
    );

    // `pipeline rollback` during a canary stops it.
    lab::set_version(&t, "v3");
    t.write("main.hcl", &stack(lb.name(), "60s"));
    let apply = t
        .cmd(&["apply", "-auto-approve"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ctl = t.path().join(".pipeline/run/service.app.canary");
    assert!(
        wait_until(Duration::from_secs(120), || ctl.exists()),
        "the canary did not start"
    );
    let t0 = Instant::now();
    let rb = t.ok(&["rollback", "service.app"]);
    eprintln!(
        "rollback during the canary: {:.1} s: {}",
        t0.elapsed().as_secs_f64(),
        rb.trim()
    );
    let out = apply.wait_with_output().unwrap();
    let err = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stopped by `pipeline rollback`"), "{err}");
    assert_eq!(versions(lb, 6).get("v2"), Some(&6));
    for h in [w1, w2] {
        assert_eq!(units(h), ["pipeline-app-1.service active"], "{}", h.name());
    }
}
