//! Remote benchmark (issue 10): the 6-host stack of tests/remote_rollout.rs (a service on 5 lab
//! hosts behind nginx on a sixth) deployed by `pipeline`, side by side with `ansible-playbook`
//! running the same roles with the same variables against the same hosts.
//!
//! Run with `cargo bench --bench remote` (root, podman and the lab image: scripts/lab-install,
//! scripts/lab-image). It prints, in one run:
//!
//! - the first deploy (`pipeline apply`: build, nginx installed through the lab's apt cache,
//!   the app on 5 hosts);
//! - the no-op deploy: `pipeline apply -auto-approve` with nothing changed in the stack or on the
//!   hosts (refresh over ssh, plan, nothing to apply), and `pipeline plan`;
//! - `ansible-playbook` of `playbooks/service.yml` (5 hosts) and `playbooks/nginx.yml` (1 host)
//!   from pipeline's own bundle with the variables pipeline gives them, with nothing to change
//!   (its recap must say `changed=0` on every host, or the bench stops: then it would not be the
//!   same work), with the settings a careful user would choose (pipelining, ControlPersist,
//!   20 forks, no fact gathering as the playbooks say);
//!
//! each `PIPELINE_REMOTE_RUNS` times (default 5), after one warm-up run each, so both reuse open
//! ssh masters. Nothing here fails on timing: it prints figures.
//!
//! The lab scaffolding is the tests' (tests/common/lab.rs); the work directory is the tests'
//! `Scratch`, whose drop stops the ssh masters of its work directory and removes their socket
//! directory (`/tmp/pipeline-ssh-*`), so a run leaves none behind.

#[path = "../tests/common/mod.rs"]
mod common;

use common::lab::{self, RUN};
use common::Scratch;
use pipeline_lab::{Lab, LabOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn pipeline(t: &Scratch, args: &[&str]) -> Duration {
    let started = Instant::now();
    let out = t.run(args);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "pipeline {args:?}:\n{}{}",
        common::s(&out.stdout),
        common::s(&out.stderr)
    );
    took
}

fn stats(label: &str, runs: &[Duration]) {
    let mut s: Vec<f64> = runs.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{label:<58} median {:>6.2} s   min {:>6.2} s   max {:>6.2} s   ({} runs)",
        s[s.len() / 2],
        s[0],
        s[s.len() - 1],
        s.len()
    );
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// What ansible-playbook runs: the playbook, the host pattern and the variables file.
struct Play {
    playbook: PathBuf,
    hosts: &'static str,
    vars: PathBuf,
}

/// One ansible-playbook run of each play; panics unless every host's recap says changed=0.
fn ansible_noop(lab: &Lab, inventory: &Path, plays: &[Play]) -> Duration {
    let t = Instant::now();
    for p in plays {
        let out = lab
            .ansible("ansible-playbook")
            .arg("-i")
            .arg(inventory)
            .arg(&p.playbook)
            .arg("-e")
            .arg(format!("@{}", p.vars.display()))
            .arg("-e")
            .arg(format!("pipeline_hosts={}", p.hosts))
            .env(
                "ANSIBLE_ROLES_PATH",
                p.playbook.parent().unwrap().join("../roles"),
            )
            .env("ANSIBLE_PIPELINING", "True")
            .env("ANSIBLE_FORKS", "20")
            .output()
            .expect("run ansible-playbook");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "ansible-playbook {}:\n{text}{}",
            p.playbook.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let recap: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("PLAY RECAP"))
            .skip(1)
            .filter(|l| l.contains("ok="))
            .collect();
        assert!(
            !recap.is_empty() && recap.iter().all(|l| l.contains("changed=0")),
            "not a no-op, so not the same work:\n{text}"
        );
    }
    t.elapsed()
}

fn main() {
    if !pipeline_lab::image_present() {
        println!("remote bench: the lab image is missing (scripts/lab-install && scripts/lab-image); nothing measured");
        return;
    }
    let runs: usize = std::env::var("PIPELINE_REMOTE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let t = Instant::now();
    let lab = Lab::with_options(6, LabOptions { apt_cache: true }).expect("lab");
    println!("lab of 6 hosts up in {:.1} s", t.elapsed().as_secs_f64());
    let inv = lab::edge_inventory(&lab);
    let t = lab::scratch(&inv, "s.hcl", &lab::edge_stack(lab.host(0).name()));
    let dir = t.path();

    let first = pipeline(&t, &["apply", "-auto-approve", "s.hcl"]);
    println!(
        "{:<58} {:>6.2} s",
        "first deploy: pipeline apply (6 hosts, nginx installed)",
        first.as_secs_f64()
    );

    // The same roles for ansible-playbook: pipeline's bundle and the variables it gives them.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(".pipeline/state.json")).expect("state"))
            .unwrap();
    let res = &state["resources"];
    let release = res["service.app"]["attrs"]["release"]
        .as_str()
        .unwrap()
        .to_string();
    let config = res["balancer.front"]["attrs"]["config"]
        .as_str()
        .unwrap()
        .to_string();
    let bundle = pipeline_ssh::ansible::Bundle::embedded()
        .materialise(&dir.join("bundle"))
        .expect("bundle");
    let artifact = dir.join(format!(".pipeline/artifacts/{release}.tar.gz"));
    assert!(artifact.exists(), "{}", artifact.display());
    let service_vars = serde_json::json!({
        "pipeline_service": "app",
        "pipeline_artifact": artifact,
        "pipeline_release": release,
        "pipeline_env": {},
        "pipeline_secret_env": {},
        "pipeline_instances": [{ "unit": "app-0", "port": 8080, "run": ["/bin/sh", "-c", RUN] }],
    });
    let nginx_vars = serde_json::json!({
        "pipeline_nginx_conf_b64": base64(config.as_bytes()),
        "pipeline_nginx_restart": false,
    });
    std::fs::write(dir.join("service-vars.json"), service_vars.to_string()).unwrap();
    std::fs::write(dir.join("nginx-vars.json"), nginx_vars.to_string()).unwrap();
    let ansible_inv = dir.join("ansible-inventory.ini");
    std::fs::write(
        &ansible_inv,
        format!(
            "{inv}ansible_python_interpreter=/usr/bin/python3\n\
             ansible_ssh_common_args='-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes'\n",
            lab.known_hosts_file().display()
        ),
    )
    .unwrap();
    let plays = [
        Play {
            playbook: bundle.join("playbooks/service.yml"),
            hosts: "web",
            vars: dir.join("service-vars.json"),
        },
        Play {
            playbook: bundle.join("playbooks/nginx.yml"),
            hosts: "edge",
            vars: dir.join("nginx-vars.json"),
        },
    ];

    // Warm-up, then the runs, interleaved so load on the machine hits both alike.
    pipeline(&t, &["apply", "-auto-approve", "s.hcl"]);
    ansible_noop(&lab, &ansible_inv, &plays);
    let (mut apply, mut plan, mut ansible) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        apply.push(pipeline(&t, &["apply", "-auto-approve", "s.hcl"]));
        plan.push(pipeline(&t, &["plan", "s.hcl"]));
        ansible.push(ansible_noop(&lab, &ansible_inv, &plays));
    }
    println!("\nno-op deploy of the 6-host stack, nothing to change:");
    stats("pipeline apply -auto-approve", &apply);
    stats("pipeline plan", &plan);
    stats(
        "ansible-playbook service.yml + nginx.yml (changed=0)",
        &ansible,
    );
    let _ = t.run(&["destroy", "-auto-approve", "s.hcl"]);
}
