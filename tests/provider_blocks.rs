//! `provider "NAME" { ... }` blocks through the real binary: nginx's and redis's `binary`
//! setting, a wrong one named at its block before anything starts, a right one used (over
//! `PIPELINE_NGINX`) by a balancer that selects the configuration by alias.

mod common;
use common::*;

fn balancer(provider_block: &str, select: &str, port: u16) -> String {
    format!(
        r#"{provider_block}
balancer "front" {{
  {select}
  listen = {port}
  routes = {{ "/" = {{ static = "site" }} }}
}}
"#
    )
}

#[test]
fn an_nginx_binary_that_is_not_there_is_named_at_its_block_and_nothing_starts() {
    let t = Scratch::new();
    t.write("site/index.html", "<h1>x</h1>");
    let block = "provider \"nginx\" {\n  binary = \"/nonexistent/sbin/nginx\"\n}\n";
    t.write("s.hcl", &balancer(block, "", common::load::free_port()));
    for cmd in [&["plan", "s.hcl"][..], &["apply", "-auto-approve", "s.hcl"]] {
        let out = t.run(cmd);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}");
        let err = s(&out.stderr);
        assert!(
            err.contains("provider \"nginx\", setting `binary`: the nginx executable /nonexistent/sbin/nginx does not exist"),
            "{err}"
        );
        assert!(err.contains("s.hcl:2:3"), "at the setting: {err}");
        assert!(
            err.contains("= help: give the absolute path of the nginx executable"),
            "{err}"
        );
    }
    assert!(state(&t).resources.is_empty(), "nothing recorded");
    assert!(t.processes().is_empty(), "nothing started");

    // A relative path is refused the same way.
    t.write(
        "s.hcl",
        &balancer(
            "provider \"nginx\" { binary = \"sbin/nginx\" }",
            "",
            common::load::free_port(),
        ),
    );
    let out = t.run(&["plan", "s.hcl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        s(&out.stderr).contains("sbin/nginx is not an absolute path"),
        "{}",
        s(&out.stderr)
    );
}

#[test]
fn a_redis_binary_that_is_not_there_is_named_at_its_block() {
    let t = Scratch::new();
    t.write(
        "s.hcl",
        &format!(
            "provider \"redis\" {{\n  binary = \"/nonexistent/redis-server\"\n}}\nflags \"ui\" {{\n  port = {}\n}}\n",
            common::load::free_port()
        ),
    );
    let out = t.run(&["plan", "s.hcl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = s(&out.stderr);
    assert!(
        err.contains("provider \"redis\", setting `binary`: the redis-server executable /nonexistent/redis-server does not exist"),
        "{err}"
    );
    assert!(err.contains("s.hcl:2:3"), "{err}");
    assert!(t.processes().is_empty());
}

#[test]
fn a_configured_nginx_binary_runs_the_balancer_that_selects_it() {
    let t = Scratch::new();
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("nginx is installed (the quickstart installs it)");
    // A name nothing else uses, so the running process shows which executable it is.
    let bin = t.path().join("bin/my-nginx");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(nginx, &bin).unwrap();
    // Without the block, this would be "nginx is not installed": the block wins.
    t.env
        .borrow_mut()
        .push(("PIPELINE_NGINX".into(), "/nonexistent/sbin/nginx".into()));
    t.write("site/index.html", "<h1>configured</h1>");
    let port = common::load::free_port();
    let block = format!(
        "provider \"nginx\" {{\n  alias  = \"mine\"\n  binary = \"{}\"\n}}\n",
        bin.display()
    );
    t.write("s.hcl", &balancer(&block, "provider = nginx.mine", port));
    t.ok(&["apply", "-auto-approve", "s.hcl"]);
    let (code, body) = http("GET", &format!("http://127.0.0.1:{port}/index.html"), "").unwrap();
    assert_eq!((code, body.as_str()), (200, "<h1>configured</h1>"));
    let st = state(&t);
    assert_eq!(st.resources["balancer.front"].provider, "nginx.mine");
    // nginx rewrites its environ (no replica marker to find it by); the path is unique to this
    // test, so any process naming it is ours.
    let running: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(procfs::cmdline)
        .filter(|c| c.contains(&bin.display().to_string()))
        .collect();
    assert!(
        running
            .iter()
            .any(|c| c.starts_with("nginx: master process")),
        "nginx runs from the configured path: {running:?}"
    );
    // Nothing of the block is in the state.
    let state_text =
        std::fs::read_to_string(t.path().join(".pipeline/state.json")).unwrap_or_default();
    assert!(!state_text.contains("my-nginx"), "{state_text}");

    // A second apply keeps it (the orphan sweep counts `nginx.mine` records as nginx's own).
    let out = t.ok(&["apply", "-auto-approve", "s.hcl"]);
    assert!(!out.contains("Stopped what no state record names"), "{out}");
    let (code, _) = http("GET", &format!("http://127.0.0.1:{port}/index.html"), "").unwrap();
    assert_eq!(code, 200);

    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
    assert!(t.processes().is_empty());
    assert!(state(&t).resources.is_empty());
}
