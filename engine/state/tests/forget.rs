//! `forget` (`pipeline state rm`): one operation of the state crate, all or nothing, locked.

use pipeline_state::*;
use std::path::Path;

fn record(dir: &Path, addrs: &[&str]) {
    let mut store = StateStore::open(dir).unwrap();
    for a in addrs {
        store
            .record(JournalEntry::Set {
                addr: (*a).into(),
                resource: ResourceState {
                    kind: "service".into(),
                    provider: "local".into(),
                    status: Status::Ready,
                    attrs: Default::default(),
                    sensitive: vec![],
                    deps: vec![],
                },
            })
            .unwrap();
    }
}

fn addrs(dir: &Path) -> Vec<String> {
    StateStore::load(dir)
        .unwrap()
        .resources
        .keys()
        .cloned()
        .collect()
}

#[test]
fn forget_removes_the_named_records_durably_and_compacts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    record(dir, &["service.a", "service.b", "file.c"]);
    let serial = StateStore::load(dir).unwrap().serial;
    let removed = forget(dir, &["service.b".into(), "file.c".into(), "file.c".into()]).unwrap();
    assert_eq!(removed, vec!["service.b".to_string(), "file.c".to_string()]);
    assert_eq!(addrs(dir), vec!["service.a".to_string()]);
    let st = StateStore::load(dir).unwrap();
    assert_eq!(st.serial, serial + 2, "one journal entry per removal");
    // Compacted: the snapshot alone holds the result.
    assert_eq!(std::fs::metadata(dir.join(JOURNAL_FILE)).unwrap().len(), 0);
    assert!(!dir.join(LOCK_FILE).exists(), "the lock is released");
}

#[test]
fn forget_removes_nothing_when_one_address_is_not_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    record(dir, &["service.a", "service.b"]);
    let before = StateStore::load(dir).unwrap();
    match forget(dir, &["service.a".into(), "service.nope".into()]) {
        Err(ForgetError::NotRecorded(a)) => assert_eq!(a, "service.nope"),
        other => panic!("expected NotRecorded, got {other:?}"),
    }
    assert_eq!(StateStore::load(dir).unwrap(), before);
}

#[test]
fn forget_refuses_while_another_run_holds_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    record(dir, &["service.a"]);
    let (_held, _) = acquire_lock(dir, "apply").unwrap();
    match forget(dir, &["service.a".into()]) {
        Err(ForgetError::State(StateError::Locked(info))) => assert_eq!(info.operation, "apply"),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert_eq!(addrs(dir), vec!["service.a".to_string()]);
}
