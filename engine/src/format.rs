//! What a stack value may look like when a provider renders it into a config file, a unit or a
//! command line. A provider declares it on the attribute (`AttrSchema::format`, `format_at`);
//! the engine checks it while planning (and again at apply, for values known only then), at the
//! value's own `file:line:col`. Providers also call `Format::check` on values whose shape only
//! they know, and still quote whatever they render (providers/src/quote.rs): a value that passes
//! is a safe token, never a way into the syntax around it.

use crate::value::Value;

/// The shape a value must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A byte size: digits and an optional unit k, m or g ("1m", "512k", "1048576").
    Size,
    /// A time: digits and an optional unit ms, s, m, h or d ("500ms", "65s", "2m").
    Duration,
    /// A TCP/UDP port: a whole number from 1 to 65535.
    Port,
    /// A whole number from 0 to 1 000 000 (a count, a weight).
    Count,
    /// An IPv4 or IPv6 address, or a host name (RFC 1123).
    Address,
    /// `ADDRESS:PORT` (`[v6]:PORT`).
    HostPort,
    /// An absolute URL path: `/` then letters, digits and `-._~/%!*+,=:@&()`.
    UrlPath,
    /// A URL path with an optional `?query` of the same characters plus `?`: an HTTP request target.
    UrlTarget,
    /// An HTTP token (a method such as GET).
    Token,
    /// An HTTP header name: letters, digits and `-`.
    HeaderName,
    /// An environment variable name: a letter or `_`, then letters, digits and `_`.
    EnvName,
    /// A file system path: not empty, no NUL, no control characters.
    FilePath,
    /// A git revision (a branch, tag or commit): no leading `-`, no spaces or control characters.
    GitRevision,
    /// One line of text: no NUL, no line breaks or other control characters (tab allowed).
    Line,
    /// Any text without NUL (environment values, command arguments).
    NoNul,
}

const URL_PATH_EXTRA: &str = "-._~/%!*+,=:@&()";
/// Longest value any format accepts; a 100 KB "size" is an attack, not a size.
const MAX_LEN: usize = 4096;

impl Format {
    /// What the value should be, with an example: the help line of the error.
    pub fn help(self) -> &'static str {
        match self {
            Format::Size => "write a size: digits with an optional unit k, m or g, e.g. \"1m\" or \"512k\"",
            Format::Duration => "write a duration: digits with a unit ms, s, m, h or d, e.g. \"500ms\", \"65s\" or \"2m\"",
            Format::Port => "write a port: a whole number from 1 to 65535, e.g. 8080",
            Format::Count => "write a whole number from 0 to 1000000",
            Format::Address => "write an IP address or a host name, e.g. \"127.0.0.1\", \"::1\" or \"db.internal\"",
            Format::HostPort => "write ADDRESS:PORT, e.g. \"127.0.0.1:8080\"",
            Format::UrlPath => "write a URL path: `/` followed by letters, digits and - . _ ~ / % ! * + , = : @ & ( ), e.g. \"/api/\"",
            Format::UrlTarget => "write a URL path with an optional query, e.g. \"/health\" or \"/health?full=1\"",
            Format::Token => "write an HTTP token such as GET, POST or HEAD",
            Format::HeaderName => "write a header name: letters, digits and `-`, e.g. \"X-Request-Id\"",
            Format::EnvName => "write a variable name: a letter or `_`, then letters, digits and `_`, e.g. \"DATABASE_URL\"",
            Format::FilePath => "write a path without control characters, e.g. \"site/static\"",
            Format::GitRevision => "write a branch, tag or commit, e.g. \"main\", \"v1.2\" or \"3f2a9c1\"",
            Format::Line => "write one line of text, without line breaks or control characters",
            Format::NoNul => "remove the NUL character (\\0): environments and command lines cannot carry it",
        }
    }

    /// What the value is not, in words ("not a size"), for the error's summary.
    pub fn noun(self) -> &'static str {
        match self {
            Format::Size => "a size",
            Format::Duration => "a duration",
            Format::Port => "a port",
            Format::Count => "a whole number from 0 to 1000000",
            Format::Address => "an IP address or host name",
            Format::HostPort => "an ADDRESS:PORT",
            Format::UrlPath => "a URL path",
            Format::UrlTarget => "a URL path",
            Format::Token => "an HTTP token",
            Format::HeaderName => "a header name",
            Format::EnvName => "an environment variable name",
            Format::FilePath => "a usable path",
            Format::GitRevision => "a git revision",
            Format::Line => "one line of text",
            Format::NoNul => "text without NUL",
        }
    }

    /// Ok when `v` (unmarked, known) has this format; Err says why not, without echoing it.
    pub fn check(self, v: &Value) -> Result<(), String> {
        match (self, v) {
            (Format::Port, Value::Number(n)) => whole(*n, 1.0, 65535.0),
            (Format::Count, Value::Number(n)) => whole(*n, 0.0, 1_000_000.0),
            (Format::Port, Value::String(s)) => s
                .parse::<f64>()
                .map_err(|_| "it is not a number".to_string())
                .and_then(|n| whole(n, 1.0, 65535.0)),
            (Format::Count, Value::String(s)) => s
                .parse::<f64>()
                .map_err(|_| "it is not a number".to_string())
                .and_then(|n| whole(n, 0.0, 1_000_000.0)),
            (Format::Port | Format::Count, v) => Err(format!("found a {}", v.type_name())),
            (_, Value::String(s)) => self.check_str(s),
            // Numbers and bools render as plain digits or words; only text can carry syntax.
            (_, Value::Number(_) | Value::Bool(_)) => Ok(()),
            (_, v) => Err(format!("found a {}, not text", v.type_name())),
        }
    }

    pub fn check_str(self, s: &str) -> Result<(), String> {
        if s.len() > MAX_LEN && self != Format::NoNul {
            return Err(format!("it is {} bytes long (at most {MAX_LEN})", s.len()));
        }
        if let Some(c) = s.chars().find(|c| *c == '\0') {
            return Err(format!("it contains {}", show_char(c)));
        }
        match self {
            Format::NoNul => Ok(()),
            Format::Size => unit_number(s, &["", "k", "K", "m", "M", "g", "G"]),
            Format::Duration => unit_number(s, &["", "ms", "s", "m", "h", "d"]),
            Format::Port | Format::Count => s
                .parse::<f64>()
                .map_err(|_| "it is not a number".to_string())
                .and_then(|n| {
                    let (lo, hi) = if self == Format::Port {
                        (1.0, 65535.0)
                    } else {
                        (0.0, 1_000_000.0)
                    };
                    whole(n, lo, hi)
                }),
            Format::Address => address(s),
            Format::HostPort => {
                let (host, port) = match s.strip_prefix('[') {
                    Some(rest) => match rest.split_once("]:") {
                        Some((h, p)) if h.parse::<std::net::Ipv6Addr>().is_ok() => (h, p),
                        _ => return Err("a bracketed IPv6 address needs `]:PORT`".into()),
                    },
                    None => s
                        .rsplit_once(':')
                        .ok_or_else(|| "it has no `:PORT`".to_string())?,
                };
                if !s.starts_with('[') {
                    address(host)?;
                }
                Format::Port.check_str(port)
            }
            Format::UrlPath => url_path(s, false),
            Format::UrlTarget => url_path(s, true),
            Format::Token => only(s, |c| {
                c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
            }),
            Format::HeaderName => only(s, |c| c.is_ascii_alphanumeric() || c == '-'),
            Format::EnvName => {
                if s.starts_with(|c: char| c.is_ascii_digit()) {
                    return Err("it starts with a digit".into());
                }
                only(s, |c| c.is_ascii_alphanumeric() || c == '_')
            }
            Format::FilePath => {
                if s.is_empty() {
                    return Err("it is empty".into());
                }
                no_control(s, false)
            }
            Format::GitRevision => {
                if s.starts_with('-') {
                    return Err("it starts with `-` (git would read it as an option)".into());
                }
                if s.is_empty() {
                    return Err("it is empty".into());
                }
                only(s, |c| !c.is_whitespace() && !c.is_control())
            }
            Format::Line => no_control(s, true),
        }
    }
}

fn whole(n: f64, lo: f64, hi: f64) -> Result<(), String> {
    if n.fract() != 0.0 || !(lo..=hi).contains(&n) {
        return Err(format!(
            "{} is not a whole number from {lo} to {hi}",
            crate::value::format_number(n)
        ));
    }
    Ok(())
}

fn unit_number(s: &str, units: &[&str]) -> Result<(), String> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return match s.chars().next() {
            None => Err("it is empty".into()),
            Some(c) => Err(format!("it starts with {}", show_char(c))),
        };
    }
    if digits > 12 {
        return Err("the number is too large".into());
    }
    let unit = &s[digits..];
    if units.contains(&unit) {
        return Ok(());
    }
    match unit.chars().find(|c| !c.is_ascii_alphabetic()) {
        Some(c) => Err(format!("{} is not allowed", show_char(c))),
        None => Err(format!(
            "{unit:?} is not a unit (use one of {})",
            units
                .iter()
                .filter(|u| !u.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn address(s: &str) -> Result<(), String> {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if s.is_empty() || s.len() > 253 {
        return Err("a host name is 1 to 253 characters".into());
    }
    only(s, |c| c.is_ascii_alphanumeric() || c == '-' || c == '.')?;
    if s.split('.')
        .any(|l| l.is_empty() || l.len() > 63 || l.starts_with('-') || l.ends_with('-'))
    {
        return Err("each dot-separated part of a host name is 1 to 63 letters, digits or `-`, not starting or ending with `-`".into());
    }
    Ok(())
}

fn url_path(s: &str, query: bool) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err("it does not start with `/`".into());
    }
    let (path, q) = match s.split_once('?') {
        Some((p, q)) if query => (p, Some(q)),
        _ => (s, None),
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || URL_PATH_EXTRA.contains(c);
    only(path, ok)?;
    if let Some(q) = q {
        only(q, |c| ok(c) || c == '?')?;
    }
    let b = s.as_bytes();
    for (i, _) in s.match_indices('%') {
        if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err("`%` must be followed by two hex digits".into());
        }
    }
    Ok(())
}

fn only(s: &str, ok: impl Fn(char) -> bool) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    match s.chars().find(|c| !ok(*c)) {
        Some(c) => Err(format!("{} is not allowed", show_char(c))),
        None => Ok(()),
    }
}

fn no_control(s: &str, tab_ok: bool) -> Result<(), String> {
    match s
        .chars()
        .find(|c| c.is_control() && !(tab_ok && *c == '\t'))
    {
        Some(c) => Err(format!("it contains {}", show_char(c))),
        None => Ok(()),
    }
}

/// A character as the user would write it in a stack string.
pub fn show_char(c: char) -> String {
    match c {
        '\0' => "a NUL character (\\0)".into(),
        '\n' => "a line break (\\n)".into(),
        '\r' => "a carriage return (\\r)".into(),
        '\t' => "a tab (\\t)".into(),
        ' ' => "a space".into(),
        c if c.is_control() => format!("the control character U+{:04X}", c as u32),
        c => format!("`{c}`"),
    }
}

/// A value shown in an error: escaped, cut to a readable length, never a secret.
pub fn show_value(v: &str, sensitive: bool) -> String {
    if sensitive {
        return "(sensitive value)".into();
    }
    let cut: String = v.chars().take(40).collect();
    let more = if v.chars().nth(40).is_some() {
        format!("… ({} bytes)", v.len())
    } else {
        String::new()
    };
    format!("{:?}{more}", cut)
}

/// Where inside an attribute a rule applies: `""` the value itself; segments split by `.`,
/// `*` any key or index, `{}` (last) the keys of the map there. E.g. `"{}"` route paths,
/// `"*.static"`, `"*.upstreams.*.weight"`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub at: &'static str,
    pub format: Format,
}

/// One step into a value: a map key or a list index.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// A value (or map key) that breaks a rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    /// Where in the attribute's value.
    pub path: Vec<Step>,
    /// The last step's key itself is wrong (not the value under it).
    pub is_key: bool,
    pub format: Format,
    pub reason: String,
    /// The offending text, already escaped and cut (or "(sensitive value)").
    pub shown: String,
}

impl Violation {
    /// `routes["/x"].static`, for the message.
    pub fn describe(&self, attr: &str) -> String {
        let mut s = format!("`{attr}");
        for (i, st) in self.path.iter().enumerate() {
            if self.is_key && i + 1 == self.path.len() {
                break;
            }
            match st {
                Step::Key(k) if is_ident(k) => s.push_str(&format!(".{k}")),
                Step::Key(k) => s.push_str(&format!("[{}]", show_value(k, false))),
                Step::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        s.push('`');
        if self.is_key {
            format!("a key of {s}")
        } else {
            s
        }
    }
}

fn is_ident(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !k.starts_with(|c: char| c.is_ascii_digit())
}

/// Every violation of `rules` in `v`. Unknown values are checked when they become known.
pub fn check_rules(rules: &[Rule], v: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    for r in rules {
        let segs: Vec<&str> = if r.at.is_empty() {
            vec![]
        } else {
            r.at.split('.').collect()
        };
        walk(&segs, r.format, v, false, &mut Vec::new(), &mut out);
    }
    out
}

fn walk(
    segs: &[&str],
    f: Format,
    v: &Value,
    sensitive: bool,
    path: &mut Vec<Step>,
    out: &mut Vec<Violation>,
) {
    if let Value::Sensitive(inner) = v {
        return walk(segs, f, inner, true, path, out);
    }
    let Some((first, rest)) = segs.split_first() else {
        if !v.is_known() || matches!(v, Value::Null) {
            return;
        }
        if let Err(reason) = f.check(v) {
            let shown = match v {
                Value::String(s) => show_value(s, sensitive),
                other => show_value(&other.render(), sensitive),
            };
            out.push(Violation {
                path: path.clone(),
                is_key: false,
                format: f,
                reason,
                shown,
            });
        }
        return;
    };
    match (*first, v) {
        ("{}", Value::Map(m)) => {
            for k in m.keys() {
                if let Err(reason) = f.check_str(k) {
                    path.push(Step::Key(k.clone()));
                    out.push(Violation {
                        path: path.clone(),
                        is_key: true,
                        format: f,
                        reason,
                        shown: show_value(k, sensitive),
                    });
                    path.pop();
                }
            }
        }
        ("*", Value::Map(m)) => {
            for (k, x) in m {
                path.push(Step::Key(k.clone()));
                walk(rest, f, x, sensitive, path, out);
                path.pop();
            }
        }
        ("*", Value::List(l)) => {
            for (i, x) in l.iter().enumerate() {
                path.push(Step::Index(i));
                walk(rest, f, x, sensitive, path, out);
                path.pop();
            }
        }
        (k, Value::Map(m)) if k != "*" && k != "{}" => {
            if let Some(x) = m.get(k) {
                path.push(Step::Key(k.to_string()));
                walk(rest, f, x, sensitive, path, out);
                path.pop();
            }
        }
        // A shape the rule does not describe: the provider's own validation speaks to it.
        _ => {}
    }
}

/// The source span of `path` inside a literal expression (an object's key or value, a list's
/// element); the deepest literal part that is there when the rest comes from elsewhere.
pub fn span_of(
    e: &hcl_edit::expr::Expression,
    path: &[Step],
    is_key: bool,
) -> Option<std::ops::Range<usize>> {
    use hcl_edit::expr::{Expression, ObjectKey};
    use hcl_edit::Span;
    let Some((first, rest)) = path.split_first() else {
        return e.span();
    };
    match (e, first) {
        (Expression::Parenthesis(p), _) => span_of(p.inner(), path, is_key),
        (Expression::Object(o), Step::Key(k)) => {
            let found = o.iter().find(|(key, _)| match key {
                ObjectKey::Ident(i) => i.as_str() == k,
                ObjectKey::Expression(Expression::String(s)) => s.value().as_str() == k,
                ObjectKey::Expression(Expression::Variable(v)) => v.as_str() == k,
                _ => false,
            });
            match found {
                Some((key, _)) if is_key && rest.is_empty() => key.span().or_else(|| e.span()),
                Some((_, v)) => span_of(v.expr(), rest, is_key).or_else(|| e.span()),
                None => e.span(),
            }
        }
        (Expression::Array(a), Step::Index(i)) => match a.iter().nth(*i) {
            Some(x) => span_of(x, rest, is_key).or_else(|| e.span()),
            None => e.span(),
        },
        _ => e.span(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_durations_and_ports_accept_only_their_alphabet() {
        for ok in ["1m", "512k", "10M", "0", "1048576"] {
            assert_eq!(Format::Size.check_str(ok), Ok(()), "{ok}");
        }
        for bad in ["", "1m;", "1m\n", "m", "1 m", "1mb", "1m}", "1.5m", "$x"] {
            assert!(Format::Size.check_str(bad).is_err(), "{bad:?}");
        }
        for ok in ["65s", "500ms", "2m", "1h", "10"] {
            assert_eq!(Format::Duration.check_str(ok), Ok(()), "{ok}");
        }
        for bad in ["2s;", "2s #", "s", "2 s", "2x"] {
            assert!(Format::Duration.check_str(bad).is_err(), "{bad:?}");
        }
        assert!(Format::Port.check(&Value::Number(8080.0)).is_ok());
        for bad in [0.0, 65536.0, 80.5, -1.0] {
            assert!(Format::Port.check(&Value::Number(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_paths_and_names() {
        for ok in ["127.0.0.1", "::1", "db.internal", "localhost"] {
            assert_eq!(Format::Address.check_str(ok), Ok(()), "{ok}");
        }
        for bad in ["127.0.0.1;", "a b", "-x", "a..b", "x\ny", "0.0.0.0:1"] {
            assert!(Format::Address.check_str(bad).is_err(), "{bad:?}");
        }
        for ok in ["127.0.0.1:80", "[::1]:8080", "web:1"] {
            assert_eq!(Format::HostPort.check_str(ok), Ok(()), "{ok}");
        }
        for ok in ["/", "/api/", "/a-b_c.d~e/%20x"] {
            assert_eq!(Format::UrlPath.check_str(ok), Ok(()), "{ok}");
        }
        for bad in [
            "x", "/x {", "/x;", "/x#", "/$x", "/\"", "/a b", "/%zz", "/a?b",
        ] {
            assert!(Format::UrlPath.check_str(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Format::UrlTarget.check_str("/health?full=1"), Ok(()));
        assert!(Format::UrlTarget.check_str("health").is_err());
        assert!(Format::EnvName.check_str("1X").is_err());
        assert!(Format::NoNul.check_str("a\0b").is_err());
        assert_eq!(Format::NoNul.check_str("multi\nline"), Ok(()));
        assert!(Format::GitRevision.check_str("--output=x").is_err());
        assert!(Format::FilePath.check_str("a\nb").is_err());
        assert!(Format::Size.check_str(&"1".repeat(100_000)).is_err());
    }

    #[test]
    fn rules_walk_keys_and_nested_fields_and_keep_secrets_out_of_messages() {
        let routes = Value::Map(
            [
                (
                    "/ok".to_string(),
                    Value::Map(
                        [("static".to_string(), Value::str("site"))]
                            .into_iter()
                            .collect(),
                    ),
                ),
                (
                    "/x {".to_string(),
                    Value::Map(
                        [("static".to_string(), Value::str("a\nb").mark(true))]
                            .into_iter()
                            .collect(),
                    ),
                ),
            ]
            .into_iter()
            .collect(),
        );
        let v = check_rules(
            &[
                Rule {
                    at: "{}",
                    format: Format::UrlPath,
                },
                Rule {
                    at: "*.static",
                    format: Format::FilePath,
                },
            ],
            &routes,
        );
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].is_key);
        assert_eq!(v[0].describe("routes"), "a key of `routes`");
        assert_eq!(v[1].describe("routes"), "`routes[\"/x {\"].static`");
        assert_eq!(v[1].shown, "(sensitive value)");
        assert!(check_rules(
            &[Rule {
                at: "",
                format: Format::Size
            }],
            &Value::Unknown
        )
        .is_empty());
    }
}
