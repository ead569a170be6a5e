//! The ansible.cfg of a run: written by the runner, never read from the working directory.

use super::AnsibleError;
use std::path::{Path, PathBuf};

/// How ansible reaches the hosts. The transport decides the ssh options.
#[derive(Clone, Debug)]
pub struct Connection {
    /// `[ssh_connection] ssh_args`, one argument an element (quoted for ansible's shlex split).
    pub ssh_args: Vec<String>,
    /// Where ControlMaster sockets go; `None`: `cp/` in the runner's directory. ssh's socket
    /// paths are short: at most [`MAX_CONTROL_PATH_DIR`] bytes.
    pub control_path_dir: Option<PathBuf>,
    /// Hosts worked on at once.
    pub forks: u32,
    /// Seconds to establish an SSH connection (`timeout`).
    pub connect_timeout: u32,
    /// Extra attempts after an SSH error (255). 0: an unreachable host is reported at once.
    pub retries: u32,
}

/// A unix socket path holds 107 bytes; ansible's ControlPath is `DIR/` and 40 hex digits.
pub const MAX_CONTROL_PATH_DIR: usize = 107 - 41;

impl Default for Connection {
    /// Keepalives that end a session to a dead host in ~6 s, and multiplexing (MACHINE-FACTS:
    /// without keepalives, a host whose link went down held ansible ~10 minutes).
    fn default() -> Connection {
        Connection {
            ssh_args: [
                "-C",
                "-o",
                "ControlMaster=auto",
                "-o",
                "ControlPersist=30s",
                "-o",
                "ServerAliveInterval=2",
                "-o",
                "ServerAliveCountMax=2",
            ]
            .map(String::from)
            .to_vec(),
            control_path_dir: None,
            forks: 20,
            connect_timeout: 5,
            retries: 0,
        }
    }
}

/// What the generated file points at.
pub(crate) struct Paths<'a> {
    pub bundle: &'a Path,
    pub control_path_dir: &'a Path,
    pub local_tmp: &'a Path,
}

/// The text of ansible.cfg. Every value is checked to mean what it says in ansible's INI reader
/// (Python's configparser with `;` inline comments, read raw).
pub(crate) fn render(conn: &Connection, paths: &Paths) -> Result<String, AnsibleError> {
    let cp = path_value("control_path_dir", paths.control_path_dir)?;
    if cp.len() > MAX_CONTROL_PATH_DIR {
        return Err(AnsibleError::Config(format!(
            "control_path_dir {cp} is {} bytes: ssh's ControlPath sockets need it at most {MAX_CONTROL_PATH_DIR}; choose a shorter directory",
            cp.len()
        )));
    }
    if conn.forks == 0 {
        return Err(AnsibleError::Config("forks must be at least 1".into()));
    }
    let ssh_args = conn
        .ssh_args
        .iter()
        .map(|a| shell_word(a))
        .collect::<Vec<_>>()
        .join(" ");
    let ssh_args = ini_value("ssh_args", &ssh_args)?;
    let bundle = paths.bundle;
    let callbacks = path_value("callback_plugins", &bundle.join("callback_plugins"))?;
    let roles = path_value("roles_path", &bundle.join("roles"))?;
    if roles.contains(':') {
        return Err(AnsibleError::Config(format!(
            "roles_path {roles}: a path with ':' cannot be in ansible's roles_path"
        )));
    }
    let local_tmp = path_value("local_tmp", paths.local_tmp)?;
    let forks = conn.forks;
    let timeout = conn.connect_timeout;
    let retries = conn.retries;
    Ok(format!(
        "# Written by pipeline for one ansible-playbook run.\n\
         [defaults]\n\
         host_key_checking = True\n\
         forks = {forks}\n\
         gathering = explicit\n\
         retry_files_enabled = False\n\
         stdout_callback = default\n\
         callbacks_enabled = pipeline_events\n\
         callback_plugins = {callbacks}\n\
         roles_path = {roles}\n\
         local_tmp = {local_tmp}\n\
         remote_tmp = ~/.ansible/tmp\n\
         interpreter_python = auto_silent\n\
         nocolor = True\n\
         timeout = {timeout}\n\
         \n\
         [connection]\n\
         pipelining = True\n\
         \n\
         [ssh_connection]\n\
         pipelining = True\n\
         ssh_args = {ssh_args}\n\
         control_path_dir = {cp}\n\
         timeout = {timeout}\n\
         retries = {retries}\n"
    ))
}

fn path_value(key: &str, p: &Path) -> Result<String, AnsibleError> {
    let s = p
        .to_str()
        .ok_or_else(|| AnsibleError::Config(format!("{key}: {} is not UTF-8", p.display())))?;
    ini_value(key, s).map(str::to_string)
}

/// A value configparser reads back unchanged: one line, no comment, no template.
fn ini_value<'a>(key: &str, v: &'a str) -> Result<&'a str, AnsibleError> {
    let bad = |why: &str| {
        Err(AnsibleError::Config(format!(
            "{key} = {v:?} cannot be written to ansible.cfg: {why}"
        )))
    };
    if v.contains(['\n', '\r', '\0']) {
        return bad("it has a line break or NUL");
    }
    if v != v.trim() {
        return bad("it starts or ends with white space");
    }
    if v.contains(" ;") || v.contains("\t;") || v.starts_with(';') || v.starts_with('#') {
        return bad("configparser would read part of it as a comment");
    }
    if v.contains("{{") || v.contains("{%") || v.contains("{#") {
        return bad("ansible could read it as a template");
    }
    Ok(v)
}

/// One argument for a POSIX-shell-like split (ansible splits ssh_args with shlex).
pub(crate) fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\"'\"'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(tmp: &Path) -> (PathBuf, PathBuf, PathBuf) {
        (tmp.join("b"), tmp.join("cp"), tmp.join("t"))
    }

    fn render_with(conn: &Connection) -> Result<String, AnsibleError> {
        let (b, cp, t) = paths(Path::new("/w"));
        render(
            conn,
            &Paths {
                bundle: &b,
                control_path_dir: &cp,
                local_tmp: &t,
            },
        )
    }

    #[test]
    fn the_config_has_the_settings_the_runner_relies_on() {
        let text = render_with(&Connection::default()).unwrap();
        for line in [
            "host_key_checking = True",
            "pipelining = True",
            "forks = 20",
            "gathering = explicit",
            "retry_files_enabled = False",
            "callbacks_enabled = pipeline_events",
            "callback_plugins = /w/b/callback_plugins",
            "roles_path = /w/b/roles",
            "control_path_dir = /w/cp",
            "timeout = 5",
            "retries = 0",
            "ssh_args = -C -o ControlMaster=auto -o ControlPersist=30s -o ServerAliveInterval=2 -o ServerAliveCountMax=2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn ssh_args_are_quoted_for_a_shell_split() {
        let conn = Connection {
            ssh_args: vec![
                "-o".into(),
                "ProxyCommand=ssh -W %h:%p jump".into(),
                "-o".into(),
                "UserKnownHostsFile=/k/it's here".into(),
            ],
            ..Connection::default()
        };
        let text = render_with(&conn).unwrap();
        assert!(
            text.contains(
                "ssh_args = -o 'ProxyCommand=ssh -W %h:%p jump' -o 'UserKnownHostsFile=/k/it'\"'\"'s here'\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn values_ansible_would_misread_are_refused() {
        for arg in ["a\nb", "x ;comment", "{{ lookup('pipe', 'id') }}"] {
            let conn = Connection {
                ssh_args: vec![arg.into()],
                ..Connection::default()
            };
            let err = render_with(&conn).unwrap_err().to_string();
            assert!(err.contains("ssh_args"), "{err}");
        }
        let long = PathBuf::from(format!("/{}", "d".repeat(80)));
        let err = render(
            &Connection::default(),
            &Paths {
                bundle: Path::new("/b"),
                control_path_dir: &long,
                local_tmp: Path::new("/t"),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("control_path_dir") && err.contains("shorter"),
            "{err}"
        );
    }
}
