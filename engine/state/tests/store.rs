use pipeline_state::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn resource(kind: &str, n: u64) -> ResourceState {
    let mut attrs = serde_json::Map::new();
    attrs.insert("n".into(), json!(n));
    attrs.insert("name".into(), json!(format!("{kind}-{n:06}")));
    ResourceState {
        kind: kind.into(),
        provider: "local".into(),
        status: Status::Ready,
        attrs,
        sensitive: vec![],
        deps: vec![],
    }
}

fn set(addr: &str, n: u64) -> JournalEntry {
    JournalEntry::Set {
        addr: addr.into(),
        resource: resource("service", n),
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).unwrap().len()
}

#[test]
fn open_fresh_creates_only_the_dir_and_load_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("never");
    let st = StateStore::load(&missing).unwrap();
    assert_eq!(st, State::empty(String::new()));
    assert!(!missing.exists(), "load must not create anything");

    let dir = tmp.path().join("a/b/state");
    let store = StateStore::open(&dir).unwrap();
    assert_eq!(store.state().serial, 0);
    assert_eq!(store.state().lineage.len(), 32);
    assert!(store.state().lineage.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        0,
        "open must not write files"
    );
    drop(store);
    // Nothing recorded: a fresh open gets a different, not yet durable lineage.
    assert_eq!(StateStore::load(&dir).unwrap().lineage, "");
}

#[test]
fn record_reopen_gives_same_state_and_serial_bumps() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = StateStore::open(dir).unwrap();
    let lineage = store.state().lineage.clone();
    for i in 0..20u64 {
        store
            .record(set(&format!("service.preview[{i}]"), i))
            .unwrap();
        assert_eq!(store.state().serial, i + 1);
    }
    store
        .record(JournalEntry::Remove {
            addr: "service.preview[3]".into(),
        })
        .unwrap();
    let mut tainted = resource("file", 99);
    tainted.status = Status::Tainted;
    tainted.sensitive = vec!["content".into()];
    tainted.deps = vec!["service.preview[0]".into()];
    store
        .record(JournalEntry::Set {
            addr: "module.web.file.conf".into(),
            resource: tainted.clone(),
        })
        .unwrap();
    let mut outputs = BTreeMap::new();
    outputs.insert(
        "url".to_string(),
        OutputState {
            value: json!("http://x"),
            sensitive: false,
        },
    );
    outputs.insert(
        "token".to_string(),
        OutputState {
            value: json!("s3cret"),
            sensitive: true,
        },
    );
    store
        .record(JournalEntry::Outputs {
            outputs: outputs.clone(),
        })
        .unwrap();

    let st = store.state().clone();
    assert_eq!(st.serial, 23);
    assert_eq!(st.lineage, lineage);
    assert_eq!(st.resources.len(), 20);
    assert!(!st.resources.contains_key("service.preview[3]"));
    assert_eq!(st.resources["module.web.file.conf"], tainted);
    assert_eq!(st.outputs, outputs);
    drop(store);

    assert_eq!(StateStore::load(dir).unwrap(), st);
    let reopened = StateStore::open(dir).unwrap();
    assert_eq!(reopened.state(), &st);

    // The snapshot written on first record is the empty state: records never rewrite it.
    let snap: State = serde_json::from_slice(&fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(snap.serial, 0);
    assert_eq!(snap.lineage, lineage);
    assert!(snap.resources.is_empty());
}

#[test]
fn compaction_then_reopen_is_equal_and_journal_is_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = StateStore::open(dir).unwrap();
    for i in 0..50u64 {
        store.record(set(&format!("service.s[{i}]"), i)).unwrap();
    }
    let before = store.state().clone();
    store.compact().unwrap();
    assert_eq!(store.state(), &before);
    assert_eq!(file_len(&dir.join("state.journal")), 0);
    assert!(!dir.join("state.json.tmp").exists());
    assert_eq!(StateStore::load(dir).unwrap(), before);

    // Records after compaction continue the serial and survive reopen.
    store
        .record(JournalEntry::Remove {
            addr: "service.s[0]".into(),
        })
        .unwrap();
    assert_eq!(store.state().serial, 51);
    let after = store.state().clone();
    drop(store);
    let reopened = StateStore::open(dir).unwrap();
    assert_eq!(reopened.state(), &after);
    assert_eq!(reopened.state().lineage, before.lineage);
}

#[test]
fn compact_on_fresh_state_persists_lineage() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = StateStore::open(tmp.path()).unwrap();
    store.compact().unwrap();
    let loaded = StateStore::load(tmp.path()).unwrap();
    assert_eq!(&loaded, store.state());
    assert_eq!(loaded.lineage.len(), 32);
}

#[test]
fn files_are_0600_and_dir_0700() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("st");
    let mut store = StateStore::open(&dir).unwrap();
    store.record(set("service.a", 1)).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("state.json")), 0o600);
    assert_eq!(mode(&dir.join("state.journal")), 0o600);
    store.compact().unwrap();
    assert_eq!(mode(&dir.join("state.json")), 0o600);
    assert_eq!(mode(&dir.join("state.journal")), 0o600);
    let (guard, _) = acquire_lock(&dir, "apply").unwrap();
    assert_eq!(mode(guard.path()), 0o600);
}

#[test]
fn torn_last_line_is_ignored_and_cut_off_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let journal = dir.join("state.journal");
    let mut store = StateStore::open(dir).unwrap();
    for i in 0..5u64 {
        store.record(set(&format!("service.t[{i}]"), i)).unwrap();
    }
    drop(store);
    // Cut the last line in half, as a kill -9 in the middle of write(2) would.
    let full = fs::read(&journal).unwrap();
    let last_start = full[..full.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    let cut = last_start + (full.len() - last_start) / 2;
    fs::write(&journal, &full[..cut]).unwrap();

    let st = StateStore::load(dir).unwrap();
    assert_eq!(st.serial, 4);
    assert!(!st.resources.contains_key("service.t[4]"));
    assert_eq!(file_len(&journal), cut as u64, "load must not modify files");

    // open trims the torn tail so the next append does not end up behind garbage.
    let mut store = StateStore::open(dir).unwrap();
    assert_eq!(file_len(&journal), last_start as u64);
    store.record(set("service.t[new]", 7)).unwrap();
    drop(store);
    let st = StateStore::load(dir).unwrap();
    assert_eq!(st.serial, 5);
    assert!(st.resources.contains_key("service.t[new]"));

    // A complete but unparseable last line (e.g. zero-filled after a crash) is ignored too.
    let mut f = OpenOptions::new().append(true).open(&journal).unwrap();
    f.write_all(b"\0\0\0\0\n").unwrap();
    assert_eq!(StateStore::load(dir).unwrap().serial, 5);
}

#[test]
fn garbage_in_a_middle_line_is_a_corrupt_error_with_line_number() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let journal = dir.join("state.journal");
    let mut store = StateStore::open(dir).unwrap();
    for i in 0..5u64 {
        store.record(set(&format!("service.g[{i}]"), i)).unwrap();
    }
    drop(store);
    let text = fs::read_to_string(&journal).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "{\"serial\":3,\"entry\":{\"op\":\"set\",garbage";
    fs::write(&journal, lines.join("\n") + "\n").unwrap();

    for err in [
        StateStore::load(dir).unwrap_err(),
        StateStore::open(dir).unwrap_err(),
    ] {
        match &err {
            StateError::Corrupt { path, line, .. } => {
                assert_eq!(path, &journal);
                assert_eq!(*line, Some(3));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&journal.display().to_string()), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }
}

#[test]
fn serial_gap_in_journal_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = StateStore::open(dir).unwrap();
    store.record(set("service.a", 1)).unwrap();
    drop(store);
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.join("state.journal"))
        .unwrap();
    f.write_all(&encode_journal_line(3, &set("service.b", 2)).unwrap())
        .unwrap();
    f.write_all(&encode_journal_line(4, &set("service.c", 3)).unwrap())
        .unwrap();
    match StateStore::load(dir).unwrap_err() {
        StateError::Corrupt { line, .. } => assert_eq!(line, Some(2)),
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // An old serial after newer ones is out of order, not a compaction leftover.
    let mut store = StateStore::open(&dir.join("b")).unwrap();
    store.record(set("service.a", 1)).unwrap();
    store.record(set("service.b", 2)).unwrap();
    drop(store);
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.join("b/state.journal"))
        .unwrap();
    f.write_all(&encode_journal_line(1, &set("service.z", 9)).unwrap())
        .unwrap();
    f.write_all(&encode_journal_line(3, &set("service.c", 3)).unwrap())
        .unwrap();
    match StateStore::load(&dir.join("b")).unwrap_err() {
        StateError::Corrupt { line, .. } => assert_eq!(line, Some(3)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn bad_snapshots_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let snap = dir.join("state.json");
    let mut future = State::empty("abc".into());
    future.version = 2;
    fs::write(&snap, serde_json::to_vec(&future).unwrap()).unwrap();
    match StateStore::open(dir).unwrap_err() {
        StateError::UnsupportedVersion { path, found } => {
            assert_eq!(path, snap);
            assert_eq!(found, 2);
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    for junk in [&b"{not json"[..], b"", b"[]", b"{\"version\":1}"] {
        fs::write(&snap, junk).unwrap();
        match StateStore::load(dir).unwrap_err() {
            StateError::Corrupt {
                path, line: None, ..
            } => assert_eq!(path, snap),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}

#[test]
fn journal_without_snapshot_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = StateStore::open(dir).unwrap();
    store.record(set("service.a", 1)).unwrap();
    drop(store);
    fs::remove_file(dir.join("state.json")).unwrap();
    let err = StateStore::load(dir).unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("state.json"));
}

#[test]
fn record_cost_is_independent_of_state_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let journal = dir.join("state.journal");
    let mut store = StateStore::open(dir).unwrap();
    store.record(set("service.first", 0)).unwrap();
    let snap_len = file_len(&dir.join("state.json"));
    let mut growth = Vec::new();
    for i in 1..=10_000u64 {
        let entry = set(&format!("service.big[{i:05}]"), 10_000 + i);
        let expected = encode_journal_line(store.state().serial + 1, &entry)
            .unwrap()
            .len() as u64;
        let before = file_len(&journal);
        store.record(entry).unwrap();
        let grew = file_len(&journal) - before;
        assert_eq!(grew, expected, "record {i} wrote more than its own line");
        growth.push(grew);
    }
    // Same-shaped entries cost the same bytes at 1 resource and at 10,000 (serial digits aside).
    let (first, last) = (growth[0], growth[growth.len() - 1]);
    assert!(last <= first + 4, "first={first} last={last}");
    assert!(last < 256, "an entry line should be small, got {last}");
    assert_eq!(
        file_len(&dir.join("state.json")),
        snap_len,
        "snapshot must not be rewritten"
    );
    assert_eq!(store.state().resources.len(), 10_001);
    let st = store.state().clone();
    drop(store);
    assert_eq!(StateStore::load(dir).unwrap(), st);
}

#[test]
fn crash_during_compaction_leaves_a_loadable_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = StateStore::open(dir).unwrap();
    for i in 0..30u64 {
        store.record(set(&format!("service.c[{i}]"), i)).unwrap();
    }
    let expected = store.state().clone();
    drop(store);

    // Crash before the rename: a half-written tmp next to the old snapshot and the full journal.
    let full_snapshot = serde_json::to_vec_pretty(&expected).unwrap();
    fs::write(
        dir.join("state.json.tmp"),
        &full_snapshot[..full_snapshot.len() / 2],
    )
    .unwrap();
    assert_eq!(StateStore::load(dir).unwrap(), expected);
    // A complete tmp with different content is ignored as well: only state.json counts.
    let mut other = expected.clone();
    other.resources.clear();
    fs::write(
        dir.join("state.json.tmp"),
        serde_json::to_vec(&other).unwrap(),
    )
    .unwrap();
    assert_eq!(StateStore::load(dir).unwrap(), expected);

    // Crash after the rename, before the truncate: snapshot already holds every journal entry.
    fs::write(dir.join("state.json"), &full_snapshot).unwrap();
    assert!(file_len(&dir.join("state.journal")) > 0);
    assert_eq!(StateStore::load(dir).unwrap(), expected);

    // And the store keeps going from there: new records follow the snapshot's serial.
    let mut store = StateStore::open(dir).unwrap();
    assert_eq!(store.state(), &expected);
    store
        .record(JournalEntry::Remove {
            addr: "service.c[0]".into(),
        })
        .unwrap();
    let after = store.state().clone();
    assert_eq!(after.serial, 31);
    store.compact().unwrap();
    assert!(!dir.join("state.json.tmp").exists());
    drop(store);
    assert_eq!(StateStore::load(dir).unwrap(), after);
}

const CHILD_DIR_ENV: &str = "PIPELINE_STATE_TEST_RECORDER_DIR";

/// Not a real test on its own: the kill -9 test re-runs this binary with the env var set.
#[test]
fn child_recorder() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let mut store = StateStore::open(Path::new(&dir)).unwrap();
    let payload = "x".repeat(20_000);
    for i in 0u64.. {
        let mut r = resource("service", i);
        r.attrs.insert("payload".into(), json!(payload));
        store
            .record(JournalEntry::Set {
                addr: format!("service.k[{}]", i % 50),
                resource: r,
            })
            .unwrap();
    }
}

#[test]
fn kill_9_while_recording_leaves_a_loadable_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let journal = dir.join("state.journal");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_recorder",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Hang guard only; nothing is asserted about timing.
    let deadline = Instant::now() + Duration::from_secs(120);
    while fs::metadata(&journal).map(|m| m.len()).unwrap_or(0) < 500_000 {
        assert!(Instant::now() < deadline, "child never wrote its journal");
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let loaded = StateStore::load(&dir).unwrap();
    let bytes = fs::read(&journal).unwrap();
    let complete_lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(loaded.serial, complete_lines);
    assert!(loaded.serial > 0);
    let mut store = StateStore::open(&dir).unwrap();
    assert_eq!(store.state(), &loaded);
    store.record(set("service.after", 1)).unwrap();
    let after = store.state().clone();
    drop(store);
    assert_eq!(StateStore::load(&dir).unwrap(), after);
}
