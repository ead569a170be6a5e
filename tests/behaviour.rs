//! Plan and apply behaviour through the real binary: failure isolation and the final report,
//! approval, sensitive values, drift, modules, -target, -replace, and Ctrl-C.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn a_failure_stops_only_its_dependents_and_the_report_says_what_happened() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    t.write(
        "s.hcl",
        &format!(
            r#"service "broken" {{
  source        = "{src}"
  run           = "echo 'cannot start: missing config' >&2; exit 3"
  restart       = false
  start_timeout = "5s"
}}

file "needs_broken" {{
  path    = "out/needs.txt"
  content = service.broken.url
}}

file "after_that" {{
  path    = "out/after.txt"
  content = file.needs_broken.sha256
}}

file "independent" {{
  path    = "out/independent.txt"
  content = "fine"
}}
"#,
            src = src.display()
        ),
    );
    let out = t.run(&["apply", "-auto-approve", "s.hcl"]);
    assert_eq!(out.status.code(), Some(1));
    let text = s(&out.stdout);
    assert!(text.contains("Apply failed."), "{text}");
    let succeeded = text
        .split("Succeeded:")
        .nth(1)
        .unwrap()
        .split("Failed:")
        .next()
        .unwrap();
    assert!(succeeded.contains("file.independent (created)"), "{text}");
    let failed = text
        .split("Failed:")
        .nth(1)
        .unwrap()
        .split("Skipped:")
        .next()
        .unwrap();
    assert!(
        failed.contains("service.broken") && failed.contains("cannot start: missing config"),
        "the error with the log tail: {text}"
    );
    let skipped = text.split("Skipped:").nth(1).unwrap();
    assert!(
        skipped.contains("file.needs_broken: depends on service.broken"),
        "{text}"
    );
    assert!(
        skipped.contains("file.after_that: depends on file.needs_broken"),
        "{text}"
    );
    assert!(t.path().join("out/independent.txt").exists());
    assert!(!t.path().join("out/needs.txt").exists());
    // Recorded: the independent file ready, the failed service tainted (replaced next time).
    let st = state(&t);
    assert_eq!(
        st.resources["file.independent"].status,
        pipeline_state::Status::Ready
    );
    assert_eq!(
        st.resources["service.broken"].status,
        pipeline_state::Status::Tainted
    );
    assert!(!st.resources.contains_key("file.needs_broken"));
    let plan = t.ok(&["plan"]);
    assert!(
        plan.contains("# service.broken must be replaced") && plan.contains("tainted"),
        "{plan}"
    );
    t.ok(&["destroy", "-auto-approve"]);
    assert!(t.processes().is_empty());
}

#[test]
fn apply_without_a_terminal_asks_for_auto_approve_and_changes_nothing() {
    let t = Scratch::new();
    t.write(
        "s.hcl",
        "file \"f\" {\n  path    = \"out/f.txt\"\n  content = \"x\"\n}\n",
    );
    let out = t
        .cmd(&["apply", "s.hcl"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        s(&out.stderr).contains("-auto-approve"),
        "{}",
        s(&out.stderr)
    );
    assert!(!t.path().join("out/f.txt").exists());
    assert!(state(&t).resources.is_empty());
}

#[test]
fn sensitive_values_never_show_and_state_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let t = Scratch::new();
    t.write(
        "s.hcl",
        r#"variable "password" {
  type      = string
  sensitive = true
}
locals {
  dsn = "postgres://app:${var.password}@db/app"
}
file "config" {
  path    = "out/app.env"
  content = "DSN=${local.dsn}\n"
  mode    = "0600"
}
output "dsn" {
  value     = local.dsn
  sensitive = true
}
"#,
    );
    let secret = "hunter2-very-secret";
    let plan = t
        .cmd(&["plan", "s.hcl", "-var", &format!("password={secret}")])
        .output()
        .unwrap();
    let json = t
        .cmd(&[
            "plan",
            "s.hcl",
            "-json",
            "-var",
            &format!("password={secret}"),
        ])
        .output()
        .unwrap();
    let apply = t
        .cmd(&[
            "apply",
            "-auto-approve",
            "s.hcl",
            "-var",
            &format!("password={secret}"),
        ])
        .output()
        .unwrap();
    assert!(apply.status.success(), "{}", s(&apply.stderr));
    let show = t.run(&["state", "show", "file.config"]);
    let outputs = t.run(&["output"]);
    for (what, o) in [
        ("plan", &plan),
        ("plan -json", &json),
        ("apply", &apply),
        ("state show", &show),
        ("output", &outputs),
    ] {
        let all = format!("{}{}", s(&o.stdout), s(&o.stderr));
        assert!(!all.contains(secret), "{what} shows the secret:\n{all}");
        assert!(all.contains("(sensitive value)"), "{what} marks it:\n{all}");
    }
    // The file itself has it, with the mode asked for; the state is 0600.
    assert_eq!(
        std::fs::read_to_string(t.path().join("out/app.env")).unwrap(),
        format!("DSN=postgres://app:{secret}@db/app\n")
    );
    let mode = |p: &str| {
        std::fs::metadata(t.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("out/app.env"), 0o600);
    assert_eq!(mode(".pipeline/state.json"), 0o600);
    assert_eq!(mode(".pipeline/state.journal"), 0o600);
}

#[test]
fn drift_is_shown_separately_and_converged() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    t.write(
        "s.hcl",
        &format!(
            r#"file "conf" {{
  path     = "out/nginx.conf"
  template = "upstream app {{{{#each servers}}}}\n  server {{{{this}}}};{{{{/each}}}}\n}}\n"
  vars     = {{ servers = ["a:1", "b:2", "c:3"] }}
}}
service "web" {{
  source = "{}"
  run    = "./preview --port {{{{port}}}}"
  health = {{ path = "/health", interval = "100ms" }}
}}
"#,
            src.display()
        ),
    );
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    // Someone edits the file by hand and kills the service's supervisor outside pipeline.
    std::fs::write(
        t.path().join("out/nginx.conf"),
        "upstream app {\n  server a:1;\n  server evil:666;\n  server c:3;\n}\n",
    )
    .unwrap();
    t.kill_supervisor("service.web", "gen-1");

    let out = t.run(&["plan", "-detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2));
    let plan = s(&out.stdout);
    let drift = plan.split("pipeline will perform").next().unwrap();
    assert!(drift.contains("Changed outside of pipeline"), "{plan}");
    assert!(drift.contains("# file.conf has changed"), "{plan}");
    assert!(drift.contains("# service.web is gone"), "{plan}");
    // The update shows the rendered file as a line diff.
    assert!(
        plan.contains("# file.conf will be updated in place"),
        "{plan}"
    );
    assert!(
        plan.contains("-   server evil:666;") && plan.contains("+   server b:2;"),
        "{plan}"
    );
    assert!(plan.contains("# service.web will be created"), "{plan}");
    // -refresh=false trusts the record and sees nothing to do.
    let out = t.run(&["plan", "-refresh=false", "-detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stdout));
    t.ok(&["apply", "-auto-approve"]);
    assert!(std::fs::read_to_string(t.path().join("out/nginx.conf"))
        .unwrap()
        .contains("server b:2;"));
    let out = t.run(&["plan", "-detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stdout));
    t.ok(&["destroy", "-auto-approve"]);
}

#[test]
fn modules_count_for_each_target_and_replace() {
    let t = Scratch::new();
    t.write(
        "modules/site/main.hcl",
        r#"variable "name" { type = string }
variable "pages" {
  type    = list(string)
  default = ["index"]
}
file "page" {
  for_each = var.pages
  path     = "out/${var.name}/${each.key}.html"
  content  = "<h1>${upper(var.name)}: ${each.value}</h1>"
}
output "paths" { value = [for p in file.page : p.path] }
"#,
    );
    t.write(
        "stacks/site.hcl",
        r#"module "blog" {
  source = "../modules/site"
  name   = "blog"
  pages  = ["index", "about"]
}
file "sitemap" {
  path    = "../out/sitemap.txt"
  content = join("\n", module.blog.paths)
}
file "n" {
  count   = 2
  path    = "../out/n${count.index}.txt"
  content = format("%03d", count.index)
}
output "paths" { value = module.blog.paths }
"#,
    );
    let plan = t.ok(&["plan", "stacks/site.hcl"]);
    for a in [
        "module.blog.file.page[\"index\"]",
        "module.blog.file.page[\"about\"]",
        "file.sitemap",
        "file.n[0]",
        "file.n[1]",
    ] {
        assert!(
            plan.contains(&format!("# {a} will be created")),
            "{a}:\n{plan}"
        );
    }
    // -target brings dependencies along and nothing else.
    let out = t.ok(&["apply", "-auto-approve", "-target", "file.sitemap"]);
    assert!(out.contains("3 added"), "{out}");
    assert_eq!(
        std::fs::read_to_string(t.path().join("out/sitemap.txt")).unwrap(),
        "out/blog/index.html\nout/blog/about.html"
    );
    assert!(!t.path().join("out/n0.txt").exists());
    t.ok(&["apply", "-auto-approve"]);
    assert_eq!(
        std::fs::read_to_string(t.path().join("out/n1.txt")).unwrap(),
        "001"
    );
    // Relative paths, in modules too, resolve against the root stack's directory.
    assert_eq!(
        std::fs::read_to_string(t.path().join("stacks/out/blog/about.html")).unwrap(),
        "<h1>BLOG: about</h1>"
    );

    // -replace forces a replacement of exactly that instance.
    let plan = t.ok(&["plan", "-replace", "file.n[1]"]);
    assert!(
        plan.contains("# file.n[1] must be replaced") && plan.contains("-replace"),
        "{plan}"
    );
    assert!(
        plan.contains("Plan: 1 to add, 0 to change, 1 to destroy."),
        "{plan}"
    );
    let outputs = t.ok(&["output", "-json"]);
    assert!(outputs.contains("out/blog/about.html"), "{outputs}");
    // Graph output names instances and their edges.
    let dot = t.ok(&["graph"]);
    assert!(
        dot.starts_with("digraph")
            && dot.contains("\"file.sitemap\" -> \"module.blog.file.page[\\\"index\\\"]\""),
        "{dot}"
    );
}

#[test]
fn ctrl_c_lets_running_steps_finish_and_records_them() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    // Two slow replicas run at once; the dependent file waits for them.
    t.write(
        "s.hcl",
        &format!(
            r#"service "slow" {{
  replicas = 2
  source   = "{}"
  run      = "sleep 2 && exec ./preview --port {{{{port}}}}"
  health   = {{ path = "/health", interval = "100ms" }}
}}
file "after" {{
  path    = "out/after.txt"
  content = join(",", service.slow[*].url)
}}
"#,
            src.display()
        ),
    );
    // The replicas need ~2.6 s after the signal, longer than the default grace (1.2 s: a
    // hanging create must return within 2 s): this run gives running steps 10 s.
    let child = t
        .cmd(&["apply", "-auto-approve", "-interrupt-grace=10s", "s.hcl"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = t.path().join(".pipeline/run");
    assert!(wait_until(Duration::from_secs(10), || std::fs::read_dir(
        &run
    )
    .map(|d| d.count() == 2)
    .unwrap_or(false)));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(text.contains("Interrupt received"), "{text}");
    assert!(text.contains("Apply interrupted."), "{text}");
    assert!(text.contains("file.after"), "{text}");
    let st = state(&t);
    assert_eq!(
        st.resources["service.slow[0]"].status,
        pipeline_state::Status::Ready
    );
    assert_eq!(
        st.resources["service.slow[1]"].status,
        pipeline_state::Status::Ready
    );
    assert!(!st.resources.contains_key("file.after"));
    let plan = t.ok(&["plan"]);
    assert!(
        plan.contains("Plan: 1 to add, 0 to change, 0 to destroy."),
        "{plan}"
    );
    t.ok(&["destroy", "-auto-approve"]);
    assert!(t.processes().is_empty());
}

#[test]
fn a_service_builds_from_a_git_revision_and_a_missing_revision_is_a_clear_error() {
    let t = Scratch::new();
    let repo = prebuilt_source(&t);
    let git = |args: &[&str]| common::git(&repo, args);
    git(&["init", "-q", "-b", "master"]);
    std::fs::write(repo.join("version.txt"), "v1").unwrap();
    git(&["add", "."]);
    git(&["commit", "-qm", "v1"]);
    git(&["tag", "v1"]);
    std::fs::write(repo.join("version.txt"), "v2").unwrap();
    git(&["commit", "-qam", "v2"]);
    // The working tree moves on; only committed revisions are deployed.
    std::fs::write(repo.join("version.txt"), "uncommitted").unwrap();
    let stack = |rev: &str| {
        format!(
            r#"variable "rev" {{ default = "{rev}" }}
service "app" {{
  source   = "{}"
  revision = var.rev
  build    = "test -f version.txt"
  run      = "VERSION=$(cat version.txt) exec ./preview --port {{{{port}}}}"
  health   = {{ path = "/health", interval = "100ms" }}
}}
output "url" {{ value = service.app.url }}
"#,
            repo.display()
        )
    };
    t.write("s.hcl", &stack("v1"));
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let url = t.ok(&["output", "url"]).trim().to_string();
    let (_, body) = http("GET", &format!("{url}/health"), "").unwrap();
    assert!(body.contains("\"version\":\"v1\""), "{body}");

    // A new revision is an update in place: the instance keeps its address (its slot) and
    // a new generation of the app takes over behind it.
    let plan = t.ok(&["plan", "-var", "rev=master"]);
    assert!(
        plan.contains("# service.app will be updated in place"),
        "{plan}"
    );
    assert!(plan.contains("~ revision = \"v1\" -> \"master\""), "{plan}");
    t.ok(&["apply", "-auto-approve", "-var", "rev=master"]);
    let url2 = t.ok(&["output", "url"]).trim().to_string();
    assert_eq!(url, url2, "the slot keeps its address");
    let (_, body) = http("GET", &format!("{url}/health"), "").unwrap();
    assert!(body.contains("\"version\":\"v2\""), "{body}");
    let gens: Vec<String> = std::fs::read_dir(t.path().join(".pipeline/run/service.app"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gen-"))
        .collect();
    assert_eq!(
        gens,
        vec!["gen-2"],
        "a rolling update stops the old generation"
    );

    let out = t.run(&["plan", "-var", "rev=no-such-branch"]);
    assert_eq!(out.status.code(), Some(1));
    let err = s(&out.stderr);
    assert!(
        err.contains("revision \"no-such-branch\" does not exist"),
        "{err}"
    );
    assert!(
        err.contains("service.app") && err.contains("= help:"),
        "{err}"
    );
    t.ok(&["destroy", "-auto-approve"]);
    assert!(t.processes().is_empty());
    assert!(
        !t.path().join(".pipeline/builds").exists(),
        "builds are removed with the last replica"
    );
}

#[test]
fn an_output_of_a_secret_known_only_after_apply_stays_masked() {
    // The flag store's password is generated at apply time and is sensitive: an output that
    // passes it on must be stored and shown as sensitive, though the plan saw only "unknown".
    let t = Scratch::new();
    t.write(
        "s.hcl",
        "flags \"ui\" {}\noutput \"dsn\" { value = flags.ui.url }\n",
    );
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let st = state(&t);
    assert!(st.outputs["dsn"].sensitive, "{:?}", st.outputs["dsn"]);
    let shown = t.ok(&["output"]);
    assert!(shown.contains("(sensitive value)"), "{shown}");
    let password = st.resources["flags.ui"].attrs["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!shown.contains(&password));
    t.ok(&["destroy", "-auto-approve"]);
}

#[test]
fn a_revision_of_a_service_in_a_subdirectory_of_its_repository_builds() {
    // Like examples/preview inside this repository: the revision's subtree is exported from
    // the top level (git archive run in the subdirectory exported nothing).
    let t = Scratch::new();
    let app = prebuilt_source(&t);
    let mono = t.path().join("mono");
    std::fs::create_dir_all(mono.join("services")).unwrap();
    std::fs::rename(&app, mono.join("services/app")).unwrap();
    let git = |args: &[&str]| common::git(&mono, args);
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "one"]);
    t.write(
        "s.hcl",
        "service \"app\" {\n  source   = \"mono/services/app\"\n  revision = \"main\"\n  run      = \"./preview --port {{port}}\"\n  health   = { path = \"/health\" }\n}\noutput \"url\" { value = service.app.url }\n",
    );
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let url = t.ok(&["output", "url"]).trim().to_string();
    assert!(http("GET", &format!("{url}/health"), "").is_some_and(|(c, _)| c == 200));
    t.ok(&["destroy", "-auto-approve"]);
}

/// A block of no instances (`count = 0`, an empty `for_each`) is an empty list or map to what
/// refers to it, as in Terraform: `length()` is 0, `try(x[0].y, fallback)` falls back, and the
/// plan and apply complete (before, the reference stayed unknown and apply failed on it).
#[test]
fn a_block_of_no_instances_is_empty_to_references() {
    let t = Scratch::new();
    t.write(
        "main.hcl",
        r#"variable "on" {
  type    = bool
  default = false
}
file "opt" {
  count   = var.on ? 1 : 0
  path    = "out/opt.txt"
  content = "opt"
}
file "each" {
  for_each = var.on ? ["a"] : []
  path     = "out/${each.key}.txt"
  content  = each.key
}
file "summary" {
  path    = "out/summary.txt"
  content = "${length(file.opt)} ${length(file.each)} ${try(file.opt[0].path, "none")}"
}
"#,
    );
    t.ok(&["apply", "-auto-approve", "main.hcl"]);
    assert_eq!(
        std::fs::read_to_string(t.path().join("out/summary.txt")).unwrap(),
        "0 0 none"
    );
    t.env
        .borrow_mut()
        .push(("PIPELINE_VAR_on".into(), "true".into()));
    t.ok(&["apply", "-auto-approve", "main.hcl"]);
    assert_eq!(
        std::fs::read_to_string(t.path().join("out/summary.txt")).unwrap(),
        "1 1 out/opt.txt"
    );
}
