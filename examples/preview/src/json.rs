//! Minimal, strict JSON (RFC 8259) parsing and string serialisation.
//!
//! The parser validates the whole document (any JSON value, nesting capped at
//! [`MAX_DEPTH`]) and keeps numbers as their source text: the service only
//! needs string fields out of an object.

use std::fmt;

/// Maximum nesting of arrays/objects accepted by [`parse`].
pub const MAX_DEPTH: usize = 128;

/// A parsed JSON value. Object members keep their source order (duplicates included).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// The number exactly as written in the source.
    Number(String),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    /// Member `key` of an object (the last one wins on duplicates).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Short name of the value's type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
}

/// A parse error: what went wrong and the byte offset where it was noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub offset: usize,
    pub message: &'static str,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

impl std::error::Error for Error {}

/// Parse a complete JSON document.
pub fn parse(input: &str) -> Result<Value, Error> {
    let mut p = Parser {
        s: input,
        b: input.as_bytes(),
        pos: 0,
    };
    p.skip_ws();
    let v = p.value(0)?;
    p.skip_ws();
    if p.pos != p.b.len() {
        return Err(p.err("trailing characters after JSON value"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, message: &'static str) -> Error {
        Error {
            offset: self.pos,
            message,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8, message: &'static str) -> Result<(), Error> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(message))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        match self.peek() {
            None => Err(self.err("unexpected end of input")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn literal(&mut self, word: &'static str, v: Value) -> Result<Value, Error> {
        if self.b[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(v)
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, Error> {
        if depth >= MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.pos += 1; // '{'
        let mut members = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':', "expected ':' after object key")?;
            self.skip_ws();
            let v = self.value(depth + 1)?;
            members.push((key, v));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(self.err("expected ',' or '}' in object")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, Error> {
        if depth >= MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.err("expected ',' or ']' in array")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Value, Error> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.err("expected digits after decimal point"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("expected digits in exponent"));
            }
        }
        Ok(Value::Number(self.s[start..self.pos].to_string()))
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.err("invalid \\u escape: expected 4 hex digits")),
            };
            v = v * 16 + u32::from(d);
            self.pos += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, Error> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.s[start..self.pos]);
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let esc = self.peek();
                    self.pos += 1;
                    let c = match esc {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => self.unicode_escape()?,
                        None => return Err(self.err("unterminated string")),
                        Some(_) => {
                            self.pos -= 1;
                            return Err(self.err("invalid escape sequence"));
                        }
                    };
                    out.push(c);
                }
                Some(_) => return Err(self.err("unescaped control character in string")),
            }
        }
    }

    /// After `\u`: one code unit, or a surrogate pair `\uD8xx\uDCxx`.
    fn unicode_escape(&mut self) -> Result<char, Error> {
        let hi = self.hex4()?;
        let cp = match hi {
            0xD800..=0xDBFF => {
                if !self.b[self.pos..].starts_with(b"\\u") {
                    return Err(self.err("unpaired high surrogate in \\u escape"));
                }
                self.pos += 2;
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err(self.err("invalid low surrogate in \\u escape"));
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.err("unpaired low surrogate in \\u escape")),
            _ => hi,
        };
        char::from_u32(cp).ok_or_else(|| self.err("invalid code point"))
    }
}

/// Append `s` to `out` as a JSON string literal (with quotes).
pub fn write_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut last = 0;
    for (i, c) in s.char_indices() {
        let rep: &str = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            // Valid JSON, but not valid JavaScript before ES2019: escape them.
            '\u{2028}' => "\\u2028",
            '\u{2029}' => "\\u2029",
            c if (c as u32) < 0x20 => {
                out.push_str(&s[last..i]);
                out.push_str(&format!("\\u{:04x}", c as u32));
                last = i + c.len_utf8();
                continue;
            }
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + c.len_utf8();
    }
    out.push_str(&s[last..]);
    out.push('"');
}

/// `s` as a JSON string literal.
pub fn to_string(s: &str) -> String {
    let mut out = String::new();
    write_string(&mut out, s);
    out
}

/// A flat JSON object of string members, e.g. `{"error":"not found"}`.
pub fn object(members: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(&mut out, k);
        out.push(':');
        write_string(&mut out, v);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(json: &str) -> Result<String, Error> {
        match parse(json)? {
            Value::String(s) => Ok(s),
            other => panic!("not a string: {other:?}"),
        }
    }

    #[test]
    fn parses_object_and_finds_field() {
        let v =
            parse(r##" { "a": 1, "markdown": "# hi", "n": [true, false, null, -1.5e+3, {}] } "##)
                .unwrap();
        assert_eq!(v.get("markdown"), Some(&Value::String("# hi".into())));
        assert_eq!(v.get("a"), Some(&Value::Number("1".into())));
        assert_eq!(v.get("missing"), None);
        assert_eq!(parse("{}").unwrap(), Value::Object(vec![]));
        // Duplicate keys: the last one wins.
        let v = parse(r#"{"k":"a","k":"b"}"#).unwrap();
        assert_eq!(v.get("k"), Some(&Value::String("b".into())));
    }

    #[test]
    fn simple_escapes() {
        assert_eq!(s(r#""a\"b\\c\/d""#).unwrap(), "a\"b\\c/d");
        assert_eq!(s(r#""\b\f\n\r\t""#).unwrap(), "\u{8}\u{c}\n\r\t");
        assert_eq!(s(r#""\u0041\u00e9\u4E2D""#).unwrap(), "Aé中");
        assert_eq!(s(r#""\u0000""#).unwrap(), "\0");
        assert_eq!(s("\"héllo ✓\"").unwrap(), "héllo ✓");
    }

    #[test]
    fn surrogate_pairs() {
        assert_eq!(s(r#""\ud83d\ude00""#).unwrap(), "😀");
        assert_eq!(s(r#""\uD834\uDD1E x""#).unwrap(), "𝄞 x");
        assert_eq!(
            s(r#""\ud83d""#).unwrap_err().message,
            "unpaired high surrogate in \\u escape"
        );
        assert_eq!(
            s(r#""\ud83dx""#).unwrap_err().message,
            "unpaired high surrogate in \\u escape"
        );
        assert_eq!(
            s(r#""\ud83d\u0041""#).unwrap_err().message,
            "invalid low surrogate in \\u escape"
        );
        assert_eq!(
            s(r#""\ude00""#).unwrap_err().message,
            "unpaired low surrogate in \\u escape"
        );
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{a:1}",
            "[1,]",
            "\"unterminated",
            "\"bad \\x escape\"",
            "\"\\u12G4\"",
            "\"raw\ncontrol\"",
            "01",
            "1.",
            "-",
            "1e",
            "tru",
            "{} x",
            "'single'",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
        let e = parse("{\"a\": tru}").unwrap_err();
        assert_eq!(e.offset, 6);
        assert_eq!(e.to_string(), "invalid literal at byte 6");
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(&deep).unwrap_err().message, "nesting too deep");
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn serialises_with_escaping() {
        assert_eq!(to_string("plain"), "\"plain\"");
        assert_eq!(to_string("q\"b\\s/"), r#""q\"b\\s/""#);
        assert_eq!(to_string("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(to_string("\u{1}\u{1f}"), r#""\u0001\u001f""#);
        assert_eq!(to_string("<p>é😀</p>\u{2028}"), "\"<p>é😀</p>\\u2028\"");
        assert_eq!(
            object(&[("error", "x"), ("k", "\"")]),
            r#"{"error":"x","k":"\""}"#
        );
    }

    #[test]
    fn round_trip() {
        let original = "a\"\\\n\t\u{0}\u{1f}é😀\u{2028}/";
        assert_eq!(s(&to_string(original)).unwrap(), original);
    }
}
