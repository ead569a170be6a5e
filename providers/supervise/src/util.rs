//! Small helpers: /proc inspection, atomic file writes, log tails, timestamps.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::MARKER_ENV;

/// Absolute, canonical form of `dir` when it exists; otherwise an absolute form of it.
pub(crate) fn abs_dir(dir: &Path) -> PathBuf {
    if let Ok(p) = fs::canonicalize(dir) {
        return p;
    }
    if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|c| c.join(dir))
            .unwrap_or_else(|_| dir.to_path_buf())
    }
}

/// Write `contents` to `path` atomically (tmp file in the same directory + rename) with `mode`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub(crate) fn read_pid_file(path: &Path) -> Option<u32> {
    let s = fs::read_to_string(path).ok()?;
    let pid: u32 = s.trim().parse().ok()?;
    if pid == 0 || pid > i32::MAX as u32 {
        return None;
    }
    Some(pid)
}

/// `kill(pid, 0)` succeeds (EPERM also means the process exists).
pub(crate) fn pid_exists(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence/permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// State letter from /proc/PID/stat ('R', 'S', 'Z', ...).
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parens: the state follows the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

/// Parent pid from /proc/PID/stat.
pub(crate) fn ppid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Alive = exists and is not a zombie.
pub(crate) fn pid_running(pid: u32) -> bool {
    pid_exists(pid) && !matches!(proc_state(pid), Some('Z') | Some('X') | None)
}

fn nul_split(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|b| *b == 0).filter(|s| !s.is_empty())
}

fn same_dir(a: &[u8], dir: &Path) -> bool {
    let p = Path::new(OsStr::from_bytes(a));
    p == dir || abs_dir(p) == abs_dir(dir)
}

/// The pid is a live supervisor process for `dir`: its cmdline has `__supervise` followed by `dir`.
pub(crate) fn is_supervisor_of(pid: u32, dir: &Path) -> bool {
    if !pid_running(pid) {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = nul_split(&cmdline).collect();
    args.windows(2)
        .any(|w| w[0] == b"__supervise" && same_dir(w[1], dir))
}

/// Value of MARKER_ENV in /proc/PID/environ, if any.
pub(crate) fn marker_of(pid: u32) -> Option<PathBuf> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{MARKER_ENV}=");
    let found = nul_split(&environ)
        .find(|kv| kv.starts_with(prefix.as_bytes()))
        .map(|kv| PathBuf::from(OsStr::from_bytes(&kv[prefix.len()..])));
    found
}

/// The pid is a live process that we started for `dir` (its environment carries the marker).
pub(crate) fn is_ours(pid: u32, dir: &Path) -> bool {
    pid_running(pid) && marker_of(pid).is_some_and(|m| m == dir || abs_dir(&m) == abs_dir(dir))
}

/// Every live pid (other than ourselves) whose marker satisfies `pred`.
pub(crate) fn marked_pids(pred: impl Fn(&Path) -> bool) -> Vec<u32> {
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| marker_of(pid).is_some_and(|m| pred(&m)))
        .filter(|&pid| pid_running(pid))
        .collect();
    out.sort_unstable();
    out
}

pub(crate) fn signal_pid(pid: u32, sig: libc::c_int) {
    if pid > 1 && pid <= i32::MAX as u32 {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    }
}

pub(crate) fn signal_group(pgid: u32, sig: libc::c_int) -> bool {
    if pgid > 1 && pgid <= i32::MAX as u32 {
        // SAFETY: plain kill(2) on a process group.
        unsafe { libc::kill(-(pgid as libc::pid_t), sig) == 0 }
    } else {
        false
    }
}

/// Last `max_lines` lines of a file (reading at most the last 16 KiB). Empty if missing.
pub(crate) fn tail(path: &Path, max_lines: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // probably a partial line
    }
    let from = lines.len().saturating_sub(max_lines);
    lines[from..].join("\n")
}

pub(crate) fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2024-05-01T12:00:00.123Z`.
pub(crate) fn timestamp() -> String {
    let ms = unix_ms();
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        ms % 1000
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert!(timestamp().ends_with('Z'));
    }

    #[test]
    fn tail_and_atomic_write() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        assert_eq!(tail(&p, 3), "");
        write_atomic(&p, b"a\nb\nc\nd\n", 0o600).unwrap();
        assert_eq!(tail(&p, 2), "c\nd");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn own_process_is_not_a_supervisor() {
        let me = std::process::id();
        assert!(pid_running(me));
        assert!(!is_supervisor_of(me, Path::new("/tmp")));
        assert!(!pid_running(0));
        // SAFETY: plain getppid.
        assert_eq!(ppid(me), Some(unsafe { libc::getppid() } as u32));
    }
}
