//! The SSH transport against lab hosts (podman, systemd, sshd): commands, byte-exact arguments,
//! uploads, host keys first seen, pinned and changed, a host turned off under an open master,
//! an ssh config alias, and the cost of a call over the master.

use pipeline_lab::{Host, Lab};
use pipeline_ssh::transport::{Error, HostKeys, KeySource, Remote, Source, Ssh, Target};
use std::future::Future;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn block<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn target(lab: &Lab, h: &Host) -> Target {
    Target {
        name: h.name().to_string(),
        address: h.addr().to_string(),
        port: Some(h.port()),
        user: Some("root".to_string()),
        key_file: Some(lab.key_file().to_path_buf()),
    }
}

/// `TYPE BASE64` of each line.
fn keys_of(lines: &str) -> Vec<String> {
    lines
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| format!("{} {}", f[1], f[2]))
        })
        .collect()
}

/// Processes whose command line names `needle` (masters left behind).
fn processes_naming(needle: &str) -> Vec<String> {
    let out = std::process::Command::new("ps")
        .args(["-eo", "pid=,args="])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle) && !l.contains("ps -eo"))
        .map(str::to_string)
        .collect()
}

/// The root namespace's end of the host's veth (`ip -n NS link` shows `eth0@ifN`).
fn outer_veth(h: &Host) -> String {
    let inner = pipeline_lab::run(std::process::Command::new("ip").args([
        "-n",
        h.netns(),
        "-o",
        "link",
        "show",
    ]))
    .unwrap();
    let index = inner
        .lines()
        .find_map(|l| {
            l.split_once("@if")
                .map(|(_, r)| r.split(':').next().unwrap().to_string())
        })
        .expect("a veth in the host's namespace");
    let outer =
        pipeline_lab::run(std::process::Command::new("ip").args(["-o", "link", "show"])).unwrap();
    outer
        .lines()
        .find_map(|l| {
            let (i, rest) = l.split_once(": ")?;
            (i == index).then(|| rest.split(['@', ':']).next().unwrap().to_string())
        })
        .expect("the veth's peer")
}

#[test]
fn an_address_nobody_listens_on_is_unreachable_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(dir.path().join("s")).unwrap();
    let mut t = Target::new("closed", "127.0.0.1");
    t.port = Some(1);
    let started = Instant::now();
    let err = block(ssh.run(
        &t,
        &HostKeys::first_contact(),
        Remote::Argv(&["true"]),
        None,
        T,
    ))
    .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("closed (127.0.0.1:1)"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let err = block(ssh.run(
        &t,
        &HostKeys::first_contact(),
        Remote::Argv(&["true", "a\0b"]),
        None,
        T,
    ))
    .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
}

#[test]
fn the_transport_against_lab_hosts() {
    if !pipeline_lab::require() {
        return;
    }
    let t0 = Instant::now();
    let lab = Lab::new(2).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("Lab::new(2): {:.1} s", t0.elapsed().as_secs_f64());
    let (h0, h1) = (lab.host(0), lab.host(1));
    let ssh_dir = lab.dir().join("ssh");
    let ssh = Ssh::new(&ssh_dir).unwrap();
    let web0 = target(&lab, h0);
    let web1 = target(&lab, h1);

    // First contact: the key the host offers is recorded and returned; it is the host's own.
    let conn = block(ssh.connect(&web0, &HostKeys::first_contact())).unwrap();
    assert_eq!(conn.source, KeySource::FirstContact);
    assert!(!conn.host_keys.is_empty());
    let lab_keys = keys_of(h0.known_hosts_line());
    for line in &conn.host_keys {
        assert!(
            line.starts_with(&format!("[{}]:22 ", h0.addr())),
            "not [ADDR]:PORT TYPE KEY: {line}"
        );
        let key = keys_of(&line.to_string()).remove(0);
        assert!(lab_keys.contains(&key), "{key} is not among {lab_keys:?}");
    }
    eprintln!("first contact with {}: {:?}", h0.name(), conn.host_keys);
    let help = format!("run `pipeline apply -replace='host.{}[\"x\"]'`", h0.name());
    let pinned0 = HostKeys::pinned(conn.host_keys.clone()).with_accept_help(help.clone());

    // A pinned key works; a command's stdout and status come back.
    let out = block(ssh.run(&web0, &pinned0, Remote::Argv(&["hostname"]), None, T)).unwrap();
    assert_eq!((out.status, out.stdout_lossy().trim()), (0, h0.name()));
    let out = block(ssh.run(
        &web0,
        &pinned0,
        Remote::Script("echo oops >&2; exit 3"),
        None,
        T,
    ))
    .unwrap();
    assert_eq!(out.status, 3);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    match out.checked() {
        Err(Error::Remote {
            status: 3, host, ..
        }) => assert_eq!(host, h0.name()),
        other => panic!("{other:?}"),
    }

    // Hostile arguments arrive byte-exact; nothing in them runs.
    let hostile = [
        "",
        "two words",
        "it's",
        "\"dq\"",
        "$(touch /tmp/pwned)",
        "`touch /tmp/pwned`",
        "$HOME ${PATH}",
        "line one\nline two\n",
        "\t*?[a] ~ ~root #x",
        "a;b&&c||d|e<f>g",
        "FOO=bar",
        "-n",
        "\\'\\",
        "!history ünïcödé \u{1b}[31m",
    ];
    let mut argv = vec!["printf", "%s\\0"];
    argv.extend(hostile);
    let out = block(ssh.run(&web0, &pinned0, Remote::Argv(&argv), None, T)).unwrap();
    assert!(out.success(), "{out:?}");
    let mut got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    assert_eq!(got.pop(), Some(&b""[..]));
    let want: Vec<&[u8]> = hostile.iter().map(|s| s.as_bytes()).collect();
    assert_eq!(got, want);
    let pwned = h0.exec(&["sh", "-c", "test -e /tmp/pwned && echo yes || echo no"]);
    assert_eq!(pwned.unwrap().trim(), "no");

    // stdin arrives byte-exact too (content never travels on the command line).
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let out = block(ssh.run(&web0, &pinned0, Remote::Argv(&["cat"]), Some(&bytes), T)).unwrap();
    assert_eq!(out.stdout, bytes);

    // Uploads: atomic, with the mode asked for, into a path with a space and a quote.
    let dir = "/root/up load";
    block(ssh.run(
        &web0,
        &pinned0,
        Remote::Argv(&["mkdir", "-p", dir]),
        None,
        T,
    ))
    .unwrap()
    .checked()
    .unwrap();
    let path = format!("{dir}/it's secret.txt");
    let secret = b"password=hunter2\n$(not run)\n";
    block(ssh.upload(&web0, &pinned0, Source::Bytes(secret), &path, 0o600, T)).unwrap();
    let stat = block(ssh.run(
        &web0,
        &pinned0,
        Remote::Argv(&["stat", "-c", "%a %s %U", &path]),
        None,
        T,
    ))
    .unwrap();
    assert_eq!(
        stat.stdout_lossy().trim(),
        format!("600 {} root", secret.len())
    );
    let cat = block(ssh.run(&web0, &pinned0, Remote::Argv(&["cat", &path]), None, T)).unwrap();
    assert_eq!(cat.stdout, secret);
    // A local file of 1 MiB replaces it; nothing temporary stays beside it.
    let local = lab.dir().join("big");
    let big: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&local, &big).unwrap();
    let t = Instant::now();
    block(ssh.upload(&web0, &pinned0, Source::File(&local), &path, 0o644, T)).unwrap();
    eprintln!("upload of 1 MiB: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let cat = block(ssh.run(&web0, &pinned0, Remote::Argv(&["cat", &path]), None, T)).unwrap();
    assert!(cat.stdout == big, "the uploaded file differs");
    let ls = block(ssh.run(
        &web0,
        &pinned0,
        Remote::Script("ls -A \"$HOME/up load\"; stat -c %a \"$HOME/up load/it's secret.txt\""),
        None,
        T,
    ))
    .unwrap();
    assert_eq!(ls.stdout_lossy(), "it's secret.txt\n644\n");
    // A missing directory is the remote's failure, named.
    let err = block(ssh.upload(
        &web0,
        &pinned0,
        Source::Bytes(b"x"),
        "/nonexistent/dir/f",
        0o600,
        T,
    ))
    .unwrap_err();
    assert!(matches!(err, Error::Remote { .. }), "{err:?}");

    // 20 sequential calls over the master against 20 fresh connections.
    let n = 20;
    let t = Instant::now();
    for _ in 0..n {
        let out = block(ssh.run(&web0, &pinned0, Remote::Argv(&["true"]), None, T)).unwrap();
        assert!(out.success());
    }
    let over_master = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        assert!(h0.ssh(&["true"]).status().unwrap().success());
    }
    let fresh = t.elapsed() / n;
    eprintln!(
        "{n} sequential calls: {:.1} ms per call over the master, {:.1} ms with a fresh connection each",
        over_master.as_secs_f64() * 1e3,
        fresh.as_secs_f64() * 1e3
    );

    // Calls that start together while no master is open all succeed (one becomes the master,
    // the others connect beside it or through it).
    block(ssh.close(&web0));
    let one = || ssh.run(&web0, &pinned0, Remote::Argv(&["hostname"]), None, T);
    let t = Instant::now();
    let (a, b, c, d, e, f) =
        block(async { tokio::join!(one(), one(), one(), one(), one(), one()) });
    eprintln!(
        "6 concurrent calls with no master open: {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    for out in [a, b, c, d, e, f] {
        assert_eq!(out.unwrap().stdout_lossy().trim(), h0.name());
    }

    // An ssh config alias (HostName, User, IdentityFile, UserKnownHostsFile) is honoured; its
    // known_hosts names the host, so it is checked strictly and nothing is pinned.
    let config = lab.dir().join("ssh_config");
    let common = format!(
        "  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  BatchMode yes\n",
        lab.key_file().display(),
        lab.known_hosts_file().display()
    );
    std::fs::write(
        &config,
        format!(
            "Host labalias\n  HostName {}\n{common}\nHost labjump\n  HostName {}\n{common}\n\
             Host jumped\n  HostName {}\n  ProxyJump labjump\n{common}",
            h1.addr(),
            h0.addr(),
            h1.addr(),
        ),
    )
    .unwrap();
    let aliased_ssh = Ssh::new(lab.dir().join("ssh-cfg"))
        .unwrap()
        .with_config(Some(config.clone()));
    let alias = Target::new("aliased", "labalias");
    let conn = block(aliased_ssh.connect(&alias, &HostKeys::first_contact())).unwrap();
    assert_eq!(conn.source, KeySource::UserKnownHosts);
    assert!(conn.host_keys.is_empty());
    let out = block(aliased_ssh.run(
        &alias,
        &HostKeys::first_contact(),
        Remote::Argv(&["sh", "-c", "echo $(hostname) $(id -un)"]),
        None,
        T,
    ))
    .unwrap();
    assert_eq!(out.stdout_lossy().trim(), format!("{} root", h1.name()));
    // ProxyJump too: host 2 is reached through host 1, and sees host 1 as the client. (A
    // transport of its own: OpenSSH 9.2's `%C` leaves the jump out, so this transport would
    // reuse the direct master to the same root@ADDR:22.)
    let jump_ssh = Ssh::new(lab.dir().join("ssh-jump"))
        .unwrap()
        .with_config(Some(config.clone()));
    let jumped = Target::new("jumped", "jumped");
    let out = block(jump_ssh.run(
        &jumped,
        &HostKeys::first_contact(),
        Remote::Script("echo $(hostname) ${SSH_CLIENT%% *}"),
        None,
        T,
    ))
    .unwrap();
    assert_eq!(
        out.stdout_lossy().trim(),
        format!("{} {}", h1.name(), h0.addr()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(aliased_ssh);
    drop(jump_ssh);

    // ssh_args: what a program that runs ssh itself needs, on the same master.
    let conn1 = block(ssh.connect(&web1, &HostKeys::first_contact())).unwrap();
    let pinned1 = HostKeys::pinned(conn1.host_keys);
    let args = block(ssh.ssh_args(&web1, &pinned1)).unwrap();
    let check = std::process::Command::new("ssh")
        .args(&args)
        .args(["-O", "check", "--"])
        .arg(h1.addr().to_string())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "no master for {}: {}",
        h1.name(),
        String::from_utf8_lossy(&check.stderr)
    );
    let out = std::process::Command::new("ssh")
        .args(&args)
        .arg("--")
        .arg(h1.addr().to_string())
        .arg("hostname")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), h1.name());

    // A host whose link goes down silently (no FIN, no RST: the case that held ansible ~10 min)
    // with its master open fails as unreachable within 10 s; turned off, so does the next call;
    // once it is back, calls work again.
    let veth = outer_veth(h1);
    pipeline_lab::run(std::process::Command::new("ip").args(["link", "set", &veth, "down"]))
        .unwrap();
    for attempt in [
        "link down, with the master open",
        "turned off, the next call",
    ] {
        if attempt.starts_with("turned off") {
            h1.off().unwrap();
        }
        let t = Instant::now();
        let err = block(ssh.run(&web1, &pinned1, Remote::Argv(&["true"]), None, T)).unwrap_err();
        let took = t.elapsed();
        eprintln!("host {attempt}: after {:.1} s: {err}", took.as_secs_f64());
        assert!(
            matches!(err, Error::Unreachable { .. }),
            "{attempt}: {err:?}"
        );
        assert!(err.to_string().contains(h1.name()), "{err}");
        assert!(took < Duration::from_secs(10), "{attempt}: {took:?}");
    }
    // The other host is unaffected.
    let out = block(ssh.run(&web0, &pinned0, Remote::Argv(&["true"]), None, T)).unwrap();
    assert!(out.success());
    h1.on().unwrap_or_else(|e| panic!("{e:#}"));
    let out = block(ssh.run(&web1, &pinned1, Remote::Argv(&["hostname"]), None, T)).unwrap();
    assert_eq!(out.stdout_lossy().trim(), h1.name());

    // A call that outlives its deadline is stopped, and the host is still usable afterwards.
    let t = Instant::now();
    let err = block(ssh.run(
        &web1,
        &pinned1,
        Remote::Argv(&["sleep", "30"]),
        None,
        Duration::from_secs(1),
    ))
    .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let out = block(ssh.run(&web1, &pinned1, Remote::Argv(&["true"]), None, T)).unwrap();
    assert!(out.success());

    // A changed host key is refused, with the new fingerprint and how to accept it.
    h0.exec(&[
        "sh",
        "-c",
        "rm /etc/ssh/ssh_host_*; ssh-keygen -A >/dev/null; systemctl restart ssh",
    ])
    .unwrap();
    let new_fp = h0
        .exec(&["ssh-keygen", "-lf", "/etc/ssh/ssh_host_ed25519_key.pub"])
        .unwrap();
    let new_fp = new_fp.split_whitespace().nth(1).unwrap().to_string();
    block(ssh.close(&web0)); // the open master predates the change
    let err = block(ssh.run(&web0, &pinned0, Remote::Argv(&["true"]), None, T)).unwrap_err();
    match &err {
        Error::HostKeyChanged {
            host, fingerprint, ..
        } => {
            assert_eq!(host, h0.name());
            assert_eq!(fingerprint.as_deref(), Some(new_fp.as_str()));
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    eprintln!("changed key: {msg}");
    for part in [
        format!("{} ({}:22)", h0.name(), h0.addr()),
        new_fp.clone(),
        help.clone(),
    ] {
        assert!(msg.contains(&part), "{part:?} missing from: {msg}");
    }
    // Accepted deliberately (the pinned key forgotten): first contact again, a new key.
    let again = block(ssh.connect(&web0, &HostKeys::first_contact())).unwrap();
    assert_eq!(again.source, KeySource::FirstContact);
    assert!(!again.host_keys.is_empty());
    assert!(again.host_keys.iter().all(|k| !pinned0.pinned.contains(k)));

    // Dropping the transport stops its masters.
    drop(ssh);
    let left = processes_naming(&ssh_dir.display().to_string());
    assert!(left.is_empty(), "masters left behind: {left:?}");
}
