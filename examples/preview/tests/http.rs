//! End-to-end tests: start the real binary on a free port and talk HTTP to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread;
use std::time::Duration;

/// A running `preview` process, killed when dropped (also on test failure).
struct Server {
    child: Child,
    port: u16,
    stdout: Option<ChildStdout>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().unwrap().port()
}

impl Server {
    fn start(env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_preview"));
        cmd.args(["--port", &port.to_string(), "--address", "127.0.0.1"])
            .env("PORT", "1") // must be overridden by --port
            .env_remove("VERSION")
            .env_remove("PREVIEW_TABLES")
            .env_remove("PREVIEW_FAIL_RATE")
            .env_remove("PREVIEW_EXTRA_LATENCY_MS")
            .env_remove("PREVIEW_WORKERS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn preview binary");
        let mut server = Server {
            stdout: None,
            child,
            port,
        };
        server.stdout = server.child.stdout.take();
        server.wait_healthy();
        server
    }

    /// Bounded retry loop until `GET /health` answers 200.
    fn wait_healthy(&mut self) {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("preview exited early: {status}");
            }
            if let Ok(resp) = try_request(self.port, "GET", "/health", &[], b"") {
                if resp.status == 200 {
                    return;
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("preview did not become healthy on port {}", self.port);
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        try_request(self.port, method, path, headers, body).expect("request failed")
    }

    fn preview(&self, markdown_json: &str) -> Response {
        self.request(
            "POST",
            "/preview",
            &[("Content-Type", "application/json")],
            markdown_json.as_bytes(),
        )
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn write_request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let framed = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !framed && (!body.is_empty() || method == "POST") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)
}

/// Read one response framed by Content-Length.
fn read_response<R: BufRead>(r: &mut R) -> std::io::Result<Response> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header colon");
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Response {
        status,
        headers,
        body: String::from_utf8(body).expect("utf-8 body"),
    })
}

/// One request on a fresh connection with `Connection: close`.
fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("Connection", "close"));
    write_request(&mut stream, method, path, &all, body)?;
    let mut reader = BufReader::new(stream);
    let resp = read_response(&mut reader)?;
    assert_eq!(resp.header("Connection"), Some("close"));
    // The server closes after a `Connection: close` request.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    assert!(rest.is_empty(), "unexpected trailing bytes");
    Ok(resp)
}

const TABLE_MD: &str =
    r##"{"markdown":"# Title\n\n| Name | Qty |\n|:--|--:|\n| **a** | 1 |\n| <b> | 2 |\n"}"##;

#[test]
fn end_to_end() {
    let mut server = Server::start(&[("VERSION", "1.2.3"), ("PREVIEW_TABLES", "on")]);

    // Startup line on stdout.
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(
        first.trim_end(),
        format!("preview listening on http://127.0.0.1:{}", server.port)
    );

    let health = server.request("GET", "/health", &[], b"");
    assert_eq!(health.status, 200);
    assert_eq!(health.header("Content-Type"), Some("application/json"));
    assert_eq!(health.body, r#"{"status":"ok","version":"1.2.3"}"#);

    let index = server.request("GET", "/", &[], b"");
    assert_eq!(index.status, 200);
    assert!(index
        .header("Content-Type")
        .unwrap()
        .starts_with("text/html"));
    assert!(index.body.contains("markdown preview"));

    // Markdown with a table.
    let resp = server.preview(TABLE_MD);
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.header("Content-Type"), Some("application/json"));
    assert_eq!(
        resp.body,
        concat!(
            r#"{"preview":"<h1>Title</h1>\n<table>\n<thead>\n<tr>\n"#,
            r#"<th align=\"left\">Name</th>\n<th align=\"right\">Qty</th>\n</tr>\n</thead>\n<tbody>\n"#,
            r#"<tr>\n<td align=\"left\"><strong>a</strong></td>\n<td align=\"right\">1</td>\n</tr>\n"#,
            r#"<tr>\n<td align=\"left\">&lt;b&gt;</td>\n<td align=\"right\">2</td>\n</tr>\n"#,
            r#"</tbody>\n</table>\n"}"#
        )
    );

    // JSON escapes, including a surrogate pair, survive the round trip.
    let resp = server.preview(r#"{"markdown":"*\u00e9* \ud83d\ude00 \"q\""}"#);
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.body,
        r#"{"preview":"<p><em>é</em> 😀 &quot;q&quot;</p>\n"}"#
    );

    // Errors.
    for bad in [
        "{",
        "[]",
        r#"{"md":"x"}"#,
        r#"{"markdown":42}"#,
        r#"{"markdown":"\ud800"}"#,
    ] {
        let resp = server.preview(bad);
        assert_eq!(resp.status, 400, "body {bad:?}");
        assert!(resp.body.starts_with(r#"{"error":""#), "{}", resp.body);
    }
    assert_eq!(server.request("GET", "/nope", &[], b"").status, 404);
    let resp = server.request("GET", "/preview", &[], b"");
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("Allow"), Some("POST"));
    assert_eq!(server.request("POST", "/health", &[], b"").status, 405);
    assert_eq!(
        server
            .request("POST", "/preview", &[("Transfer-Encoding", "chunked")], b"")
            .status,
        411
    );
    // Over the 1 MiB limit: rejected from the headers alone, body never sent.
    assert_eq!(
        server
            .request("POST", "/preview", &[("Content-Length", "1048577")], b"")
            .status,
        413
    );
}

#[test]
fn keep_alive_and_expect_continue() {
    let server = Server::start(&[]);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());

    // Two requests on one connection; HTTP/1.1 defaults to keep-alive.
    write_request(&mut stream, "GET", "/health", &[], b"").unwrap();
    let first = read_response(&mut reader).unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("Connection"), Some("keep-alive"));
    assert_eq!(first.body, r#"{"status":"ok","version":"dev"}"#);

    // Expect: 100-continue, with a body sent only after the interim response.
    let body = br#"{"markdown":"- a\n- b"}"#;
    let head = format!(
        "POST /preview HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let interim = read_response(&mut reader).unwrap();
    assert_eq!(interim.status, 100);
    stream.write_all(body).unwrap();
    let second = read_response(&mut reader).unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(
        second.body,
        r#"{"preview":"<ul>\n<li>a</li>\n<li>b</li>\n</ul>\n"}"#
    );

    // Connection: close is honoured: response, then EOF.
    write_request(&mut stream, "GET", "/", &[("Connection", "close")], b"").unwrap();
    let third = read_response(&mut reader).unwrap();
    assert_eq!(third.status, 200);
    assert_eq!(third.header("Connection"), Some("close"));
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn tables_flag_off_and_fault_injection() {
    let server = Server::start(&[("PREVIEW_TABLES", "off")]);
    let resp = server.preview(TABLE_MD);
    assert_eq!(resp.status, 200);
    assert!(!resp.body.contains("<table>"), "{}", resp.body);
    assert!(
        resp.body.contains(r#"<p>| Name | Qty |\n|:--|--:|\n"#),
        "{}",
        resp.body
    );
    drop(server);

    let server = Server::start(&[("PREVIEW_FAIL_RATE", "1.0")]);
    let resp = server.preview(r#"{"markdown":"x"}"#);
    assert_eq!(resp.status, 500);
    assert!(resp.body.starts_with(r#"{"error":"#));
    assert_eq!(server.request("GET", "/health", &[], b"").status, 200);
}

#[test]
fn invalid_configuration_exits_with_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_preview"))
        .args(["--port", "not-a-port"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid port"));

    let out = Command::new(env!("CARGO_BIN_EXE_preview"))
        .args(["--port", "0"])
        .env("PREVIEW_FAIL_RATE", "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PREVIEW_FAIL_RATE"));
}
