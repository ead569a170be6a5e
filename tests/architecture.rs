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
        // D9: the test lab is test support: it depends on no workspace crate.
        "pipeline-lab" => &[],
        // D10: the SSH transport and the ansible runner reach hosts and nothing else.
        "pipeline-ssh" => &["pipeline-inventory"],
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
            "pipeline-inventory",
            "pipeline-ssh",
            "pipeline-state",
            "pipeline-supervise",
        ],
        // D5: operations use every library; nothing below them uses operations.
        "pipeline-ops" | "pipeline" => &[
            "pipeline-analysis",
            "pipeline-engine",
            "pipeline-host",
            "pipeline-inventory",
            "pipeline-ops",
            "pipeline-providers",
            "pipeline-ssh",
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

/// Code of `text` as the checks below read it: comments dropped, the unit tests at the end of
/// the file (`#[cfg(test)]`, which may use kind names to fake a provider) left out, and
/// whitespace collapsed so a pattern cannot hide behind a line break.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// How `code` decides by a kind name from `kinds`: a comparison or match arm with the name
/// (`kind == "service"`, `"balancer" =>`), or an address prefix (`starts_with("service.`).
fn kind_matches(code: &str, kinds: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for k in kinds {
        for pat in [
            format!("== \"{k}\""),
            format!("!= \"{k}\""),
            format!("\"{k}\" =>"),
            format!("\"{k}\" |"),
            format!("| \"{k}\""),
            format!("(\"{k}.\")"),
            format!("(\"{k}."),
            format!("\"{k}.{{"),
        ] {
            if code.contains(&pat) {
                found.push(pat);
            }
        }
    }
    found
}

/// Provider modules `code` names (`pipeline_providers::local::…`, `use pipeline_providers::{nginx,
/// …}`), and the whole registry taken from inside the providers crate (`crate::registry`).
fn provider_paths(code: &str) -> Vec<String> {
    const MODULES: [&str; 5] = ["local", "nginx", "redis", "monitor", "ssh"];
    let mut found = Vec::new();
    for m in MODULES {
        let pat = format!("pipeline_providers::{m}");
        if code.contains(&pat) {
            found.push(pat);
        }
    }
    for (i, _) in code.match_indices("pipeline_providers::{") {
        let group = &code[i..code[i..].find('}').map_or(code.len(), |j| i + j)];
        if group
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .any(|w| MODULES.contains(&w))
        {
            found.push(group.to_string());
        }
    }
    if code.contains("crate::registry") {
        found.push("crate::registry".into());
    }
    found
}

/// D8 (issue 9 item 4): the monitor and the operations learn what runs from
/// `Provider::describe`: they decide by no other provider's kind name and name no provider
/// module (the binary hands them the registry; only src/main.rs's hidden daemon entry points
/// and `pipeline_providers::registry()` name the providers).
#[test]
fn the_monitor_and_ops_match_no_kind_names_and_name_no_provider_module() {
    let registry = pipeline_providers::registry();
    let kinds_not_of = |provider: &str| -> Vec<String> {
        registry
            .kind_names()
            .into_iter()
            .filter(|k| !registry.providers_of(k).contains(&provider))
            .map(str::to_string)
            .collect()
    };
    let mut checked = 0;
    let mut bad = Vec::new();
    for (dir, own) in [
        ("providers/src/monitor", Some("monitor")),
        ("ops/src", None),
    ] {
        let kinds = own.map_or_else(
            || {
                registry
                    .kind_names()
                    .into_iter()
                    .map(str::to_string)
                    .collect()
            },
            kinds_not_of,
        );
        let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
        assert!(kinds.contains(&"service") && kinds.contains(&"balancer"));
        let mut files = Vec::new();
        rust_files(&root().join(dir), &mut files);
        for f in files {
            let code = code_of(&std::fs::read_to_string(&f).unwrap());
            checked += 1;
            for how in kind_matches(&code, &kinds)
                .into_iter()
                .chain(provider_paths(&code))
            {
                bad.push(format!("{}: {how}", f.display()));
            }
        }
    }
    assert!(checked >= 8, "the sources were found ({checked} files)");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_describe_check_sees_kind_matches_and_provider_paths() {
    let kinds = ["service", "balancer", "flags"];
    // What the monitor and the canary did before they asked `describe`.
    for bad in [
        "match r.kind.as_str() {\n    \"service\" => {",
        ".filter(|c| c.kind == \"service\" && c.after.is_some())",
        "let i = if addr.starts_with(\"service.baseline\") { 0 }",
        "Some(w) => w.trim_start_matches(\"service.\").to_string(),",
        "if r.kind != \"balancer\" {",
    ] {
        assert!(!kind_matches(&code_of(bad), &kinds).is_empty(), "{bad}");
    }
    for bad in [
        "dirs[i].push(pipeline_providers::local::generation_dir(dir, addr, g));",
        "use pipeline_providers::{canary, nginx};",
        "registry: crate::registry(),",
    ] {
        assert!(!provider_paths(&code_of(bad)).is_empty(), "{bad}");
    }
    // Labels and HCL the canary writes are not decisions; the registry and shared modules are
    // allowed; comments and unit tests are not code.
    for ok in [
        "&endpoints(&st.flags, \"flags\"),",
        "format!(\"service \\\"{arm}\\\" {{\")",
        "let registry = pipeline_providers::registry();",
        "use pipeline_providers::canary::{CanarySpec, LogTail};",
        "// kind == \"service\" was matched here",
        "fn f() {}\n#[cfg(test)]\nmod tests { fn t() { if k == \"service\" {} } }",
    ] {
        let code = code_of(ok);
        assert!(kind_matches(&code, &kinds).is_empty(), "{ok}");
        assert!(provider_paths(&code).is_empty(), "{ok}");
    }
}
