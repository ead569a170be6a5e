//! Expression evaluation. Unknown values propagate ("known after apply"); sensitive marks
//! propagate through every operation so nothing derived from a secret is ever shown.

use super::funcs;
use crate::diag::{Diagnostic, SourceFile};
use crate::value::{to_template_string, Value};
use hcl_edit::expr::{BinaryOperator, Expression, ObjectKey, TraversalOperator, UnaryOperator};
use hcl_edit::template::{Directive, Element, Template};
use hcl_edit::Span;
use indexmap::IndexMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct LookupError {
    pub summary: String,
    pub help: Option<String>,
    /// The value could not be computed because of an error reported on its own
    /// (`var.x could not be evaluated`): the diagnostic is hidden behind that error.
    pub secondary: bool,
}

impl LookupError {
    pub fn new(summary: impl Into<String>, help: Option<String>) -> Self {
        LookupError {
            summary: summary.into(),
            help,
            secondary: false,
        }
    }
    /// A lookup that failed only because another, separately reported, error.
    pub fn secondary(summary: impl Into<String>) -> Self {
        LookupError {
            secondary: true,
            ..LookupError::new(summary, None)
        }
    }
}

/// Resolves `root.name` at the head of a traversal (`var.x`, `service.web`, `count.index`).
pub trait Resolve {
    fn lookup(&self, root: &str, name: &str) -> Result<Value, LookupError>;
    /// `root.name[key]` without building the whole collection (a counted resource of 10,000
    /// instances); None means "not available this way", and the general path is taken.
    fn lookup_instance(&self, _root: &str, _name: &str, _key: &Value) -> Option<Value> {
        None
    }
    /// Directory that `file()` and `templatefile()` paths are relative to.
    fn base_dir(&self) -> &Path;
}

pub struct Evaluator<'a> {
    pub file: &'a SourceFile,
    pub resolver: &'a dyn Resolve,
    scope: Vec<(String, Value)>,
    /// The templatefile() files being evaluated around this one, outermost first.
    templates: Vec<std::path::PathBuf>,
}

const TEMPLATE_ERROR: &str = "templatefile(): ";
/// In the summary of every error that stops evaluation for depth.
const TOO_DEEP: &str = "nested too deeply";
const IN_TEMPLATE: &str = "in the template at ";

/// `a.tpl → b.tpl → a.tpl → ...` as each file with how often it is open: `a.tpl (16 times), b.tpl (16 times)`.
fn summarize_chain(chain: &[std::path::PathBuf]) -> String {
    let mut seen: IndexMap<String, usize> = IndexMap::new();
    for p in chain {
        *seen.entry(crate::diag::display_path(p)).or_default() += 1;
    }
    seen.iter()
        .map(|(p, n)| match n {
            1 => p.clone(),
            n => format!("{p} ({n} times)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

type R = Result<Value, Diagnostic>;

/// How deep evaluation may nest on one thread: expressions within expressions, `templatefile()`
/// within templates, and values computed on demand (a local read while another is evaluated)
/// all count. Past it evaluation stops with an error at the expression, not a stack overflow.
/// The parser already limits one expression to 64 nested levels and 128 chained operators.
/// Measured in a debug build: ~3.7 KB of stack per level of an expression, ~17 KB per level of
/// a chain of locals computed on demand: the limit stays far below the main thread's 8 MB.
pub const MAX_EVAL_DEPTH: usize = 256;
/// A `templatefile()` call parses and evaluates a whole file (frames worth many expressions),
/// so it counts as this many levels: templates nest about 30 deep at most.
const TEMPLATEFILE_COST: usize = 8;
/// Lists and objects nest at most this deep (a chain of locals each wrapping the next builds
/// deeper values one step at a time; cloning or dropping such a value would overflow the stack).
pub const MAX_VALUE_DEPTH: usize = 128;

thread_local! {
    /// Evaluation is synchronous, so one counter per thread spans every `Evaluator` that runs
    /// inside another (a template's, a lazily computed local's).
    static EVAL_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One level of evaluation, released on drop (also when an error returns early).
struct DepthGuard(usize);

impl DepthGuard {
    fn enter(cost: usize) -> Option<DepthGuard> {
        EVAL_DEPTH.with(|d| {
            let n = d.get() + cost;
            (n <= MAX_EVAL_DEPTH).then(|| {
                d.set(n);
                DepthGuard(cost)
            })
        })
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        EVAL_DEPTH.with(|d| d.set(d.get().saturating_sub(self.0)));
    }
}

/// Whether lists and objects in `v` nest more than `limit` deep; recursion stops at the limit.
fn nests_deeper_than(v: &Value, limit: usize) -> bool {
    match v {
        Value::List(l) => limit == 0 || l.iter().any(|x| nests_deeper_than(x, limit - 1)),
        Value::Map(m) => limit == 0 || m.values().any(|x| nests_deeper_than(x, limit - 1)),
        Value::Sensitive(inner) => nests_deeper_than(inner, limit),
        _ => false,
    }
}

impl<'a> Evaluator<'a> {
    pub fn new(file: &'a SourceFile, resolver: &'a dyn Resolve) -> Self {
        Evaluator {
            file,
            resolver,
            scope: Vec::new(),
            templates: Vec::new(),
        }
    }

    pub fn with_scope(mut self, name: &str, v: Value) -> Self {
        self.scope.push((name.to_string(), v));
        self
    }

    fn err(&self, span: Option<std::ops::Range<usize>>, msg: impl Into<String>) -> Diagnostic {
        Diagnostic::new(msg).at(span.map(|s| self.file.location(s)))
    }

    fn bound(&self, name: &str) -> Option<&Value> {
        self.scope
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Evaluate one expression; nesting is bounded (`MAX_EVAL_DEPTH`, `MAX_VALUE_DEPTH`).
    pub fn eval(&mut self, e: &Expression) -> R {
        let Some(_level) = DepthGuard::enter(1) else {
            return Err(self
                .err(
                    e.span(),
                    format!("evaluation {TOO_DEEP} (more than {MAX_EVAL_DEPTH} levels)"),
                )
                .help("expressions, templatefile() calls inside templates and locals that read locals all nest: split the expression, include templates less deeply, or shorten the chain of locals"));
        };
        let v = self.eval_unbounded(e)?;
        if matches!(
            e,
            Expression::Array(_)
                | Expression::Object(_)
                | Expression::ForExpr(_)
                | Expression::FuncCall(_)
        ) && nests_deeper_than(&v, MAX_VALUE_DEPTH)
        {
            return Err(self
                .err(
                    e.span(),
                    format!("this value nests lists and objects more than {MAX_VALUE_DEPTH} levels deep"),
                )
                .help("values this deep are almost always a mistake, such as locals that each wrap the next: build the value flatter"));
        }
        Ok(v)
    }

    fn eval_unbounded(&mut self, e: &Expression) -> R {
        match e {
            Expression::Null(_) => Ok(Value::Null),
            Expression::Bool(b) => Ok(Value::Bool(*b.value())),
            Expression::Number(n) => Ok(Value::Number(n.value().as_f64().unwrap_or(f64::NAN))),
            Expression::String(s) => Ok(Value::String(s.value().to_string())),
            Expression::Array(a) => {
                let mut out = Vec::with_capacity(a.len());
                for x in a.iter() {
                    out.push(self.eval(x)?);
                }
                Ok(Value::List(out))
            }
            Expression::Object(o) => self.object(o),
            Expression::StringTemplate(t) => self.template(t),
            Expression::HeredocTemplate(h) => self.template(&h.template),
            Expression::Parenthesis(p) => self.eval(p.inner()),
            Expression::Variable(v) => {
                if let Some(val) = self.bound(v.as_str()) {
                    return Ok(val.clone());
                }
                Err(self.bare_variable(v.as_str(), v.span()))
            }
            Expression::Conditional(c) => self.conditional(c),
            Expression::FuncCall(f) => self.call(f),
            Expression::Traversal(t) => self.traversal(t),
            Expression::UnaryOp(u) => self.unary(u),
            Expression::BinaryOp(b) => self.binary(b),
            Expression::ForExpr(f) => self.for_expr(f),
        }
    }

    #[inline(never)]
    fn object(&mut self, o: &hcl_edit::expr::Object) -> R {
        let mut out = IndexMap::new();
        let mut unknown_key = false;
        // A key cannot carry a mark of its own: a secret key makes the object secret.
        let mut key_sens = false;
        for (k, v) in o.iter() {
            let key = match k {
                ObjectKey::Ident(i) => i.as_str().to_string(),
                ObjectKey::Expression(Expression::Variable(i))
                    if self.bound(i.as_str()).is_none() =>
                {
                    i.as_str().to_string()
                }
                ObjectKey::Expression(x) => {
                    let kv = self.eval(x)?;
                    key_sens |= kv.is_sensitive();
                    if !kv.is_known() {
                        unknown_key = true;
                        continue;
                    }
                    to_template_string(&kv).ok_or_else(|| {
                        self.err(
                            x.span(),
                            format!("an object key must be a string, found {}", kv.type_name()),
                        )
                    })?
                }
            };
            let val = self.eval(v.expr())?;
            out.insert(key, val);
        }
        if unknown_key {
            return Ok(Value::Unknown.mark(key_sens));
        }
        Ok(Value::Map(out).mark(key_sens))
    }

    #[inline(never)]
    fn conditional(&mut self, c: &hcl_edit::expr::Conditional) -> R {
        let cond = self.eval(&c.cond_expr)?;
        let (cond, sens) = cond.unmarked();
        match cond {
            Value::Unknown => Ok(Value::Unknown.mark(sens)),
            Value::Bool(true) => Ok(self.eval(&c.true_expr)?.mark(sens)),
            Value::Bool(false) => Ok(self.eval(&c.false_expr)?.mark(sens)),
            other => Err(self
                .err(
                    c.cond_expr.span(),
                    format!("the condition must be a bool, found {}", other.type_name()),
                )
                .help("compare to get a bool, e.g. var.x == \"a\" ? ... : ...")),
        }
    }

    #[inline(never)]
    fn traversal(&mut self, t: &hcl_edit::expr::Traversal) -> R {
        // What has been read so far, for messages: `host.app`, `file.a[0]`.
        let mut path = String::new();
        let (mut cur, rest) = match &t.expr {
            Expression::Variable(v) if self.bound(v.as_str()).is_none() => {
                let Some(first) = t.operators.first() else {
                    return Err(self.bare_variable(v.as_str(), v.span()));
                };
                let name = match first.value() {
                    TraversalOperator::GetAttr(n) => n.as_str().to_string(),
                    _ => return Err(self.bare_variable(v.as_str(), t.span())),
                };
                // `kind.name[i]`: fetch the one instance, not the whole list.
                let direct = match t.operators.get(1).map(|o| o.value()) {
                    Some(TraversalOperator::Index(ix)) => {
                        let key = self.eval(ix)?;
                        self.resolver
                            .lookup_instance(v.as_str(), &name, &key.unmarked().0)
                            .map(|val| (val.mark(key.is_sensitive()), key))
                    }
                    _ => None,
                };
                if let Some((val, key)) = direct {
                    let shown = to_template_string(&key).unwrap_or_default();
                    path = format!("{}.{name}[{shown}]", v.as_str());
                    (val, &t.operators[2..])
                } else {
                    let val = self.resolver.lookup(v.as_str(), &name).map_err(|le| {
                        let mut d = self.err(t.span(), le.summary);
                        d.help = le.help;
                        d.secondary = le.secondary;
                        d
                    })?;
                    path = format!("{}.{name}", v.as_str());
                    (val, &t.operators[1..])
                }
            }
            Expression::Variable(v) => {
                path = v.as_str().to_string();
                (self.eval(&t.expr)?, &t.operators[..])
            }
            other => (self.eval(other)?, &t.operators[..]),
        };
        let mut i = 0;
        while i < rest.len() {
            let op = &rest[i];
            match op.value() {
                TraversalOperator::AttrSplat(_) | TraversalOperator::FullSplat(_) => {
                    let items = match cur.unmarked().0 {
                        Value::List(l) => l,
                        Value::Null => vec![],
                        Value::Unknown => return Ok(Value::Unknown),
                        v => vec![v],
                    };
                    let mut out = Vec::new();
                    for (n, item) in items.into_iter().enumerate() {
                        let mut v = item;
                        let mut p = if path.is_empty() {
                            String::new()
                        } else {
                            format!("{path}[{n}]")
                        };
                        for op in &rest[i + 1..] {
                            v = self.step(v, op.value(), t.span(), &mut p)?;
                        }
                        out.push(v);
                    }
                    return Ok(Value::List(out));
                }
                other => cur = self.step(cur, other, t.span(), &mut path)?,
            }
            i += 1;
        }
        Ok(cur)
    }

    #[inline(never)]
    fn unary(&mut self, u: &hcl_edit::expr::UnaryOp) -> R {
        let v = self.eval(&u.expr)?;
        let (v, sens) = v.unmarked();
        let out = match (u.operator.value(), v) {
            (_, Value::Unknown) => Value::Unknown,
            (UnaryOperator::Neg, Value::Number(n)) => Value::Number(-n),
            (UnaryOperator::Not, Value::Bool(b)) => Value::Bool(!b),
            (op, v) => {
                return Err(self
                    .err(
                        u.expr.span(),
                        format!(
                            "operator `{}` cannot be applied to a {}",
                            op.as_str(),
                            v.type_name()
                        ),
                    )
                    .help("`-` negates a number and `!` a bool"))
            }
        };
        Ok(out.mark(sens))
    }

    fn bare_variable(&self, name: &str, span: Option<std::ops::Range<usize>>) -> Diagnostic {
        let help = match name {
            "var" => "write var.NAME to use a variable".to_string(),
            "local" => "write local.NAME to use a local value".to_string(),
            "module" => "write module.NAME.OUTPUT to use a module output".to_string(),
            "count" => "write count.index".to_string(),
            "each" => "write each.key or each.value".to_string(),
            _ => format!(
                "`{name}` is not a variable here; references look like var.NAME, local.NAME, KIND.NAME.ATTRIBUTE (e.g. service.web.url), module.NAME.OUTPUT"
            ),
        };
        self.err(span, format!("unknown name `{name}`")).help(help)
    }

    /// One traversal step; `path` names what `cur` is (empty when it has no name) and is
    /// extended by the step.
    fn step(
        &mut self,
        cur: Value,
        op: &TraversalOperator,
        span: Option<std::ops::Range<usize>>,
        path: &mut String,
    ) -> R {
        let what = if path.is_empty() {
            "this object".to_string()
        } else {
            format!("`{path}`")
        };
        let (cur, sens) = match cur {
            Value::Sensitive(v) => (*v, true),
            v => (v, false),
        };
        if let TraversalOperator::GetAttr(name) = op {
            if !path.is_empty() {
                path.push('.');
                path.push_str(name.as_str());
            }
        }
        let out = match op {
            TraversalOperator::GetAttr(name) => match cur {
                Value::Unknown => Value::Unknown,
                Value::Map(mut m) => match m.shift_remove(name.as_str()) {
                    Some(v) => v,
                    None => {
                        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
                        let close = crate::diag::did_you_mean(name.as_str(), keys.iter().copied());
                        return Err(self
                            .err(span, format!("{what} has no attribute `{}`", name.as_str()))
                            .help(match (keys.is_empty(), close) {
                                (true, _) => "it has no attributes".to_string(),
                                (false, Some(c)) => format!(
                                    "did you mean `{c}`? attributes available: {}",
                                    keys.join(", ")
                                ),
                                (false, None) => {
                                    format!("attributes available: {}", keys.join(", "))
                                }
                            }));
                    }
                },
                Value::List(l) => {
                    return Err(self
                        .err(
                            span,
                            format!(
                                "cannot read attribute `{}` of a list of {} elements",
                                name.as_str(),
                                l.len()
                            ),
                        )
                        .help(format!(
                        "pick one element with [INDEX] (e.g. [0].{0}) or all of them with [*].{0}",
                        name.as_str()
                    )))
                }
                other => {
                    return Err(self
                        .err(
                            span,
                            format!(
                                "cannot read attribute `{}` of {what}, a {}",
                                name.as_str(),
                                other.type_name()
                            ),
                        )
                        .help("only objects have attributes"))
                }
            },
            TraversalOperator::Index(ix) => {
                let ix = self.eval(ix)?;
                if !path.is_empty() {
                    match ix.unmarked().0 {
                        Value::Number(n) => {
                            path.push_str(&format!("[{}]", crate::value::format_number(n)))
                        }
                        Value::String(k) => path.push_str(&format!("[{k:?}]")),
                        _ => path.push_str("[?]"),
                    }
                }
                self.index(cur, ix, span)?
            }
            TraversalOperator::LegacyIndex(n) => {
                if !path.is_empty() {
                    path.push_str(&format!("[{}]", n.value()));
                }
                self.index(cur, Value::Number(*n.value() as f64), span)?
            }
            TraversalOperator::AttrSplat(_) | TraversalOperator::FullSplat(_) => {
                return Err(self.err(span, "nested splat operators are not supported"))
            }
        };
        Ok(out.mark(sens))
    }

    fn index(&self, cur: Value, ix: Value, span: Option<std::ops::Range<usize>>) -> R {
        let (ix, sens) = ix.unmarked();
        let out = match (cur, ix) {
            (Value::Unknown, _) | (_, Value::Unknown) => Value::Unknown,
            (Value::List(l), Value::Number(n)) => {
                if n < 0.0 || n.fract() != 0.0 || n as usize >= l.len() {
                    return Err(self
                        .err(
                            span,
                            format!(
                                "index {} is out of range for a list of {} elements",
                                crate::value::format_number(n),
                                l.len()
                            ),
                        )
                        .help(format!(
                            "valid indexes are 0 to {}",
                            l.len().saturating_sub(1)
                        )));
                }
                l.into_iter().nth(n as usize).unwrap_or_default()
            }
            (Value::Map(mut m), key) => {
                let Some(k) = to_template_string(&key) else {
                    return Err(self.err(
                        span,
                        format!("an object key must be a string, found {}", key.type_name()),
                    ));
                };
                match m.shift_remove(&k) {
                    Some(v) => v,
                    None => {
                        return Err(self
                            .err(span, format!("this object has no key \"{k}\""))
                            .help(format!(
                                "keys available: {}",
                                m.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
                            )))
                    }
                }
            }
            (c, i) => {
                return Err(self
                    .err(
                        span,
                        format!("cannot index a {} with a {}", c.type_name(), i.type_name()),
                    )
                    .help("index a list with a number (LIST[0]) and an object with a string (OBJECT[\"key\"])"))
            }
        };
        Ok(out.mark(sens))
    }

    fn binary(&mut self, b: &hcl_edit::expr::BinaryOp) -> R {
        use BinaryOperator::*;
        let l = self.eval(&b.lhs_expr)?;
        let r = self.eval(&b.rhs_expr)?;
        let (l, ls) = l.unmarked();
        let (r, rs) = r.unmarked();
        let sens = ls || rs;
        let op = *b.operator.value();
        if matches!(l, Value::Unknown) || matches!(r, Value::Unknown) {
            return Ok(Value::Unknown);
        }
        let span = b.operator.span().or(b.lhs_expr.span());
        let num = |v: &Value, side: &Expression| -> Result<f64, Diagnostic> {
            match v {
                Value::Number(n) => Ok(*n),
                Value::String(s) => s.trim().parse::<f64>().map_err(|_| {
                    self.err(
                        side.span(),
                        format!(
                            "operator `{}` needs numbers, found the string {:?}",
                            op.as_str(),
                            s
                        ),
                    ).help("convert with tonumber(), or check the value: `+ - * / %` and comparisons work on numbers")
                }),
                other => Err(self.err(
                    side.span(),
                    format!(
                        "operator `{}` needs numbers, found {}",
                        op.as_str(),
                        other.type_name()
                    ),
                ).help("`+ - * / %` and `< <= > >=` work on numbers; to join strings use a template: \"${a}${b}\"")),
            }
        };
        let boolean = |v: &Value, side: &Expression| -> Result<bool, Diagnostic> {
            match v {
                Value::Bool(b) => Ok(*b),
                other => Err(self
                    .err(
                        side.span(),
                        format!(
                            "operator `{}` needs bools, found {}",
                            op.as_str(),
                            other.type_name()
                        ),
                    )
                    .help("`&&` and `||` combine bools; compare values with == or != to get one")),
            }
        };
        let out = match op {
            Eq => Value::Bool(l == r),
            NotEq => Value::Bool(l != r),
            And => Value::Bool(boolean(&l, &b.lhs_expr)? && boolean(&r, &b.rhs_expr)?),
            Or => Value::Bool(boolean(&l, &b.lhs_expr)? || boolean(&r, &b.rhs_expr)?),
            _ => {
                let (x, y) = (num(&l, &b.lhs_expr)?, num(&r, &b.rhs_expr)?);
                match op {
                    Less => Value::Bool(x < y),
                    LessEq => Value::Bool(x <= y),
                    Greater => Value::Bool(x > y),
                    GreaterEq => Value::Bool(x >= y),
                    Plus => Value::Number(x + y),
                    Minus => Value::Number(x - y),
                    Mul => Value::Number(x * y),
                    Div | Mod if y == 0.0 => {
                        let rhs = b
                            .rhs_expr
                            .span()
                            .and_then(|r| self.file.text.get(r))
                            .unwrap_or("the right-hand side")
                            .trim()
                            .to_string();
                        return Err(self
                            .err(
                                b.rhs_expr.span().or(span),
                                if op == Div {
                                    "division by zero"
                                } else {
                                    "modulo by zero"
                                },
                            )
                            .detail(format!("`{rhs}` is 0"))
                            .help(format!(
                                "make sure the divisor cannot be 0, or guard it: {rhs} == 0 ? 0 : ... {} {rhs}",
                                op.as_str()
                            )));
                    }
                    Div => Value::Number(x / y),
                    Mod => Value::Number(x % y),
                    _ => unreachable!("handled above"),
                }
            }
        };
        Ok(out.mark(sens))
    }

    fn for_expr(&mut self, f: &hcl_edit::expr::ForExpr) -> R {
        let coll = self.eval(&f.intro.collection_expr)?;
        let (coll, mut sens) = coll.unmarked();
        let items: Vec<(Value, Value)> = match coll {
            Value::Unknown => return Ok(Value::Unknown),
            Value::List(l) => l
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Value::Number(i as f64), v))
                .collect(),
            Value::Map(m) => m.into_iter().map(|(k, v)| (Value::String(k), v)).collect(),
            Value::Null => vec![],
            other => {
                return Err(self
                    .err(
                        f.intro.collection_expr.span(),
                        format!(
                            "a for expression needs a list or an object, found {}",
                            other.type_name()
                        ),
                    )
                    .help("write [for x in LIST : ...] or {for k, v in OBJECT : k => v}"))
            }
        };
        let kv = f.intro.key_var.as_ref().map(|k| k.as_str().to_string());
        let vv = f.intro.value_var.as_str().to_string();
        let mut list = Vec::new();
        let mut map: IndexMap<String, Value> = IndexMap::new();
        let n = self.scope.len();
        for (k, v) in items {
            if let Some(kv) = &kv {
                self.scope.push((kv.clone(), k));
            }
            self.scope.push((vv.clone(), v));
            let keep =
                match &f.cond {
                    Some(c) => match self.eval(&c.expr)?.unmarked().0 {
                        Value::Bool(b) => b,
                        Value::Unknown => {
                            self.scope.truncate(n);
                            return Ok(Value::Unknown);
                        }
                        other => return Err(self
                            .err(
                                c.expr.span(),
                                format!(
                                    "a for condition must be a bool, found {}",
                                    other.type_name()
                                ),
                            )
                            .help(
                                "the `if` of a for expression must be a comparison or another bool",
                            )),
                    },
                    None => true,
                };
            if keep {
                let val = self.eval(&f.value_expr)?;
                if let Some(ke) = &f.key_expr {
                    let key = self.eval(ke)?;
                    // A key cannot carry a mark of its own: a secret key makes the object secret.
                    sens |= key.is_sensitive();
                    let Some(key) = to_template_string(&key) else {
                        self.scope.truncate(n);
                        return Ok(Value::Unknown.mark(sens));
                    };
                    if f.grouping {
                        match map.entry(key).or_insert_with(|| Value::List(vec![])) {
                            Value::List(l) => l.push(val),
                            _ => unreachable!("grouping entries are lists"),
                        }
                    } else if map.insert(key.clone(), val).is_some() {
                        return Err(self
                            .err(
                                ke.span(),
                                format!("duplicate key \"{key}\" in for expression"),
                            )
                            .help("add `...` after the value to group values by key"));
                    }
                } else {
                    list.push(val);
                }
            }
            self.scope.truncate(n);
        }
        let out = if f.key_expr.is_some() {
            Value::Map(map)
        } else {
            Value::List(list)
        };
        Ok(out.mark(sens))
    }

    fn template(&mut self, t: &Template) -> R {
        let mut out = String::new();
        let mut sens = false;
        if !self.template_into(t, &mut out, &mut sens)? {
            return Ok(Value::Unknown.mark(sens));
        }
        Ok(Value::String(out).mark(sens))
    }

    /// Returns false when an unknown value makes the whole template unknown.
    fn template_into(
        &mut self,
        t: &Template,
        out: &mut String,
        sens: &mut bool,
    ) -> Result<bool, Diagnostic> {
        let elems: Vec<&Element> = t.iter().collect();
        for (i, el) in elems.iter().enumerate() {
            match el {
                Element::Literal(s) => {
                    let mut s: &str = s.as_str();
                    if let Some(Element::Interpolation(next)) = elems.get(i + 1) {
                        if next.strip.strip_start() {
                            s = s.trim_end();
                        }
                    }
                    if i > 0 {
                        if let Some(Element::Interpolation(prev)) = elems.get(i - 1) {
                            if prev.strip.strip_end() {
                                s = s.trim_start();
                            }
                        }
                    }
                    out.push_str(s);
                }
                Element::Interpolation(ip) => {
                    let v = self.eval(&ip.expr)?;
                    let (v, s) = v.unmarked();
                    *sens |= s;
                    if !v.is_known() {
                        return Ok(false);
                    }
                    match to_template_string(&v) {
                        Some(s) => out.push_str(&s),
                        None => {
                            return Err(self
                                .err(ip.expr.span(), format!("cannot insert a {} into a string", v.type_name()))
                                .help("use join(\",\", LIST) or jsonencode(VALUE) to turn it into a string"))
                        }
                    }
                }
                Element::Directive(d) => match d.as_ref() {
                    Directive::If(ifd) => {
                        let c = self.eval(&ifd.if_expr.cond_expr)?;
                        let (c, s) = c.unmarked();
                        *sens |= s;
                        match c {
                            Value::Unknown => return Ok(false),
                            Value::Bool(true) => {
                                if !self.template_into(&ifd.if_expr.template, out, sens)? {
                                    return Ok(false);
                                }
                            }
                            Value::Bool(false) => {
                                if let Some(e) = &ifd.else_expr {
                                    if !self.template_into(&e.template, out, sens)? {
                                        return Ok(false);
                                    }
                                }
                            }
                            other => {
                                return Err(self
                                    .err(
                                        ifd.if_expr.cond_expr.span(),
                                        format!(
                                            "an if condition must be a bool, found {}",
                                            other.type_name()
                                        ),
                                    )
                                    .help("%{ if } needs a comparison or another bool"))
                            }
                        }
                    }
                    Directive::For(fd) => {
                        let fe = &fd.for_expr;
                        let coll = self.eval(&fe.collection_expr)?;
                        let (coll, s) = coll.unmarked();
                        *sens |= s;
                        let items: Vec<(Value, Value)> = match coll {
                            Value::Unknown => return Ok(false),
                            Value::List(l) => l
                                .into_iter()
                                .enumerate()
                                .map(|(i, v)| (Value::Number(i as f64), v))
                                .collect(),
                            Value::Map(m) => {
                                m.into_iter().map(|(k, v)| (Value::String(k), v)).collect()
                            }
                            other => {
                                return Err(self
                                    .err(
                                        fe.collection_expr.span(),
                                        format!(
                                            "a template for needs a list or an object, found {}",
                                            other.type_name()
                                        ),
                                    )
                                    .help("%{ for x in LIST } iterates a list or an object"))
                            }
                        };
                        let n = self.scope.len();
                        for (k, v) in items {
                            if let Some(kv) = &fe.key_var {
                                self.scope.push((kv.as_str().to_string(), k));
                            }
                            self.scope.push((fe.value_var.as_str().to_string(), v));
                            let ok = self.template_into(&fe.template, out, sens)?;
                            self.scope.truncate(n);
                            if !ok {
                                return Ok(false);
                            }
                        }
                    }
                },
            }
        }
        Ok(true)
    }

    fn call(&mut self, f: &hcl_edit::expr::FuncCall) -> R {
        let name = f.name.name.as_str();
        let span = f.name.name.span();
        // Lazy forms: their arguments may fail, so they are evaluated one by one.
        if name == "try" || name == "can" {
            for a in f.args.iter() {
                match self.eval(a) {
                    Ok(v) if name == "try" => return Ok(v),
                    Ok(_) => return Ok(Value::Bool(true)),
                    // Not a value that failed but a stack that ran out: retrying each level
                    // of a recursion would take exponential time.
                    Err(d) if d.summary.contains(TOO_DEEP) => return Err(d),
                    Err(_) => continue,
                }
            }
            if name == "can" {
                return Ok(Value::Bool(false));
            }
            return Err(self
                .err(
                    span,
                    "no argument of try() could be evaluated without an error",
                )
                .help("add a last argument that cannot fail, e.g. try(local.x.y, null)"));
        }
        let mut args = Vec::with_capacity(f.args.len());
        for a in f.args.iter() {
            args.push(self.eval(a)?);
        }
        if f.args.expand_final() {
            match args.pop().map(|v| v.unmarked().0) {
                Some(Value::List(l)) => args.extend(l),
                Some(Value::Unknown) => return Ok(Value::Unknown),
                Some(other) => {
                    return Err(self
                        .err(
                            span,
                            format!("`...` expands a list, found {}", other.type_name()),
                        )
                        .help("put `...` after a list argument only, e.g. min(local.numbers...)"))
                }
                None => {}
            }
        }
        if name == "templatefile" {
            return self.templatefile(args, span);
        }
        funcs::call(name, args, self.resolver.base_dir()).map_err(|e| {
            let mut d = self.err(span.clone(), format!("{name}(): {}", e.message));
            d.help = e
                .help
                .or_else(|| funcs::signature(name).map(|s| format!("usage: {s}")));
            d
        })
    }

    fn templatefile(&mut self, args: Vec<Value>, span: Option<std::ops::Range<usize>>) -> R {
        let usage = || {
            format!(
                "usage: {}",
                funcs::signature("templatefile").unwrap_or_default()
            )
        };
        if args.len() != 2 {
            return Err(self
                .err(
                    span,
                    format!(
                        "templatefile(): takes 2 arguments (a path and an object of variables), got {}",
                        args.len()
                    ),
                )
                .help(usage()));
        }
        if args.iter().any(|a| !a.is_known()) {
            return Ok(Value::Unknown);
        }
        let Some(_level) = DepthGuard::enter(TEMPLATEFILE_COST) else {
            let mut chain = self.templates.clone();
            if let Value::String(p) = args[0].unmarked().0 {
                chain.push(self.resolver.base_dir().join(p));
            }
            return Err(self
                .err(
                    span,
                    format!("templatefile(): templates {TOO_DEEP}"),
                )
                .detail(format!("templates being evaluated: {}", summarize_chain(&chain)))
                .help("a template that includes itself, directly or through others, never ends: stop the recursion with a %{ if } or include fewer levels"));
        };
        let (path, vars) = (args[0].unmarked().0, args[1].clone());
        let Value::String(path) = path else {
            return Err(self
                .err(span, "templatefile(): the path must be a string")
                .help(usage()));
        };
        let full = self.resolver.base_dir().join(&path);
        let text = std::fs::read_to_string(&full).map_err(|e| {
            self.err(
                span.clone(),
                format!("templatefile(): cannot read {}: {e}", full.display()),
            )
            .help("paths are relative to the directory of the stack or module file")
        })?;
        // Parsed as SourceFile keeps it, so positions agree: without a byte order mark.
        let text = match text.strip_prefix(crate::diag::BOM) {
            Some(rest) => rest.to_string(),
            None => text,
        };
        let tpl = hcl_edit::parser::parse_template(&text).map_err(|e| {
            self.err(
                span.clone(),
                format!(
                    "templatefile(): {}:{}:{}: {}",
                    full.display(),
                    e.location().line(),
                    e.location().column(),
                    e.message().lines().next().unwrap_or("")
                ),
            )
            .help("templates use ${NAME} for the variables given as the second argument and %{ if } / %{ for } directives")
        })?;
        let (vars, vsens) = vars.unmarked();
        let Value::Map(vars) = vars else {
            return Err(self
                .err(span, "templatefile(): the variables must be an object")
                .help(usage()));
        };
        let tfile = SourceFile::new(&full, text);
        let mut inner = Evaluator::new(&tfile, self.resolver);
        inner.templates = self.templates.clone();
        inner.templates.push(full.clone());
        for (k, v) in vars {
            inner.scope.push((k, v));
        }
        let v = inner.template(&tpl).map_err(|d| {
            if d.summary.starts_with(TEMPLATE_ERROR)
                && d.detail
                    .as_deref()
                    .is_some_and(|x| x.starts_with(IN_TEMPLATE))
            {
                // Already says where in the innermost template: point at this call only.
                let mut outer = d;
                outer.at = span.clone().map(|s| self.file.location(s));
                return outer;
            }
            let summary = d.summary.strip_prefix(TEMPLATE_ERROR).unwrap_or(&d.summary);
            let mut outer = self.err(span.clone(), format!("{TEMPLATE_ERROR}{summary}"));
            let mut detail =
                d.at.map(|a| format!("{IN_TEMPLATE}{a}\n{}", a.line_text.trim()));
            if let Some(inner_detail) = d.detail {
                detail = Some(match detail {
                    Some(x) => format!("{x}\n{inner_detail}"),
                    None => inner_detail,
                });
            }
            outer.detail = detail;
            outer.help = d.help.or_else(|| {
                Some("the template sees only the variables given as the second argument".into())
            });
            outer
        })?;
        Ok(v.mark(vsens))
    }
}
