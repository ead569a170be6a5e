//! The lab's network: a bridge `plabN` with 10.88.N.1/24, per host a namespace `plabN-hostI`
//! and a veth pair (`plabNvI` on the bridge, `eth0` inside) with 10.88.N.(10+I)/24.
//!
//! N is claimed by creating the bridge: `ip link add` fails when another lab has it, so labs in
//! parallel test processes never share a name or an address. The claimant's pid goes to
//! /run/pipeline-lab/plabN.pid; a lab whose process died (a killed test) is swept when its N is
//! next wanted.

use crate::run;
use anyhow::{bail, Result};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const PID_DIR: &str = "/run/pipeline-lab";

pub(crate) struct Subnet {
    n: u8,
    prefix: String,
}

pub(crate) struct NewHost {
    pub name: String,
    pub addr: Ipv4Addr,
    pub container: String,
    pub netns: String,
    pub veth: String,
}

fn pid_file(prefix: &str) -> PathBuf {
    PathBuf::from(PID_DIR).join(format!("{prefix}.pid"))
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when the lab `prefix` belongs to a process that no longer runs.
fn abandoned(prefix: &str) -> bool {
    match std::fs::read_to_string(pid_file(prefix)) {
        Ok(pid) => {
            let pid = pid.trim();
            !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        // No pid file yet: its lab is being set up right now.
        Err(_) => false,
    }
}

/// Removes everything named after `prefix`: containers, namespaces (and with them the veths),
/// the bridge and the pid file.
fn sweep(prefix: &str) {
    if let Ok(out) = Command::new("podman")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
        .arg(format!("name=^{prefix}-"))
        .output()
    {
        let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        if !names.is_empty() {
            quiet(
                Command::new("podman")
                    .args(["rm", "--force", "--time", "0", "--ignore"])
                    .args(&names),
            );
        }
    }
    if let Ok(list) = std::fs::read_dir("/run/netns") {
        for e in list.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{prefix}-")) {
                quiet(Command::new("ip").args(["netns", "del", &name]));
            }
        }
    }
    if let Ok(list) = std::fs::read_dir("/sys/class/net") {
        for e in list.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{prefix}v")) || name.starts_with(&format!("{prefix}p")) {
                quiet(Command::new("ip").args(["link", "del", &name]));
            }
        }
    }
    quiet(Command::new("ip").args(["link", "del", prefix]));
    let _ = std::fs::remove_file(pid_file(prefix));
}

impl Subnet {
    pub fn claim() -> Result<Subnet> {
        std::fs::create_dir_all(PID_DIR)?;
        for n in 1..=250u8 {
            let prefix = format!("plab{n}");
            if !quiet(Command::new("ip").args(["link", "add", &prefix, "type", "bridge"])) {
                if abandoned(&prefix) {
                    sweep(&prefix);
                    if !quiet(Command::new("ip").args(["link", "add", &prefix, "type", "bridge"])) {
                        continue;
                    }
                } else {
                    continue;
                }
            }
            std::fs::write(pid_file(&prefix), std::process::id().to_string())?;
            let net = Subnet { n, prefix };
            // Leftovers of an earlier lab with this number would collide with ours.
            net.sweep_hosts();
            run(Command::new("ip").args([
                "addr",
                "add",
                &format!("{}/24", net.bridge_addr()),
                "dev",
                &net.prefix,
            ]))?;
            run(Command::new("ip").args(["link", "set", &net.prefix, "up"]))?;
            return Ok(net);
        }
        bail!("no free lab bridge plab1..plab250 (ip link add failed for each; are you root?)")
    }

    fn sweep_hosts(&self) {
        // Everything but the bridge and the pid file.
        let p = &self.prefix;
        if let Ok(out) = Command::new("podman")
            .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
            .arg(format!("name=^{p}-"))
            .output()
        {
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                quiet(Command::new("podman").args(["rm", "--force", "--time", "0", name]));
            }
        }
        if let Ok(list) = std::fs::read_dir("/run/netns") {
            for e in list.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{p}-")) {
                    quiet(Command::new("ip").args(["netns", "del", &name]));
                }
            }
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn bridge_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 88, self.n, 1)
    }

    /// The namespace and the link of host `i` (0-based), up; no container yet.
    pub fn add_host(&self, i: usize) -> Result<NewHost> {
        let k = i + 1;
        let p = &self.prefix;
        let h = NewHost {
            name: format!("host{k}"),
            addr: Ipv4Addr::new(10, 88, self.n, 10 + k as u8),
            container: format!("{p}-host{k}"),
            netns: format!("{p}-host{k}"),
            veth: format!("{p}v{k}"),
        };
        let peer = format!("{p}p{k}");
        run(Command::new("ip").args(["netns", "add", &h.netns]))?;
        run(Command::new("ip").args([
            "link", "add", &h.veth, "type", "veth", "peer", "name", &peer,
        ]))?;
        run(Command::new("ip").args(["link", "set", &peer, "netns", &h.netns]))?;
        run(Command::new("ip").args(["link", "set", &h.veth, "master", p, "up"]))?;
        let ns = ["-n", h.netns.as_str()];
        run(Command::new("ip")
            .args(ns)
            .args(["link", "set", &peer, "name", "eth0"]))?;
        run(Command::new("ip").args(ns).args([
            "addr",
            "add",
            &format!("{}/24", h.addr),
            "dev",
            "eth0",
        ]))?;
        run(Command::new("ip")
            .args(ns)
            .args(["link", "set", "eth0", "up"]))?;
        run(Command::new("ip")
            .args(ns)
            .args(["link", "set", "lo", "up"]))?;
        Ok(h)
    }

    /// Removes namespaces, veths, the bridge and the pid file (containers must be gone first).
    pub fn remove(&self) {
        sweep(&self.prefix);
    }
}
