//! Network namespaces for service generations: `network = { namespace = true, port = 3000 }`.
//!
//! An app that cannot choose its port (it always listens on 3000) cannot run twice on one
//! loopback. With `network.namespace`, every generation of every instance runs in a Linux network
//! namespace of its own, with an address of its own, so replicas and generations of such an app
//! run side by side; the instance's slot forwards to `ADDRESS:PORT` of the active generation.
//!
//! Per generation:
//!
//! - the namespace `pl-<work dir hash, 8>-<instance address hash, 6>-g<generation>`: stable, so
//!   the leftovers of a crashed run are found again by the instance's prefix ([`sweep`]);
//! - a veth pair, `plv<12 hex digits of the namespace name>` on the host (interface names have
//!   at most 15 characters) and `eth0` inside;
//! - a /30 from 10.213.0.0/16: `.1` on the host end, `.2` inside (the app's address); `lo` is up
//!   inside, and a default route via the host end lets the app reach what the host serves on
//!   its own addresses (not the host's 127.0.0.1: that is the namespace's own loopback);
//! - the /30 is claimed across processes, as `free_port` claims ports: a file
//!   `$TMPDIR/pipeline-netns/<index>` holding the namespace's name. A claim holds while that
//!   namespace exists, or for a minute after it was made (the time to create it).
//!
//! The generation directory's `netns.json` records it before anything is created. Removal kills
//! whatever still runs inside (it would keep the namespace alive), deletes the host end of the
//! veth (both ends go at once) and the namespace, and releases the claim.
//!
//! Everything is done by the real `ip` (iproute2). `PIPELINE_IP` names the binary to use instead
//! of the one on PATH; tests point it at a missing file to see the error a machine without
//! iproute2 gives.

use pipeline_engine::provider::ProviderError;
use pipeline_engine::value::{Value, ValueMap};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The generation directory's record of its namespace.
pub const RECORD: &str = "netns.json";
/// 10.213.0.0/16, cut into /30s.
const BASE: u32 = (10 << 24) | (213 << 16);
const SUBNETS: u32 = 1 << 14;
/// A claim whose namespace does not exist (yet) holds this long.
const CLAIM_FRESH: Duration = Duration::from_secs(60);

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// One generation's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Netns {
    pub name: String,
    /// The host end of the veth pair.
    pub veth: String,
    /// Which /30 of 10.213.0.0/16.
    pub index: u32,
    /// The host end's address.
    pub host: Ipv4Addr,
    /// The app's address (inside).
    pub address: Ipv4Addr,
    /// The port the app listens on inside.
    pub port: u16,
    /// The `ip` binary that made it.
    pub ip: PathBuf,
}

impl Netns {
    /// `command` (run by `sh -c`) run inside the namespace instead.
    pub fn wrap(&self, command: &str) -> String {
        format!(
            "exec {} netns exec {} sh -c {}",
            quote(&self.ip.to_string_lossy()),
            quote(&self.name),
            quote(command)
        )
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The fixed port when `network` asks for a namespace, None without one; Err for a wrong value.
pub fn port_of(c: &ValueMap) -> Result<Option<u16>, String> {
    let m = match c.get("network").map(|v| v.unmarked().0) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Map(m)) => m,
        Some(o) => return Err(format!("network must be a map, found {}", o.type_name())),
    };
    for k in m.keys() {
        if !["namespace", "port"].contains(&k.as_str()) {
            return Err(format!(
                "unknown network setting `{k}`; use namespace, port"
            ));
        }
    }
    let namespace = match m.get("namespace") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or("network.namespace must be true or false")?,
    };
    let port = match m.get("port") {
        None => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|p| p.fract() == 0.0 && (1.0..=65535.0).contains(p))
                .ok_or("network.port must be a TCP port from 1 to 65535")? as u16,
        ),
    };
    match (namespace, port) {
        (true, Some(p)) => Ok(Some(p)),
        (true, None) => Err(
            "network.port is missing: the port the app listens on inside its namespace".into(),
        ),
        (false, Some(_)) => Err(
            "network.port needs namespace = true; without a namespace the app gets a free port ({{port}})"
                .into(),
        ),
        (false, None) => Ok(None),
    }
}

/// The `ip` binary: `PIPELINE_IP` if set (reported missing if it is not there), else PATH.
pub fn ip_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PIPELINE_IP") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "the `ip` command (iproute2) is not at {} (PIPELINE_IP)",
                p.display()
            ))
        };
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            p.to_str()?
                .split(':')
                .chain(["/usr/sbin", "/sbin"])
                .map(|d| Path::new(d).join("ip"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| "the `ip` command (iproute2) is not installed (no ip on PATH)".into())
}

/// Capabilities this process lacks of the two namespaces and veths take.
fn missing_capabilities() -> Vec<&'static str> {
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("CapEff:"))?;
            u64::from_str_radix(l["CapEff:".len()..].trim(), 16).ok()
        })
        .unwrap_or(0);
    [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| eff & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect()
}

/// Can this process make namespaces? Err(message, help), both naming `network`. Only looks.
pub fn check() -> Result<PathBuf, (String, String)> {
    let ip = ip_bin().map_err(|e| {
        (
            format!("network = {{ namespace = true }} needs iproute2: {e}"),
            "install iproute2 (apt-get install iproute2), or drop `network` and let the app listen on {{port}}".into(),
        )
    })?;
    let missing = missing_capabilities();
    if !missing.is_empty() {
        return Err((
            format!(
                "network = {{ namespace = true }} needs root: creating network namespaces takes CAP_NET_ADMIN and CAP_SYS_ADMIN, and this process lacks {}",
                missing.join(" and ")
            ),
            "run pipeline as root (e.g. with sudo), or drop `network` and let the app listen on {{port}}".into(),
        ));
    }
    Ok(ip)
}

fn hex(bytes: &[u8], n: usize) -> String {
    let d = Sha256::digest(bytes);
    d.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(n)
        .collect()
}

/// `pl-XXXXXXXX-`: every namespace made for this work directory (`.pipeline/`) starts so.
pub fn prefix(work_dir: &Path) -> String {
    let dir = std::fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_path_buf());
    format!("pl-{}-", hex(dir.as_os_str().as_bytes(), 8))
}

fn instance_prefix(work_dir: &Path, addr: &str) -> String {
    format!("{}{}-", prefix(work_dir), hex(addr.as_bytes(), 6))
}

/// The namespace of generation `generation` of instance `addr`.
pub fn name(work_dir: &Path, addr: &str, generation: u64) -> String {
    format!("{}g{generation}", instance_prefix(work_dir, addr))
}

fn veth_of(name: &str) -> String {
    format!("plv{}", hex(name.as_bytes(), 12))
}

/// (host end, inside) of /30 number `index`.
fn subnet(index: u32) -> (Ipv4Addr, Ipv4Addr) {
    let net = BASE + 4 * index;
    (Ipv4Addr::from(net + 1), Ipv4Addr::from(net + 2))
}

fn claims_dir() -> PathBuf {
    std::env::temp_dir().join("pipeline-netns")
}

/// Claim a /30 for namespace `name`, across processes.
fn claim(name: &str) -> Result<u32, String> {
    let dir = claims_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32)
        ^ u64::from_le_bytes(
            Sha256::digest(name.as_bytes())[..8]
                .try_into()
                .unwrap_or([1; 8]),
        );
    for _ in 0..1024 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let index = (seed % u64::from(SUBNETS)) as u32;
        // Binding succeeds only to an address this machine has: someone uses that subnet.
        let (host, _) = subnet(index);
        if std::net::TcpListener::bind((host, 0)).is_ok() {
            continue;
        }
        if take(&dir.join(index.to_string()), name) {
            return Ok(index);
        }
    }
    Err("no free /30 left in 10.213.0.0/16".into())
}

fn take(path: &Path, name: &str) -> bool {
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| f.write_all(name.as_bytes()))
            .is_ok()
    };
    if create() {
        return true;
    }
    let holder = std::fs::read_to_string(path).unwrap_or_default();
    if !holder.is_empty() && Path::new(NETNS_DIR).join(&holder).exists() {
        return false;
    }
    let fresh = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < CLAIM_FRESH);
    if fresh {
        return false;
    }
    // A stale claim: take it over (remove + create_new, so only one taker wins).
    let _ = std::fs::remove_file(path);
    create()
}

/// Give back the claim of `name` (at `index` when known, else wherever it is).
fn release(index: Option<u32>, name: &str) {
    let dir = claims_dir();
    let paths: Vec<PathBuf> = match index {
        Some(i) => vec![dir.join(i.to_string())],
        None => std::fs::read_dir(&dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default(),
    };
    for p in paths {
        if std::fs::read_to_string(&p).is_ok_and(|h| h == name) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

fn ip(bin: &Path, args: &[&str], script: &str) -> Result<(), String> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{} {}` failed ({}): {}",
            bin.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The record of the namespace generation directory `gen_dir` runs in, if it runs in one.
pub fn of_generation(gen_dir: &Path) -> Option<Netns> {
    serde_json::from_slice(&std::fs::read(gen_dir.join(RECORD)).ok()?).ok()
}

/// Create the namespace of generation `generation` of `addr` (recorded in `gen_dir`) when `c`
/// asks for one. Nothing is left behind when this fails.
pub fn for_generation(
    work_dir: &Path,
    addr: &str,
    c: &ValueMap,
    generation: u64,
    gen_dir: &Path,
) -> Result<Option<Netns>, ProviderError> {
    let Some(port) = port_of(c).map_err(ProviderError::new)? else {
        return Ok(None);
    };
    let bin = check().map_err(|(m, h)| ProviderError::new(format!("{addr}: {m}")).help(h))?;
    create(work_dir, addr, generation, gen_dir, port, bin)
        .map(Some)
        .map_err(|e| {
            ProviderError::new(format!(
                "{addr}: cannot create the network namespace of generation {generation}: {e}"
            ))
            .help("check that `ip netns add` works on this machine, or drop `network`")
        })
}

fn create(
    work_dir: &Path,
    addr: &str,
    generation: u64,
    gen_dir: &Path,
    port: u16,
    bin: PathBuf,
) -> Result<Netns, String> {
    let name = name(work_dir, addr, generation);
    // A namespace of that name left by a crash before its generation was recorded goes first.
    if remove_named(&name)? {
        release(None, &name);
    }
    let index = claim(&name)?;
    let (host, address) = subnet(index);
    let ns = Netns {
        veth: veth_of(&name),
        name,
        index,
        host,
        address,
        port,
        ip: bin,
    };
    let made = (|| {
        let json = serde_json::to_vec(&ns).map_err(|e| e.to_string())?;
        std::fs::write(gen_dir.join(RECORD), json).map_err(|e| e.to_string())?;
        let (n, v) = (&ns.name, &ns.veth);
        ip(
            &ns.ip,
            &["-batch", "-"],
            &format!(
                "netns add {n}\nlink add {v} type veth peer name eth0 netns {n}\naddr add {host}/30 dev {v}\nlink set {v} up\n"
            ),
        )?;
        ip(
            &ns.ip,
            &["-netns", n, "-batch", "-"],
            &format!(
                "link set lo up\naddr add {address}/30 dev eth0\nlink set eth0 up\nroute add default via {host}\n"
            ),
        )?;
        let _ = pipeline_supervise::append_log_line(
            gen_dir,
            &format!(
                "--- generation {generation} runs in network namespace {n}, at {address}:{port}"
            ),
        );
        Ok(())
    })();
    if let Err(e) = made {
        let _ = remove(work_dir, addr, generation, gen_dir);
        return Err(e);
    }
    Ok(ns)
}

/// Remove the namespace of generation `generation` of `addr`, if there is one, and its claim.
pub fn remove(work_dir: &Path, addr: &str, generation: u64, gen_dir: &Path) -> Result<(), String> {
    let name = name(work_dir, addr, generation);
    let record = of_generation(gen_dir).filter(|r| r.name == name);
    // Without a record or a namespace there is no claim to look for either.
    if remove_named(&name)? || record.is_some() {
        release(record.map(|r| r.index), &name);
    }
    let _ = std::fs::remove_file(gen_dir.join(RECORD));
    Ok(())
}

/// Remove every namespace of instance `addr` (after its processes were stopped).
pub fn sweep(work_dir: &Path, addr: &str) -> Result<(), String> {
    let prefix = instance_prefix(work_dir, addr);
    let Ok(rd) = std::fs::read_dir(NETNS_DIR) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            remove_named(&name)?;
            release(None, &name);
        }
    }
    Ok(())
}

/// Remove every namespace made for this work directory that `keep` does not claim (after the
/// processes of its generation were stopped); returns the names removed.
pub fn sweep_unowned(work_dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<String>, String> {
    let prefix = prefix(work_dir);
    let Ok(rd) = std::fs::read_dir(NETNS_DIR) else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && !keep(&name) {
            remove_named(&name)?;
            release(None, &name);
            removed.push(name);
        }
    }
    Ok(removed)
}

/// The prefix of every namespace of instance `addr` (all its generations).
pub fn instance_names(work_dir: &Path, addr: &str) -> String {
    instance_prefix(work_dir, addr)
}

/// Delete namespace `name` and its veth; Ok(true) if there was something to delete.
fn remove_named(name: &str) -> Result<bool, String> {
    let path = Path::new(NETNS_DIR).join(name);
    let veth = veth_of(name);
    let link = Path::new("/sys/class/net").join(&veth);
    if !path.exists() && !link.exists() {
        return Ok(false);
    }
    let bin = ip_bin()?;
    // A process still inside would keep the namespace, its veth and its address alive.
    kill_inside(&path, name)?;
    let mut script = String::new();
    if link.exists() {
        script.push_str(&format!("link del {veth}\n"));
    }
    if path.exists() {
        script.push_str(&format!("netns del {name}\n"));
    }
    let result = ip(&bin, &["-force", "-batch", "-"], &script);
    if path.exists() || link.exists() {
        return Err(format!(
            "namespace {name} or its veth {veth} is still there after `ip netns del`: {}",
            result.err().unwrap_or_default()
        ));
    }
    Ok(true)
}

/// SIGKILL every process in the namespace at `path` (bounded wait). They are ours: the namespace
/// was made for one of this work directory's generations.
fn kill_inside(path: &Path, name: &str) -> Result<(), String> {
    let Ok(ns) = std::fs::metadata(path) else {
        return Ok(());
    };
    let inside = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                    .filter(|pid| {
                        std::fs::metadata(format!("/proc/{pid}/ns/net"))
                            .is_ok_and(|m| m.ino() == ns.ino() && m.dev() == ns.dev())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let pids = inside();
        if pids.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "processes {pids:?} in network namespace {name} do not stop"
            ));
        }
        for pid in pids {
            // SAFETY: plain kill(2) of a process inside one of our namespaces.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(network: Option<Value>) -> ValueMap {
        let mut c = ValueMap::default();
        if let Some(n) = network {
            c.insert("network".into(), n);
        }
        c
    }

    fn map(kv: &[(&str, Value)]) -> Value {
        Value::Map(kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    #[test]
    fn the_network_attribute() {
        let t = Value::Bool(true);
        let p = |n: f64| Value::Number(n);
        assert_eq!(port_of(&cfg(None)), Ok(None));
        assert_eq!(
            port_of(&cfg(Some(map(&[
                ("namespace", t.clone()),
                ("port", p(3000.0))
            ])))),
            Ok(Some(3000))
        );
        assert_eq!(
            port_of(&cfg(Some(map(&[("namespace", Value::Bool(false))])))),
            Ok(None)
        );
        for (bad, says) in [
            (map(&[("namespace", t.clone())]), "network.port is missing"),
            (map(&[("port", p(3000.0))]), "needs namespace = true"),
            (
                map(&[("namespace", t.clone()), ("port", p(0.0))]),
                "from 1 to 65535",
            ),
            (
                map(&[("namespace", t.clone()), ("port", p(3000.5))]),
                "from 1 to 65535",
            ),
            (
                map(&[("namespace", Value::str("yes")), ("port", p(1.0))]),
                "true or false",
            ),
            (
                map(&[("namespace", t.clone()), ("ports", p(1.0))]),
                "unknown network setting `ports`",
            ),
            (Value::Bool(true), "must be a map"),
        ] {
            let e = port_of(&cfg(Some(bad))).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn names_are_stable_short_and_per_instance() {
        let wd = Path::new("/nonexistent/a/.pipeline");
        let n = name(wd, "service.web[0]", 2);
        assert_eq!(n, name(wd, "service.web[0]", 2));
        assert!(n.starts_with(&prefix(wd)) && n.ends_with("-g2"), "{n}");
        assert!(n.starts_with(&instance_prefix(wd, "service.web[0]")));
        assert_ne!(
            instance_prefix(wd, "service.web[0]"),
            instance_prefix(wd, "service.web[1]")
        );
        assert_ne!(prefix(wd), prefix(Path::new("/nonexistent/b/.pipeline")));
        let v = veth_of(&n);
        assert_eq!(v.len(), 15, "{v}");
        assert_ne!(v, veth_of(&name(wd, "service.web[0]", 3)));
    }

    #[test]
    fn subnets_are_disjoint_slash_30s_in_the_range() {
        assert_eq!(
            subnet(0),
            (Ipv4Addr::new(10, 213, 0, 1), Ipv4Addr::new(10, 213, 0, 2))
        );
        assert_eq!(
            subnet(65),
            (Ipv4Addr::new(10, 213, 1, 5), Ipv4Addr::new(10, 213, 1, 6))
        );
        assert_eq!(
            subnet(SUBNETS - 1),
            (
                Ipv4Addr::new(10, 213, 255, 253),
                Ipv4Addr::new(10, 213, 255, 254)
            )
        );
    }

    #[test]
    fn wrapped_commands_keep_their_quotes() {
        let ns = Netns {
            name: "pl-x-y-g1".into(),
            veth: "plv".into(),
            index: 0,
            host: subnet(0).0,
            address: subnet(0).1,
            port: 3000,
            ip: "/usr/sbin/ip".into(),
        };
        assert_eq!(
            ns.wrap("echo 'a b' && exec ./app"),
            r#"exec '/usr/sbin/ip' netns exec 'pl-x-y-g1' sh -c 'echo '\''a b'\'' && exec ./app'"#
        );
    }

    #[test]
    fn claims_exclude_each_other_until_stale() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("7");
        assert!(take(&p, "pl-a"));
        assert!(!take(&p, "pl-b"), "a fresh claim holds");
        // An old claim whose namespace does not exist is taken over.
        let old = std::time::SystemTime::now() - Duration::from_secs(120);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(take(&p, "pl-b"));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "pl-b");
    }
}
