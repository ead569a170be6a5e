//! The ssh provider's `service` on lab hosts (podman containers with systemd and sshd), through
//! the real binary: first apply on 3 hosts, a no-op plan and apply, a rolling update, a host
//! turned off mid-update (the update stops naming it; the next apply converges once it is
//! back), a changed host key (refused with the accept help; `-replace` of the host accepts
//! it), the secret kept out of every command line, output and file but the state, and destroy.
//! Bad input is refused at plan without a lab.

mod common;
use common::lab::{self, set_version, SecretWatch};
use common::*;
use sha2::Digest;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "s3cr3t-Dq7hZ2-never-shown";

fn stack(greeting: &str) -> String {
    lab::secret_env_stack(
        greeting,
        "  update        = { strategy = \"rolling\", max_unavailable = 1 }\n",
    ) + "output \"app_url\" {\n  value = service.app.url\n}\n"
}

/// What the instance at `url` answers at `/` (JSON), if it answers.
fn answer(url: &str) -> Option<serde_json::Value> {
    let (status, body) = http("GET", &format!("{url}/"), "")?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

fn instances(t: &Scratch) -> Vec<serde_json::Value> {
    let st = state(t);
    let r = st
        .resources
        .get("service.app")
        .expect("service.app recorded");
    r.attrs["instances"].as_array().cloned().unwrap_or_default()
}

fn release(t: &Scratch) -> String {
    state(t).resources["service.app"].attrs["release"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Every recorded instance answers `version` with the recorded release.
fn assert_all_on(t: &Scratch, version: &str, greeting: &str) {
    let insts = instances(t);
    assert_eq!(insts.len(), 3, "{insts:?}");
    let rel = release(t);
    let want_sha = hex(&sha2::Sha256::digest(SECRET.as_bytes()));
    let mut hosts = Vec::new();
    for i in &insts {
        let url = i["url"].as_str().unwrap();
        let a = answer(url).unwrap_or_else(|| panic!("{url} does not answer"));
        assert_eq!(a["version"], version, "{url}: {a}");
        assert_eq!(a["release"], rel.as_str(), "{url}: {a}");
        assert_eq!(i["release"], rel.as_str(), "recorded: {i}");
        assert_eq!(a["greeting"], greeting, "{url}: {a}");
        assert_eq!(a["db_password_sha256"], want_sha.as_str(), "{url}: {a}");
        assert_eq!(a["host"], i["host"], "{url}: {a}");
        hosts.push(a["host"].as_str().unwrap().to_string());
    }
    hosts.dedup();
    assert_eq!(hosts.len(), 3, "{hosts:?}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Polls every url in turn until stopped: per round, each instance's version (None: down).
struct Rounds {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Vec<Option<String>>>>,
}

impl Rounds {
    fn start(urls: Vec<String>) -> Rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut out = Vec::new();
            while !s.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(600) {
                out.push(
                    urls.iter()
                        .map(|u| answer(u).and_then(|a| a["version"].as_str().map(str::to_string)))
                        .collect(),
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            out
        });
        Rounds { stop, thread }
    }
    fn finish(self) -> Vec<Vec<Option<String>>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Runs `pipeline args` and returns its output and how long it took.
fn timed(t: &Scratch, args: &[&str]) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out = t.run(args);
    (out, started.elapsed())
}

fn ok_out(args: &[&str], out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "pipeline {args:?} failed ({}):\nstderr:\n{}\nstdout (last 4000 bytes):\n{}",
        out.status,
        s(&out.stderr),
        tail_chars(&s(&out.stdout), 4000)
    );
    format!("{}{}", s(&out.stdout), s(&out.stderr))
}

/// Files under `dir` whose bytes contain `needle`.
fn files_with(dir: &std::path::Path, needle: &str, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let ft = match e.file_type() {
            Ok(ft) => ft,
            Err(_) => continue,
        };
        if ft.is_dir() {
            files_with(&p, needle, out);
        } else if ft.is_file() {
            let b = std::fs::read(&p).unwrap_or_default();
            if b.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                out.push(p);
            }
        }
    }
}

fn units_on(h: &pipeline_lab::Host) -> String {
    h.exec(&[
        "sh",
        "-c",
        "ls /etc/systemd/system/ | grep '^pipeline-' || true; ls /opt/pipeline 2>/dev/null || true",
    ])
    .unwrap_or_default()
}

#[test]
fn a_service_rolls_out_on_three_lab_hosts_and_survives_a_host_going_off() {
    if !pipeline_lab::require() {
        return;
    }
    let lab = pipeline_lab::Lab::new(3).expect("lab");
    let t = lab::scratch(&lab.inventory(), "main.hcl", &stack("hi"));
    t.env
        .borrow_mut()
        .push(("PIPELINE_VAR_db_password".into(), SECRET.into()));
    let mut outputs = String::new();

    // The plan says what it will do and shows no secret.
    let plan = t.ok(&["plan", "main.hcl"]);
    assert!(plan.contains("service.app"), "{plan}");
    outputs.push_str(&plan);

    // First apply: every host runs an instance that answers through its url.
    let watch = SecretWatch::start(SECRET, &["python3 app.py"]);
    let (out, took) = timed(&t, &["apply", "-auto-approve"]);
    let (leaked, samples, saw_host) = watch.finish();
    outputs.push_str(&ok_out(&["apply"], &out));
    eprintln!(
        "first apply on 3 hosts: {:.1} s ({samples} scans of every command line)",
        took.as_secs_f64()
    );
    assert!(
        leaked.is_empty(),
        "the secret was on a command line: {leaked:?}"
    );
    assert!(samples > 5, "too few scans: {samples}");
    assert!(saw_host, "the scans never saw a host's app");
    assert_all_on(&t, "v1", "hi");
    let insts = instances(&t);
    let hosts: Vec<&str> = lab.hosts().iter().map(|h| h.name()).collect();
    let recorded: Vec<&str> = insts.iter().map(|i| i["host"].as_str().unwrap()).collect();
    assert_eq!(recorded, hosts, "instances in inventory order");
    for (i, h) in insts.iter().zip(lab.hosts()) {
        assert_eq!(i["address"], h.addr().to_string());
        assert_eq!(i["port"], 8080);
        assert_eq!(i["url"], format!("http://{}:8080", h.addr()));
    }
    let state_all = state(&t);
    assert_eq!(
        state_all.resources["service.app"].attrs["url"],
        insts[0]["url"]
    );

    // A no-op: the plan says so, and an apply is fast.
    let (out, took) = timed(&t, &["plan", "-detailed-exitcode"]);
    let text = ok_out(&["plan", "-detailed-exitcode"], &out);
    assert!(text.contains("No changes"), "{text}");
    eprintln!(
        "no-op plan (refresh over ssh on 3 hosts): {:.2} s",
        took.as_secs_f64()
    );
    outputs.push_str(&text);
    let (out, took) = timed(&t, &["apply", "-auto-approve"]);
    outputs.push_str(&ok_out(&["apply"], &out));
    eprintln!("no-op apply: {:.2} s", took.as_secs_f64());

    // status and logs read the hosts.
    // status has a row per host, with its pid there.
    let status = t.ok(&["status"]);
    let rows: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("service.app"))
        .collect();
    assert_eq!(rows.len(), 3, "{status}");
    for h in lab.hosts() {
        assert!(
            rows.iter()
                .any(|r| r.contains(h.name()) && r.contains("healthy")),
            "{status}"
        );
    }
    outputs.push_str(&status);

    // A rolling update to v2: every host on it afterwards.
    set_version(&t, "v2");
    let v1_release = release(&t);
    let watch = SecretWatch::start(SECRET, &["python3 app.py"]);
    let urls: Vec<String> = insts
        .iter()
        .map(|i| i["url"].as_str().unwrap().to_string())
        .collect();
    let rounds = Rounds::start(urls);
    let (out, took) = timed(&t, &["apply", "-auto-approve"]);
    let rounds = rounds.finish();
    let (leaked, _, _) = watch.finish();
    outputs.push_str(&ok_out(&["apply"], &out));
    eprintln!(
        "rolling update of 3 hosts (max_unavailable 1): {:.1} s",
        took.as_secs_f64()
    );
    // Polled all along: never two hosts down at once, and hosts took v2 in inventory order.
    let down_rounds = rounds
        .iter()
        .filter(|r| r.iter().any(Option::is_none))
        .count();
    eprintln!(
        "during the update: {} rounds over the 3 hosts, {down_rounds} with one down",
        rounds.len()
    );
    assert!(rounds.len() > 20, "too few rounds: {}", rounds.len());
    for r in &rounds {
        let down = r.iter().filter(|v| v.is_none()).count();
        assert!(down <= 1, "two hosts down at once: {r:?}");
        // Once a host is up on the old version, no later host is on v2.
        let mut seen_old = false;
        for v in r {
            let new = v.as_deref() == Some("v2");
            if v.is_some() && !new {
                seen_old = true;
            }
            assert!(!(seen_old && new), "not in inventory order: {r:?}");
        }
    }
    assert!(leaked.is_empty(), "{leaked:?}");
    assert_ne!(release(&t), v1_release);
    assert_all_on(&t, "v2", "hi");
    let v2_release = release(&t);
    let logs = t.ok(&["logs", "service.app"]);
    eprintln!("logs: {} lines", logs.lines().count());
    outputs.push_str(&logs);

    // v3, and the last host goes off once the first runs v3: the update stops with an error
    // naming it, found within ~7 s, after the step that was running finishes (a step is not
    // cut between a release unpacked and its units restarted); the others keep serving.
    set_version(&t, "v3");
    let first_url = insts[0]["url"].as_str().unwrap().to_string();
    let mut child = t
        .cmd(&["apply", "-auto-approve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(120), || answer(&first_url)
            .is_some_and(|a| a["version"] == "v3")),
        "the first host never ran v3"
    );
    let off = lab.host(2);
    let off_at = Instant::now();
    off.off().unwrap();
    let mut exited = None;
    while off_at.elapsed() < Duration::from_secs(90) {
        if let Some(st) = child.try_wait().unwrap() {
            exited = Some((st, off_at.elapsed()));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some((status, after)) = exited else {
        let _ = child.kill();
        panic!("apply did not end within 90 s of {} going off", off.name());
    };
    let out = child.wait_with_output().unwrap();
    let err = s(&out.stderr);
    eprintln!(
        "host off mid-update: apply ended {:.1} s later: {}",
        after.as_secs_f64(),
        err.lines().find(|l| l.contains(off.name())).unwrap_or("")
    );
    outputs.push_str(&err);
    outputs.push_str(&s(&out.stdout));
    assert!(!status.success(), "apply succeeded with a host off: {err}");
    // ~7 s to find it, then the running step's end (the provider bounds it at 60 s).
    assert!(after < Duration::from_secs(70), "took {after:?}: {err}");
    assert!(
        err.contains(off.name()),
        "the error names {}: {err}",
        off.name()
    );
    for h in &lab.hosts()[..2] {
        let a = answer(&format!("http://{}:8080", h.addr()))
            .unwrap_or_else(|| panic!("{} stopped serving", h.name()));
        assert!(a["version"] == "v3" || a["version"] == "v2", "{a}");
    }
    // The record was not moved past what runs: the failed update left the last good release.
    assert_eq!(release(&t), v2_release);

    // With the host off, a plan fails within 10 s naming it.
    let (out, took) = timed(&t, &["plan"]);
    let err = s(&out.stderr);
    eprintln!("plan with a host off: {:.1} s", took.as_secs_f64());
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(off.name()), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // Back on: the plan sees which hosts run what; the next apply converges all on v3.
    off.on().unwrap();
    let plan = t.ok(&["plan"]);
    assert!(plan.contains("service.app"), "{plan}");
    outputs.push_str(&plan);
    // What each host runs, as the refresh recorded it: the first host the new release, the
    // last (off during the update) still v2.
    let json_plan = t.ok(&["plan", "-json"]);
    outputs.push_str(&json_plan);
    let change = json_plan
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "planned_change" && v["address"] == "service.app")
        .unwrap_or_else(|| panic!("no change of service.app: {json_plan}"));
    assert_eq!(change["action"], "update", "{change}");
    let seen: Vec<String> = change["before"]["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("{change}"))
        .iter()
        .map(|i| i["release"].as_str().unwrap_or("").to_string())
        .collect();
    eprintln!("releases per host after the stopped update: {seen:?}");
    assert_eq!(seen.len(), 3, "{change}");
    assert!(seen[0].len() == 64 && seen[0] != v2_release, "{seen:?}");
    assert!(seen[1] == seen[0] || seen[1] == v2_release, "{seen:?}");
    assert_eq!(seen[2], v2_release, "{seen:?}");
    let (out, took) = timed(&t, &["apply", "-auto-approve"]);
    outputs.push_str(&ok_out(&["apply"], &out));
    eprintln!(
        "converging apply after the host came back: {:.1} s",
        took.as_secs_f64()
    );
    assert_all_on(&t, "v3", "hi");
    assert_eq!(
        release(&t),
        seen[0],
        "the release the first host got is the one all run"
    );
    // The secret reached the hosts only in the instance's 0600 root file.
    let mode = lab
        .host(0)
        .exec(&["stat", "-c", "%a %U", "/etc/pipeline/app/app-0.secret.env"])
        .unwrap();
    assert_eq!(mode.trim(), "600 root");

    // A host's key changes: apply refuses it with the accept help; -replace of the host
    // accepts it and the service update goes through.
    let rekeyed = lab.host(1);
    rekeyed
        .exec(&[
            "sh",
            "-c",
            "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null && systemctl restart ssh && (pkill -f '^sshd: root' || true)",
        ])
        .unwrap();
    t.write("main.hcl", &stack("hello"));
    // The refresh does not fail on the changed key (the record stays; apply refuses it).
    let plan = t.ok(&["plan"]);
    assert!(plan.contains("service.app"), "{plan}");
    outputs.push_str(&plan);
    let out = t.run(&["apply", "-auto-approve"]);
    let err = s(&out.stderr);
    outputs.push_str(&err);
    assert!(!out.status.success(), "a changed key was accepted: {err}");
    let host_addr = format!("host.web[\"{}\"]", rekeyed.name());
    assert!(err.contains("changed"), "{err}");
    assert!(
        err.contains(&format!("-replace='{host_addr}'")),
        "the accept help: {err}"
    );
    let replace = format!("-replace={host_addr}");
    let out = t.run(&["apply", "-auto-approve", &replace]);
    outputs.push_str(&ok_out(&["apply", &replace], &out));
    assert_all_on(&t, "v3", "hello");

    // The secret: in no output, no log, no file under .pipeline but the state.
    outputs.push_str(&t.ok(&["state", "show", "service.app"]));
    assert!(!outputs.contains(SECRET), "a secret in the output");
    let mut with = Vec::new();
    files_with(&t.path().join(".pipeline"), SECRET, &mut with);
    for p in &with {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            ["state.json", "state.journal"].contains(&name.as_str()),
            "the secret is in {}",
            p.display()
        );
    }
    let ansible_log = t.path().join(".pipeline/ssh/app/ansible.log");
    assert!(ansible_log.exists(), "the ansible log is kept");

    // A release that never becomes healthy: the first step fails naming its host after
    // start_timeout, the other hosts are not touched; going back to v3 converges.
    set_version(&t, "crash");
    let (out, took) = timed(&t, &["apply", "-auto-approve"]);
    let err = s(&out.stderr);
    outputs.push_str(&err);
    eprintln!(
        "a release that never comes up: apply failed after {:.1} s",
        took.as_secs_f64()
    );
    assert!(!out.status.success(), "{err}");
    let first = lab.host(0).name();
    assert!(
        err.contains(&format!("host {first} did not become healthy within 10s")),
        "{err}"
    );
    assert!(err.contains("no host runs the new release yet"), "{err}");
    for h in &lab.hosts()[1..] {
        let a = answer(&format!("http://{}:8080", h.addr()))
            .unwrap_or_else(|| panic!("{} was touched", h.name()));
        assert_eq!(
            (a["version"].as_str(), a["greeting"].as_str()),
            (Some("v3"), Some("hello"))
        );
    }
    set_version(&t, "v3");
    let (out, took) = timed(&t, &["apply", "-auto-approve"]);
    outputs.push_str(&ok_out(&["apply"], &out));
    eprintln!("back to v3: {:.1} s", took.as_secs_f64());
    assert_all_on(&t, "v3", "hello");

    // `on` narrowed to one host with 2 replicas: the others lose their units and files, it
    // serves on port and port+1.
    let kept = lab.host(0);
    t.write(
        "main.hcl",
        &stack("hello").replace(
            "on            = host.web\n",
            &format!(
                "on            = host.web[\"{}\"]\n  replicas = 2\n",
                kept.name()
            ),
        ),
    );
    let (out, took) = timed(&t, &["apply", "-auto-approve"]);
    outputs.push_str(&ok_out(&["apply"], &out));
    eprintln!("narrowing on to one host: {:.1} s", took.as_secs_f64());
    let insts = instances(&t);
    assert_eq!(insts.len(), 2, "{insts:?}");
    for h in &lab.hosts()[1..] {
        let left = units_on(h);
        assert!(left.trim().is_empty(), "{}: {left}", h.name());
    }
    for (i, port) in insts.iter().zip([8080, 8081]) {
        let url = format!("http://{}:{port}", kept.addr());
        assert_eq!(i["url"], url.as_str());
        let a = answer(&url).unwrap_or_else(|| panic!("{url} does not answer"));
        assert_eq!(
            (a["greeting"].as_str(), a["port"].as_u64()),
            (Some("hello"), Some(port))
        );
        assert_eq!(a["host"], kept.name());
    }

    // Destroy: units and files go from every host.
    t.ok(&["destroy", "-auto-approve"]);
    for h in lab.hosts() {
        let left = units_on(h);
        assert!(left.trim().is_empty(), "{}: {left}", h.name());
    }
}

/// Stack errors at plan, each naming the attribute; no lab needed (nothing is reached).
#[test]
fn bad_input_is_refused_at_plan() {
    let t = Scratch::new();
    t.write(
        "inventory.ini",
        "[web]\nweb01 ansible_host=192.0.2.1\nweb02 ansible_host=192.0.2.2\n",
    );
    t.write("app/app.py", "print('hi')\n");
    let with = |attrs: &str| {
        format!(
            "provider \"ssh\" {{\n  inventory = \"inventory.ini\"\n}}\nhost \"web\" {{\n  provider = ssh\n  group = \"web\"\n}}\nservice \"app\" {{\n  provider = ssh\n  source = \"app\"\n{attrs}\n}}\n"
        )
    };
    let good = "  on = host.web\n  run = \"python3 app.py\"\n  port = 8080";
    t.write("main.hcl", &with(good));
    // -refresh=false: no host is reached (the plan's dry run on the hosts needs them up).
    let plan = t.ok(&["plan", "-refresh=false", "main.hcl"]);
    for shown in [
        "service.app",
        "http://192.0.2.1:8080",
        "http://192.0.2.2:8080",
    ] {
        assert!(plan.contains(shown), "{shown}: {plan}");
    }
    for (attrs, words) in [
        (
            "  on = host.web\n  run = \"python3 app.py\"\n  port = 70000",
            vec!["port", "70000"],
        ),
        (
            "  on = host.web\n  run = \"python3 \\u0000app.py\"\n  port = 8080",
            vec!["run", "NUL"],
        ),
        (
            "  on = \"web01\"\n  run = \"python3 app.py\"\n  port = 8080",
            vec!["on", "host"],
        ),
        (
            "  on = host.web\n  run = \"python3 app.py\"\n  port = 8080\n  update = { strategy = \"canary\", max_unavailable = 1 }",
            vec!["update", "max_unavailable", "canary starts every host"],
        ),
        (
            "  on = host.web\n  run = \"python3 app.py\"\n  port = 8080\n  packages = [\"nginx\", \"-o APT::x=1\"]",
            vec!["packages", "is not a Debian package name"],
        ),
        (
            "  on = host.web\n  run = \"python3 app.py\"\n  port = 65535\n  update = { strategy = \"blue-green\" }",
            vec!["port", "blue-green", "65536"],
        ),
    ] {
        t.write("main.hcl", &with(attrs));
        let out = t.run(&["plan", "main.hcl"]);
        let err = s(&out.stderr);
        assert!(!out.status.success(), "{attrs}: accepted\n{}", s(&out.stdout));
        for w in words {
            assert!(err.contains(w), "{attrs}: {w:?} not in:\n{err}");
        }
        assert!(err.contains("main.hcl"), "{attrs}: no location:\n{err}");
    }

    // A prebuilt artifact: its sha256 is the release, known at plan; a missing one, or one
    // beside `source`, is refused.
    t.write(
        "dist/app.tar.gz",
        "not really gzip, but bytes with a sha256",
    );
    let art = |attrs: &str| with(attrs).replace("  source = \"app\"\n", "");
    t.write(
        "main.hcl",
        &art("  artifact = \"dist/app.tar.gz\"\n  on = host.web[\"web02\"]\n  run = \"./app\"\n  port = 9000"),
    );
    let plan = t.ok(&["plan", "-refresh=false", "main.hcl"]);
    let sha = hex(&sha2::Sha256::digest(
        b"not really gzip, but bytes with a sha256",
    ));
    assert!(plan.contains(&sha), "{sha}: {plan}");
    assert!(
        plan.contains("http://192.0.2.2:9000") && !plan.contains("192.0.2.1:9000"),
        "{plan}"
    );
    for (attrs, words) in [
        (
            "  artifact = \"dist/missing.tar.gz\"\n  on = host.web\n  run = \"x\"\n  port = 9000",
            vec!["artifact", "missing.tar.gz", "does not exist"],
        ),
        (
            "  artifact = \"dist/app.tar.gz\"\n  source = \"./app\"\n  on = host.web\n  run = \"x\"\n  port = 9000",
            vec!["artifact", "not both"],
        ),
    ] {
        t.write("main.hcl", &art(attrs));
        let out = t.run(&["plan", "main.hcl"]);
        let err = s(&out.stderr);
        assert!(!out.status.success(), "{attrs}: accepted\n{}", s(&out.stdout));
        for w in words {
            assert!(err.contains(w), "{attrs}: {w:?} not in:\n{err}");
        }
    }
}
