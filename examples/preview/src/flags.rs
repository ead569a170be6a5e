//! Feature flags.
//!
//! Flags are read per request so they can be flipped without a restart. Today
//! the source is the process environment; a Redis-backed flag store is planned,
//! and only the body of the accessor functions below will need to change.

/// Whether GFM tables are rendered (`PREVIEW_TABLES` = `on`/`off`, default on).
pub fn tables_enabled() -> bool {
    flag_value(std::env::var("PREVIEW_TABLES").ok().as_deref(), true)
}

/// Interpret a flag's raw value: `on`/`true`/`1`/`yes` and `off`/`false`/`0`/`no`
/// (case-insensitive, surrounding whitespace ignored); anything else, or no
/// value at all, yields `default`.
pub fn flag_value(raw: Option<&str>, default: bool) -> bool {
    match raw.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("on" | "true" | "1" | "yes" | "enabled") => true,
        Some("off" | "false" | "0" | "no" | "disabled") => false,
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::flag_value;

    #[test]
    fn flag_values() {
        assert!(flag_value(None, true));
        assert!(!flag_value(None, false));
        assert!(flag_value(Some("on"), false));
        assert!(flag_value(Some(" ON "), false));
        assert!(flag_value(Some("true"), false));
        assert!(!flag_value(Some("off"), true));
        assert!(!flag_value(Some("Off"), true));
        assert!(!flag_value(Some("0"), true));
        assert!(flag_value(Some("bogus"), true));
        assert!(flag_value(Some(""), true));
    }
}
