//! `pipeline canary BASE CANDIDATE` against the real sample service behind real nginx:
//! master vs master passes, master vs a revision that answers 20% 500s fails, and a revision
//! that does not exist is a clear error; each time nothing is left running.

mod common;
use common::*;

fn setup() -> Scratch {
    let t = Scratch::new();
    let repo = prebuilt_source(&t);
    let git = |args: &[&str]| common::git(&repo, args);
    git(&["init", "-q", "-b", "master"]);
    std::fs::write(repo.join("version.txt"), "good").unwrap();
    git(&["add", "."]);
    git(&["commit", "-qm", "good"]);
    git(&["checkout", "-q", "-b", "broken"]);
    std::fs::write(repo.join("version.txt"), "broken").unwrap();
    git(&["commit", "-qam", "broken"]);
    git(&["checkout", "-q", "master"]);
    t.write(
        "s.hcl",
        r##"service "preview" {
  source = "app"
  run    = "if [ \"$(cat version.txt)\" = broken ]; then export PREVIEW_FAIL_RATE=0.2; fi; exec ./preview --port {{port}}"
  health = { path = "/health", interval = "100ms" }
  canary = {
    rate    = 100
    request = { method = "POST", path = "/preview", body = jsonencode({ markdown = "# Canary\n\nSome *text* and a list:\n\n- one\n- two\n" }) }
  }
}
"##,
    );
    t
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
    assert!(
        errors["candidate"]["proportion"]["events"]
            .as_u64()
            .unwrap()
            > 20,
        "{errors}"
    );
    // CPU and memory of each arm's app processes, sampled every 0.5 s while load ran.
    for name in ["cpu", "memory"] {
        let m = v["verdict"]["per_metric"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no {name} metric: {v}"));
        assert_eq!(m["critical"], false, "{m}");
        for arm in ["baseline", "candidate"] {
            let n = m[arm]["continuous"]["n"].as_u64().unwrap_or(0);
            assert!(n >= 5, "{name} of the {arm}: {n} samples in ~4 s: {m}");
        }
    }
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
        err.contains("revision \"no-such-branch\" does not exist"),
        "{err}"
    );
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
    assert!(
        err.contains("the baseline (master) itself fails")
            && err.contains("(404 × ")
            && err.contains("no verdict"),
        "{err}"
    );
    nothing_left(&t);
}
