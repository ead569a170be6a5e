//! The test lab of issue 10: hosts that behave like servers, in miniature.
//!
//! [`Lab::new`] makes a Linux bridge, one network namespace per host with a veth on the bridge,
//! and one podman container per namespace from the lab image (`scripts/lab-image`): its own root
//! filesystem, systemd as init, sshd with host keys of its own. A throwaway key pair logs in as
//! root; host keys are read through `podman exec`, never trusted on first use. Dropping the
//! [`Lab`] removes every container, namespace, veth and the bridge, also when a test panics.
//!
//! The hosts have no default route and the machine does not forward: they reach the bridge
//! address and each other, nothing else. Needs root, podman and the image (`scripts/lab-install`,
//! `scripts/lab-image`); tests call [`require`] first.

mod net;

use anyhow::{anyhow, bail, Context, Result};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The image `scripts/lab-image` builds; `PIPELINE_LAB_IMAGE` overrides it.
pub const DEFAULT_IMAGE: &str = "localhost/pipeline-lab:latest";
/// Where `scripts/lab-install` puts ansible-core; `PIPELINE_VENV` overrides it.
pub const DEFAULT_VENV: &str = "/opt/pipeline-venv";
/// apt-cacher-ng's port on the bridge address.
pub const APT_CACHE_PORT: u16 = 3142;
/// How long a host may take from `podman run`/`start` until root logs in over SSH.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

pub fn image() -> String {
    std::env::var("PIPELINE_LAB_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_string())
}

/// The virtualenv that holds ansible-core.
pub fn venv() -> PathBuf {
    std::env::var_os("PIPELINE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV))
}

/// A program of the virtualenv, e.g. `ansible` or `ansible-playbook`.
pub fn venv_bin(name: &str) -> PathBuf {
    venv().join("bin").join(name)
}

/// Whether the lab image is in podman's storage (false when podman itself is missing).
pub fn image_present() -> bool {
    Command::new("podman")
        .args(["image", "exists", &image()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Call first in a lab test: `if !pipeline_lab::require() { return; }`.
///
/// True when the image is there. Without it the test is skipped, loudly, only when neither
/// `PIPELINE_LAB` is set nor `CI=true`; in either of those a missing image is a failure (panic).
pub fn require() -> bool {
    if image_present() {
        return true;
    }
    let how = "build it with scripts/lab-install && scripts/lab-image (as root)";
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if ci || std::env::var_os("PIPELINE_LAB").is_some() {
        panic!(
            "the lab image {} is missing (PIPELINE_LAB or CI=true says the lab must run): {how}",
            image()
        );
    }
    eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!(
        "!! SKIPPED: lab test: the lab image {} is missing.",
        image()
    );
    eprintln!("!! {how}; set PIPELINE_LAB=1 to make its absence a failure.");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
    false
}

/// Options beyond the number of hosts.
#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    /// Run apt-cacher-ng on the bridge address and point every host's apt at it.
    pub apt_cache: bool,
}

/// One lab host: a container with systemd and sshd in a network namespace of its own.
#[derive(Debug)]
pub struct Host {
    name: String,
    addr: Ipv4Addr,
    container: String,
    netns: String,
    veth: String,
    key: PathBuf,
    known_hosts: PathBuf,
    known_hosts_line: String,
}

impl Host {
    /// The host's name (its hostname inside, and its name in [`Lab::inventory`]).
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        22
    }
    /// The private key that logs in as root (0600).
    pub fn key_file(&self) -> &Path {
        &self.key
    }
    /// A known_hosts file with every host of the lab.
    pub fn known_hosts_file(&self) -> &Path {
        &self.known_hosts
    }
    /// `ADDR KEYTYPE KEY` for each of the host's keys, one a line, read through `podman exec`.
    pub fn known_hosts_line(&self) -> &str {
        &self.known_hosts_line
    }
    /// The podman container's name (for `podman exec`, `podman stats`).
    pub fn container(&self) -> &str {
        &self.container
    }
    /// The host's network namespace under /run/netns.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The options of a strict, non-interactive ssh that gives up on a dead host within ~10 s.
    pub fn ssh_options(&self) -> Vec<String> {
        let mut o = vec!["-F".to_string(), "/dev/null".to_string()];
        for opt in [
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "StrictHostKeyChecking=yes".to_string(),
            "BatchMode=yes".to_string(),
            "IdentitiesOnly=yes".to_string(),
            "ConnectTimeout=5".to_string(),
            "ServerAliveInterval=2".to_string(),
            "ServerAliveCountMax=2".to_string(),
            "LogLevel=ERROR".to_string(),
        ] {
            o.push("-o".to_string());
            o.push(opt);
        }
        o.push("-i".to_string());
        o.push(self.key.display().to_string());
        o.push("-p".to_string());
        o.push(self.port().to_string());
        o
    }

    /// `ssh ... root@ADDR ARGS...`, ready to run.
    pub fn ssh(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.ssh_options())
            .arg(format!("root@{}", self.addr))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs a command inside the container, bypassing the network.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        run(Command::new("podman")
            .args(["exec", &self.container])
            .args(args))
    }

    /// Turns the host off for real: kills every process of the container and takes the link
    /// down (open SSH sessions stop answering too).
    pub fn off(&self) -> Result<()> {
        run(Command::new("podman").args(["kill", &self.container]))?;
        run(Command::new("podman").args(["wait", &self.container]))?;
        run(Command::new("ip").args(["link", "set", &self.veth, "down"]))?;
        Ok(())
    }

    /// Turns the host back on: link up, container started, waits until root logs in. Its host
    /// keys are the ones it had.
    pub fn on(&self) -> Result<()> {
        run(Command::new("ip").args(["link", "set", &self.veth, "up"]))?;
        run(Command::new("podman").args(["start", &self.container]))?;
        self.wait_ready(Instant::now() + BOOT_TIMEOUT)
    }

    /// Reads the host's public keys from inside (podman exec) into `known_hosts_line`.
    fn read_host_keys(&mut self, deadline: Instant) -> Result<()> {
        let keys = loop {
            let out = Command::new("podman")
                .args([
                    "exec",
                    &self.container,
                    "sh",
                    "-c",
                    "cat /etc/ssh/ssh_host_*_key.pub",
                ])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.contains("ssh-ed25519") {
                break text;
            }
            if Instant::now() >= deadline {
                bail!(
                    "lab host {}: no SSH host keys within {BOOT_TIMEOUT:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        self.known_hosts_line = keys
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some(format!("{} {} {}", self.addr, f.next()?, f.next()?))
            })
            .collect::<Vec<_>>()
            .join("\n");
        Ok(())
    }

    /// Waits (until `deadline`) for systemd to finish booting. sshd is up before the boot is
    /// done, and a role that talks to systemd (a unit started, a daemon reloaded) early in a
    /// loaded machine's boot can find it still starting; a real server is logged into after.
    /// "degraded" (a unit failed) is booted too.
    fn booted(&self, deadline: Instant) -> Result<(), String> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .max(1);
        let out = self
            .ssh(&[
                "timeout",
                &left.to_string(),
                "systemctl",
                "is-system-running",
                "--wait",
            ])
            .output()
            .map_err(|e| format!("ssh: {e}"))?;
        match String::from_utf8_lossy(&out.stdout).trim() {
            "running" | "degraded" => Ok(()),
            other => Err(format!(
                "systemd is still {other:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }

    /// Waits until sshd answers with a banner, root logs in and systemd has booted, or explains
    /// why not.
    fn wait_ready(&self, deadline: Instant) -> Result<()> {
        let sock = SocketAddr::from((self.addr, self.port()));
        loop {
            let last = match banner(sock) {
                Ok(()) => match self.ssh(&["true"]).output() {
                    Ok(out) if out.status.success() => match self.booted(deadline) {
                        Ok(()) => return Ok(()),
                        Err(why) => why,
                    },
                    Ok(out) => format!("ssh: {}", String::from_utf8_lossy(&out.stderr).trim()),
                    Err(e) => format!("ssh: {e}"),
                },
                Err(e) => format!("{sock}: {e}"),
            };
            if Instant::now() >= deadline {
                let logs = Command::new("podman")
                    .args(["logs", "--tail", "15", &self.container])
                    .output()
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout).into_owned()
                            + &String::from_utf8_lossy(&o.stderr)
                    })
                    .unwrap_or_default();
                bail!(
                    "lab host {} ({}) did not accept SSH within {:?}: {last}\nlast lines of the container:\n{logs}",
                    self.name,
                    self.addr,
                    BOOT_TIMEOUT
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Reads the first bytes sshd sends.
fn banner(sock: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf)?;
    if &buf[..4] == b"SSH-" {
        Ok(())
    } else {
        Err(std::io::Error::other("not an SSH banner"))
    }
}

/// A set of lab hosts on a bridge of their own; everything goes when it drops.
pub struct Lab {
    net: net::Subnet,
    hosts: Vec<Host>,
    dir: tempfile::TempDir,
    key: PathBuf,
    known_hosts: PathBuf,
    apt_cache: Option<Child>,
    apt_cache_lock: Option<std::fs::File>,
}

impl Lab {
    /// `n` hosts, up and accepting root over SSH.
    pub fn new(n: usize) -> Result<Lab> {
        Lab::with_options(n, LabOptions::default())
    }

    pub fn with_options(n: usize, opts: LabOptions) -> Result<Lab> {
        if n == 0 || n > 200 {
            bail!("a lab has 1 to 200 hosts, not {n}");
        }
        let image = image();
        if !image_present() {
            bail!("the lab image {image} is missing: scripts/lab-install && scripts/lab-image");
        }
        let net = net::Subnet::claim()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", net.prefix()))
            .tempdir()
            .context("a temp dir for the lab")?;
        let key = dir.path().join("id_ed25519");
        let known_hosts = dir.path().join("known_hosts");
        let mut lab = Lab {
            net,
            hosts: Vec::new(),
            dir,
            key,
            known_hosts,
            apt_cache: None,
            apt_cache_lock: None,
        };

        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "pipeline-lab", "-f"])
            .arg(&lab.key))?;
        set_mode(&lab.key, 0o600)?;
        let pubkey = lab.key.with_extension("pub");
        set_mode(&pubkey, 0o644)?;

        // Namespaces and links first (fast), then every container at once.
        for i in 0..n {
            let host = lab.net.add_host(i)?;
            lab.hosts.push(Host {
                name: host.name,
                addr: host.addr,
                container: host.container,
                netns: host.netns,
                veth: host.veth,
                key: lab.key.clone(),
                known_hosts: lab.known_hosts.clone(),
                known_hosts_line: String::new(),
            });
        }
        if opts.apt_cache {
            lab.apt_cache = Some(lab.start_apt_cache()?);
        }
        let mut runs = Vec::new();
        for h in &lab.hosts {
            let child = Command::new("podman")
                .args(["run", "-d", "--name", &h.container, "--hostname", &h.name])
                .arg(format!("--network=ns:/run/netns/{}", h.netns))
                .args(["--systemd=always", "--stop-timeout=1", "--tmpfs=/tmp"])
                .arg(format!(
                    "--volume={}:/root/.ssh/authorized_keys:ro",
                    pubkey.display()
                ))
                .args([&image, "/sbin/init"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("podman run")?;
            runs.push((h.container.clone(), child));
        }
        for (name, child) in runs {
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "podman run {name}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }

        // The host keys, read from inside: the known_hosts file exists before the first ssh.
        let deadline = Instant::now() + BOOT_TIMEOUT;
        for h in &mut lab.hosts {
            h.read_host_keys(deadline)?;
        }
        lab.write_known_hosts()?;
        for h in &lab.hosts {
            h.wait_ready(deadline)?;
        }
        if lab.apt_cache.is_some() {
            let conf = format!(
                "Acquire::http::Proxy \"http://{}:{APT_CACHE_PORT}\";\n",
                lab.net.bridge_addr()
            );
            for h in &lab.hosts {
                h.exec(&[
                    "sh",
                    "-c",
                    &format!("printf '%s' '{conf}' > /etc/apt/apt.conf.d/01lab-proxy"),
                ])?;
            }
        }
        Ok(lab)
    }

    fn write_known_hosts(&self) -> Result<()> {
        let mut all = String::new();
        for h in &self.hosts {
            all.push_str(&h.known_hosts_line);
            all.push('\n');
        }
        std::fs::write(&self.known_hosts, all)?;
        Ok(())
    }

    /// Host `i` is reinstalled: new SSH host keys, sshd restarted and every open session ended
    /// (a multiplexed master made before would go on without a key check). The lab's
    /// known_hosts gets the new keys; anyone who pinned the old ones must notice.
    pub fn rekey(&mut self, i: usize) -> Result<()> {
        let h = &mut self.hosts[i];
        h.exec(&[
            "sh",
            "-c",
            "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null && systemctl restart ssh \
             && (pkill -f '^sshd: root' || true)",
        ])?;
        h.read_host_keys(Instant::now() + BOOT_TIMEOUT)?;
        self.write_known_hosts()?;
        self.hosts[i].wait_ready(Instant::now() + BOOT_TIMEOUT)
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }
    /// The address of this machine on the lab's bridge (where apt-cacher-ng listens).
    pub fn bridge_addr(&self) -> Ipv4Addr {
        self.net.bridge_addr()
    }
    /// The bridge's interface name, e.g. `plab12`.
    pub fn bridge(&self) -> &str {
        self.net.prefix()
    }
    pub fn key_file(&self) -> &Path {
        &self.key
    }
    pub fn known_hosts_file(&self) -> &Path {
        &self.known_hosts
    }
    /// A private directory that goes with the lab.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An Ansible INI inventory of every host in group `lab`, with the lab's key, its
    /// known_hosts (strict checking) and keepalives that give up on a dead host.
    pub fn inventory(&self) -> String {
        let mut s = String::from("[lab]\n");
        for h in &self.hosts {
            s.push_str(&format!("{} ansible_host={}\n", h.name, h.addr));
        }
        s.push_str(&format!(
            "\n[lab:vars]\nansible_user=root\nansible_port=22\nansible_ssh_private_key_file={}\n\
             ansible_ssh_common_args='-F /dev/null -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes \
             -o IdentitiesOnly=yes -o ConnectTimeout=5'\nansible_python_interpreter=/usr/bin/python3\n",
            self.key.display(),
            self.known_hosts.display()
        ));
        s
    }

    /// Writes [`Lab::inventory`] into the lab's directory and returns its path.
    pub fn write_inventory(&self) -> Result<PathBuf> {
        let p = self.dir.path().join("inventory.ini");
        std::fs::write(&p, self.inventory())?;
        Ok(p)
    }

    /// A command of the virtualenv (`ansible`, `ansible-playbook`) with settings that never hang
    /// on a dead host (MACHINE-FACTS: the ControlMaster hang) and keep Ansible's files in the lab.
    pub fn ansible(&self, program: &str) -> Command {
        let mut c = Command::new(venv_bin(program));
        let d = self.dir.path();
        c.env("ANSIBLE_HOST_KEY_CHECKING", "True")
            .env(
                "ANSIBLE_SSH_ARGS",
                "-C -o ControlMaster=auto -o ControlPersist=30s -o ServerAliveInterval=2 -o ServerAliveCountMax=2",
            )
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", d.join("cp"))
            .env("ANSIBLE_LOCAL_TEMP", d.join("ansible-tmp"))
            .env("ANSIBLE_HOME", d.join("ansible-home"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
            .env("ANSIBLE_CONFIG", d.join("no-ansible.cfg")) // never a cfg from the cwd
            .stdin(Stdio::null());
        c
    }

    /// apt-cacher-ng on the bridge address. Its cache is shared by the labs of this machine
    /// (under LAB_CACHE) while one lab at a time holds it; a lab that finds it held caches in
    /// its own directory rather than share one cache between two servers.
    fn start_apt_cache(&mut self) -> Result<Child> {
        let shared = Path::new(
            &std::env::var("LAB_CACHE").unwrap_or_else(|_| "/var/cache/pipeline-lab".into()),
        )
        .join("apt-cacher-ng");
        std::fs::create_dir_all(&shared)?;
        let lock = std::fs::File::create(shared.join(".lab-lock"))?;
        let cache_dir = match lock.try_lock() {
            Ok(()) => {
                self.apt_cache_lock = Some(lock);
                shared
            }
            Err(_) => self.dir.path().join("apt-cacher-ng-cache"),
        };
        let conf_dir = self.dir.path().join("apt-cacher-ng");
        let log_dir = conf_dir.join("log");
        std::fs::create_dir_all(&cache_dir)?;
        std::fs::create_dir_all(&log_dir)?;
        // A config of our own: the packaged one remaps Debian URLs onto a mirror list whose
        // hosts need not resolve here; without remapping, the hosts' own mirror URL is fetched.
        let d = &conf_dir;
        std::fs::write(
            d.join("acng.conf"),
            format!(
                "CacheDir: {}\nLogDir: {}\nSupportDir: /usr/lib/apt-cacher-ng\nBindAddress: {}\nPort: {APT_CACHE_PORT}\n\
                 ForeGround: 1\nSocketPath: {}\nPidFile: {}\nExThreshold: 4\n",
                cache_dir.display(),
                log_dir.display(),
                self.net.bridge_addr(),
                d.join("socket").display(),
                d.join("pid").display()
            ),
        )?;
        let child = Command::new("/usr/sbin/apt-cacher-ng")
            .arg("-c")
            .arg(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("apt-cacher-ng (scripts/lab-install installs it)")?;
        let sock = SocketAddr::from((self.net.bridge_addr(), APT_CACHE_PORT));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_err() {
            if Instant::now() >= deadline {
                bail!("apt-cacher-ng did not listen on {sock} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(child)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.apt_cache.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let names: Vec<&str> = self.hosts.iter().map(|h| h.container.as_str()).collect();
        if !names.is_empty() {
            let _ = Command::new("podman")
                .args(["rm", "--force", "--time", "0", "--ignore"])
                .args(&names)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.net.remove();
    }
}

/// Runs a command; its stdout, or an error with the command line and its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        return Err(anyhow!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test, so no other test of this binary sees the environment it changes.
    #[test]
    fn a_missing_image_skips_only_outside_ci_and_without_pipeline_lab() {
        std::env::set_var("PIPELINE_LAB_IMAGE", "localhost/pipeline-lab-absent:none");
        std::env::remove_var("PIPELINE_LAB");
        std::env::set_var("CI", "false");
        assert!(!image_present());
        assert!(!require(), "a missing image outside CI is a skip");

        std::env::set_var("CI", "true");
        assert!(
            std::panic::catch_unwind(require).is_err(),
            "CI=true: a missing image fails"
        );

        std::env::remove_var("CI");
        std::env::set_var("PIPELINE_LAB", "1");
        assert!(
            std::panic::catch_unwind(require).is_err(),
            "PIPELINE_LAB: a missing image fails"
        );

        let err = Lab::new(1)
            .err()
            .expect("no lab without its image")
            .to_string();
        assert!(err.contains("scripts/lab-image"), "{err}");
    }
}
