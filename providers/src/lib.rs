//! Providers: the only code that touches hosts, processes and files. Each serves some block
//! kinds through `pipeline_engine::provider::Provider`.

pub mod alert_file;
pub(crate) mod build;
pub mod canary;
pub mod local;
pub mod monitor;
pub mod nginx;
pub mod progressive;
pub mod quote;
pub mod redis;
pub mod remote;
pub mod ssh;

use pipeline_engine::provider::{ProviderError, Registry};
use std::sync::Arc;

/// Every provider this binary carries.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    r.add(Arc::new(local::Local));
    r.add(Arc::new(ssh::Ssh::default()));
    r.add(Arc::new(nginx::Nginx::default()));
    r.add(Arc::new(redis::Redis::default()));
    r.add(Arc::new(monitor::Monitor));
    r
}

/// Run blocking provider work (process starts, waits, file I/O) off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
) -> Result<T, ProviderError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProviderError::new(format!("a provider task failed: {e}")))?
}

/// "500ms", "2s", "1.5m", "1h" (a bare number is seconds); None for anything else. The
/// engine's parser, so `timeouts` and every duration attribute read the same way.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    pipeline_engine::step::parse_duration(s)
}

/// Wait until a supervised process in `dir` is healthy, bounded by `timeout` and by the step
/// (its cancel and deadline) through the shared wait. An app that exited first or never became
/// healthy says so in the error's `cause`.
pub(crate) fn wait_healthy(
    step: &pipeline_engine::Step,
    dir: &std::path::Path,
    spec: &pipeline_supervise::ReplicaSpec,
    timeout: std::time::Duration,
) -> Result<(), ProviderError> {
    use pipeline_engine::wait::{until_blocking, Check};
    let mut w = pipeline_supervise::HealthWait::new(dir, spec, timeout);
    let every = w.every();
    until_blocking(step, every, || match w.poll() {
        Ok(Ok(())) => Ok(Check::Done(())),
        Ok(Err(why)) => Ok(Check::NotYet(why)),
        Err(e) => Err(supervise_error(e)),
    })
}

/// Just before a server this provider starts binds `port` on `address`: can it? A port another
/// program took since it was chosen (at plan, or by `free_port`) is a passing failure the
/// engine retries (`Transient`: the other program may be gone a moment later, and a retried
/// service create chooses a new port); an address this host does not have is the stack's
/// mistake (`InvalidConfig`). Decided by the OS error's kind, not its words.
pub(crate) fn bindable(address: &str, port: u16) -> Result<(), ProviderError> {
    match std::net::TcpListener::bind((address, port)) {
        Ok(_) => Ok(()),
        Err(e) => Err(bind_error(address, port, e.kind(), &e)),
    }
}

fn bind_error(
    address: &str,
    port: u16,
    kind: std::io::ErrorKind,
    e: &dyn std::fmt::Display,
) -> ProviderError {
    use std::io::ErrorKind as Io;
    match kind {
        Io::AddrInUse => ProviderError::transient(format!(
            "port {port} on {address} was taken by another program before it could be bound"
        ))
        .help(format!(
            "stop what listens there (see `ss -ltnp 'sport = :{port}'`) or choose another port"
        )),
        Io::AddrNotAvailable => ProviderError::invalid_config(format!(
            "cannot listen on {address}:{port}: this host has no address {address}"
        ))
        .help("use an address of this host (e.g. 127.0.0.1)"),
        _ => ProviderError::new(format!("cannot listen on {address}:{port}: {e}")),
    }
}

/// A supervisor's error as a provider error, its words unchanged, with what failed as data.
pub(crate) fn supervise_error(e: pipeline_supervise::SuperviseError) -> ProviderError {
    use pipeline_engine::provider::Cause;
    use pipeline_supervise::SuperviseError as S;
    let output = e.child_output().unwrap_or_default();
    let cause = match &e {
        S::ChildExited { exit, .. } => Some(Cause::ExitedBeforeHealthy {
            how: exit.clone(),
            output,
        }),
        S::Unhealthy {
            waited, last_error, ..
        } => Some(Cause::NeverHealthy {
            after: format!("{waited:?}"),
            last_check: last_error.clone(),
            output,
        }),
        _ => None,
    };
    let error = ProviderError::new(e.to_string());
    match cause {
        Some(c) => error.cause(c),
        None => error,
    }
}

/// The sweep of a provider whose instances each run supervised processes in one directory
/// `.pipeline/run/<address>/` (nginx, redis, the monitor): a directory that `is_kind` recognises
/// as this provider's and that no record in `owned` names was left by a crashed or concurrent
/// run, or by `state rm`; every supervisor beneath it is stopped and the directory removed.
pub(crate) async fn sweep_run_dirs(
    ctx: &pipeline_engine::provider::ProviderCtx,
    owned: &[(&str, &pipeline_engine::state::ResourceState)],
    is_kind: fn(&std::path::Path) -> bool,
) -> Result<Vec<String>, ProviderError> {
    let run = ctx.work_dir.join("run");
    let names: std::collections::HashSet<String> = owned
        .iter()
        .map(|(a, _)| pipeline_host::names::sanitize(a))
        .collect();
    blocking(move || {
        let mut report = Vec::new();
        let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(&run)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && is_kind(p))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| !names.contains(n.to_string_lossy().as_ref()))
            })
            .collect();
        dirs.sort();
        for dir in dirs {
            let pids = pipeline_supervise::processes_under(&dir).len();
            for sup in supervised_dirs(&dir) {
                pipeline_supervise::stop(&sup, std::time::Duration::from_secs(10)).map_err(
                    |e| ProviderError::new(format!("cannot stop {}: {e}", sup.display())),
                )?;
            }
            std::fs::remove_dir_all(&dir)
                .map_err(|e| ProviderError::new(format!("cannot remove {}: {e}", dir.display())))?;
            report.push(format!(
                "{}: not in the state; stopped its {pids} processes and removed the directory",
                dir.file_name().unwrap_or_default().to_string_lossy()
            ));
        }
        Ok(report)
    })
    .await
}

/// `dir` and every directory beneath it that a supervisor runs in (it holds a spec).
fn supervised_dirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if dir.join(pipeline_supervise::SPEC_FILE).exists() {
        out.push(dir.to_path_buf());
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(supervised_dirs(&e.path()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_engine::provider::Cause;
    use pipeline_supervise::SuperviseError;

    #[test]
    fn a_port_taken_before_binding_is_transient_and_a_foreign_address_is_invalid_config() {
        use pipeline_engine::provider::ErrorKind;
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = bindable("127.0.0.1", port).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient, "{e}");
        assert!(e.kind.retryable());
        drop(taken);
        assert!(bindable("127.0.0.1", port).is_ok());
        // 192.0.2.0/24 is documentation space: no host has it.
        let e = bindable("192.0.2.1", port).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidConfig, "{e}");
        assert!(!e.kind.retryable());
    }

    #[test]
    fn a_supervisor_error_keeps_its_words_and_says_what_failed() {
        let tail = "fatal: cannot read config.toml\n--- 12:00:00 pipeline-supervise web: child exited with status 3";
        let e = SuperviseError::ChildExited {
            name: "web".into(),
            dir: "/d".into(),
            command: "./app".into(),
            exit: "exited with status 3".into(),
            log_tail: tail.into(),
        };
        let words = e.to_string();
        let p = supervise_error(e);
        assert_eq!(p.message, words);
        assert_eq!(
            p.cause.as_deref(),
            Some(&Cause::ExitedBeforeHealthy {
                how: "exited with status 3".into(),
                output: vec!["fatal: cannot read config.toml".into()],
            })
        );
        let p = supervise_error(SuperviseError::Unhealthy {
            name: "web".into(),
            dir: "/d".into(),
            waited: std::time::Duration::from_secs(3),
            last_error: "connection refused".into(),
            log_tail: String::new(),
        });
        assert_eq!(
            p.cause.as_deref(),
            Some(&Cause::NeverHealthy {
                after: "3s".into(),
                last_check: "connection refused".into(),
                output: vec![],
            })
        );
        let p = supervise_error(SuperviseError::StopFailed {
            name: "web".into(),
            dir: "/d".into(),
            pids: vec![1],
        });
        assert!(p.cause.is_none());
    }
}
