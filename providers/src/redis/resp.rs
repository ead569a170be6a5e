//! A small synchronous RESP2 client: enough for AUTH, HSET/HGETALL, SCAN, INFO, CONFIG and PING.
//! No pooling, no pipelining, no pub/sub. Used by the provider, `pipeline flags` and the
//! benchmark.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `redis://:PASSWORD@HOST:PORT`. `Display` leaves the password out (`HOST:PORT`).
#[derive(Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
}

impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Url({}:{}, password: ", self.host, self.port)?;
        f.write_str(if self.password.is_some() {
            "(sensitive))"
        } else {
            "none)"
        })
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Url {
    pub fn new(host: &str, port: u16, password: Option<&str>) -> Url {
        Url {
            host: host.to_string(),
            port,
            password: password.map(str::to_string),
        }
    }

    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = s
            .strip_prefix("redis://")
            .ok_or_else(|| "a redis URL starts with redis://".to_string())?;
        let rest = rest.split('/').next().unwrap_or_default();
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let password = auth.map(|a| a.split_once(':').map_or(a, |(_, p)| p).to_string());
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| "a redis URL names HOST:PORT".to_string())?;
        let port = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port number"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Url {
            host: host.to_string(),
            port,
            password: password.filter(|p| !p.is_empty()),
        })
    }

    /// The full URL, password included: sensitive.
    pub fn render(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match &self.password {
            Some(p) => format!("redis://:{p}@{host}:{}", self.port),
            None => format!("redis://{host}:{}", self.port),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn as_string(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }
    pub fn into_array(self) -> Vec<Reply> {
        match self {
            Reply::Array(Some(v)) => v,
            _ => Vec::new(),
        }
    }
}

#[derive(Debug)]
pub enum Error {
    /// Connecting, reading or writing failed.
    Io(std::io::Error),
    /// The server answered `-ERR ...`, `-NOAUTH ...`, `-WRONGPASS ...`.
    Server(String),
    Protocol(String),
}

impl Error {
    /// NOAUTH or WRONGPASS: the password is missing or wrong.
    pub fn is_auth(&self) -> bool {
        matches!(self, Error::Server(m) if m.starts_with("NOAUTH") || m.starts_with("WRONGPASS"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Server(m) => write!(f, "{m}"),
            Error::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

pub struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    /// Connect (each step bounded by `timeout`) and AUTH when the URL has a password.
    pub fn connect(url: &Url, timeout: Duration) -> Result<Conn, Error> {
        let addr = (url.host.as_str(), url.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| Error::Protocol(format!("{url} does not resolve")))?;
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let mut c = Conn {
            stream: BufReader::new(s),
        };
        if let Some(p) = &url.password {
            c.cmd(&["AUTH", p])?;
        }
        Ok(c)
    }

    /// Send one command and read its reply; an error reply becomes `Error::Server`.
    pub fn cmd(&mut self, args: &[&str]) -> Result<Reply, Error> {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&buf)?;
        self.read_reply()
    }

    fn read_line(&mut self) -> Result<String, Error> {
        let mut line = Vec::new();
        let n = self.stream.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        if !line.ends_with(b"\r\n") {
            return Err(Error::Protocol("a reply line without CRLF".into()));
        }
        line.truncate(line.len() - 2);
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    fn read_reply(&mut self) -> Result<Reply, Error> {
        let line = self.read_line()?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let int = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| Error::Protocol(format!("{s:?} is not an integer")))
        };
        match kind {
            "+" => Ok(Reply::Simple(rest.to_string())),
            "-" => Err(Error::Server(rest.to_string())),
            ":" => Ok(Reply::Int(int(rest)?)),
            "$" => {
                let n = int(rest)?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut b = vec![0u8; n as usize + 2];
                std::io::Read::read_exact(&mut self.stream, &mut b)?;
                b.truncate(n as usize);
                Ok(Reply::Bulk(Some(b)))
            }
            "*" => {
                let n = int(rest)?;
                if n < 0 {
                    return Ok(Reply::Array(None));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.read_reply()?);
                }
                Ok(Reply::Array(Some(v)))
            }
            _ => Err(Error::Protocol(format!("unexpected reply {line:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("redis://:s3cret@127.0.0.1:6380").unwrap();
        assert_eq!(u, Url::new("127.0.0.1", 6380, Some("s3cret")));
        assert_eq!(u.render(), "redis://:s3cret@127.0.0.1:6380");
        assert_eq!(u.to_string(), "127.0.0.1:6380");
        assert!(!format!("{u:?}").contains("s3cret"));
        let u = Url::parse("redis://localhost:1").unwrap();
        assert_eq!(u.password, None);
        assert!(Url::parse("http://x:1").is_err());
        assert!(Url::parse("redis://x").is_err());
    }

    #[test]
    fn replies_over_a_socket() {
        use std::io::Read;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = vec![0u8; 256];
            let n = s.read(&mut got).unwrap();
            s.write_all(b"*4\r\n$7\r\nenabled\r\n$1\r\n1\r\n$7\r\npercent\r\n$-1\r\n")
                .unwrap();
            let _ = s.read(&mut got[n..]).unwrap();
            s.write_all(b"-WRONGPASS invalid username-password pair\r\n")
                .unwrap();
            String::from_utf8_lossy(&got[..n]).into_owned()
        });
        let mut c =
            Conn::connect(&Url::new("127.0.0.1", port, None), Duration::from_secs(2)).unwrap();
        let r = c.cmd(&["HGETALL", "flag:x"]).unwrap();
        assert_eq!(
            r,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"enabled".to_vec())),
                Reply::Bulk(Some(b"1".to_vec())),
                Reply::Bulk(Some(b"percent".to_vec())),
                Reply::Bulk(None),
            ]))
        );
        let e = c.cmd(&["PING"]).unwrap_err();
        assert!(e.is_auth(), "{e}");
        assert_eq!(h.join().unwrap(), "*2\r\n$7\r\nHGETALL\r\n$6\r\nflag:x\r\n");
    }
}
