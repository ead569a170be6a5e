//! The built-in function library. Pure functions, except `file`, which reads (never writes).

use crate::value::{format_number, to_template_string, Value};
use indexmap::IndexMap;
use std::path::Path;

pub struct FuncError {
    pub message: String,
    pub help: Option<String>,
}

fn err<T>(message: impl Into<String>) -> Result<T, FuncError> {
    Err(FuncError {
        message: message.into(),
        help: None,
    })
}

pub const NAMES: &[&str] = &[
    "abs",
    "base64decode",
    "base64encode",
    "can",
    "ceil",
    "coalesce",
    "concat",
    "contains",
    "distinct",
    "element",
    "endswith",
    "file",
    "fileexists",
    "flatten",
    "floor",
    "format",
    "join",
    "jsondecode",
    "jsonencode",
    "keys",
    "length",
    "lookup",
    "lower",
    "max",
    "merge",
    "min",
    "nonsensitive",
    "range",
    "replace",
    "reverse",
    "sensitive",
    "sha256",
    "split",
    "startswith",
    "substr",
    "templatefile",
    "tobool",
    "tolist",
    "tomap",
    "tonumber",
    "tostring",
    "trimspace",
    "try",
    "upper",
    "values",
    "zipmap",
];

/// How a function is called, for help lines.
pub fn signature(name: &str) -> Option<&'static str> {
    Some(match name {
        "abs" => "abs(NUMBER)",
        "base64decode" => "base64decode(STRING)",
        "base64encode" => "base64encode(STRING)",
        "can" => "can(EXPRESSION)",
        "ceil" => "ceil(NUMBER)",
        "coalesce" => "coalesce(VALUE, ...)",
        "concat" => "concat(LIST, LIST, ...)",
        "contains" => "contains(LIST, VALUE)",
        "distinct" => "distinct(LIST)",
        "element" => "element(LIST, INDEX)",
        "endswith" => "endswith(STRING, SUFFIX)",
        "file" => "file(PATH)",
        "fileexists" => "fileexists(PATH)",
        "flatten" => "flatten(LIST)",
        "floor" => "floor(NUMBER)",
        "format" => "format(FORMAT, VALUE, ...)",
        "join" => "join(SEPARATOR, LIST)",
        "jsondecode" => "jsondecode(STRING)",
        "jsonencode" => "jsonencode(VALUE)",
        "keys" => "keys(OBJECT)",
        "length" => "length(LIST | OBJECT | STRING)",
        "lookup" => "lookup(OBJECT, KEY, DEFAULT)",
        "lower" => "lower(STRING)",
        "max" => "max(NUMBER, ...)",
        "merge" => "merge(OBJECT, OBJECT, ...)",
        "min" => "min(NUMBER, ...)",
        "nonsensitive" => "nonsensitive(VALUE)",
        "range" => "range(END) | range(START, END) | range(START, END, STEP)",
        "replace" => "replace(STRING, SEARCH, REPLACEMENT)",
        "reverse" => "reverse(LIST)",
        "sensitive" => "sensitive(VALUE)",
        "sha256" => "sha256(STRING)",
        "split" => "split(SEPARATOR, STRING)",
        "startswith" => "startswith(STRING, PREFIX)",
        "substr" => "substr(STRING, OFFSET, LENGTH)",
        "templatefile" => "templatefile(PATH, { NAME = VALUE, ... })",
        "tobool" => "tobool(VALUE)",
        "tolist" => "tolist(VALUE)",
        "tomap" => "tomap(OBJECT)",
        "tonumber" => "tonumber(VALUE)",
        "tostring" => "tostring(VALUE)",
        "trimspace" => "trimspace(STRING)",
        "try" => "try(EXPRESSION, ..., FALLBACK)",
        "upper" => "upper(STRING)",
        "values" => "values(OBJECT)",
        "zipmap" => "zipmap(KEYS, VALUES)",
        _ => return None,
    })
}

/// Call `name`. Unknown arguments give an unknown result; sensitive arguments a sensitive one.
pub fn call(name: &str, args: Vec<Value>, base: &Path) -> Result<Value, FuncError> {
    let mut sens = false;
    let mut plain = Vec::with_capacity(args.len());
    for a in &args {
        let (v, s) = a.unmarked();
        sens |= s;
        plain.push(v);
    }
    match name {
        "sensitive" => return one(&plain).map(|v| v.clone().mark(true)),
        "nonsensitive" => return one(&plain).cloned(),
        _ => {}
    }
    if !NAMES.contains(&name) {
        return Err(FuncError {
            message: "there is no function by this name".into(),
            help: Some(
                match crate::diag::did_you_mean(name, NAMES.iter().copied()) {
                    Some(c) => format!(
                        "did you mean {}? functions available: {}",
                        signature(c).unwrap_or(c),
                        NAMES.join(", ")
                    ),
                    None => format!("functions available: {}", NAMES.join(", ")),
                },
            ),
        });
    }
    let lenient = matches!(
        name,
        "length" | "coalesce" | "concat" | "merge" | "keys" | "tolist"
    );
    if !lenient && plain.iter().any(|v| !v.is_known())
        || plain.iter().any(|v| matches!(v, Value::Unknown))
    {
        return Ok(Value::Unknown);
    }
    Ok(dispatch(name, plain, base)?.mark(sens))
}

fn one(a: &[Value]) -> Result<&Value, FuncError> {
    match a {
        [v] => Ok(v),
        _ => err(format!("takes 1 argument, got {}", a.len())),
    }
}

fn arity(a: &[Value], n: usize) -> Result<(), FuncError> {
    if a.len() != n {
        return err(format!("takes {n} arguments, got {}", a.len()));
    }
    Ok(())
}

fn s(v: &Value, what: &str) -> Result<String, FuncError> {
    match v {
        Value::List(_) | Value::Map(_) => {
            err(format!("{what} must be a string, found {}", v.type_name()))
        }
        v => to_template_string(v).map_or_else(|| err(format!("{what} must be a string")), Ok),
    }
}

fn n(v: &Value, what: &str) -> Result<f64, FuncError> {
    match v {
        Value::Number(x) => Ok(*x),
        Value::String(x) => x
            .trim()
            .parse()
            .or_else(|_| err(format!("{what} must be a number, found {x:?}"))),
        other => err(format!(
            "{what} must be a number, found {}",
            other.type_name()
        )),
    }
}

fn list(v: &Value, what: &str) -> Result<Vec<Value>, FuncError> {
    match v {
        Value::List(l) => Ok(l.clone()),
        other => err(format!(
            "{what} must be a list, found {}",
            other.type_name()
        )),
    }
}

fn map(v: &Value, what: &str) -> Result<IndexMap<String, Value>, FuncError> {
    match v {
        Value::Map(m) => Ok(m.clone()),
        other => err(format!(
            "{what} must be an object, found {}",
            other.type_name()
        )),
    }
}

fn dispatch(name: &str, a: Vec<Value>, base: &Path) -> Result<Value, FuncError> {
    Ok(match name {
        "file" => {
            let p = s(one(&a)?, "the path")?;
            let full = base.join(&p);
            match std::fs::read_to_string(&full) {
                Ok(t) => Value::String(t),
                Err(e) => {
                    return Err(FuncError {
                        message: format!("cannot read {}: {e}", full.display()),
                        help: Some(
                            "paths are relative to the directory of the stack or module file"
                                .into(),
                        ),
                    })
                }
            }
        }
        "fileexists" => Value::Bool(base.join(s(one(&a)?, "the path")?).is_file()),
        "join" => {
            arity(&a, 2)?;
            let sep = s(&a[0], "the separator")?;
            let parts = list(&a[1], "the second argument")?
                .iter()
                .map(|v| s(v, "each element"))
                .collect::<Result<Vec<_>, _>>()?;
            Value::String(parts.join(&sep))
        }
        "split" => {
            arity(&a, 2)?;
            let sep = s(&a[0], "the separator")?;
            let text = s(&a[1], "the string")?;
            if text.is_empty() {
                Value::List(vec![])
            } else {
                Value::List(text.split(sep.as_str()).map(Value::str).collect())
            }
        }
        "length" => match one(&a)? {
            Value::List(l) => Value::Number(l.len() as f64),
            Value::Map(m) => Value::Number(m.len() as f64),
            Value::String(t) => Value::Number(t.chars().count() as f64),
            Value::Unknown => Value::Unknown,
            other => {
                return err(format!(
                    "needs a list, object or string, found {}",
                    other.type_name()
                ))
            }
        },
        "lookup" => {
            if a.len() != 2 && a.len() != 3 {
                return err("takes an object, a key and an optional default");
            }
            let m = map(&a[0], "the first argument")?;
            let k = s(&a[1], "the key")?;
            match (m.get(&k), a.get(2)) {
                (Some(v), _) => v.clone(),
                (None, Some(d)) => d.clone(),
                (None, None) => {
                    return Err(FuncError {
                        message: format!("the object has no key \"{k}\""),
                        help: Some("give a default as the third argument".into()),
                    })
                }
            }
        }
        "merge" => {
            let mut out = IndexMap::new();
            for (i, v) in a.iter().enumerate() {
                match v {
                    Value::Unknown => return Ok(Value::Unknown),
                    Value::Null => {}
                    v => out.extend(map(v, &format!("argument {}", i + 1))?),
                }
            }
            Value::Map(out)
        }
        "concat" => {
            let mut out = Vec::new();
            for (i, v) in a.iter().enumerate() {
                match v {
                    Value::Unknown => return Ok(Value::Unknown),
                    v => out.extend(list(v, &format!("argument {}", i + 1))?),
                }
            }
            Value::List(out)
        }
        "format" => {
            if a.is_empty() {
                return err("needs a format string");
            }
            format(&s(&a[0], "the format")?, &a[1..])?
        }
        "range" => {
            let nums = a
                .iter()
                .map(|v| n(v, "each argument"))
                .collect::<Result<Vec<_>, _>>()?;
            let (start, end, step) = match nums.as_slice() {
                [e] => (0.0, *e, 1.0),
                [s, e] => (*s, *e, if e >= s { 1.0 } else { -1.0 }),
                [s, e, st] => (*s, *e, *st),
                _ => return err("takes 1 to 3 numbers"),
            };
            if step == 0.0 {
                return err("the step must not be zero");
            }
            let mut out = Vec::new();
            let mut x = start;
            while (step > 0.0 && x < end) || (step < 0.0 && x > end) {
                out.push(Value::Number(x));
                x += step;
                if out.len() > 1_000_000 {
                    return err("the range has more than 1,000,000 elements");
                }
            }
            Value::List(out)
        }
        "tostring" => match one(&a)? {
            Value::Null => Value::Null,
            v => Value::String(s(v, "the argument")?),
        },
        "tonumber" => match one(&a)? {
            Value::Null => Value::Null,
            v => Value::Number(n(v, "the argument")?),
        },
        "tobool" => match one(&a)? {
            Value::Bool(b) => Value::Bool(*b),
            Value::String(t) if t == "true" => Value::Bool(true),
            Value::String(t) if t == "false" => Value::Bool(false),
            Value::Null => Value::Null,
            other => return err(format!("cannot convert {} to bool", other.render())),
        },
        "tolist" => match one(&a)? {
            Value::List(l) => Value::List(l.clone()),
            Value::Map(m) => Value::List(m.values().cloned().collect()),
            other => return err(format!("cannot convert a {} to a list", other.type_name())),
        },
        "tomap" => Value::Map(map(one(&a)?, "the argument")?),
        "jsonencode" => Value::String(one(&a)?.to_json().to_string()),
        "jsondecode" => {
            let t = s(one(&a)?, "the argument")?;
            let j: serde_json::Value =
                serde_json::from_str(&t).or_else(|e| err(format!("invalid JSON: {e}")))?;
            Value::from_json(&j)
        }
        "upper" => Value::String(s(one(&a)?, "the argument")?.to_uppercase()),
        "lower" => Value::String(s(one(&a)?, "the argument")?.to_lowercase()),
        "trimspace" => Value::String(s(one(&a)?, "the argument")?.trim().to_string()),
        "replace" => {
            arity(&a, 3)?;
            Value::String(
                s(&a[0], "the string")?
                    .replace(&s(&a[1], "the search")?, &s(&a[2], "the replacement")?),
            )
        }
        "startswith" => {
            arity(&a, 2)?;
            Value::Bool(s(&a[0], "the string")?.starts_with(&s(&a[1], "the prefix")?))
        }
        "endswith" => {
            arity(&a, 2)?;
            Value::Bool(s(&a[0], "the string")?.ends_with(&s(&a[1], "the suffix")?))
        }
        "substr" => {
            arity(&a, 3)?;
            let t: Vec<char> = s(&a[0], "the string")?.chars().collect();
            let off = n(&a[1], "the offset")?.max(0.0) as usize;
            let len = n(&a[2], "the length")?;
            let end = if len < 0.0 {
                t.len()
            } else {
                (off + len as usize).min(t.len())
            };
            Value::String(
                t[off.min(t.len())..end.max(off.min(t.len()))]
                    .iter()
                    .collect(),
            )
        }
        "contains" => {
            arity(&a, 2)?;
            Value::Bool(list(&a[0], "the first argument")?.contains(&a[1]))
        }
        "keys" => match one(&a)? {
            Value::Unknown => Value::Unknown,
            v => Value::List(
                map(v, "the argument")?
                    .keys()
                    .cloned()
                    .map(Value::String)
                    .collect(),
            ),
        },
        "values" => Value::List(map(one(&a)?, "the argument")?.values().cloned().collect()),
        "element" => {
            arity(&a, 2)?;
            let l = list(&a[0], "the first argument")?;
            if l.is_empty() {
                return err("cannot take an element of an empty list");
            }
            let i = n(&a[1], "the index")? as usize;
            l[i % l.len()].clone()
        }
        "coalesce" => a
            .iter()
            .find(|v| !matches!(v, Value::Null) && v.as_str() != Some(""))
            .cloned()
            .unwrap_or(Value::Null),
        "min" | "max" => {
            let nums = a
                .iter()
                .map(|v| n(v, "each argument"))
                .collect::<Result<Vec<_>, _>>()?;
            if nums.is_empty() {
                return err("needs at least one number");
            }
            let f = if name == "min" { f64::min } else { f64::max };
            Value::Number(nums.into_iter().reduce(f).unwrap_or(0.0))
        }
        "abs" => Value::Number(n(one(&a)?, "the argument")?.abs()),
        "ceil" => Value::Number(n(one(&a)?, "the argument")?.ceil()),
        "floor" => Value::Number(n(one(&a)?, "the argument")?.floor()),
        "flatten" => {
            fn flat(v: &Value, out: &mut Vec<Value>) {
                match v {
                    Value::List(l) => l.iter().for_each(|x| flat(x, out)),
                    v => out.push(v.clone()),
                }
            }
            let mut out = Vec::new();
            flat(one(&a)?, &mut out);
            Value::List(out)
        }
        "distinct" => {
            let mut out: Vec<Value> = Vec::new();
            for v in list(one(&a)?, "the argument")? {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
            Value::List(out)
        }
        "reverse" => Value::List(list(one(&a)?, "the argument")?.into_iter().rev().collect()),
        "zipmap" => {
            arity(&a, 2)?;
            let k = list(&a[0], "the keys")?;
            let v = list(&a[1], "the values")?;
            if k.len() != v.len() {
                return err(format!("{} keys but {} values", k.len(), v.len()));
            }
            let mut out = IndexMap::new();
            for (k, v) in k.iter().zip(v) {
                out.insert(s(k, "each key")?, v);
            }
            Value::Map(out)
        }
        "sha256" => {
            use sha2::Digest;
            Value::String(hex(&sha2::Sha256::digest(
                s(one(&a)?, "the argument")?.as_bytes(),
            )))
        }
        "base64encode" => Value::String(base64_encode(s(one(&a)?, "the argument")?.as_bytes())),
        "base64decode" => {
            let bytes = base64_decode(&s(one(&a)?, "the argument")?).ok_or(FuncError {
                message: "not valid base64".into(),
                help: None,
            })?;
            Value::String(
                String::from_utf8(bytes).or_else(|_| err("the decoded bytes are not UTF-8"))?,
            )
        }
        _ => return err("there is no function by this name"),
    })
}

fn format(fmt: &str, args: &[Value]) -> Result<Value, FuncError> {
    let mut out = String::new();
    let mut it = fmt.chars().peekable();
    let mut next = 0;
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&d) = it.peek() {
            if d.is_ascii_digit() || d == '.' || d == '-' {
                spec.push(d);
                it.next();
            } else {
                break;
            }
        }
        let verb = it.next().ok_or(FuncError {
            message: "the format ends with a lone %".into(),
            help: None,
        })?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            return err(format!(
                "the format has more verbs than the {} arguments given",
                args.len()
            ));
        };
        next += 1;
        let text = match verb {
            's' => s(arg, "a %s argument")?,
            'd' => format!("{}", n(arg, "a %d argument")? as i64),
            'f' => {
                let prec = spec
                    .split('.')
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(6);
                format!("{:.*}", prec, n(arg, "a %f argument")?)
            }
            'v' => match arg {
                Value::Number(x) => format_number(*x),
                v => to_template_string(v).unwrap_or_else(|| v.to_json().to_string()),
            },
            'q' => serde_json::to_string(&s(arg, "a %q argument")?).unwrap_or_default(),
            other => {
                return err(format!(
                    "unknown format verb %{other}; use %s, %d, %f, %v, %q or %%"
                ))
            }
        };
        let width: usize = spec
            .split('.')
            .next()
            .and_then(|w| w.trim_start_matches('-').parse().ok())
            .unwrap_or(0);
        if spec.starts_with('0') && matches!(verb, 'd' | 'f') {
            // %05d: zeros after the sign.
            let (sign, digits) = text
                .strip_prefix('-')
                .map_or(("", text.as_str()), |d| ("-", d));
            let w = width.saturating_sub(sign.len());
            out.push_str(&format!("{sign}{digits:0>w$}"));
        } else if spec.starts_with('-') {
            out.push_str(&format!("{text:<width$}"));
        } else {
            out.push_str(&format!("{text:>width$}"));
        }
    }
    if next < args.len() {
        return err(format!(
            "{} arguments given but the format uses {next}",
            args.len()
        ));
    }
    Ok(Value::String(out))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = B64.iter().position(|&x| x == c)? as u32;
        buf = buf << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits & 0xff) as u8);
        }
    }
    Some(out)
}
