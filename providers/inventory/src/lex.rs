//! The two ways ansible-core reads a value in an INI inventory: a host line is split into words
//! as POSIX `shlex` does (quotes, backslashes, `#` comments), and each value is then read as a
//! Python literal (`ast.literal_eval`), falling back to the text itself when it is none.

use serde_json::{Map, Number, Value};

/// One word of a host line and the character column (0-based) where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Word {
    pub text: String,
    pub start: usize,
}

/// Why a host line could not be split.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SplitError {
    /// A quote opened at this column is never closed.
    Unclosed { quote: char, at: usize },
    /// The line ends in a backslash (at this column).
    TrailingBackslash { at: usize },
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Between,
    Word,
    Single,
    Double,
}

/// POSIX shell-like splitting as Python's `shlex.split(line, comments=True)`: whitespace
/// separates words, `'...'` keeps everything, `"..."` lets `\` escape only `"` and `\`, a `\`
/// outside quotes escapes any character, and an unquoted `#` ends the line (even inside a word).
pub(crate) fn split(line: &str) -> Result<Vec<Word>, SplitError> {
    let mut words = Vec::new();
    let mut state = State::Between;
    let mut token = String::new();
    let mut quoted = false;
    let mut start = 0;
    let mut quote_at = 0;
    let mut chars = line.chars().enumerate().peekable();
    while let Some((i, c)) = chars.next() {
        match state {
            State::Between | State::Word => {
                if matches!(c, ' ' | '\t' | '\r' | '\n') {
                    if state == State::Word {
                        words.push(Word {
                            text: std::mem::take(&mut token),
                            start,
                        });
                        quoted = false;
                        state = State::Between;
                    }
                    continue;
                }
                if c == '#' {
                    break;
                }
                if state == State::Between {
                    state = State::Word;
                    start = i;
                }
                match c {
                    '\'' => {
                        state = State::Single;
                        quote_at = i;
                        quoted = true;
                    }
                    '"' => {
                        state = State::Double;
                        quote_at = i;
                        quoted = true;
                    }
                    '\\' => match chars.next() {
                        Some((_, n)) => token.push(n),
                        None => return Err(SplitError::TrailingBackslash { at: i }),
                    },
                    _ => token.push(c),
                }
            }
            State::Single => {
                if c == '\'' {
                    state = State::Word;
                } else {
                    token.push(c);
                }
            }
            State::Double => match c {
                '"' => state = State::Word,
                '\\' => match chars.next() {
                    Some((_, n)) => {
                        if n != '"' && n != '\\' {
                            token.push('\\');
                        }
                        token.push(n);
                    }
                    None => return Err(SplitError::TrailingBackslash { at: i }),
                },
                _ => token.push(c),
            },
        }
    }
    match state {
        State::Single => Err(SplitError::Unclosed {
            quote: '\'',
            at: quote_at,
        }),
        State::Double => Err(SplitError::Unclosed {
            quote: '"',
            at: quote_at,
        }),
        State::Word => {
            words.push(Word { text: token, start });
            Ok(words)
        }
        State::Between => {
            if quoted {
                words.push(Word { text: token, start });
            }
            Ok(words)
        }
    }
}

/// A value as ansible-core stores it: the Python literal it spells, else the text itself.
pub(crate) fn value(text: &str) -> Value {
    literal(text).unwrap_or_else(|| Value::String(text.to_string()))
}

/// `ast.literal_eval` over the literals an inventory uses: strings (quotes, prefixes, escapes,
/// adjacent ones joined), numbers (`0x`, `0o`, `0b`, `_`, floats), `True`/`False`/`None`,
/// lists, tuples and sets (as lists), dicts, `-`/`+` on a number, and a trailing `# comment`.
/// `None` where Python would refuse it (and for what JSON cannot hold: complex numbers,
/// integers beyond 64 bits, infinities), so the caller keeps the text.
pub(crate) fn literal(text: &str) -> Option<Value> {
    let mut p = Literal {
        s: text.trim_start_matches([' ', '\t']).chars().collect(),
        i: 0,
    };
    let v = p.expression_list()?;
    p.skip_space();
    (p.i == p.s.len()).then_some(v)
}

struct Literal {
    s: Vec<char>,
    i: usize,
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl Literal {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn peek_at(&self, k: usize) -> Option<char> {
        self.s.get(self.i + k).copied()
    }

    /// Spaces, tabs, form feeds, and a comment to the end.
    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\x0c' => self.i += 1,
                '#' => self.i = self.s.len(),
                _ => break,
            }
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// `a` or `a, b, ...` (a tuple, as a list), as Python's eval mode reads it.
    fn expression_list(&mut self) -> Option<Value> {
        let first = self.expression()?;
        if !self.eat(',') {
            return Some(first);
        }
        let mut items = vec![first];
        loop {
            self.skip_space();
            if self.peek().is_none() {
                break;
            }
            items.push(self.expression()?);
            if !self.eat(',') {
                break;
            }
        }
        Some(Value::Array(items))
    }

    fn expression(&mut self) -> Option<Value> {
        self.skip_space();
        match self.peek()? {
            sign @ ('-' | '+') => {
                self.i += 1;
                self.skip_space();
                let v = self.atom()?;
                let n = match v {
                    Value::Number(n) => n,
                    _ => return None,
                };
                if sign == '+' {
                    return Some(Value::Number(n));
                }
                if let Some(i) = n.as_i64() {
                    return Some(Value::Number(i.checked_neg()?.into()));
                }
                if let Some(u) = n.as_u64() {
                    // Only -(2^63) fits once negated.
                    return (u == 1 << 63).then(|| Value::Number(i64::MIN.into()));
                }
                Number::from_f64(-n.as_f64()?).map(Value::Number)
            }
            _ => self.atom(),
        }
    }

    fn atom(&mut self) -> Option<Value> {
        self.skip_space();
        let c = self.peek()?;
        match c {
            '[' => {
                self.i += 1;
                let items = self.items(']')?;
                Some(Value::Array(items))
            }
            '(' => {
                self.i += 1;
                if self.eat(')') {
                    return Some(Value::Array(vec![]));
                }
                let first = self.expression()?;
                if self.eat(')') {
                    return Some(first);
                }
                if !self.eat(',') {
                    return None;
                }
                let mut items = vec![first];
                items.extend(self.items(')')?);
                Some(Value::Array(items))
            }
            '{' => {
                self.i += 1;
                self.braces()
            }
            '.' if self.peek_at(1) == Some('.') && self.peek_at(2) == Some('.') => {
                // Ellipsis: ansible-core keeps it as the text "...".
                self.i += 3;
                Some(Value::String("...".into()))
            }
            '0'..='9' | '.' => self.number(),
            '\'' | '"' => self.strings(),
            c if is_ident_char(c) => {
                if self.string_prefix().is_some() {
                    return self.strings();
                }
                let start = self.i;
                while self.peek().is_some_and(is_ident_char) {
                    self.i += 1;
                }
                let word: String = self.s[start..self.i].iter().collect();
                match word.as_str() {
                    "True" => Some(Value::Bool(true)),
                    "False" => Some(Value::Bool(false)),
                    "None" => Some(Value::Null),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Items up to `close`, with an optional trailing comma.
    fn items(&mut self, close: char) -> Option<Vec<Value>> {
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Some(items);
            }
            items.push(self.expression()?);
            if !self.eat(',') {
                return self.eat(close).then_some(items);
            }
        }
    }

    /// After `{`: a dict, or a set (kept as a list without repeats).
    fn braces(&mut self) -> Option<Value> {
        if self.eat('}') {
            return Some(Value::Object(Map::new()));
        }
        let first = self.expression()?;
        if self.eat(':') {
            let mut map = Map::new();
            let v = self.expression()?;
            map.insert(key_text(&first)?, v);
            loop {
                if !self.eat(',') {
                    return self.eat('}').then_some(Value::Object(map));
                }
                if self.eat('}') {
                    return Some(Value::Object(map));
                }
                let k = self.expression()?;
                if !self.eat(':') {
                    return None;
                }
                let v = self.expression()?;
                map.insert(key_text(&k)?, v);
            }
        }
        let mut items = vec![first];
        loop {
            if !self.eat(',') {
                if !self.eat('}') {
                    return None;
                }
                break;
            }
            if self.eat('}') {
                break;
            }
            let v = self.expression()?;
            if !items.contains(&v) {
                items.push(v);
            }
        }
        Some(Value::Array(items))
    }

    /// The prefix letters of a string literal at the cursor (`r`, `b`, `u`, `rb`, `br`), when
    /// a quote follows them. `f` strings are no literal.
    fn string_prefix(&self) -> Option<(bool, bool, usize)> {
        let mut raw = false;
        let mut bytes = false;
        let mut n = 0;
        let mut unicode = false;
        while let Some(c) = self.peek_at(n) {
            match c.to_ascii_lowercase() {
                'r' if !raw && !unicode => raw = true,
                'b' if !bytes && !unicode => bytes = true,
                'u' if n == 0 => unicode = true,
                '\'' | '"' if n > 0 => return Some((raw, bytes, n)),
                _ => return None,
            }
            n += 1;
        }
        None
    }

    /// One or more adjacent string literals, joined.
    fn strings(&mut self) -> Option<Value> {
        let mut out = String::new();
        let mut kind: Option<bool> = None;
        loop {
            self.skip_space();
            let (raw, bytes, n) = match self.peek() {
                Some('\'' | '"') => (false, false, 0),
                Some(c) if is_ident_char(c) => match self.string_prefix() {
                    Some(p) => p,
                    None => break,
                },
                _ => break,
            };
            if kind.is_some_and(|b| b != bytes) {
                return None; // bytes and str cannot be joined
            }
            kind = Some(bytes);
            self.i += n;
            out.push_str(&self.string_body(raw, bytes)?);
        }
        kind.map(|_| Value::String(out))
    }

    fn string_body(&mut self, raw: bool, bytes: bool) -> Option<String> {
        let q = self.peek()?;
        let triple = self.peek_at(1) == Some(q) && self.peek_at(2) == Some(q);
        self.i += if triple { 3 } else { 1 };
        let mut out = String::new();
        let mut raw_bytes: Vec<u8> = Vec::new();
        let push = |out: &mut String, raw_bytes: &mut Vec<u8>, c: char| {
            if bytes {
                let mut b = [0; 4];
                raw_bytes.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            } else {
                out.push(c);
            }
        };
        loop {
            let c = self.peek()?;
            if bytes && !c.is_ascii() {
                return None;
            }
            if c == q && (!triple || (self.peek_at(1) == Some(q) && self.peek_at(2) == Some(q))) {
                self.i += if triple { 3 } else { 1 };
                break;
            }
            self.i += 1;
            if c != '\\' {
                push(&mut out, &mut raw_bytes, c);
                continue;
            }
            let e = self.peek()?;
            self.i += 1;
            if raw {
                push(&mut out, &mut raw_bytes, '\\');
                push(&mut out, &mut raw_bytes, e);
                continue;
            }
            match e {
                '\n' => {}
                '\\' | '\'' | '"' => push(&mut out, &mut raw_bytes, e),
                'a' => push(&mut out, &mut raw_bytes, '\x07'),
                'b' => push(&mut out, &mut raw_bytes, '\x08'),
                'f' => push(&mut out, &mut raw_bytes, '\x0c'),
                'n' => push(&mut out, &mut raw_bytes, '\n'),
                'r' => push(&mut out, &mut raw_bytes, '\r'),
                't' => push(&mut out, &mut raw_bytes, '\t'),
                'v' => push(&mut out, &mut raw_bytes, '\x0b'),
                '0'..='7' => {
                    let mut v = e.to_digit(8)?;
                    for _ in 0..2 {
                        match self.peek().and_then(|d| d.to_digit(8)) {
                            Some(d) => {
                                v = v * 8 + d;
                                self.i += 1;
                            }
                            None => break,
                        }
                    }
                    if bytes {
                        raw_bytes.push(u8::try_from(v).ok()?);
                    } else {
                        out.push(char::from_u32(v)?);
                    }
                }
                'x' => {
                    let v = self.hex_digits(2)?;
                    if bytes {
                        raw_bytes.push(v as u8);
                    } else {
                        out.push(char::from_u32(v)?);
                    }
                }
                'u' if !bytes => out.push(char::from_u32(self.hex_digits(4)?)?),
                'U' if !bytes => out.push(char::from_u32(self.hex_digits(8)?)?),
                // \N{NAME} needs Unicode's name table: leave the text as it is.
                'N' if !bytes => return None,
                _ => {
                    push(&mut out, &mut raw_bytes, '\\');
                    push(&mut out, &mut raw_bytes, e);
                }
            }
        }
        if bytes {
            String::from_utf8(raw_bytes).ok()
        } else {
            Some(out)
        }
    }

    fn hex_digits(&mut self, n: usize) -> Option<u32> {
        let mut v = 0;
        for _ in 0..n {
            v = v * 16 + self.peek()?.to_digit(16)?;
            self.i += 1;
        }
        Some(v)
    }

    /// Digits with single `_` between them; the text without the underscores.
    fn digits(&mut self, radix: u32) -> Option<String> {
        let mut out = String::new();
        loop {
            match self.peek() {
                Some(c) if c.is_digit(radix) => {
                    out.push(c);
                    self.i += 1;
                }
                Some('_')
                    if !out.is_empty() && self.peek_at(1).is_some_and(|d| d.is_digit(radix)) =>
                {
                    self.i += 1;
                }
                _ => break,
            }
        }
        (!out.is_empty()).then_some(out)
    }

    fn number(&mut self) -> Option<Value> {
        let radix = match (self.peek(), self.peek_at(1).map(|c| c.to_ascii_lowercase())) {
            (Some('0'), Some('x')) => 16,
            (Some('0'), Some('o')) => 8,
            (Some('0'), Some('b')) => 2,
            _ => 10,
        };
        let v = if radix != 10 {
            self.i += 2;
            if self.peek() == Some('_') {
                self.i += 1;
            }
            let d = self.digits(radix)?;
            Value::Number(int_number(u128::from_str_radix(&d, radix).ok()?)?)
        } else {
            let int = if self.peek() == Some('.') {
                None
            } else {
                Some(self.digits(10)?)
            };
            let mut float = false;
            let mut text = int.clone().unwrap_or_default();
            if self.peek() == Some('.') {
                self.i += 1;
                float = true;
                text.push('.');
                match self.digits(10) {
                    Some(f) => text.push_str(&f),
                    None if int.is_none() => return None,
                    None => {}
                }
            }
            if matches!(self.peek(), Some('e' | 'E')) {
                let save = self.i;
                self.i += 1;
                let mut exp = String::from("e");
                if let Some(s @ ('+' | '-')) = self.peek() {
                    exp.push(s);
                    self.i += 1;
                }
                match self.digits(10) {
                    Some(d) => {
                        exp.push_str(&d);
                        text.push_str(&exp);
                        float = true;
                    }
                    None => self.i = save,
                }
            }
            if matches!(self.peek(), Some('j' | 'J')) {
                return None; // complex: ansible-core keeps its text
            }
            if float {
                let f: f64 = text.parse().ok()?;
                Value::Number(Number::from_f64(f).filter(|_| f.is_finite())?)
            } else {
                let d = int?;
                if d.starts_with('0') && d.chars().any(|c| c != '0') {
                    return None; // Python refuses leading zeros: "007" stays text
                }
                Value::Number(int_number(d.parse().ok()?)?)
            }
        };
        // `1abc`, `0x1g`: no number at all.
        if self.peek().is_some_and(|c| is_ident_char(c) || c == '.') {
            return None;
        }
        Some(v)
    }
}

fn int_number(n: u128) -> Option<Number> {
    if let Ok(i) = i64::try_from(n) {
        Some(i.into())
    } else {
        u64::try_from(n).ok().map(Number::from)
    }
}

/// A dict key as JSON shows it (`json.dumps` turns `1` into `"1"`, `True` into `"true"`).
fn key_text(k: &Value) -> Option<String> {
    match k {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("null".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Each text as ansible-core 2.19 gave it back (`ansible-inventory --host`), checked by hand.
    #[test]
    fn values_as_ansible_reads_them() {
        let cases: &[(&str, Value)] = &[
            ("1e5", json!(100000.0)),
            (".5", json!(0.5)),
            ("1.", json!(1.0)),
            ("0b101", json!(5)),
            ("0o17", json!(15)),
            ("0x_1f", json!(31)),
            ("0_0", json!(0)),
            ("1__0", json!("1__0")),
            ("0x", json!("0x")),
            ("007", json!("007")),
            ("r'a\\nb'", json!("a\\nb")),
            ("u'x'", json!("x")),
            ("'''t'''", json!("t")),
            ("'\\u00e9'", json!("é")),
            ("'\\x41\\101'", json!("AA")),
            ("'a\\qb'", json!("a\\qb")),
            ("'a' 'b'", json!("ab")),
            ("f'x'", json!("f'x'")),
            ("--5", json!("--5")),
            ("-True", json!("-True")),
            ("- 5", json!(-5)),
            ("+7", json!(7)),
            ("1+2", json!("1+2")),
            ("{1, 2}", json!([1, 2])),
            ("(1,)", json!([1])),
            ("()", json!([])),
            ("[1,]", json!([1])),
            ("{'a':1,}", json!({"a": 1})),
            ("[1, [2, (3,)]]", json!([1, [2, [3]]])),
            ("1 # c", json!(1)),
            ("'a' # c", json!("a")),
            ("a # c", json!("a # c")),
            ("Ellipsis", json!("Ellipsis")),
            ("...", json!("...")),
            ("-0.0", json!(-0.0)),
            ("1_000.5", json!(1000.5)),
            ("1j", json!("1j")),
            ("True", json!(true)),
            ("true", json!("true")),
            ("None", Value::Null),
            ("", json!("")),
        ];
        for (text, want) in cases {
            assert_eq!(&value(text), want, "{text:?}");
        }
    }

    #[test]
    fn host_lines_split_as_posix_shlex() {
        let words =
            |s: &str| -> Vec<String> { split(s).unwrap().into_iter().map(|w| w.text).collect() };
        assert_eq!(
            words(r#"h k="a b" j='c d' l=e\ f"#),
            ["h", "k=a b", "j=c d", "l=e f"]
        );
        assert_eq!(words(r#"h k="x\"y\z" # comment"#), ["h", r#"k=x"y\z"#]);
        assert_eq!(words("h k=ab#cd e=f"), ["h", "k=ab"]);
        assert_eq!(words(r#"h k="""#), ["h", "k="]);
        assert_eq!(
            split("h k='x").unwrap_err(),
            SplitError::Unclosed { quote: '\'', at: 4 }
        );
        assert_eq!(
            split("h k\\").unwrap_err(),
            SplitError::TrailingBackslash { at: 3 }
        );
        assert_eq!(split("  web1 a=1").unwrap()[1].start, 7);
    }
}
