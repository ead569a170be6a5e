//! Routing and endpoint handlers.

use std::thread;

use crate::config::Settings;
use crate::fault;
use crate::flags;
use crate::http::{Request, Response};
use crate::json::{self, Value};
use crate::markdown::{self, Options};

const INDEX_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>preview</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; }
textarea { width: 100%; height: 10rem; font-family: monospace; }
#out { border: 1px solid #ccc; padding: 0 1rem; margin-top: 1rem; min-height: 2rem; }
code { background: #f4f4f4; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .2rem .5rem; }
</style>
</head>
<body>
<h1>preview</h1>
<p>A markdown preview microservice: it renders Markdown to HTML.</p>
<ul>
<li><code>POST /preview</code> with <code>{"markdown": "..."}</code> returns <code>{"preview": "&lt;html&gt;"}</code></li>
<li><code>GET /health</code> returns <code>{"status":"ok","version":"..."}</code></li>
</ul>
<textarea id="md"># Hello

Some **bold**, *emphasis* and `code`.

| a | b |
|---|---|
| 1 | 2 |
</textarea>
<button id="go">Preview</button>
<div id="out"></div>
<script>
document.getElementById('go').onclick = async () => {
  const r = await fetch('/preview', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({markdown: document.getElementById('md').value})});
  const j = await r.json();
  document.getElementById('out').innerHTML = r.ok ? j.preview : '<p>error: ' + r.status + '</p>';
};
</script>
</body>
</html>
"#;

fn method_not_allowed(allow: &'static str) -> Response {
    Response::error(405, "method not allowed").with_header("Allow", allow)
}

/// Dispatch one request.
pub fn handle(settings: &Settings, req: &Request) -> Response {
    let get = req.method == "GET" || req.method == "HEAD";
    match req.path() {
        "/" if get => Response::new(200, "text/html; charset=utf-8", INDEX_HTML),
        "/" => method_not_allowed("GET, HEAD"),
        "/health" if get => health(settings),
        "/health" => method_not_allowed("GET, HEAD"),
        "/preview" if req.method == "POST" => preview(settings, req),
        "/preview" => method_not_allowed("POST"),
        _ => Response::error(404, "not found"),
    }
}

fn health(settings: &Settings) -> Response {
    Response::json(
        200,
        json::object(&[("status", "ok"), ("version", &settings.version)]),
    )
    .with_header("Cache-Control", "no-store")
}

fn preview(settings: &Settings, req: &Request) -> Response {
    if !settings.extra_latency.is_zero() {
        thread::sleep(settings.extra_latency);
    }
    static FIRST: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let since_first = FIRST.get_or_init(std::time::Instant::now).elapsed();
    if since_first >= settings.fail_after && fault::should_fail(settings.fail_rate) {
        return Response::error(500, "injected failure (PREVIEW_FAIL_RATE)");
    }
    let markdown = match markdown_field(&req.body) {
        Ok(m) => m,
        Err(message) => return Response::error(400, &message),
    };
    let html = markdown::render(
        &markdown,
        Options {
            tables: flags::tables_enabled(),
        },
    );
    let mut body = String::with_capacity(html.len() + 16);
    body.push_str("{\"preview\":");
    json::write_string(&mut body, &html);
    body.push('}');
    Response::json(200, body)
}

/// Extract the `"markdown"` string from a JSON request body.
pub fn markdown_field(body: &[u8]) -> Result<String, String> {
    let text =
        std::str::from_utf8(body).map_err(|_| "request body is not valid UTF-8".to_string())?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let value = json::parse(text).map_err(|e| format!("invalid JSON: {e}"))?;
    if !matches!(value, Value::Object(_)) {
        return Err(format!(
            "request body must be a JSON object, not {}",
            value.kind()
        ));
    }
    match value.get("markdown") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "field \"markdown\" must be a string, not {}",
            other.kind()
        )),
        None => Err("missing field \"markdown\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Version;

    fn req(method: &str, target: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            version: Version::Http11,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    fn body(r: &Response) -> &str {
        std::str::from_utf8(&r.body).unwrap()
    }

    #[test]
    fn routes() {
        let s = Settings {
            version: "1.0.0".into(),
            ..Settings::default()
        };
        let r = handle(&s, &req("GET", "/health", ""));
        assert_eq!(
            (r.status, body(&r)),
            (200, r#"{"status":"ok","version":"1.0.0"}"#)
        );
        let r = handle(&s, &req("GET", "/", ""));
        assert_eq!(r.status, 200);
        assert!(r.content_type.starts_with("text/html"));
        let r = handle(&s, &req("POST", "/preview?x", r#"{"markdown":"**hi**"}"#));
        assert_eq!(
            (r.status, body(&r)),
            (200, r#"{"preview":"<p><strong>hi</strong></p>\n"}"#)
        );
        assert_eq!(handle(&s, &req("GET", "/nope", "")).status, 404);
        let r = handle(&s, &req("GET", "/preview", ""));
        assert_eq!(r.status, 405);
        assert_eq!(r.headers, vec![("Allow", "POST".to_string())]);
        assert_eq!(handle(&s, &req("DELETE", "/health", "")).status, 405);
        assert_eq!(handle(&s, &req("POST", "/preview", "{")).status, 400);
    }

    #[test]
    fn fault_injection() {
        let s = Settings {
            fail_rate: 1.0,
            ..Settings::default()
        };
        assert_eq!(
            handle(&s, &req("POST", "/preview", r#"{"markdown":""}"#)).status,
            500
        );
        // Only /preview is affected.
        assert_eq!(handle(&s, &req("GET", "/health", "")).status, 200);
    }

    #[test]
    fn markdown_field_errors() {
        assert_eq!(markdown_field(br#"{"markdown":"a\nb"}"#), Ok("a\nb".into()));
        assert_eq!(
            markdown_field(br#"{"markdown":1,"markdown":"x"}"#),
            Ok("x".into())
        );
        assert_eq!(
            markdown_field(b"\xef\xbb\xbf{\"markdown\":\"\"}"),
            Ok("".into())
        );
        assert_eq!(
            markdown_field(br#"{}"#),
            Err("missing field \"markdown\"".into())
        );
        assert_eq!(
            markdown_field(br#"{"markdown":null}"#),
            Err("field \"markdown\" must be a string, not null".into())
        );
        assert_eq!(
            markdown_field(br#"["markdown"]"#),
            Err("request body must be a JSON object, not array".into())
        );
        assert_eq!(
            markdown_field(b""),
            Err("invalid JSON: unexpected end of input at byte 0".into())
        );
        assert_eq!(
            markdown_field(b"\xff"),
            Err("request body is not valid UTF-8".into())
        );
    }
}
