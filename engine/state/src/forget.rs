//! `state rm`: forget recorded instances without touching what they describe.

use crate::{acquire_lock, JournalEntry, StateError, StateStore};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    /// One of the addresses has no record; nothing was removed.
    #[error("{0} is not in the state (nothing was removed)")]
    NotRecorded(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Removes the records of `addrs` from the state in `dir` as one operation: under the state
/// lock, all or nothing (every address must be recorded before any is removed), each removal
/// journaled durably, then the journal folded into the snapshot. Returns the addresses removed,
/// in the order given (an address named twice is removed once).
pub fn forget(dir: &Path, addrs: &[String]) -> Result<Vec<String>, ForgetError> {
    let (_guard, _stale) = acquire_lock(dir, "state rm")?;
    let mut store = StateStore::open(dir)?;
    if let Some(missing) = addrs
        .iter()
        .find(|a| !store.state().resources.contains_key(*a))
    {
        return Err(ForgetError::NotRecorded(missing.clone()));
    }
    let mut removed: Vec<String> = Vec::with_capacity(addrs.len());
    for a in addrs {
        if removed.contains(a) {
            continue;
        }
        store.record(JournalEntry::Remove { addr: a.clone() })?;
        removed.push(a.clone());
    }
    store.compact()?;
    Ok(removed)
}
