//! CPU and memory of other machines and of the systemd units that run instances on them
//! (`MetricSource::RemoteUsage`): one command per host per sample, over the host's ssh
//! connection, printing the host's /proc figures and each unit's. CPU is a rate, so a figure
//! needs two samples; a host that does not answer (in [`TIMEOUT`]) shows as unknown, never 0.
//!
//! A unit's figures come from its cgroup when the host has cgroup v2 with accounting
//! (`cpu.stat` usage_usec, `memory.current`: page cache included); otherwise (cgroup v1, as in
//! the lab's podman hosts, where the per-unit controllers are not there) from the processes of
//! its cgroup in systemd's own hierarchy: CPU ticks of each process, resident memory, as the
//! local /proc sampling counts them.
//!
//! A host's figures are what its /proc says: in a container without a /proc of its own (the
//! lab's podman hosts) that is the whole machine's CPU and memory, shared by every lab host.

use pipeline_engine::provider::{Description, MetricSource, ProcessInfo};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::time::{Duration, Instant};

/// A host is asked at most this often.
pub const PERIOD: Duration = Duration::from_secs(1);
/// How long one sample may take; the command is killed after it (the host is unknown then).
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// What runs on the host, with the unit names as its arguments. Prints, one a line: `uptime S`,
/// the `cpu` line of /proc/stat, `cpus N`, MemTotal and MemAvailable of /proc/meminfo,
/// `clk TICKS PAGESIZE`, then per unit `cgroup UNIT USAGE_USEC MEMORY_BYTES`, or `unit UNIT`
/// and `proc UNIT PID TICKS RSS_PAGES` per process, or `none UNIT` (not running).
const SCRIPT: &str = r#"read up _ < /proc/uptime
echo "uptime $up"
head -n 1 /proc/stat
echo "cpus $(grep -c '^cpu[0-9]' /proc/stat)"
grep -E '^(MemTotal|MemAvailable):' /proc/meminfo
echo "clk $(getconf CLK_TCK) $(getconf PAGESIZE)"
for u in "$@"; do
  cg=$(systemctl show -p ControlGroup --value "$u" 2>/dev/null)
  if [ -z "$cg" ]; then echo "none $u"; continue; fi
  d=/sys/fs/cgroup$cg
  if [ -r "$d/cpu.stat" ] && [ -r "$d/memory.current" ]; then
    echo "cgroup $u $(sed -n 's/^usage_usec //p' "$d/cpu.stat") $(cat "$d/memory.current")"
    continue
  fi
  f=
  for c in "$d/cgroup.procs" "/sys/fs/cgroup/systemd$cg/cgroup.procs" "/sys/fs/cgroup/unified$cg/cgroup.procs"; do
    if [ -r "$c" ]; then f=$c; break; fi
  done
  if [ -z "$f" ]; then echo "none $u"; continue; fi
  echo "unit $u"
  for p in $(cat "$f"); do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    m=$(cat "/proc/$p/statm" 2>/dev/null) || continue
    s=${s##*) }
    set -- $s
    t=$((${12} + ${13}))
    set -- $m
    echo "proc $u $p $t $2"
  done
done"#;

/// Whether `u` may be sent as a unit name: what systemd allows in one, nothing a shell reads.
fn unit_ok(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 255
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c))
}

/// The command line appended to a host's `argv` (ssh joins its last words into one line for
/// the remote shell): every word quoted; unit names that could not be one are left out.
pub fn command(units: &BTreeSet<String>) -> String {
    let mut line = format!(
        "timeout {} sh -c {} pipeline-usage",
        TIMEOUT.as_secs(),
        crate::quote::shell(SCRIPT)
    );
    for u in units.iter().filter(|u| unit_ok(u)) {
        line.push(' ');
        line.push_str(&crate::quote::shell(u));
    }
    line
}

// ------------------------------------------------------------------------------------------------
// One sample, parsed.

#[derive(Clone, Debug, PartialEq)]
pub enum UnitSample {
    /// Not running (no cgroup).
    Gone,
    Cgroup {
        usage_usec: u64,
        memory_bytes: u64,
    },
    /// Per process: (CPU ticks, resident pages).
    Procs(BTreeMap<u32, (u64, u64)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The host's /proc/uptime: the clock the rates are over (ssh's delays do not count).
    pub uptime: f64,
    /// Jiffies of all CPUs: busy (all but idle and iowait), and in all.
    pub cpu_busy: u64,
    pub cpu_total: u64,
    pub cpus: u32,
    pub memory_total: u64,
    pub memory_available: u64,
    pub clk_tck: u64,
    pub page_size: u64,
    pub units: BTreeMap<String, UnitSample>,
}

fn num<T: std::str::FromStr>(s: Option<&str>, what: &str) -> Result<T, String> {
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad {what} in the usage sample"))
}

/// Parses what [`SCRIPT`] printed.
pub fn parse(text: &str) -> Result<Sample, String> {
    let (mut uptime, mut cpu, mut cpus, mut total, mut avail, mut clk) =
        (None, None, None, None, None, None);
    let mut units = BTreeMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("uptime") => uptime = Some(num::<f64>(w.next(), "uptime")?),
            Some("cpu") => {
                // user nice system idle iowait irq softirq steal (guest time is in user already).
                let f: Vec<u64> = w.take(8).map(|x| x.parse().unwrap_or(0)).collect();
                if f.len() < 4 {
                    return Err("bad cpu line in the usage sample".into());
                }
                let all: u64 = f.iter().sum();
                let idle = f[3] + f.get(4).copied().unwrap_or(0);
                cpu = Some((all - idle, all));
            }
            Some("cpus") => cpus = Some(num::<u32>(w.next(), "cpus")?),
            Some("MemTotal:") => total = Some(num::<u64>(w.next(), "MemTotal")? * 1024),
            Some("MemAvailable:") => avail = Some(num::<u64>(w.next(), "MemAvailable")? * 1024),
            Some("clk") => {
                clk = Some((
                    num::<u64>(w.next(), "CLK_TCK")?,
                    num::<u64>(w.next(), "PAGESIZE")?,
                ))
            }
            Some("none") => {
                units.insert(num::<String>(w.next(), "unit")?, UnitSample::Gone);
            }
            Some("cgroup") => {
                let u: String = num(w.next(), "unit")?;
                let usage_usec = num(w.next(), "usage_usec")?;
                let memory_bytes = num(w.next(), "memory.current")?;
                units.insert(
                    u,
                    UnitSample::Cgroup {
                        usage_usec,
                        memory_bytes,
                    },
                );
            }
            Some("unit") => {
                units.insert(
                    num::<String>(w.next(), "unit")?,
                    UnitSample::Procs(BTreeMap::new()),
                );
            }
            Some("proc") => {
                let u: String = num(w.next(), "unit")?;
                let pid = num(w.next(), "pid")?;
                let ticks = num(w.next(), "ticks")?;
                let pages = num(w.next(), "rss")?;
                if let Some(UnitSample::Procs(p)) = units.get_mut(&u) {
                    p.insert(pid, (ticks, pages));
                }
            }
            _ => {}
        }
    }
    let missing = |what: &str| format!("no {what} in the usage sample");
    let (cpu_busy, cpu_total) = cpu.ok_or_else(|| missing("cpu line"))?;
    let (clk_tck, page_size) = clk.ok_or_else(|| missing("clk line"))?;
    Ok(Sample {
        uptime: uptime.ok_or_else(|| missing("uptime"))?,
        cpu_busy,
        cpu_total,
        cpus: cpus.ok_or_else(|| missing("cpus"))?,
        memory_total: total.ok_or_else(|| missing("MemTotal"))?,
        memory_available: avail.ok_or_else(|| missing("MemAvailable"))?,
        clk_tck: clk_tck.max(1),
        page_size,
        units,
    })
}

// ------------------------------------------------------------------------------------------------
// Figures, from two samples.

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostFigures {
    /// CPU seconds per second used on the whole host (1.0 = one core); None on the first sample.
    pub cpu_ratio: Option<f64>,
    pub cpus: u32,
    /// MemTotal − MemAvailable.
    pub memory_bytes: u64,
    pub memory_total_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct UnitFigures {
    /// CPU seconds per second (1.0 = one core); None on a unit's first sample.
    pub cpu_ratio: Option<f64>,
    pub memory_bytes: u64,
}

/// The host's figures and each running unit's, from `cur` and the sample before it.
pub fn figures(
    prev: Option<&Sample>,
    cur: &Sample,
) -> (HostFigures, BTreeMap<String, UnitFigures>) {
    let elapsed = prev.map(|p| cur.uptime - p.uptime).filter(|e| *e > 0.0);
    let host_cpu = prev.and_then(|p| {
        let total = cur.cpu_total.checked_sub(p.cpu_total).filter(|t| *t > 0)?;
        let busy = cur.cpu_busy.saturating_sub(p.cpu_busy);
        Some(busy as f64 / total as f64 * cur.cpus.max(1) as f64)
    });
    let host = HostFigures {
        cpu_ratio: host_cpu,
        cpus: cur.cpus,
        memory_bytes: cur.memory_total.saturating_sub(cur.memory_available),
        memory_total_bytes: cur.memory_total,
    };
    let mut units = BTreeMap::new();
    for (name, u) in &cur.units {
        let before = prev.and_then(|p| p.units.get(name));
        let f = match u {
            UnitSample::Gone => continue,
            UnitSample::Cgroup {
                usage_usec,
                memory_bytes,
            } => UnitFigures {
                cpu_ratio: match (before, elapsed) {
                    (Some(UnitSample::Cgroup { usage_usec: b, .. }), Some(e)) => {
                        Some(usage_usec.saturating_sub(*b) as f64 / 1e6 / e)
                    }
                    _ => None,
                },
                memory_bytes: *memory_bytes,
            },
            UnitSample::Procs(procs) => {
                // Per process, as the local sampling counts: a process new since the last
                // sample counts from now on.
                let cpu = match (before, elapsed) {
                    (Some(UnitSample::Procs(b)), Some(e)) => {
                        let ticks: u64 = procs
                            .iter()
                            .filter_map(|(pid, (t, _))| Some(t.saturating_sub(b.get(pid)?.0)))
                            .sum();
                        Some(ticks as f64 / cur.clk_tck as f64 / e)
                    }
                    _ => None,
                };
                UnitFigures {
                    cpu_ratio: cpu,
                    memory_bytes: procs.values().map(|(_, r)| r * cur.page_size).sum(),
                }
            }
        };
        units.insert(name.clone(), f);
    }
    (host, units)
}

// ------------------------------------------------------------------------------------------------
// Sampling: one command per host at a time, at most once a PERIOD, never waited for.

/// Runs `argv` with `line` appended; its standard output, or why there is none. Killed (its
/// process group) after TIMEOUT.
fn run(argv: &[String], line: &str) -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    let (prog, args) = argv.split_first().ok_or("no command")?;
    let mut child = Command::new(prog)
        .args(args)
        .arg(line)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // An ssh master started by this call keeps its stderr: never wait for it.
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    let mut out = child.stdout.take().ok_or("no output pipe")?;
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                // SAFETY: kill of the process group this function started.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!("no answer within {} s", TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    };
    let text = rx
        .recv_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(200)),
        )
        .map_err(|_| "its output did not end".to_string())?;
    if !status.success() {
        return Err(format!("the usage command failed ({status})"));
    }
    Ok(text)
}

/// What the monitor knows of one host.
#[derive(Default)]
struct HostState {
    argv: Vec<String>,
    units: BTreeSet<String>,
    running: Option<Receiver<Result<String, String>>>,
    started: Option<Instant>,
    prev: Option<Sample>,
    host: Option<HostFigures>,
    unit: BTreeMap<String, UnitFigures>,
    error: Option<String>,
}

/// The hosts sampled, by name: their command, their last figures.
#[derive(Default)]
pub struct RemoteUsage {
    hosts: BTreeMap<String, HostState>,
}

/// One host's figures as the dashboard shows them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostView {
    pub figures: Option<HostFigures>,
    pub error: Option<String>,
}

impl RemoteUsage {
    /// The hosts to sample: name → (argv, units). Others are forgotten (a command of theirs
    /// still running ends by its TIMEOUT).
    pub fn set_hosts(&mut self, hosts: BTreeMap<String, (Vec<String>, BTreeSet<String>)>) {
        self.hosts.retain(|h, _| hosts.contains_key(h));
        for (name, (argv, units)) in hosts {
            let h = self.hosts.entry(name).or_default();
            h.argv = argv;
            h.units = units;
        }
    }

    /// Takes the answers that came, and starts a sample of every host that is due and has none
    /// running.
    pub fn poll(&mut self) {
        for h in self.hosts.values_mut() {
            if let Some(rx) = &h.running {
                let answer = match rx.try_recv() {
                    Ok(a) => Some(a),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => Some(Err("the sampler stopped".into())),
                };
                if let Some(a) = answer {
                    h.running = None;
                    match a.and_then(|t| parse(&t)) {
                        Ok(s) => {
                            let (host, unit) = figures(h.prev.as_ref(), &s);
                            (h.host, h.unit, h.error) = (Some(host), unit, None);
                            h.prev = Some(s);
                        }
                        Err(e) => {
                            // Unknown, not 0; the next answer starts the rates afresh.
                            (h.host, h.error, h.prev) = (None, Some(e), None);
                            h.unit.clear();
                        }
                    }
                }
            }
            let due = h.started.is_none_or(|t| t.elapsed() >= PERIOD);
            if h.running.is_none() && due && !h.argv.is_empty() {
                let (tx, rx) = channel();
                let (argv, line) = (h.argv.clone(), command(&h.units));
                let spawned = std::thread::Builder::new()
                    .name("usage".into())
                    .spawn(move || {
                        let _ = tx.send(run(&argv, &line));
                    });
                if spawned.is_ok() {
                    h.running = Some(rx);
                    h.started = Some(Instant::now());
                }
            }
        }
    }

    pub fn unit(&self, host: &str, unit: &str) -> Option<&UnitFigures> {
        self.hosts.get(host)?.unit.get(unit)
    }

    /// (CPU, memory) of an instance's processes on other hosts, summed: None when it has none
    /// there or one of them is unknown; CPU None until every one has two samples.
    pub fn of(&self, processes: &[ProcessInfo]) -> Option<(Option<f64>, u64)> {
        let mut remote = processes
            .iter()
            .filter_map(|p| Some((p.host.as_deref()?, p.unit.as_deref()?)))
            .peekable();
        remote.peek()?;
        let (mut cpu, mut mem) = (Some(0.0), 0);
        for (h, u) in remote {
            let f = self.unit(h, u)?;
            cpu = cpu.zip(f.cpu_ratio).map(|(a, b)| a + b);
            mem += f.memory_bytes;
        }
        Some((cpu, mem))
    }

    /// Every host sampled, by name.
    pub fn hosts(&self) -> impl Iterator<Item = (&String, HostView)> {
        self.hosts.iter().map(|(n, h)| {
            (
                n,
                HostView {
                    figures: h.host.clone(),
                    error: h.error.clone(),
                },
            )
        })
    }
}

/// The hosts to sample: every host a description names in a `RemoteUsage` (its command: the
/// first one named), with the units of `processes` (the watched replicas') on it.
pub fn wanted<'a>(
    described: impl Iterator<Item = &'a Description>,
    processes: impl Iterator<Item = &'a ProcessInfo>,
) -> BTreeMap<String, (Vec<String>, BTreeSet<String>)> {
    let mut argv: BTreeMap<&str, &Vec<String>> = BTreeMap::new();
    for d in described {
        for m in &d.metrics {
            if let MetricSource::RemoteUsage { host, argv: a, .. } = m {
                argv.entry(host.as_str()).or_insert(a);
            }
        }
    }
    let mut out: BTreeMap<String, (Vec<String>, BTreeSet<String>)> = argv
        .iter()
        .map(|(h, a)| (h.to_string(), ((*a).clone(), BTreeSet::new())))
        .collect();
    for p in processes {
        let (Some(h), Some(u)) = (p.host.as_deref(), p.unit.as_deref()) else {
            continue;
        };
        if let Some(e) = out.get_mut(h) {
            e.1.insert(u.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from a lab host (Debian 12 in podman, cgroup v1: units by their processes),
    /// the second sample one second later, and a cgroup v2 unit written beside them.
    const FIRST: &str = "uptime 5123.40
cpu  31232 0 7652 96112 675 0 140 18 0 0
cpus 2
MemTotal:       24683664 kB
MemAvailable:   23406112 kB
clk 100 4096
unit pipeline-app-0.service
proc pipeline-app-0.service 44 120 2500
proc pipeline-app-0.service 45 10 300
cgroup pipeline-v2-0.service 5000000 10485760
none pipeline-app-1.service
";
    const SECOND: &str = "uptime 5124.40
cpu  31332 0 7702 96162 675 0 140 18 0 0
cpus 2
MemTotal:       24683664 kB
MemAvailable:   23306112 kB
clk 100 4096
unit pipeline-app-0.service
proc pipeline-app-0.service 44 170 2600
proc pipeline-app-0.service 46 7 100
cgroup pipeline-v2-0.service 5250000 11534336
unit pipeline-app-1.service
";

    #[test]
    fn a_sample_parses_into_host_and_unit_figures() {
        let a = parse(FIRST).unwrap();
        assert_eq!(a.cpus, 2);
        assert_eq!(a.cpu_total, 31232 + 7652 + 96112 + 675 + 140 + 18);
        assert_eq!(a.cpu_busy, 31232 + 7652 + 140 + 18);
        assert_eq!(a.memory_total, 24683664 * 1024);
        assert_eq!(a.units["pipeline-app-1.service"], UnitSample::Gone);
        let (host, units) = figures(None, &a);
        // One sample: memory is known, CPU (a rate) is not.
        assert_eq!(host.cpu_ratio, None);
        assert_eq!(host.memory_bytes, (24683664 - 23406112) * 1024);
        assert_eq!(units["pipeline-app-0.service"].memory_bytes, 2800 * 4096);
        assert_eq!(units["pipeline-app-0.service"].cpu_ratio, None);
        assert!(!units.contains_key("pipeline-app-1.service"));

        let b = parse(SECOND).unwrap();
        let (host, units) = figures(Some(&a), &b);
        // 150 busy jiffies of 200 on 2 CPUs: 1.5 cores.
        assert!((host.cpu_ratio.unwrap() - 1.5).abs() < 1e-9, "{host:?}");
        assert_eq!(host.memory_bytes, (24683664 - 23306112) * 1024);
        // pid 44: 50 ticks in 1 s at 100 a second; 45 gone, 46 new (counts from now on).
        let app = &units["pipeline-app-0.service"];
        assert!((app.cpu_ratio.unwrap() - 0.5).abs() < 1e-9, "{app:?}");
        assert_eq!(app.memory_bytes, 2700 * 4096);
        let v2 = &units["pipeline-v2-0.service"];
        assert!((v2.cpu_ratio.unwrap() - 0.25).abs() < 1e-9, "{v2:?}");
        assert_eq!(v2.memory_bytes, 11534336);
        // Running now, not before: its memory is known, its CPU not yet.
        let one = &units["pipeline-app-1.service"];
        assert_eq!((one.cpu_ratio, one.memory_bytes), (None, 0));
    }

    #[test]
    fn what_is_not_a_sample_is_an_error() {
        assert!(parse("").unwrap_err().contains("no cpu line"));
        assert!(parse("sh: 1: getconf: not found\n").is_err());
        let no_mem = FIRST.replace("MemAvailable", "Buffers");
        assert!(parse(&no_mem).unwrap_err().contains("MemAvailable"));
        assert!(parse(&FIRST.replace("cpus 2", "cpus x")).is_err());
    }

    #[test]
    fn unit_names_are_quoted_and_odd_ones_never_sent() {
        let units: BTreeSet<String> = ["pipeline-web-0.service", "x; rm -rf /", "a'b"]
            .into_iter()
            .map(String::from)
            .collect();
        let line = command(&units);
        assert!(line.starts_with("timeout 3 sh -c '"), "{line}");
        assert!(
            line.ends_with("' pipeline-usage pipeline-web-0.service"),
            "{line}"
        );
        assert!(!line.contains("rm -rf"));
    }

    #[test]
    fn the_script_runs_here_and_its_output_parses() {
        // This machine has /proc and a shell: the script's host part is real output. A unit
        // that does not exist is `none` (or missing where systemctl is not installed).
        let out = Command::new("sh")
            .args([
                "-c",
                SCRIPT,
                "pipeline-usage",
                "pipeline-no-such-unit.service",
            ])
            .output()
            .unwrap();
        let s = parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert!(s.cpus >= 1 && s.memory_total > s.memory_available, "{s:?}");
        assert!(s.uptime > 0.0 && s.cpu_total > 0);
        assert!(!matches!(
            s.units.get("pipeline-no-such-unit.service"),
            Some(UnitSample::Procs(_) | UnitSample::Cgroup { .. })
        ));
    }

    #[test]
    fn every_named_host_is_sampled_with_the_units_of_the_watched_replicas_only() {
        let usage = |host: &str, units: &[&str]| MetricSource::RemoteUsage {
            host: host.into(),
            argv: vec!["ssh".into(), host.into()],
            units: units.iter().map(|u| u.to_string()).collect(),
        };
        let d = |m: MetricSource| Description {
            metrics: vec![m],
            ..Default::default()
        };
        let described = [
            d(usage(
                "web1",
                &["pipeline-app-0.service", "pipeline-app-1.service"],
            )),
            d(usage("lb", &["nginx.service"])),
        ];
        let proc = |host: Option<&str>, unit: Option<&str>| ProcessInfo {
            host: host.map(String::from),
            unit: unit.map(String::from),
            ..Default::default()
        };
        // Only app-1 is watched; a local process and one on a host nobody describes are not
        // sampled here.
        let procs = [
            proc(Some("web1"), Some("pipeline-app-1.service")),
            proc(None, None),
            proc(Some("elsewhere"), Some("x.service")),
        ];
        let w = wanted(described.iter(), procs.iter());
        assert_eq!(w.keys().collect::<Vec<_>>(), ["lb", "web1"]);
        assert_eq!(w["web1"].0, ["ssh", "web1"]);
        assert_eq!(
            w["web1"].1.iter().collect::<Vec<_>>(),
            ["pipeline-app-1.service"]
        );
        assert!(w["lb"].1.is_empty());
    }

    #[test]
    fn a_host_that_does_not_answer_is_unknown() {
        let mut u = RemoteUsage::default();
        let hosts = [(
            "gone".to_string(),
            (vec!["false".to_string()], BTreeSet::new()),
        )]
        .into_iter()
        .collect();
        u.set_hosts(hosts);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            u.poll();
            if u.hosts().any(|(_, v)| v.error.is_some()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (_, v) = u.hosts().next().unwrap();
        assert_eq!(v.figures, None);
        assert!(v.error.unwrap().contains("failed"));
    }
}
