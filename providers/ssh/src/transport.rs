//! The SSH transport: the system OpenSSH client (`ssh`), nothing home-made.
//!
//! Every call multiplexes over one master connection per host (`ControlMaster=auto`,
//! `ControlPersist=30s`, sockets in a private directory), sends keepalives
//! (`ServerAliveInterval=2`, `ServerAliveCountMax=2`), never asks (`BatchMode=yes`) and has an
//! overall timeout that kills the client. Keepalives alone let a master whose link went down
//! silently linger ~10 s (measured on the lab), so a call still running after 2 s is probed
//! (`true` over the same path, within the connect timeout) every 2 s: a dead host fails a call
//! within ~7 s. After a timeout or an unreachable host the master is stopped (`ssh -O exit`),
//! so the next call does not wait on a dead one. No `-F` unless asked ([`Ssh::with_config`]):
//! `~/.ssh/config`, the agent and ProxyJump are honoured.
//!
//! A timeout kills the local client only: a remote command that ignores its closed stdin and
//! output may run on (no terminal, so no SIGHUP).
//!
//! Host keys are never trusted blindly ([`HostKeys`], [`KeySource`]): the user's known_hosts
//! when it names the host, else the keys pinned in state, else the first key seen, returned by
//! [`Ssh::connect`] for the caller to pin. Remote commands are built from arguments quoted once
//! ([`quote`]); content (files, secrets) travels over stdin, never on a command line.
//!
//! Cancellation: dropping a call's future kills its ssh (`kill_on_drop`).

mod error;
mod keys;
mod quote;

pub use error::{classify, Error, Peer};
pub use keys::{HostKeys, KeySource};
pub use quote::{command_line, quote};

use keys::{lookup_name, Key};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// ControlPath must stay below the 104 bytes of a unix socket address; ssh appends a random
/// suffix of 17 bytes while it creates one.
const SOCKET_PATH_MAX: usize = 104 - 17 - 1;
const CONTROL_SOCKET: &str = "cm-%C";
/// `%C` expands to 40 hex digits.
const CONTROL_SOCKET_LEN: usize = 3 + 40;
/// A call still running after this is probed, and again this long after each probe answers: a
/// dead host is found within PROBE_AFTER + the connect timeout.
const PROBE_AFTER: Duration = Duration::from_secs(2);
/// Calls at once per host: with a probe each, sshd's default MaxSessions (10 sessions per
/// connection).
const SESSIONS: usize = 5;
/// How long a local control command (`ssh -G`, `ssh -O exit`, `ssh-keygen -F`) may take.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A host to reach, as an inventory host gives it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The inventory name, used in messages and private file names.
    pub name: String,
    /// Host name, address or an ssh config `Host` alias.
    pub address: String,
    /// None: the port ssh's configuration gives (22 by default).
    pub port: Option<u16>,
    /// None: the user ssh's configuration gives.
    pub user: Option<String>,
    /// None: the agent and the identities ssh's configuration gives.
    pub key_file: Option<PathBuf>,
}

impl Target {
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Target {
        Target {
            name: name.into(),
            address: address.into(),
            port: None,
            user: None,
            key_file: None,
        }
    }
}

impl From<&pipeline_inventory::Host> for Target {
    fn from(h: &pipeline_inventory::Host) -> Target {
        Target {
            name: h.name.clone(),
            address: h.address.clone(),
            port: h.port,
            user: h.user.clone(),
            key_file: h.key_file.as_ref().map(PathBuf::from),
        }
    }
}

/// What a remote call runs.
#[derive(Clone, Copy, Debug)]
pub enum Remote<'a> {
    /// A program and its arguments, each quoted for the remote shell.
    Argv(&'a [&'a str]),
    /// A POSIX shell script, run as `sh -c SCRIPT` (it is on the command line: no secrets in
    /// it; give them on stdin).
    Script(&'a str),
}

impl Remote<'_> {
    fn command_line(&self) -> Result<String, Error> {
        match self {
            Remote::Argv(argv) => command_line(argv),
            Remote::Script(s) => command_line(&["sh", "-c", s]),
        }
    }
}

/// What to upload.
#[derive(Clone, Debug)]
pub enum Source<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// A finished remote command (any exit status of its own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    host: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == 0
    }

    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The output when the command succeeded, else [`Error::Remote`].
    pub fn checked(self) -> Result<Output, Error> {
        if self.success() {
            Ok(self)
        } else {
            Err(Error::Remote {
                host: self.host,
                status: self.status,
                stderr: String::from_utf8_lossy(&self.stderr).into_owned(),
            })
        }
    }
}

/// A connection made: where its host keys came from and the keys to pin (`[ADDR]:PORT TYPE
/// BASE64`; empty when the user's known_hosts vouches for the host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    pub source: KeySource,
    pub host_keys: Vec<String>,
}

/// What `ssh -G` says of a target, once per target.
#[derive(Debug)]
struct Resolved {
    hostname: String,
    port: u16,
    host_key_alias: Option<String>,
    control_path: PathBuf,
    /// The user's or the system's known_hosts has an entry for the host.
    known_to_user: bool,
    /// The private known_hosts file of this target (pinned or first contact).
    private_known_hosts: PathBuf,
    /// Held while the master is opened, so calls that start together make one connection, not
    /// one each (a burst of handshakes meets sshd's MaxStartups); when the last open failed.
    opening: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// sshd allows 10 sessions per connection (MaxSessions): calls beyond [`SESSIONS`] wait.
    sessions: tokio::sync::Semaphore,
}

impl Resolved {
    fn lookup_name(&self) -> String {
        lookup_name(&self.hostname, self.port, self.host_key_alias.as_deref())
    }
}

/// The transport: a private directory for control sockets and pinned known_hosts files, and
/// the options every call shares.
#[derive(Debug)]
pub struct Ssh {
    dir: PathBuf,
    config: Option<PathBuf>,
    connect_timeout: Duration,
    resolved: Mutex<HashMap<Target, Arc<Resolved>>>,
}

impl Ssh {
    /// A transport whose sockets and key files live in `dir` (created 0700 when missing, made
    /// 0700 when not). The path must be short (control sockets) and plain (no whitespace,
    /// quotes or `%`: ssh would split or expand it).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Ssh, Error> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir: PathBuf = dir.into();
        let text = dir
            .to_str()
            .ok_or_else(|| Error::Invalid(format!("the ssh directory {dir:?} is not UTF-8")))?;
        if text
            .chars()
            .any(|c| c.is_whitespace() || "%\"'\\".contains(c))
        {
            return Err(Error::Invalid(format!(
                "the ssh directory {text:?} holds whitespace, a quote or `%`, which ssh options cannot carry"
            )));
        }
        if text.len() + 1 + CONTROL_SOCKET_LEN > SOCKET_PATH_MAX {
            return Err(Error::Invalid(format!(
                "the ssh directory {text:?} is too long for control sockets: at most {} bytes",
                SOCKET_PATH_MAX - 1 - CONTROL_SOCKET_LEN
            )));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("chmod 700 {}", dir.display()), e))?;
        let keys = dir.join("known_hosts");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&keys)
            .map_err(|e| Error::io(format!("creating {}", keys.display()), e))?;
        Ok(Ssh {
            dir,
            config: None,
            connect_timeout: Duration::from_secs(5),
            resolved: Mutex::new(HashMap::new()),
        })
    }

    /// Reads this ssh config file instead of `~/.ssh/config` (`-F`). For tests.
    pub fn with_config(mut self, path: Option<PathBuf>) -> Ssh {
        self.config = path;
        self.resolved.lock().unwrap().clear();
        self
    }

    /// ssh's `ConnectTimeout` (default 5 s).
    pub fn with_connect_timeout(mut self, t: Duration) -> Ssh {
        self.connect_timeout = t;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options of every call (without host keys): config, multiplexing, keepalives.
    fn base_args(&self, target: &Target) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(c) = &self.config {
            a.push("-F".to_string());
            a.push(c.display().to_string());
        }
        let secs = self.connect_timeout.as_secs().max(1);
        for o in [
            "BatchMode=yes".to_string(),
            format!("ConnectTimeout={secs}"),
            "ServerAliveInterval=2".to_string(),
            "ServerAliveCountMax=2".to_string(),
            "ControlMaster=auto".to_string(),
            "ControlPersist=30s".to_string(),
            format!("ControlPath={}/{CONTROL_SOCKET}", self.dir.display()),
            "LogLevel=ERROR".to_string(),
        ] {
            a.push("-o".to_string());
            a.push(o);
        }
        if let Some(p) = target.port {
            a.push("-p".to_string());
            a.push(p.to_string());
        }
        if let Some(u) = &target.user {
            a.push("-l".to_string());
            a.push(u.clone());
        }
        if let Some(k) = &target.key_file {
            a.push("-i".to_string());
            a.push(k.display().to_string());
            a.push("-o".to_string());
            a.push("IdentitiesOnly=yes".to_string());
        }
        a
    }

    fn peer(&self, target: &Target, r: &Resolved, keys: &HostKeys, source: KeySource) -> Peer {
        let address = format!("{}:{}", r.hostname, r.port);
        let help = match source {
            KeySource::UserKnownHosts => format!(
                "remove the old key with `ssh-keygen -R {}` and connect again",
                quote(&r.lookup_name()).unwrap_or_default()
            ),
            _ if !keys.accept_help.is_empty() => keys.accept_help.clone(),
            _ => format!(
                "forget the key pinned for {} and connect again",
                target.name
            ),
        };
        Peer {
            host: target.name.clone(),
            address,
            help,
            pinned: source == KeySource::Pinned,
        }
    }

    /// What ssh makes of the target (`ssh -G`) and whether the user's known_hosts knows it;
    /// asked once per target.
    async fn resolve(&self, target: &Target) -> Result<Arc<Resolved>, Error> {
        if let Some(r) = self.resolved.lock().unwrap().get(target) {
            return Ok(r.clone());
        }
        if target.address.starts_with('-') || target.address.is_empty() {
            return Err(Error::Invalid(format!(
                "host {}: {:?} is not an address",
                target.name, target.address
            )));
        }
        let mut cmd = Command::new("ssh");
        cmd.arg("-G")
            .args(self.base_args(target))
            .arg("--")
            .arg(&target.address);
        let out = local(cmd, "ssh -G").await?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "host {}: ssh cannot make sense of its settings: {}",
                target.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |k: &str| {
            text.lines().find_map(|l| {
                let (key, v) = l.split_once(' ')?;
                (key == k).then(|| v.trim().to_string())
            })
        };
        let hostname = field("hostname").unwrap_or_else(|| target.address.clone());
        let port = field("port").and_then(|p| p.parse().ok()).unwrap_or(22);
        let host_key_alias = field("hostkeyalias");
        let control_path = PathBuf::from(field("controlpath").unwrap_or_default());
        let mut files: Vec<String> = Vec::new();
        for k in ["userknownhostsfile", "globalknownhostsfile"] {
            files.extend(
                field(k)
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_string),
            );
        }
        let name = lookup_name(&hostname, port, host_key_alias.as_deref());
        let mut known_to_user = false;
        for f in files {
            let f = expand_home(&f);
            if f.as_os_str().is_empty() || f == Path::new("/dev/null") || !f.exists() {
                continue;
            }
            let mut cmd = Command::new("ssh-keygen");
            cmd.arg("-F").arg(&name).arg("-f").arg(&f);
            let out = local(cmd, "ssh-keygen -F").await?;
            if out.status.success() && !out.stdout.is_empty() {
                known_to_user = true;
                break;
            }
        }
        let private_known_hosts =
            self.dir
                .join("known_hosts")
                .join(file_id(&target.name, &hostname, port));
        let r = Arc::new(Resolved {
            hostname,
            port,
            host_key_alias,
            control_path,
            known_to_user,
            private_known_hosts,
            opening: tokio::sync::Mutex::new(None),
            sessions: tokio::sync::Semaphore::new(SESSIONS),
        });
        // Two calls may resolve at once: both use whichever was kept first.
        Ok(self
            .resolved
            .lock()
            .unwrap()
            .entry(target.clone())
            .or_insert(r)
            .clone())
    }

    /// The host key options of a call, the private file written when keys are pinned.
    fn key_args(&self, r: &Resolved, keys: &HostKeys) -> Result<(KeySource, Vec<String>), Error> {
        if r.known_to_user {
            return Ok((
                KeySource::UserKnownHosts,
                vec!["-o".into(), "StrictHostKeyChecking=yes".into()],
            ));
        }
        let file = &r.private_known_hosts;
        let source = if keys.pinned.is_empty() {
            if !file.exists() {
                write_private(file, "")?;
            }
            KeySource::FirstContact
        } else {
            let name = r.lookup_name();
            let mut text = String::new();
            for line in &keys.pinned {
                text.push_str(&Key::from_pinned(line)?.known_hosts_line(&name));
            }
            if std::fs::read_to_string(file).ok().as_deref() != Some(text.as_str()) {
                write_private(file, &text)?;
            }
            KeySource::Pinned
        };
        let strict = match source {
            KeySource::FirstContact => "accept-new",
            _ => "yes",
        };
        let mut a = Vec::new();
        for o in [
            format!("StrictHostKeyChecking={strict}"),
            format!("UserKnownHostsFile={}", file.display()),
            "GlobalKnownHostsFile=/dev/null".to_string(),
            "HashKnownHosts=no".to_string(),
            "UpdateHostKeys=no".to_string(),
        ] {
            a.push("-o".to_string());
            a.push(o);
        }
        Ok((source, a))
    }

    /// The ssh options of a call to `target` with `keys`, for a program that runs ssh itself
    /// (ansible's `ansible_ssh_common_args`): everything before the destination, including the
    /// shared control path, so it multiplexes over the same master.
    pub async fn ssh_args(&self, target: &Target, keys: &HostKeys) -> Result<Vec<String>, Error> {
        let r = self.resolve(target).await?;
        let (_, k) = self.key_args(&r, keys)?;
        let mut a = self.base_args(target);
        a.extend(k);
        Ok(a)
    }

    /// Opens the master connection and returns the host keys to pin. On first contact any
    /// master still open is stopped first, so the key recorded is the one the host offers now.
    pub async fn connect(&self, target: &Target, keys: &HostKeys) -> Result<Connected, Error> {
        let r = self.resolve(target).await?;
        let first = !r.known_to_user && keys.pinned.is_empty();
        if first {
            self.close(target).await;
            write_private(&r.private_known_hosts, "")?;
        }
        let timeout = self.connect_timeout * 2;
        self.call(target, keys, Remote::Argv(&["true"]), None, timeout)
            .await?
            .checked()?;
        let (source, _) = self.key_args(&r, keys)?;
        let host_keys = match source {
            KeySource::UserKnownHosts => Vec::new(),
            KeySource::Pinned => keys
                .pinned
                .iter()
                .map(|l| Key::from_pinned(l).map(|k| k.pinned_line(&r.hostname, r.port)))
                .collect::<Result<_, _>>()?,
            KeySource::FirstContact => {
                let text = std::fs::read_to_string(&r.private_known_hosts).map_err(|e| {
                    Error::io(format!("reading {}", r.private_known_hosts.display()), e)
                })?;
                text.lines()
                    .filter_map(Key::from_known_hosts_line)
                    .map(|k| k.pinned_line(&r.hostname, r.port))
                    .collect()
            }
        };
        Ok(Connected { source, host_keys })
    }

    /// Runs a command on the target. `stdin` is streamed to it; `timeout` bounds the whole call.
    /// Any exit status of the command itself is an [`Output`] (see [`Output::checked`]); ssh's
    /// own failures are errors.
    pub async fn run(
        &self,
        target: &Target,
        keys: &HostKeys,
        remote: Remote<'_>,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, Error> {
        let input = stdin.map(Source::Bytes);
        self.call(target, keys, remote, input, timeout).await
    }

    /// Writes `source` to `remote_path` with `mode`, atomically: streamed over stdin into a
    /// temporary file beside it (0600 while written), its size checked, then chmod and rename.
    /// The content is never on a command line.
    pub async fn upload(
        &self,
        target: &Target,
        keys: &HostKeys,
        source: Source<'_>,
        remote_path: &str,
        mode: u32,
        timeout: Duration,
    ) -> Result<(), Error> {
        if mode > 0o7777 {
            return Err(Error::Invalid(format!("file mode {mode:o} is not a mode")));
        }
        if !remote_path.starts_with('/') {
            return Err(Error::Invalid(format!(
                "upload to {remote_path:?}: the remote path must be absolute"
            )));
        }
        let size = match &source {
            Source::Bytes(b) => b.len() as u64,
            Source::File(p) => std::fs::metadata(p)
                .map_err(|e| Error::io(format!("reading {}", p.display()), e))?
                .len(),
        };
        const SCRIPT: &str = r#"set -e
p=$1; m=$2; n=$3
t=$(mktemp "$(dirname -- "$p")/.pipeline-upload.XXXXXX")
trap 'rm -f -- "$t"' EXIT
cat > "$t"
got=$(wc -c < "$t")
if [ "$got" -ne "$n" ]; then echo "upload: got $got of $n bytes" >&2; exit 1; fi
chmod -- "$m" "$t"
mv -f -- "$t" "$p"
trap - EXIT"#;
        let mode = format!("{mode:04o}");
        let size = size.to_string();
        let argv = [
            "sh",
            "-c",
            SCRIPT,
            "pipeline-upload",
            remote_path,
            &mode,
            &size,
        ];
        self.call(target, keys, Remote::Argv(&argv), Some(source), timeout)
            .await?
            .checked()
            .map(|_| ())
    }

    /// Stops the master connection of `target`, if one is open (`ssh -O exit`), and removes a
    /// socket it leaves.
    pub async fn close(&self, target: &Target) {
        let r = self.resolve(target).await.ok();
        let mut cmd = Command::new("ssh");
        cmd.args(self.base_args(target))
            .args(["-O", "exit", "--"])
            .arg(&target.address);
        let _ = local(cmd, "ssh -O exit").await;
        if let Some(r) = r {
            if !r.control_path.as_os_str().is_empty() {
                let _ = std::fs::remove_file(&r.control_path);
            }
        }
    }

    /// Whether the host still answers over the path calls take (the master, or a new connection
    /// when there is none): `true` there within the connect timeout. The failure when not.
    async fn probe(&self, args: &[String], address: &str, peer: &Peer) -> Option<Error> {
        let mut cmd = Command::new("ssh");
        cmd.args(args)
            .arg("--")
            .arg(address)
            .arg("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let limit = self.connect_timeout.max(Duration::from_secs(1));
        match tokio::time::timeout(limit, cmd.output()).await {
            Err(_) => Some(Error::Unreachable {
                host: peer.host.clone(),
                address: peer.address.clone(),
                reason: format!(
                    "no answer within {limit:?} while a command ran (the connection is dead)"
                ),
            }),
            Ok(Err(_)) => None,
            Ok(Ok(out)) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                classify(peer, out.status.code(), &stderr).filter(Error::is_unreachable)
            }
        }
    }

    /// One call: a session among the host's, the master opened if need be, then the command.
    async fn call(
        &self,
        target: &Target,
        keys: &HostKeys,
        remote: Remote<'_>,
        input: Option<Source<'_>>,
        timeout: Duration,
    ) -> Result<Output, Error> {
        let line = remote.command_line()?;
        let r = self.resolve(target).await?;
        let started = std::time::Instant::now();
        let timed_out = || {
            let (source, _) = self.key_args(&r, keys)?;
            let peer = self.peer(target, &r, keys, source);
            Err(Error::Timeout {
                host: peer.host,
                address: peer.address,
                after: timeout,
            })
        };
        let Ok(_session) = tokio::time::timeout(timeout, r.sessions.acquire()).await else {
            return timed_out();
        };
        let Some(left) = timeout.checked_sub(started.elapsed()) else {
            return timed_out();
        };
        self.open_master(target, &r, keys, left).await?;
        let Some(left) = timeout.checked_sub(started.elapsed()) else {
            return timed_out();
        };
        self.call_once(target, &r, keys, &line, input, left).await
    }

    /// Opens the master when none is open, one caller at a time; the others then multiplex
    /// over it. After a failed open, callers that waited go on without one (each fails or
    /// connects by itself, at once, instead of one after the other).
    async fn open_master(
        &self,
        target: &Target,
        r: &Resolved,
        keys: &HostKeys,
        timeout: Duration,
    ) -> Result<(), Error> {
        if r.control_path.as_os_str().is_empty() || r.control_path.exists() {
            return Ok(());
        }
        let Ok(mut last_failure) = tokio::time::timeout(timeout, r.opening.lock()).await else {
            return Ok(()); // the call's own deadline reports it
        };
        if r.control_path.exists()
            || last_failure.is_some_and(|t| t.elapsed() < self.connect_timeout)
        {
            return Ok(());
        }
        let limit = timeout.min(self.connect_timeout * 2);
        match self.call_once(target, r, keys, "true", None, limit).await {
            Ok(_) => {
                *last_failure = None;
                Ok(())
            }
            Err(e) => {
                *last_failure = Some(std::time::Instant::now());
                Err(e)
            }
        }
    }

    /// One ssh process for `line`: options, host keys, stdin, the deadline, the probes, the
    /// classification.
    async fn call_once(
        &self,
        target: &Target,
        r: &Resolved,
        keys: &HostKeys,
        line: &str,
        input: Option<Source<'_>>,
        timeout: Duration,
    ) -> Result<Output, Error> {
        let (source, key_args) = self.key_args(r, keys)?;
        let peer = self.peer(target, r, keys, source);
        let mut probe_args = self.base_args(target);
        probe_args.extend(key_args);
        let mut cmd = Command::new("ssh");
        cmd.args(&probe_args)
            .arg("--")
            .arg(&target.address)
            .arg(line)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let run = async {
            let mut child = cmd
                .spawn()
                .map_err(|e| Error::io("running ssh (is OpenSSH's client installed?)", e))?;
            let stdin = child.stdin.take();
            let feed = async move {
                let (Some(mut w), Some(input)) = (stdin, input) else {
                    return Ok(());
                };
                let sent = match input {
                    Source::Bytes(b) => w.write_all(b).await,
                    Source::File(p) => {
                        let mut f = tokio::fs::File::open(p)
                            .await
                            .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
                        copy_or_local_error(&mut f, &mut w, p).await?
                    }
                };
                // The remote end may stop reading (its status tells); only local reads fail.
                let _ = sent;
                let _ = w.shutdown().await;
                Ok::<(), Error>(())
            };
            let (fed, out) = tokio::join!(feed, child.wait_with_output());
            fed?;
            out.map_err(|e| Error::io("waiting for ssh", e))
        };
        // ssh's own keepalives let a master whose link went down silently linger ~10 s (measured
        // on the lab), so a call that runs long is watched by probes over the same path.
        let watch = async {
            loop {
                tokio::time::sleep(PROBE_AFTER).await;
                if let Some(e) = self.probe(&probe_args, &target.address, &peer).await {
                    return e;
                }
            }
        };
        let out = tokio::select! {
            out = run => out?,
            dead = watch => {
                self.close(target).await;
                return Err(dead);
            }
            _ = tokio::time::sleep(timeout) => {
                self.close(target).await;
                return Err(Error::Timeout {
                    host: peer.host,
                    address: peer.address,
                    after: timeout,
                });
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        match classify(&peer, out.status.code(), &stderr) {
            None | Some(Error::Remote { .. }) => Ok(Output {
                status: out.status.code().unwrap_or(-1),
                stdout: out.stdout,
                stderr: out.stderr,
                host: target.name.clone(),
            }),
            Some(e) => {
                if e.is_unreachable() {
                    self.close(target).await;
                }
                Err(e)
            }
        }
    }
}

impl Drop for Ssh {
    /// Stops the masters this transport opened (best effort, bounded).
    fn drop(&mut self) {
        let targets: Vec<Target> = self.resolved.lock().unwrap().keys().cloned().collect();
        let mut children = Vec::new();
        for t in &targets {
            let child = std::process::Command::new("ssh")
                .args(self.base_args(t))
                .args(["-O", "exit", "--"])
                .arg(&t.address)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            if let Ok(c) = child {
                children.push(c);
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        for mut c in children {
            while matches!(c.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Copies a local file into ssh's stdin; a failure to read the file is an error (the upload's
/// size check refuses what arrived), a failure to write is the remote's to report.
async fn copy_or_local_error(
    f: &mut tokio::fs::File,
    w: &mut tokio::process::ChildStdin,
    p: &Path,
) -> Result<std::io::Result<()>, Error> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
        if n == 0 {
            return Ok(Ok(()));
        }
        if let Err(e) = w.write_all(&buf[..n]).await {
            return Ok(Err(e));
        }
    }
}

/// A local helper command (`ssh -G`, `ssh -O`, `ssh-keygen`), bounded.
async fn local(mut cmd: Command, what: &str) -> Result<std::process::Output, Error> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match tokio::time::timeout(LOCAL_TIMEOUT, cmd.output()).await {
        Ok(out) => out.map_err(|e| Error::io(format!("running {what}"), e)),
        Err(_) => Err(Error::io(
            format!("running {what}"),
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 5 s"),
        )),
    }
}

/// Writes a private file (0600) by a temporary file and a rename, so a concurrent call reads
/// the old content or the new, never half.
fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// `~/x` with the home directory.
fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

/// A file name for a target's private known_hosts: readable, and unique by name, host and port
/// (FNV-1a, stable across builds).
fn file_id(name: &str, hostname: &str, port: u16) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name
        .bytes()
        .chain([0])
        .chain(hostname.bytes())
        .chain(port.to_be_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let readable: String = name
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{readable}-{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inventory_host_is_a_target() {
        let inv = pipeline_inventory::parse(
            "[web]\nweb1 ansible_host=10.0.0.1 ansible_port=2222 ansible_user=deploy \
             ansible_ssh_private_key_file=/keys/id\nweb2\n",
            "inventory.ini",
        )
        .unwrap();
        let hosts = inv.hosts_of("web").unwrap();
        let t: Vec<Target> = hosts.iter().map(Target::from).collect();
        assert_eq!(
            t[0],
            Target {
                name: "web1".into(),
                address: "10.0.0.1".into(),
                port: Some(2222),
                user: Some("deploy".into()),
                key_file: Some(PathBuf::from("/keys/id")),
            }
        );
        assert_eq!(t[1], Target::new("web2", "web2"));
    }

    #[test]
    fn private_file_names_are_plain_and_distinct() {
        let a = file_id("web1", "10.0.0.1", 22);
        assert!(a.starts_with("web1-"));
        assert_ne!(a, file_id("web1", "10.0.0.1", 2222));
        assert_ne!(a, file_id("web1", "10.0.0.2", 22));
        let hostile = file_id("../../etc/passwd x", "h", 22);
        assert!(
            !hostile.contains('/') && !hostile.contains(' '),
            "{hostile}"
        );
    }

    #[test]
    fn the_directory_must_be_short_and_plain() {
        let long = format!("/tmp/{}", "d".repeat(60));
        assert!(matches!(Ssh::new(long), Err(Error::Invalid(_))));
        assert!(matches!(Ssh::new("/tmp/a b"), Err(Error::Invalid(_))));
        assert!(matches!(Ssh::new("/tmp/a%h"), Err(Error::Invalid(_))));
    }

    #[test]
    fn every_call_has_the_options_that_keep_it_from_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let ssh = Ssh::new(dir.path().join("s")).unwrap();
        let mut t = Target::new("web1", "10.0.0.1");
        t.port = Some(2222);
        t.user = Some("deploy".into());
        let args = ssh.base_args(&t).join(" ");
        for want in [
            "BatchMode=yes",
            "ConnectTimeout=5",
            "ServerAliveInterval=2",
            "ServerAliveCountMax=2",
            "ControlMaster=auto",
            "ControlPersist=30s",
            "/cm-%C",
            "LogLevel=ERROR",
            "-p 2222",
            "-l deploy",
        ] {
            assert!(args.contains(want), "{want} missing: {args}");
        }
        assert!(!args.contains("-F"), "no -F unless asked: {args}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ssh.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
