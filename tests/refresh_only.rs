//! `plan -refresh-only` and `apply -refresh-only`: what changed outside pipeline (a replica
//! killed behind its back) is shown and nothing else, even when the stack was edited; applying
//! records it in the state and starts nothing; a normal plan then proposes the repair.

mod common;
use common::*;

fn stack(src: &std::path::Path, greeting: &str) -> String {
    format!(
        r#"file "note" {{
  path    = "out/note.txt"
  content = "{greeting}"
}}
service "web" {{
  source = "{}"
  run    = "./preview --port {{{{port}}}}"
  health = {{ path = "/health", interval = "100ms" }}
}}
"#,
        src.display()
    )
}

#[test]
fn a_killed_replica_is_shown_recorded_and_left_dead_then_repaired_by_a_normal_apply() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    t.write("s.hcl", &stack(&src, "hello"));
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let run = t.path().join(".pipeline/run/service.web");
    // Killed behind pipeline's back.
    let dir = t.kill_supervisor("service.web", "gen-1");
    // The stack is edited meanwhile: a refresh-only plan must not show that change.
    t.write("s.hcl", &stack(&src, "edited"));

    let out = t.run(&["plan", "-refresh-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    let plan = s(&out.stdout);
    assert!(
        plan.contains("Objects have changed outside of pipeline"),
        "{plan}"
    );
    assert!(plan.contains("# service.web is gone"), "{plan}");
    assert!(
        !plan.contains("file.note"),
        "the stack's edit is shown:\n{plan}"
    );
    assert!(!plan.contains("will be created"), "{plan}");
    assert!(!plan.contains("pipeline will perform"), "{plan}");
    assert!(plan.contains("refresh-only"), "{plan}");
    let out = t.run(&["plan", "-refresh-only", "-detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", s(&out.stderr));
    let json = t.ok(&["plan", "-refresh-only", "-json"]);
    assert!(json.contains(r#""type":"resource_drift""#), "{json}");
    assert!(!json.contains(r#""type":"planned_change""#), "{json}");

    // Without approval on a non-terminal: refused, nothing recorded.
    let serial = state(&t).serial;
    let out = t.run(&["apply", "-refresh-only"]);
    assert_eq!(out.status.code(), Some(1), "{}", s(&out.stdout));
    assert_eq!(state(&t).serial, serial);

    let before = t.marked();
    let gens_before: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let applied = t.ok(&["apply", "-refresh-only", "-auto-approve"]);
    assert!(applied.contains("# service.web is gone"), "{applied}");
    assert!(
        applied.contains("Refresh recorded in the state"),
        "{applied}"
    );
    // Recorded: the state no longer says the service runs; the file is as it was recorded.
    let st = state(&t);
    assert!(
        !st.resources.keys().any(|a| a.starts_with("service.web")),
        "{:?}",
        st.resources.keys()
    );
    assert!(st.resources.contains_key("file.note"));
    assert_eq!(
        std::fs::read_to_string(t.path().join("out/note.txt")).unwrap(),
        "hello",
        "the stack's edit was applied"
    );
    // Nothing was started: no new process, no new generation, the supervisor still dead.
    let after = t.marked();
    assert!(
        after.iter().all(|p| before.contains(p)),
        "new processes: before {before:?}, after {after:?}"
    );
    let gens_after: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(gens_before, gens_after);
    assert!(pipeline_supervise::status(&dir).is_none_or(|s| !s.supervisor_alive));
    // Nothing more drifted.
    let out = t.run(&["plan", "-refresh-only", "-detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stdout));

    // A normal plan proposes the repair (and the stack's edit).
    let plan = t.ok(&["plan"]);
    assert!(plan.contains("# service.web will be created"), "{plan}");
    assert!(
        plan.contains("# file.note will be updated in place"),
        "{plan}"
    );
    t.ok(&["apply", "-auto-approve"]);
    t.ok(&["destroy", "-auto-approve"]);
}

#[test]
fn refresh_only_with_destroy_or_without_refresh_is_refused() {
    let t = Scratch::new();
    t.write(
        "s.hcl",
        "file \"f\" {\n  path    = \"out/f.txt\"\n  content = \"x\"\n}\n",
    );
    for args in [
        vec!["plan", "s.hcl", "-refresh-only", "-refresh=false"],
        vec!["plan", "s.hcl", "-refresh-only", "-destroy"],
        vec!["destroy", "s.hcl", "-refresh-only", "-auto-approve"],
        vec![
            "deploy",
            "web",
            "--version",
            "v2",
            "-refresh-only",
            "-auto-approve",
        ],
    ] {
        let out = t.run(&args);
        let err = s(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("-refresh-only"), "{args:?}: {err}");
        assert!(err.contains("= help: "), "{args:?}: {err}");
    }
    assert!(!t.path().join("out/f.txt").exists());
}
