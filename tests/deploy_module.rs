//! `pipeline deploy NAME -i inventory.ini` through the real binary: a module (a directory
//! `modules/NAME/` holding an ordinary stack) planned, approved, applied in a state directory
//! of its own, its URL printed and answering; deployed again it changes and restarts nothing.
//! An unknown name lists the modules and where they were looked for; a bad `-i` is named
//! before anything is written; `deploy SERVICE --version REF` keeps its meaning, and a name that
//! is both is refused with how to pick. No lab: the module's service runs here (local
//! provider) and its inventory hosts say `ansible_connection=local` (nothing connects).

mod common;
use common::*;
use std::path::Path;

const HOSTS: &str = "\
[web]
web01 ansible_host=10.0.0.11
web02 ansible_host=10.0.0.12

[all:vars]
# Not reachable: applying these host records must not connect.
ansible_connection=local
";

/// A module as the real ones are written: an ssh provider block, hosts by inventory group,
/// a service, outputs (`url`: where it answers). The service runs on this machine.
const HELLO: &str = r#"variable "greeting" { default = "hello" }

provider "ssh" {}

host "web" {
  provider = ssh
  group    = "web"
}

host "here" {}

service "hello" {
  on     = host.here
  source = "app"
  run    = "exec python3 -m http.server {{port}} --bind 127.0.0.1"
  env    = { GREETING = var.greeting }
  health = { path = "/index.html", interval = "100ms" }
}

output "url" { value = service.hello.url }
output "web02" { value = host.web["web02"].address }
output "greeting" { value = var.greeting }
"#;

fn hello_module(t: &Scratch) {
    t.write("hosts.ini", HOSTS);
    t.write("modules/hello/main.hcl", HELLO);
    t.write("modules/hello/app/index.html", "hello from the module\n");
}

fn err(out: &std::process::Output) -> String {
    s(&out.stderr)
}

/// The URL after "NAME answers at ".
fn answers_at(stdout: &str, name: &str) -> String {
    let prefix = format!("{name} answers at ");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}URL` line: {stdout}"))
        .trim()
        .to_string()
}

fn module_state(t: &Scratch, name: &str) -> pipeline_state::State {
    pipeline_state::StateStore::load(&t.path().join(".pipeline/modules").join(name))
        .expect("state parses")
}

#[test]
fn a_module_deploys_from_nothing_answers_at_its_url_and_again_changes_nothing() {
    let t = Scratch::new();
    hello_module(&t);
    let args = ["deploy", "hello", "-i", "hosts.ini", "-var", "greeting=hi"];

    // Not approved (no terminal to ask on): the plan is shown, nothing is applied.
    let out = t
        .cmd(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", err(&out));
    let so = s(&out.stdout);
    assert!(
        so.contains("Plan: 4 to add, 0 to change, 0 to destroy."),
        "{so}"
    );
    assert!(err(&out).contains("-auto-approve"), "{}", err(&out));
    assert!(module_state(&t, "hello").resources.is_empty());
    assert!(t.processes().is_empty());

    // From nothing: the module's header, its plan with the inventory's hosts, its outputs.
    let so = t.ok(&[&args[..], &["-auto-approve"]].concat());
    eprintln!("first deploy:\n{so}");
    assert!(so.contains("Module hello: ./modules/hello"), "{so}");
    assert!(so.contains("State: .pipeline/modules/hello"), "{so}");
    assert!(
        so.contains("Plan: 4 to add, 0 to change, 0 to destroy."),
        "{so}"
    );
    assert!(
        so.contains(r#"host.web["web01"]"#),
        "the inventory's hosts: {so}"
    );
    assert!(so.contains("10.0.0.11"), "{so}");
    assert!(
        so.contains("Apply complete! 4 added, 0 changed, 0 destroyed."),
        "{so}"
    );
    assert!(
        so.contains("greeting = \"hi\""),
        "-var reaches the module: {so}"
    );
    assert!(so.contains("web02 = \"10.0.0.12\""), "{so}");
    let url = answers_at(&so, "hello");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (code, body) = http("GET", &format!("{url}/index.html"), "").expect("it answers");
    assert_eq!((code, body.as_str()), (200, "hello from the module\n"));
    let pids = t.processes();
    assert!(!pids.is_empty(), "the replica and its supervisor run");

    // Its state is its own: nothing in ./.pipeline but the modules' directories.
    let st = module_state(&t, "hello");
    assert_eq!(st.resources.len(), 4, "{:?}", st.resources.keys());
    let base: Vec<String> = std::fs::read_dir(t.path().join(".pipeline"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(base, ["modules"]);
    let serial = st.serial;

    // Again: no changes, the same URL, the same process, the state untouched.
    let so = t.ok(&[&args[..], &["-auto-approve"]].concat());
    eprintln!("second deploy:\n{so}");
    assert!(so.contains("No changes."), "{so}");
    assert!(!so.contains("Apply complete"), "{so}");
    assert_eq!(answers_at(&so, "hello"), url);
    assert_eq!(t.processes(), pids, "nothing restarted");
    assert_eq!(module_state(&t, "hello").serial, serial);

    // The note's follow-ups work on that state directory.
    let sd = ".pipeline/modules/hello";
    assert_eq!(t.ok(&["--state-dir", sd, "output", "url"]).trim(), url);
    let so = t.ok(&[
        "--state-dir",
        sd,
        "plan",
        "-i",
        "hosts.ini",
        "-var",
        "greeting=hi",
    ]);
    assert!(
        so.contains("No changes."),
        "the module is remembered there: {so}"
    );

    // Deploying it from a path is the same module, the same state.
    let so = t.ok(&[
        "deploy",
        "./modules/hello",
        "-i",
        "hosts.ini",
        "-var",
        "greeting=hi",
        "-auto-approve",
    ]);
    assert!(so.contains("No changes."), "{so}");
    assert_eq!(t.processes(), pids);

    let so = t.ok(&[
        "--state-dir",
        sd,
        "destroy",
        "-auto-approve",
        "-i",
        "hosts.ini",
    ]);
    assert!(so.contains("4 destroyed"), "{so}");
    assert!(t.processes().is_empty());
    assert!(http("GET", &format!("{url}/index.html"), "").is_none());
}

#[test]
fn an_unknown_module_lists_the_modules_there_and_where_it_looked() {
    let t = Scratch::new();
    hello_module(&t);
    t.write("modules/other/main.hcl", "host \"here\" {}\n");
    t.write("modules/notes/README.md", "no stack here\n");
    let out = t.run(&["deploy", "helo", "-i", "hosts.ini", "-auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let e = err(&out);
    eprintln!("{e}");
    assert!(e.contains("no module \"helo\""), "{e}");
    assert!(e.contains("looked in ./modules/ (2 modules)"), "{e}");
    assert!(e.contains("modules there: hello, other"), "{e}");
    assert!(
        !e.contains("notes"),
        "a directory without .hcl is no module: {e}"
    );
    assert!(!t.path().join(".pipeline").exists(), "nothing written");

    // No modules directory at all: it says so, and how to make one.
    let t = Scratch::new();
    let out = t.run(&["deploy", "no-such-module"]);
    assert_eq!(out.status.code(), Some(1));
    let e = err(&out);
    assert!(e.contains("no module \"no-such-module\""), "{e}");
    assert!(e.contains("looked in ./modules/ (not there)"), "{e}");
    assert!(e.contains("a module is a directory modules/NAME/"), "{e}");
    assert!(!t.path().join(".pipeline").exists());
}

#[test]
fn bad_inventories_variables_and_stacks_are_errors_before_anything_is_written() {
    let t = Scratch::new();
    hello_module(&t);
    for (args, said) in [
        (
            &["deploy", "hello", "-i", "missing.ini", "-auto-approve"][..],
            &[
                "cannot read the inventory missing.ini (given with -i)",
                "No such file",
            ][..],
        ),
        (
            &["deploy", "hello", "-i", "modules", "-auto-approve"],
            &["the inventory modules (given with -i) is not a file"],
        ),
        (
            &[
                "deploy",
                "hello",
                "-i",
                "hosts.ini",
                "-var",
                "greting=x",
                "-auto-approve",
            ],
            &["no variable \"greting\"", "did you mean `greeting`"],
        ),
        (
            &[
                "deploy",
                "hello",
                "-i",
                "hosts.ini",
                "other.hcl",
                "-auto-approve",
            ],
            &["takes no stack file (other.hcl)"],
        ),
    ] {
        let out = t.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let e = err(&out);
        for s in said {
            assert!(e.contains(s), "{args:?}: {s}: {e}");
        }
        assert!(module_state(&t, "hello").resources.is_empty(), "{args:?}");
        assert!(t.processes().is_empty(), "{args:?}");
    }
    // A module that does not load: its error, and no state directory made for it.
    t.write("modules/broken/main.hcl", "service \"x\" {\n");
    let out = t.run(&["deploy", "broken", "-auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err(&out).contains("modules/broken/main.hcl"),
        "{}",
        err(&out)
    );
    assert!(!t.path().join(".pipeline/modules/broken").exists());
    // A state directory that holds another stack's resources is not taken over.
    t.write("s.hcl", "host \"mine\" {}\n");
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let out = t.run(&[
        "--state-dir",
        ".pipeline",
        "deploy",
        "hello",
        "-i",
        "hosts.ini",
        "-auto-approve",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let e = err(&out);
    assert!(e.contains("would destroy them"), "{e}");
    assert!(e.contains("s.hcl"), "{e}");
    assert_eq!(
        state(&t).resources.keys().collect::<Vec<_>>(),
        ["host.mine"],
        "untouched"
    );
}

/// A git repository whose tags v1 and v2 serve their own index.html.
fn versions_repo(t: &Scratch) -> std::path::PathBuf {
    let repo = t.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    for v in ["v1", "v2"] {
        std::fs::write(repo.join("index.html"), v).unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-qm", v]);
        git(&repo, &["tag", v]);
    }
    repo
}

fn service_stack(repo: &Path) -> String {
    format!(
        r#"variable "rev" {{ default = "v1" }}

host "app" {{}}

service "web" {{
  on       = host.app
  source   = "{}"
  revision = var.rev
  run      = "exec python3 -m http.server {{{{port}}}} --bind 127.0.0.1"
  health   = {{ path = "/index.html", interval = "100ms" }}
}}

output "url" {{ value = service.web.url }}
"#,
        repo.display()
    )
}

#[test]
fn deploy_with_version_is_a_service_and_a_name_that_is_both_is_refused_saying_how_to_pick() {
    let t = Scratch::new();
    hello_module(&t);
    let repo = versions_repo(&t);
    t.write("s.hcl", &service_stack(&repo));
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let url: String = serde_json::from_str(&t.ok(&["output", "-json", "url"])).unwrap();
    let page = |u: &str| http("GET", &format!("{u}/index.html"), "").map(|(_, b)| b);
    assert_eq!(page(&url).as_deref(), Some("v1"));

    // No module `web`: without --version it is said to need one.
    let out = t.run(&["deploy", "web", "-auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let e = err(&out);
    assert!(e.contains("service.web is a service here"), "{e}");
    assert!(e.contains("pipeline deploy web --version REF"), "{e}");

    // With --version: the service's new revision, as before.
    let so = t.ok(&["deploy", "web", "--version", "v2", "-auto-approve"]);
    assert!(so.contains("0 added, 1 changed, 0 destroyed"), "{so}");
    let url: String = serde_json::from_str(&t.ok(&["output", "-json", "url"])).unwrap();
    assert_eq!(page(&url).as_deref(), Some("v2"));

    // A module `web` too: without --version the name is both, and refused.
    t.write(
        "modules/web/main.hcl",
        "host \"here\" {}\n\noutput \"url\" { value = \"http://${host.here.address}:1\" }\n",
    );
    let out = t.run(&["deploy", "web", "-auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let e = err(&out);
    eprintln!("{e}");
    assert!(e.contains("web is both a module"), "{e}");
    assert!(e.contains("service.web of"), "{e}");
    assert!(e.contains("`pipeline deploy web --version REF`"), "{e}");
    assert!(
        e.contains("`pipeline deploy ./modules/web -i inventory.ini`"),
        "{e}"
    );
    assert!(!t.path().join(".pipeline/modules/web").exists());
    // --version still means the service.
    let so = t.ok(&["deploy", "web", "--version", "v2", "-auto-approve"]);
    assert!(so.contains("No changes."), "{so}");
    // The module's path means the module.
    let so = t.ok(&["deploy", "./modules/web", "-auto-approve"]);
    assert_eq!(answers_at(&so, "web"), "http://127.0.0.1:1");
    assert!(module_state(&t, "web").resources.contains_key("host.here"));
    assert_eq!(
        page(&url).as_deref(),
        Some("v2"),
        "the service is untouched"
    );

    // A module is no service: --version on it says how to deploy it.
    let out = t.run(&["deploy", "hello", "--version", "v2", "-auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let e = err(&out);
    assert!(e.contains("hello is a module"), "{e}");
    assert!(e.contains("a module deploys without --version"), "{e}");
    assert!(!t.path().join(".pipeline/modules/hello").exists());
}
