//! `pipeline deploy iTrust -i inventory.ini` on 7 lab hosts, as the course deploys it: MariaDB
//! on one (`[db]`), the WAR on Tomcat on five (`[itrust]`), nginx on one (`[lb]`), the monitor
//! on this machine.
//!
//! - From nothing: all five answer through nginx and write to the one database.
//! - Deploying again changes and restarts nothing.
//! - The plan of a new WAR shows the five hosts' updates, one at a time; the rollout under at
//!   least 50 requests a second through nginx fails none, and the monitor's heartbeat (every
//!   100 ms) never shows fewer than 4 healthy instances.
//! - The database password is generated, kept in state, and in no output.
//!
//! Figures are printed for the note.

mod common;
use common::lab::{self, sh, strs};
use common::load;
use common::*;
use std::time::{Duration, Instant};

const APP_HOSTS: usize = 5;
const RATE: u32 = 60;

#[test]
fn itrust_deploys_on_seven_hosts_and_a_new_war_rolls_out_under_load() {
    if !pipeline_lab::require() {
        return;
    }
    let started = Instant::now();
    let lab = pipeline_lab::Lab::with_options(
        2 + APP_HOSTS,
        pipeline_lab::LabOptions { apt_cache: true },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let db = lab.host(0);
    let apps: Vec<&pipeline_lab::Host> = lab.hosts()[1..=APP_HOSTS].iter().collect();
    let lb = lab.host(APP_HOSTS + 1);
    let t = Scratch::new();
    t.write(
        "inventory.ini",
        &lab::inventory(&lab, &[("db", &[db]), ("itrust", &apps), ("lb", &[lb])]),
    );
    let src = lab::copy_example(&t, "itrust", "itrust-src", "out");
    std::fs::write(src.join("VERSION"), "1.0\n").unwrap();
    let monitor_port = load::free_port();
    let monitor = format!("http://127.0.0.1:{monitor_port}/");
    let vars = [
        "-var".to_string(),
        format!("source={}", src.display()),
        "-var".to_string(),
        format!("dashboard_port={monitor_port}"),
    ];
    let deploy = |extra: &[&'static str]| -> Vec<String> {
        let mut args: Vec<String> = ["deploy", "iTrust", "-i", "inventory.ini"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(vars.iter().cloned());
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };

    // From nothing. The password is watched for on every command line meanwhile.
    let t0 = Instant::now();
    let out = t.run(&strs(&deploy(&["-auto-approve"])));
    let first = t0.elapsed();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(out.status.success(), "first deploy:\n{text}");
    eprintln!(
        "first deploy of iTrust on 7 hosts: {:.1} s",
        first.as_secs_f64()
    );
    let url = format!("http://{}:80/", lb.addr());
    assert!(
        text.contains(&format!("iTrust answers at {}", url.trim_end_matches('/'))),
        "{text}"
    );
    let ws = t.path().join(".pipeline/modules/iTrust");
    let st = pipeline_state::StateStore::open(&ws)
        .unwrap()
        .state()
        .clone();
    let password = st.resources["database.itrust"].attrs["password"]
        .as_str()
        .expect("a generated password in state")
        .to_string();
    assert!(password.len() >= 16, "{password:?}");
    assert!(!text.contains(&password), "the password in the output");

    // Every instance answers through nginx, and they all write to the one database.
    for i in 0..20 {
        let (code, body) = http(
            "POST",
            &format!("{url}api/patients"),
            &format!("{{\"name\":\"p{i}\"}}"),
        )
        .expect("nginx answers");
        assert!(code == 200 || code == 201, "{code}: {body}");
    }
    let upstreams = sh(
        lb,
        "awk '$2 ~ /^20/ {print $4}' /var/log/nginx/pipeline-access.log | sort -u",
    );
    assert_eq!(
        upstreams.lines().count(),
        APP_HOSTS,
        "every instance answered through nginx: {upstreams}"
    );
    for h in &apps {
        let (code, body) = http("GET", &format!("http://{}:8080/api/patients", h.addr()), "")
            .unwrap_or_else(|| panic!("{} answers", h.name()));
        assert_eq!(code, 200, "{body}");
        let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            rows.as_array().map(Vec::len),
            Some(20),
            "{} reads the one database: {body}",
            h.name()
        );
    }
    assert!(
        wait_until(Duration::from_secs(30), || lab::heartbeat(
            &monitor, "itrust"
        )
        .last()
        .is_some_and(|b| b.1 == APP_HOSTS as u64)),
        "the monitor sees 5 healthy instances: {:?}",
        lab::heartbeat(&monitor, "itrust").last()
    );
    // Again: nothing changes, nothing restarts.
    let pids =
        |h: &pipeline_lab::Host| sh(h, "systemctl show -p MainPID --value pipeline-itrust-0");
    let before: Vec<String> = apps.iter().map(|h| pids(h)).collect();
    let t0 = Instant::now();
    let out = t.ok(&strs(&deploy(&["-auto-approve"])));
    eprintln!("no-op deploy: {:.2} s", t0.elapsed().as_secs_f64());
    assert!(out.contains("No changes"), "{out}");
    let after: Vec<String> = apps.iter().map(|h| pids(h)).collect();
    assert_eq!(before, after, "nothing restarted");

    // A new WAR: the plan shows each host's update; the rollout keeps 4 of 5 serving.
    std::fs::write(src.join("VERSION"), "2.0\n").unwrap();
    let out = t.run(&strs(&deploy(&[])));
    let plan = s(&out.stdout);
    for h in &apps {
        assert!(
            plan.contains(&format!("# on {}: ", h.name())),
            "the plan shows {}'s change: {plan}",
            h.name()
        );
    }
    eprintln!(
        "plan of the new WAR:\n{}",
        plan.lines()
            .filter(|l| l.contains("# on ") || l.contains("service.itrust"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let load = load::start(
        &format!("{}:80", lb.addr()),
        "GET",
        "/version",
        "",
        RATE,
        4,
        false,
        Duration::from_secs(600),
    );
    std::thread::sleep(Duration::from_secs(1));
    let (from, t0) = (lab::now_ms(), Instant::now());
    t.ok(&strs(&deploy(&["-auto-approve"])));
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let to = lab::now_ms();
    let report = load.stop();
    eprintln!(
        "rollout of a new WAR on 5 hosts: {:.1} s; load through nginx: {}",
        took.as_secs_f64(),
        report.summary()
    );
    assert_eq!(
        report.failed,
        0,
        "{:?}",
        &report.errors[..report.errors.len().min(5)]
    );
    let seconds = (to - from) as f64 / 1000.0;
    assert!(
        report.sent as f64 >= 50.0 * seconds,
        "at least 50 requests a second: {} in {seconds:.1} s",
        report.sent
    );
    let beats: Vec<_> = lab::heartbeat(&monitor, "itrust")
        .into_iter()
        .filter(|b| b.0 >= from && b.0 <= to)
        .collect();
    let fewest = beats.iter().map(|b| b.1).min().unwrap_or(0);
    eprintln!(
        "monitor: {} heartbeats over {seconds:.1} s, fewest healthy {fewest} of {APP_HOSTS}",
        beats.len()
    );
    assert!(
        beats.len() as f64 >= seconds * 10.0 * 0.8,
        "{}",
        beats.len()
    );
    assert!(fewest >= 4, "{beats:?}");
    for h in &apps {
        let (_, v) = http("GET", &format!("http://{}:8080/version", h.addr()), "").unwrap();
        assert_eq!(v.trim(), "2.0", "{}", h.name());
    }
    // The data survived the rollout.
    let (_, body) = http("GET", &format!("{url}api/patients"), "").unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .as_array()
            .map(Vec::len),
        Some(20)
    );
    let out = t.run(&[
        "--state-dir",
        ".pipeline/modules/iTrust",
        "destroy",
        "-auto-approve",
        "-i",
        "inventory.ini",
    ]);
    eprintln!(
        "destroy: {} ; whole test {:.1} s",
        out.status,
        started.elapsed().as_secs_f64()
    );
}
