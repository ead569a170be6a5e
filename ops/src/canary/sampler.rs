//! The arms' CPU and memory, sampled with the shared /proc sampler (`pipeline_host::procfs`).

use super::report::ArmUsage;
pub(super) use pipeline_host::procfs::ticks_per_sec;
use pipeline_host::procfs::{all_procs, Sampler as TreeSampler};
use std::path::{Path, PathBuf};

/// Samples the app processes of each arm: every replica's active generation under the canary
/// workspace (`run/<instance>/gen-N/`), i.e. its supervisor's child and all its descendants.
pub(super) struct Sampler {
    /// Generation directories: [baseline, candidate].
    dirs: [Vec<PathBuf>; 2],
    arms: [TreeSampler; 2],
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
        Sampler::of(dirs)
    }

    fn of(dirs: [Vec<PathBuf>; 2]) -> Sampler {
        Sampler {
            dirs,
            arms: Default::default(),
        }
    }

    /// One sample of both arms: [baseline, candidate], from one walk of /proc.
    pub(super) fn sample(&mut self) -> [ArmUsage; 2] {
        let procs = all_procs();
        let mut out = [ArmUsage::default(); 2];
        for (i, usage) in out.iter_mut().enumerate() {
            let roots: Vec<u32> = self.dirs[i]
                .iter()
                .filter_map(|d| pipeline_supervise::StatusFile::read(d)?.child_pid)
                .filter(|p| procs.contains_key(p))
                .collect();
            let u = self.arms[i].sample(&roots, &procs);
            usage.processes = u.processes;
            usage.rss_mib = u.rss_bytes.map(|b| b as f64 / (1024.0 * 1024.0));
            usage.cpu_pct = u.cpu_ratio.map(|r| 100.0 * r);
        }
        out
    }
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
        let mut s = Sampler::of([vec![dir.path().to_path_buf()], vec![]]);
        std::thread::sleep(Duration::from_millis(200));
        let first = s.sample();
        std::thread::sleep(Duration::from_millis(500));
        let second = s.sample();
        let busy = pipeline_host::procfs::family(&[child.id()], &all_procs());
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
        // A busy loop gets most of a core on a quiet machine but a tenth or less while a whole
        // test suite runs on 2 cores (16 % was measured): it shows up, and never above two cores.
        assert!(cpu > 2.0 && cpu < 210.0, "{cpu}");
        assert!(second[0].rss_mib.unwrap() > 0.1, "{second:?}");
        assert_eq!(
            second[1],
            ArmUsage::default(),
            "an arm without processes has no figures"
        );
    }
}
