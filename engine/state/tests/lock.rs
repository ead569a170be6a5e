use pipeline_state::*;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn write_lock(dir: &Path, info: &LockInfo) {
    fs::write(dir.join("state.lock"), serde_json::to_vec(info).unwrap()).unwrap();
}

fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn foreign_lock(id: &str, host: String, pid: u32) -> LockInfo {
    LockInfo {
        id: id.into(),
        operation: "apply".into(),
        who: "someone".into(),
        host,
        pid,
        created: "2026-11-21T21:03:22Z".into(),
    }
}

#[test]
fn acquire_then_second_acquire_is_locked_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (guard, broken) = acquire_lock(dir, "apply").unwrap();
    assert!(broken.is_none());
    let info = guard.info().clone();
    assert_eq!(info.pid, std::process::id());
    assert_eq!(info.operation, "apply");
    assert_eq!(info.host, hostname());
    assert_eq!(info.id.len(), 32);
    assert_eq!(info.created.len(), 20, "{}", info.created);
    assert!(info.created.ends_with('Z'));
    assert_eq!(read_lock(dir).unwrap(), Some(info.clone()));

    let err = acquire_lock(dir, "destroy").unwrap_err();
    match &err {
        StateError::Locked(holder) => assert_eq!(holder, &info),
        other => panic!("expected Locked, got {other:?}"),
    }
    let msg = err.to_string();
    for part in [
        info.who.clone(),
        info.host.clone(),
        format!("pid {}", info.pid),
        "`apply`".to_string(),
        info.created.clone(),
        format!("pipeline force-unlock {}", info.id),
    ] {
        assert!(msg.contains(&part), "{part:?} missing from {msg}");
    }
    // The failed attempt left no temp files behind.
    let names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["state.lock"]);
}

#[test]
fn guard_drop_removes_the_lock_and_it_can_be_taken_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (guard, _) = acquire_lock(dir, "apply").unwrap();
    assert!(dir.join("state.lock").exists());
    drop(guard);
    assert!(!dir.join("state.lock").exists());
    assert_eq!(read_lock(dir).unwrap(), None);
    let (again, broken) = acquire_lock(dir, "apply").unwrap();
    assert!(broken.is_none());
    drop(again);
}

#[test]
fn lock_of_a_dead_pid_on_this_host_is_broken_as_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let stale = foreign_lock("deadbeef", hostname(), dead_pid());
    write_lock(dir, &stale);
    let (guard, broken) = acquire_lock(dir, "apply").unwrap();
    assert_eq!(broken, Some(stale));
    assert_eq!(read_lock(dir).unwrap().as_ref(), Some(guard.info()));
}

#[test]
fn locks_of_live_pids_or_other_hosts_are_not_broken() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let other_host = foreign_lock("aaaa", format!("{}-elsewhere", hostname()), dead_pid());
    write_lock(dir, &other_host);
    assert!(matches!(acquire_lock(dir, "apply"), Err(StateError::Locked(i)) if i == other_host));

    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let alive = foreign_lock("bbbb", hostname(), sleeper.id());
    write_lock(dir, &alive);
    let res = acquire_lock(dir, "apply");
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert!(matches!(res, Err(StateError::Locked(i)) if i == alive));

    // pid 0 would make kill(2) address our process group: never treat it as dead.
    let bogus = foreign_lock("cccc", hostname(), 0);
    write_lock(dir, &bogus);
    assert!(matches!(
        acquire_lock(dir, "apply"),
        Err(StateError::Locked(_))
    ));
}

#[test]
fn force_unlock_checks_the_id() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert!(matches!(
        force_unlock(dir, "x", false),
        Err(StateError::NotLocked)
    ));
    assert!(matches!(
        force_unlock(&dir.join("missing"), "x", false),
        Err(StateError::NotLocked)
    ));

    let (guard, _) = acquire_lock(dir, "apply").unwrap();
    let id = guard.info().id.clone();
    match force_unlock(dir, "wrong", true) {
        Err(StateError::LockIdMismatch { expected, found }) => {
            assert_eq!(expected, "wrong");
            assert_eq!(found, id);
        }
        other => panic!("expected LockIdMismatch, got {other:?}"),
    }
    assert!(dir.join("state.lock").exists());
    // Held by this (live) process: refused unless forced.
    match force_unlock(dir, &id, false) {
        Err(StateError::OwnerAlive(i)) => assert_eq!(&i, guard.info()),
        other => panic!("expected OwnerAlive, got {other:?}"),
    }
    assert!(dir.join("state.lock").exists());
    let removed = force_unlock(dir, &id, true).unwrap();
    assert_eq!(&removed, guard.info());
    assert!(!dir.join("state.lock").exists());

    // Someone else locks after the force-unlock: our late guard drop must leave their lock alone.
    let (theirs, _) = acquire_lock(dir, "destroy").unwrap();
    drop(guard);
    assert_eq!(read_lock(dir).unwrap().as_ref(), Some(theirs.info()));
}

#[test]
fn force_unlock_refuses_a_live_owner_on_this_host_but_not_a_dead_or_remote_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let alive = foreign_lock("live1", hostname(), sleeper.id());
    write_lock(dir, &alive);
    let refused = force_unlock(dir, "live1", false);
    let still = read_lock(dir).unwrap();
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    match refused {
        Err(e @ StateError::OwnerAlive(_)) => {
            let m = e.to_string();
            assert!(m.contains(&format!("pid {}", alive.pid)), "{m}");
            assert!(m.contains("force-unlock -force live1"), "{m}");
        }
        other => panic!("expected OwnerAlive, got {other:?}"),
    }
    assert_eq!(still, Some(alive));

    let dead = foreign_lock("dead1", hostname(), dead_pid());
    write_lock(dir, &dead);
    assert_eq!(force_unlock(dir, "dead1", false).unwrap(), dead);
    // Another host's pid cannot be checked from here: the operator's word is enough.
    let remote = foreign_lock("far1", format!("{}-elsewhere", hostname()), 1);
    write_lock(dir, &remote);
    assert_eq!(force_unlock(dir, "far1", false).unwrap(), remote);
}

#[test]
fn unreadable_lock_file_is_a_corrupt_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(dir.join("state.lock"), b"{half").unwrap();
    for err in [
        read_lock(dir).unwrap_err(),
        acquire_lock(dir, "apply").unwrap_err(),
    ] {
        match err {
            StateError::Corrupt { path, .. } => assert_eq!(path, dir.join("state.lock")),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}

const CHILD_DIR_ENV: &str = "PIPELINE_STATE_TEST_LOCK_DIR";

/// Not a real test on its own: the race tests re-run this binary with the env var set.
#[test]
fn child_lock_racer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    // Start together to maximise contention.
    while !dir.join("go").exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    match acquire_lock(dir, "race") {
        Ok((guard, broken)) => {
            println!("RESULT WON {} {}", guard.info().id, broken.is_some());
            while !dir.join("release").exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Err(StateError::Locked(_)) => println!("RESULT LOCKED"),
        Err(e) => println!("RESULT ERROR {e}"),
    }
}

/// Runs `n` racing processes; returns each one's RESULT line.
fn race(dir: &Path, n: usize) -> Vec<String> {
    let children: Vec<Child> = (0..n)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "child_lock_racer",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DIR_ENV, dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    fs::write(dir.join("go"), b"").unwrap();
    // Losers exit on their own; the winner holds the lock until every loser has tried.
    let mut children = children;
    let deadline = Instant::now() + Duration::from_secs(120); // hang guard only
    loop {
        let mut running = 0;
        for c in children.iter_mut() {
            if c.try_wait().unwrap().is_none() {
                running += 1;
            }
        }
        if running <= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "racers did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
    fs::write(dir.join("release"), b"").unwrap();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_string()))
                .unwrap_or_else(|| {
                    format!(
                        "NO RESULT: {:?} {} {}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    )
                })
        })
        .collect()
}

#[test]
fn processes_racing_for_the_lock_exactly_one_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let results = race(tmp.path(), 6);
    let won: Vec<_> = results.iter().filter(|r| r.starts_with("WON")).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    assert!(won[0].ends_with("false"), "{results:?}");
    assert_eq!(
        results.iter().filter(|r| *r == "LOCKED").count(),
        5,
        "{results:?}"
    );
    assert!(
        !tmp.path().join("state.lock").exists(),
        "winner's guard removes it"
    );
}

#[test]
fn processes_racing_to_break_a_stale_lock_exactly_one_wins() {
    for _ in 0..3 {
        let tmp = tempfile::tempdir().unwrap();
        write_lock(tmp.path(), &foreign_lock("0ld", hostname(), dead_pid()));
        let results = race(tmp.path(), 6);
        let won: Vec<_> = results.iter().filter(|r| r.starts_with("WON")).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert!(
            won[0].ends_with("true"),
            "winner reports the broken lock: {results:?}"
        );
        assert_eq!(
            results.iter().filter(|r| *r == "LOCKED").count(),
            5,
            "{results:?}"
        );
    }
}
