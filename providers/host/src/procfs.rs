//! Sampling processes in /proc: the tree under a root pid, its CPU time and memory.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Instant;

/// What one `/proc/PID/stat` line says that sampling needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcStat {
    pub ppid: u32,
    pub pgrp: u32,
    /// utime + stime, in clock ticks.
    pub ticks: u64,
}

pub fn parse_stat(text: &str) -> Option<ProcStat> {
    // `pid (comm) state ppid pgrp ...`; comm may contain spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] = state (field 3), so field n is f[n - 3].
    Some(ProcStat {
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    })
}

/// Every process under `root` (`/proc`, or another mount of it): pid → its stat.
pub fn all_procs_in(root: &Path) -> HashMap<u32, ProcStat> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir(root) else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(st) = std::fs::read_to_string(root.join(pid.to_string()).join("stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            out.insert(pid, st);
        }
    }
    out
}

/// Every process of this machine.
pub fn all_procs() -> HashMap<u32, ProcStat> {
    all_procs_in(Path::new("/proc"))
}

/// Resident memory of a process, bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Clock ticks per second (utime and stime are in these).
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// The roots that exist, every process in their process groups and all their descendants.
pub fn family(roots: &[u32], procs: &HashMap<u32, ProcStat>) -> Vec<u32> {
    let mut set: BTreeSet<u32> = roots
        .iter()
        .copied()
        .filter(|p| procs.contains_key(p))
        .collect();
    if set.is_empty() {
        return vec![];
    }
    for (&pid, st) in procs {
        if set.contains(&st.pgrp) {
            set.insert(pid);
        }
    }
    loop {
        let before = set.len();
        for (&pid, st) in procs {
            if set.contains(&st.ppid) {
                set.insert(pid);
            }
        }
        if set.len() == before {
            break;
        }
    }
    set.into_iter().collect()
}

/// One sample of a process tree.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub processes: u32,
    /// CPU seconds per second since the previous sample (1.0 = one core); None on the first
    /// sample or when nothing runs.
    pub cpu_ratio: Option<f64>,
    /// Summed resident memory; None when nothing runs.
    pub rss_bytes: Option<u64>,
}

/// Samples one set of process trees again and again: CPU is the ticks its processes spent
/// since the previous sample (a process new since then counts all of its time).
#[derive(Default)]
pub struct Sampler {
    prev: HashMap<u32, u64>,
    prev_at: Option<Instant>,
}

impl Sampler {
    /// Sample the trees under `roots` from a snapshot of every process (`all_procs`), so that
    /// several samplers (a canary's two arms) share one walk of /proc.
    pub fn sample(&mut self, roots: &[u32], procs: &HashMap<u32, ProcStat>) -> Usage {
        let now = Instant::now();
        let dt = self.prev_at.map(|t| now.duration_since(t).as_secs_f64());
        self.prev_at = Some(now);
        let pids = family(roots, procs);
        let mut ticks = HashMap::new();
        let mut delta = 0u64;
        let mut rss = 0u64;
        for pid in &pids {
            let t = procs[pid].ticks;
            delta += t.saturating_sub(self.prev.get(pid).copied().unwrap_or(0));
            ticks.insert(*pid, t);
            rss += rss_bytes(*pid).unwrap_or(0);
        }
        let first = self.prev.is_empty();
        self.prev = ticks;
        if pids.is_empty() {
            return Usage::default();
        }
        Usage {
            processes: pids.len() as u32,
            cpu_ratio: dt
                .filter(|d| *d > 0.0 && !first)
                .map(|d| delta as f64 / ticks_per_sec() / d),
            rss_bytes: Some(rss),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_odd_command_names() {
        let s = "42 (my (odd) prog) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 100 1000 50";
        let st = parse_stat(s).unwrap();
        assert_eq!((st.ppid, st.pgrp, st.ticks), (1, 42, 10));
    }

    #[test]
    fn family_takes_descendants_and_the_group() {
        let p = |ppid, pgrp| ProcStat {
            ppid,
            pgrp,
            ticks: 0,
        };
        let procs: HashMap<u32, ProcStat> = [
            (10, p(1, 10)),
            (11, p(10, 10)),
            (12, p(11, 10)),
            (13, p(1, 10)), // reparented, still in the group
            (20, p(1, 20)),
        ]
        .into();
        assert_eq!(family(&[10], &procs), vec![10, 11, 12, 13]);
        assert!(family(&[99], &procs).is_empty());
    }

    #[test]
    fn this_process_is_sampled() {
        let me = std::process::id();
        let mut s = Sampler::default();
        let u = s.sample(&[me], &all_procs());
        assert!(u.processes >= 1, "{u:?}");
        assert!(u.rss_bytes.unwrap() > 0, "{u:?}");
        assert_eq!(u.cpu_ratio, None, "no rate from one sample");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let u = s.sample(&[me], &all_procs());
        assert!(u.cpu_ratio.is_some(), "{u:?}");
    }
}
