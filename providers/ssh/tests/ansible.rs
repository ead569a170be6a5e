//! The ansible-core runner against real ansible-playbook: on this machine (connection local) for
//! cancellation, timeouts and failures, and against three lab hosts for check/diff, apply, a
//! no-op run, a secret that leaks nowhere, a failing task and a host turned off.

use pipeline_ssh::ansible::{
    Ansible, AnsibleError, Connection, EventKind, Run, TaskEvent, PINNED_VERSION,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The located ansible, or `None` (a loud skip) when it is not installed outside CI.
fn ansible_or_skip() -> Option<Ansible> {
    match Ansible::locate() {
        Ok(a) => Some(a),
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            if ci || std::env::var_os("PIPELINE_LAB").is_some() {
                panic!("{e}");
            }
            eprintln!("!! SKIPPED: {e}");
            None
        }
    }
}

fn local_inventory(dir: &Path) -> PathBuf {
    let p = dir.join("local.ini");
    std::fs::write(
        &p,
        "[here]\nlocalhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n",
    )
    .unwrap();
    p
}

/// Processes whose command line or environment mentions `needle`, as "pid: cmdline".
fn processes_mentioning(needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if contains(&cmdline, needle) || contains(&environ, needle) {
            let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push(format!("{name}: {shown}"));
        }
    }
    found
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Waits (bounded) until no process mentions `needle`; what is left then.
fn left_behind(needle: &[u8]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_dirs(work: &Path) -> Vec<String> {
    std::fs::read_dir(work)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("run-"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn dropping_a_run_or_its_timeout_kills_every_process_and_removes_the_secrets() {
    let Some(ansible) = ansible_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("a");
    let mut run = Run::new(fixture("sleep.yml"), local_inventory(tmp.path()));
    run.secrets
        .insert("unused_secret".into(), "s3cret-never-used".into());

    // Cancel: the future is dropped once the long task runs.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    let running = ansible.run(&run, &work, move |e: &TaskEvent| {
        if e.event == EventKind::TaskStart && e.task.as_deref() == Some("wait a long time") {
            if let Some(tx) = tx.take() {
                let _ = tx.send(());
            }
        }
    });
    let started = Instant::now();
    tokio::select! {
        r = running => panic!("the sleep ended on its own: {r:?}"),
        _ = rx => {}
    }
    // While it ran, `sleep 60` was a process of the run (it carries the work dir in ANSIBLE_CONFIG).
    let marker = work.to_string_lossy().into_owned();
    eprintln!(
        "cancelled {:.1} s after the start",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        left_behind(marker.as_bytes()),
        Vec::<String>::new(),
        "processes outlived a dropped run"
    );
    assert_eq!(run_dirs(&work), Vec::<String>::new(), "the run dir stayed");

    // Timeout: the same, as an error that names what was running.
    run.timeout = Duration::from_secs(8);
    let t = Instant::now();
    let err = ansible.run(&run, &work, |_| {}).await.unwrap_err();
    eprintln!("timed out after {:.1} s: {err}", t.elapsed().as_secs_f64());
    match &err {
        AnsibleError::Timeout { after, .. } => assert_eq!(*after, Duration::from_secs(8)),
        other => panic!("not a timeout: {other}"),
    }
    assert!(err.to_string().contains("sleep.yml"), "{err}");
    assert_eq!(left_behind(marker.as_bytes()), Vec::<String>::new());
    assert_eq!(run_dirs(&work), Vec::<String>::new());
}

#[tokio::test]
async fn on_this_machine_a_run_checks_applies_and_then_changes_nothing() {
    let Some(ansible) = ansible_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let log = tmp.path().join("ansible.log");
    let mut run = Run::new(fixture("site.yml"), local_inventory(tmp.path()));
    run.vars.insert("greeting".into(), "hi".into());
    run.vars
        .insert("conf_dir".into(), out.to_string_lossy().into_owned().into());
    run.secrets
        .insert("db_password".into(), "local-Secret-93x".into());
    run.limit = Some(vec!["localhost".into()]);
    run.log = Some(log.clone());
    let work = tmp.path().join("a");
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut changed = Vec::new();
    for check in [true, false, false] {
        run.check = check;
        run.diff = check;
        let recap = ansible
            .run(&run, &work, collect(&events))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        changed.push(recap.host("localhost").unwrap().stats.changed);
    }
    assert_eq!(changed, vec![2, 2, 0], "check, apply, again");
    assert_eq!(
        std::fs::read_to_string(out.join("pipeline-fixture-secret.conf")).unwrap(),
        "password = local-Secret-93x\n"
    );
    let seen = serde_json::to_string(&*events.lock().unwrap()).unwrap();
    assert!(!seen.contains("local-Secret-93x"));
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log.matches("PLAY RECAP").count(), 3, "{log}");
    assert!(!log.contains("local-Secret-93x"));
    assert_eq!(run_dirs(&work), Vec::<String>::new());
}

#[tokio::test]
async fn a_broken_playbook_is_an_error_with_ansibles_words() {
    let Some(ansible) = ansible_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yml");
    std::fs::write(
        &bad,
        "- hosts: all\n  tasks:\n    - name: x\n      no_such_module_here: {}\n",
    )
    .unwrap();
    let run = Run::new(&bad, local_inventory(tmp.path()));
    let err = ansible
        .run(&run, &tmp.path().join("a"), |_| {})
        .await
        .unwrap_err();
    match &err {
        AnsibleError::Exit { tail, .. } => {
            assert!(tail.contains("no_such_module_here"), "{tail}")
        }
        other => panic!("not an exit error: {other}"),
    }
    let missing = Run::new(
        "playbooks/no-such-playbook.yml",
        local_inventory(tmp.path()),
    );
    let err = ansible
        .run(&missing, &tmp.path().join("a"), |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-playbook.yml"), "{err}");
}

/// Samples every command line and environment on this machine, and `ps -eo args` on the lab
/// hosts, until stopped; returns where the needle was seen and how many samples were taken.
struct Sampler {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(Vec<String>, usize)>>,
}

impl Sampler {
    fn start(needle: &str, containers: Vec<String>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (n, s) = (needle.as_bytes().to_vec(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let (mut hits, mut samples) = (Vec::new(), 0);
            while !s.load(Ordering::Relaxed) {
                hits.extend(processes_mentioning(&n));
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (hits, samples)
        }));
        let (n, s) = (needle.to_string(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let (mut hits, mut samples) = (Vec::new(), 0);
            while !s.load(Ordering::Relaxed) {
                for c in &containers {
                    let out = std::process::Command::new("podman")
                        .args(["exec", c, "ps", "-eo", "args"])
                        .output();
                    if let Ok(out) = out {
                        let text = String::from_utf8_lossy(&out.stdout);
                        hits.extend(
                            text.lines()
                                .filter(|l| l.contains(&n))
                                .map(|l| format!("{c}: {l}")),
                        );
                        samples += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (hits, samples)
        }));
        Sampler { stop, threads }
    }

    fn finish(self) -> (Vec<String>, Vec<usize>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut hits = Vec::new();
        let mut counts = Vec::new();
        for t in self.threads {
            let (h, n) = t.join().unwrap();
            hits.extend(h);
            counts.push(n);
        }
        (hits, counts)
    }
}

fn collect(events: &Arc<Mutex<Vec<TaskEvent>>>) -> impl FnMut(&TaskEvent) + Send + '_ {
    move |e: &TaskEvent| events.lock().unwrap().push(e.clone())
}

fn kinds_for(events: &[TaskEvent], host: &str, task: &str) -> Vec<EventKind> {
    events
        .iter()
        .filter(|e| e.host.as_deref() == Some(host) && e.task.as_deref() == Some(task))
        .map(|e| e.event)
        .collect()
}

const PUBLIC_TASK: &str = "write the public settings";
const SECRET_TASK: &str = "write the database password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_lab_hosts_check_apply_noop_keep_the_secret_and_name_failed_and_unreachable_hosts() {
    if !pipeline_lab::require() {
        return;
    }
    let ansible = Ansible::locate().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ansible.version().await.unwrap(), PINNED_VERSION);
    let t = Instant::now();
    let lab = pipeline_lab::Lab::new(3).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("Lab::new(3): {:.1} s", t.elapsed().as_secs_f64());
    let names: Vec<String> = lab.hosts().iter().map(|h| h.name().to_string()).collect();
    let containers: Vec<String> = lab
        .hosts()
        .iter()
        .map(|h| h.container().to_string())
        .collect();
    let inventory = lab.write_inventory().unwrap();
    let work = lab.dir().join("pa");
    let log = lab.dir().join("ansible.log");
    let secret = format!("pw-{}-{}-Zq7x", std::process::id(), t.elapsed().as_nanos());

    let mut run = Run::new(fixture("site.yml"), &inventory);
    run.vars
        .insert("greeting".into(), "hello from pipeline".into());
    run.secrets
        .insert("db_password".into(), secret.clone().into());
    run.check = true;
    run.diff = true;
    run.timeout = Duration::from_secs(300);
    run.connection = Connection::default();
    run.log = Some(log.clone());

    let events = Arc::new(Mutex::new(Vec::new()));
    let sampler = Sampler::start(&secret, containers.clone());

    // Plan: --check --diff says what would change on each host, and changes nothing.
    let t = Instant::now();
    let recap = ansible
        .run(&run, &work, collect(&events))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "--check --diff on 3 hosts: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(recap.check);
    for n in &names {
        let h = recap
            .host(n)
            .unwrap_or_else(|| panic!("{n} not in {recap:?}"));
        let tasks: Vec<&str> = h.changes.iter().map(|c| c.task.as_str()).collect();
        assert_eq!(tasks, vec![PUBLIC_TASK, SECRET_TASK], "on {n}");
        let diff = h.changes[0]
            .diff
            .as_deref()
            .unwrap_or_else(|| panic!("no diff on {n}"));
        assert!(diff.contains("+greeting = hello from pipeline"), "{diff}");
        assert!(diff.contains(&format!("+host = {n}")), "{diff}");
        assert_eq!(h.changes[1].diff, None, "a no_log task shows no diff");
    }
    for (n, h) in names.iter().zip(lab.hosts()) {
        let there = h
            .exec(&["sh", "-c", "ls /etc/pipeline-fixture* 2>/dev/null | wc -l"])
            .unwrap();
        assert_eq!(there.trim(), "0", "check mode wrote on {n}");
    }

    // Apply: changed per host, told through events as it happens.
    run.check = false;
    events.lock().unwrap().clear();
    let t = Instant::now();
    let recap = ansible
        .run(&run, &work, collect(&events))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("first apply on 3 hosts: {:.1} s", t.elapsed().as_secs_f64());
    let seen = events.lock().unwrap().clone();
    for n in &names {
        assert_eq!(recap.host(n).unwrap().stats.changed, 2, "on {n}");
        assert_eq!(
            kinds_for(&seen, n, PUBLIC_TASK),
            vec![EventKind::TaskStart, EventKind::Changed]
        );
        assert_eq!(
            kinds_for(&seen, n, SECRET_TASK),
            vec![EventKind::TaskStart, EventKind::Changed]
        );
        let hidden = seen
            .iter()
            .find(|e| {
                e.host.as_deref() == Some(n)
                    && e.event == EventKind::Changed
                    && e.task.as_deref() == Some(SECRET_TASK)
            })
            .unwrap();
        assert_eq!(hidden.msg.as_deref(), Some("(output hidden by no_log)"));
    }
    for (n, h) in names.iter().zip(lab.hosts()) {
        let conf = h.exec(&["cat", "/etc/pipeline-fixture.conf"]).unwrap();
        assert!(
            conf.contains("greeting = hello from pipeline"),
            "{n}: {conf}"
        );
        // The secret did arrive, where it belongs, private.
        let s = h
            .exec(&["sh", "-c", "stat -c %a /etc/pipeline-fixture-secret.conf; cat /etc/pipeline-fixture-secret.conf"])
            .unwrap();
        assert_eq!(s, format!("600\npassword = {secret}\n"), "on {n}");
    }

    // A second run changes nothing.
    events.lock().unwrap().clear();
    let recap = ansible
        .run(&run, &work, collect(&events))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recap.changed(), 0, "{recap:?}");
    for n in &names {
        let s = recap.host(n).unwrap().stats;
        assert_eq!((s.ok, s.changed, s.failed), (2, 0, 0), "on {n}");
    }

    let (hits, samples) = sampler.finish();
    eprintln!("secret sampler: {samples:?} samples (local every 20 ms, hosts by ps)");
    assert!(
        samples[0] > 10 && samples[1] > 3,
        "too few samples: {samples:?}"
    );
    assert_eq!(
        hits,
        Vec::<String>::new(),
        "the secret was on a command line or in an environment"
    );
    // Nowhere in the events, ansible's output, or the runner's directory (the secrets file is gone).
    let all_events = serde_json::to_string(&*events.lock().unwrap()).unwrap();
    assert!(!all_events.contains(&secret));
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(
        output.contains("PLAY RECAP"),
        "the log has ansible's output"
    );
    assert!(
        !output.contains(&secret),
        "the secret is in ansible's output"
    );
    assert_eq!(
        run_dirs(&work),
        Vec::<String>::new(),
        "a run dir (with the secrets file) stayed"
    );
    let mut stack = vec![work.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                let bytes = std::fs::read(&p).unwrap_or_default();
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "the secret is in {}",
                    p.display()
                );
            }
        }
    }

    // Side by side: ansible-playbook itself, same playbook, nothing to change, warm connections.
    let vars_file = lab.dir().join("plain-vars.json");
    std::fs::write(
        &vars_file,
        serde_json::json!({"greeting": "hello from pipeline", "db_password": secret}).to_string(),
    )
    .unwrap();
    // Runner first, then ansible-playbook alone: the same warm ControlMaster connections.
    let t = Instant::now();
    let recap = ansible
        .run(&run, &work, |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let noop = t.elapsed();
    assert_eq!(recap.changed(), 0);
    let t = Instant::now();
    let plain = lab
        .ansible("ansible-playbook")
        .env("ANSIBLE_SSH_CONTROL_PATH_DIR", work.join("cp"))
        .env("ANSIBLE_GATHERING", "explicit")
        .env("ANSIBLE_PIPELINING", "True")
        .arg("-i")
        .arg(&inventory)
        .arg("-e")
        .arg(format!("@{}", vars_file.display()))
        .arg(fixture("site.yml"))
        .output()
        .unwrap();
    let plain_took = t.elapsed();
    std::fs::remove_file(&vars_file).unwrap();
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stdout)
    );
    assert!(String::from_utf8_lossy(&plain.stdout).contains("changed=0"));
    eprintln!(
        "no-op run of the playbook on 3 hosts: runner {:.2} s, ansible-playbook alone {:.2} s",
        noop.as_secs_f64(),
        plain_took.as_secs_f64()
    );

    // A failing task: the host, the task and its message.
    let mut failing = Run::new(fixture("fail.yml"), &inventory);
    failing
        .vars
        .insert("fail_on".into(), serde_json::json!([names[1]]));
    events.lock().unwrap().clear();
    let err = ansible
        .run(&failing, &work, collect(&events))
        .await
        .unwrap_err();
    eprintln!("failing task: {err}");
    let AnsibleError::TasksFailed { recap } = &err else {
        panic!("not a task failure: {err}");
    };
    assert_eq!(recap.failed_hosts(), vec![names[1].as_str()]);
    let f = &recap.host(&names[1]).unwrap().failures[0];
    assert_eq!(f.task, "check the disk");
    assert!(f.msg.contains("disk quota exceeded on /srv"), "{}", f.msg);
    let text = err.to_string();
    assert!(
        text.contains(&names[1]) && text.contains("disk quota exceeded"),
        "{text}"
    );
    assert_eq!(
        kinds_for(&events.lock().unwrap(), &names[1], "check the disk"),
        vec![EventKind::TaskStart, EventKind::Failed]
    );
    for n in [&names[0], &names[2]] {
        assert_eq!(recap.host(n).unwrap().stats.failed, 0);
        assert_eq!(recap.host(n).unwrap().stats.skipped, 1, "on {n}");
    }

    // A host turned off: named as unreachable, the others done, in bounded time.
    lab.host(2).off().unwrap();
    run.check = false;
    let t = Instant::now();
    let told = Mutex::new(None);
    let err = ansible
        .run(&run, &work, |e: &TaskEvent| {
            if e.event == EventKind::Unreachable {
                told.lock().unwrap().get_or_insert(t.elapsed());
            }
        })
        .await
        .unwrap_err();
    let took = t.elapsed();
    let told = told.into_inner().unwrap().expect("an unreachable event");
    eprintln!(
        "one host off: its unreachable event after {:.1} s, the run's error after {:.1} s: {err}",
        told.as_secs_f64(),
        took.as_secs_f64()
    );
    let AnsibleError::Unreachable { recap } = &err else {
        panic!("not unreachable: {err}");
    };
    assert_eq!(recap.unreachable_hosts(), vec![names[2].as_str()]);
    assert!(
        err.to_string()
            .starts_with(&format!("unreachable: {}", names[2])),
        "{err}"
    );
    for n in [&names[0], &names[1]] {
        let s = recap.host(n).unwrap().stats;
        assert_eq!((s.ok, s.failed, s.unreachable), (2, 0, 0), "on {n}");
    }
    // Not a timing assertion: a hang (MACHINE-FACTS: ~10 minutes) would end in the run's timeout.
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert_eq!(run_dirs(&work), Vec::<String>::new());
}
