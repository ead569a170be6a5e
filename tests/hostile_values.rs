//! No stack value escapes into a config file or a command line (issue 8, items 1 and 10).
//!
//! Every attribute a provider renders into nginx.conf, redis.conf, an HTTP request line, an
//! environment or an argv declares its format; a value that is not of it is rejected while
//! planning, at the value's own `file:line:col`, naming the attribute, with exit 1, nothing
//! started and every byte (and mode) under the working directory unchanged. Real binary, real
//! nginx and redis-server on PATH.

mod common;
use common::*;

const BASE: &str = r#"file "a" {
  path    = "out/a.txt"
  content = "x"
}
"#;

/// A scratch directory with the base stack applied, a service source and a static site.
fn applied_base() -> Scratch {
    let t = Scratch::new();
    t.write("app/run.sh", "sleep 1000\n");
    t.write("site/index.html", "<h1>site</h1>");
    t.write("s.hcl", BASE);
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    t
}

/// `text` with its `@@` marker removed, and the marker's 1-based line and column.
fn locate(text: &str) -> (String, usize, usize) {
    let at = text.find("@@").expect("a case marks its value with @@");
    let line = text[..at].matches('\n').count() + 1;
    let col = text[..at].rsplit('\n').next().unwrap().chars().count() + 1;
    (text.replacen("@@", "", 1), line, col)
}

/// Write BASE + `case` as s.hcl, run `args`, and check: exit 1, the error at the marked value
/// naming `attr` with a help line, nothing started, nothing under the directory changed.
fn rejected(t: &Scratch, name: &str, attr: &str, case: &str, args: &[&str]) -> String {
    let (text, line, col) = locate(&format!("{BASE}\n{case}"));
    t.write("s.hcl", &text);
    let before = snapshot_files(t.path());
    let out = t.run(args);
    let err = s(&out.stderr);
    let short: String = err.chars().take(3000).collect();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{name}: must fail\nstdout: {}\nstderr: {short}",
        s(&out.stdout)
    );
    assert!(
        err.contains(&format!("s.hcl:{line}:{col}")),
        "{name}: the error must point at s.hcl:{line}:{col}:\n{short}"
    );
    assert!(
        err.contains(attr),
        "{name}: the error must name `{attr}`:\n{short}"
    );
    assert!(err.contains("= help:"), "{name}: no help line:\n{short}");
    assert!(!err.contains("panicked"), "{name}: {short}");
    assert!(
        t.processes().is_empty(),
        "{name}: something was started: {:?}",
        t.processes()
    );
    assert_unchanged(name, &before, &snapshot_files(t.path()));
    err
}

fn balancer(port: u16, line: &str) -> String {
    format!(
        "balancer \"b\" {{\n  listen = {port}\n  routes = {{ \"/\" = {{ static = \"site\" }} }}\n  {line}\n}}\n"
    )
}

fn balancer_routes(port: u16, routes: &str) -> String {
    format!("balancer \"b\" {{\n  listen = {port}\n  routes = {routes}\n}}\n")
}

fn service(line: &str) -> String {
    format!(
        "service \"s\" {{\n  source        = \"app\"\n  run           = \"sh run.sh\"\n  start_timeout = \"2s\"\n  {line}\n}}\n"
    )
}

#[test]
fn hostile_values_in_every_rendered_attribute_are_rejected_at_plan_with_nothing_changed() {
    let t = applied_base();
    let port = common::load::free_port();
    let big = "x".repeat(100_000);
    let big_path = format!("/{}", "a".repeat(100_000));
    let cases: Vec<(&str, &str, String)> = vec![
        // nginx: http-level settings
        ("size_newline_block", "client_max_body_size", balancer(port, r#"client_max_body_size = @@"1m;\n server { listen 0.0.0.0:1; location / { alias /etc/; autoindex on; } }\n #""#)),
        ("size_semicolon", "client_max_body_size", balancer(port, r#"client_max_body_size = @@"1m; autoindex on""#)),
        ("size_comment", "client_max_body_size", balancer(port, r#"client_max_body_size = @@"1m #""#)),
        ("size_100kb", "client_max_body_size", balancer(port, &format!(r#"client_max_body_size = @@"{big}""#))),
        ("keepalive_brace", "keepalive_timeout", balancer(port, r#"keepalive_timeout = @@"65s; } server {""#)),
        ("keepalive_dollar", "keepalive_timeout", balancer(port, r#"keepalive_timeout = @@"$host""#)),
        // nginx: upstream server lines
        ("fail_timeout_extra_server", "fail_timeout", balancer(port, r#"fail_timeout = @@"2s; server 10.0.0.1:80""#)),
        ("max_fails_fraction", "max_fails", balancer(port, "max_fails = @@1.5")),
        // nginx: listen
        ("listen_out_of_range", "listen", "balancer \"b\" {\n  listen = @@70000\n  routes = { \"/\" = { static = \"site\" } }\n}\n".to_string()),
        ("address_second_listen", "address", balancer(port, r#"address = @@"127.0.0.1:81; listen 0.0.0.0""#)),
        ("address_quote", "address", balancer(port, r#"address = @@"127.0.0.1\"""#)),
        // nginx: route keys (location paths)
        ("route_key_location", "routes", balancer_routes(port, r#"{ @@"/x { return 200 \"INJECTED\"; } location /y" = { static = "site" } }"#)),
        ("route_key_semicolon", "routes", balancer_routes(port, r#"{ @@"/a;b" = { static = "site" } }"#)),
        ("route_key_no_slash", "routes", balancer_routes(port, r#"{ @@"a" = { static = "site" } }"#)),
        ("route_key_hash", "routes", balancer_routes(port, r#"{ @@"/a#b" = { static = "site" } }"#)),
        ("route_key_newline", "routes", balancer_routes(port, r#"{ @@"/a\nb" = { static = "site" } }"#)),
        ("route_key_100kb", "routes", balancer_routes(port, &format!(r#"{{ @@"{big_path}" = {{ static = "site" }} }}"#))),
        // nginx: static roots and route targets
        ("static_newline_alias", "static", balancer_routes(port, r#"{ "/" = { static = @@"site/\";\n alias /etc/" } }"#)),
        ("static_nul", "static", balancer_routes(port, r#"{ "/" = { static = @@"site\u0000" } }"#)),
        ("static_variable", "routes", balancer_routes(port, r#"@@{ "/" = { static = "/etc/$${host}" } }"#)),
        ("target_url", "routes", balancer_routes(port, r#"@@{ "/" = { url = "http://127.0.0.1:1;\n}" } }"#)),
        ("weight_fraction", "weight", format!("{}\n{}", service(""), balancer_routes(port, r#"{ "/" = { upstreams = [{ service = service.s, weight = @@1.5 }] } }"#))),
        // redis.conf
        ("flags_on_address", "address", "flags \"f\" {\n  on = { address = @@\"127.0.0.1\\nreplicaof 10.0.0.1 6379\" }\n}\n".to_string()),
        ("flags_port", "port", "flags \"f\" {\n  port = @@6379.5\n}\n".to_string()),
        ("flags_password_newline", "password", "flags \"f\" {\n  password = @@\"password\\nrename-command CONFIG x\"\n}\n".to_string()),
        ("flags_value_name", "values", "flags \"f\" {\n  values = @@{ \"a\\nb\" = true }\n}\n".to_string()),
        // services: environment, health request, git argv, address
        ("env_nul", "env", service(r#"env = { X = @@"a\u0000b" }"#)),
        ("env_name", "env", service(r#"env = { @@"A=B" = "x" }"#)),
        ("health_path_no_slash", "path", service(r#"health = { path = @@"health" }"#)),
        ("health_path_crlf", "path", service(r#"health = { path = @@"/h\r\nX-Injected: 1" }"#)),
        ("health_method", "method", service(r#"health = { method = @@"GET /x HTTP/1.1\r\n" }"#)),
        ("revision_option", "revision", service(r#"revision = @@"--output=/tmp/pwned""#)),
        ("service_on_address", "address", service(r#"on = { address = @@"127.0.0.1; rm -rf /" }"#)),
        ("canary_request_path", "request.path", service(r#"canary = { request = { path = @@"/x HTTP/1.1\r\nX-Injected: 1" } }"#)),
        ("canary_content_type", "content_type", service(r#"canary = { request = { path = "/", body = "{}", content_type = @@"text/plain\r\nX-Injected: 1" } }"#)),
        // files
        ("file_path_newline", "path", "file \"f\" {\n  path    = @@\"out/a\\nb.txt\"\n  content = \"x\"\n}\n".to_string()),
        ("file_path_nul", "path", "file \"f\" {\n  path    = @@\"out/\\u0000x\"\n  content = \"x\"\n}\n".to_string()),
    ];
    assert!(cases.len() >= 20);
    for (name, attr, case) in &cases {
        rejected(&t, name, attr, case, &["apply", "-auto-approve", "s.hcl"]);
    }
}

#[test]
fn a_hostile_variable_is_rejected_at_the_attribute_that_uses_it() {
    let t = applied_base();
    let port = common::load::free_port();
    let case = format!(
        "variable \"size\" {{\n  type = string\n}}\n{}",
        balancer(port, "client_max_body_size = @@var.size")
    );
    let err = rejected(
        &t,
        "variable",
        "client_max_body_size",
        &case,
        &[
            "apply",
            "-auto-approve",
            "-var",
            "size=1m;\n server { listen 0.0.0.0:1; }\n #",
            "s.hcl",
        ],
    );
    assert!(err.contains("is not a size"), "{err}");
}

#[test]
fn client_max_body_size_cannot_add_a_server_that_serves_etc() {
    let t = applied_base();
    let port = common::load::free_port();
    let open = common::load::free_port();
    let case = balancer(
        port,
        &format!(
            r#"client_max_body_size = @@"1m;\n server {{ listen 0.0.0.0:{open}; location / {{ alias /etc/; autoindex on; }} }}\n #""#
        ),
    );
    let err = rejected(
        &t,
        "etc",
        "client_max_body_size",
        &case,
        &["apply", "-auto-approve", "s.hcl"],
    );
    assert!(err.contains("is not a size"), "{err}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", open)).is_err(),
        "nothing may listen on the injected port"
    );
}

#[test]
fn a_route_key_cannot_add_a_location_of_its_own() {
    let t = applied_base();
    let port = common::load::free_port();
    let case = balancer_routes(
        port,
        r#"{
    "/"  = { static = "site" }
    @@"/x { return 200 \"INJECTED\"; } location /y" = { static = "site" }
  }"#,
    );
    let err = rejected(
        &t,
        "route key",
        "routes",
        &case,
        &["apply", "-auto-approve", "s.hcl"],
    );
    assert!(err.contains("is not a URL path"), "{err}");
}

#[test]
fn a_health_path_without_a_leading_slash_is_a_plan_error_at_the_path() {
    let t = applied_base();
    let err = rejected(
        &t,
        "health path",
        "health.path",
        &service(r#"health = { path = @@"health", interval = "100ms" }"#),
        &["plan", "s.hcl"],
    );
    assert!(err.contains("does not start with `/`"), "{err}");
}

#[test]
fn an_env_value_with_nul_is_a_plan_error_at_the_value() {
    let t = applied_base();
    let err = rejected(
        &t,
        "env NUL",
        "env.GREETING",
        &service(r#"env = { GREETING = @@"hello\u0000world" }"#),
        &["plan", "s.hcl"],
    );
    assert!(err.contains("NUL"), "{err}");
}

#[test]
fn a_file_path_that_is_a_directory_is_a_plan_error_and_destroy_is_not_stuck() {
    let t = applied_base();
    std::fs::create_dir_all(t.path().join("out/dir")).unwrap();
    let case = "file \"d\" {\n  path    = @@\"out/dir\"\n  content = \"x\"\n}\n";
    let err = rejected(
        &t,
        "directory",
        "path",
        case,
        &["apply", "-auto-approve", "s.hcl"],
    );
    assert!(err.contains("is a directory"), "{err}");
    // A file that became a directory after it was applied: destroy goes through and leaves the
    // directory (it is not ours) alone.
    t.write("s.hcl", BASE);
    std::fs::remove_file(t.path().join("out/a.txt")).unwrap();
    std::fs::create_dir_all(t.path().join("out/a.txt/inside")).unwrap();
    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
    assert!(state(&t).resources.is_empty());
    assert!(t.path().join("out/a.txt/inside").is_dir());
    assert!(t.path().join("out/dir").is_dir());
}

#[test]
fn a_rejected_sensitive_value_is_not_shown_in_the_error() {
    let t = applied_base();
    let port = common::load::free_port();
    let case = format!(
        "variable \"size\" {{\n  type      = string\n  sensitive = true\n}}\n{}",
        balancer(port, "client_max_body_size = @@var.size")
    );
    let err = rejected(
        &t,
        "sensitive",
        "client_max_body_size",
        &case,
        &[
            "apply",
            "-auto-approve",
            "-var",
            "size=hunter2-secret;",
            "s.hcl",
        ],
    );
    assert!(err.contains("(sensitive value)"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_deploy_version_is_checked_like_the_stacks_revision() {
    let t = applied_base();
    git(&t.path().join("app"), &["init", "-q"]);
    git(&t.path().join("app"), &["add", "."]);
    git(&t.path().join("app"), &["commit", "-q", "-m", "app"]);
    t.write("s.hcl", &format!("{BASE}\n{}", service("")));
    let before = snapshot_files(t.path());
    let out = t.run(&["deploy", "s", "--version=--output=/tmp/pwned", "s.hcl"]);
    let err = s(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`revision` given on the command line is not a git revision"),
        "{err}"
    );
    assert!(err.contains("= help:"), "{err}");
    assert!(t.processes().is_empty());
    assert_unchanged("deploy", &before, &snapshot_files(t.path()));
}

/// Paths pipeline itself renders (the working directory in nginx.conf, in the nginx, slot and
/// redis command lines, in redis.conf) are quoted too: a directory named with a quote and a
/// space runs a service, a balancer and a flag store. One with a `$` cannot be named in an nginx
/// config (nginx expands variables in paths and has no escape): that is a plan error.
#[test]
fn a_working_directory_named_with_quotes_and_spaces_runs_nginx_slots_and_redis() {
    let t = Scratch::new();
    let dollar = t.path().join("$dir");
    std::fs::create_dir_all(&dollar).unwrap();
    std::fs::write(
        dollar.join("s.hcl"),
        "balancer \"b\" {\n  listen = 1\n  routes = { \"/\" = { static = \".\" } }\n}\n",
    )
    .unwrap();
    let out = t
        .cmd(&["plan", "s.hcl"])
        .current_dir(&dollar)
        .output()
        .unwrap();
    let err = s(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot be named in an nginx config"), "{err}");
    assert!(err.contains("s.hcl:1:1"), "{err}");
    let dir = t.path().join("it's a dir");
    std::fs::create_dir_all(&dir).unwrap();
    let src = prebuilt_source(&t);
    let port = common::load::free_port();
    std::fs::write(
        dir.join("s.hcl"),
        format!(
            r#"flags "f" {{}}

service "web" {{
  source = "{}"
  run    = "./preview --port {{{{port}}}}"
  health = {{ path = "/health", interval = "100ms" }}
}}

balancer "front" {{
  listen = {port}
  routes = {{ "/" = service.web }}
}}
"#,
            src.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = t.cmd(args).current_dir(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            s(&out.stdout),
            s(&out.stderr)
        );
    };
    run(&["apply", "-auto-approve", "s.hcl"]);
    let (status, body) =
        http("GET", &format!("http://127.0.0.1:{port}/health"), "").expect("the balancer answers");
    assert_eq!(status, 200, "{body}");
    run(&["destroy", "-auto-approve", "s.hcl"]);
    assert!(t.processes().is_empty(), "{:?}", t.processes());
}
