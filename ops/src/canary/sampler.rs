//! The arms' CPU and memory, sampled with the shared /proc sampler (`pipeline_host::procfs`),
//! over the process trees the arms' providers describe (`MetricSource::Procfs`).

use super::report::ArmUsage;
use pipeline_engine::provider::{Description, ProviderCtx, Registry};
pub(super) use pipeline_host::procfs::ticks_per_sec;
use pipeline_host::procfs::{all_procs, Sampler as TreeSampler};
use pipeline_state::ResourceState;

/// Asks an instance's provider again for its process roots (its main process's tree).
pub(super) type Roots = Box<dyn FnMut(&str, &ResourceState) -> Vec<u32> + Send>;

/// The roots of a description: the trees of its main process (a service's app, not its slot
/// or a canary's candidates).
fn main_roots(d: &Description) -> Vec<u32> {
    let main = d.main().map(|p| p.role.as_str());
    d.procfs_roots()
        .filter(|(role, _)| Some(*role) == main)
        .map(|(_, pid)| pid)
        .collect()
}

/// Roots from the providers' `describe`, on a runtime of the sampler's own (it runs on a thread
/// of its own), made when first needed.
pub(super) fn described_roots(registry: Registry, ctx: ProviderCtx) -> Roots {
    let mut rt: Option<tokio::runtime::Runtime> = None;
    Box::new(move |addr, r| {
        let Some(p) = registry.provider_of(r) else {
            return vec![];
        };
        if rt.is_none() {
            rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok();
        }
        let Some(rt) = &rt else { return vec![] };
        rt.block_on(p.describe(&ctx, &r.kind, addr, &r.attrs))
            .map(|d| main_roots(&d))
            .unwrap_or_default()
    })
}

/// One replica of an arm and the roots its provider last described.
pub(super) struct Instance {
    addr: String,
    record: ResourceState,
    roots: Vec<u32>,
}

impl Instance {
    pub(super) fn new(addr: &str, record: &ResourceState, d: &Description) -> Instance {
        Instance {
            addr: addr.to_string(),
            record: record.clone(),
            roots: main_roots(d),
        }
    }
}

/// Samples the app processes of each arm: every replica's main process (as its provider
/// describes it) and all its descendants. A replica whose process is gone (restarted, crashed)
/// is described again.
pub(super) struct Sampler {
    /// [baseline, candidate].
    instances: [Vec<Instance>; 2],
    roots: Roots,
    arms: [TreeSampler; 2],
}

impl Sampler {
    pub(super) fn new(instances: [Vec<Instance>; 2], roots: Roots) -> Sampler {
        Sampler {
            instances,
            roots,
            arms: Default::default(),
        }
    }

    /// One sample of both arms: [baseline, candidate], from one walk of /proc.
    pub(super) fn sample(&mut self) -> [ArmUsage; 2] {
        let mut procs = all_procs();
        let mut asked = false;
        for i in self.instances.iter_mut().flatten() {
            if i.roots.is_empty() || i.roots.iter().any(|p| !procs.contains_key(p)) {
                i.roots = (self.roots)(&i.addr, &i.record);
                asked = true;
            }
        }
        if asked {
            // The new roots may have started after the walk.
            procs = all_procs();
        }
        let mut out = [ArmUsage::default(); 2];
        for (i, usage) in out.iter_mut().enumerate() {
            let roots: Vec<u32> = self.instances[i]
                .iter()
                .flat_map(|inst| inst.roots.iter().copied())
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
    use pipeline_engine::provider::{MetricSource, ProcessInfo};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn record() -> ResourceState {
        ResourceState {
            kind: "service".into(),
            provider: "local".into(),
            status: pipeline_state::Status::Ready,
            attrs: Default::default(),
            sensitive: vec![],
            deps: vec![],
        }
    }

    /// What a provider describes for a replica whose app is `pid` (beside a slot process that
    /// the sampler must leave out).
    fn described(pid: u32) -> Description {
        let proc = |role: &str, pid: u32| ProcessInfo {
            role: role.into(),
            pid: Some(pid),
            running: true,
            ..Default::default()
        };
        let root = |role: &str, pid: u32| MetricSource::Procfs {
            role: role.into(),
            pid,
            host: None,
        };
        Description {
            processes: vec![proc("app", pid), proc("slot", std::process::id())],
            metrics: vec![root("app", pid), root("slot", std::process::id())],
            ..Default::default()
        }
    }

    #[test]
    fn a_replica_whose_process_is_gone_is_described_again() {
        let spawn = || {
            Command::new("sleep")
                .arg("30")
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        };
        let (mut first, mut second) = (spawn(), spawn());
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let next = second.id();
        let roots: Roots = {
            let asked = asked.clone();
            Box::new(move |addr, _| {
                asked.lock().unwrap().push(addr.to_string());
                main_roots(&described(next))
            })
        };
        let inst = Instance::new("service.candidate[0]", &record(), &described(first.id()));
        let mut s = Sampler::new([vec![], vec![inst]], roots);
        let before = s.sample();
        assert_eq!(
            before[1].processes, 1,
            "the app only, not the slot: {before:?}"
        );
        assert!(
            asked.lock().unwrap().is_empty(),
            "its process runs: not asked again"
        );
        // The app restarts: a new process.
        let _ = first.kill();
        let _ = first.wait();
        let after = s.sample();
        let _ = second.kill();
        let _ = second.wait();
        assert_eq!(*asked.lock().unwrap(), ["service.candidate[0]"]);
        assert_eq!(
            after[1].processes, 1,
            "the new process is sampled: {after:?}"
        );
        assert_eq!(after[0], ArmUsage::default());
    }

    #[test]
    fn the_sampler_counts_an_arm_s_process_tree() {
        // The supervisor's child waits; its own child burns a core.
        let mut child = Command::new("sh")
            .args(["-c", "sh -c 'while :; do :; done' & wait"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let inst = Instance::new("service.baseline[0]", &record(), &described(child.id()));
        let mut s = Sampler::new([vec![inst], vec![]], Box::new(|_, _| vec![]));
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
