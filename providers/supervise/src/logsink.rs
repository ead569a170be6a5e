//! `replica.log` as the supervisor writes it: the child's output arrives through a pipe and is
//! appended here, so a log that cannot be written (a full disk) never reaches the child or the
//! supervisor as an error. What cannot be written is dropped and counted; once writing works
//! again one line says how much was lost and when.

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::util::timestamp;

/// What marks the supervisor's own lines in a replica's log, among the child's output.
const OWN_MARK: &str = "pipeline-supervise";

/// The child's own lines of a log tail: the supervisor's lines (restarts, drops) left out.
pub(crate) fn child_lines(tail: &str) -> Vec<String> {
    tail.lines()
        .filter(|l| !l.contains(OWN_MARK))
        .map(String::from)
        .collect()
}

#[derive(Default)]
struct Inner {
    file: Option<fs::File>,
    /// Bytes dropped since the supervisor started.
    dropped_total: u64,
    /// Bytes dropped since the last line that reported drops.
    dropped_unreported: u64,
    /// When the current run of drops began, and the error that began it.
    since: Option<(String, String)>,
    /// The file ends in the middle of a line (a write was cut short).
    torn: bool,
}

/// A shared, never-failing appender to one log file.
#[derive(Clone)]
pub(crate) struct LogSink {
    path: PathBuf,
    /// Names the replica in the line that reports drops.
    name: String,
    inner: Arc<Mutex<Inner>>,
}

impl LogSink {
    pub(crate) fn new(path: &Path, name: &str) -> LogSink {
        LogSink {
            path: path.to_path_buf(),
            name: name.to_string(),
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `bytes`; whatever cannot be written is counted as dropped.
    pub(crate) fn write(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        self.report_drops(&mut inner);
        if inner.dropped_unreported > 0 {
            // Still failing: keep the order (no new output before the report of the old).
            Self::dropped(
                &mut inner,
                bytes.len(),
                "the report of dropped output failed",
            );
            return;
        }
        let written = self.append(&mut inner, bytes);
        if let Err((n, e)) = written {
            Self::dropped(&mut inner, bytes.len() - n, &e.to_string());
        }
    }

    /// One line of the supervisor's own (`--- ... pipeline-supervise NAME: msg`).
    pub(crate) fn line(&self, msg: &str) {
        self.write(format!("--- {} {OWN_MARK} {}: {msg}\n", timestamp(), self.name).as_bytes());
    }

    /// Writes the pending report of dropped output, if there is one and the disk takes it.
    pub(crate) fn recover(&self) {
        let mut inner = self.lock();
        self.report_drops(&mut inner);
    }

    /// (total bytes dropped, the error of a run of drops not yet reported).
    pub(crate) fn dropped_state(&self) -> (u64, Option<String>) {
        let inner = self.lock();
        let pending = (inner.dropped_unreported > 0).then(|| {
            let (since, why) = inner.since.clone().unwrap_or_default();
            format!(
                "cannot write {}: {why}; {} bytes of output dropped since {since}",
                self.path.display(),
                inner.dropped_unreported
            )
        });
        (inner.dropped_total, pending)
    }

    fn dropped(inner: &mut Inner, n: usize, why: &str) {
        inner.dropped_total += n as u64;
        inner.dropped_unreported += n as u64;
        if inner.since.is_none() {
            inner.since = Some((timestamp(), why.to_string()));
        }
    }

    fn report_drops(&self, inner: &mut Inner) {
        if inner.dropped_unreported == 0 {
            return;
        }
        let (since, why) = inner.since.clone().unwrap_or_default();
        let line = format!(
            "{}--- {} {OWN_MARK} {}: {} bytes of output were dropped between {since} and now: cannot write this log: {why}\n",
            if inner.torn { "\n" } else { "" },
            timestamp(),
            self.name,
            inner.dropped_unreported
        );
        if self.append(inner, line.as_bytes()).is_ok() {
            inner.dropped_unreported = 0;
            inner.since = None;
        }
    }

    /// Appends all of `bytes` or fails with how much was written (the rest is lost: a torn
    /// line is cut at a line end by the report that follows it).
    fn append(&self, inner: &mut Inner, bytes: &[u8]) -> Result<(), (usize, std::io::Error)> {
        if inner.file.is_none() {
            inner.file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| (0, e))
                .map(Some)?;
        }
        let f = inner.file.as_mut().expect("opened above");
        let mut done = 0;
        let result = loop {
            if done == bytes.len() {
                break Ok(());
            }
            match f.write(&bytes[done..]) {
                Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if done > 0 {
            inner.torn = !bytes[..done].ends_with(b"\n");
        }
        result.map_err(|e| (done, e))
    }
}

/// A pipe for the child's stdout and stderr: returns (read end, write end), both close-on-exec.
pub(crate) fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two fds that we own from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fds from pipe2.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Copies everything from `read_end` into `sink` until every writer has closed it. Never forks.
pub(crate) fn spawn_copier(
    read_end: OwnedFd,
    sink: LogSink,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("log".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // SAFETY: read into a buffer we own, from a descriptor we own.
                let n =
                    unsafe { libc::read(read_end.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    sink.write(&buf[..n as usize]);
                    continue;
                }
                let interrupted = n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
                if !interrupted {
                    break; // every writer closed it (or it broke)
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_and_reported_once_writing_works() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("replica.log");
        let sink = LogSink::new(&path, "service.web[0]");
        sink.write(b"one\n");
        // A log that cannot be opened stands for a full disk: the write is dropped, not an error.
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        sink.lock().file = None;
        sink.write(b"lost line\n");
        sink.line("still running");
        let (total, pending) = sink.dropped_state();
        assert!(total >= 10, "{total}");
        assert!(pending.unwrap().contains("bytes of output dropped since"));
        fs::remove_dir(&path).unwrap();
        sink.recover();
        sink.write(b"two\n");
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("{total} bytes of output were dropped between")),
            "{text}"
        );
        assert!(text.ends_with("two\n"), "{text}");
        assert_eq!(sink.dropped_state(), (total, None));
    }
}
