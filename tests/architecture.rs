//! ARCHITECTURE.md's dependency invariants (D1–D5), checked: which workspace crate may depend
//! on which, and that the binary neither matches provider kind names nor reads provider folders.
//! The provider-to-provider rule (D6) is checked in providers/tests/boundaries.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Each workspace package and the workspace packages it depends on (normal and build
/// dependencies; dev-dependencies are for tests and do not count).
fn workspace_deps() -> BTreeMap<String, BTreeSet<String>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = m["packages"].as_array().unwrap();
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .filter_map(|d| d["name"].as_str())
                .filter(|n| names.contains(*n))
                .map(str::to_string)
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

/// D1–D5: what each crate may depend on inside the workspace.
fn allowed(package: &str) -> Option<&'static [&'static str]> {
    Some(match package {
        // D1: pure crates: statistics, the state store, and the Ansible inventory.
        "pipeline-analysis" | "pipeline-state" | "pipeline-inventory" => &[],
        // D2: the supervisor is a leaf, so supervised processes carry nothing else.
        "pipeline-supervise" => &[],
        // D3: the engine knows providers only through its own trait.
        "pipeline-engine" => &["pipeline-state"],
        // D4: what providers share; never a provider itself.
        "pipeline-host" => &["pipeline-engine", "pipeline-supervise"],
        "pipeline-providers" => &[
            "pipeline-analysis",
            "pipeline-engine",
            "pipeline-host",
            "pipeline-state",
            "pipeline-supervise",
        ],
        // D5: operations use every library; nothing below them uses operations.
        "pipeline-ops" | "pipeline" => &[
            "pipeline-analysis",
            "pipeline-engine",
            "pipeline-host",
            "pipeline-ops",
            "pipeline-providers",
            "pipeline-state",
            "pipeline-supervise",
        ],
        _ => return None,
    })
}

#[test]
fn workspace_crates_depend_only_on_what_the_layering_allows() {
    let deps = workspace_deps();
    assert!(deps.len() >= 8, "every workspace crate is seen: {deps:?}");
    for (package, uses) in &deps {
        let ok = allowed(package).unwrap_or_else(|| {
            panic!("{package} is not in ARCHITECTURE.md's dependency invariants: add it there and here")
        });
        for u in uses {
            assert!(
                ok.contains(&u.as_str()),
                "{package} depends on {u}, which ARCHITECTURE.md's invariants do not allow"
            );
        }
    }
}

#[test]
fn the_layering_check_sees_a_forbidden_dependency() {
    // The check above would fail for the engine depending on a provider.
    assert!(!allowed("pipeline-engine")
        .unwrap()
        .contains(&"pipeline-providers"));
    assert!(!allowed("pipeline-host")
        .unwrap()
        .contains(&"pipeline-providers"));
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Lines of the binary's sources matching any of `patterns`, as "file:line: text".
fn binary_lines_with(patterns: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut hits = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if patterns.iter().any(|p| code.contains(p)) {
                hits.push(format!("{}:{}: {code}", f.display(), i + 1));
            }
        }
    }
    hits
}

/// D7: status, logs, flags and rollback ask the instance's provider (`describe`, `action`):
/// the binary matches no kind names and opens no provider folder.
#[test]
fn the_binary_matches_no_kind_names_and_reads_no_provider_folders() {
    let hits = binary_lines_with(&[
        "kind == \"",
        "\"service\" =>",
        "\"balancer\" =>",
        "\"flags\" =>",
        "join(\"run",
        "\"run/",
        "generation_dir",
        "replica_dir",
    ]);
    assert!(hits.is_empty(), "{}", hits.join("\n"));
}
