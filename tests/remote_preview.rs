//! Plans show each host's dry run of a remote service change (`Provider::preview`: the role in
//! `ansible --check --diff`), on lab hosts through the real binary: an env change shows the env
//! file's diff under `# on HOST:` for every host while nothing changes on the hosts; a secret
//! change is named, never shown; `plan -json` carries the previews; a no-op plan runs none.

mod common;
use common::lab;
use common::*;
use std::time::{Duration, Instant};

const SECRET: &str = "s3cr3t-Pv41x-never-shown";
const SECRET2: &str = "s3cr3t-Pv42y-never-shown";

fn stack(greeting: &str) -> String {
    lab::secret_env_stack(greeting, "")
}

/// Each host's env file, its mtime and the instance's main pid: what a dry run must not change.
fn host_facts(lab: &pipeline_lab::Lab) -> Vec<String> {
    lab.hosts()
        .iter()
        .map(|h| {
            h.exec(&[
                "sh",
                "-c",
                "cat /etc/pipeline/app/app-0.env; stat -c %Y.%s /etc/pipeline/app/app-0.env /etc/pipeline/app/app-0.secret.env /etc/systemd/system/pipeline-app-0.service; systemctl show -p MainPID --value pipeline-app-0.service",
            ])
            .expect("exec on a lab host")
        })
        .collect()
}

/// The summary after `# on HOST:` in `text`, and the diff lines under it.
fn section<'a>(text: &'a str, host: &str) -> Option<(&'a str, Vec<&'a str>)> {
    let head = format!("# on {host}: ");
    let mut lines = text.lines();
    let summary = lines.find_map(|l| l.trim().strip_prefix(head.as_str()))?;
    // The diff is indented under its header; the resource's closing brace is not.
    let body = lines
        .take_while(|l| l.starts_with("        ") && !l.trim().starts_with("# on "))
        .map(str::trim)
        .collect();
    Some((summary, body))
}

fn timed_plan(t: &Scratch, args: &[&str]) -> (String, Duration) {
    let started = Instant::now();
    let out = t.run(args);
    let took = started.elapsed();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(
        out.status.success(),
        "pipeline {args:?} failed ({}): {text}",
        out.status
    );
    (text, took)
}

#[test]
fn a_plan_shows_each_hosts_check_diff_and_changes_nothing() {
    if !pipeline_lab::require() {
        return;
    }
    let lab = pipeline_lab::Lab::new(2).expect("lab");
    let t = lab::scratch(&lab.inventory(), "main.hcl", &stack("a"));
    t.env
        .borrow_mut()
        .push(("PIPELINE_VAR_db_password".into(), SECRET.into()));
    // The first plan: every host would get its env file and unit; no secret shown.
    let (text, took) = timed_plan(&t, &["plan", "main.hcl"]);
    eprintln!(
        "first plan with a preview on 2 fresh hosts: {:.2} s",
        took.as_secs_f64()
    );
    for h in lab.hosts() {
        let (summary, body) =
            section(&text, h.name()).unwrap_or_else(|| panic!("no `# on {}`: {text}", h.name()));
        assert!(
            summary.contains("/etc/pipeline/app/app-0.env")
                && summary.contains("secret environment (not shown)"),
            "{text}"
        );
        assert!(body.contains(&"+GREETING=\"a\""), "{}: {body:?}", h.name());
    }
    assert!(!text.contains(SECRET), "the secret in the plan: {text}");
    for h in lab.hosts() {
        let there = h
            .exec(&[
                "sh",
                "-c",
                "ls /etc/pipeline /opt/pipeline 2>/dev/null | wc -l",
            ])
            .unwrap();
        assert_eq!(there.trim(), "0", "the first dry run wrote on {}", h.name());
    }
    t.ok(&["apply", "-auto-approve", "main.hcl"]);
    let before = host_facts(&lab);
    for f in &before {
        assert!(f.contains("GREETING=\"a\""), "{f}");
    }
    let log = t.path().join(".pipeline/ssh/app/ansible.log");
    let log_len = || std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);

    // A no-op plan asks no host for a dry run.
    let len0 = log_len();
    let (text, took) = timed_plan(&t, &["plan"]);
    assert!(text.contains("No changes"), "{text}");
    assert!(!text.contains("# on "), "a no-op plan previewed: {text}");
    assert_eq!(log_len(), len0, "a no-op plan ran ansible");
    eprintln!("no-op plan: {:.2} s", took.as_secs_f64());

    // An env change: every host shows its env file's diff, and nothing changes on them.
    t.write("main.hcl", &stack("b"));
    let (text, took) = timed_plan(&t, &["plan"]);
    eprintln!(
        "plan with a preview on 2 hosts: {:.2} s",
        took.as_secs_f64()
    );
    eprintln!("{text}");
    for h in lab.hosts() {
        let (summary, body) =
            section(&text, h.name()).unwrap_or_else(|| panic!("no `# on {}`: {text}", h.name()));
        assert_eq!(
            summary, "2 to change: pipeline-app-0.service (restart), /etc/pipeline/app/app-0.env",
            "{text}"
        );
        assert!(body.contains(&"-GREETING=\"a\""), "{}: {body:?}", h.name());
        assert!(body.contains(&"+GREETING=\"b\""), "{}: {body:?}", h.name());
    }
    assert!(!text.contains(SECRET), "the secret in the plan: {text}");
    assert_eq!(host_facts(&lab), before, "the dry run changed a host");

    // The same previews in `plan -json`.
    let json = t.ok(&["plan", "-json"]);
    let change = json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "planned_change" && v["address"] == "service.app")
        .unwrap_or_else(|| panic!("no planned change of service.app: {json}"));
    let previews = change["preview"].as_array().expect("preview is a list");
    let targets: Vec<&str> = previews
        .iter()
        .map(|p| p["target"].as_str().unwrap())
        .collect();
    let names: Vec<&str> = lab.hosts().iter().map(|h| h.name()).collect();
    assert_eq!(targets, names, "{change}");
    for p in previews {
        assert!(
            p["diff"].as_str().unwrap().contains("+GREETING=\"b\""),
            "{p}"
        );
    }
    assert!(!json.contains(SECRET), "the secret in plan -json");

    // A secret change: named, never shown (neither value), and nothing changes.
    t.write("main.hcl", &stack("a"));
    t.env
        .borrow_mut()
        .retain(|(k, _)| k != "PIPELINE_VAR_db_password");
    t.env
        .borrow_mut()
        .push(("PIPELINE_VAR_db_password".into(), SECRET2.into()));
    let (text, _) = timed_plan(&t, &["plan"]);
    let json = t.ok(&["plan", "-json"]);
    for h in lab.hosts() {
        let (summary, body) =
            section(&text, h.name()).unwrap_or_else(|| panic!("no `# on {}`: {text}", h.name()));
        assert!(
            summary.contains("secret environment (not shown)")
                && summary.contains("pipeline-app-0.service (restart)"),
            "{text}"
        );
        assert!(body.is_empty(), "a diff for a secret change: {body:?}");
    }
    for out in [&text, &json] {
        assert!(
            !out.contains(SECRET) && !out.contains(SECRET2),
            "a secret in the plan: {out}"
        );
    }
    let mut leaked = Vec::new();
    for f in std::fs::read_dir(t.path().join(".pipeline/ssh/app")).unwrap() {
        let p = f.unwrap().path();
        let b = std::fs::read(&p).unwrap_or_default();
        if [SECRET, SECRET2]
            .iter()
            .any(|s| b.windows(s.len()).any(|w| w == s.as_bytes()))
        {
            leaked.push(p);
        }
    }
    assert!(leaked.is_empty(), "the secret in {leaked:?}");
    assert_eq!(host_facts(&lab), before, "the dry run changed a host");

    // A sensitive value in `env` (not `secret_env`): the files are named, never diffed.
    t.write(
        "main.hcl",
        &stack("a").replace(
            "GREETING = \"a\" }",
            "GREETING = \"a\", TOKEN = var.db_password }",
        ),
    );
    let (text, _) = timed_plan(&t, &["plan"]);
    for h in lab.hosts() {
        let (summary, body) =
            section(&text, h.name()).unwrap_or_else(|| panic!("no `# on {}`: {text}", h.name()));
        assert!(
            summary.contains("(not shown: they hold a sensitive value)"),
            "{text}"
        );
        assert!(
            body.is_empty(),
            "a diff of files holding a secret: {body:?}"
        );
    }
    assert!(
        !text.contains(SECRET) && !text.contains(SECRET2),
        "a secret in the plan: {text}"
    );
    assert_eq!(host_facts(&lab), before, "the dry run changed a host");

    // A new release (the plan cannot know its sha256): the preview builds it as apply would,
    // and shows each unit's new PIPELINE_RELEASE; the apply ships that very build.
    t.env
        .borrow_mut()
        .retain(|(k, _)| k != "PIPELINE_VAR_db_password");
    t.env
        .borrow_mut()
        .push(("PIPELINE_VAR_db_password".into(), SECRET.into()));
    t.write("main.hcl", &stack("a"));
    lab::set_version(&t, "v2");
    let (text, took) = timed_plan(&t, &["plan"]);
    eprintln!(
        "plan of a new release (built at plan): {:.2} s",
        took.as_secs_f64()
    );
    let pointers = || {
        std::fs::read_dir(t.path().join(".pipeline/artifacts"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".release"))
            .count()
    };
    assert_eq!(pointers(), 2, "the new release was not built at plan");
    for h in lab.hosts() {
        let (summary, body) =
            section(&text, h.name()).unwrap_or_else(|| panic!("no `# on {}`: {text}", h.name()));
        assert!(
            summary.contains("pipeline-app-0.service (restart)")
                && summary.contains("/etc/systemd/system/pipeline-app-0.service"),
            "{text}"
        );
        assert!(
            body.iter()
                .any(|l| l.starts_with('+') && l.contains("PIPELINE_RELEASE=")),
            "{}: {body:?}",
            h.name()
        );
    }
    assert_eq!(host_facts(&lab), before, "the dry run changed a host");
    t.ok(&["apply", "-auto-approve"]);
    assert_eq!(pointers(), 2, "the apply built another release");
    let release = state(&t).resources["service.app"].attrs["release"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.contains(&release),
        "the plan previewed another release: {text}"
    );
}
