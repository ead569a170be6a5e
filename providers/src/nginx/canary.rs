//! The canary traffic split of a balancer, its actions `canary_weights` and `canary_clear`:
//! candidate servers are added to every upstream of the running balancer that routes to the
//! stable (baseline) servers, with weights that give the candidates `weight` % of that
//! upstream's requests. The config the stack rendered is kept beside (`nginx.conf.stable`) and
//! put back when no candidate is left; every change is checked with `nginx -t` and applied with
//! a graceful reload. Whoever asks (a service's progressive canary, through the engine) knows
//! only addresses; the files are this provider's.
//!
//! A canary interrupted by a crash leaves the shifted config in place, owned by a process that
//! is gone: the provider's sweep puts the stack's config back (`restore_orphaned`); until then
//! the balancer's `read` sees a config that differs from the recorded one (drift).

use pipeline_host::nginx::{check, nginx_bin};
use std::path::{Path, PathBuf};

pub(super) fn server_addr(line: &str) -> Option<&str> {
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
/// config goes back, so nginx never keeps sending traffic to a candidate that no longer runs
/// (or to whatever reuses its port later). Returns the prefixes it put back.
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

/// How many upstreams of `text` route to one of `stable`.
pub(super) fn upstreams_routing_to(text: &str, stable: &[String]) -> usize {
    let mut n = 0;
    let mut inside = false;
    let mut counted = false;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with("upstream ") && t.ends_with('{') {
            (inside, counted) = (true, false);
        } else if inside && t == "}" {
            inside = false;
        } else if inside
            && !counted
            && !l.ends_with("# canary")
            && server_addr(l).is_some_and(|a| stable.iter().any(|s| s == a))
        {
            n += 1;
            counted = true;
        }
    }
    n
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

/// Give the candidates `percent` % of the balancer's (at `prefix`) traffic to the stable
/// servers (0: none: their lines go, and with the last one the stack's config is back). Returns
/// how many upstreams route to the stable servers: 0, and nothing was changed.
pub fn shift(
    prefix: &Path,
    baseline: &[String],
    candidate: &[String],
    percent: u32,
) -> Result<usize, String> {
    // Candidates become server lines of their own: each must be one ADDRESS:PORT token.
    for c in candidate {
        pipeline_engine::format::Format::HostPort
            .check_str(c)
            .map_err(|e| format!("candidate address {c:?} is not ADDRESS:PORT ({e})"))?;
    }
    if percent == 0 || candidate.is_empty() {
        remove(prefix, candidate)?;
        let text = std::fs::read_to_string(conf(prefix)).unwrap_or_default();
        return Ok(upstreams_routing_to(&text, baseline));
    }
    let _lock = ConfLock::take(prefix).map_err(|e| e.to_string())?;
    let st = stable(prefix);
    let source = if st.exists() {
        st.clone()
    } else {
        conf(prefix)
    };
    let text = std::fs::read_to_string(&source).map_err(|e| e.to_string())?;
    let routes = upstreams_routing_to(&text, baseline);
    if routes == 0 {
        return Ok(0);
    }
    if !st.exists() {
        std::fs::copy(conf(prefix), &st).map_err(|e| e.to_string())?;
    }
    std::fs::write(owner(prefix), std::process::id().to_string()).map_err(|e| e.to_string())?;
    write_and_reload(prefix, &shifted_config(&text, baseline, candidate, percent))?;
    Ok(routes)
}

/// Promoted or aborted candidates leave the balancer: their lines are dropped from the shifted
/// config (every candidate's when `candidates` is empty); when no candidate is left the stack's
/// config is back. Returns whether anything changed.
pub fn remove(prefix: &Path, candidates: &[String]) -> Result<bool, String> {
    if !stable(prefix).exists() {
        return Ok(false);
    }
    let _lock = ConfLock::take(prefix).map_err(|e| e.to_string())?;
    let Ok(text) = std::fs::read_to_string(conf(prefix)) else {
        return Ok(false);
    };
    let mine = |l: &str| {
        l.ends_with("# canary")
            && (candidates.is_empty()
                || server_addr(l).is_some_and(|a| candidates.iter().any(|c| c == a)))
    };
    if !text.lines().any(mine) && text.lines().any(|l| l.ends_with("# canary")) {
        return Ok(false);
    }
    let left: Vec<&str> = text.lines().filter(|l| !mine(l)).collect();
    if left.iter().any(|l| l.ends_with("# canary")) {
        let mut s = left.join("\n");
        s.push('\n');
        write_and_reload(prefix, &s)?;
    } else {
        restore(prefix)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_candidate_that_is_not_one_address_cannot_become_a_server_line() {
        let dir = tempfile::tempdir().unwrap();
        let err = shift(
            dir.path(),
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
    fn upstreams_routing_to_the_stable_servers_are_counted_once_each() {
        let base = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(upstreams_routing_to(CONF, &base(&["127.0.0.1:4001"])), 1);
        assert_eq!(
            upstreams_routing_to(CONF, &base(&["127.0.0.1:4001", "127.0.0.1:4002"])),
            1
        );
        assert_eq!(
            upstreams_routing_to(CONF, &base(&["127.0.0.1:4002", "127.0.0.1:5001"])),
            2
        );
        assert_eq!(upstreams_routing_to(CONF, &base(&["127.0.0.1:9"])), 0);
        // A candidate's own line is not a route to it.
        let shifted = shifted_config(
            CONF,
            &base(&["127.0.0.1:5001"]),
            &base(&["127.0.0.1:6001"]),
            5,
        );
        assert_eq!(
            upstreams_routing_to(&shifted, &base(&["127.0.0.1:6001"])),
            0
        );
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
