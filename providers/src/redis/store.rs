//! How flags are kept in redis, shared by the provider (seed values), `pipeline flags` and the
//! benchmark.
//!
//! One hash per flag, key `flag:NAME`, with two fields:
//!
//! | field     | values        | meaning                                                        |
//! |-----------|---------------|----------------------------------------------------------------|
//! | `enabled` | `"1"` / `"0"` | the flag is on / off                                           |
//! | `percent` | `"0"`..`"100"`| when on: the share of requests that see it on (100 = all)     |
//!
//! A missing `percent` means 100 when enabled. A flag that does not exist is neither on nor off:
//! readers fall back to their own default. Both fields are written by one `HSET`, so a reader
//! (or a mirror) never sees half an update.

use super::resp::{Conn, Error, Reply};

pub const KEY_PREFIX: &str = "flag:";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlagValue {
    pub enabled: bool,
    /// 0..=100; meaningful when enabled.
    pub percent: u8,
}

impl FlagValue {
    pub const ON: FlagValue = FlagValue {
        enabled: true,
        percent: 100,
    };
    pub const OFF: FlagValue = FlagValue {
        enabled: false,
        percent: 0,
    };

    /// `on`, `on (25%)`, `off`.
    pub fn describe(&self) -> String {
        match (self.enabled, self.percent) {
            (false, _) => "off".into(),
            (true, p) if p >= 100 => "on".into(),
            (true, p) => format!("on ({p}%)"),
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({ "enabled": self.enabled, "percent": self.percent })
    }

    /// From an `HGETALL` reply; None for an empty hash (no such flag).
    pub fn from_hgetall(r: Reply) -> Option<FlagValue> {
        let items = r.into_array();
        if items.is_empty() {
            return None;
        }
        let mut enabled = None;
        let mut percent = None;
        for pair in items.chunks(2) {
            let (Some(k), Some(v)) = (
                pair.first().and_then(Reply::as_string),
                pair.get(1).and_then(Reply::as_string),
            ) else {
                continue;
            };
            match k.as_str() {
                "enabled" => enabled = Some(matches!(v.trim(), "1" | "true" | "on" | "yes")),
                "percent" => percent = v.trim().parse::<f64>().ok(),
                _ => {}
            }
        }
        let enabled = enabled.unwrap_or(false);
        let percent = percent.map_or(if enabled { 100 } else { 0 }, |p| {
            p.clamp(0.0, 100.0).round() as u8
        });
        Some(FlagValue { enabled, percent })
    }
}

/// Flag names: letters, digits, `_`, `-`, `.`; 1 to 100 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

pub fn get(c: &mut Conn, name: &str) -> Result<Option<FlagValue>, Error> {
    Ok(FlagValue::from_hgetall(
        c.cmd(&["HGETALL", &format!("{KEY_PREFIX}{name}")])?,
    ))
}

pub fn set(c: &mut Conn, name: &str, v: FlagValue) -> Result<(), Error> {
    c.cmd(&[
        "HSET",
        &format!("{KEY_PREFIX}{name}"),
        "enabled",
        if v.enabled { "1" } else { "0" },
        "percent",
        &v.percent.to_string(),
    ])?;
    Ok(())
}

/// Set `name` only if it does not exist yet (seed values never overwrite a runtime flip).
/// Returns whether it was written.
pub fn seed(c: &mut Conn, name: &str, v: FlagValue) -> Result<bool, Error> {
    let key = format!("{KEY_PREFIX}{name}");
    let r = c.cmd(&["HSETNX", &key, "enabled", if v.enabled { "1" } else { "0" }])?;
    if r == Reply::Int(1) {
        c.cmd(&["HSETNX", &key, "percent", &v.percent.to_string()])?;
        return Ok(true);
    }
    Ok(false)
}

/// Every flag, sorted by name.
pub fn list(c: &mut Conn) -> Result<Vec<(String, FlagValue)>, Error> {
    let mut names = Vec::new();
    let mut cursor = "0".to_string();
    let pattern = format!("{KEY_PREFIX}*");
    loop {
        let r = c
            .cmd(&["SCAN", &cursor, "MATCH", &pattern, "COUNT", "1000"])?
            .into_array();
        let mut it = r.into_iter();
        cursor = it.next().and_then(|r| r.as_string()).unwrap_or_default();
        for k in it.next().map(Reply::into_array).unwrap_or_default() {
            if let Some(k) = k.as_string() {
                if let Some(n) = k.strip_prefix(KEY_PREFIX) {
                    names.push(n.to_string());
                }
            }
        }
        if cursor == "0" || cursor.is_empty() {
            break;
        }
    }
    names.sort();
    names.dedup();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        if let Some(v) = get(c, &n)? {
            out.push((n, v));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn decoding() {
        let r = Reply::Array(Some(vec![
            bulk("enabled"),
            bulk("1"),
            bulk("percent"),
            bulk("25"),
        ]));
        let v = FlagValue::from_hgetall(r).unwrap();
        assert_eq!(
            v,
            FlagValue {
                enabled: true,
                percent: 25
            }
        );
        assert_eq!(v.describe(), "on (25%)");
        let r = Reply::Array(Some(vec![bulk("enabled"), bulk("1")]));
        assert_eq!(FlagValue::from_hgetall(r), Some(FlagValue::ON));
        let r = Reply::Array(Some(vec![bulk("enabled"), bulk("0")]));
        assert_eq!(FlagValue::from_hgetall(r).unwrap().describe(), "off");
        assert_eq!(FlagValue::from_hgetall(Reply::Array(Some(vec![]))), None);
        assert!(valid_name("new_editor") && !valid_name("a b") && !valid_name(""));
    }
}
