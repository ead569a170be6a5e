//! Traffic shifting for a progressive canary: the candidate's servers are added to every
//! upstream of a running balancer that routes to the baseline's slots, with weights that give
//! the candidate `percent` % of that upstream's requests. The config the stack rendered is kept
//! beside (`nginx.conf.stable`) and put back when the canary ends; every change is checked with
//! `nginx -t` and applied with a graceful reload.
//!
//! A canary interrupted by a crash leaves the shifted config in place; the balancer's `read`
//! then sees a config that differs from the recorded one (drift), and the next apply renders
//! the stack's config again.

use crate::nginx::{check, nginx_bin};
use std::path::{Path, PathBuf};

/// A running balancer some of whose upstreams route to the baseline.
#[derive(Clone, Debug)]
pub struct Shifted {
    /// The balancer's prefix (`.pipeline/run/balancer.NAME`).
    pub prefix: PathBuf,
    /// Where the balancer listens (`address:port`), for synthetic load.
    pub listen: Option<String>,
}

impl Shifted {
    pub fn access_log(&self) -> PathBuf {
        self.prefix.join("logs/access.log")
    }
    pub fn name(&self) -> String {
        self.prefix
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn server_addr(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let rest = t.strip_prefix("server ")?;
    rest.split_whitespace().next()
}

fn conf(prefix: &Path) -> PathBuf {
    prefix.join("conf/nginx.conf")
}

fn stable(prefix: &Path) -> PathBuf {
    prefix.join("conf/nginx.conf.stable")
}

/// The pid of the process whose canary shifted this balancer.
fn owner(prefix: &Path) -> PathBuf {
    prefix.join("conf/canary.owner")
}

/// Put the stack's config back, as the canary shifting it is over.
fn restore(prefix: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(stable(prefix)).map_err(|e| e.to_string())?;
    write_and_reload(prefix, &text)?;
    let _ = std::fs::remove_file(stable(prefix));
    let _ = std::fs::remove_file(owner(prefix));
    Ok(())
}

/// The prefixes of balancers a canary has shifted (they keep the stack's config beside).
fn shifted(work_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(work_dir.join("run"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| stable(p).exists())
                .collect()
        })
        .unwrap_or_default()
}

/// Balancers still shifted by a canary whose process is gone (a crash, a kill): their stack
/// config goes back before anything new is staged, so nginx never keeps sending traffic to a
/// candidate that no longer runs (or to whatever reuses its port later). Returns the prefixes
/// it put back.
pub fn restore_orphaned(work_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut restored = Vec::new();
    for prefix in shifted(work_dir) {
        let _lock = ConfLock::take(&prefix).map_err(|e| e.to_string())?;
        let alive = std::fs::read_to_string(owner(&prefix))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            // SAFETY: signal 0 only asks whether the process exists.
            .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
        if !alive && stable(&prefix).exists() {
            restore(&prefix)?;
            restored.push(prefix);
        }
    }
    Ok(restored)
}

/// Every running balancer under `work_dir` with an upstream that names one of `baseline`.
pub fn balancers_routing_to(work_dir: &Path, baseline: &[String]) -> Vec<Shifted> {
    let Ok(rd) = std::fs::read_dir(work_dir.join("run")) else {
        return vec![];
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let prefix = e.path();
        let text = std::fs::read_to_string(stable(&prefix))
            .or_else(|_| std::fs::read_to_string(conf(&prefix)));
        let Ok(text) = text else { continue };
        if !text
            .lines()
            .any(|l| server_addr(l).is_some_and(|a| baseline.iter().any(|b| b == a)))
        {
            continue;
        }
        let listen = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("listen "))
            .map(|l| l.trim_end_matches(';').trim().to_string());
        out.push(Shifted { prefix, listen });
    }
    out.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The stable config with `candidate` servers added to each upstream that routes to `baseline`,
/// weighted for `percent` % of its requests (100: the baseline's servers marked `down`).
pub fn shifted_config(
    stable: &str,
    baseline: &[String],
    candidate: &[String],
    percent: u32,
) -> String {
    let lines: Vec<&str> = stable.lines().collect();
    let mut out = Vec::with_capacity(lines.len() + candidate.len() * 2);
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if !(l.trim_start().starts_with("upstream ") && l.trim_end().ends_with('{')) {
            out.push(l.to_string());
            i += 1;
            continue;
        }
        // One upstream block: its server lines up to the closing brace.
        let start = i;
        let mut end = i + 1;
        while end < lines.len() && lines[end].trim() != "}" {
            end += 1;
        }
        let servers: Vec<(usize, &str, u64)> = (start + 1..end)
            .filter_map(|k| {
                let a = server_addr(lines[k])?;
                let w = lines[k]
                    .split_whitespace()
                    .find_map(|t| t.strip_prefix("weight="))
                    .and_then(|w| w.trim_end_matches(';').parse().ok())
                    .unwrap_or(1);
                Some((k, a, w))
            })
            .collect();
        let ours = servers
            .iter()
            .find(|(_, a, _)| baseline.iter().any(|b| b == a));
        let Some(&(template, base_addr, _)) = ours.filter(|_| percent > 0 && !candidate.is_empty())
        else {
            out.extend(
                lines[start..=end.min(lines.len() - 1)]
                    .iter()
                    .map(|s| s.to_string()),
            );
            i = end + 1;
            continue;
        };
        // The baseline's share of the upstream is split (100 − p) : p between it and the
        // candidate; other services in the same route keep their share (everything is scaled by
        // the same factor, 100 × the number of candidate servers).
        let is_base = |a: &str| baseline.iter().any(|b| b == a);
        let base_total: u64 = servers
            .iter()
            .filter(|(_, a, _)| is_base(a))
            .map(|(_, _, w)| w)
            .sum::<u64>()
            .max(1);
        let nc = candidate.len() as u64;
        let p = u64::from(percent.min(100));
        let scaled = |a: &str, w: u64| {
            if is_base(a) {
                w * (100 - p) * nc
            } else {
                w * 100 * nc
            }
        };
        let cand_w = p * base_total;
        let mut g = cand_w;
        for (_, a, w) in &servers {
            if scaled(a, *w) > 0 {
                g = gcd(g, scaled(a, *w));
            }
        }
        let g = g.max(1);
        out.push(lines[start].to_string());
        for (k, l) in lines.iter().enumerate().take(end).skip(start + 1) {
            match servers.iter().find(|(j, _, _)| *j == k) {
                Some((_, a, _)) if p == 100 && is_base(a) => out.push(format!(
                    "{} down;",
                    l.trim_end().trim_end_matches(';').replace(" down", "")
                )),
                Some((_, a, w)) => out.push(set_weight(l, scaled(a, *w) / g)),
                None => out.push(l.to_string()),
            }
        }
        for c in candidate {
            let line = set_weight(lines[template], cand_w / g)
                .replacen(base_addr, c, 1)
                .replace(" down;", ";");
            out.push(format!("{line} # canary"));
        }
        out.push(lines[end.min(lines.len() - 1)].to_string());
        i = end + 1;
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn set_weight(line: &str, w: u64) -> String {
    let mut parts: Vec<String> = line.split(' ').map(str::to_string).collect();
    let mut found = false;
    for p in parts.iter_mut() {
        if let Some(rest) = p.strip_prefix("weight=") {
            let tail = if rest.ends_with(';') { ";" } else { "" };
            *p = format!("weight={w}{tail}");
            found = true;
        }
    }
    let mut s = parts.join(" ");
    if !found {
        s = s.replacen(';', &format!(" weight={w};"), 1);
    }
    s
}

/// Exclusive use of a balancer's config while it is rewritten (commits run in parallel).
struct ConfLock(std::fs::File);

impl ConfLock {
    fn take(prefix: &Path) -> std::io::Result<ConfLock> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(prefix.join("conf/canary.lock"))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this struct owns; released when it is dropped.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ConfLock(f))
    }
}

impl Drop for ConfLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: see take().
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn write_and_reload(prefix: &Path, text: &str) -> Result<(), String> {
    if nginx_bin().is_none() {
        return Err("nginx is not installed".into());
    }
    check(text, prefix).map_err(|(_, m)| m)?;
    let c = conf(prefix);
    let tmp = c.with_extension("canary-tmp");
    pipeline_supervise::private::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &c))
        .map_err(|e| format!("cannot write {}: {e}", c.display()))?;
    reload(prefix)
}

fn reload(prefix: &Path) -> Result<(), String> {
    let pid = pipeline_supervise::status(prefix)
        .filter(|s| s.supervisor_alive)
        .and_then(|s| s.child_pid)
        .ok_or_else(|| format!("the balancer in {} is not running", prefix.display()))?;
    // SAFETY: a signal to the nginx master this provider started.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    Ok(())
}

/// Give the candidate `percent` % of the balancer's traffic to the baseline (0: none, and the
/// stack's config is back).
pub fn shift(
    b: &Shifted,
    baseline: &[String],
    candidate: &[String],
    percent: u32,
) -> Result<(), String> {
    // Candidates become server lines of their own: each must be one ADDRESS:PORT token.
    for c in candidate {
        pipeline_engine::format::Format::HostPort
            .check_str(c)
            .map_err(|e| format!("candidate address {c:?} is not ADDRESS:PORT ({e})"))?;
    }
    let _lock = ConfLock::take(&b.prefix).map_err(|e| e.to_string())?;
    let st = stable(&b.prefix);
    if percent == 0 || candidate.is_empty() {
        if st.exists() {
            restore(&b.prefix)?;
        }
        return Ok(());
    }
    if !st.exists() {
        std::fs::copy(conf(&b.prefix), &st).map_err(|e| e.to_string())?;
    }
    std::fs::write(owner(&b.prefix), std::process::id().to_string()).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&st).map_err(|e| e.to_string())?;
    write_and_reload(
        &b.prefix,
        &shifted_config(&text, baseline, candidate, percent),
    )
}

/// A promoted or aborted candidate server leaves every balancer: its line is dropped from the
/// shifted config; when no candidate is left the stack's config is back.
pub fn remove_candidate(work_dir: &Path, candidate: &str) -> Result<(), String> {
    for prefix in shifted(work_dir) {
        let _lock = ConfLock::take(&prefix).map_err(|e| e.to_string())?;
        let Ok(text) = std::fs::read_to_string(conf(&prefix)) else {
            continue;
        };
        let mine = |l: &str| l.ends_with("# canary") && server_addr(l) == Some(candidate);
        if !text.lines().any(mine) {
            continue;
        }
        let left: Vec<&str> = text.lines().filter(|l| !mine(l)).collect();
        if left.iter().any(|l| l.ends_with("# canary")) {
            let mut s = left.join("\n");
            s.push('\n');
            write_and_reload(&prefix, &s)?;
        } else {
            restore(&prefix)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_candidate_that_is_not_one_address_cannot_become_a_server_line() {
        let dir = tempfile::tempdir().unwrap();
        let b = Shifted {
            prefix: dir.path().to_path_buf(),
            listen: None,
        };
        let err = shift(
            &b,
            &["127.0.0.1:4001".into()],
            &["127.0.0.1:1; } server { listen 0.0.0.0:81".into()],
            5,
        )
        .unwrap_err();
        assert!(err.contains("is not ADDRESS:PORT"), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing written"
        );
    }

    use super::*;

    const CONF: &str = "http {\n    upstream route_0 {\n        server 127.0.0.1:4001 weight=1 max_fails=1 fail_timeout=10s;\n        server 127.0.0.1:4002 weight=1 max_fails=1 fail_timeout=10s;\n    }\n    upstream route_1 {\n        server 127.0.0.1:5001 weight=1 max_fails=1 fail_timeout=10s;\n    }\n}\n";

    fn weights(text: &str) -> Vec<(String, u64, bool)> {
        text.lines()
            .filter_map(|l| {
                let a = server_addr(l)?;
                let w = l
                    .split_whitespace()
                    .find_map(|t| t.strip_prefix("weight="))?
                    .trim_end_matches(';')
                    .parse()
                    .ok()?;
                Some((a.to_string(), w, l.contains(" down")))
            })
            .collect()
    }

    #[test]
    fn weights_give_the_candidate_its_share() {
        let base = vec!["127.0.0.1:4001".to_string(), "127.0.0.1:4002".to_string()];
        let cand = vec!["127.0.0.1:6001".to_string(), "127.0.0.1:6002".to_string()];
        for p in [5u32, 25, 50] {
            let t = shifted_config(CONF, &base, &cand, p);
            let w = weights(&t);
            let c: u64 = w.iter().filter(|x| x.0.contains(":600")).map(|x| x.1).sum();
            let b: u64 = w.iter().filter(|x| x.0.contains(":400")).map(|x| x.1).sum();
            assert_eq!(c * 100, (c + b) * u64::from(p), "{t}");
            // The other route is untouched.
            assert!(t.contains("server 127.0.0.1:5001 weight=1 max_fails=1 fail_timeout=10s;"));
            assert_eq!(t.matches("# canary").count(), 2);
        }
        let t = shifted_config(CONF, &base, &cand, 100);
        assert!(
            weights(&t)
                .iter()
                .filter(|x| x.0.contains(":400"))
                .all(|x| x.2),
            "{t}"
        );
        assert!(
            weights(&t)
                .iter()
                .filter(|x| x.0.contains(":600"))
                .all(|x| !x.2),
            "{t}"
        );
        assert_eq!(shifted_config(CONF, &base, &cand, 0), CONF);
    }

    #[test]
    fn other_services_in_a_route_keep_their_share() {
        // 127.0.0.1:4001 is the baseline (weight 1); 127.0.0.1:4002 another service (weight 1).
        let base = vec!["127.0.0.1:4001".to_string()];
        let cand = vec!["127.0.0.1:6001".to_string()];
        let t = shifted_config(CONF, &base, &cand, 25);
        let w = weights(&t);
        let get = |a: &str| w.iter().find(|x| x.0 == a).unwrap().1;
        let total = get("127.0.0.1:4001") + get("127.0.0.1:4002") + get("127.0.0.1:6001");
        // The other service keeps half of the route; the candidate gets 25 % of the baseline's half.
        assert_eq!(get("127.0.0.1:4002") * 2, total, "{t}");
        assert_eq!(get("127.0.0.1:6001") * 8, total, "{t}");
        let t = shifted_config(CONF, &base, &cand, 100);
        assert!(
            !t.contains("127.0.0.1:4002 weight=100 max_fails=1 fail_timeout=10s down"),
            "{t}"
        );
        assert!(
            t.contains("server 127.0.0.1:4001")
                && t.lines()
                    .any(|l| l.contains("4001") && l.ends_with("down;")),
            "{t}"
        );
    }
}
