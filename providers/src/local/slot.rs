//! A slot: the stable address of one service instance. `pipeline __slot DIR` listens on the
//! slot's port and forwards each connection to the instance's active app generation, so a new
//! version, a crash-restart or a blue-green switch changes where new connections go without
//! touching the balancer (no nginx reload). Connections already open finish on the backend they
//! started on; the slot counts them per backend so an old generation can be drained.
//!
//! Control: `DIR/slot.json` (`SlotConfig`, written atomically by the provider; re-read when it
//! changes). Report: `DIR/slot-status.json` (`SlotStatus`), the version applied and open
//! connections per backend.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub const CONFIG: &str = "slot.json";
pub const STATUS: &str = "slot-status.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SlotConfig {
    /// `ADDRESS:PORT` the slot listens on; fixed for the slot's life.
    pub listen: String,
    /// Backend new connections go to (`127.0.0.1:PORT`), if any.
    pub active: Option<String>,
    /// Bumped by every change; the slot reports the version it applied.
    pub version: u64,
    /// How long a connection waits for a backend that refuses (restarting) before giving up.
    #[serde(default = "default_retry_ms")]
    pub connect_retry_ms: u64,
}

fn default_retry_ms() -> u64 {
    3000
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SlotStatus {
    pub version: u64,
    pub active: Option<String>,
    /// Open connections per backend.
    pub open: BTreeMap<String, u64>,
    pub served: u64,
    pub failed: u64,
}

pub fn write_json<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(v)?)?;
    std::fs::rename(&tmp, path)
}

pub fn read_status(dir: &Path) -> Option<SlotStatus> {
    serde_json::from_slice(&std::fs::read(dir.join(STATUS)).ok()?).ok()
}

pub fn read_config(dir: &Path) -> Option<SlotConfig> {
    serde_json::from_slice(&std::fs::read(dir.join(CONFIG)).ok()?).ok()
}

/// Point the slot at `active` and wait (bounded) until it says it has.
pub fn switch(dir: &Path, active: Option<String>, timeout: Duration) -> Result<(), String> {
    let mut cfg =
        read_config(dir).ok_or_else(|| format!("no slot configuration in {}", dir.display()))?;
    cfg.active = active;
    cfg.version += 1;
    write_json(&dir.join(CONFIG), &cfg)
        .map_err(|e| format!("cannot write {}: {e}", dir.join(CONFIG).display()))?;
    let start = Instant::now();
    while start.elapsed() < timeout {
        if read_status(dir).is_some_and(|s| s.version >= cfg.version) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!(
        "the slot in {} did not take the new backend within {timeout:?}",
        dir.display()
    ))
}

/// Wait (bounded) until no connection is open to `backend`; returns how many were still open.
pub fn drain(dir: &Path, backend: &str, timeout: Duration) -> u64 {
    let start = Instant::now();
    loop {
        let open = read_status(dir)
            .and_then(|s| s.open.get(backend).copied())
            .unwrap_or(0);
        if open == 0 || start.elapsed() >= timeout {
            return open;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Default)]
struct Shared {
    cfg: SlotConfig,
    status: SlotStatus,
    dirty: bool,
}

/// Entry point of `pipeline __slot DIR`.
pub fn run(dir: &Path) -> i32 {
    let dir: PathBuf = dir.to_path_buf();
    let Some(cfg) = read_config(&dir) else {
        eprintln!(
            "pipeline __slot: no readable {} in {}",
            CONFIG,
            dir.display()
        );
        return 2;
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pipeline __slot: cannot start a runtime: {e}");
            return 2;
        }
    };
    rt.block_on(serve(dir, cfg))
}

async fn serve(dir: PathBuf, cfg: SlotConfig) -> i32 {
    let listener = match tokio::net::TcpListener::bind(&cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pipeline __slot: cannot listen on {}: {e}", cfg.listen);
            return 3;
        }
    };
    let shared = Arc::new(Mutex::new(Shared {
        status: SlotStatus {
            version: cfg.version,
            active: cfg.active.clone(),
            ..Default::default()
        },
        cfg,
        dirty: true,
    }));
    // Follow the control file and publish the status.
    {
        let (dir, shared) = (dir.clone(), shared.clone());
        tokio::spawn(async move {
            let mut seen: Option<SystemTime> = None;
            loop {
                let mtime = std::fs::metadata(dir.join(CONFIG))
                    .and_then(|m| m.modified())
                    .ok();
                if mtime != seen {
                    seen = mtime;
                    if let Some(c) = read_config(&dir) {
                        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                        if c.version != s.cfg.version {
                            s.status.version = c.version;
                            s.status.active = c.active.clone();
                            s.cfg = c;
                            s.dirty = true;
                        }
                    }
                }
                let snapshot = {
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    std::mem::take(&mut s.dirty).then(|| s.status.clone())
                };
                if let Some(st) = snapshot {
                    // A full disk: try again later rather than leave a stale status for good.
                    if write_json(&dir.join(STATUS), &st).is_err() {
                        shared.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let retry = Duration::from_millis(
                shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .cfg
                    .connect_retry_ms,
            );
            let deadline = Instant::now() + retry;
            // A refused connection is a restarting app: try again (re-reading the active backend,
            // which may have been switched) until the deadline.
            let (backend, upstream) = loop {
                let active = shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .cfg
                    .active
                    .clone();
                if let Some(b) = active {
                    if let Ok(u) = tokio::net::TcpStream::connect(&b).await {
                        break (b, u);
                    }
                }
                if Instant::now() >= deadline {
                    shared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .status
                        .failed += 1;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let _ = upstream.set_nodelay(true);
            {
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                *s.status.open.entry(backend.clone()).or_default() += 1;
                s.dirty = true;
            }
            let (mut client, mut upstream) = (client, upstream);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = s.status.open.get_mut(&backend) {
                *n -= 1;
                if *n == 0 {
                    s.status.open.remove(&backend);
                }
            }
            s.status.served += 1;
            s.dirty = true;
        });
    }
}
