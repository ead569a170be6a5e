//! The arms' CPU and memory from /proc (moved here with the canary; a shared procfs sampler
//! is to replace it).

use super::report::ArmUsage;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Samples the app processes of each arm: every replica's active generation under the canary
/// workspace (`run/<instance>/gen-N/`), i.e. its supervisor's child and all its descendants.
pub(super) struct Sampler {
    /// Generation directories: [baseline, candidate].
    dirs: [Vec<PathBuf>; 2],
    /// utime + stime (clock ticks) per pid at the previous sample, per arm.
    prev: [BTreeMap<u32, u64>; 2],
    prev_at: Option<Instant>,
    ticks_per_sec: f64,
    page_bytes: f64,
}

impl Sampler {
    pub(super) fn new(dir: &Path, st: &pipeline_state::State) -> Sampler {
        let mut dirs: [Vec<PathBuf>; 2] = Default::default();
        for (addr, r) in &st.resources {
            let i = if addr.starts_with("service.baseline") {
                0
            } else if addr.starts_with("service.candidate") {
                1
            } else {
                continue;
            };
            let generation = r.attrs.get("generation").and_then(|g| g.as_u64());
            dirs[i].push(pipeline_providers::local::generation_dir(
                dir, addr, generation,
            ));
        }
        // SAFETY: sysconf only reads configuration values.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Sampler {
            dirs,
            prev: Default::default(),
            prev_at: None,
            ticks_per_sec: ticks_per_sec(),
            page_bytes: if page > 0 { page as f64 } else { 4096.0 },
        }
    }

    /// One sample of both arms: [baseline, candidate].
    pub(super) fn sample(&mut self) -> [ArmUsage; 2] {
        let procs = all_procs();
        let now = Instant::now();
        let dt = self.prev_at.map(|t| now.duration_since(t).as_secs_f64());
        self.prev_at = Some(now);
        let mut out = [ArmUsage::default(); 2];
        for (i, usage) in out.iter_mut().enumerate() {
            let roots: Vec<u32> = self.dirs[i]
                .iter()
                .filter_map(|d| pipeline_supervise::StatusFile::read(d)?.child_pid)
                .filter(|p| procs.contains_key(p))
                .collect();
            let family = descendants(&roots, &procs);
            let mut ticks = BTreeMap::new();
            let mut delta = 0u64;
            let mut rss = 0f64;
            for pid in &family {
                let t = procs[pid].1;
                // A process new since the last sample spent all its time since then.
                delta += t.saturating_sub(self.prev[i].get(pid).copied().unwrap_or(0));
                ticks.insert(*pid, t);
                rss += statm_resident_pages(*pid) * self.page_bytes;
            }
            usage.processes = family.len() as u32;
            if !family.is_empty() {
                usage.rss_mib = Some(rss / (1024.0 * 1024.0));
                usage.cpu_pct = dt
                    .filter(|d| *d > 0.0)
                    .map(|d| 100.0 * delta as f64 / self.ticks_per_sec / d);
            }
            self.prev[i] = ticks;
        }
        out
    }
}

/// pid -> (ppid, utime + stime in clock ticks) of every process.
/// Clock ticks per second, the unit of CPU times in /proc.
pub(super) fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

fn all_procs() -> BTreeMap<u32, (u32, u64)> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses; field n is f[n-3].
        let Some(rest) = text.rfind(')').map(|i| &text[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
        if let (Some(ppid), Some(ut), Some(st)) = (num(1), num(11), num(12)) {
            out.insert(pid, (ppid as u32, ut + st));
        }
    }
    out
}

/// The roots and all their descendants (by parent pid).
fn descendants(roots: &[u32], procs: &BTreeMap<u32, (u32, u64)>) -> Vec<u32> {
    let mut set: std::collections::BTreeSet<u32> = roots.iter().copied().collect();
    loop {
        let before = set.len();
        for (&pid, &(ppid, _)) in procs {
            if set.contains(&ppid) {
                set.insert(pid);
            }
        }
        if set.len() == before {
            return set.into_iter().collect();
        }
    }
}

fn statm_resident_pages(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_sampler_counts_an_arm_s_process_tree() {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        // The supervisor's child waits; its own child burns a core.
        let mut child = Command::new("sh")
            .args(["-c", "sh -c 'while :; do :; done' & wait"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::fs::write(
            dir.path().join(pipeline_supervise::STATUS_FILE),
            format!("{{\"child_pid\": {}}}", child.id()),
        )
        .unwrap();
        let mut s = Sampler {
            dirs: [vec![dir.path().to_path_buf()], vec![]],
            prev: Default::default(),
            prev_at: None,
            ticks_per_sec: 100.0,
            page_bytes: 4096.0,
        };
        std::thread::sleep(Duration::from_millis(200));
        let first = s.sample();
        std::thread::sleep(Duration::from_millis(500));
        let second = s.sample();
        let busy = descendants(&[child.id()], &all_procs());
        let _ = Command::new("kill")
            .arg("-9")
            .args(busy.iter().map(|p| p.to_string()))
            .status();
        let _ = child.wait();
        assert_eq!(
            first[0].cpu_pct, None,
            "no interval before the first sample"
        );
        assert_eq!(second[0].processes, 2, "{second:?}");
        let cpu = second[0].cpu_pct.unwrap();
        eprintln!(
            "a busy loop measured {cpu:.0} % of a core, {:?} MiB",
            second[0].rss_mib
        );
        // A busy loop on a shared 2-core machine: most of one core, never more than two.
        assert!(cpu > 30.0 && cpu < 210.0, "{cpu}");
        assert!(second[0].rss_mib.unwrap() > 0.1, "{second:?}");
        assert_eq!(
            second[1],
            ArmUsage::default(),
            "an arm without processes has no figures"
        );
    }
}
