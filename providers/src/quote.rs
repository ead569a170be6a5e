//! Quoting for each format a provider renders into. Values are checked against their declared
//! `Format` while planning (pipeline_engine::format); these functions are the second wall: every
//! renderer passes every value through the one for its format, so even a value that passed is a
//! single token of that format and can never close a string, end a directive or open a block.

/// One nginx config token. Plain tokens stay bare (`/api/`, `1m`, `127.0.0.1:80`); anything else is
/// double-quoted with `\` and `"` escaped. Err for what nginx cannot carry: NUL, and `$` (nginx
/// expands variables in many directives and has no escape for it).
pub fn nginx(s: &str) -> Result<String, String> {
    if let Some(c) = s.chars().find(|c| *c == '\0' || *c == '$') {
        return Err(format!(
            "{} cannot be written into an nginx config",
            pipeline_engine::format::show_char(c)
        ));
    }
    let bare = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/:-@+=,%~[]*!&()".contains(c));
    if bare {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// One redis.conf argument: always double-quoted; `\`, `"` and every byte that is not printable
/// ASCII escaped (`\xHH`), as redis' own config parser (sdssplitargs) reads them.
pub fn redis(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

/// One POSIX shell word: bare when it is plainly safe, else single-quoted (`'` as `'\''`).
/// A NUL cannot be in a command line at all: values are checked for it before (Format::NoNul).
pub fn shell(s: &str) -> String {
    let bare = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/:-@+=,%".contains(c));
    if bare {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_tokens_cannot_end_a_directive_or_open_a_block() {
        assert_eq!(nginx("/api/").unwrap(), "/api/");
        assert_eq!(nginx("1m").unwrap(), "1m");
        assert_eq!(
            nginx("/x { return 200; } #\"").unwrap(),
            "\"/x { return 200; } #\\\"\""
        );
        assert_eq!(nginx("a\\b\nc").unwrap(), "\"a\\\\b\\nc\"");
        assert!(nginx("/etc/$host").is_err());
        assert!(nginx("a\0").is_err());
    }

    #[test]
    fn redis_arguments_are_one_quoted_word() {
        assert_eq!(redis("pw"), "\"pw\"");
        assert_eq!(redis("a\"b\\c\nd"), "\"a\\\"b\\\\c\\x0ad\"");
        assert_eq!(redis("é"), "\"\\xc3\\xa9\"");
    }

    #[test]
    fn shell_words_stay_one_word() {
        assert_eq!(shell("/usr/sbin/nginx"), "/usr/sbin/nginx");
        assert_eq!(shell("a b"), "'a b'");
        assert_eq!(shell("it's $(x)"), "'it'\\''s $(x)'");
        assert_eq!(shell(""), "''");
    }
}
