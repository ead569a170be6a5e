//! Modules for `pipeline deploy NAME`: a directory `modules/NAME/` holding an ordinary stack
//! (its `.hcl` files), found in the current directory first, then among the modules shipped
//! with the binary. Each module deploys into a working directory of its own, so a second deploy
//! of the same module compares against what the first one did (no changes, nothing restarted)
//! and two modules deployed from one directory never see each other's resources.

use crate::workspace::Workspace;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// A module found on the search path.
#[derive(Debug, Clone)]
pub struct Module {
    /// The name it was asked for by (a path's last component when given as a path).
    pub name: String,
    /// Its directory (canonical): the stack `pipeline deploy` plans.
    pub dir: PathBuf,
}

/// Where modules are looked for, in order: `./modules`, then the modules that come with the
/// binary: `PREFIX/share/pipeline/modules` for a binary installed as `PREFIX/bin/pipeline`, or
/// the source tree's `modules/` for a binary built there (`REPO/target/PROFILE/pipeline`, a
/// directory with a Cargo.toml and a modules/ directory). Each directory once, existing or not
/// for the first (it is where a user's own modules go).
pub fn search_path(cwd: &Path, exe: Option<&Path>) -> Vec<PathBuf> {
    let mut out = vec![cwd.join("modules")];
    if let Some(bin) = exe.and_then(Path::parent) {
        let mut shipped = Vec::new();
        if let Some(prefix) = bin.parent() {
            shipped.push(prefix.join("share/pipeline/modules"));
        }
        // target/debug/pipeline, target/release/pipeline, target/debug/deps/… (tests).
        for up in bin.ancestors().skip(1).take(3) {
            if up.join("Cargo.toml").is_file() {
                shipped.push(up.join("modules"));
                break;
            }
        }
        for d in shipped {
            if d.is_dir() && !out.iter().any(|o| same_dir(o, &d)) {
                out.push(d);
            }
        }
    }
    out
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Whether `dir` holds a stack: at least one `.hcl` file directly in it.
fn is_module(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "hcl") && e.path().is_file())
    })
}

/// The modules in `dir` (sorted), none when it does not exist.
pub fn list(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| is_module(&e.path()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

/// Whether `name` is given as a path to a module directory (`./modules/web`, `/srv/m/web`)
/// rather than as a name to look up.
pub fn is_path(name: &str) -> bool {
    name.contains('/')
}

/// The module `name` on `path` (the first directory that has it), or `name` itself when it is
/// a path. `Ok(None)`: no such module anywhere on the path.
pub fn find(name: &str, path: &[PathBuf]) -> Result<Option<Module>> {
    if is_path(name) {
        let dir = PathBuf::from(name);
        if !dir.is_dir() {
            bail!(
                "no module directory {name}\n  = help: give a directory that holds the module's .hcl files, or a module's name"
            );
        }
        if !is_module(&dir) {
            bail!(
                "{name} holds no .hcl file, so it is no module\n  = help: a module is a directory with a stack's .hcl files (e.g. main.hcl)"
            );
        }
        let dir = dir.canonicalize()?;
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("module")
            .to_string();
        return Ok(Some(Module { name, dir }));
    }
    if name.is_empty() || name == "." || name == ".." || name.starts_with('-') {
        bail!("{name:?} is no module name\n  = help: name a directory under modules/, e.g. `pipeline deploy iTrust -i inventory.ini`");
    }
    for d in path {
        let dir = d.join(name);
        if dir.is_dir() && is_module(&dir) {
            return Ok(Some(Module {
                name: name.to_string(),
                dir: dir.canonicalize()?,
            }));
        }
    }
    Ok(None)
}

/// The error for a name no directory on `path` has: what there is, and where it looked.
pub fn unknown(name: &str, path: &[PathBuf], cwd: &Path) -> anyhow::Error {
    let mut looked = Vec::new();
    let mut found = Vec::new();
    for d in path {
        let shown = d
            .strip_prefix(cwd)
            .map(|r| format!("./{}", r.display()))
            .unwrap_or_else(|_| d.display().to_string());
        let here = list(d);
        looked.push(if d.is_dir() {
            format!("{shown}/ ({})", plural(here.len()))
        } else {
            format!("{shown}/ (not there)")
        });
        for m in here {
            if !found.contains(&m) {
                found.push(m);
            }
        }
    }
    let there = if found.is_empty() {
        String::new()
    } else {
        format!("\n  = help: modules there: {}", found.join(", "))
    };
    anyhow::anyhow!(
        "no module {name:?}\n  = note: looked in {}{there}\n  = help: a module is a directory modules/NAME/ holding a stack's .hcl files (provider, hosts, resources, outputs); a NAME with a `/` is taken as the module's directory\n  = help: to deploy another revision of a service instead: `pipeline deploy SERVICE --version REF`",
        looked.join(", ")
    )
}

fn plural(n: usize) -> String {
    match n {
        1 => "1 module".into(),
        n => format!("{n} modules"),
    }
}

/// The working directory a module deploys into: the one given (`--state-dir`, `$PIPELINE_DIR`),
/// used as it is, else `./.pipeline/modules/NAME`.
pub fn workspace_dir(given: Option<PathBuf>, module: &Module, cwd: &Path) -> PathBuf {
    match given.or_else(|| std::env::var_os("PIPELINE_DIR").map(PathBuf::from)) {
        Some(d) => d,
        None => cwd.join(".pipeline/modules").join(&module.name),
    }
}

/// Refuse to deploy `module` into a working directory whose state belongs to another stack:
/// its plan would destroy everything that stack made.
pub fn check_workspace(ws: &Workspace, module: &Module) -> Result<()> {
    let st = ws.state()?;
    if st.resources.is_empty() {
        return Ok(());
    }
    let used = std::fs::read_to_string(ws.dir.join("stack"))
        .ok()
        .map(|s| PathBuf::from(s.trim()));
    let theirs = match &used {
        Some(p) if same_dir(p, &module.dir) => return Ok(()),
        Some(p) => p.display().to_string(),
        None => "a stack it does not name".to_string(),
    };
    bail!(
        "the state in {} holds {} resources of {theirs}, not of the module {} ({}): deploying the module there would destroy them\n  = help: deploy the module into a state directory of its own (drop --state-dir / PIPELINE_DIR: the default is ./.pipeline/modules/{}), or destroy what is there first",
        ws.dir.display(),
        st.resources.len(),
        module.name,
        module.dir.display(),
        module.name
    )
}

/// The block `service.NAME` (a block of replicas, as `deploy SERVICE --version` takes) that
/// `stack` or the state of `ws` has, if any: for telling a module from a service.
pub fn service_named(ws: &Workspace, name: &str, stack: Option<&Path>) -> Option<String> {
    let replicas = |kind: &str, provider: &str| {
        ws.registry
            .schema(kind, Some(provider))
            .is_some_and(|(_, k)| k.instances_attr.is_some())
    };
    let matches =
        |block: &str| block == name || block.split_once('.').is_some_and(|(_, n)| n == name);
    if let Ok(st) = ws.state() {
        for (addr, r) in &st.resources {
            let block = addr.split('[').next().unwrap_or(addr);
            if replicas(&r.kind, &r.provider) && matches(block) {
                return Some(block.to_string());
            }
        }
    }
    let stack = stack?;
    let (config, _) = ws.load(stack).ok()?;
    config.modules[0]
        .resources
        .iter()
        .find(|(addr, r)| replicas(&r.kind, &r.provider) && matches(addr))
        .map(|(addr, _)| addr.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_directory_comes_first_and_a_source_tree_s_modules_after() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        std::fs::create_dir_all(repo.join("target/debug")).unwrap();
        std::fs::create_dir_all(repo.join("modules/app")).unwrap();
        std::fs::write(repo.join("modules/app/main.hcl"), "").unwrap();
        std::fs::write(repo.join("Cargo.toml"), "").unwrap();
        let cwd = t.path().join("work");
        std::fs::create_dir_all(cwd.join("modules/app")).unwrap();
        std::fs::write(cwd.join("modules/app/main.hcl"), "").unwrap();
        std::fs::create_dir_all(cwd.join("modules/notes")).unwrap();
        std::fs::write(cwd.join("modules/notes/README.md"), "").unwrap();
        let exe = repo.join("target/debug/pipeline");
        let path = search_path(&cwd, Some(&exe));
        assert_eq!(path, vec![cwd.join("modules"), repo.join("modules")]);
        let m = find("app", &path).unwrap().unwrap();
        assert_eq!(m.dir, cwd.join("modules/app").canonicalize().unwrap());
        // A directory without .hcl files is no module.
        assert!(find("notes", &path).unwrap().is_none());
        assert_eq!(list(&cwd.join("modules")), ["app"]);
        std::fs::remove_dir_all(cwd.join("modules/app")).unwrap();
        let m = find("app", &path).unwrap().unwrap();
        assert_eq!(m.dir, repo.join("modules/app").canonicalize().unwrap());
        // An installed binary: PREFIX/share/pipeline/modules.
        let prefix = t.path().join("usr");
        std::fs::create_dir_all(prefix.join("bin")).unwrap();
        std::fs::create_dir_all(prefix.join("share/pipeline/modules")).unwrap();
        let path = search_path(&cwd, Some(&prefix.join("bin/pipeline")));
        assert_eq!(
            path,
            vec![cwd.join("modules"), prefix.join("share/pipeline/modules")]
        );
    }

    #[test]
    fn names_that_are_no_module_names_are_refused() {
        for bad in ["", ".", "..", "-x"] {
            assert!(find(bad, &[]).is_err(), "{bad:?}");
        }
    }
}
