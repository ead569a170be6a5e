//! ansible-playbook as a child in a process group of its own, with the event pipe on fd 3.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use tokio::process::{Child, Command};

/// The descriptor the callback plugin writes to (`PIPELINE_EVENTS_FD`).
pub(crate) const EVENTS_FD: RawFd = 3;

/// A pipe: (read end, write end), both close-on-exec.
pub(crate) fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Spawns `cmd` as the leader of a new process group with `events` as fd [`EVENTS_FD`].
/// ansible forks workers (and they fork ssh and modules): the group is what gets killed.
pub(crate) fn spawn(cmd: &mut Command, events: &OwnedFd) -> std::io::Result<Child> {
    let fd = events.as_raw_fd();
    cmd.process_group(0).kill_on_drop(true);
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            if fd == EVENTS_FD {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, EVENTS_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// The variable that marks every process of one run (`PIPELINE_ANSIBLE_RUN`): ansible's workers
/// call `setsid()`, leaving the process group, so the group alone does not find them.
pub(crate) const RUN_MARKER: &str = "PIPELINE_ANSIBLE_RUN";

/// Kills a run when dropped, unless [`GroupGuard::kill_now_and_disarm`] came first: dropping the
/// run's future (cancellation, a timeout) takes every ansible worker, ssh and module with it.
pub(crate) struct GroupGuard {
    pgid: Option<libc::pid_t>,
    /// `RUN_MARKER=value`, as it appears in /proc/PID/environ.
    marker: Vec<u8>,
}

impl GroupGuard {
    pub fn new(child: &Child, marker_value: &str) -> GroupGuard {
        GroupGuard {
            pgid: child.id().map(|p| p as libc::pid_t),
            marker: format!("{RUN_MARKER}={marker_value}").into_bytes(),
        }
    }

    /// After a normal exit: kills what is left of the group and forgets the run. Workers have
    /// been joined by then, and the ssh ControlMaster processes the run started (which carry
    /// the marker) stay for the next run to reuse.
    pub fn kill_now_and_disarm(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            kill_group(pgid);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let Some(pgid) = self.pgid.take() else {
            return;
        };
        // The leader first (it forks no new worker once dead), then whatever carries the mark.
        kill_group(pgid);
        for _ in 0..5 {
            let marked = marked_processes(&self.marker);
            if marked.is_empty() {
                break;
            }
            for pid in marked {
                // SAFETY: a signal to a process of this run, found by its mark.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

fn kill_group(pgid: libc::pid_t) {
    if pgid > 1 {
        // SAFETY: a signal to a process group we created; ESRCH (already gone) is fine.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Live processes whose environment holds `marker` (a `NAME=value` entry).
fn marked_processes(marker: &[u8]) -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as libc::pid_t;
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == marker))
        })
        .collect()
}
