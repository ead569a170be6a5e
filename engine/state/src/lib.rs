//! Recorded state of deployed resources: a snapshot (`state.json`) plus an append-only journal
//! (`state.journal`) made durable after every step, atomic compaction, and the state lock.

// `Locked(LockInfo)` is the agreed error shape; errors are rare, so their size does not matter.
#![allow(clippy::result_large_err)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

mod forget;
mod lock;
pub use forget::{forget, ForgetError};
pub use lock::{
    acquire_lock, force_unlock, format_utc, hostname, owner_alive, read_lock, LockGuard, LockInfo,
};

pub const STATE_VERSION: u32 = 1;

pub const SNAPSHOT_FILE: &str = "state.json";
pub const SNAPSHOT_TMP_FILE: &str = "state.json.tmp";
pub const JOURNAL_FILE: &str = "state.journal";
pub const LOCK_FILE: &str = "state.lock";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub version: u32,
    /// Bumps by 1 for every journal entry recorded.
    pub serial: u64,
    /// Random id created once when the state is first created; "" when nothing exists yet.
    pub lineage: String,
    /// Key = resource instance address, e.g. "service.preview[2]".
    pub resources: BTreeMap<String, ResourceState>,
    pub outputs: BTreeMap<String, OutputState>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResourceState {
    pub kind: String,
    pub provider: String,
    pub status: Status,
    pub attrs: serde_json::Map<String, serde_json::Value>,
    /// Attribute names whose values are sensitive.
    #[serde(default)]
    pub sensitive: Vec<String>,
    /// Addresses this instance depended on when applied (used for destroy order).
    #[serde(default)]
    pub deps: Vec<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ready,
    /// Creation/replacement started but its result was never recorded: the next plan must inspect and clean up.
    Pending,
    Tainted,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OutputState {
    pub value: serde_json::Value,
    #[serde(default)]
    pub sensitive: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum JournalEntry {
    Set {
        addr: String,
        resource: ResourceState,
    },
    Remove {
        addr: String,
    },
    Outputs {
        outputs: BTreeMap<String, OutputState>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state is locked by {}@{} (pid {}) running `{}` since {}, lock ID {}.\n  If that process is gone, run `pipeline force-unlock {}`.",
        .0.who, .0.host, .0.pid, .0.operation, .0.created, .0.id, .0.id
    )]
    Locked(LockInfo),
    #[error("{}: {source}\n  Check that the path exists, is writable by you, and that the disk is not full.", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}{}: corrupt state: {message}\n  Restore the file from a backup or repair it by hand.", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Corrupt {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{}: state format version {found} is not supported (this pipeline understands version {STATE_VERSION}).\n  Use the pipeline release that wrote it.", path.display())]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("lock ID mismatch: you asked to unlock {expected}, but the state lock is held with ID {found}.\n  Check `{found}` with its owner, then run `pipeline force-unlock {found}` if its process is gone.")]
    LockIdMismatch { expected: String, found: String },
    #[error("the state is not locked; there is nothing to unlock.")]
    NotLocked,
    #[error(
        "the lock {} is held by {}@{} (pid {}), which is still running `{}` (since {}); removing it would let a second run change the state alongside it.\n  Wait for it to finish, or stop it; only if you are sure it is stuck, run `pipeline force-unlock -force {}`.",
        .0.id, .0.who, .0.host, .0.pid, .0.operation, .0.created, .0.id
    )]
    OwnerAlive(LockInfo),
}

impl StateError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StateError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl State {
    /// An empty state; `lineage` is "" for a state that does not exist on disk yet.
    pub fn empty(lineage: String) -> State {
        State {
            version: STATE_VERSION,
            serial: 0,
            lineage,
            resources: BTreeMap::new(),
            outputs: BTreeMap::new(),
        }
    }

    /// Applies one entry and bumps the serial (the same code path for record and replay).
    pub fn apply(&mut self, entry: JournalEntry) {
        match entry {
            JournalEntry::Set { addr, resource } => {
                self.resources.insert(addr, resource);
            }
            JournalEntry::Remove { addr } => {
                self.resources.remove(&addr);
            }
            JournalEntry::Outputs { outputs } => self.outputs = outputs,
        }
        self.serial += 1;
    }
}

/// One journal line as written: `{"serial":N,"entry":{...}}`.
#[derive(Serialize)]
struct JournalLineRef<'a> {
    serial: u64,
    entry: &'a JournalEntry,
}

#[derive(Deserialize)]
struct JournalLine {
    serial: u64,
    entry: JournalEntry,
}

/// Encodes the exact bytes `record` appends for `entry` at `serial` (newline included).
pub fn encode_journal_line(serial: u64, entry: &JournalEntry) -> serde_json::Result<Vec<u8>> {
    let mut buf = serde_json::to_vec(&JournalLineRef { serial, entry })?;
    buf.push(b'\n');
    Ok(buf)
}

/// What reading the files found, shared by `open` and `load`.
struct Loaded {
    state: State,
    snapshot_exists: bool,
    journal_len: u64,
    /// Bytes of the journal up to the end of its last good line (a torn tail lies beyond).
    journal_valid_len: u64,
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match File::open(path) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)
                .map_err(|e| StateError::io(path, e))?;
            Ok(Some(buf))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::io(path, e)),
    }
}

fn parse_snapshot(path: &Path, bytes: &[u8]) -> Result<State, StateError> {
    let corrupt = |message: String| StateError::Corrupt {
        path: path.to_path_buf(),
        line: None,
        message,
    };
    // Read the version alone first, so a future format is reported as such, then parse the
    // whole state straight into its types (no intermediate JSON tree).
    #[derive(Deserialize)]
    struct Version {
        version: Option<u64>,
    }
    let v: Version =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
    let version = v
        .version
        .ok_or_else(|| corrupt("missing numeric \"version\" field".into()))?;
    if version != u64::from(STATE_VERSION) {
        return Err(StateError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: u32::try_from(version).unwrap_or(u32::MAX),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| corrupt(format!("unexpected content: {e}")))
}

fn read_state(dir: &Path) -> Result<Loaded, StateError> {
    let snap_path = dir.join(SNAPSHOT_FILE);
    let journal_path = dir.join(JOURNAL_FILE);
    let snapshot = read_optional(&snap_path)?;
    let snapshot_exists = snapshot.is_some();
    let mut state = match snapshot {
        Some(bytes) => parse_snapshot(&snap_path, &bytes)?,
        None => State::empty(String::new()),
    };
    let journal = read_optional(&journal_path)?.unwrap_or_default();
    let journal_valid_len = replay(&journal_path, &journal, &mut state)?;
    if !snapshot_exists && state.serial > 0 {
        return Err(StateError::Corrupt {
            path: journal_path,
            line: None,
            message: format!(
                "journal holds entries but {} is missing (the journal alone has no lineage)",
                snap_path.display()
            ),
        });
    }
    Ok(Loaded {
        state,
        snapshot_exists,
        journal_len: journal.len() as u64,
        journal_valid_len,
    })
}

/// Replays journal lines newer than `state.serial`; returns the length of the valid prefix.
fn replay(path: &Path, bytes: &[u8], state: &mut State) -> Result<u64, StateError> {
    // (start, end excluding '\n', has_newline) for every non-blank line.
    let mut lines = Vec::new();
    let mut start = 0;
    let mut lineno = 0;
    while start < bytes.len() {
        lineno += 1;
        let (end, nl) = match bytes[start..].iter().position(|&b| b == b'\n') {
            Some(i) => (start + i, true),
            None => (bytes.len(), false),
        };
        if bytes[start..end].iter().any(|b| !b.is_ascii_whitespace()) {
            lines.push((start, end, nl, lineno));
        }
        start = end + 1;
    }
    let mut valid_len = 0u64;
    let mut applied_any = false;
    let count = lines.len();
    for (i, (s, e, nl, lineno)) in lines.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let parsed = if nl {
            serde_json::from_slice::<JournalLine>(&bytes[s..e]).map_err(|err| err.to_string())
        } else {
            Err("incomplete line (no trailing newline)".to_string())
        };
        let line = match parsed {
            Ok(line) => line,
            // A torn last line is what a crash mid-append looks like: the step was never recorded.
            Err(_) if is_last => break,
            Err(message) => {
                return Err(StateError::Corrupt {
                    path: path.to_path_buf(),
                    line: Some(lineno),
                    message,
                })
            }
        };
        // Entries already folded into the snapshot (crash between compaction's rename and truncate).
        if line.serial > state.serial || applied_any {
            if line.serial != state.serial + 1 {
                return Err(StateError::Corrupt {
                    path: path.to_path_buf(),
                    line: Some(lineno),
                    message: format!(
                        "serial {} does not follow serial {} (entries are missing or out of order)",
                        line.serial, state.serial
                    ),
                });
            }
            state.apply(line.entry);
            applied_any = true;
        }
        valid_len = (e + 1) as u64;
    }
    Ok(valid_len)
}

pub(crate) fn random_hex16() -> Result<String, StateError> {
    let path = Path::new("/dev/urandom");
    let mut buf = [0u8; 16];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| StateError::io(path, e))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn create_dir_private(dir: &Path) -> Result<(), StateError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| StateError::io(dir, e))
}

/// Makes renames/creations inside `dir` durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StateError::io(dir, e))
}

/// Writes `bytes` to `dir/tmp_name` (0600, fsynced), renames it to `dir/name`, fsyncs `dir`.
pub(crate) fn write_atomic(
    dir: &Path,
    tmp_name: &str,
    name: &str,
    bytes: &[u8],
) -> Result<(), StateError> {
    let tmp = dir.join(tmp_name);
    // A leftover tmp from a crash may have other permissions; start from a fresh file.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StateError::io(&tmp, e)),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| StateError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| StateError::io(&tmp, e))?;
    drop(f);
    let target = dir.join(name);
    fs::rename(&tmp, &target).map_err(|e| StateError::io(&target, e))?;
    fsync_dir(dir)
}

/// Writable handle on a state directory. Callers hold the state lock while using it.
pub struct StateStore {
    dir: PathBuf,
    state: State,
    /// None until the state exists on disk (first record writes the snapshot, then opens this).
    journal: Option<File>,
    journal_len: u64,
    /// Set when a failed append could not be rolled back: further appends would corrupt the journal.
    poisoned: bool,
}

impl StateStore {
    /// Opens (creating the dir, 0700, if absent) the state in `dir`; writes no file until the first record.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        create_dir_private(dir)?;
        let loaded = read_state(dir)?;
        let mut store = StateStore {
            dir: dir.to_path_buf(),
            state: loaded.state,
            journal: None,
            journal_len: loaded.journal_valid_len,
            poisoned: false,
        };
        if loaded.snapshot_exists {
            let file = store.open_journal(false)?;
            if loaded.journal_len != loaded.journal_valid_len {
                // Drop the torn tail now, or the next append would bury it mid-file.
                let path = store.journal_path();
                file.set_len(loaded.journal_valid_len)
                    .and_then(|_| file.sync_all())
                    .map_err(|e| StateError::io(&path, e))?;
            }
            store.journal = Some(file);
        } else {
            store.state.lineage = random_hex16()?;
        }
        Ok(store)
    }

    /// Read-only load for plan/show: never creates anything; missing state = empty, lineage "".
    pub fn load(dir: &Path) -> Result<State, StateError> {
        Ok(read_state(dir)?.state)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    pub fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    fn open_journal(&self, truncate: bool) -> Result<File, StateError> {
        let path = self.journal_path();
        let existed = path.exists();
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StateError::io(&path, e))?;
        if truncate {
            file.set_len(0).map_err(|e| StateError::io(&path, e))?;
        }
        if !existed {
            fsync_dir(&self.dir)?;
        }
        Ok(file)
    }

    fn write_snapshot(&self) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| StateError::Corrupt {
            path: self.snapshot_path(),
            line: None,
            message: format!("cannot serialize state: {e}"),
        })?;
        write_atomic(&self.dir, SNAPSHOT_TMP_FILE, SNAPSHOT_FILE, &bytes)
    }

    /// Appends one entry durably (one write + fdatasync), then applies it in memory. O(entry size).
    pub fn record(&mut self, entry: JournalEntry) -> Result<(), StateError> {
        let path = self.journal_path();
        if self.poisoned {
            return Err(StateError::io(
                &path,
                io::Error::other(
                    "an earlier append failed and could not be rolled back; reopen the state",
                ),
            ));
        }
        if self.journal.is_none() {
            // First record of a fresh state: persist the lineage before any journal entry.
            self.write_snapshot()?;
            self.journal = Some(self.open_journal(true)?);
            self.journal_len = 0;
        }
        let line = encode_journal_line(self.state.serial + 1, &entry)
            .map_err(|e| StateError::io(&path, e.into()))?;
        let Some(file) = self.journal.as_mut() else {
            return Err(StateError::io(
                &path,
                io::Error::other("journal is not open"),
            ));
        };
        if let Err(e) = file.write_all(&line).and_then(|_| file.sync_data()) {
            // Roll back a partial line so later appends do not land behind garbage.
            if file
                .set_len(self.journal_len)
                .and_then(|_| file.sync_data())
                .is_err()
            {
                self.poisoned = true;
            }
            return Err(StateError::io(&path, e));
        }
        self.journal_len += line.len() as u64;
        self.state.apply(entry);
        Ok(())
    }

    /// Folds the journal into `state.json` atomically, then empties the journal.
    pub fn compact(&mut self) -> Result<(), StateError> {
        self.write_snapshot()?;
        let path = self.journal_path();
        match self.journal.as_ref() {
            Some(file) => file
                .set_len(0)
                .and_then(|_| file.sync_all())
                .map_err(|e| StateError::io(&path, e))?,
            None => self.journal = Some(self.open_journal(true)?),
        }
        self.journal_len = 0;
        self.poisoned = false;
        Ok(())
    }
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("dir", &self.dir)
            .field("serial", &self.state.serial)
            .field("lineage", &self.state.lineage)
            .finish()
    }
}
