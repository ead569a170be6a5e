//! Architecture checks over the providers' source: no provider module imports another (they
//! share through `pipeline-host` and cooperate through the engine), and what they share exists
//! once: the access-log parser, the log tail and the /proc sampler.

use std::path::{Path, PathBuf};

const PROVIDERS: [&str; 5] = ["local", "nginx", "redis", "monitor", "ssh"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Code lines (comments dropped) of every .rs file under `dir`.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let code: String = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            (p, code)
        })
        .collect()
}

/// Paths by which a module under `providers/src/<me>/` could name provider `other`.
fn imports_of(code: &str, other: &str) -> Vec<String> {
    let normalized: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut found = Vec::new();
    for pat in [
        format!("crate::{other}"),
        format!("super::super::{other}"),
        format!("pipeline_providers::{other}"),
        format!("crate::{{{other}"),
        format!("crate::{{ {other}"),
    ] {
        if normalized.contains(&pat) {
            found.push(pat);
        }
    }
    // `use crate::{a, nginx}` and the like.
    for (i, _) in normalized.match_indices("crate::{") {
        let group = &normalized[i..normalized[i..]
            .find('}')
            .map_or(normalized.len(), |j| i + j)];
        if group
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .any(|w| w == other)
        {
            found.push(group.to_string());
        }
    }
    found
}

#[test]
fn no_provider_imports_another() {
    let mut bad = Vec::new();
    for me in PROVIDERS {
        for (path, code) in sources(&root().join("src").join(me)) {
            for other in PROVIDERS.iter().filter(|o| **o != me) {
                for how in imports_of(&code, other) {
                    bad.push(format!("{}: {how}", path.display()));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "a provider imports another (share through pipeline-host, cooperate through the engine):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_import_check_sees_imports() {
    assert_eq!(
        imports_of("use crate::nginx::canary::shift;", "nginx").len(),
        1
    );
    assert!(imports_of("use crate::{blocking, quote};", "nginx").is_empty());
    assert!(!imports_of("use crate::{\n    blocking,\n    local::x,\n};", "local").is_empty());
    assert!(!imports_of("super::super::redis::store", "redis").is_empty());
    assert!(imports_of("use pipeline_host::nginx::check;", "nginx").is_empty());
}

/// Files (under providers/, the shared crate and the binary's src/) holding a definition.
fn defining(pattern: &str) -> Vec<String> {
    let repo = root().join("..");
    let mut hits = Vec::new();
    for dir in [
        "providers/src",
        "providers/host/src",
        "providers/supervise/src",
        "src",
        "ops/src",
    ] {
        for (path, code) in sources(&repo.join(dir)) {
            if code.contains(pattern) {
                hits.push(
                    path.strip_prefix(&repo)
                        .unwrap_or(&path)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    hits
}

#[test]
fn shared_code_exists_once() {
    // The access-log format is split into upstream attempts in one place.
    assert_eq!(
        defining(r#".filter(|t| !t.is_empty() && *t != ":")"#),
        vec!["providers/host/src/access_log.rs"]
    );
    // One tail: the only reader that seeks into a log file it follows.
    let seekers: Vec<String> = defining("SeekFrom::Start")
        .into_iter()
        .filter(|f| !f.starts_with("providers/supervise/"))
        .collect();
    assert_eq!(seekers, vec!["providers/host/src/tail.rs"]);
    // One /proc sampler: the only code that reads a process's CPU ticks from `/proc/PID/stat`.
    let stat_readers: Vec<String> = defining(".get(11)")
        .into_iter()
        .chain(defining("num(11)"))
        .collect();
    assert!(
        stat_readers
            .iter()
            .all(|f| f == "providers/host/src/procfs.rs"),
        "{stat_readers:?}"
    );
    assert!(stat_readers.contains(&"providers/host/src/procfs.rs".to_string()));
}

/// What would tell that code knows a balancer's files: nginx's configuration and log paths, the
/// canary split's own files, the shared code that once wrote them.
const BALANCER_INSIDES: [&str; 9] = [
    "nginx_canary",
    "pipeline_host::nginx",
    "nginx.conf",
    "conf/",
    "logs/access",
    "access.log",
    "canary.owner",
    "canary.lock",
    "balancer.",
];

/// The patterns of `BALANCER_INSIDES` in `code`.
fn balancer_insides(code: &str) -> Vec<&'static str> {
    BALANCER_INSIDES
        .iter()
        .copied()
        .filter(|p| code.contains(p))
        .collect()
}

#[test]
fn the_service_providers_and_their_canary_know_no_balancer_files() {
    // The progressive canary (and the ssh service's blue-green switch) ask the balancer through
    // the engine (`Step::peers`): the actions `canary_weights` / `canary_clear` and the access
    // log its `describe` names.
    let mut bad = Vec::new();
    let progressive = root().join("src/progressive.rs");
    let shared = vec![(
        progressive.clone(),
        std::fs::read_to_string(&progressive).unwrap(),
    )];
    let code = sources(&root().join("src/local"))
        .into_iter()
        .chain(sources(&root().join("src/ssh")))
        .chain(shared);
    for (path, code) in code {
        for p in balancer_insides(&code) {
            bad.push(format!("{}: {p}", path.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "the local provider reaches into a balancer's files (ask it through Step::peers):\n{}",
        bad.join("\n")
    );
    // And the check sees what it looks for (the nginx provider does know its own files).
    let nginx: String = sources(&root().join("src/nginx"))
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert!(balancer_insides(&nginx).contains(&"nginx.conf"));
    assert!(balancer_insides(&nginx).contains(&"canary.owner"));
    assert_eq!(
        balancer_insides("use pipeline_host::nginx_canary::shift;"),
        vec!["nginx_canary", "pipeline_host::nginx"]
    );
}
