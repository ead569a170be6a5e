//! `pipeline canary BASE CANDIDATE` against the real sample service behind real nginx:
//! master vs master passes, master vs a revision that answers 20% 500s fails, and a revision
//! that does not exist is a clear error; each time nothing is left running. The HTML report is
//! opened in headless Chromium.

mod common;
use common::chromium::{chromium, points};
use common::*;
use std::time::{Duration, Instant};

/// A repository with the sample service and one branch per behaviour (by `version.txt`):
/// master serves well; broken answers 20 % 500s; nobuild fails its build; crash exits at
/// once; deaf never listens.
fn setup() -> Scratch {
    let t = Scratch::new();
    let repo = prebuilt_source(&t);
    let git = |args: &[&str]| common::git(&repo, args);
    git(&["init", "-q", "-b", "master"]);
    std::fs::write(repo.join("version.txt"), "good").unwrap();
    std::fs::write(
        repo.join("build.sh"),
        r#"if [ "$(cat version.txt)" = nobuild ]; then
  echo "   Compiling preview v0.1.0"
  echo "error[E0425]: cannot find value \`widget\` in this scope" >&2
  echo " --> src/main.rs:3:5" >&2
  exit 1
fi
echo built
"#,
    )
    .unwrap();
    git(&["add", "."]);
    git(&["commit", "-qm", "good"]);
    for branch in ["broken", "nobuild", "crash", "deaf"] {
        git(&["checkout", "-q", "-b", branch, "master"]);
        std::fs::write(repo.join("version.txt"), branch).unwrap();
        git(&["commit", "-qam", branch]);
    }
    git(&["checkout", "-q", "master"]);
    t.write(
        "s.hcl",
        r##"service "preview" {
  source        = "app"
  build         = "sh build.sh"
  run           = "case \"$(cat version.txt)\" in broken) export PREVIEW_FAIL_RATE=0.2;; crash) echo 'fatal: cannot read config.toml' >&2; exit 3;; deaf) exec sleep 600;; esac; exec ./preview --port {{port}}"
  health        = { path = "/health", interval = "100ms" }
  start_timeout = "3s"
  canary = {
    rate    = 100
    request = { method = "POST", path = "/preview", body = jsonencode({ markdown = "# Canary\n\nSome *text* and a list:\n\n- one\n- two\n" }) }
  }
}
"##,
    );
    t
}

/// `pipeline canary master master --json` with `extra` flags: exit 0; returns the JSON.
fn passing_canary_json(t: &Scratch, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["canary", "master", "master", "--stack", "s.hcl", "--json"];
    args.extend(extra);
    let out = t.run(&args);
    let stdout = s(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", s(&out.stderr));
    serde_json::from_str(&stdout).unwrap()
}

/// No verdict: exit 1, nothing on stdout, no report; returns stderr.
fn no_verdict(t: &Scratch, candidate: &str) -> String {
    let t0 = Instant::now();
    let out = t.run(&[
        "canary",
        "master",
        candidate,
        "--stack",
        "s.hcl",
        "--duration",
        "2s",
    ]);
    let err = s(&out.stderr);
    println!("master vs {candidate} ({:?}):\n{err}", t0.elapsed());
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(s(&out.stdout).is_empty(), "no verdict on garbage");
    assert!(!t.path().join(".pipeline/canary-report.html").exists());
    err
}

fn nothing_left(t: &Scratch) {
    assert!(
        !t.path().join(".pipeline/canary").exists(),
        "the canary's stack and state are gone"
    );
    assert!(
        wait_until(std::time::Duration::from_secs(5), || t
            .processes()
            .is_empty()),
        "processes left: {:?}",
        t.processes()
    );
}

#[test]
fn master_vs_master_passes_and_master_vs_broken_fails() {
    let t = setup();
    let out = t.run(&[
        "canary",
        "master",
        "master",
        "--stack",
        "s.hcl",
        "--duration",
        "6s",
    ]);
    let text = s(&out.stdout);
    println!("{text}");
    assert_eq!(out.status.code(), Some(0), "{text}{}", s(&out.stderr));
    assert!(text.contains("): Pass."), "{text}");
    for row in ["latency ", "errors ", "cpu ", "memory "] {
        assert!(
            text.lines().any(|l| l.starts_with(row)),
            "no {row}row:\n{text}"
        );
    }
    // The HTML report, at its default place, as a browser renders it.
    let html = t.path().join(".pipeline/canary-report.html");
    assert!(
        text.contains(&format!("Report: {}", html.display())),
        "{text}"
    );
    let size = std::fs::metadata(&html).unwrap().len();
    let url = format!("file://{}", html.display());
    let dom = chromium(
        &[
            "--virtual-time-budget=2000".into(),
            "--run-all-compositor-stages-before-draw".into(),
            "--dump-dom".into(),
        ],
        &url,
    );
    assert!(
        dom.contains("data-outcome=\"pass\"") && dom.contains(">PASS<"),
        "{dom}"
    );
    let svgs = dom.matches("<svg").count();
    assert!(svgs >= 7, "{svgs} charts");
    let mut seen = vec![];
    for chart in [
        "latency-ecdf",
        "latency-time",
        "errors-time",
        "cpu-time",
        "memory-time",
    ] {
        for arm in ["baseline", "candidate"] {
            let n = points(&dom, chart, arm).unwrap_or(0);
            assert!(n > 0, "chart {chart} has no {arm} points");
            seen.push(format!("{chart}/{arm}: {n}"));
        }
    }
    assert!(points(&dom, "score-time", "score").unwrap_or(0) >= 10);
    for metric in ["latency", "errors", "cpu", "memory"] {
        assert!(
            dom.contains(&format!("data-metric=\"{metric}\"")),
            "no evidence row for {metric}"
        );
    }
    assert!(dom.contains("U = "), "no Mann-Whitney statistic shown");
    println!(
        "report {size} bytes, {svgs} charts, points: {}",
        seen.join(", ")
    );
    let shots = tempfile::Builder::new()
        .prefix("canary-report-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
    let shot = shots.join("canary-report.png");
    chromium(
        &[
            "--virtual-time-budget=2000".into(),
            "--run-all-compositor-stages-before-draw".into(),
            format!("--screenshot={}", shot.display()),
            "--window-size=1300,2400".into(),
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 50_000, "screenshot is only {} bytes", png.len());
    println!("report screenshot: {}", shot.display());
    nothing_left(&t);

    // 30 s are asked for; the sequential test stops it as soon as the error rate is clearly worse.
    let t0 = std::time::Instant::now();
    let out = t.run(&[
        "canary",
        "master",
        "broken",
        "--stack",
        "s.hcl",
        "--duration",
        "30s",
        "--rate",
        "100",
        "--json",
        "--report",
        "broken.html",
    ]);
    let took = t0.elapsed();
    println!("master vs broken took {took:?}: {}", s(&out.stderr));
    assert!(
        s(&out.stderr).contains("stopped early after"),
        "{}",
        s(&out.stderr)
    );
    assert!(took < std::time::Duration::from_secs(25), "it ran {took:?}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        s(&out.stdout),
        s(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(s(&out.stdout).trim()).unwrap();
    assert_eq!(v["verdict"]["outcome"], "fail");
    assert!(
        v["verdict"]["reason"]
            .as_str()
            .unwrap()
            .contains("sequential test"),
        "{v}"
    );
    let errors = v["verdict"]["per_metric"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "errors")
        .unwrap();
    assert_eq!(errors["status"], "fail", "{errors}");
    assert_eq!(errors["baseline"]["proportion"]["events"], 0, "{errors}");
    // The sequential test stops within a couple of seconds: a handful of errors is enough.
    assert!(
        errors["candidate"]["proportion"]["events"]
            .as_u64()
            .unwrap()
            >= 5,
        "{errors}"
    );
    // The evidence: z, a confidence interval of the rate difference above 0.
    let ev = |name: &str| {
        v["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no {name} evidence: {v}"))
            .clone()
    };
    let e = ev("errors");
    assert_eq!(e["statistic"]["name"], "z", "{e}");
    assert!(e["interval"]["lower"].as_f64().unwrap() > 0.0, "{e}");
    // CPU and memory of each arm's app processes, sampled every 0.5 s while load ran.
    for name in ["cpu", "memory"] {
        let m = ev(name);
        assert_eq!(m["critical"], false, "{m}");
        for arm in ["baseline", "candidate"] {
            let n = m["n"][arm].as_u64().unwrap_or(0);
            // The early stop comes after ~2 s of traffic: a sample every 0.5 s.
            assert!(n >= 2, "{name} of the {arm}: {n} samples: {m}");
        }
        println!(
            "{name}: {} / {}",
            m["summary"]["baseline"], m["summary"]["candidate"]
        );
    }
    // Time series: windows, resource samples, and the looks that ended with the early stop.
    let series = &v["series"];
    assert!(series["windows"].as_array().unwrap().len() >= 3, "{series}");
    assert!(series["usage"].as_array().unwrap().len() >= 2, "{series}");
    let looks = series["looks"].as_array().unwrap();
    assert_eq!(
        looks.last().unwrap()["decision"],
        "fail: errors",
        "{series}"
    );
    assert_eq!(v["early_stop"]["metric"], "errors");
    // The report is written for a failed canary too, where it was asked for.
    let html = std::fs::read_to_string(t.path().join("broken.html")).unwrap();
    assert_eq!(
        v["report_file"].as_str().unwrap(),
        t.path().join("broken.html").display().to_string()
    );
    assert!(html.contains("data-outcome=\"fail\""), "{html}");
    assert!(html.contains("Stopped early after"));
    nothing_left(&t);
}

#[test]
fn a_revision_that_does_not_exist_is_a_clear_error() {
    let t = setup();
    let out = t.run(&[
        "canary",
        "master",
        "no-such-branch",
        "--stack",
        "s.hcl",
        "--duration",
        "2s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = s(&out.stderr);
    assert!(
        err.contains("service.candidate[0]: revision \"no-such-branch\" does not exist"),
        "{err}"
    );
    assert!(err.contains("= note: no verdict"), "{err}");
    assert!(s(&out.stdout).is_empty(), "no verdict on garbage");
    nothing_left(&t);
}

#[test]
fn an_endpoint_the_baseline_does_not_serve_gives_no_verdict() {
    let t = setup();
    let out = t.run(&[
        "canary",
        "master",
        "master",
        "--stack",
        "s.hcl",
        "--duration",
        "2s",
        "--method",
        "GET",
        "--path",
        "/nope",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = s(&out.stderr);
    for want in [
        "error: the baseline (revision `master`) itself fails ",
        " requests to GET /nope (404 × ",
        "and so does the candidate (revision `master`: 404 × ",
        "; no verdict",
    ] {
        assert!(err.contains(want), "{want}:\n{err}");
    }
    assert!(
        err.contains("= help: the endpoint must work on the baseline"),
        "{err}"
    );
    assert!(!t.path().join(".pipeline/canary-report.html").exists());
    nothing_left(&t);
}

#[test]
fn a_candidate_that_does_not_build_gives_no_verdict() {
    let t = setup();
    let err = no_verdict(&t, "nobuild");
    for want in [
        "error: the candidate (revision `nobuild`) did not build, so there is no verdict",
        "`sh build.sh` failed (exit status: 1)",
        "  | error[E0425]: cannot find value `widget` in this scope",
        "  |  --> src/main.rs:3:5",
        "= help: fix the build of `nobuild`",
    ] {
        assert!(err.contains(want), "{want}:\n{err}");
    }
    assert!(
        !err.contains(".pipeline/canary/"),
        "no path that is gone: {err}"
    );
    nothing_left(&t);
}

#[test]
fn a_candidate_that_never_becomes_healthy_gives_no_verdict() {
    let t = setup();
    // Exits at once.
    let err = no_verdict(&t, "crash");
    for want in [
        "error: the candidate (revision `crash`) exited before it became healthy, so there is no verdict",
        "  | fatal: cannot read config.toml",
        "= help: start revision `crash` by hand",
    ] {
        assert!(err.contains(want), "{want}:\n{err}");
    }
    nothing_left(&t);
    // Runs but never listens: start_timeout (3 s) ends it.
    let t0 = Instant::now();
    let err = no_verdict(&t, "deaf");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    for want in [
        "error: the candidate (revision `deaf`) did not become healthy, so there is no verdict",
        "was not healthy after 3s",
        "raise `start_timeout`",
    ] {
        assert!(err.contains(want), "{want}:\n{err}");
    }
    nothing_left(&t);
}

/// The fields of the `--simulate` table's row for `scenario` (columns are 2+ spaces apart).
fn row(table: &str, scenario: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|l| l.starts_with(scenario))
        .unwrap_or_else(|| panic!("no row {scenario}:\n{table}"));
    line.split("  ")
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn simulate_prints_the_judge_s_operating_characteristics() {
    let t = Scratch::new();
    let out = t.run(&["canary", "--simulate"]);
    let table = s(&out.stdout);
    println!("{table}");
    assert_eq!(out.status.code(), Some(0), "{table}{}", s(&out.stderr));
    // scenario, runs, failed, rate, detect median, p95, max, passed, undecided
    let aa = row(&table, "A/A");
    assert_eq!(aa.len(), 9, "{aa:?}");
    let runs: u64 = aa[1].parse().unwrap();
    let false_failures: u64 = aa[2].parse().unwrap();
    assert_eq!(runs, 200, "the default is 200 runs");
    assert!(aa[3].starts_with("false failures"), "{aa:?}");
    assert!(
        false_failures * 100 <= runs,
        "A/A false failures {false_failures} of {runs}: more than 1 %"
    );
    let err = row(&table, "errors 0.5% -> 5.0%");
    let detected: u64 = err[2].parse().unwrap();
    assert!(err[3].starts_with("detected"), "{err:?}");
    assert!(detected * 100 >= 99 * runs, "{err:?}");
    let lat = row(&table, "latency x1.25");
    assert!(lat[3].starts_with("detected"), "{lat:?}");

    // Within 10 s in at least 99 % of runs: the time of every run, from the JSON.
    let out = t.run(&["canary", "--simulate", "--runs", "200", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(s(&out.stdout).trim()).unwrap();
    let errors = &v["results"][1];
    assert_eq!(errors["scenario"], "errors 0.5% -> 5.0%");
    let secs: Vec<u64> = errors["detection_secs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let within = secs.iter().filter(|s| **s <= 10).count() as u64;
    assert!(within * 100 >= 99 * runs, "{within} of {runs} within 10 s");
    // The table and the JSON are the same simulation.
    assert_eq!(secs.len() as u64, detected);
    assert_eq!(
        v["results"][0]["failures"].as_u64().unwrap(),
        false_failures
    );
    println!(
        "errors 0.5% -> 5%: {within} of {runs} detected within 10 s (max {:?} s)",
        secs.iter().max()
    );
}

/// An app that cannot choose its port: both arms listen on 3000, each replica's generation in
/// a network namespace of its own (needs root, which CI has), side by side behind one nginx.
#[test]
fn arms_of_a_fixed_port_app_run_side_by_side_in_namespaces() {
    let t = setup();
    let text = std::fs::read_to_string(t.path().join("s.hcl")).unwrap();
    t.write(
        "s.hcl",
        &text
            .replace(
                "exec ./preview --port {{port}}",
                "exec ./preview --port 3000 --address 0.0.0.0",
            )
            .replace(
                "  start_timeout = \"3s\"",
                "  start_timeout = \"3s\"\n  network       = { namespace = true, port = 3000 }",
            ),
    );
    let v = passing_canary_json(&t, &["--duration", "6s", "--replicas", "2"]);
    // Four processes listening on port 3000 at once: only possible in namespaces of their own.
    assert_eq!(v["verdict"]["outcome"], "pass", "{v}");
    assert_eq!(v["load"]["replicas"], 2, "{v}");
    nothing_left(&t);
    let ns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !s(&ns.stdout).contains("pl-"),
        "namespaces left: {}",
        s(&ns.stdout)
    );
}

/// The sequential test also stops early the other way: once every metric's always-valid bounds
/// sit inside its tolerance, master vs master passes before the asked-for 120 s are over.
#[test]
fn master_vs_master_passes_early_once_the_evidence_is_in() {
    let t = setup();
    let v = passing_canary_json(&t, &["--duration", "120s", "--rate", "200"]);
    println!(
        "passed early after {} s, {} requests",
        v["early_stop"]["after_s"], v["load"]["sent"]
    );
    assert_eq!(v["early_stop"]["passed"], true, "{}", v["sequential"]);
    assert!(
        v["load"]["ran_s"].as_f64().unwrap() < 119.0,
        "{}",
        v["load"]
    );
    assert_eq!(v["verdict"]["outcome"], "pass");
    nothing_left(&t);
}

/// Issue 8, item 3: a request the stack marks secret (a token in the path) is sent, but shown
/// nowhere: not in the progress lines, the table, the JSON or the HTML report.
#[test]
fn a_secret_request_path_is_sent_but_never_shown() {
    let t = setup();
    const SECRET: &str = "Kq8SeCrEtPaTh3";
    t.env
        .borrow_mut()
        .push(("PIPELINE_VAR_token".into(), SECRET.into()));
    let text = std::fs::read_to_string(t.path().join("s.hcl")).unwrap();
    let text = text.replace(
        r#"request = { method = "POST", path = "/preview","#,
        r#"request = { method = "POST", path = "/preview?key=${var.token}","#,
    );
    assert!(text.contains("var.token"));
    t.write(
        "s.hcl",
        &format!("variable \"token\" {{ sensitive = true }}\n{text}"),
    );
    for json in [false, true] {
        let mut args = vec![
            "canary",
            "master",
            "master",
            "--stack",
            "s.hcl",
            "--duration",
            "6s",
        ];
        if json {
            args.push("--json");
        }
        let out = t.run(&args);
        let (stdout, stderr) = (s(&out.stdout), s(&out.stderr));
        assert!(
            matches!(out.status.code(), Some(0) | Some(3)),
            "{stdout}{stderr}"
        );
        // It was sent: the arms answered the secret path.
        assert!(stdout.contains("(sensitive value)"), "{stdout}");
        for (what, text) in [("stdout", &stdout), ("stderr", &stderr)] {
            assert!(!text.contains(SECRET), "the secret is in {what}:\n{text}");
        }
        let report = std::fs::read_to_string(t.path().join(".pipeline/canary-report.html"))
            .expect("the report is written");
        assert!(!report.contains(SECRET), "the secret is in the HTML report");
    }
}
