//! Shared helpers for tests that drive the real `pipeline` binary.
#![allow(dead_code)]

pub mod chromium;
pub mod lab;
pub mod load;
pub mod procfs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pipeline");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory; on drop everything the engine started under it is stopped.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    /// Environment for every command (e.g. PIPELINE_VAR_port).
    pub env: std::cell::RefCell<Vec<(String, String)>>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            env: Default::default(),
            dir: tempfile::Builder::new()
                .prefix("pipeline-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .arg("--no-color")
            .current_dir(self.path())
            .env_remove("PIPELINE_DIR")
            .envs(self.env.borrow().iter().cloned());
        c
    }
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run pipeline")
    }
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            // stderr first: CI keeps only part of a failure's output, and the cause is there.
            "pipeline {args:?} failed ({}):\nstderr:\n{}\nstdout (last 4000 bytes):\n{}",
            out.status,
            s(&out.stderr),
            tail_chars(&s(&out.stdout), 4000)
        );
        s(&out.stdout)
    }
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    /// Kills (SIGKILL) the supervisor of `run/BLOCK/GEN` behind pipeline's back, and waits up to
    /// 5 s until it is gone: a drifted instance. Returns that generation's directory.
    pub fn kill_supervisor(&self, block: &str, generation: &str) -> PathBuf {
        let dir = self
            .path()
            .join(".pipeline/run")
            .join(block)
            .join(generation);
        let pid: i32 = std::fs::read_to_string(dir.join("supervisor.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: plain kill of the supervisor this test's apply started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert!(
            wait_until(std::time::Duration::from_secs(5), || {
                pipeline_supervise::status(&dir).is_none_or(|s| !s.supervisor_alive)
            }),
            "the supervisor of {block} {generation} did not die"
        );
        dir
    }
    /// Processes carrying the engine's replica marker for a directory under this scratch dir.
    pub fn processes(&self) -> Vec<u32> {
        pipeline_supervise::processes_under(self.path())
    }
    /// Every live process whose `/proc/PID/environ` carries the replica marker
    /// (`PIPELINE_REPLICA_DIR`) for a directory under this scratch dir, with that directory
    /// relative to `.pipeline/run/` (e.g. `service.web_0_/gen-2`). Read here, independently of
    /// the engine's own sweep.
    pub fn marked(&self) -> Vec<(u32, String)> {
        let root = self
            .path()
            .canonicalize()
            .unwrap_or_else(|_| self.path().to_path_buf());
        let run = root.join(".pipeline/run");
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(env) = std::fs::read(e.path().join("environ")) else {
                continue;
            };
            // Zombies keep their environ but are not running.
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            if stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            {
                continue;
            }
            for var in env.split(|&b| b == 0) {
                let Some(v) = var.strip_prefix(b"PIPELINE_REPLICA_DIR=") else {
                    continue;
                };
                let dir = PathBuf::from(String::from_utf8_lossy(v).into_owned());
                if let Ok(rel) = dir.strip_prefix(&run) {
                    out.push((pid, rel.display().to_string()));
                } else if dir.starts_with(&root) {
                    out.push((pid, dir.display().to_string()));
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let run = self.path().join(".pipeline/run");
        if let Ok(rd) = std::fs::read_dir(&run) {
            for e in rd.flatten() {
                let _ = pipeline_supervise::stop(&e.path(), Duration::from_secs(5));
            }
        }
        for pid in self.processes() {
            // SAFETY: plain kill of a pid we started (marker env under our temp dir).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        // The ssh masters of this work directory and of each module's (`pipeline deploy NAME`
        // works in .pipeline/modules/NAME): they would linger 30 s, their sockets for good.
        let work = self.path().join(".pipeline");
        let modules = std::fs::read_dir(work.join("modules"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path());
        for ssh in std::iter::once(work.clone())
            .chain(modules)
            .map(|w| pipeline_providers::remote::socket_dir_of(&w))
            .filter(|d| d.is_dir())
        {
            let needle = ssh.to_string_lossy().into_owned();
            for pid in procfs::pids() {
                if procfs::cmdline(pid).is_some_and(|c| c.contains(&needle)) {
                    // SAFETY: an ssh master whose control path is this test's directory.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
            }
            let _ = std::fs::remove_dir_all(&ssh);
        }
    }
}

pub fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The last `n` bytes of `text` (on a char boundary), marked when cut.
pub fn tail_chars(text: &str, n: usize) -> String {
    if text.len() <= n {
        return text.to_string();
    }
    let mut start = text.len() - n;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} bytes cut]{}", &text[start..])
}

/// The preview sample service, built once per test run into the cargo target tmp dir.
pub fn preview_binary() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("preview-target");
        let st = Command::new("cargo")
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(repo().join("examples/preview/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("cargo build of examples/preview");
        assert!(st.success(), "building examples/preview failed");
        target.join("release/preview")
    })
    .clone()
}

/// A source directory holding a prebuilt preview binary: services start in milliseconds.
pub fn prebuilt_source(scratch: &Scratch) -> PathBuf {
    let dir = scratch.path().join("app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(preview_binary(), dir.join("preview")).unwrap();
    dir
}

pub fn http(method: &str, url: &str, body: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(hostport).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn state(scratch: &Scratch) -> pipeline_state::State {
    pipeline_state::StateStore::load(&scratch.path().join(".pipeline")).expect("state parses")
}

/// Run git in `repo` (committing as a throwaway identity); the test fails on a git error.
pub fn git(repo: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
        .arg(repo)
        .args(args)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", s(&out.stderr));
}

/// How many of `n` GET /health through `port` each version answered.
pub fn versions_through(port: u16, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n {
        if let Some((200, b)) = http("GET", &format!("http://127.0.0.1:{port}/health"), "") {
            let v: serde_json::Value = serde_json::from_str(&b).unwrap();
            *out.entry(v["version"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
    }
    out
}

/// Every file under `dir` with its bytes and mode (directories by their mode alone): compare two
/// snapshots with `assert_unchanged` to show a command changed nothing.
pub fn snapshot_files(dir: &Path) -> std::collections::BTreeMap<PathBuf, (u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(d: &Path, root: &Path, out: &mut std::collections::BTreeMap<PathBuf, (u32, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(d) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                out.insert(rel, (mode, Vec::new()));
                walk(&p, root, out);
            } else {
                out.insert(rel, (mode, std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Panics naming the first path that appeared, disappeared or changed (bytes or mode).
pub fn assert_unchanged(
    what: &str,
    before: &std::collections::BTreeMap<PathBuf, (u32, Vec<u8>)>,
    after: &std::collections::BTreeMap<PathBuf, (u32, Vec<u8>)>,
) {
    let keys = |m: &std::collections::BTreeMap<PathBuf, (u32, Vec<u8>)>| {
        m.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(
        keys(before),
        keys(after),
        "{what}: files appeared or disappeared"
    );
    for (p, (mode, bytes)) in before {
        let (m2, b2) = &after[p];
        assert_eq!(mode, m2, "{what}: the mode of {} changed", p.display());
        assert!(
            bytes == b2,
            "{what}: {} changed:\nbefore: {}\nafter: {}",
            p.display(),
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(b2)
        );
    }
}
