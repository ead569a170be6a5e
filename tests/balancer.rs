//! Bad balancer input is reported before anything changes: a value nginx rejects (with the
//! stack location of the attribute), a port already in use, nginx missing.

mod common;
use common::*;

fn stack(port: u16, body_size: &str) -> String {
    format!(
        r#"service "web" {{
  source = "{{SRC}}"
  run    = "./preview --port {{{{port}}}}"
}}

balancer "front" {{
  listen               = {port}
  routes               = {{ "/" = service.web }}
  client_max_body_size = "{body_size}"
}}
"#
    )
}

#[test]
fn a_value_nginx_rejects_points_at_the_stack_attribute() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    let port = common::load::free_port();
    t.write(
        "s.hcl",
        &stack(port, "999999999999g").replace("{SRC}", &src.display().to_string()),
    );
    let out = t.run(&["apply", "-auto-approve", "s.hcl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = s(&out.stderr);
    assert!(
        err.contains("nginx rejects the config") && err.contains("client_max_body_size"),
        "{err}"
    );
    assert!(err.contains("s.hcl:9:26"), "the attribute's line: {err}");
    assert!(err.contains("= help:"), "{err}");
    assert!(state(&t).resources.is_empty(), "nothing was started");
    assert!(t.processes().is_empty());
}

#[test]
fn a_port_in_use_is_named_with_what_to_do() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    t.write(
        "s.hcl",
        &stack(port, "1m").replace("{SRC}", &src.display().to_string()),
    );
    let out = t.run(&["plan", "s.hcl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = s(&out.stderr);
    assert!(
        err.contains(&format!("port {port} on 127.0.0.1 is already in use")),
        "{err}"
    );
    assert!(err.contains("choose another `listen` port"), "{err}");
}

#[test]
fn missing_nginx_says_how_to_install_it() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    t.env
        .borrow_mut()
        .push(("PIPELINE_NGINX".into(), "/nonexistent/sbin/nginx".into()));
    t.write(
        "s.hcl",
        &stack(common::load::free_port(), "1m").replace("{SRC}", &src.display().to_string()),
    );
    let out = t.run(&["plan", "s.hcl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = s(&out.stderr);
    assert!(err.contains("nginx is not installed"), "{err}");
    assert!(err.contains("apt-get install nginx-light"), "{err}");
}

#[test]
fn a_static_site_and_an_api_route_side_by_side() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    let port = common::load::free_port();
    t.write("site/index.html", "<h1>checkbox</h1>");
    t.write(
        "s.hcl",
        &format!(
            r#"service "api" {{
  source = "{}"
  run    = "./preview --port {{{{port}}}}"
  health = {{ path = "/health", interval = "100ms" }}
}}
balancer "front" {{
  listen = {port}
  routes = {{
    "/"        = {{ static = "site" }}
    "/health"  = service.api
    "/preview" = service.api
  }}
}}
"#,
            src.display()
        ),
    );
    let out = t.run(&["apply", "-auto-approve", "s.hcl"]);
    assert!(out.status.success(), "{}{}", s(&out.stdout), s(&out.stderr));
    let base = format!("http://127.0.0.1:{port}");
    let (c, body) = http("GET", &format!("{base}/index.html"), "").unwrap();
    assert_eq!((c, body.as_str()), (200, "<h1>checkbox</h1>"));
    let (c, body) = http("POST", &format!("{base}/preview"), r#"{"markdown":"*x*"}"#).unwrap();
    assert_eq!(c, 200, "{body}");
    assert!(body.contains("<em>x</em>"), "{body}");
    t.ok(&["destroy", "-auto-approve"]);
    assert!(t.processes().is_empty());
}
