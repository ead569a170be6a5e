//! What can go wrong reaching a host, and the one place that tells which from what ssh said.
//!
//! OpenSSH reports its own failures only as exit status 255 and a line on stderr, so
//! [`classify`] reads that line; every call goes through it.

use std::time::Duration;

/// A failure of the transport. `host` is the target's name, `address` `ADDR:PORT` as ssh
/// resolved it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection: timeout, refused, no route, name not found, or a connection the
    /// keepalives closed.
    #[error("{host} ({address}) is unreachable: {reason}")]
    Unreachable {
        host: String,
        address: String,
        reason: String,
    },
    /// The host offered a key other than the one known or pinned for it.
    #[error(
        "the host key of {host} ({address}) changed{}: the host may have been reinstalled, or \
         someone is in between; nothing was run on it. If the change is expected, check the new \
         fingerprint out of band and accept it deliberately: {help}",
        fingerprint.as_deref().map(|f| format!(" (it now offers {f})")).unwrap_or_default()
    )]
    HostKeyChanged {
        host: String,
        address: String,
        /// `SHA256:...` of the key the host offered, when ssh showed it.
        fingerprint: Option<String>,
        help: String,
    },
    /// Strict checking and no key known for the host.
    #[error("no host key of {host} ({address}) is known and strict checking refuses a new one: {detail}")]
    HostKeyUnknown {
        host: String,
        address: String,
        detail: String,
    },
    /// The host refused the login.
    #[error("{host} ({address}) refused the login: {detail}")]
    Authentication {
        host: String,
        address: String,
        detail: String,
    },
    /// The remote command ran and failed.
    #[error(
        "on {host}: the remote command exited with status {status}{}",
        stderr_tail(stderr)
    )]
    Remote {
        host: String,
        status: i32,
        stderr: String,
    },
    /// The call took longer than it was given; ssh was killed and the master stopped.
    #[error("{host} ({address}) did not finish within {after:?}: ssh was stopped")]
    Timeout {
        host: String,
        address: String,
        after: Duration,
    },
    /// A local failure: spawning ssh, reading a file to upload, the private directory.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A request that cannot be carried out as asked (a NUL in an argument, a bad pinned key).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// Whether the host could not be reached (also a timeout): the master is stopped after one.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Timeout { .. })
    }
}

fn stderr_tail(stderr: &str) -> String {
    let t = stderr.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!(": {t}")
    }
}

/// Who a call was for, to name in an error.
#[derive(Clone, Debug)]
pub struct Peer {
    pub host: String,
    /// `ADDR:PORT`.
    pub address: String,
    /// How to accept a changed key deliberately (for [`Error::HostKeyChanged`]).
    pub help: String,
    /// The keys checked were pinned in state: a host that offers none of them has changed its
    /// key, even when ssh calls it unknown (the pinned type is no longer offered).
    pub pinned: bool,
}

/// The failure, if any, that ssh's exit `status` (None: killed by a signal) and `stderr` show.
/// Status 0 is success; 255 with one of ssh's own messages is ssh's failure; anything else
/// (255 included, when ssh said nothing of its own) is the remote command's.
pub fn classify(peer: &Peer, status: Option<i32>, stderr: &str) -> Option<Error> {
    let status = match status {
        Some(0) => return None,
        Some(s) => s,
        None => {
            return Some(Error::Unreachable {
                host: peer.host.clone(),
                address: peer.address.clone(),
                reason: "ssh was killed by a signal".to_string(),
            })
        }
    };
    let remote = || Error::Remote {
        host: peer.host.clone(),
        status,
        stderr: stderr.to_string(),
    };
    if status != 255 {
        return Some(remote());
    }
    let lower = stderr.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    // ssh's own lines, without the remote's: the first line that says what went wrong.
    let detail = || ssh_line(stderr);
    if has(&[
        "remote host identification has changed",
        "has changed and you have requested strict checking",
        "host key for ",
    ]) && has(&["changed"])
    {
        return Some(Error::HostKeyChanged {
            host: peer.host.clone(),
            address: peer.address.clone(),
            fingerprint: fingerprint(stderr),
            help: peer.help.clone(),
        });
    }
    if has(&[
        "host key is known for",
        "host key verification failed",
        "no matching host key type",
    ]) {
        if peer.pinned {
            return Some(Error::HostKeyChanged {
                host: peer.host.clone(),
                address: peer.address.clone(),
                fingerprint: fingerprint(stderr),
                help: peer.help.clone(),
            });
        }
        return Some(Error::HostKeyUnknown {
            host: peer.host.clone(),
            address: peer.address.clone(),
            detail: detail(),
        });
    }
    if has(&[
        "permission denied",
        "too many authentication failures",
        "no more authentication methods",
        "authentication failed",
    ]) {
        return Some(Error::Authentication {
            host: peer.host.clone(),
            address: peer.address.clone(),
            detail: detail(),
        });
    }
    if has(&[
        "connection timed out",
        "operation timed out",
        "connection refused",
        "no route to host",
        "network is unreachable",
        "host is down",
        "could not resolve hostname",
        "name or service not known",
        "temporary failure in name resolution",
        "connection closed by",
        "connection reset by",
        "closed by remote host",
        "not responding",
        "broken pipe",
        "kex_exchange_identification",
        "banner exchange",
        "from master failed",
        "lost connection",
        "client_loop",
    ]) {
        return Some(Error::Unreachable {
            host: peer.host.clone(),
            address: peer.address.clone(),
            reason: detail(),
        });
    }
    Some(remote())
}

/// The first line of stderr that is ssh's (not a banner of `@`s, not empty).
fn ssh_line(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('@'))
        .unwrap_or("")
        .to_string()
}

/// `SHA256:...` of the key a host offered, from ssh's warning of a changed key.
fn fingerprint(stderr: &str) -> Option<String> {
    let at = stderr.find("sent by the remote host is").unwrap_or(0);
    let rest = &stderr[at..];
    let start = rest.find("SHA256:")?;
    let fp: String = rest[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "+/=:".contains(*c))
        .collect();
    Some(fp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer {
            host: "web1".into(),
            address: "10.88.3.2:22".into(),
            help: "run `pipeline apply -replace='host.web1[\"x\"]'`".into(),
            pinned: false,
        }
    }

    fn kind(status: Option<i32>, stderr: &str) -> String {
        match classify(&peer(), status, stderr) {
            None => "ok".into(),
            Some(e) => format!("{e:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap()
                .to_string(),
        }
    }

    // stderr as OpenSSH 9.2 writes it at LogLevel=ERROR.
    const CHANGED: &str = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
Someone could be eavesdropping on you right now (man-in-the-middle attack)!\n\
It is also possible that a host key has just been changed.\n\
The fingerprint for the ED25519 key sent by the remote host is\n\
SHA256:0PnZ8dQ2n1V3lS7qJtq2cN4zN2s6j3r0s1Yb0Z9k5iE.\n\
Please contact your system administrator.\n\
Add correct host key in /tmp/x/known_hosts/web1 to get rid of this message.\n\
Offending ED25519 key in /tmp/x/known_hosts/web1:1\n\
Host key for 10.88.3.2 has changed and you have requested strict checking.\n\
Host key verification failed.\n";

    #[test]
    fn every_kind_of_failure_is_told_from_status_and_stderr() {
        let cases: &[(Option<i32>, &str, &str)] = &[
            (Some(0), "", "ok"),
            (Some(0), "Warning: Permanently added '10.88.3.2' (ED25519) to the list of known hosts.\n", "ok"),
            (Some(255), CHANGED, "HostKeyChanged"),
            (Some(255), "No ED25519 host key is known for 10.88.3.2 and you have requested strict checking.\nHost key verification failed.\n", "HostKeyUnknown"),
            (Some(255), "root@10.88.3.2: Permission denied (publickey).\n", "Authentication"),
            (Some(255), "Received disconnect from 10.88.3.2 port 22:2: Too many authentication failures\n", "Authentication"),
            (Some(255), "ssh: connect to host 10.88.3.2 port 22: Connection timed out\n", "Unreachable"),
            (Some(255), "ssh: connect to host 10.88.3.2 port 22: Connection refused\n", "Unreachable"),
            (Some(255), "ssh: connect to host 10.88.3.2 port 22: No route to host\n", "Unreachable"),
            (Some(255), "ssh: Could not resolve hostname nowhere.invalid: Name or service not known\n", "Unreachable"),
            (Some(255), "Timeout, server 10.88.3.2 not responding.\n", "Unreachable"),
            (Some(255), "Connection closed by 10.88.3.2 port 22\n", "Unreachable"),
            (Some(255), "kex_exchange_identification: read: Connection reset by peer\n", "Unreachable"),
            (Some(255), "Connection timed out during banner exchange\n", "Unreachable"),
            (Some(255), "mux_client_request_session: read from master failed: Broken pipe\n", "Unreachable"),
            (Some(255), "client_loop: send disconnect: Broken pipe\n", "Unreachable"),
            // A master that refuses one more session (MaxSessions) is not a dead host.
            (Some(255), "mux_client_request_session: session request failed: Session open refused by peer\n", "Remote"),
            (None, "", "Unreachable"),
            (Some(1), "cat: /nope: No such file or directory\n", "Remote"),
            // A remote command's own message never makes it ssh's failure unless ssh exited 255.
            (Some(1), "Permission denied\n", "Remote"),
            (Some(255), "", "Remote"),
            (Some(255), "my tool: giving up\n", "Remote"),
        ];
        for (status, stderr, want) in cases {
            assert_eq!(
                &kind(*status, stderr),
                want,
                "status {status:?}, stderr {stderr:?}"
            );
        }
    }

    #[test]
    fn a_changed_key_names_the_host_the_new_fingerprint_and_how_to_accept_it() {
        let e = classify(&peer(), Some(255), CHANGED).unwrap();
        match &e {
            Error::HostKeyChanged { fingerprint, .. } => assert_eq!(
                fingerprint.as_deref(),
                Some("SHA256:0PnZ8dQ2n1V3lS7qJtq2cN4zN2s6j3r0s1Yb0Z9k5iE")
            ),
            other => panic!("{other:?}"),
        }
        let msg = e.to_string();
        for part in [
            "web1 (10.88.3.2:22)",
            "SHA256:0PnZ8dQ2n1V3lS7qJtq2cN4zN2s6j3r0s1Yb0Z9k5iE",
            "pipeline apply -replace='host.web1[\"x\"]'",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
    }

    #[test]
    fn a_pinned_host_that_offers_no_pinned_key_type_has_changed_its_key() {
        let unknown = "No ED25519 host key is known for 10.88.3.2 and you have requested strict checking.\nHost key verification failed.\n";
        let pinned = Peer {
            pinned: true,
            ..peer()
        };
        assert!(matches!(
            classify(&pinned, Some(255), unknown),
            Some(Error::HostKeyChanged {
                fingerprint: None,
                ..
            })
        ));
        assert!(matches!(
            classify(&peer(), Some(255), unknown),
            Some(Error::HostKeyUnknown { .. })
        ));
    }

    #[test]
    fn the_remote_commands_failure_keeps_its_status_and_stderr() {
        match classify(&peer(), Some(3), "boom\n") {
            Some(Error::Remote {
                status,
                stderr,
                host,
            }) => {
                assert_eq!(
                    (status, stderr.as_str(), host.as_str()),
                    (3, "boom\n", "web1")
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
