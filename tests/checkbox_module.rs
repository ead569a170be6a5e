//! `pipeline deploy checkbox.io -i inventory.ini` on 3 lab hosts, as the course deploys it:
//! the Node.js app and nginx on two (`[checkbox]`), the flags' primary (and MongoDB's place) on
//! one (`[mongo]`), the monitor on this machine.
//!
//! **MongoDB is not installed here**: no MongoDB server package is reachable from this machine
//! (MongoDB's repository is not one of the registries it reaches), so the deploy runs with
//! `-var mongodb=false` and `/api/studies` answers 503 "not configured". The plan with MongoDB
//! is checked (the database on `[mongo]`, its password hidden); the role itself is tested in
//! syntax and check mode by providers/ssh/tests/roles.rs.
//!
//! - From nothing: the static site and `/api/` answer through nginx on both hosts, nginx
//!   sends `/api/` to the instances of both hosts.
//! - `pipeline flags set` reaches every instance's mirror and changes what the app serves on
//!   every host, on and off again (timed).
//! - Deploying again changes and restarts nothing.
//! - The mail password (given in PIPELINE_VAR_mail_password) and the flags password are in no
//!   output or command line, and on the hosts only in the instances' 0600 root files.
//!
//! Figures are printed for the note.

mod common;
use common::lab::{self, sh, strs};
use common::load;
use common::*;
use std::time::{Duration, Instant};

const MAIL_SECRET: &str = "mail-Pa55-w0rd-that-never-shows";
const MONGO_SECRET: &str = "Mongo0Secret0That0Never0Shows";

/// 3 lab hosts (`[checkbox]`: the first two, `[mongo]`: the third), a scratch with their
/// inventory, and a copy of examples/checkbox.io in it.
fn setup() -> (pipeline_lab::Lab, Scratch, std::path::PathBuf) {
    let lab = pipeline_lab::Lab::with_options(3, pipeline_lab::LabOptions { apt_cache: true })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let t = Scratch::new();
    let webs: Vec<&pipeline_lab::Host> = lab.hosts()[0..2].iter().collect();
    t.write(
        "inventory.ini",
        &lab::inventory(&lab, &[("checkbox", &webs), ("mongo", &[lab.host(2)])]),
    );
    let src = lab::copy_example(
        &t,
        "checkbox.io",
        "checkbox.io",
        "server-side/site/node_modules",
    );
    (lab, t, src)
}

/// GET `url`; the JSON answer (any status), or None.
fn json(url: &str) -> Option<(u16, serde_json::Value)> {
    let (code, body) = http("GET", url, "")?;
    Some((code, serde_json::from_str(&body).ok()?))
}

/// Whether `/api/banner` says the flag is `on` on every one of `urls` (each an instance).
fn banner_everywhere(urls: &[String], on: bool) -> bool {
    urls.iter()
        .all(|u| json(&format!("{u}/api/banner")).is_some_and(|(c, b)| c == 200 && b["on"] == on))
}

#[test]
fn checkbox_deploys_on_three_hosts_and_a_flag_flip_reaches_every_mirror() {
    if !pipeline_lab::require() {
        return;
    }
    let (lab, t, src) = setup();
    let webs: Vec<&pipeline_lab::Host> = lab.hosts()[0..2].iter().collect();
    let mongo = lab.host(2);
    let monitor_port = load::free_port();
    t.env
        .borrow_mut()
        .push(("PIPELINE_VAR_mail_password".into(), MAIL_SECRET.into()));
    let vars = [
        "-var".to_string(),
        format!("source={}", src.display()),
        "-var".to_string(),
        format!("dashboard_port={monitor_port}"),
        "-var".to_string(),
        "mail_user=site@example.org".to_string(),
    ];
    let deploy = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["deploy", "checkbox.io", "-i", "inventory.ini"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(vars.iter().cloned());
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };

    // With MongoDB (the default): the plan puts it on [mongo]; not applied (see above). Its
    // password, given, is hidden.
    let mut plan_cmd = t.cmd(&strs(&deploy(&[])));
    plan_cmd.env("PIPELINE_VAR_mongo_password", MONGO_SECRET);
    let out = plan_cmd.output().unwrap();
    let plan = s(&out.stdout);
    assert!(
        !plan.contains(MONGO_SECRET) && !s(&out.stderr).contains(MONGO_SECRET),
        "the MongoDB password in the plan"
    );
    assert!(
        plan.contains("database.site[0]") && plan.contains("\"mongodb\""),
        "the plan has MongoDB on [mongo]:\n{plan}\n{}",
        s(&out.stderr)
    );
    assert!(!plan.contains(MAIL_SECRET), "the mail password in the plan");
    assert_eq!(
        sh(
            mongo,
            "ls /etc/apt/sources.list.d/ | grep -c mongodb || true"
        )
        .trim(),
        "0",
        "a plan changed the host"
    );

    // From nothing, without MongoDB; every command line watched for the mail password.
    let watch = lab::SecretWatch::start(MAIL_SECRET, &["node", "server.js"]);
    let t0 = Instant::now();
    let out = t.run(&strs(&deploy(&["-var", "mongodb=false", "-auto-approve"])));
    let first = t0.elapsed();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(out.status.success(), "first deploy:\n{text}");
    eprintln!(
        "first deploy of checkbox.io on 3 hosts: {:.1} s",
        first.as_secs_f64()
    );
    let (leaks, scans, seen) = watch.finish();
    assert!(
        leaks.is_empty(),
        "the mail password on a command line: {leaks:?}"
    );
    assert!(seen, "the scans ({scans}) never saw the app's command line");
    assert!(
        !text.contains(MAIL_SECRET),
        "the mail password in the output"
    );
    let fronts: Vec<String> = webs
        .iter()
        .map(|h| format!("http://{}:80", h.addr()))
        .collect();
    assert!(
        text.contains(&format!("checkbox.io answers at {}", fronts.join(", "))),
        "{text}"
    );
    let ws = t.path().join(".pipeline/modules/checkbox.io");
    let st = pipeline_state::StateStore::open(&ws)
        .unwrap()
        .state()
        .clone();
    let flags_password = st.resources["flags.features"].attrs["password"]
        .as_str()
        .expect("a generated flags password in state")
        .to_string();
    assert!(
        !text.contains(&flags_password),
        "the flags password in the output"
    );

    // Through nginx on each host: the static site, and /api/ on the instances of both hosts.
    let index = std::fs::read_to_string(src.join("public_html/index.html")).unwrap();
    for f in &fronts {
        assert_eq!(
            http("GET", &format!("{f}/"), ""),
            Some((200, index.clone())),
            "{f}"
        );
        let (code, health) = json(&format!("{f}/api/health")).expect("nginx answers");
        assert_eq!((code, &health["status"]), (200, &serde_json::json!("ok")));
        let (code, v) = json(&format!("{f}/api/version")).unwrap();
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["mail"], "not configured", "no SMTP given: {v}");
        let (code, banner) = json(&format!("{f}/api/banner")).unwrap();
        assert_eq!(
            (code, &banner["on"]),
            (200, &serde_json::json!(false)),
            "{banner}"
        );
        assert_eq!(banner["source"], "store", "read from the mirror: {banner}");
        let (code, studies) = json(&format!("{f}/api/studies")).unwrap();
        assert_eq!(code, 503, "no MongoDB here: {studies}");
        for _ in 0..10 {
            http("GET", &format!("{f}/api/health"), "");
        }
    }
    for f in &fronts {
        let h = webs
            .iter()
            .find(|h| f.contains(&h.addr().to_string()))
            .unwrap();
        let upstreams = sh(
            h,
            "awk '$2 ~ /^20/ && $4 != \"-\" {print $4}' /var/log/nginx/pipeline-access.log | sort -u",
        );
        for w in &webs {
            assert!(
                upstreams.contains(&format!("{}:3002", w.addr())),
                "nginx on {} sent /api/ to {}: {upstreams}",
                h.name(),
                w.name()
            );
        }
    }
    // The monitor: per instance and per app, rates from nginx's logs and CPU and memory from
    // the hosts, in /metrics (and so in /api/status and on the dashboard, which read the same).
    let metrics_url = format!("http://127.0.0.1:{monitor_port}/metrics");
    let want = |text: &str| -> Vec<String> {
        let mut missing = Vec::new();
        let series = |name: &str, label: &str| -> Option<f64> {
            text.lines()
                .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .next()
        };
        // Every instance of the app, named by its instance address (`service.checkbox...`).
        let replicas = |name: &str| -> Vec<f64> {
            text.lines()
                .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains("checkbox"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .collect()
        };
        for name in [
            "pipeline_replica_requests_per_second",
            "pipeline_replica_cpu_ratio",
            "pipeline_replica_memory_bytes",
        ] {
            let v = replicas(name);
            if v.len() < webs.len() || (name.contains("memory") && v.iter().any(|m| *m <= 0.0)) {
                missing.push(format!("{name} of every instance: {v:?}"));
            }
        }
        for w in &webs {
            let host = format!("host=\"{}\"", w.name());
            if series("pipeline_host_up", &host) != Some(1.0) {
                missing.push(format!("pipeline_host_up {host} = 1"));
            }
            if !series("pipeline_host_memory_bytes", &host).is_some_and(|m| m > 0.0) {
                missing.push(format!("pipeline_host_memory_bytes {host} > 0"));
            }
        }
        if !series("pipeline_service_memory_bytes", "checkbox").is_some_and(|m| m > 0.0) {
            missing.push("pipeline_service_memory_bytes checkbox > 0".into());
        }
        missing
    };
    let mut last = vec!["no answer".to_string()];
    let seen = wait_until(Duration::from_secs(30), || {
        for f in &fronts {
            http("GET", &format!("{f}/api/health"), "");
        }
        last = match http("GET", &metrics_url, "") {
            Some((200, text)) => want(&text),
            other => vec![format!("{other:?}")],
        };
        last.is_empty()
    });
    assert!(seen, "the monitor's /metrics lacks: {last:?}");

    // The secrets on the hosts: only in the instance's 0600 root file.
    for h in &webs {
        let files = sh(
            h,
            &format!(
                "grep -rl -- {MAIL_SECRET} /etc /opt /srv /var/lib/pipeline /tmp 2>/dev/null; true"
            ),
        );
        for f in files.lines() {
            let mode = sh(h, &format!("stat -c '%a %U' {f}"));
            assert_eq!(mode.trim(), "600 root", "{}: {f}", h.name());
        }
        assert!(
            !files.trim().is_empty(),
            "the app's secret file on {}",
            h.name()
        );
    }

    // A flag flip reaches every instance's mirror, and every app serves the new banner.
    let instances: Vec<String> = webs
        .iter()
        .map(|h| format!("http://{}:3002", h.addr()))
        .collect();
    let state_dir = ".pipeline/modules/checkbox.io";
    for on in [true, false] {
        let t0 = Instant::now();
        let out = t.ok(&[
            "flags",
            "--state-dir",
            state_dir,
            "set",
            "new-banner",
            if on { "on" } else { "off" },
        ]);
        let cli = t0.elapsed();
        assert!(
            wait_until(Duration::from_secs(5), || banner_everywhere(&instances, on)),
            "every instance serves the banner {on}: {out}"
        );
        eprintln!(
            "flag new-banner {}: `pipeline flags set` returned (every mirror showing it) in {} ms; \
             every app serving it {} ms after the command started",
            if on { "on" } else { "off" },
            cli.as_millis(),
            t0.elapsed().as_millis()
        );
        let (_, b) = json(&format!("{}/api/banner", fronts[0])).unwrap();
        assert_eq!(b["on"], on, "through nginx: {b}");
    }

    // Again: nothing changes, nothing restarts.
    let pids = |h: &pipeline_lab::Host| {
        sh(
            h,
            "systemctl show -p MainPID --value pipeline-checkbox-0 nginx redis-server@pipeline-features 2>/dev/null; \
             systemctl list-units --no-legend 'pipeline*' 'redis*' | awk '{print $1}' | \
             xargs -r systemctl show -p MainPID --value",
        )
    };
    let before: Vec<String> = lab.hosts().iter().map(pids).collect();
    let t0 = Instant::now();
    let out = t.ok(&strs(&deploy(&["-var", "mongodb=false", "-auto-approve"])));
    eprintln!("no-op deploy: {:.2} s", t0.elapsed().as_secs_f64());
    assert!(out.contains("No changes"), "{out}");
    let after: Vec<String> = lab.hosts().iter().map(pids).collect();
    assert_eq!(before, after, "nothing restarted");
}

/// The version `/api/version` answers (examples/checkbox.io: package.json's, or APP_VERSION).
fn api_version(body: &str) -> Result<String, String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .ok_or(format!("not the app's answer: {body:?}"))
}

/// What `n` GETs of `url` answer, in order.
fn versions_of(url: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| match http("GET", url, "") {
            Some((200, b)) => api_version(&b).unwrap_or_else(|e| e),
            Some((c, _)) => format!("HTTP {c}"),
            None => "no answer".into(),
        })
        .collect()
}

/// A release of the copied example: `version` in package.json, and `behaviour` (JavaScript run
/// before the routes, with `app` in scope) put into server.js.
fn release(src: &std::path::Path, version: &str, behaviour: &str) {
    let pkg = src.join("server-side/site/package.json");
    let text = std::fs::read_to_string(&pkg).unwrap();
    let old = text
        .lines()
        .find(|l| l.trim_start().starts_with("\"version\""))
        .unwrap()
        .to_string();
    std::fs::write(
        &pkg,
        text.replace(&old, &format!("  \"version\": \"{version}\",")),
    )
    .unwrap();
    let server = src.join("server-side/site/server.js");
    let orig = src.join("server-side/site/server.js.orig");
    if !orig.exists() {
        std::fs::copy(&server, &orig).unwrap();
    }
    let text = std::fs::read_to_string(&orig).unwrap();
    let anchor = "app.get('/api/health'";
    assert!(text.contains(anchor));
    std::fs::write(
        &server,
        text.replace(anchor, &format!("{behaviour}\n{anchor}")),
    )
    .unwrap();
}

/// checkbox.io's progressive canary through nginx on both app hosts, under load on `/api/`:
/// a good release is promoted step by step with nothing failed; a slow release is stopped by
/// the monitor's alert rule before the judge's step end; a release whose `/api/version`
/// answers 500 is stopped by the judge within one analysis
/// interval, and every answer afterwards is the old version.
#[test]
fn checkbox_canary_promotes_a_good_release_and_stops_a_failing_and_a_slow_one() {
    if !pipeline_lab::require() {
        return;
    }
    let (lab, t, src) = setup();
    let webs: Vec<&pipeline_lab::Host> = lab.hosts()[0..2].iter().collect();
    let interval = 10;
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "deploy",
            "checkbox.io",
            "-i",
            "inventory.ini",
            "-auto-approve",
            "-var",
            "mongodb=false",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        a.push("-var".into());
        a.push(format!("source={}", src.display()));
        a.push("-var".into());
        a.push(format!("dashboard_port={}", load::free_port()));
        a.push("-var".into());
        a.push(format!("canary_interval={interval}s"));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    release(&src, "1.0.0", "");
    let t0 = Instant::now();
    t.ok(&strs(&args(&[])));
    eprintln!("first deploy: {:.1} s", t0.elapsed().as_secs_f64());
    let front = format!("http://{}:80/api/version", webs[0].addr());

    // A good release: 20 %, 50 %, then promoted; nothing fails meanwhile. (With the module's
    // alert thresholds: a `slow` alert at 200 ms once fired on a good release under CI's load;
    // at the default 1 s, 4 of 4 good releases were promoted here with 3 CPU burners running.)
    release(&src, "1.1.0", "");
    let l = lab::Load::with(&front, 40, 4, Duration::from_secs(300), api_version);
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    let run = t.run(&strs(&args(&[])));
    let took = t0.elapsed();
    let samples = l.stop();
    let out = format!("{}{}", s(&run.stdout), s(&run.stderr));
    assert!(run.status.success(), "{out}");
    eprintln!(
        "good release promoted: {:.1} s of apply (2 steps of {interval} s); {} requests, {} failed, \
         {} answered 1.0.0 and {} 1.1.0",
        took.as_secs_f64(),
        samples.len(),
        lab::failed(&samples).len(),
        lab::answered(&samples, "1.0.0"),
        lab::answered(&samples, "1.1.0")
    );
    assert!(out.contains("canary passed"), "{out}");
    assert!(lab::failed(&samples).is_empty(), "{out}");
    assert!(lab::answered(&samples, "1.1.0") > 0 && lab::answered(&samples, "1.0.0") > 0);
    assert_eq!(
        versions_of(&front, 10),
        vec!["1.1.0".to_string(); 10],
        "promoted: only the new version answers"
    );

    // A release whose /api/version fails: the judge stops it at the first step.
    release(
        &src,
        "2.0.0",
        "app.get('/api/version', (req, res) => res.status(500).json({ error: 'broken release' }));",
    );
    let l = lab::Load::with(&front, 40, 4, Duration::from_secs(300), api_version);
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    let out = t.run(&strs(&args(&[])));
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let samples = l.stop();
    let err = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("canary aborted at 20%"), "{err}");
    let bad = lab::failed(&samples);
    assert!(!bad.is_empty(), "the candidate got traffic");
    assert!(
        bad.iter()
            .all(|b| b.version.as_ref().unwrap_err().starts_with("HTTP 500")),
        "every failed request is the candidate's 500: {bad:?}"
    );
    let first = bad.first().unwrap().sent;
    let last = bad.last().unwrap().sent;
    let window = last.duration_since(first);
    eprintln!(
        "failing release: stopped in {:.1} s of apply; {} of {} requests failed, over {:.2} s \
         from the first failure to the last (analysis interval {interval} s); {}",
        took.as_secs_f64(),
        bad.len(),
        samples.len(),
        window.as_secs_f64(),
        err.lines()
            .find(|l| l.contains("aborted at"))
            .unwrap_or("")
            .trim()
    );
    assert!(
        window < Duration::from_secs(interval),
        "traffic to the failing canary stopped within one analysis interval: {window:?}"
    );
    let after: Vec<&lab::Sample> = samples
        .iter()
        .filter(|s| s.sent > bad.last().unwrap().done)
        .collect();
    assert!(!after.is_empty(), "the load went on after the stop");
    assert!(
        after.iter().all(|s| s.version.as_deref() == Ok("1.1.0")),
        "after the stop, only the old version answers"
    );

    // A release that answers slowly (2 s) but correctly: the judge would see it only at the
    // step's end (60 s here); the module's `slow` alert (p95 above 1 s over 10 s, 20 answers at
    // least) fires on a new instance first and stops the canary. (The threshold is the
    // module's default: a tighter one fired on good releases of a machine under CI's load.)
    release(
        &src,
        "3.0.0",
        "app.use('/api/version', (req, res, next) => setTimeout(next, 2000));",
    );
    let l = lab::Load::with(&front, 40, 16, Duration::from_secs(300), api_version);
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    let out = t.run(&strs(&args(&["-var", "canary_interval=60s"])));
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let samples = l.stop();
    let err = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{err}");
    let why = err
        .lines()
        .find(|l| l.contains("aborted at"))
        .unwrap_or("")
        .trim()
        .to_string();
    assert!(
        why.contains("aborted at 20%") && why.contains("slow"),
        "the alert `slow` stopped it: {err}"
    );
    let slow: Vec<&lab::Sample> = samples
        .iter()
        .filter(|s| s.version.as_deref() == Ok("3.0.0"))
        .collect();
    assert!(!slow.is_empty(), "the candidate got traffic");
    assert!(
        lab::failed(&samples).is_empty(),
        "nothing failed: slow, not broken"
    );
    eprintln!(
        "slow release: stopped by the alert in {:.1} s of apply (interval 60 s); {} of {} \
         requests went to it over {:.2} s, slowest {:.0} ms; {why}",
        took.as_secs_f64(),
        slow.len(),
        samples.len(),
        slow.last()
            .unwrap()
            .sent
            .duration_since(slow.first().unwrap().sent)
            .as_secs_f64(),
        slow.iter()
            .map(|s| s.done.duration_since(s.sent).as_millis())
            .max()
            .unwrap_or(0)
    );
    assert_eq!(versions_of(&front, 10), vec!["1.1.0".to_string(); 10]);
}
