//! Headless Chromium for tests of web pages (the dashboard, the canary report).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium with `args` + `url` in its own process group, bounded in time; the
/// whole group is killed afterwards. Returns stdout.
pub fn chromium(args: &[String], url: &str) -> String {
    use std::os::unix::process::CommandExt;
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the web page tests need Debian's chromium (apt-get install -y chromium)"
    );
    let profile = tempfile::Builder::new()
        .prefix("test-chromium-")
        .tempdir()
        .unwrap();
    let out_file = profile.path().join("stdout");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start chromium");
    let pgid = child.id() as i32;
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > Duration::from_secs(90) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: kill of the process group we just created (chromium's helpers live there too).
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let status = status.expect("chromium did not finish within 90 s");
    assert!(status.success(), "chromium failed: {status}");
    std::fs::read_to_string(&out_file).unwrap()
}

/// `data-points` of the series `arm` in the chart `id` of a DOM dump (None if absent).
pub fn points(dom: &str, id: &str, arm: &str) -> Option<usize> {
    let chart = dom.split(&format!("data-chart=\"{id}\"")).nth(1)?;
    let chart = chart.split("</figure>").next()?;
    let series = chart.split(&format!("data-series=\"{arm}\"")).nth(1)?;
    series
        .split("data-points=\"")
        .nth(1)?
        .split('"')
        .next()?
        .parse()
        .ok()
}
