//! Crash safety: SIGKILL `pipeline apply` at 50+ moments of a 20-resource apply. Every time the
//! state parses, every process the engine started is recorded in it, and the next apply
//! converges (a following plan has nothing to do).

mod common;
use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const MOMENTS: usize = 52;

fn stack(src: &std::path::Path) -> String {
    // 1 host + 8 replicas + 11 files = 20 instances; files depend on the replicas' URLs.
    format!(
        r#"
host "here" {{}}

service "web" {{
  on            = host.here
  replicas      = 8
  source        = "{src}"
  run           = "./preview --port {{{{port}}}}"
  health        = {{ path = "/health", interval = "50ms" }}
  start_timeout = "20s"
}}

file "each" {{
  count   = 8
  path    = "out/replica-${{count.index}}.txt"
  content = "replica ${{count.index}} at ${{service.web[count.index].url}}"
}}

file "all" {{
  path    = "out/all.txt"
  content = join("\n", service.web[*].url)
}}

file "index" {{
  path    = "out/index.txt"
  content = "${{file.all.sha256}} ${{length(file.each)}}"
}}

file "static" {{
  path    = "out/static.txt"
  content = "independent of everything"
}}
"#,
        src = src.display()
    )
}

/// Every replica directory that has a live process must belong to an address in the state.
fn untracked(t: &Scratch) -> Vec<String> {
    let st = state(t);
    let known: BTreeSet<String> = st
        .resources
        .keys()
        .map(|a| pipeline_providers::local::sanitize(a))
        .collect();
    let mut out = Vec::new();
    for pid in t.processes() {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let dir = env
            .split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| {
                kv.strip_prefix(&format!("{}=", pipeline_supervise::MARKER_ENV))
                    .map(str::to_string)
            });
        if let Some(dir) = dir {
            // .pipeline/run/<instance>/<slot|gen-N>: the instance is the first component.
            let run = t.path().join(".pipeline/run");
            let rel = std::path::Path::new(&dir)
                .strip_prefix(&run)
                .map(|r| r.to_path_buf())
                .unwrap_or_default();
            let name = rel
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default();
            if !known.contains(&name) {
                out.push(format!("pid {pid} in {dir}"));
            }
        }
    }
    out
}

#[test]
fn sigkill_at_many_moments_then_converge() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    t.write("stack.hcl", &stack(&src));

    // The fastest of three full applies bounds the window the kills are spread over.
    let mut full = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        t.ok(&["apply", "-auto-approve", "stack.hcl"]);
        full = full.min(start.elapsed());
        assert_eq!(state(&t).resources.len(), 20);
        t.ok(&["destroy", "-auto-approve"]);
        assert!(t.processes().is_empty());
    }
    println!("a full 20-resource apply takes {full:?}; killing at {MOMENTS} moments across it");

    // A kill that comes after the apply already finished does not count; try that moment again
    // (bounded), so at least MOMENTS distinct moments are covered.
    let mut killed_mid_way = 0;
    let mut attempts = 0;
    while killed_mid_way < MOMENTS && attempts < MOMENTS * 2 {
        attempts += 1;
        let i = killed_mid_way;
        let delay = full.mul_f64(0.95 * i as f64 / (MOMENTS - 1) as f64);
        let mut child = t
            .cmd(&["apply", "-auto-approve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        let _ = child.wait();
        if !finished {
            killed_mid_way += 1;
        }

        // The state parses and records every process that was started.
        let st = state(&t);
        let lost = untracked(&t);
        assert!(
            lost.is_empty(),
            "moment {i} ({delay:?}): processes missing from the state: {lost:?}"
        );

        // The next apply converges, and then there is nothing left to do.
        let out = t.run(&["apply", "-auto-approve"]);
        assert!(
            out.status.success(),
            "moment {i} ({delay:?}, {} recorded): recovery apply failed:\n{}\n{}",
            st.resources.len(),
            s(&out.stdout),
            s(&out.stderr)
        );
        let out = t.run(&["plan", "-detailed-exitcode"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "moment {i}: not converged:\n{}",
            s(&out.stdout)
        );
        let st = state(&t);
        assert_eq!(st.resources.len(), 20);
        assert!(st
            .resources
            .values()
            .all(|r| r.status == pipeline_state::Status::Ready));
        // Exactly one supervisor per replica: nothing was started twice.
        assert!(untracked(&t).is_empty());
        let dirs: BTreeSet<String> = std::fs::read_dir(t.path().join(".pipeline/run"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(dirs.len(), 8, "{dirs:?}");
        for f in 0..8 {
            let text =
                std::fs::read_to_string(t.path().join(format!("out/replica-{f}.txt"))).unwrap();
            let url = text.split(" at ").nth(1).unwrap().to_string();
            assert!(
                http("GET", &format!("{url}/health"), "").is_some_and(|(c, _)| c == 200),
                "moment {i}: {url} does not answer"
            );
        }

        t.ok(&["destroy", "-auto-approve"]);
        assert!(
            wait_until(Duration::from_secs(5), || t.processes().is_empty()),
            "moment {i}: processes left after destroy"
        );
    }
    println!("{killed_mid_way} of {MOMENTS} kills landed while the apply was running");
    assert!(
        killed_mid_way >= 50,
        "only {killed_mid_way} kills landed mid-apply"
    );
}
