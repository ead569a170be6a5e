//! Static references of an expression (`var.x`, `service.web[0].url`), for the dependency graph.

use hcl_edit::expr::{Expression, TraversalOperator};
use hcl_edit::template::{Directive, Element, Template};
use hcl_edit::Span;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    /// `var`, `local`, `module`, a resource kind, `count`, `each`, `path`, ...
    pub root: String,
    /// The attribute after the root (`x` in `var.x`); None when the root stands alone.
    pub name: Option<String>,
    /// For `module.m.out`: `out`.
    pub attr: Option<String>,
    pub span: Option<Range<usize>>,
}

/// Every reference in `expr`, skipping names bound by `for` expressions and template loops.
pub fn references(expr: &Expression) -> Vec<Reference> {
    let mut out = Vec::new();
    let mut bound = Vec::new();
    walk(expr, &mut bound, &mut out);
    out
}

fn walk(e: &Expression, bound: &mut Vec<String>, out: &mut Vec<Reference>) {
    match e {
        Expression::Null(_)
        | Expression::Bool(_)
        | Expression::Number(_)
        | Expression::String(_) => {}
        Expression::Array(a) => a.iter().for_each(|x| walk(x, bound, out)),
        Expression::Object(o) => {
            for (k, v) in o.iter() {
                if let hcl_edit::expr::ObjectKey::Expression(k) = k {
                    // A bare `foo` key is a name, not a reference.
                    if !matches!(k, Expression::Variable(_)) {
                        walk(k, bound, out);
                    }
                }
                walk(v.expr(), bound, out);
            }
        }
        Expression::StringTemplate(t) => walk_template(t, bound, out),
        Expression::HeredocTemplate(h) => walk_template(&h.template, bound, out),
        Expression::Parenthesis(p) => walk(p.inner(), bound, out),
        Expression::Variable(v) => {
            if !bound.iter().any(|b| b == v.as_str()) {
                out.push(Reference {
                    root: v.as_str().to_string(),
                    name: None,
                    attr: None,
                    span: v.span(),
                });
            }
        }
        Expression::Conditional(c) => {
            walk(&c.cond_expr, bound, out);
            walk(&c.true_expr, bound, out);
            walk(&c.false_expr, bound, out);
        }
        Expression::FuncCall(f) => f.args.iter().for_each(|x| walk(x, bound, out)),
        Expression::Traversal(t) => {
            if let Expression::Variable(v) = &t.expr {
                if !bound.iter().any(|b| b == v.as_str()) {
                    let mut names = t.operators.iter().map(|op| match op.value() {
                        TraversalOperator::GetAttr(i) => Some(i.as_str().to_string()),
                        _ => None,
                    });
                    let name = names.next().flatten();
                    let attr = names.next().flatten();
                    out.push(Reference {
                        root: v.as_str().to_string(),
                        name,
                        attr,
                        span: t.span(),
                    });
                }
            } else {
                walk(&t.expr, bound, out);
            }
            for op in &t.operators {
                if let TraversalOperator::Index(i) = op.value() {
                    walk(i, bound, out);
                }
            }
        }
        Expression::UnaryOp(u) => walk(&u.expr, bound, out),
        Expression::BinaryOp(b) => {
            walk(&b.lhs_expr, bound, out);
            walk(&b.rhs_expr, bound, out);
        }
        Expression::ForExpr(f) => {
            walk(&f.intro.collection_expr, bound, out);
            let n = bound.len();
            if let Some(k) = &f.intro.key_var {
                bound.push(k.as_str().to_string());
            }
            bound.push(f.intro.value_var.as_str().to_string());
            if let Some(k) = &f.key_expr {
                walk(k, bound, out);
            }
            walk(&f.value_expr, bound, out);
            if let Some(c) = &f.cond {
                walk(&c.expr, bound, out);
            }
            bound.truncate(n);
        }
    }
}

fn walk_template(t: &Template, bound: &mut Vec<String>, out: &mut Vec<Reference>) {
    for el in t.iter() {
        match el {
            Element::Literal(_) => {}
            Element::Interpolation(i) => walk(&i.expr, bound, out),
            Element::Directive(d) => match d.as_ref() {
                Directive::If(i) => {
                    walk(&i.if_expr.cond_expr, bound, out);
                    walk_template(&i.if_expr.template, bound, out);
                    if let Some(e) = &i.else_expr {
                        walk_template(&e.template, bound, out);
                    }
                }
                Directive::For(f) => {
                    walk(&f.for_expr.collection_expr, bound, out);
                    let n = bound.len();
                    if let Some(k) = &f.for_expr.key_var {
                        bound.push(k.as_str().to_string());
                    }
                    bound.push(f.for_expr.value_var.as_str().to_string());
                    walk_template(&f.for_expr.template, bound, out);
                    bound.truncate(n);
                }
            },
        }
    }
}
