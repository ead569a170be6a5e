//! examples/checkbox.io: the Express app installs with `npm ci` from its committed lockfile
//! into a temp copy and runs for real: `node server.js` on a free port, its feature flag read
//! from a real redis-server holding the flag (as a flags store's mirror would), no MongoDB.
//!
//! /api/health and /api/version answer; /api/banner follows the flag `new-banner` as it is
//! switched on, off and to a share in redis, and falls back to its default when redis is gone;
//! /api/studies answers 503 with a reason (no MongoDB). The MongoDB, mail and redis passwords
//! appear neither on the app's command line nor in its output.
mod common;

use common::{http, repo, s, wait_until};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REDIS_PASSWORD: &str = "flags:pw@1";
const MONGO_PASSWORD: &str = "m0ngo-secret";
const MAIL_PASSWORD: &str = "mail-secret";

/// A process killed (and reaped) on drop, also when the test panics.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "node_modules" {
            continue;
        }
        let ty = e.file_type().unwrap();
        if ty.is_dir() {
            copy_tree(&e.path(), &to.join(&name));
        } else if ty.is_file() {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// One command to the test's redis-server (AUTH first); the reply's first line.
fn redis(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = Vec::new();
    for cmd in [&["AUTH", REDIS_PASSWORD][..], args] {
        write!(out, "*{}\r\n", cmd.len())?;
        for a in cmd {
            write!(out, "${}\r\n{a}\r\n", a.len())?;
        }
    }
    c.write_all(&out)?;
    let mut r = BufReader::new(c);
    let mut auth = String::new();
    r.read_line(&mut auth)?;
    if !auth.starts_with("+OK") {
        return Err(std::io::Error::other(format!("AUTH: {auth}")));
    }
    let mut line = String::new();
    r.read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

fn get(port: u16, path: &str) -> (u16, serde_json::Value) {
    let (st, body) = http("GET", &format!("http://127.0.0.1:{port}{path}"), "")
        .unwrap_or_else(|| panic!("GET {path}: no answer"));
    let v = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"));
    (st, v)
}

fn banner_on(port: u16) -> Option<bool> {
    let (st, v) = get(port, "/api/banner");
    assert_eq!(st, 200, "/api/banner: {v}");
    v["on"].as_bool()
}

#[test]
fn checkbox_app_installs_with_npm_ci_and_follows_its_flag() {
    for tool in ["node", "npm", "redis-server"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()),
            "{tool} is not on PATH: apt-get install nodejs npm redis-server (.ci/run installs them)"
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("example-checkbox-")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    let app = root.join("checkbox.io");
    copy_tree(&repo().join("examples/checkbox.io"), &app);
    assert!(app.join("public_html/index.html").is_file());
    let site = app.join("server-side/site");
    assert!(
        site.join("package-lock.json").is_file(),
        "package-lock.json is committed: npm ci needs it"
    );

    // npm ci: exactly the lockfile, no dev dependencies, nothing native (built here, shipped to
    // hosts that may run another Node version).
    let t = Instant::now();
    let o = Command::new("npm")
        .args([
            "ci",
            "--omit=dev",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
        ])
        .current_dir(&site)
        .output()
        .expect("run npm ci");
    assert!(
        o.status.success(),
        "npm ci failed:\n{}{}",
        s(&o.stdout),
        s(&o.stderr)
    );
    eprintln!("npm ci: {:.1} s", t.elapsed().as_secs_f64());
    for dep in ["express", "mongodb"] {
        assert!(
            site.join("node_modules")
                .join(dep)
                .join("package.json")
                .is_file(),
            "{dep} missing"
        );
    }
    let native = Command::new("find")
        .arg(site.join("node_modules"))
        .args(["-name", "*.node"])
        .output()
        .unwrap();
    assert_eq!(s(&native.stdout), "", "native addons in node_modules");

    // A redis-server holding the flags, its password in a 0600 config file.
    let redis_port = common::load::free_port();
    let rdir = root.join("redis");
    std::fs::create_dir_all(&rdir).unwrap();
    let conf = rdir.join("redis.conf");
    std::fs::write(
        &conf,
        format!(
            "port {redis_port}\nbind 127.0.0.1\nrequirepass \"{REDIS_PASSWORD}\"\nsave \"\"\n\
             appendonly no\ndir {}\n",
            rdir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut redis_server = Proc(
        Command::new("redis-server")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || redis(redis_port, &["PING"])
            .is_ok()),
        "redis-server did not answer within 10 s"
    );

    // The app; MongoDB's port is one nothing listens on.
    let port = common::load::free_port();
    let mongo_port = common::load::free_port();
    let log = root.join("node.log");
    let logf = std::fs::File::create(&log).unwrap();
    let t = Instant::now();
    let mut node = Proc(
        Command::new("node")
            .arg("server.js")
            .current_dir(&site)
            .env("APP_PORT", port.to_string())
            .env(
                "FLAGS_URL",
                format!("redis://:flags%3Apw%401@127.0.0.1:{redis_port}"),
            )
            .env("MONGO_IP", "127.0.0.1")
            .env("MONGO_PORT", mongo_port.to_string())
            .env("MONGO_USER", "site")
            .env("MONGO_PASSWORD", MONGO_PASSWORD)
            .env("MAIL_USER", "noreply@example.invalid")
            .env("MAIL_PASSWORD", MAIL_PASSWORD)
            .env("MAIL_SMTP", "smtp.example.invalid")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("start node server.js"),
    );
    let up = wait_until(Duration::from_secs(30), || {
        matches!(
            http("GET", &format!("http://127.0.0.1:{port}/api/health"), ""),
            Some((200, _))
        )
    });
    assert!(
        up,
        "node server.js did not answer within 30 s:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    eprintln!(
        "node server.js: /api/health 200 after {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let (st, h) = get(port, "/api/health");
    assert_eq!((st, h["status"].as_str()), (200, Some("ok")));
    let (st, v) = get(port, "/api/version");
    assert_eq!(st, 200);
    assert_eq!(v["version"], "1.0.0", "{v}");
    assert_eq!(v["mail"], "configured", "the mail settings are read: {v}");
    assert_eq!(get(port, "/api/nothing-here").0, 404);

    // The flag: absent (the default, off), on, off, on for 30 of every 100 requests.
    let (_, b) = get(port, "/api/banner");
    assert_eq!(
        (b["on"].as_bool(), b["source"].as_str()),
        (Some(false), Some("default (no such flag)")),
        "{b}"
    );
    let welcome = b["banner"].as_str().unwrap().to_string();
    for (value, want) in [("1", true), ("0", false), ("1", true)] {
        assert_eq!(
            redis(
                redis_port,
                &[
                    "HSET",
                    "flag:new-banner",
                    "enabled",
                    value,
                    "percent",
                    "100"
                ]
            )
            .unwrap()
            .chars()
            .next(),
            Some(':')
        );
        let t = Instant::now();
        assert!(
            wait_until(Duration::from_secs(10), || banner_on(port) == Some(want)),
            "/api/banner did not show the flag {value} within 10 s"
        );
        eprintln!(
            "flag new-banner = {value}: seen by the app in {} ms",
            t.elapsed().as_millis()
        );
    }
    let (_, b) = get(port, "/api/banner");
    assert_eq!(b["source"], "store");
    assert_ne!(
        b["banner"].as_str().unwrap(),
        welcome,
        "the banner changes with the flag"
    );
    redis(
        redis_port,
        &["HSET", "flag:new-banner", "enabled", "1", "percent", "30"],
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        (0..10).filter(|_| banner_on(port) == Some(false)).count() > 0
    }));
    let on = (0..100).filter(|_| banner_on(port) == Some(true)).count();
    assert_eq!(
        on, 30,
        "a share of 30%: 30 of 100 consecutive requests see the flag on"
    );

    // The flags store goes away: the app keeps answering, with the default.
    redis(
        redis_port,
        &["HSET", "flag:new-banner", "enabled", "1", "percent", "100"],
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || banner_on(port) == Some(true)));
    let _ = redis_server.0.kill();
    let _ = redis_server.0.wait();
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_, b) = get(port, "/api/banner");
            b["on"] == false
                && b["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("default ("))
        }),
        "without redis /api/banner does not fall back to its default"
    );
    eprintln!(
        "flags store gone: default served after {} ms",
        t.elapsed().as_millis()
    );

    // No MongoDB: 503 with the reason, bounded by the driver's 2 s server selection.
    let t = Instant::now();
    let (st, v) = get(port, "/api/studies");
    let took = t.elapsed();
    assert_eq!(st, 503, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains(&format!(
            "MongoDB at 127.0.0.1:{mongo_port} does not answer"
        )),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "/api/studies took {took:?}");
    eprintln!(
        "/api/studies without MongoDB: 503 in {:.1} s",
        took.as_secs_f64()
    );

    // Secrets: not on the command line, not in the output; SIGTERM stops it cleanly.
    let pid = node.0.id();
    let cmdline = s(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap());
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    let code = loop {
        if let Some(st) = node.0.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "node did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0), "node exits 0 on SIGTERM");
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(out.contains(&format!("listening on port {port}")), "{out}");
    for secret in [MONGO_PASSWORD, MAIL_PASSWORD, REDIS_PASSWORD, "flags%3Apw"] {
        assert!(
            !cmdline.contains(secret),
            "a password is on node's command line"
        );
        assert!(
            !out.contains(secret),
            "a password is in the app's output:\n{out}"
        );
    }

    // Bad input: no APP_PORT.
    let o = Command::new("node")
        .arg("server.js")
        .current_dir(&site)
        .env_remove("APP_PORT")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        s(&o.stderr).contains("APP_PORT must be a port number"),
        "{}",
        s(&o.stderr)
    );
}
