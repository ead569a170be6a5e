//! The progressive canary of `apply` (`update = { strategy = "canary" }`) against the real
//! sample service behind real nginx, under a bounded load of 100 requests/s through the
//! balancer:
//!
//! - a good candidate goes 5 → 25 → 50 → 100 % and is promoted; the balancer's config is the
//!   stack's again and the next plan is empty;
//! - a candidate that starts failing mid-way is stopped: its traffic ends within one analysis
//!   interval of its first error, the old version serves everything, the release is recorded as
//!   aborted and the next plan shows the change as not done, saying why;
//! - `pipeline promote` and `pipeline rollback` control a running canary by hand;
//! - every canary leaves its record (JSON) and an HTML report with charts of both arms.

mod common;
use common::chromium::{chromium, points};
use common::load::{self, free_port};
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const BODY: &str = r##"{"markdown":"# Title\n\nSome *text*."}"##;

fn stack(app: &Path, port: u16, interval: &str, namespaces: bool) -> String {
    // In namespaces every generation listens on the same fixed port at an address of its own.
    let (run, network) = if namespaces {
        (
            "exec ./preview --port 3000 --address 0.0.0.0",
            "{ namespace = true, port = 3000 }",
        )
    } else {
        ("exec ./preview --port {{port}}", "null")
    };
    format!(
        r#"variable "version" {{ default = "v1" }}
variable "fail_rate" {{ default = "0" }}
variable "fail_after" {{ default = "0" }}
variable "load" {{ default = 0 }}
variable "latency" {{ default = "0" }}
variable "steps" {{ default = [5, 25, 50, 100] }}
variable "tolerance" {{ default = 0.25 }}

service "web" {{
  replicas      = 2
  source        = "{app}"
  run           = "{run}"
  network       = {network}
  env           = {{ VERSION = var.version, PREVIEW_FAIL_RATE = var.fail_rate, PREVIEW_FAIL_AFTER_MS = var.fail_after, PREVIEW_EXTRA_LATENCY_MS = var.latency }}
  health        = {{ path = "/health", interval = "100ms" }}
  start_timeout = "5s"
  update        = {{ strategy = "canary" }}
  canary        = {{ steps = var.steps, interval = "{interval}", min_requests = 40, load = var.load, latency_tolerance = var.tolerance, request = {{ method = "POST", path = "/preview", body = jsonencode({{ markdown = "Hi *there*" }}) }} }}
}}

balancer "front" {{
  listen = {port}
  routes = {{ "/" = service.web }}
}}

output "slots" {{ value = service.web[*].url }}
"#,
        app = app.display()
    )
}

struct Env {
    t: Scratch,
    port: u16,
}

fn setup(interval: &str) -> Env {
    setup_with(interval, false)
}

fn setup_with(interval: &str, namespaces: bool) -> Env {
    setup_vars(interval, namespaces, &[])
}

fn setup_vars(interval: &str, namespaces: bool, vars: &[&str]) -> Env {
    let t = Scratch::new();
    let app = prebuilt_source(&t);
    let port = free_port();
    t.write("s.hcl", &stack(&app, port, interval, namespaces));
    let mut args = vec!["apply", "-auto-approve"];
    args.extend(vars);
    args.push("s.hcl");
    t.ok(&args);
    Env { t, port }
}

/// `apply -var version=VERSION` in the background, once its canary has started.
fn apply_until_canary_runs(e: &Env, version: &str) -> std::process::Child {
    let child =
        e.t.cmd(&[
            "apply",
            "-auto-approve",
            "-var",
            &format!("version={version}"),
            "s.hcl",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ctl = e.t.path().join(".pipeline/run/service.web.canary");
    assert!(
        wait_until(Duration::from_secs(30), || ctl.exists()),
        "the canary started"
    );
    child
}

/// `destroy`, then no process of the stack is left.
fn destroy_all(t: &Scratch) {
    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
    assert!(wait_until(Duration::from_secs(5), || t
        .processes()
        .is_empty()));
}

fn start_load(port: u16) -> load::Load {
    load::start(
        &format!("127.0.0.1:{port}"),
        "POST",
        "/preview",
        BODY,
        100,
        4,
        false,
        Duration::from_secs(90),
    )
}

fn conf(t: &Scratch) -> String {
    std::fs::read_to_string(
        t.path()
            .join(".pipeline/run/balancer.front/conf/nginx.conf"),
    )
    .unwrap()
}

/// (unix seconds, status, upstream) of every answer in the balancer's access log.
fn access_log(t: &Scratch) -> Vec<(f64, u16, String)> {
    let text = std::fs::read_to_string(
        t.path()
            .join(".pipeline/run/balancer.front/logs/access.log"),
    )
    .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.parse().ok()?,
                f.get(3)?.trim_end_matches(',').to_string(),
            ))
        })
        .collect()
}

fn slot_addrs(t: &Scratch) -> Vec<String> {
    let slots: Vec<String> = serde_json::from_str(&t.ok(&["output", "-json", "slots"])).unwrap();
    slots
        .iter()
        .map(|u| {
            u.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

/// The canary's report that `apply` named (`Canary report: PATH`): it and its JSON record
/// exist, and headless Chromium shows the verdict `outcome`, the evidence rows and charts with
/// points of both arms. Returns a line of figures.
fn check_report(t: &Scratch, text: &str, outcome: &str) -> String {
    let named = text
        .lines()
        .find_map(|l| l.strip_prefix("Canary report: "))
        .unwrap_or_else(|| panic!("apply named no canary report: {text}"));
    let html = t.path().join(named.trim());
    let reports = t.path().join(".pipeline/reports");
    assert!(
        html.starts_with(&reports) && html.extension().is_some_and(|x| x == "html"),
        "{}",
        html.display()
    );
    let json = html.with_extension("json");
    assert!(html.exists() && json.exists(), "{}", html.display());
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(rec["answers"].as_array().unwrap().len() > 100, "{rec}");
    assert!(rec["looks"].as_array().unwrap().len() > 5, "{rec}");
    let size = std::fs::metadata(&html).unwrap().len();
    let dom = chromium(
        &[
            "--virtual-time-budget=2000".into(),
            "--run-all-compositor-stages-before-draw".into(),
            "--dump-dom".into(),
        ],
        &format!("file://{}", html.display()),
    );
    assert!(
        dom.contains(&format!("data-outcome=\"{outcome}\"")),
        "{outcome}: {dom}"
    );
    assert!(dom.contains("Progressive canary of <code>service.web</code>"));
    for metric in ["latency", "errors", "4xx"] {
        assert!(
            dom.contains(&format!("data-metric=\"{metric}\"")),
            "no evidence row for {metric}"
        );
    }
    // Latency's test: Wilcoxon signed-rank on the windows' paired medians once there are 6,
    // Mann-Whitney on the answers before that; either way its statistic is shown.
    assert!(
        dom.contains("W+ = ") || dom.contains("U = "),
        "no signed-rank or Mann-Whitney statistic shown"
    );
    // No CPU or memory charts: the progressive canary does not sample them.
    assert!(!dom.contains("data-chart=\"cpu-time\""));
    assert!(!dom.contains("data-chart=\"memory-time\""));
    let mut seen = vec![];
    for chart in ["latency-ecdf", "latency-time", "errors-time"] {
        for arm in ["baseline", "candidate"] {
            let n = points(&dom, chart, arm).unwrap_or(0);
            assert!(n > 0, "chart {chart} has no {arm} points");
            seen.push(format!("{chart}/{arm} {n}"));
        }
    }
    let score = points(&dom, "score-time", "score").unwrap_or(0);
    assert!(score >= 5, "{score} looks in the score chart");
    // Each step's start and the end.
    let share = points(&dom, "traffic-share", "candidate").unwrap_or(0);
    assert!(share >= 3, "{share} points in the traffic share chart");
    format!(
        "report {size} bytes, {} charts; points: {}, score-time {score}, traffic-share {share}",
        dom.matches("<svg").count(),
        seen.join(", ")
    )
}

#[test]
fn a_good_candidate_is_promoted_step_by_step() {
    let e = setup("2s");
    let slots = slot_addrs(&e.t);
    let load = start_load(e.port);
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let out =
        e.t.run(&["apply", "-auto-approve", "-var", "version=v2", "s.hcl"]);
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    println!("{text}\napply took {took:?}; load: {}", report.summary());
    assert_eq!(out.status.code(), Some(0), "{text}");
    for step in [
        "5% of the traffic",
        "25% of the traffic",
        "50% of the traffic",
        "canary passed",
    ] {
        assert!(text.contains(step), "{step}: {text}");
    }
    // Every step ran its interval.
    assert!(took >= Duration::from_secs(6), "{took:?}");
    println!("{}", check_report(&e.t, &text, "pass"));
    assert_eq!(
        report.failed,
        0,
        "{:?}",
        &report.errors[..report.errors.len().min(5)]
    );
    // The candidate really got traffic directly (not through the slots) while it ran.
    let log = access_log(&e.t);
    let direct = log
        .iter()
        .filter(|(_, _, u)| !slots.contains(u) && u != "-")
        .count();
    println!("answers straight from the candidate during the canary: {direct}");
    assert!(direct > 40, "{direct}");
    // Promoted: everything is v2, through the same slots; the balancer runs the stack's config.
    assert_eq!(
        versions_through(e.port, 20).keys().collect::<Vec<_>>(),
        vec!["v2"]
    );
    assert!(!conf(&e.t).contains("# canary"), "{}", conf(&e.t));
    assert!(!e
        .t
        .path()
        .join(".pipeline/run/balancer.front/conf/nginx.conf.stable")
        .exists());
    let plan =
        e.t.run(&["plan", "-detailed-exitcode", "-var", "version=v2", "s.hcl"]);
    assert_eq!(plan.status.code(), Some(0), "{}", s(&plan.stdout));
    // One generation per instance is left (the old ones were drained and stopped).
    let st = state(&e.t);
    for i in 0..2 {
        let a = &st.resources[&format!("service.web[{i}]")].attrs;
        assert!(a.get("standby_generation").is_none(), "{a:?}");
        assert!(a.get("canary_aborted").is_none(), "{a:?}");
    }
    destroy_all(&e.t);
}

#[test]
fn a_candidate_that_starts_failing_is_stopped_within_one_interval() {
    let e = setup("3s");
    let slots = slot_addrs(&e.t);
    let load = start_load(e.port);
    std::thread::sleep(Duration::from_millis(500));
    // Half of its answers are 500s from 4 s after its first request: during the 25 % step.
    let out = e.t.run(&[
        "apply",
        "-auto-approve",
        "-var",
        "version=v2",
        "-var",
        "fail_rate=0.5",
        "-var",
        "fail_after=4000",
        "s.hcl",
    ]);
    std::thread::sleep(Duration::from_millis(1000));
    let report = load.stop();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    println!("{text}\nload: {}", report.summary());
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("canary aborted at"), "{text}");
    // The sequential test (every 0.5 s) or the step's judgement (at its end) found it.
    assert!(
        text.contains("`errors` regressed") || text.contains("critical metric failed: errors"),
        "{text}"
    );
    // The evidence: its record and the HTML report with the failing verdict and charts.
    println!("{}", check_report(&e.t, &text, "fail"));

    // From the access log: the candidate's answers, its first error, its last answer.
    let log = access_log(&e.t);
    let cand: Vec<&(f64, u16, String)> = log
        .iter()
        .filter(|(_, _, u)| !slots.contains(u) && u != "-")
        .collect();
    let first_err = cand
        .iter()
        .find(|(_, st, _)| *st >= 500)
        .map(|x| x.0)
        .expect("the candidate failed some requests");
    let last = cand.iter().map(|x| x.0).fold(0.0, f64::max);
    let failed = cand.iter().filter(|(_, st, _)| *st >= 500).count();
    println!(
        "candidate: {} answers, {failed} of them 5xx; its traffic stopped {:.2} s after its first 5xx; clients saw {} failed requests",
        cand.len(),
        last - first_err,
        report.failed
    );
    assert!(
        last - first_err <= 3.0,
        "traffic to the candidate went on for {:.2} s",
        last - first_err
    );
    // Every failed request was the candidate's (the old version answered all else).
    assert_eq!(
        report.failed as usize,
        failed,
        "{:?}",
        &report.errors[..report.errors.len().min(5)]
    );

    // The old version serves everything; the balancer is back to the stack's config.
    assert_eq!(
        versions_through(e.port, 20).keys().collect::<Vec<_>>(),
        vec!["v1"]
    );
    assert!(!conf(&e.t).contains("# canary"));
    // The aborted release is recorded, and the next plan says the stack is not converged.
    let st = state(&e.t);
    let a = &st.resources["service.web[0]"].attrs;
    assert!(
        a["canary_aborted"]["reason"]
            .as_str()
            .unwrap()
            .contains("errors"),
        "{a:?}"
    );
    let plan = e.t.run(&[
        "plan",
        "-detailed-exitcode",
        "-var",
        "version=v2",
        "-var",
        "fail_rate=0.5",
        "-var",
        "fail_after=4000",
        "s.hcl",
    ]);
    let ptext = s(&plan.stdout);
    println!("{ptext}");
    assert_eq!(plan.status.code(), Some(2), "{ptext}");
    assert!(
        ptext.contains("the last canary of this change was aborted at"),
        "{ptext}"
    );
    // Another change is not blamed for it.
    let other = e.t.ok(&["plan", "-var", "version=v3", "s.hcl"]);
    assert!(other.contains("progressive canary:"), "{other}");
    assert!(!other.contains("was aborted"), "{other}");
    // Nothing of the stack, the candidate included, is left running.
    destroy_all(&e.t);
}

#[test]
fn promote_and_rollback_control_a_running_canary() {
    let e = setup("60s");
    let load = start_load(e.port);
    // promote: skips the remaining steps of a 4-minute canary.
    let t0 = Instant::now();
    let child = apply_until_canary_runs(&e, "v2");
    std::thread::sleep(Duration::from_secs(2));
    let p = e.t.run(&["promote", "web"]);
    assert_eq!(p.status.code(), Some(0), "{}", s(&p.stderr));
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("promoted by `pipeline promote`"), "{text}");
    assert!(took < Duration::from_secs(40), "{took:?}");
    assert_eq!(
        versions_through(e.port, 10).keys().collect::<Vec<_>>(),
        vec!["v2"]
    );

    // rollback: stops it; v2 keeps serving, v3 is recorded as aborted.
    let child = apply_until_canary_runs(&e, "v3");
    std::thread::sleep(Duration::from_secs(2));
    let r = e.t.run(&["rollback", "web"]);
    assert_eq!(r.status.code(), Some(0), "{}", s(&r.stderr));
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("stopped by `pipeline rollback`"), "{text}");
    let report = load.stop();
    println!("load over both: {}", report.summary());
    assert_eq!(report.failed, 0);
    assert_eq!(
        versions_through(e.port, 10).keys().collect::<Vec<_>>(),
        vec!["v2"]
    );
    // With no canary running, promote says so.
    let p = e.t.run(&["promote", "web"]);
    assert_eq!(p.status.code(), Some(1));
    assert!(
        s(&p.stderr).contains("no canary of service.web is running"),
        "{}",
        s(&p.stderr)
    );
    destroy_all(&e.t);
}

/// An app that cannot choose its port: both arms listen on 3000, each generation in a network
/// namespace of its own (needs root, which CI has); the candidate is reached at its own address.
#[test]
fn a_fixed_port_app_in_namespaces_gets_its_canary_too() {
    let e = setup_with("2s", true);
    let slots = slot_addrs(&e.t);
    let load = start_load(e.port);
    std::thread::sleep(Duration::from_millis(500));
    let out =
        e.t.run(&["apply", "-auto-approve", "-var", "version=v2", "s.hcl"]);
    let report = load.stop();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    println!(
        "{text}
load: {}",
        report.summary()
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(report.failed, 0);
    // The candidates were reached through slots of their own, as the baseline through its.
    let direct: Vec<String> = access_log(&e.t)
        .into_iter()
        .map(|(_, _, u)| u)
        .filter(|u| !slots.contains(u) && u != "-")
        .collect();
    assert!(direct.len() > 40, "{}", direct.len());
    assert!(
        direct.iter().all(|u| u.starts_with("127.0.0.1:")),
        "{direct:?}"
    );
    assert_eq!(
        versions_through(e.port, 10).keys().collect::<Vec<_>>(),
        vec!["v2"]
    );
    // Promoted: each slot forwards to its new generation at a namespace address, port 3000.
    for i in 0..2 {
        let cfg: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                e.t.path()
                    .join(format!(".pipeline/run/service.web_{i}_/slot/slot.json")),
            )
            .unwrap(),
        )
        .unwrap();
        let active = cfg["active"].as_str().unwrap_or_default();
        assert!(
            active.starts_with("10.213.") && active.ends_with(":3000"),
            "{cfg}"
        );
    }
    destroy_all(&e.t);
}

/// A SIGKILL of the apply in the middle of a canary: the next plan sees the shifted balancer as
/// drift and the update still to do; the next apply converges, and nothing of the killed
/// canary is left running.
#[test]
fn a_canary_killed_mid_way_is_converged_by_the_next_apply() {
    let e = setup("60s");
    let ctl = e.t.path().join(".pipeline/run/service.web.canary");
    let mut child =
        e.t.cmd(&["apply", "-auto-approve", "-var", "version=v2", "s.hcl"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || ctl.exists()),
        "the canary started"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(conf(&e.t).contains("# canary"), "traffic was shifted");
    child.kill().unwrap();
    child.wait().unwrap();
    let plan =
        e.t.run(&["plan", "-detailed-exitcode", "-var", "version=v2", "s.hcl"]);
    let ptext = s(&plan.stdout);
    println!("{ptext}");
    assert_eq!(plan.status.code(), Some(2), "{ptext}");
    assert!(ptext.contains("balancer.front"), "{ptext}");
    // Converge with a short canary this time.
    let app = e.t.path().join("app");
    e.t.write("s.hcl", &stack(&app, e.port, "1s", false));
    let load = start_load(e.port);
    let out =
        e.t.run(&["apply", "-auto-approve", "-var", "version=v2", "s.hcl"]);
    let report = load.stop();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    println!("{text}\nload: {}", report.summary());
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!conf(&e.t).contains("# canary"));
    assert_eq!(
        versions_through(e.port, 10).keys().collect::<Vec<_>>(),
        vec!["v2"]
    );
    let plan =
        e.t.run(&["plan", "-detailed-exitcode", "-var", "version=v2", "s.hcl"]);
    assert_eq!(plan.status.code(), Some(0), "{}", s(&plan.stdout));
    // Two slots, two apps, nginx: each with its supervisor; no generation of the killed run.
    let gens: Vec<_> = (0..2)
        .flat_map(|i| {
            std::fs::read_dir(e.t.path().join(format!(".pipeline/run/service.web_{i}_")))
                .unwrap()
                .flatten()
                .map(|d| d.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("gen-"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(gens.len(), 2, "{gens:?}");
    destroy_all(&e.t);
}

/// A stack nobody sends traffic to gets no verdict, so the release is not promoted; with
/// `canary.load` the canary sends its own requests through the balancer and can decide.
#[test]
fn without_traffic_there_is_no_promotion_and_canary_load_supplies_it() {
    let e = setup("2s");
    let out =
        e.t.run(&["apply", "-auto-approve", "-var", "version=v2", "s.hcl"]);
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    println!("{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("not enough evidence"), "{text}");
    assert_eq!(
        versions_through(e.port, 10).keys().collect::<Vec<_>>(),
        vec!["v1"]
    );

    let out = e.t.run(&[
        "apply",
        "-auto-approve",
        "-var",
        "version=v2",
        "-var",
        "load=60",
        "s.hcl",
    ]);
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    println!("{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("synthetic load through the balancer"),
        "{text}"
    );
    assert_eq!(
        versions_through(e.port, 10).keys().collect::<Vec<_>>(),
        vec!["v2"]
    );
    destroy_all(&e.t);
}

/// A canary needs a balancer to shift: without one the update is refused before any traffic,
/// saying what to do, and the old version keeps running.
#[test]
fn a_canary_without_a_balancer_says_what_to_do() {
    let t = Scratch::new();
    let app = prebuilt_source(&t);
    let text = stack(&app, free_port(), "1s", false);
    let text = &text[..text.find("balancer \"front\"").unwrap()];
    t.write("s.hcl", text);
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let out = t.run(&["apply", "-auto-approve", "-var", "version=v2", "s.hcl"]);
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("no running balancer routes to service.web")
            && text.contains("strategy = \"rolling\""),
        "{text}"
    );
    let st = state(&t);
    let a = &st.resources["service.web[0]"].attrs;
    assert_eq!(a["env"]["VERSION"], "v1");
    assert_eq!(a["canary_aborted"]["step"], 0);
    destroy_all(&t);
    assert!(wait_until(Duration::from_secs(5), || t
        .processes()
        .is_empty()));
}

/// The sequential test at 200 requests/s through the balancer, arms at 50 % each (100 req/s
/// per arm), one step long enough that only the sequential test can decide within it: a
/// candidate answering 5 % errors (baseline 0.5 %) and one 25 % slower (20 → 25 ms, tolerance
/// 10 %) are both stopped by it. The time each took is printed for the notes.
#[test]
fn errors_and_latency_regressions_are_caught_live_by_the_sequential_test() {
    let base = [
        "-var",
        "steps=[50, 100]",
        "-var",
        "tolerance=0.1",
        "-var",
        "latency=20",
    ];
    // Baseline: 0.5 % errors, 20 ms.
    let mut first = base.to_vec();
    first.extend(["-var", "fail_rate=0.005"]);
    let e = setup_vars("60s", false, &first);
    let cases: [(&str, &[&str]); 2] = [
        (
            "5 % errors",
            &["-var", "fail_rate=0.05", "-var", "version=v2"],
        ),
        (
            "+25 % latency",
            &[
                "-var",
                "fail_rate=0.005",
                "-var",
                "latency=25",
                "-var",
                "version=v3",
            ],
        ),
    ];
    for (what, vars) in cases {
        let load = load::start(
            &format!("127.0.0.1:{}", e.port),
            "POST",
            "/preview",
            BODY,
            200,
            8,
            false,
            Duration::from_secs(90),
        );
        std::thread::sleep(Duration::from_millis(300));
        let mut args = vec!["apply", "-auto-approve"];
        args.extend(base);
        args.extend(vars);
        args.push("s.hcl");
        let out = e.t.run(&args);
        let report = load.stop();
        let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
        let line = text
            .lines()
            .rfind(|l| l.contains("regressed after"))
            .unwrap_or_default()
            .to_string();
        println!("{what}: {line}\n  load: {}", report.summary());
        assert_eq!(out.status.code(), Some(1), "{text}");
        let metric = if what.contains("errors") {
            "`errors`"
        } else {
            "`latency`"
        };
        assert!(line.contains(metric), "{what}: {text}");
    }
    destroy_all(&e.t);
}

/// Ctrl-C during a canary stops it at the next look, like `pipeline rollback`: the candidate
/// gets no traffic, the old version serves, and the release is recorded as aborted.
#[test]
fn ctrl_c_during_a_canary_aborts_it_at_once() {
    let e = setup("60s");
    let load = start_load(e.port);
    let child = apply_until_canary_runs(&e, "v2");
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    // SAFETY: a signal to the apply this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    let report = load.stop();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    println!(
        "{text}\nexited {took:?} after SIGINT; load: {}",
        report.summary()
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("interrupted (Ctrl-C)"), "{text}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(report.failed, 0);
    assert!(!conf(&e.t).contains("# canary"));
    assert_eq!(
        versions_through(e.port, 10).keys().collect::<Vec<_>>(),
        vec!["v1"]
    );
    let st = state(&e.t);
    assert!(
        st.resources["service.web[0]"].attrs["canary_aborted"]["reason"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    destroy_all(&e.t);
}

/// Marked processes of the stack's service instances that are no recorded generation: a
/// candidate generation or a canary slot.
fn candidates_running(t: &Scratch) -> Vec<(u32, String)> {
    let st = state(t);
    t.marked()
        .into_iter()
        .filter(|(_, dir)| {
            let (inst, sub) = dir.split_once('/').unwrap_or((dir, ""));
            let recorded: Vec<u64> = st
                .resources
                .iter()
                .filter(|(a, _)| pipeline_providers::local::sanitize(a) == inst)
                .flat_map(|(_, r)| {
                    ["generation", "standby_generation"]
                        .into_iter()
                        .filter_map(|k| r.attrs.get(k).and_then(|g| g.as_u64()))
                })
                .collect();
            sub == "canary-slot"
                || sub
                    .strip_prefix("gen-")
                    .and_then(|g| g.parse::<u64>().ok())
                    .is_some_and(|g| !recorded.contains(&g))
        })
        .collect()
}

/// Issue 8, item 6: a SIGKILL of the apply mid-canary left its candidate generations and
/// canary slots running after the next apply (which had nothing to change) and after destroy.
#[test]
fn a_canary_killed_mid_way_leaves_no_candidate_after_the_next_apply_and_nothing_after_destroy() {
    let e = setup("60s");
    let mut child = apply_until_canary_runs(&e, "v2");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(conf(&e.t).contains("# canary"), "traffic was shifted");
    child.kill().unwrap();
    child.wait().unwrap();
    let left = candidates_running(&e.t);
    assert!(
        left.iter().any(|(_, d)| d.ends_with("canary-slot")),
        "the killed canary left its candidates: {left:?}"
    );

    // The next apply of what is recorded (v1): nothing of the service to change.
    let out = e.t.run(&["apply", "-auto-approve", "s.hcl"]);
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    println!("{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(candidates_running(&e.t), vec![], "{text}");
    assert!(
        text.contains("canary slot") || text.contains("canary-slot"),
        "the stopped leftovers are reported: {text}"
    );
    assert!(!conf(&e.t).contains("# canary"), "{}", conf(&e.t));
    assert_eq!(
        versions_through(e.port, 10).keys().collect::<Vec<_>>(),
        vec!["v1"]
    );
    let plan = e.t.run(&["plan", "-detailed-exitcode", "s.hcl"]);
    assert_eq!(plan.status.code(), Some(0), "{}", s(&plan.stdout));

    // Killed again, then destroy straight away: no process, no run dir.
    let mut child = apply_until_canary_runs(&e, "v2");
    std::thread::sleep(Duration::from_millis(1000));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!candidates_running(&e.t).is_empty());
    let out = e.t.run(&["destroy", "-auto-approve", "s.hcl"]);
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(e.t.marked(), vec![], "{text}");
    let run = e.t.path().join(".pipeline/run");
    assert!(
        !run.exists(),
        "no run dir is left: {:?}",
        std::fs::read_dir(&run).map(|rd| rd.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
}

/// Issue 8, item 6: `status` shows a running canary's candidates while they run.
#[test]
fn status_shows_a_running_canarys_candidates() {
    let e = setup("60s");
    let mut child = apply_until_canary_runs(&e, "v2");
    let out = e.t.ok(&["status", "-json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    for i in 0..2 {
        let addr = format!("service.web[{i}]");
        let cand = rows
            .iter()
            .find(|r| r["address"] == addr.as_str() && r["canary"] == true)
            .unwrap_or_else(|| panic!("no candidate row for {addr}: {out}"));
        assert_eq!(cand["generation"], 2, "{cand}");
        assert_eq!(cand["running"], true, "{cand}");
        let pid = cand["pid"].as_u64().unwrap() as u32;
        assert!(
            e.t.marked()
                .iter()
                .any(|(p, d)| *p == pid && d.ends_with("gen-2")),
            "the pid shown is the candidate's: {cand}"
        );
    }
    let text = e.t.ok(&["status"]);
    assert!(text.contains("canary"), "{text}");
    e.t.ok(&["rollback", "web"]);
    child.wait().unwrap();
    assert!(
        !e.t.ok(&["status", "-json"]).contains("\"canary\":true"),
        "once the canary is over no candidate is shown"
    );
    destroy_all(&e.t);
}

/// This work dir's network namespaces (`ip netns list`).
fn namespaces(t: &Scratch) -> Vec<String> {
    let prefix = pipeline_providers::local::netns_prefix(&t.path().join(".pipeline"));
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let mut v: Vec<String> = s(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Removes this work dir's namespaces even when the test fails (after Scratch stopped the
/// processes inside).
struct NamespaceGuard(std::path::PathBuf);

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let prefix = pipeline_providers::local::netns_prefix(&self.0);
        let out = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| s(&o.stdout))
            .unwrap_or_default();
        for n in out.lines().filter_map(|l| l.split_whitespace().next()) {
            if n.starts_with(&prefix) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "pids", n])
                    .output()
                    .map(|o| {
                        for p in s(&o.stdout).split_whitespace() {
                            let _ = std::process::Command::new("kill").args(["-9", p]).status();
                        }
                    });
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", n])
                    .status();
            }
        }
    }
}

/// Issue 8, item 6 with namespaced apps: the killed canary's candidates ran in namespaces of
/// their own; the next apply removes those too, and destroy leaves none.
#[test]
fn a_canary_killed_mid_way_leaves_no_candidate_namespace_after_the_next_apply() {
    let e = setup_with("60s", true);
    let _ns = NamespaceGuard(e.t.path().join(".pipeline"));
    let mut child = apply_until_canary_runs(&e, "v2");
    std::thread::sleep(Duration::from_millis(1000));
    child.kill().unwrap();
    child.wait().unwrap();
    let before = namespaces(&e.t);
    assert_eq!(
        before.iter().filter(|n| n.ends_with("-g2")).count(),
        2,
        "the candidates run in namespaces: {before:?}"
    );
    let out = e.t.run(&["apply", "-auto-approve", "s.hcl"]);
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(candidates_running(&e.t), vec![], "{text}");
    let after = namespaces(&e.t);
    assert_eq!(after.len(), 2, "{after:?}\n{text}");
    assert!(after.iter().all(|n| n.ends_with("-g1")), "{after:?}");
    assert_eq!(
        versions_through(e.port, 10).keys().collect::<Vec<_>>(),
        vec!["v1"]
    );
    destroy_all(&e.t);
    assert_eq!(namespaces(&e.t), Vec::<String>::new());
}

/// Issue 11: an alert rule of a monitor that fires on the candidate stops the canary at its next
/// look, as a failed judge does. Both versions fail 20 % of their requests: the judge compares
/// the candidate with the baseline and sees no regression; the rule (an absolute bound, like an
/// SLO) sees the candidate above it.
#[test]
fn an_alert_firing_on_the_candidate_aborts_a_canary_the_judge_lets_pass() {
    let t = Scratch::new();
    let app = prebuilt_source(&t);
    let port = free_port();
    let dash = free_port();
    t.write(
        "s.hcl",
        &format!(
            r#"{}
monitor "dash" {{
  listen   = {dash}
  interval = "100ms"
  alerts   = {{
    errors = {{ service = "web", metric = "error_ratio", above = 0.1, window = "4s", min_requests = 10 }}
  }}
}}
"#,
            stack(&app, port, "20s", false)
        ),
    );
    t.ok(&["apply", "-auto-approve", "-var", "fail_rate=0.2", "s.hcl"]);
    let slots = slot_addrs(&t);
    let load = start_load(port);
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let out = t.run(&[
        "apply",
        "-auto-approve",
        "-var",
        "version=v2",
        "-var",
        "fail_rate=0.2",
        "s.hcl",
    ]);
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(1000));
    let report = load.stop();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    println!("{text}\napply took {took:?}; load: {}", report.summary());
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("canary aborted at"), "{text}");
    // The alert stopped it, not the judge, and the reason names the rule and the instance.
    assert!(!text.contains("regressed"), "{text}");
    let reason = text
        .lines()
        .find(|l| l.contains("canary aborted at"))
        .unwrap()
        .to_string();
    assert!(
        reason.contains("alert `errors` of monitor.dash fired on instance 127.0.0.1:"),
        "{reason}"
    );

    let log = access_log(&t);
    let cand: Vec<&(f64, u16, String)> = log
        .iter()
        .filter(|(_, _, u)| !slots.contains(u) && u != "-")
        .collect();
    let candidates: std::collections::BTreeSet<&str> =
        cand.iter().map(|(_, _, u)| u.as_str()).collect();
    assert!(
        candidates
            .iter()
            .any(|c| reason.contains(&format!("{c}:")) || reason.contains(&format!("{c} "))),
        "{candidates:?}: {reason}"
    );
    let failed = cand.iter().filter(|(_, st, _)| *st >= 500).count();
    let span = cand.iter().map(|x| x.0).fold(0.0, f64::max)
        - cand.iter().map(|x| x.0).fold(f64::MAX, f64::min);
    println!(
        "candidate: {} answers, {failed} of them 5xx before the alert stopped it, over {span:.2} s of traffic",
        cand.len()
    );
    assert!(failed >= 1, "the candidate failed requests");

    // The record and the recorded release say which alert on which instance.
    let reports = t.path().join(".pipeline/reports");
    let rec = std::fs::read_dir(&reports)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rec).unwrap()).unwrap();
    assert!(
        rec["result"].as_str().unwrap().contains("alert `errors`"),
        "{}",
        rec["result"]
    );
    let st = state(&t);
    let a = &st.resources["service.web[0]"].attrs;
    assert!(
        a["canary_aborted"]["reason"]
            .as_str()
            .unwrap()
            .contains("alert `errors`"),
        "{a:?}"
    );
    // The old version serves everything; the balancer is back to the stack's config.
    assert_eq!(
        versions_through(port, 20).keys().collect::<Vec<_>>(),
        vec!["v1"]
    );
    assert!(!conf(&t).contains("# canary"));
    destroy_all(&t);
}
