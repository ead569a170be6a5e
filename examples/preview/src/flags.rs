//! Feature flags.
//!
//! Flags are read per request so they can be flipped without a restart.
//!
//! With `FLAGS_URL` set (`redis://:PASSWORD@HOST:PORT`, the redis mirror on this host that
//! `pipeline`'s `flags` store runs next to every instance), a flag is read from redis on every
//! request: `HGETALL flag:NAME` over one persistent connection shared by the workers, with a
//! 200 ms timeout. The hash has `enabled` (`"1"`/`"0"`) and `percent` (`"0"`..`"100"`, the
//! share of requests that see the flag on; missing means 100).
//!
//! * With a percentage below 100 the decision is made per request from a process-wide counter:
//!   request `n` sees the flag on when `n % 100 < percent`, so exactly `percent` of every 100
//!   consecutive requests do (deterministic, no randomness needed).
//! * When redis cannot be reached (or answers with an error) the last value read is used, and
//!   the connection is retried at most once a second, so an outage costs no latency.
//! * Before any value was read, or when the flag does not exist in redis, the environment
//!   decides: `PREVIEW_TABLES` (`on`/`off`), default on.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Connect, read and write timeout for the flag store.
const TIMEOUT: Duration = Duration::from_millis(200);
/// After a failure, how long the last known values are used before reconnecting.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Whether GFM tables are rendered: flag `tables` in the store at `FLAGS_URL`, else
/// `PREVIEW_TABLES` = `on`/`off` (default on).
pub fn tables_enabled() -> bool {
    let fallback = flag_value(std::env::var("PREVIEW_TABLES").ok().as_deref(), true);
    flag("tables", fallback)
}

/// A flag from the store (see the module docs), or `fallback` when there is none.
pub fn flag(name: &str, fallback: bool) -> bool {
    static STORE: OnceLock<Option<Mutex<Store>>> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let store = STORE.get_or_init(|| {
        let url = std::env::var("FLAGS_URL").ok().filter(|u| !u.is_empty())?;
        match RedisUrl::parse(&url) {
            Ok(u) => Some(Mutex::new(Store::new(u))),
            Err(e) => {
                eprintln!("preview: FLAGS_URL is ignored: {e}");
                None
            }
        }
    });
    let Some(store) = store else {
        return fallback;
    };
    let value = match store.lock() {
        Ok(mut s) => s.get(name),
        Err(poisoned) => poisoned.into_inner().get(name),
    };
    decide(value, fallback, COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// On or off for request number `n`.
pub fn decide(value: Option<FlagValue>, fallback: bool, n: u64) -> bool {
    match value {
        None => fallback,
        Some(v) if !v.enabled => false,
        Some(v) => v.percent >= 100 || n % 100 < u64::from(v.percent),
    }
}

/// Interpret a flag's raw value: `on`/`true`/`1`/`yes` and `off`/`false`/`0`/`no`
/// (case-insensitive, surrounding whitespace ignored); anything else, or no
/// value at all, yields `default`.
pub fn flag_value(raw: Option<&str>, default: bool) -> bool {
    match raw.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("on" | "true" | "1" | "yes" | "enabled") => true,
        Some("off" | "false" | "0" | "no" | "disabled") => false,
        _ => default,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlagValue {
    pub enabled: bool,
    pub percent: u8,
}

impl FlagValue {
    /// From the field/value pairs of `HGETALL`; None for an empty hash (no such flag).
    pub fn from_fields(fields: &[String]) -> Option<FlagValue> {
        if fields.is_empty() {
            return None;
        }
        let mut enabled = false;
        let mut percent = None;
        for pair in fields.chunks(2) {
            if let [k, v] = pair {
                match k.as_str() {
                    "enabled" => enabled = flag_value(Some(v), false),
                    "percent" => percent = v.trim().parse::<f64>().ok(),
                    _ => {}
                }
            }
        }
        Some(FlagValue {
            enabled,
            percent: percent.map_or(100, |p| p.clamp(0.0, 100.0).round() as u8),
        })
    }
}

/// `redis://:PASSWORD@HOST:PORT`.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
}

impl RedisUrl {
    pub fn parse(s: &str) -> Result<RedisUrl, String> {
        let rest = s
            .strip_prefix("redis://")
            .ok_or("it does not start with redis://")?;
        let rest = rest.split('/').next().unwrap_or_default();
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let password = auth
            .map(|a| a.split_once(':').map_or(a, |(_, p)| p).to_string())
            .filter(|p| !p.is_empty());
        let (host, port) = hostport.rsplit_once(':').ok_or("it has no :PORT")?;
        let port = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port"))?;
        Ok(RedisUrl {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port,
            password,
        })
    }
}

/// The connection to the flag store and the last values read from it.
pub struct Store {
    url: RedisUrl,
    conn: Option<BufReader<TcpStream>>,
    retry_at: Option<Instant>,
    last: Vec<(String, Option<FlagValue>)>,
}

impl Store {
    pub fn new(url: RedisUrl) -> Store {
        Store {
            url,
            conn: None,
            retry_at: None,
            last: Vec::new(),
        }
    }

    /// The flag's current value, or the last one read when the store does not answer.
    pub fn get(&mut self, name: &str) -> Option<FlagValue> {
        let waiting = self.retry_at.is_some_and(|t| Instant::now() < t);
        if !waiting {
            match self.fetch(name) {
                Ok(v) => {
                    self.retry_at = None;
                    match self.last.iter_mut().find(|(n, _)| n == name) {
                        Some(slot) => slot.1 = v,
                        None => self.last.push((name.to_string(), v)),
                    }
                    return v;
                }
                Err(_) => {
                    self.conn = None;
                    self.retry_at = Some(Instant::now() + RETRY_AFTER);
                }
            }
        }
        self.last
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| *v)
    }

    fn fetch(&mut self, name: &str) -> std::io::Result<Option<FlagValue>> {
        if self.conn.is_none() {
            let addr = (self.url.host.as_str(), self.url.port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other("the flag store address does not resolve"))?;
            let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.set_write_timeout(Some(TIMEOUT))?;
            s.set_nodelay(true)?;
            let mut c = BufReader::new(s);
            if let Some(p) = self.url.password.clone() {
                command(&mut c, &["AUTH", &p])?;
            }
            self.conn = Some(c);
        }
        let c = self.conn.as_mut().expect("connected above");
        let fields = command(c, &["HGETALL", &format!("flag:{name}")])?;
        Ok(FlagValue::from_fields(&fields))
    }
}

/// Send one command; the reply flattened to strings (an error reply is an Err).
fn command(c: &mut BufReader<TcpStream>, args: &[&str]) -> std::io::Result<Vec<String>> {
    let mut buf = format!("*{}\r\n", args.len());
    for a in args {
        buf.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    c.get_mut().write_all(buf.as_bytes())?;
    let mut out = Vec::new();
    read_reply(c, &mut out)?;
    Ok(out)
}

fn read_reply<R: BufRead>(c: &mut R, out: &mut Vec<String>) -> std::io::Result<()> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut line = String::new();
    if c.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let int = || {
        rest.parse::<i64>()
            .map_err(|_| bad(format!("bad length {rest:?}")))
    };
    match kind {
        "+" | ":" => out.push(rest.to_string()),
        "-" => return Err(bad(format!("the flag store says: {rest}"))),
        "$" => {
            let n = int()?;
            if n >= 0 {
                let mut b = vec![0u8; n as usize + 2];
                c.read_exact(&mut b)?;
                b.truncate(n as usize);
                out.push(String::from_utf8_lossy(&b).into_owned());
            }
        }
        "*" => {
            for _ in 0..int()?.max(0) {
                read_reply(c, out)?;
            }
        }
        _ => return Err(bad(format!("unexpected reply {line:?}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn flag_values() {
        assert!(flag_value(None, true));
        assert!(!flag_value(None, false));
        assert!(flag_value(Some("on"), false));
        assert!(flag_value(Some(" ON "), false));
        assert!(flag_value(Some("true"), false));
        assert!(!flag_value(Some("off"), true));
        assert!(!flag_value(Some("Off"), true));
        assert!(!flag_value(Some("0"), true));
        assert!(flag_value(Some("bogus"), true));
        assert!(flag_value(Some(""), true));
    }

    #[test]
    fn urls_and_fields() {
        let u = RedisUrl::parse("redis://:pw@127.0.0.1:6390").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.password.as_deref()),
            ("127.0.0.1", 6390, Some("pw"))
        );
        assert_eq!(RedisUrl::parse("redis://h:1").unwrap().password, None);
        assert!(RedisUrl::parse("http://h:1").is_err());
        let f = |v: &[&str]| {
            FlagValue::from_fields(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(f(&[]), None);
        assert_eq!(
            f(&["enabled", "1", "percent", "30"]),
            Some(FlagValue {
                enabled: true,
                percent: 30
            })
        );
        assert_eq!(f(&["enabled", "1"]).unwrap().percent, 100);
        assert!(!f(&["enabled", "0", "percent", "100"]).unwrap().enabled);
    }

    #[test]
    fn percent_is_exact_per_hundred_requests() {
        let v = Some(FlagValue {
            enabled: true,
            percent: 30,
        });
        assert_eq!((0..100).filter(|&n| decide(v, false, n)).count(), 30);
        assert_eq!((0..200).filter(|&n| decide(v, false, n)).count(), 60);
        assert!(!decide(
            Some(FlagValue {
                enabled: false,
                percent: 100
            }),
            true,
            0
        ));
        assert!(decide(None, true, 0) && !decide(None, false, 0));
    }

    /// A fake redis answering AUTH and HGETALL with the given flag, one connection, then gone.
    fn fake_redis(enabled: &'static str) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut seen = Vec::new();
            for _ in 0..2 {
                let mut args = Vec::new();
                if read_reply(&mut r, &mut args).is_err() {
                    break;
                }
                let reply = match args[0].as_str() {
                    "AUTH" => "+OK\r\n".to_string(),
                    _ => format!("*2\r\n$7\r\nenabled\r\n$1\r\n{enabled}\r\n"),
                };
                seen.push(args.join(" "));
                w.write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        (port, h)
    }

    #[test]
    fn reads_the_store_and_keeps_the_last_value_when_it_is_gone() {
        let (port, h) = fake_redis("0");
        let mut s =
            Store::new(RedisUrl::parse(&format!("redis://:secret@127.0.0.1:{port}")).unwrap());
        assert_eq!(
            s.get("tables"),
            Some(FlagValue {
                enabled: false,
                percent: 100
            })
        );
        assert_eq!(
            h.join().unwrap(),
            vec!["AUTH secret", "HGETALL flag:tables"]
        );
        // The store is gone now: the last value stays, without waiting on every request.
        let t = Instant::now();
        for _ in 0..50 {
            assert_eq!(s.get("tables").map(|v| v.enabled), Some(false));
        }
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        // A flag never read falls back to the default.
        assert_eq!(s.get("other"), None);
    }
}
