//! nginx as a tool: where its binary is and `nginx -t` of a rendered config. Used by the
//! nginx provider: render, apply, and the canary traffic shift its actions make.

use pipeline_supervise::private;
use std::path::{Path, PathBuf};

/// Which stack attribute a rendered line comes from, so an `nginx -t` error points at the stack.
fn attr_of_line(line: &str) -> Option<&'static str> {
    let l = line.trim_start();
    [
        ("client_max_body_size", "client_max_body_size"),
        ("keepalive_timeout", "keepalive_timeout"),
        ("listen", "listen"),
        ("server ", "routes"),
        ("location", "routes"),
        ("alias", "routes"),
        ("proxy_pass", "routes"),
    ]
    .iter()
    .find(|(p, _)| l.starts_with(p))
    .map(|(_, a)| *a)
}

pub fn nginx_bin() -> Option<PathBuf> {
    // An explicit choice wins (and is reported as missing if it is not there).
    if let Some(p) = std::env::var_os("PIPELINE_NGINX") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join("nginx"))
        .find(|p| p.is_file())
}

/// Where apply records, in a balancer's prefix, the nginx executable it runs (a provider
/// block's `binary`), so later checks of that prefix use the same one.
pub const BINARY_RECORD: &str = "conf/nginx.binary";

/// `nginx -t` on `text` in a throwaway prefix; Err(attribute, message) on rejection.
/// The executable is the one recorded for `real_prefix` by apply, else the default.
pub fn check(text: &str, real_prefix: &Path) -> Result<(), (Option<String>, String)> {
    let recorded = std::fs::read_to_string(real_prefix.join(BINARY_RECORD))
        .ok()
        .map(|s| PathBuf::from(s.trim_end()));
    let Some(bin) = recorded.or_else(nginx_bin) else {
        return Err((None, "nginx is not installed (no nginx on PATH)".into()));
    };
    check_with(&bin, text, real_prefix)
}

/// `nginx -t` with the executable `bin`.
pub fn check_with(
    bin: &Path,
    text: &str,
    real_prefix: &Path,
) -> Result<(), (Option<String>, String)> {
    let tmp = std::env::temp_dir().join(format!(
        "pipeline-nginx-check-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let result = (|| {
        for d in ["conf", "logs", "tmp"] {
            private::create_dir_all(&tmp.join(d)).map_err(|e| (None, e.to_string()))?;
        }
        let text = text.replace(
            &real_prefix.display().to_string(),
            &tmp.display().to_string(),
        );
        private::write(&tmp.join("conf/nginx.conf"), &text).map_err(|e| (None, e.to_string()))?;
        let out = std::process::Command::new(bin)
            .arg("-t")
            .arg("-q")
            .arg("-p")
            .arg(&tmp)
            .args(["-c", "conf/nginx.conf", "-e", "logs/error.log"])
            .output()
            .map_err(|e| (None, format!("cannot run {}: {e}", bin.display())))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .find(|l| l.contains("[emerg]"))
            .unwrap_or(err.trim())
            .to_string();
        let msg = line.split("[emerg] ").nth(1).unwrap_or(&line);
        // "... in /tmp/x/conf/nginx.conf:12" → the stack attribute that produced line 12.
        let (msg, attr) = match msg.rsplit_once(" in ") {
            Some((m, place)) => {
                let n: Option<usize> = place.rsplit(':').next().and_then(|n| n.trim().parse().ok());
                let attr = n
                    .and_then(|n| text.lines().nth(n - 1))
                    .and_then(attr_of_line);
                (m.to_string(), attr.map(str::to_string))
            }
            None => (msg.to_string(), None),
        };
        Err((attr, format!("nginx rejects the config: {msg}")))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}
