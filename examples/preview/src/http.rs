//! Just enough HTTP/1.1: request parsing with limits, and response writing.
//!
//! Bodies are framed by `Content-Length` only; any `Transfer-Encoding` is
//! rejected with 411 Length Required. `Expect: 100-continue` is honoured.

use std::io::{self, BufRead, Write};

use crate::json;

/// Largest accepted request body.
pub const MAX_BODY: usize = 1 << 20;
/// Longest request line or header line.
pub const MAX_LINE: usize = 8 * 1024;
const MAX_HEADERS: usize = 100;
const MAX_HEADER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub version: Version,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request target without query string or fragment.
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("")
    }

    /// Persistent connection? HTTP/1.1 defaults to yes, HTTP/1.0 to no.
    pub fn keep_alive(&self) -> bool {
        let mut close = false;
        let mut keep = false;
        for (n, v) in &self.headers {
            if n.eq_ignore_ascii_case("connection") {
                for token in v.split(',').map(str::trim) {
                    close |= token.eq_ignore_ascii_case("close");
                    keep |= token.eq_ignore_ascii_case("keep-alive");
                }
            }
        }
        !close && (self.version == Version::Http11 || keep)
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Close the connection after sending this response.
    pub close: bool,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
            close: false,
        }
    }

    pub fn json(status: u16, body: String) -> Self {
        Response::new(status, "application/json", body)
    }

    /// `{"error": message}` with the given status.
    pub fn error(status: u16, message: &str) -> Self {
        Response::json(status, json::object(&[("error", message)]))
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Serialise `resp`; for HEAD requests the body is omitted (its length is kept).
pub fn write_response<W: Write>(
    w: &mut W,
    resp: &Response,
    head_only: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    for (name, value) in &resp.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut buf = head.into_bytes();
    if !head_only {
        buf.extend_from_slice(&resp.body);
    }
    w.write_all(&buf)?;
    w.flush()
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection cleanly between requests.
    Eof,
    /// I/O error, including read timeouts and EOF in the middle of a request.
    Io(io::Error),
    /// Malformed or unacceptable request: send this response, then close.
    Reject(Response),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn reject(status: u16, message: &str) -> ReadError {
    ReadError::Reject(Response::error(status, message).closing())
}

enum Line {
    Read,
    Eof,
    TooLong,
}

/// Read one line (terminated by LF, optional CR stripped) of at most `max` bytes.
fn read_line<R: BufRead>(r: &mut R, max: usize, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return if buf.is_empty() {
                Ok(Line::Eof)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        match avail.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                if buf.len() + pos > max {
                    return Ok(Line::TooLong);
                }
                buf.extend_from_slice(&avail[..pos]);
                r.consume(pos + 1);
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                return Ok(Line::Read);
            }
            None => {
                let n = avail.len();
                if buf.len() + n > max {
                    return Ok(Line::TooLong);
                }
                buf.extend_from_slice(avail);
                r.consume(n);
            }
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Read one request. `w` is only used to send `100 Continue`.
pub fn read_request<R: BufRead, W: Write>(r: &mut R, w: &mut W) -> Result<Request, ReadError> {
    let mut line = Vec::with_capacity(256);

    // Request line (robustness: ignore a few empty lines before it).
    let mut empty_lines = 0;
    loop {
        match read_line(r, MAX_LINE, &mut line)? {
            Line::Eof => return Err(ReadError::Eof),
            Line::TooLong => return Err(reject(414, "request line too long")),
            Line::Read if line.is_empty() && empty_lines < 4 => empty_lines += 1,
            Line::Read => break,
        }
    }
    let request_line =
        std::str::from_utf8(&line).map_err(|_| reject(400, "request line is not valid UTF-8"))?;
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && !t.is_empty() => (m, t, v),
        _ => return Err(reject(400, "malformed request line")),
    };
    if !method.bytes().all(is_tchar) {
        return Err(reject(400, "malformed request method"));
    }
    let version = match version {
        "HTTP/1.1" => Version::Http11,
        "HTTP/1.0" => Version::Http10,
        v if v.starts_with("HTTP/") => {
            return Err(reject(505, "only HTTP/1.0 and HTTP/1.1 are supported"))
        }
        _ => return Err(reject(400, "malformed HTTP version")),
    };
    let method = method.to_string();
    let target = target.to_string();

    // Header fields.
    let mut headers = Vec::new();
    let mut header_bytes = 0;
    loop {
        match read_line(r, MAX_LINE, &mut line)? {
            Line::Eof => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Line::TooLong => return Err(reject(431, "header line too long")),
            Line::Read => {}
        }
        if line.is_empty() {
            break;
        }
        header_bytes += line.len();
        if headers.len() >= MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
            return Err(reject(431, "too many header fields"));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(reject(400, "obsolete header line folding is not supported"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| reject(400, "malformed header field"))?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(reject(400, "malformed header field name"));
        }
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim_matches([' ', '\t'])
            .to_string();
        headers.push((String::from_utf8_lossy(name).into_owned(), value));
    }

    let mut req = Request {
        method,
        target,
        version,
        headers,
        body: Vec::new(),
    };

    if req.header("transfer-encoding").is_some() {
        return Err(reject(
            411,
            "Transfer-Encoding (chunked) request bodies are not supported; send Content-Length",
        ));
    }

    // Content-Length: every value (repeated or comma-separated) must agree.
    let mut length: Option<u64> = None;
    for (n, v) in &req.headers {
        if !n.eq_ignore_ascii_case("content-length") {
            continue;
        }
        for item in v.split(',').map(str::trim) {
            let parsed =
                if !item.is_empty() && item.len() <= 19 && item.bytes().all(|b| b.is_ascii_digit())
                {
                    item.parse::<u64>().ok()
                } else {
                    None
                };
            match (parsed, length) {
                (None, _) => return Err(reject(400, "invalid Content-Length")),
                (Some(a), Some(b)) if a != b => {
                    return Err(reject(400, "conflicting Content-Length values"))
                }
                (Some(a), _) => length = Some(a),
            }
        }
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY as u64 {
        return Err(reject(413, "request body exceeds the 1 MiB limit"));
    }

    if let Some(expect) = req.header("expect") {
        if !expect.eq_ignore_ascii_case("100-continue") {
            return Err(reject(417, "unsupported Expect value"));
        }
        if req.version == Version::Http11 && length > 0 {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            w.flush()?;
        }
    }

    if length > 0 {
        let mut body = vec![0; length as usize];
        r.read_exact(&mut body)?;
        req.body = body;
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn parse(raw: &[u8]) -> (Result<Request, ReadError>, Vec<u8>) {
        let mut r = BufReader::new(raw);
        let mut w = Vec::new();
        (read_request(&mut r, &mut w), w)
    }

    fn status(res: Result<Request, ReadError>) -> u16 {
        match res {
            Err(ReadError::Reject(resp)) => {
                assert!(resp.close);
                resp.status
            }
            other => panic!("expected rejection, got {other:?}"),
        }
    }

    #[test]
    fn parses_post_with_body() {
        let (req, w) =
            parse(b"POST /preview?x=1 HTTP/1.1\r\nHost: h\r\ncontent-length: 5\r\n\r\nhello");
        let req = req.unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path(), "/preview");
        assert_eq!(req.header("Content-Length"), Some("5"));
        assert_eq!(req.body, b"hello");
        assert!(req.keep_alive());
        assert!(w.is_empty());
    }

    #[test]
    fn keep_alive_rules() {
        let (req, _) = parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!req.unwrap().keep_alive());
        let (req, _) = parse(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!req.unwrap().keep_alive());
        let (req, _) = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(req.unwrap().keep_alive());
    }

    #[test]
    fn pipelined_requests_and_eof() {
        let raw = b"GET /a HTTP/1.1\n\nGET /b HTTP/1.1\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let mut w = Vec::new();
        assert_eq!(read_request(&mut r, &mut w).unwrap().target, "/a");
        assert_eq!(read_request(&mut r, &mut w).unwrap().target, "/b");
        assert!(matches!(read_request(&mut r, &mut w), Err(ReadError::Eof)));
    }

    #[test]
    fn expect_continue() {
        let (req, w) =
            parse(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi");
        assert_eq!(req.unwrap().body, b"hi");
        assert_eq!(w, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn rejections() {
        assert_eq!(
            status(parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").0),
            411
        );
        assert_eq!(
            status(parse(b"POST / HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n").0),
            413
        );
        assert_eq!(
            status(parse(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").0),
            400
        );
        assert_eq!(
            status(parse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab").0),
            400
        );
        assert_eq!(status(parse(b"GET / HTTP/2.0\r\n\r\n").0), 505);
        assert_eq!(status(parse(b"GET /\r\n\r\n").0), 400);
        assert_eq!(
            status(parse(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").0),
            400
        );
        assert_eq!(
            status(parse(b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n").0),
            400
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_LINE));
        assert_eq!(status(parse(long.as_bytes()).0), 414);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            status(parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).0),
            431
        );
    }

    #[test]
    fn truncated_request_is_io_error() {
        assert!(matches!(parse(b"").0, Err(ReadError::Eof)));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost").0,
            Err(ReadError::Io(_))
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc").0,
            Err(ReadError::Io(_))
        ));
    }

    #[test]
    fn writes_responses() {
        let resp = Response::error(404, "not found").with_header("Allow", "GET");
        let mut out = Vec::new();
        write_response(&mut out, &resp, false, true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\
             Connection: keep-alive\r\nAllow: GET\r\n\r\n{\"error\":\"not found\"}"
        );
        let mut out = Vec::new();
        write_response(&mut out, &resp, true, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Length: 21\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}
