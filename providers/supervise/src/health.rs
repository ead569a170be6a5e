//! Health checks: a hand-written HTTP/1.1 request over a std `TcpStream`, or a plain TCP connect.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::{HealthCheck, HealthKind};

/// Smallest timeout we ever use, so that a `timeout_ms` of 0 does not mean "block forever".
const MIN_TIMEOUT: Duration = Duration::from_millis(10);

fn resolve(address: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = (address, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address}:{port}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("cannot resolve {address}:{port}: no addresses"));
    }
    Ok(addrs)
}

fn connect(address: &str, port: u16, deadline: Instant) -> Result<TcpStream, String> {
    let mut last = String::new();
    for addr in resolve(address, port)? {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(MIN_TIMEOUT);
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    Err(last)
}

fn remaining(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err("timed out".to_string())
    } else {
        Ok(left)
    }
}

/// Run one health check against `address:port`. `Ok(())` when healthy, otherwise a one-line reason.
pub fn check_once(address: &str, port: u16, health: &HealthCheck) -> Result<(), String> {
    let timeout = Duration::from_millis(health.timeout_ms).max(MIN_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let mut stream = connect(address, port, deadline)?;
    let (method, path, body, expect_status) = match &health.kind {
        HealthKind::Tcp => return Ok(()),
        HealthKind::Http {
            method,
            path,
            body,
            expect_status,
        } => (method, path, body, *expect_status),
    };
    let what = format!("{method} http://{address}:{port}{path}");
    let body = body.as_deref().unwrap_or("");
    let host = if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: pipeline-supervise\r\nAccept: */*\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);

    let io_err = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!("{what}: timed out after {} ms", timeout.as_millis())
        } else {
            format!("{what}: {e}")
        }
    };
    let timed_out = |_| format!("{what}: timed out after {} ms", timeout.as_millis());

    stream
        .set_write_timeout(Some(remaining(deadline).map_err(timed_out)?))
        .map_err(io_err)?;
    stream.write_all(req.as_bytes()).map_err(io_err)?;

    // Read until the end of the status line (or EOF), bounded in size and time.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        if buf.windows(2).any(|w| w == b"\r\n") || buf.len() > 8192 {
            break;
        }
        stream
            .set_read_timeout(Some(remaining(deadline).map_err(timed_out)?))
            .map_err(io_err)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        }
    }
    let line_end = buf
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..line_end]).to_string();
    if line.is_empty() {
        return Err(format!("{what}: connection closed without a response"));
    }
    let status = parse_status_line(&line)
        .ok_or_else(|| format!("{what}: malformed status line {line:?}"))?;
    if status == expect_status {
        Ok(())
    } else {
        Err(format!("{what}: status {status}, expected {expect_status}"))
    }
}

/// `HTTP/1.1 200 OK` -> 200.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// A free TCP port on `address`: bind port 0, read it, drop the listener.
pub fn free_port(address: &str) -> std::io::Result<u16> {
    // The port is released before its user binds it. Never hand the same one out twice in a
    // process, and reserve it for a minute across processes (a file per port in the temp dir),
    // or two replicas started side by side, by one apply or by two, could be given one port.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join("pipeline-ports");
    let _ = std::fs::create_dir_all(&dir);
    // Below the kernel's ephemeral range: outgoing connections take their source ports from
    // that range and could grab a port between our check and the server's bind.
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = if low > 12000 {
        (10000u16, low - 1)
    } else {
        (low.saturating_add(1000), 65000)
    };
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ (std::process::id() as u64) << 32;
    for _ in 0..512 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = from + (seed % u64::from(to - from)) as u16;
        if given.contains(&port)
            || TcpListener::bind((address, port)).is_err()
            || !reserve(&dir.join(port.to_string()))
        {
            continue;
        }
        given.push(port);
        return Ok(port);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free port that is not reserved already",
    ))
}

/// Claim `path` unless another process claimed it less than a minute ago.
fn reserve(path: &std::path::Path) -> bool {
    use std::fs::OpenOptions;
    if OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .is_ok()
    {
        return true;
    }
    let fresh = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < std::time::Duration::from_secs(60));
    if fresh {
        return false;
    }
    // An old claim: take it over (remove + create_new, so only one taker wins).
    let _ = std::fs::remove_file(path);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    fn serve_once(response: &'static str) -> (u16, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let mut s = s;
            s.write_all(response.as_bytes()).unwrap();
            head
        });
        (port, h)
    }

    fn http(path: &str, expect: u16) -> HealthCheck {
        HealthCheck {
            kind: HealthKind::Http {
                method: "GET".into(),
                path: path.into(),
                body: None,
                expect_status: expect,
            },
            interval_ms: 100,
            timeout_ms: 2000,
        }
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line("HTTP/1.1 20"), None);
    }

    #[test]
    fn http_ok_and_request_shape() {
        let (port, h) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        check_once("127.0.0.1", port, &http("/health", 200)).unwrap();
        let head = h.join().unwrap();
        assert!(head.starts_with("GET /health HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert!(
            head.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
    }

    #[test]
    fn http_wrong_status_is_an_error() {
        let (port, h) = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let err = check_once("127.0.0.1", port, &http("/health", 200)).unwrap_err();
        h.join().unwrap();
        assert!(err.contains("status 503, expected 200"), "{err}");
    }

    #[test]
    fn refused_and_tcp() {
        let port = free_port("127.0.0.1").unwrap();
        let err = check_once("127.0.0.1", port, &http("/", 200)).unwrap_err();
        assert!(err.contains("connect"), "{err}");
        let tcp = HealthCheck {
            kind: HealthKind::Tcp,
            interval_ms: 100,
            timeout_ms: 1000,
        };
        assert!(check_once("127.0.0.1", port, &tcp).is_err());
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        check_once("127.0.0.1", port, &tcp).unwrap();
    }

    #[test]
    fn silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut hc = http("/", 200);
        hc.timeout_ms = 200;
        let err = check_once("127.0.0.1", port, &hc).unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        drop(l);
    }
}
