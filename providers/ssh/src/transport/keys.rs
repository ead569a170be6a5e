//! Host keys: which known_hosts a call checks against, and the keys it returns to pin.

use super::Error;

/// The host keys a call may trust, given by the caller (from state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostKeys {
    /// Keys pinned in state, one `[ADDR]:PORT TYPE BASE64` line each. Empty: none pinned yet.
    pub pinned: Vec<String>,
    /// How to accept a changed pinned key deliberately, shown in [`Error::HostKeyChanged`]
    /// (e.g. `` run `pipeline apply -replace='host.web1["x"]'` ``). Empty: a generic sentence.
    pub accept_help: String,
}

impl HostKeys {
    /// Nothing pinned: the user's known_hosts if it knows the host, else first contact.
    pub fn first_contact() -> HostKeys {
        HostKeys::default()
    }

    /// The keys pinned in state.
    pub fn pinned<S: Into<String>>(lines: impl IntoIterator<Item = S>) -> HostKeys {
        HostKeys {
            pinned: lines.into_iter().map(Into::into).collect(),
            accept_help: String::new(),
        }
    }

    /// With the sentence that says how to accept a changed key.
    pub fn with_accept_help(mut self, help: impl Into<String>) -> HostKeys {
        self.accept_help = help.into();
        self
    }
}

/// Where the keys a call checks against came from, in the order they are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The user's (or the system's) known_hosts names the host: ssh checks it strictly.
    UserKnownHosts,
    /// The keys pinned in state, written to a private known_hosts file of the host.
    Pinned,
    /// Neither: the key the host offers is accepted once, recorded and returned to be pinned.
    FirstContact,
}

/// One key: `TYPE BASE64`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    pub kind: String,
    pub base64: String,
}

impl Key {
    /// The type and key of a known_hosts line (`HOSTS TYPE BASE64 [COMMENT]`); None for
    /// comments, blank lines and markers (`@revoked`, `@cert-authority`).
    pub fn from_known_hosts_line(line: &str) -> Option<Key> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
            return None;
        }
        let mut f = line.split_whitespace();
        let _hosts = f.next()?;
        let kind = f.next()?;
        let base64 = f.next()?;
        Key::new(kind, base64).ok()
    }

    pub fn new(kind: &str, base64: &str) -> Result<Key, Error> {
        let kind_ok = !kind.is_empty()
            && kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-@.".contains(&b));
        let b64_ok = !base64.is_empty()
            && base64
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
        if !kind_ok || !b64_ok {
            return Err(Error::Invalid(format!(
                "a pinned host key is not `[ADDR]:PORT TYPE BASE64`: type {kind:?}, key {base64:?}"
            )));
        }
        Ok(Key {
            kind: kind.to_string(),
            base64: base64.to_string(),
        })
    }

    /// A pinned line (`[ADDR]:PORT TYPE BASE64`; the host part is the caller's record of where
    /// it was seen and is not trusted for matching: the key is checked against the target).
    pub fn from_pinned(line: &str) -> Result<Key, Error> {
        let mut f = line.split_whitespace();
        match (f.next(), f.next(), f.next(), f.next()) {
            (Some(_host), Some(kind), Some(b64), None) => Key::new(kind, b64),
            _ => Err(Error::Invalid(format!(
                "a pinned host key is not `[ADDR]:PORT TYPE BASE64`: {line:?}"
            ))),
        }
    }

    /// `[host]:port TYPE BASE64`, the form state keeps.
    pub fn pinned_line(&self, host: &str, port: u16) -> String {
        format!("[{host}]:{port} {} {}", self.kind, self.base64)
    }

    /// `NAME TYPE BASE64` for a known_hosts file; `name` is what ssh looks the host up by.
    pub fn known_hosts_line(&self, name: &str) -> String {
        format!("{name} {} {}\n", self.kind, self.base64)
    }
}

/// The name ssh looks a host up by in known_hosts: `HostKeyAlias` when set, else the host,
/// with `[...]:PORT` unless the port is 22.
pub(crate) fn lookup_name(hostname: &str, port: u16, alias: Option<&str>) -> String {
    match alias {
        Some(a) => a.to_string(),
        None if port == 22 => hostname.to_string(),
        None => format!("[{hostname}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_lines_round_trip_and_bad_ones_are_refused() {
        let k = Key::from_pinned("[10.88.3.2]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH").unwrap();
        assert_eq!(
            k.pinned_line("10.88.3.2", 22),
            "[10.88.3.2]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH"
        );
        assert_eq!(
            k.known_hosts_line(&lookup_name("10.88.3.2", 22, None)),
            "10.88.3.2 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH\n"
        );
        assert_eq!(lookup_name("h", 2222, None), "[h]:2222");
        assert_eq!(lookup_name("h", 2222, Some("pin")), "pin");
        for bad in [
            "",
            "ssh-ed25519 AAAA",
            "[h]:22 ssh-ed25519 AAAA extra",
            "[h]:22 ssh-ed25519 AA\nAA",
            "[h]:22 ssh ed25519 AA'AA",
        ] {
            assert!(Key::from_pinned(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Key::from_known_hosts_line("# comment"), None);
        assert_eq!(Key::from_known_hosts_line("@revoked * ssh-rsa AAAA"), None);
    }
}
