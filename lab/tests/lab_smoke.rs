//! The lab works: three hosts answer strict SSH and Ansible, a host turned off stops answering
//! quickly, and nothing of the lab is left afterwards.

use pipeline_lab::{run, Lab};
use std::process::Command;
use std::time::Instant;

fn lines(cmd: &mut Command) -> String {
    run(cmd).unwrap_or_else(|e| panic!("{e:#}"))
}

/// What of the lab `prefix` the machine still has: containers, namespaces, links.
fn remains(prefix: &str) -> Vec<String> {
    let mut left = Vec::new();
    for name in lines(Command::new("podman").args(["ps", "-a", "--format", "{{.Names}}"])).lines() {
        if name.starts_with(&format!("{prefix}-")) {
            left.push(format!("container {name}"));
        }
    }
    for l in lines(Command::new("ip").args(["netns", "list"])).lines() {
        if l.starts_with(&format!("{prefix}-")) {
            left.push(format!("netns {l}"));
        }
    }
    for l in lines(Command::new("ip").args(["-o", "link", "show"])).lines() {
        let name = l.split(':').nth(1).unwrap_or("").trim();
        let name = name.split('@').next().unwrap_or("");
        if name == prefix
            || name.starts_with(&format!("{prefix}v"))
            || name.starts_with(&format!("{prefix}p"))
        {
            left.push(format!("link {name}"));
        }
    }
    left
}

#[test]
fn three_hosts_answer_ssh_and_ansible_and_leave_nothing_behind() {
    if !pipeline_lab::require() {
        return;
    }
    let t = Instant::now();
    let lab = Lab::new(3).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("Lab::new(3): {:.1} s", t.elapsed().as_secs_f64());
    let prefix = lab.bridge().to_string();

    // Strict host key checking against keys read through podman exec.
    for h in lab.hosts() {
        assert!(h.known_hosts_line().starts_with(&format!("{} ", h.addr())));
        let out = h.ssh(&["hostname"]).output().unwrap();
        assert!(
            out.status.success(),
            "ssh to {} failed: {}",
            h.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), h.name());
    }
    // Each host has keys of its own.
    let keys: std::collections::BTreeSet<&str> = lab
        .hosts()
        .iter()
        .map(|h| h.known_hosts_line().split_once(' ').unwrap().1)
        .collect();
    assert_eq!(keys.len(), 3, "hosts share host keys");

    // The key file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(lab.key_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // systemd is PID 1 on every host and sshd is a unit under it.
    for h in lab.hosts() {
        assert_eq!(h.exec(&["cat", "/proc/1/comm"]).unwrap().trim(), "systemd");
        let out = h.ssh(&["systemctl", "is-active", "ssh"]).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "active",
            "on {}",
            h.name()
        );
    }

    // The hosts reach nothing but the lab: no route beyond the bridge.
    let routes = lab.host(0).exec(&["ip", "-4", "route"]).unwrap();
    assert!(
        !routes.contains("default"),
        "a lab host has a default route: {routes}"
    );

    for h in lab.hosts() {
        let mem = lines(Command::new("podman").args([
            "stats",
            "--no-stream",
            "--format",
            "{{.MemUsage}}",
            h.container(),
        ]));
        eprintln!("{}: memory {}", h.name(), mem.trim());
    }

    let inventory = lab.write_inventory().unwrap();
    let t = Instant::now();
    let out = lab
        .ansible("ansible")
        .arg("-i")
        .arg(&inventory)
        .args(["all", "-m", "ping"])
        .output()
        .unwrap();
    eprintln!(
        "ansible all -m ping (3 hosts): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ansible ping failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("SUCCESS").count(), 3, "{stdout}");

    // Off for real: ssh gives up, and quickly.
    let victim = lab.host(1);
    // A session open when the host goes off ends too (keepalives), instead of hanging.
    let mut session = victim.ssh(&["sleep", "120"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500)); // let it log in
    let t = Instant::now();
    victim.off().unwrap();
    eprintln!("host.off(): {:.1} s", t.elapsed().as_secs_f64());
    let ended = loop {
        if let Some(status) = session.try_wait().unwrap() {
            break Some(status);
        }
        if t.elapsed().as_secs() >= 30 {
            let _ = session.kill();
            let _ = session.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let status = ended.expect("an open ssh session outlived its host by 30 s");
    assert!(!status.success());
    eprintln!(
        "an open session ended {:.1} s after host.off() was called",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let out = victim.ssh(&["true"]).output().unwrap();
    let took = t.elapsed();
    assert!(!out.status.success(), "ssh to a host that is off succeeded");
    eprintln!(
        "ssh to a host that is off failed after {:.1} s: {}",
        took.as_secs_f64(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // The others are unaffected.
    assert!(lab.host(0).ssh(&["true"]).status().unwrap().success());
    assert!(lab.host(2).ssh(&["true"]).status().unwrap().success());

    // Back on: same host keys, strict checking still passes.
    let t = Instant::now();
    victim.on().unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("host.on(): {:.1} s", t.elapsed().as_secs_f64());
    assert!(victim.ssh(&["true"]).status().unwrap().success());

    let t = Instant::now();
    drop(lab);
    eprintln!("teardown: {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(
        remains(&prefix),
        Vec::<String>::new(),
        "the lab left things behind"
    );
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    if !pipeline_lab::require() {
        return;
    }
    let prefix = std::sync::Mutex::new(String::new());
    let r = std::panic::catch_unwind(|| {
        let lab = Lab::new(1).unwrap_or_else(|e| panic!("{e:#}"));
        *prefix.lock().unwrap() = lab.bridge().to_string();
        panic!("the test fails with the lab up");
    });
    assert!(r.is_err());
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    assert_eq!(
        remains(&prefix),
        Vec::<String>::new(),
        "a panic left the lab behind"
    );
}

#[test]
fn apt_on_a_host_goes_through_the_cache_on_the_bridge() {
    if !pipeline_lab::require() {
        return;
    }
    let opts = pipeline_lab::LabOptions { apt_cache: true };
    let lab = Lab::with_options(1, opts).unwrap_or_else(|e| panic!("{e:#}"));
    let h = lab.host(0);
    let t = Instant::now();
    let out = h
        .ssh(&["apt-get -q update && apt-get install -y -q --no-install-recommends hello && hello"])
        .output()
        .unwrap();
    eprintln!(
        "apt-get update + install hello through the cache: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "apt through the cache failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hello, world!"));
    // Without the proxy the host reaches nothing: the mirror is beyond the bridge.
    let direct = h
        .ssh(&["apt-get -q -o Acquire::http::Proxy=false -o Acquire::Retries=0 update"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&direct.stdout).into_owned()
        + &String::from_utf8_lossy(&direct.stderr);
    assert!(
        text.contains("Err") || text.contains("unreachable") || text.contains("resolve"),
        "a lab host reached a mirror without the cache: {text}"
    );
}
