//! Values of the stack language, including "known after apply" and sensitive marks.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "t", content = "v", rename_all = "snake_case")]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    List(Vec<Value>),
    Map(IndexMap<String, Value>),
    /// Known only after apply.
    Unknown,
    /// Never rendered in plans, logs or reports.
    Sensitive(Box<Value>),
}

pub type ValueMap = IndexMap<String, Value>;

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "object",
            Value::Unknown => "unknown",
            Value::Sensitive(v) => v.type_name(),
        }
    }

    pub fn str(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    pub fn is_known(&self) -> bool {
        match self {
            Value::Unknown => false,
            Value::List(l) => l.iter().all(Value::is_known),
            Value::Map(m) => m.values().all(Value::is_known),
            Value::Sensitive(v) => v.is_known(),
            _ => true,
        }
    }

    pub fn is_sensitive(&self) -> bool {
        match self {
            Value::Sensitive(_) => true,
            Value::List(l) => l.iter().any(Value::is_sensitive),
            Value::Map(m) => m.values().any(Value::is_sensitive),
            _ => false,
        }
    }

    /// Whether the value at `path` (keys of nested objects) is secret: marked itself, inside
    /// something marked, or holding something marked.
    pub fn is_sensitive_at(&self, path: &[&str]) -> bool {
        match (self, path) {
            (Value::Sensitive(_), _) => true,
            (v, []) => v.is_sensitive(),
            (Value::Map(m), [k, rest @ ..]) => m.get(*k).is_some_and(|v| v.is_sensitive_at(rest)),
            _ => false,
        }
    }

    /// The value without sensitive marks, and whether any was removed.
    pub fn unmarked(&self) -> (Value, bool) {
        match self {
            Value::Sensitive(v) => (v.unmarked().0, true),
            Value::List(l) => {
                let mut any = false;
                let out = l
                    .iter()
                    .map(|v| {
                        let (v, s) = v.unmarked();
                        any |= s;
                        v
                    })
                    .collect();
                (Value::List(out), any)
            }
            Value::Map(m) => {
                let mut any = false;
                let out = m
                    .iter()
                    .map(|(k, v)| {
                        let (v, s) = v.unmarked();
                        any |= s;
                        (k.clone(), v)
                    })
                    .collect();
                (Value::Map(out), any)
            }
            v => (v.clone(), false),
        }
    }

    pub fn mark(self, sensitive: bool) -> Value {
        match self {
            Value::Sensitive(_) => self,
            v if sensitive => Value::Sensitive(Box::new(v)),
            v => v,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            Value::Sensitive(v) => v.as_str(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            Value::Sensitive(v) => v.as_f64(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Sensitive(v) => v.as_bool(),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(m) => m.get(key),
            Value::Sensitive(v) => v.get(key),
            _ => None,
        }
    }

    /// JSON for state and `-json` output: unknowns become null, sensitive marks are dropped
    /// (callers mask sensitive values before anything is shown).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null | Value::Unknown => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Number(n) => number_json(*n),
            Value::String(s) => J::String(s.clone()),
            Value::List(l) => J::Array(l.iter().map(Value::to_json).collect()),
            Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            Value::Sensitive(v) => v.to_json(),
        }
    }

    pub fn from_json(j: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match j {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
            J::String(s) => Value::String(s.clone()),
            J::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            J::Object(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// Short human rendering used in plans: strings quoted, sensitive masked.
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.render_into(&mut s, 0);
        s
    }

    fn render_into(&self, out: &mut String, indent: usize) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(&format_number(*n)),
            Value::String(s) => out.push_str(&serde_json::to_string(s).unwrap_or_default()),
            Value::Unknown => out.push_str("(known after apply)"),
            Value::Sensitive(_) => out.push_str("(sensitive value)"),
            Value::List(l) => {
                if l.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push_str("[\n");
                for v in l {
                    out.push_str(&" ".repeat(indent + 4));
                    v.render_into(out, indent + 4);
                    out.push_str(",\n");
                }
                out.push_str(&" ".repeat(indent));
                out.push(']');
            }
            Value::Map(m) => {
                if m.is_empty() {
                    out.push_str("{}");
                    return;
                }
                out.push_str("{\n");
                let w = m.keys().map(|k| k.len()).max().unwrap_or(0);
                for (k, v) in m {
                    out.push_str(&" ".repeat(indent + 4));
                    out.push_str(&format!("{k:w$} = "));
                    v.render_into(out, indent + 4);
                    out.push('\n');
                }
                out.push_str(&" ".repeat(indent));
                out.push('}');
            }
        }
    }
}

pub fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

fn number_json(n: f64) -> serde_json::Value {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        serde_json::Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// The string form used by templates and `tostring`; None for collections.
pub fn to_template_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(format_number(*n)),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        Value::Sensitive(v) => to_template_string(v),
        _ => None,
    }
}
