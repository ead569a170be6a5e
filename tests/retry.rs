//! A real provider's passing failure is retried by the engine: the balancer's port, free when
//! the plan was made, is taken by another program when the apply starts nginx. The first
//! attempt fails `transient` (the provider tries the bind, and the OS says EADDRINUSE); once
//! the port is free again a later attempt starts nginx and the apply succeeds, its output
//! naming the attempts.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

/// Kills the apply if the test fails half-way.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_port_taken_between_plan_and_apply_is_retried_and_the_apply_succeeds() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    let port = common::load::free_port();
    t.write(
        "s.hcl",
        &format!(
            r#"service "web" {{
  source = "{}"
  run    = "./preview --port {{{{port}}}}"
}}

balancer "front" {{
  listen = {port}
  routes = {{ "/" = service.web }}
}}
"#,
            src.display()
        ),
    );
    t.ok(&["plan", "s.hcl", "-out", "p.plan"]);
    // Another program takes the port after the plan.
    let mut taken = Some(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
    let mut apply = Running(
        t.cmd(&["apply", "p.plan"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = Vec::new();
    for line in BufReader::new(apply.0.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("balancer.front: attempt 2 of ") {
            // The first attempt failed; the other program goes away.
            taken = None;
        }
        lines.push(line);
    }
    let status = apply.0.wait().unwrap();
    let err = lines.join("\n");
    assert!(taken.is_none(), "no retry was announced:\n{err}");
    assert!(status.success(), "{status}:\n{err}");
    let retry = lines
        .iter()
        .find(|l| l.starts_with("balancer.front: attempt 2 of 4 in "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        retry.contains(&format!(
            "after a transient error: port {port} on 127.0.0.1 was taken by another program"
        )),
        "{retry}"
    );
    let attempts = lines
        .iter()
        .filter(|l| l.starts_with("balancer.front: attempt "))
        .count();
    eprintln!("{attempts} retries before nginx started:\n{err}");
    // nginx serves the route through the port it got in the end.
    assert!(
        wait_until(std::time::Duration::from_secs(10), || {
            http("GET", &format!("http://127.0.0.1:{port}/"), "").is_some_and(|(c, _)| c == 200)
        }),
        "the balancer does not serve:\n{err}"
    );
    t.ok(&["destroy", "-auto-approve", "s.hcl"]);
}
