//! Command line and environment configuration.

use std::time::Duration;

pub const DEFAULT_PORT: u16 = 3000;
pub const DEFAULT_ADDRESS: &str = "127.0.0.1";
pub const DEFAULT_WORKERS: usize = 16;

pub const USAGE: &str = "\
usage: preview [--port N] [--address A]

  --port N      port to listen on (default: $PORT, else 3000; 0 = any free port)
  --address A   address to bind (default: 127.0.0.1)
  -h, --help    show this help
  -V, --version show the version

environment:
  PORT                      port when --port is not given
  VERSION                   version reported by GET /health (default: dev)
  PREVIEW_TABLES            on|off: render GFM tables (default: on; read per request)
  FLAGS_URL                 redis://:PASSWORD@HOST:PORT: read flag `tables` from this
                            redis flag store per request (PREVIEW_TABLES is the default)
  PREVIEW_FAIL_RATE         0.0-1.0: share of /preview requests answered 500 (default: 0)
  PREVIEW_EXTRA_LATENCY_MS  milliseconds of sleep added to /preview (default: 0)
  PREVIEW_FAIL_AFTER_MS     injected failures start this long after the first /preview
                            request (default: 0, from the start)
  PREVIEW_WORKERS           worker threads (default: 16)
";

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub address: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Listen),
    Help,
    Version,
}

/// Parse command line arguments (without the program name). `env_port` is
/// the value of `$PORT`; the `--port` flag wins over it.
pub fn parse_args<I>(args: I, env_port: Option<&str>) -> Result<Command, String>
where
    I: IntoIterator<Item = String>,
{
    let mut port: Option<u16> = None;
    let mut address: Option<String> = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline_value) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--port" | "-p" | "--address" | "-a" => {
                let value = match inline_value {
                    Some(v) => v,
                    None => args
                        .next()
                        .ok_or_else(|| format!("missing value for {name}"))?,
                };
                if name == "--port" || name == "-p" {
                    port = Some(parse_port(&value).map_err(|e| format!("--port: {e}"))?);
                } else {
                    if value.is_empty() {
                        return Err("--address: empty address".into());
                    }
                    address = Some(value);
                }
            }
            _ => return Err(format!("unknown argument: {arg}")),
        }
    }
    let port = match (port, env_port.map(str::trim)) {
        (Some(p), _) => p,
        (None, Some(v)) if !v.is_empty() => parse_port(v).map_err(|e| format!("PORT: {e}"))?,
        _ => DEFAULT_PORT,
    };
    Ok(Command::Run(Listen {
        address: address.unwrap_or_else(|| DEFAULT_ADDRESS.to_string()),
        port,
    }))
}

fn parse_port(v: &str) -> Result<u16, String> {
    v.trim()
        .parse::<u16>()
        .map_err(|_| format!("invalid port {v:?} (expected 0-65535)"))
}

/// Runtime settings read once at startup.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Reported by `GET /health`.
    pub version: String,
    /// Share of `/preview` requests answered with 500 (0.0..=1.0).
    pub fail_rate: f64,
    /// Sleep added to every `/preview` request.
    pub extra_latency: Duration,
    /// Injected failures start this long after the first `/preview` request.
    pub fail_after: Duration,
    /// Number of worker threads.
    pub workers: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            version: "dev".into(),
            fail_rate: 0.0,
            extra_latency: Duration::ZERO,
            fail_after: Duration::ZERO,
            workers: DEFAULT_WORKERS,
        }
    }
}

impl Settings {
    /// Read settings from the process environment.
    pub fn from_env() -> Result<Settings, String> {
        Settings::from_lookup(|k| std::env::var(k).ok())
    }

    /// Read settings through `get` (testable without touching the environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let set = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut s = Settings::default();
        if let Some(v) = set("VERSION") {
            s.version = v;
        }
        if let Some(v) = set("PREVIEW_FAIL_RATE") {
            s.fail_rate = v
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    format!("PREVIEW_FAIL_RATE: invalid value {v:?} (expected 0.0-1.0)")
                })?;
        }
        if let Some(v) = set("PREVIEW_EXTRA_LATENCY_MS") {
            let ms = v.parse::<u64>().map_err(|_| {
                format!("PREVIEW_EXTRA_LATENCY_MS: invalid value {v:?} (expected milliseconds)")
            })?;
            s.extra_latency = Duration::from_millis(ms);
        }
        if let Some(v) = set("PREVIEW_FAIL_AFTER_MS") {
            let ms = v.parse::<u64>().map_err(|_| {
                format!("PREVIEW_FAIL_AFTER_MS: invalid value {v:?} (expected milliseconds)")
            })?;
            s.fail_after = Duration::from_millis(ms);
        }
        if let Some(v) = set("PREVIEW_WORKERS") {
            s.workers = v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| format!("PREVIEW_WORKERS: invalid value {v:?} (expected 1-1024)"))?;
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn listen(address: &str, port: u16) -> Command {
        Command::Run(Listen {
            address: address.into(),
            port,
        })
    }

    #[test]
    fn cli_defaults_and_precedence() {
        assert_eq!(parse_args(args(&[]), None), Ok(listen("127.0.0.1", 3000)));
        assert_eq!(
            parse_args(args(&[]), Some("8080")),
            Ok(listen("127.0.0.1", 8080))
        );
        assert_eq!(
            parse_args(args(&[]), Some("")),
            Ok(listen("127.0.0.1", 3000))
        );
        assert_eq!(
            parse_args(args(&["--port", "9000"]), Some("8080")),
            Ok(listen("127.0.0.1", 9000))
        );
        // The flag wins even when $PORT is garbage.
        assert_eq!(
            parse_args(args(&["--port=9001", "--address=0.0.0.0"]), Some("junk")),
            Ok(listen("0.0.0.0", 9001))
        );
        assert_eq!(
            parse_args(args(&["--address", "::1"]), None),
            Ok(listen("::1", 3000))
        );
        assert_eq!(parse_args(args(&["--help"]), None), Ok(Command::Help));
    }

    #[test]
    fn cli_errors() {
        assert!(parse_args(args(&["--port"]), None).is_err());
        assert!(parse_args(args(&["--port", "70000"]), None).is_err());
        assert!(parse_args(args(&["--bogus"]), None).is_err());
        assert!(parse_args(args(&[]), Some("abc")).is_err());
    }

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn settings_from_env() {
        assert_eq!(settings(&[]), Ok(Settings::default()));
        let s = settings(&[
            ("VERSION", "1.2.3"),
            ("PREVIEW_FAIL_RATE", "0.25"),
            ("PREVIEW_EXTRA_LATENCY_MS", "150"),
            ("PREVIEW_WORKERS", "4"),
        ])
        .unwrap();
        assert_eq!(s.version, "1.2.3");
        assert_eq!(s.fail_rate, 0.25);
        assert_eq!(s.extra_latency, Duration::from_millis(150));
        assert_eq!(s.workers, 4);
        assert!(settings(&[("PREVIEW_FAIL_RATE", "1.5")]).is_err());
        assert!(settings(&[("PREVIEW_FAIL_RATE", "NaN")]).is_err());
        assert!(settings(&[("PREVIEW_EXTRA_LATENCY_MS", "-1")]).is_err());
        assert!(settings(&[("PREVIEW_WORKERS", "0")]).is_err());
    }
}
