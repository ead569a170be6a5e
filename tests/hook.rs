//! `pipeline hook install`: a push to the deploy branch of a real bare repository (local file
//! transport, so git runs receive-pack and the hook as it does for any remote) plans and
//! applies the pushed revision; other branches deploy nothing; a failing deploy fails the push
//! and leaves the branch; two pushes at once take turns.

mod common;

use common::{s, Scratch, BIN};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// git with a fixed identity and no user or system configuration.
fn git(dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("git");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GIT_") {
            c.env_remove(k);
        }
    }
    c.args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Ada")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .output()
        .expect("run git")
}

fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} failed:\n{}{}",
        s(&out.stdout),
        s(&out.stderr)
    );
    s(&out.stdout).trim().to_string()
}

/// A bare repository with the hook for `production`, a clone of it, state in `.pipeline`.
struct Setup {
    t: Scratch,
    bare: PathBuf,
    work: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let t = Scratch::new();
        let bare = t.path().join("app.git");
        git_ok(t.path(), &["init", "-q", "--bare", "-b", "main", "app.git"]);
        let work = t.clone_as("work");
        let out = t.run(&[
            "hook",
            "install",
            "--repo",
            bare.to_str().unwrap(),
            "--branch",
            "production",
            "--state-dir",
            t.path().join(".pipeline").to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", s(&out.stderr));
        Setup { t, bare, work }
    }

    fn state_dir(&self) -> PathBuf {
        self.t.path().join(".pipeline")
    }

    fn serial(&self) -> u64 {
        std::fs::read_to_string(self.state_dir().join("state.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["serial"].as_u64())
            .unwrap_or(0)
    }

    fn log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state_dir().join("deploys.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn branch(&self, name: &str) -> String {
        git_ok(&self.bare, &["rev-parse", "--verify", "-q", name])
    }

    fn state_list(&self) -> String {
        self.t.ok(&[
            "state",
            "list",
            "--state-dir",
            self.state_dir().to_str().unwrap(),
        ])
    }
}

trait CloneAs {
    fn clone_as(&self, name: &str) -> PathBuf;
}
impl CloneAs for Scratch {
    fn clone_as(&self, name: &str) -> PathBuf {
        git_ok(self.path(), &["clone", "-q", "app.git", name]);
        self.path().join(name)
    }
}

/// Write `files` into the clone, commit them, and push `refspec`.
fn commit_and_push(dir: &Path, files: &[(&str, &str)], refspec: &str) -> Output {
    for (rel, text) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    git_ok(dir, &["add", "-A"]);
    git_ok(dir, &["commit", "-q", "-m", &format!("push to {refspec}")]);
    git(dir, &["push", "origin", refspec])
}

fn file_stack(out: &Path, content: &str) -> String {
    format!(
        "file \"site\" {{\n  path    = \"{}\"\n  content = \"{content}\"\n}}\n",
        out.display()
    )
}

#[test]
fn a_push_to_production_deploys_and_other_branches_do_not() {
    let s_ = Setup::new();
    let site = s_.t.path().join("out/site.txt");

    // main: nothing deployed, nothing said.
    let out = commit_and_push(
        &s_.work,
        &[("main.hcl", &file_stack(&site, "one"))],
        "HEAD:main",
    );
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert!(!s(&out.stderr).contains("remote:"), "{}", s(&out.stderr));
    assert!(!site.exists());
    assert_eq!(s_.serial(), 0);

    // production: the plan and the result reach the pusher as it happens.
    let out = git(&s_.work, &["push", "origin", "HEAD:production"]);
    let err = s(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("remote: pipeline: deploying"), "{err}");
    assert!(
        err.contains("remote:   # file.site will be created"),
        "{err}"
    );
    assert!(err.contains("remote: Apply complete! 1 added"), "{err}");
    assert_eq!(std::fs::read_to_string(&site).unwrap(), "one");
    assert!(s_.state_list().contains("file.site"));
    let head = git_ok(&s_.work, &["rev-parse", "HEAD"]);
    assert_eq!(s_.branch("production"), head);
    let log = s_.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["rev"], head.as_str());
    assert_eq!(log[0]["result"], "applied");
    assert_eq!(log[0]["author"], "Ada <ada@example.com>");
    assert!(!log[0]["pusher"].as_str().unwrap().is_empty());
    assert!(log[0]["started_ms"].as_u64() <= log[0]["finished_ms"].as_u64());
    let serial = s_.serial();
    assert!(serial > 0);

    // A change updates it.
    let out = commit_and_push(
        &s_.work,
        &[("main.hcl", &file_stack(&site, "two"))],
        "HEAD:production",
    );
    let err = s(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("remote: Apply complete!"), "{err}");
    assert_eq!(std::fs::read_to_string(&site).unwrap(), "two");
    let serial = {
        assert!(s_.serial() > serial);
        s_.serial()
    };

    // main again: production's deploy stays, state unchanged.
    let out = commit_and_push(
        &s_.work,
        &[("main.hcl", &file_stack(&site, "three"))],
        "HEAD:main",
    );
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert_eq!(std::fs::read_to_string(&site).unwrap(), "two");
    assert_eq!(s_.serial(), serial);

    // Deleting the branch deploys nothing (one line) and leaves what runs.
    let out = git(&s_.work, &["push", "origin", ":production"]);
    let err = s(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("production deleted; nothing deployed"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&site).unwrap(), "two");
    assert_eq!(s_.serial(), serial);
    assert_eq!(s_.log().len(), 2);
}

#[test]
fn a_wrong_stack_fails_the_push_and_leaves_the_branch() {
    let s_ = Setup::new();
    let site = s_.t.path().join("out/site.txt");
    let out = commit_and_push(
        &s_.work,
        &[("main.hcl", &file_stack(&site, "good"))],
        "HEAD:production",
    );
    assert!(out.status.success(), "{}", s(&out.stderr));
    let good = s_.branch("production");
    let serial = s_.serial();

    let out = commit_and_push(
        &s_.work,
        &[(
            "main.hcl",
            "file \"site\" {\n  path = \"x\"\n  content = = \"bad\"\n}\n",
        )],
        "HEAD:production",
    );
    let err = s(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("remote:  --> main.hcl:3:"), "{err}");
    assert!(err.contains("remote: "), "{err}");
    assert!(
        err.contains("[remote rejected] HEAD -> production"),
        "{err}"
    );
    assert_eq!(s_.branch("production"), good);
    assert_eq!(std::fs::read_to_string(&site).unwrap(), "good");
    assert_eq!(s_.serial(), serial);
    let log = s_.log();
    assert_eq!(log.last().unwrap()["result"], "error");
    assert!(log.last().unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("main.hcl:3:"));
}

/// A stack whose apply takes over a second (a service whose build sleeps: builds are the slow
/// step of real deploys) and a file naming the pushed version.
fn slow_stack(site: &Path, version: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "main.hcl",
            format!(
                r#"service "web" {{
  source = "app"
  build  = "sleep 1"
  run    = "exec python3 -m http.server {{{{port}}}} --bind 127.0.0.1"
  health = {{ type = "tcp", interval = "100ms" }}
}}

{}"#,
                file_stack(site, version)
            ),
        ),
        ("app/version.txt", version.to_string()),
    ]
}

fn push_files(dir: &Path, files: &[(&'static str, String)], refspec: &str) -> Output {
    let files: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
    commit_and_push(dir, &files, refspec)
}

#[test]
fn two_pushes_at_once_take_turns() {
    let s_ = Setup::new();
    let site = s_.t.path().join("out/site.txt");
    let out = push_files(&s_.work, &slow_stack(&site, "v0"), "HEAD:production");
    assert!(out.status.success(), "{}", s(&out.stderr));
    git_ok(&s_.work, &["push", "-q", "origin", "HEAD:main"]);
    let (a, b) = (s_.t.clone_as("a"), s_.t.clone_as("b"));
    // Each clone commits its own version, then both push at the same moment.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let push = |dir: PathBuf, v: &'static str| {
        let (barrier, site) = (barrier.clone(), site.clone());
        std::thread::spawn(move || {
            for (rel, text) in slow_stack(&site, v) {
                std::fs::write(dir.join(rel), text).unwrap();
            }
            git_ok(&dir, &["commit", "-qam", v]);
            barrier.wait();
            (v, git(&dir, &["push", "origin", "HEAD:production"]))
        })
    };
    let (ha, hb) = (push(a.clone(), "va"), push(b.clone(), "vb"));
    let results = [ha.join().unwrap(), hb.join().unwrap()];
    let ok: Vec<_> = results.iter().filter(|(_, o)| o.status.success()).collect();
    let refused: Vec<_> = results
        .iter()
        .filter(|(_, o)| !o.status.success())
        .collect();
    assert_eq!(ok.len(), 1, "exactly one push deploys");
    let (won, lost) = (ok[0].0, refused[0].0);
    let lost_err = s(&refused[0].1.stderr);
    let log = s_.log();
    let applied = log
        .iter()
        .find(|r| r["subject"] == won)
        .expect("winner logged");
    let refusal = log
        .iter()
        .find(|r| r["result"] == "refused")
        .expect("refusal logged");
    // The loser waited for the winner's deploy, then was told: it applied nothing.
    assert!(
        lost_err.contains(&format!(
            "waiting for the deploy of {}",
            &applied["rev"].as_str().unwrap()[..12]
        )),
        "{lost_err}"
    );
    assert!(lost_err.contains("production moved to"), "{lost_err}");
    assert!(lost_err.contains("nothing was deployed"), "{lost_err}");
    assert!(refusal["started_ms"].as_u64() >= applied["finished_ms"].as_u64());
    assert!(
        applied["finished_ms"].as_u64().unwrap() - applied["started_ms"].as_u64().unwrap() >= 1000
    );
    assert_eq!(std::fs::read_to_string(&site).unwrap(), won);
    assert_eq!(s_.branch("production"), applied["rev"].as_str().unwrap());
    eprintln!(
        "winner {won} deployed in {} ms; {lost} waited and was refused {} ms after it finished",
        applied["finished_ms"].as_u64().unwrap() - applied["started_ms"].as_u64().unwrap(),
        refusal["started_ms"].as_u64().unwrap() - applied["finished_ms"].as_u64().unwrap()
    );

    // The loser rebases onto what runs and pushes again: its version deploys.
    let lost_dir = if lost == "va" { &a } else { &b };
    git_ok(lost_dir, &["fetch", "-q", "origin"]);
    for (rel, text) in slow_stack(&site, lost) {
        std::fs::write(lost_dir.join(rel), text).unwrap();
    }
    git_ok(lost_dir, &["reset", "-q", "--soft", "origin/production"]);
    git_ok(lost_dir, &["commit", "-qam", lost]);
    let out = git(lost_dir, &["push", "origin", "HEAD:production"]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert_eq!(std::fs::read_to_string(&site).unwrap(), lost);
    // Every deploy's time in the log is its own: none overlaps another.
    let log = s_.log();
    for w in log.windows(2) {
        assert!(
            w[1]["started_ms"].as_u64() >= w[0]["finished_ms"].as_u64(),
            "{log:?}"
        );
    }
    // What runs is what production names: a plan of the deployed checkout changes nothing.
    let state = s_.state_dir();
    let plan = s_.t.run(&[
        "plan",
        "-detailed-exitcode",
        "--state-dir",
        state.to_str().unwrap(),
        state.join("checkout/main.hcl").to_str().unwrap(),
    ]);
    assert_eq!(plan.status.code(), Some(0), "{}", s(&plan.stdout));
}

#[test]
fn hook_install_refuses_what_it_must_not_touch() {
    let t = Scratch::new();
    let install = |repo: &Path, extra: &[&str]| {
        let mut args = vec![
            "hook",
            "install",
            "--repo",
            repo.to_str().unwrap(),
            "--branch",
            "production",
        ];
        args.extend_from_slice(extra);
        t.run(&args)
    };
    let refused = |out: &Output, path: &Path, what: &str| {
        let err = s(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(what), "{err}");
    };
    let missing = t.path().join("nowhere.git");
    refused(&install(&missing, &[]), &missing, "does not exist");
    assert!(!missing.exists());

    let plain = t.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    refused(&install(&plain, &[]), &plain, "is not a git repository");
    assert_eq!(std::fs::read_dir(&plain).unwrap().count(), 0);

    git_ok(t.path(), &["init", "-q", "nonbare"]);
    let nonbare = t.path().join("nonbare");
    refused(
        &install(&nonbare, &[]),
        &nonbare,
        "is not a bare repository",
    );
    assert!(!nonbare.join(".git/hooks/update").exists());

    git_ok(t.path(), &["init", "-q", "--bare", "app.git"]);
    let bare = t.path().join("app.git");
    let theirs = bare.join("hooks/update");
    std::fs::write(&theirs, "#!/bin/sh\necho theirs\n").unwrap();
    refused(&install(&bare, &[]), &theirs, "-force");
    assert_eq!(
        std::fs::read_to_string(&theirs).unwrap(),
        "#!/bin/sh\necho theirs\n"
    );
    assert!(!bare.join("pipeline").exists());

    // A bad branch or a stack outside the repository.
    refused(
        &install(&bare, &["--stack", "../x.hcl"]),
        Path::new("../x.hcl"),
        "inside",
    );

    // -force replaces it and keeps it; reinstalling our own hook needs nothing.
    let out = install(&bare, &["-force"]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(bare.join("hooks/update.replaced")).unwrap(),
        "#!/bin/sh\necho theirs\n"
    );
    let hook = std::fs::read_to_string(&theirs).unwrap();
    assert!(
        hook.contains(&format!(
            "exec '{}' __hook",
            Path::new(BIN).canonicalize().unwrap().display()
        )),
        "{hook}"
    );
    let out = install(&bare, &[]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert!(s(&out.stdout).contains("Replaced the deploy hook installed before"));
    assert!(bare.join("pipeline").is_dir());
}

/// git sets GIT_DIR (and more) for a hook: the deploy clears them, so a service built from a
/// revision of its own repository finds that repository, not the one pushed to.
#[test]
fn the_stack_s_own_git_finds_its_own_repository() {
    let s_ = Setup::new();
    let src = s_.t.path().join("src");
    git_ok(s_.t.path(), &["init", "-q", "-b", "main", "src"]);
    std::fs::write(src.join("index.html"), "hello\n").unwrap();
    git_ok(&src, &["add", "-A"]);
    git_ok(&src, &["commit", "-qm", "app"]);
    let rev = git_ok(&src, &["rev-parse", "HEAD"]);
    let stack = format!(
        r#"service "web" {{
  source   = "{}"
  revision = "{rev}"
  run      = "exec python3 -m http.server {{{{port}}}} --bind 127.0.0.1"
  health   = {{ type = "tcp", interval = "100ms" }}
}}
"#,
        src.display()
    );
    let out = commit_and_push(&s_.work, &[("main.hcl", &stack)], "HEAD:production");
    let err = s(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("remote: Apply complete! 1 added"), "{err}");
    assert!(s_.state_list().contains("service.web"));
}

/// A pusher who gives up (Ctrl-C, a dropped connection) does not stop the deploy halfway: it
/// finishes and is logged; pushing again records it on the branch.
#[test]
fn a_pusher_who_leaves_mid_deploy_does_not_stop_it() {
    use std::io::BufRead;
    let s_ = Setup::new();
    let site = s_.t.path().join("out/site.txt");
    let out = push_files(&s_.work, &slow_stack(&site, "v0"), "HEAD:production");
    assert!(out.status.success(), "{}", s(&out.stderr));
    for (rel, text) in slow_stack(&site, "v1") {
        std::fs::write(s_.work.join(rel), text).unwrap();
    }
    git_ok(&s_.work, &["commit", "-qam", "v1"]);
    let rev = git_ok(&s_.work, &["rev-parse", "HEAD"]);
    let mut push = Command::new("git");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GIT_") {
            push.env_remove(k);
        }
    }
    let mut child = push
        .args(["push", "--progress", "origin", "HEAD:production"])
        .current_dir(&s_.work)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stderr.take().unwrap());
    for l in lines.split(b'\n') {
        if s(&l.unwrap()).contains("service.web[0]: ") {
            break;
        }
    }
    // The build (1 s) runs now: the pusher goes away.
    child.kill().unwrap();
    child.wait().unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let record = loop {
        if let Some(r) = s_.log().into_iter().find(|r| r["rev"] == rev.as_str()) {
            break r;
        }
        assert!(
            std::time::Instant::now() < until,
            "the deploy of v1 never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(record["result"], "applied", "{record}");
    assert_eq!(std::fs::read_to_string(&site).unwrap(), "v1");
    // Whether or not git moved the branch before the pusher left, pushing again records it.
    let out = git(&s_.work, &["push", "origin", "HEAD:production"]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert_eq!(s_.branch("production"), rev);
}

/// The stack of the lab deploy: the fixture app as a service on every host of `web`.
fn lab_stack(run: &str) -> String {
    format!(
        "provider \"ssh\" {{\n  inventory = \"inventory.ini\"\n}}\n\
         host \"web\" {{\n  provider = ssh\n  group    = \"web\"\n}}\n\
         service \"app\" {{\n  provider      = ssh\n  on            = host.web\n  source        = \"app\"\n  \
         run           = \"{run}\"\n  port          = 8080\n  health        = {{ path = \"/health\" }}\n  \
         update        = {{ strategy = \"rolling\", max_unavailable = 1 }}\n  start_timeout = \"8s\"\n}}\n"
    )
}

/// The version each lab host's instance answers (None: it does not answer).
fn lab_versions(lab: &pipeline_lab::Lab) -> Vec<Option<String>> {
    lab.hosts()
        .iter()
        .map(|h| {
            common::http("GET", &format!("http://{}:8080/", h.addr()), "")
                .filter(|(c, _)| *c == 200)
                .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
                .and_then(|j| j["version"].as_str().map(str::to_string))
        })
        .collect()
}

/// A push to `production` deploys to real hosts (the lab: podman hosts with systemd and sshd):
/// the plan, each host's dry run and the result reach the pusher; a push to `main` deploys
/// nothing; a deploy that fails on a host is refused to the pusher, naming the host, and the
/// branch stays where it was.
#[test]
fn a_push_to_production_deploys_to_lab_hosts_and_a_failing_one_is_refused() {
    if !pipeline_lab::require() {
        return;
    }
    let lab = pipeline_lab::Lab::new(2).unwrap_or_else(|e| panic!("{e:#}"));
    let s_ = Setup::new();
    let hosts: Vec<&pipeline_lab::Host> = lab.hosts().iter().collect();
    let inventory = common::lab::inventory(&lab, &[("web", &hosts)]);
    let files = |version: &str, run: &str| {
        vec![
            ("inventory.ini", inventory.clone()),
            ("app/app.py", common::lab::APP.to_string()),
            ("app/VERSION", format!("{version}\n")),
            ("main.hcl", lab_stack(run)),
        ]
    };

    // main: nothing reaches the hosts.
    let out = push_files(&s_.work, &files("v1", common::lab::RUN), "HEAD:main");
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert_eq!(lab_versions(&lab), vec![None, None]);
    assert_eq!(s_.serial(), 0);

    // production: deployed on both hosts, the plan with each host's dry run shown to the pusher.
    let t0 = std::time::Instant::now();
    let out = git(&s_.work, &["push", "origin", "HEAD:production"]);
    let err = s(&out.stderr);
    eprintln!(
        "push to production (first deploy on 2 hosts): {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("remote:   # service.app will be created"),
        "{err}"
    );
    assert!(err.contains("remote: Apply complete!"), "{err}");
    assert_eq!(
        lab_versions(&lab),
        vec![Some("v1".to_string()), Some("v1".to_string())]
    );
    let good = s_.branch("production");

    // A release that never comes up: the pusher is told which host, the branch stays, the
    // other host keeps serving v1.
    let out = push_files(
        &s_.work,
        &files("v2", "exec python3 missing.py"),
        "HEAD:production",
    );
    let err = s(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let first = lab.host(0).name();
    assert!(err.contains("remote: ") && err.contains(first), "{err}");
    assert!(
        err.contains("[remote rejected] HEAD -> production"),
        "{err}"
    );
    assert_eq!(s_.branch("production"), good);
    assert_eq!(lab_versions(&lab)[1].as_deref(), Some("v1"));
    // The apply failed (a plan error would be "error").
    assert_eq!(s_.log().last().unwrap()["result"], "failed");

    // Fixed: the next push converges both hosts.
    let out = push_files(&s_.work, &files("v3", common::lab::RUN), "HEAD:production");
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert_eq!(
        lab_versions(&lab),
        vec![Some("v3".to_string()), Some("v3".to_string())]
    );
    let out = s_.t.run(&[
        "destroy",
        "-auto-approve",
        "--state-dir",
        s_.state_dir().to_str().unwrap(),
        "-i",
        s_.work.join("inventory.ini").to_str().unwrap(),
        s_.work.join("main.hcl").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", s(&out.stderr));
}
