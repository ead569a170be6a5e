//! The first word of a host line: a host name, IPv4 or IPv6 address, with an optional `:port`
//! (`[v6]:port` for IPv6) and any number of ranges (`web[01:05]`, `10.0.0.[1:5]`, `[a:f]`,
//! `[1:10:2]`) that expand to one host each, as ansible-core reads it.

/// Most hosts one pattern may expand to: `[1:99999999]` is a typo, not a fleet.
pub const MAX_EXPANSION: usize = 65_536;

/// A pattern that cannot be expanded: what is wrong, at which character of the pattern.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PatternError {
    pub offset: usize,
    pub message: String,
    pub help: String,
    pub is_range: bool,
}

fn range_error(offset: usize, message: String, help: impl Into<String>) -> PatternError {
    PatternError {
        offset,
        message,
        help: help.into(),
        is_range: true,
    }
}

/// The host names a pattern stands for, and the port it gives them all.
pub(crate) fn expand(pattern: &str) -> Result<(Vec<String>, Option<u64>), PatternError> {
    let (host, port) = match parse_address(pattern) {
        Some((host, port)) => (host, port),
        // ansible-core keeps a pattern it cannot read as an address whole (port and all).
        None => (pattern.to_string(), None),
    };
    if pattern.trim().ends_with(':') && port.is_none() {
        return Err(PatternError {
            offset: pattern.chars().count().saturating_sub(1),
            message: format!("host pattern '{pattern}' ends in ':' without a port"),
            help: "write HOST:PORT (web1:2222), or drop the ':'".into(),
            is_range: false,
        });
    }
    let offset = if host.starts_with('[') || !pattern.starts_with('[') {
        0
    } else {
        1 // `[v6]:port`: the host starts after the bracket
    };
    let names = expand_ranges(&host, offset)?;
    if names.iter().any(|n| n.trim() == "---") {
        return Err(PatternError {
            offset: 0,
            message: "'---' is no host: this looks like a YAML file".into(),
            help: "give a YAML inventory to ansible as it is; pipeline reads INI inventories"
                .into(),
            is_range: false,
        });
    }
    if names.iter().any(|n| n.is_empty()) {
        return Err(PatternError {
            offset: 0,
            message: "a host line needs a host name".into(),
            help: "write the host first, then its variables: web1 ansible_host=10.0.0.1".into(),
            is_range: false,
        });
    }
    Ok((names, port))
}

/// ansible-core's `parse_address(allow_ranges=True)`: the host and port of `[host]:port`,
/// `host:port` or `host`, when the host is an IPv4 address, an IPv6 address or a host name
/// (each possibly with ranges). `None` when it is none of these.
fn parse_address(address: &str) -> Option<(String, Option<u64>)> {
    let mut host = address.to_string();
    let mut port = None;
    // `^\[(.+)\]:([0-9]+)$`
    if let Some(inner) = host.strip_prefix('[') {
        if let Some(close) = inner.rfind("]:") {
            let digits = &inner[close + 2..];
            if close > 0 && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                port = Some(digits.parse().ok()?);
                host = inner[..close].to_string();
            }
        }
    }
    // `^((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)$`, applied to what is left.
    if let Some((h, p)) = split_host_port(&host) {
        port = Some(p.parse().ok()?);
        host = h.to_string();
    }
    (is_ipv4(&host) || is_ipv6(&host) || is_hostname(&host)).then_some((host, port))
}

fn split_host_port(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'[' => i += s[i..].find(']')? + 1,
            b']' => return None,
            b':' => {
                let digits = &s[i + 1..];
                return (!digits.is_empty() && digits.bytes().all(|d| d.is_ascii_digit()))
                    .then_some((&s[..i], digits));
            }
            _ => i += 1,
        }
    }
    None
}

/// `[digits:digits(:digits)]` or, with `alpha`, `[x:y(:digits)]` at the start of `s`; its length.
fn range_len(s: &str, alpha: bool) -> Option<usize> {
    if !s.starts_with('[') {
        return None;
    }
    let inner = &s[1..s.find(']')?];
    let parts: Vec<&str> = inner.split(':').collect();
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let letter = |p: &str| p.len() == 1 && p.bytes().all(|b| b.is_ascii_alphabetic());
    let ok = match parts.as_slice() {
        [a, b] | [a, b, _] => (digits(a) && digits(b)) || (alpha && letter(a) && letter(b)),
        _ => false,
    } && (parts.len() == 2 || digits(parts[2]));
    ok.then_some(inner.len() + 2)
}

fn is_ipv4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            (range_len(p, false) == Some(p.len()))
                || (!p.is_empty()
                    && p.len() <= 3
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && p.parse::<u32>().is_ok_and(|n| n <= 255))
        })
}

/// IPv6, loosely: colons, hex groups (or numeric ranges) and an optional dotted IPv4 tail.
fn is_ipv6(s: &str) -> bool {
    if s.matches(':').count() < 2 {
        return false;
    }
    let mut rest = s;
    while !rest.is_empty() {
        if rest.starts_with('[') {
            match range_len(rest, false) {
                Some(n) => rest = &rest[n..],
                None => return false,
            }
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            if !(c.is_ascii_hexdigit() || c == ':' || c == '.') {
                return false;
            }
            rest = &rest[1..];
        }
    }
    true
}

/// Labels of word characters and `-` (or ranges), separated by dots, none starting with `-`
/// and none ending in `-` or `_`.
fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            let mut rest = label;
            let mut first = true;
            let mut last = ' ';
            if rest.is_empty() {
                return false;
            }
            while !rest.is_empty() {
                if rest.starts_with('[') {
                    match range_len(rest, true) {
                        Some(n) => {
                            rest = &rest[n..];
                            last = ']';
                        }
                        None => return false,
                    }
                } else {
                    let c = rest.chars().next().unwrap_or(' ');
                    let word = c.is_alphanumeric() || c == '_';
                    if !(word || (c == '-' && !first)) {
                        return false;
                    }
                    last = c;
                    rest = &rest[c.len_utf8()..];
                }
                first = false;
            }
            last != '-' && last != '_'
        })
}

/// Python's `string.ascii_letters`: the order an alphabetic range counts in.
const LETTERS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// Every name a host with ranges stands for, the first range varying slowest (as ansible-core's
/// recursive expansion orders them). `base` is the pattern's offset for error columns.
fn expand_ranges(host: &str, base: usize) -> Result<Vec<String>, PatternError> {
    // Literal pieces and the values of each range between them.
    let mut pieces: Vec<Vec<String>> = Vec::new();
    let mut literal = String::new();
    let chars: Vec<char> = host.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '[' => {
                let close = chars[i..].iter().position(|&c| c == ']').map(|p| p + i);
                let Some(close) = close else {
                    return Err(range_error(
                        base + i,
                        format!(
                            "range '{}' has no closing ']'",
                            chars[i..].iter().collect::<String>()
                        ),
                        "close it: web[01:05]",
                    ));
                };
                pieces.push(vec![std::mem::take(&mut literal)]);
                let inner: String = chars[i + 1..close].iter().collect();
                pieces.push(range_values(&inner, base + i)?);
                i = close + 1;
            }
            ']' => {
                return Err(range_error(
                    base + i,
                    format!("']' without its '[' in '{host}'"),
                    "a range is [BEGIN:END] or [BEGIN:END:STEP]: web[01:05]",
                ))
            }
            c => {
                literal.push(c);
                i += 1;
            }
        }
    }
    pieces.push(vec![literal]);
    let total = pieces
        .iter()
        .try_fold(1usize, |n, p| n.checked_mul(p.len()))
        .unwrap_or(usize::MAX);
    if total > MAX_EXPANSION {
        return Err(range_error(
            base,
            format!("'{host}' expands to {total} hosts, more than {MAX_EXPANSION}"),
            "check the range bounds",
        ));
    }
    let mut names = vec![String::new()];
    for piece in &pieces {
        names = names
            .iter()
            .flat_map(|n| piece.iter().map(move |p| format!("{n}{p}")))
            .collect();
    }
    Ok(names)
}

/// The values of one range `[BEGIN:END]` or `[BEGIN:END:STEP]` (without its brackets).
fn range_values(inner: &str, at: usize) -> Result<Vec<String>, PatternError> {
    let shown = format!("[{inner}]");
    let bounds: Vec<&str> = inner.split(':').collect();
    if bounds.len() != 2 && bounds.len() != 3 {
        return Err(range_error(
            at,
            format!("range {shown} is not [BEGIN:END] or [BEGIN:END:STEP]"),
            "write web[01:05], 10.0.0.[1:5], db-[a:f] or web[1:10:2]",
        ));
    }
    let beg = if bounds[0].is_empty() { "0" } else { bounds[0] };
    let end = bounds[1];
    if end.is_empty() {
        return Err(range_error(
            at,
            format!("range {shown} has no end"),
            "write both bounds: [1:5]",
        ));
    }
    let step = match bounds.get(2) {
        None => 1,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => return Err(range_error(
                at,
                format!("range {shown} has step '{s}', not a positive whole number"),
                "the step counts how far each host is from the last: [1:10:2] gives 1, 3, 5, 7, 9",
            )),
        },
    };
    let letter = |s: &str| (s.len() == 1).then(|| LETTERS.find(s)).flatten();
    if let (Some(b), Some(e)) = (letter(beg), letter(end)) {
        if b > e {
            return Err(range_error(
                at,
                format!("range {shown} counts down from '{beg}' to '{end}'"),
                format!("write the first letter first: [{end}:{beg}]"),
            ));
        }
        return Ok(LETTERS[b..=e]
            .chars()
            .step_by(step)
            .map(String::from)
            .collect());
    }
    let number = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (Some(b), Some(e)) = (number(beg), number(end)) else {
        return Err(range_error(
            at,
            format!("range {shown} mixes numbers and letters or holds something else"),
            "both bounds are numbers ([1:5], [01:10]) or both single letters ([a:f])",
        ));
    };
    if b > e {
        return Err(range_error(
            at,
            format!("range {shown} counts down from {beg} to {end}: it gives no host"),
            format!("write the smaller bound first: [{end}:{beg}]"),
        ));
    }
    let width = if beg.starts_with('0') && beg.len() > 1 {
        if end.len() != beg.len() {
            return Err(range_error(
                at,
                format!(
                    "range {shown} pads '{beg}' to {} digits but not '{end}'",
                    beg.len()
                ),
                format!(
                    "give both bounds the same width: [{beg}:{end:0>w$}]",
                    w = beg.len()
                ),
            ));
        }
        beg.len()
    } else {
        0
    };
    if (e - b) / step as u64 >= MAX_EXPANSION as u64 {
        return Err(range_error(
            at,
            format!("range {shown} gives more than {MAX_EXPANSION} hosts"),
            "check the range bounds",
        ));
    }
    Ok((b..=e)
        .step_by(step)
        .map(|n| format!("{n:0>width$}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_ports() {
        assert_eq!(
            parse_address("web1:2222"),
            Some(("web1".into(), Some(2222)))
        );
        assert_eq!(
            parse_address("[fe80::1]:22"),
            Some(("fe80::1".into(), Some(22)))
        );
        assert_eq!(parse_address("fe80::1"), Some(("fe80::1".into(), None)));
        assert_eq!(
            parse_address("web[01:03]:22"),
            Some(("web[01:03]".into(), Some(22)))
        );
        assert_eq!(
            parse_address("10.0.0.[1:5]"),
            Some(("10.0.0.[1:5]".into(), None))
        );
        assert_eq!(parse_address("bad_"), None);
        assert_eq!(parse_address("db-[a:c]"), Some(("db-[a:c]".into(), None)));
    }
}
