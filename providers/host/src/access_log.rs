//! The balancer's access log: `$msec $status $request_time $upstream_addr $upstream_status`
//! (nginx's `log_format timed`). The monitor counts requests and errors per upstream from it;
//! the canaries attribute each answer to an arm by the upstream that finally answered.

/// The format's name, as `MetricSource::AccessLog` gives it.
pub const FORMAT: &str = "nginx-timed";

/// One parsed line.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessLine {
    /// Unix time the request finished, seconds.
    pub at: f64,
    pub status: u16,
    /// Request time, seconds (NaN when nginx wrote none).
    pub secs: f64,
    /// (upstream `host:port`, its status) per attempt, in order: on retries nginx lists every
    /// upstream tried. Empty when no upstream was asked (`-`).
    pub upstreams: Vec<(String, Option<u16>)>,
}

pub fn parse(line: &str) -> Option<AccessLine> {
    let mut it = line.split_whitespace();
    let at: f64 = it.next()?.parse().ok()?;
    let status: u16 = it.next()?.parse().ok()?;
    let secs = it.next()?.parse().unwrap_or(f64::NAN);
    // `$upstream_addr` and `$upstream_status` list attempts separated by ", " (and " : " across
    // internal redirects): as many addresses as statuses.
    let rest: Vec<&str> = it
        .map(|t| t.trim_end_matches(','))
        .filter(|t| !t.is_empty() && *t != ":")
        .collect();
    let n = rest.len() / 2;
    let upstreams = rest[..n]
        .iter()
        .zip(&rest[n..2 * n])
        .filter(|(a, _)| **a != "-")
        .map(|(a, s)| (a.to_string(), s.parse().ok()))
        .collect();
    Some(AccessLine {
        at,
        status,
        secs,
        upstreams,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_retries_and_no_upstream() {
        let l = parse("1700000000.123 200 0.002 127.0.0.1:8001 200").unwrap();
        assert_eq!(l.status, 200);
        assert_eq!(l.secs, 0.002);
        assert_eq!(l.upstreams, vec![("127.0.0.1:8001".into(), Some(200))]);
        let l = parse("1700000000.5 200 0.010 127.0.0.1:8001, 127.0.0.1:8002 502, 200").unwrap();
        assert_eq!(
            l.upstreams,
            vec![
                ("127.0.0.1:8001".into(), Some(502)),
                ("127.0.0.1:8002".into(), Some(200))
            ]
        );
        let l = parse("1700000000.5 404 0.000 - -").unwrap();
        assert!(l.upstreams.is_empty());
        assert!(parse("garbage").is_none());
    }
}
