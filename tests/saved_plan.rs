//! A saved plan file is what was reviewed, or nothing happens: an empty, truncated, changed,
//! other-version, foreign or garbage file given to `apply` is refused before anything is
//! locked, read or changed, with `-auto-approve` too, naming the file and what to do.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const STACK: &str = "variable \"v\" { default = \"one\" }\nfile \"f\" {\n  path    = \"out/f.txt\"\n  content = var.v\n}\n";

/// Every file and directory under `dir` with its bytes (directories as None).
fn tree(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if p.is_dir() {
                out.insert(rel, None);
                walk(&p, root, out);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// `apply FILE` (and `apply -auto-approve FILE`) in `t` is refused: exit 1, the file named,
/// `what` said, and not one byte under `t` changed.
fn refused(t: &Scratch, file: &str, what: &str) -> String {
    let mut messages = String::new();
    for args in [vec!["apply", file], vec!["apply", "-auto-approve", file]] {
        let before = tree(t.path());
        let out = t.run(&args);
        let err = s(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} must be refused\nstdout:\n{}\nstderr:\n{err}",
            s(&out.stdout)
        );
        assert!(
            s(&out.stdout).trim().is_empty(),
            "{args:?}: no plan is shown for a refused file:\n{}",
            s(&out.stdout)
        );
        assert!(err.contains(file), "{args:?}: the file is named: {err}");
        assert!(err.contains(what), "{args:?}: says {what:?}: {err}");
        assert!(err.contains("= help: "), "{args:?}: says what to do: {err}");
        let after = tree(t.path());
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "{args:?}: files appeared or disappeared"
        );
        for (p, b) in &before {
            assert!(after[p] == *b, "{args:?}: {} changed", p.display());
        }
        messages = err;
    }
    messages
}

#[test]
fn damaged_other_version_and_garbage_plan_files_are_refused_and_nothing_changes() {
    let t = Scratch::new();
    t.write("s.hcl", STACK);
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    t.ok(&["plan", "s.hcl", "-var", "v=two", "-out", "good.plan"]);
    let good = std::fs::read(t.path().join("good.plan")).unwrap();

    std::fs::write(t.path().join("empty.plan"), b"").unwrap();
    refused(&t, "empty.plan", "it is empty");

    std::fs::write(t.path().join("truncated.plan"), &good[..good.len() / 2]).unwrap();
    refused(&t, "truncated.plan", "truncated");

    // One changed byte that leaves valid JSON: the variable the plan carries, "two" → "twO".
    let at = good
        .windows(5)
        .position(|w| w == b"\"two\"")
        .expect("the plan carries v");
    let mut flipped = good.clone();
    flipped[at + 3] ^= 0x20;
    std::fs::write(t.path().join("flipped.plan"), &flipped).unwrap();
    refused(&t, "flipped.plan", "changed after it was saved");

    // The same plan claiming another format version.
    let text = String::from_utf8(good.clone()).unwrap();
    let (header, body) = text.split_once('\n').unwrap();
    assert!(header.contains("format=2"), "{header}");
    std::fs::write(
        t.path().join("future.plan"),
        format!("{}\n{body}", header.replace("format=2", "format=3")),
    )
    .unwrap();
    let err = refused(&t, "future.plan", "format 3");
    assert!(err.contains("pipeline plan -out"), "{err}");
    // The format of earlier versions: one JSON object.
    std::fs::write(
        t.path().join("old.plan"),
        format!("{{\"pipeline_plan\": {body}}}"),
    )
    .unwrap();
    refused(&t, "old.plan", "format 1");

    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(t.path().join("garbage.plan"), &garbage).unwrap();
    refused(&t, "garbage.plan", "not a saved plan");

    assert_eq!(
        std::fs::read_to_string(t.path().join("out/f.txt")).unwrap(),
        "one"
    );
    // The intact plan still applies.
    let applied = t.ok(&["apply", "good.plan"]);
    assert!(applied.contains("1 changed"), "{applied}");
    assert_eq!(
        std::fs::read_to_string(t.path().join("out/f.txt")).unwrap(),
        "two"
    );
}

#[test]
fn a_plan_made_in_another_working_directory_is_refused_and_nothing_changes() {
    // Both directories fresh: no lineage yet on either side, the same stack text.
    let a = Scratch::new();
    let b = Scratch::new();
    a.write("s.hcl", STACK);
    b.write("s.hcl", STACK);
    a.ok(&["plan", "s.hcl", "-out", "fresh.plan"]);
    std::fs::copy(a.path().join("fresh.plan"), b.path().join("fresh.plan")).unwrap();
    let err = refused(&b, "fresh.plan", "does not match the given state");
    assert!(
        err.contains(&a.path().canonicalize().unwrap().display().to_string()),
        "names where it was made: {err}"
    );
    assert!(!b.path().join(".pipeline").exists());
    assert!(!b.path().join("out").exists());

    // A plan against a real state (its own lineage) brought to a directory with another one.
    a.ok(&["apply", "-auto-approve", "s.hcl"]);
    b.ok(&["apply", "-auto-approve", "s.hcl"]);
    a.ok(&["plan", "s.hcl", "-var", "v=two", "-out", "applied.plan"]);
    std::fs::copy(a.path().join("applied.plan"), b.path().join("applied.plan")).unwrap();
    refused(&b, "applied.plan", "does not match the given state");
    assert_eq!(
        std::fs::read_to_string(b.path().join("out/f.txt")).unwrap(),
        "one"
    );
}

#[test]
fn a_plan_cannot_be_saved_under_a_stack_name() {
    let t = Scratch::new();
    t.write("s.hcl", STACK);
    let out = t.run(&["plan", "s.hcl", "-out", "reviewed.hcl"]);
    assert_eq!(out.status.code(), Some(1), "{}", s(&out.stdout));
    assert!(
        s(&out.stderr).contains("reads a .hcl file as a stack"),
        "{}",
        s(&out.stderr)
    );
    assert!(!t.path().join("reviewed.hcl").exists());
}
