//! The state lock: `dir/state.lock`, a JSON `LockInfo` created exclusively and removed on drop.

use crate::{create_dir_private, fsync_dir, random_hex16, read_optional, StateError, LOCK_FILE};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LockInfo {
    pub id: String,
    pub operation: String,
    /// $USER, or the numeric uid when unset.
    pub who: String,
    pub host: String,
    pub pid: u32,
    /// UTC, e.g. "2026-11-21T21:03:22Z".
    pub created: String,
}

/// Holds the state lock; dropping it removes the lock file if it still carries our id.
#[derive(Debug)]
pub struct LockGuard {
    path: PathBuf,
    info: LockInfo,
}

impl LockGuard {
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Someone may have force-unlocked and re-locked meanwhile: never remove their lock.
        if let Ok(bytes) = fs::read(&self.path) {
            if let Ok(current) = serde_json::from_slice::<LockInfo>(&bytes) {
                if current.id == self.info.id {
                    let _ = fs::remove_file(&self.path);
                }
            }
        }
    }
}

/// Formats unix seconds as "YYYY-MM-DDTHH:MM:SSZ" (civil-from-days, proleptic Gregorian).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates or truncates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn whoami() -> String {
    match std::env::var("USER") {
        Ok(u) if !u.is_empty() => u,
        // SAFETY: getuid has no preconditions and cannot fail.
        _ => unsafe { libc::getuid() }.to_string(),
    }
}

/// True only when the kernel says the pid does not exist (EPERM means it exists, owned by another user).
fn pid_is_dead(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence; it sends nothing.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

fn is_stale(info: &LockInfo) -> bool {
    info.host == hostname() && pid_is_dead(info.pid)
}

/// Serializes lock breaking and force-unlock via flock on the directory (released by the kernel on exit).
struct DirFlock(File);

impl DirFlock {
    fn take(dir: &Path) -> Result<DirFlock, StateError> {
        let f = File::open(dir).map_err(|e| StateError::io(dir, e))?;
        loop {
            // SAFETY: f is an open descriptor for the lifetime of this call.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(DirFlock(f));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(StateError::io(dir, err));
            }
        }
    }
}

impl Drop for DirFlock {
    fn drop(&mut self) {
        // SAFETY: the descriptor is still open; closing it would release the lock anyway.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn parse_lock(path: &Path, bytes: &[u8]) -> Result<LockInfo, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt {
        path: path.to_path_buf(),
        line: None,
        message: format!(
            "unreadable lock file ({e}); if no pipeline process is running, delete it"
        ),
    })
}

/// Reads the current lock, if any.
pub fn read_lock(dir: &Path) -> Result<Option<LockInfo>, StateError> {
    let path = dir.join(LOCK_FILE);
    match read_optional(&path)? {
        Some(bytes) => parse_lock(&path, &bytes).map(Some),
        None => Ok(None),
    }
}

/// Creates `p` exclusively (0600) holding `bytes`, fsynced; false if it already exists.
fn write_new(p: &Path, bytes: &[u8]) -> Result<bool, StateError> {
    let mut f = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(StateError::io(p, e)),
    };
    if let Err(e) = f.write_all(bytes).and_then(|_| f.sync_all()) {
        // We created it: a full disk must not leave an empty or torn file behind.
        drop(f);
        let _ = fs::remove_file(p);
        return Err(StateError::io(p, e));
    }
    Ok(true)
}

/// Writes our complete lock to a private temp file.
fn write_tmp(tmp: &Path, bytes: &[u8]) -> Result<(), StateError> {
    if write_new(tmp, bytes)? {
        Ok(())
    } else {
        Err(StateError::io(
            tmp,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "lock temp file already exists",
            ),
        ))
    }
}

/// Creates `path` holding `bytes` only if it does not exist; false if it does.
/// Uses link(2) of a complete, fsynced temp file so readers never see a half-written lock.
fn create_exclusive(dir: &Path, path: &Path, tmp: &Path, bytes: &[u8]) -> Result<bool, StateError> {
    write_tmp(tmp, bytes)?;
    let linked = fs::hard_link(tmp, path);
    let _ = fs::remove_file(tmp);
    let created = match linked {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        // Filesystems without hard links: fall back to O_EXCL on the lock itself.
        Err(_) => write_new(path, bytes)?,
    };
    if created {
        fsync_dir(dir)?;
    }
    Ok(created)
}

/// Takes `dir/state.lock`. Breaks a lock left by a dead process on this host and returns its info.
pub fn acquire_lock(
    dir: &Path,
    operation: &str,
) -> Result<(LockGuard, Option<LockInfo>), StateError> {
    create_dir_private(dir)?;
    let path = dir.join(LOCK_FILE);
    let info = LockInfo {
        id: random_hex16()?,
        operation: operation.to_string(),
        who: whoami(),
        host: hostname(),
        pid: std::process::id(),
        created: utc_now(),
    };
    let bytes = serde_json::to_vec_pretty(&info).map_err(|e| StateError::io(&path, e.into()))?;
    let tmp = dir.join(format!("{LOCK_FILE}.{}.tmp", info.id));
    // Each retry follows an observed removal; the bound only guards against a pathological livelock.
    for _ in 0..100 {
        if create_exclusive(dir, &path, &tmp, &bytes)? {
            return Ok((LockGuard { path, info }, None));
        }
        let Some(holder) = read_lock(dir)? else {
            continue; // released between our create and read
        };
        if !is_stale(&holder) {
            return Err(StateError::Locked(holder));
        }
        // Re-check under the flock so two breakers cannot both replace it (the second would
        // clobber a live lock). Renaming over keeps the file present, so link-creators keep failing.
        let _flock = DirFlock::take(dir)?;
        if matches!(read_lock(dir)?, Some(current) if current.id == holder.id) {
            write_tmp(&tmp, &bytes)?;
            if let Err(e) = fs::rename(&tmp, &path) {
                let _ = fs::remove_file(&tmp);
                return Err(StateError::io(&path, e));
            }
            fsync_dir(dir)?;
            return Ok((LockGuard { path, info }, Some(holder)));
        }
        // Someone else broke or replaced it meanwhile: look again.
    }
    match read_lock(dir)? {
        Some(holder) => Err(StateError::Locked(holder)),
        None => Err(StateError::io(
            &path,
            io::Error::other("lock kept changing hands; try again"),
        )),
    }
}

/// Is the lock's owner a live process on this host? (On another host nobody here can tell.)
pub fn owner_alive(info: &LockInfo) -> bool {
    info.host == hostname() && !pid_is_dead(info.pid)
}

/// Removes the lock if it carries `id`; returns what it removed. A lock whose owner still runs
/// on this host is refused (`OwnerAlive`) unless `force`: a second apply would run alongside it.
pub fn force_unlock(dir: &Path, id: &str, force: bool) -> Result<LockInfo, StateError> {
    let path = dir.join(LOCK_FILE);
    if !dir.is_dir() {
        return Err(StateError::NotLocked);
    }
    let _flock = DirFlock::take(dir)?;
    let Some(current) = read_lock(dir)? else {
        return Err(StateError::NotLocked);
    };
    if current.id != id {
        return Err(StateError::LockIdMismatch {
            expected: id.to_string(),
            found: current.id,
        });
    }
    if !force && owner_alive(&current) {
        return Err(StateError::OwnerAlive(current));
    }
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StateError::NotLocked),
        Err(e) => return Err(StateError::io(&path, e)),
    }
    fsync_dir(dir)?;
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::format_utc;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_795_295_002), "2026-11-21T21:03:22Z");
        assert_eq!(format_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
