//! The stack language: HCL parsed with spans (hcl-edit), evaluated with unknown and
//! sensitive values, and the static reference walk the graph is built from.

pub mod eval;
pub mod funcs;
pub mod refs;

pub use eval::{Evaluator, LookupError, Resolve};
pub use refs::{references, Reference};

use crate::diag::{Diagnostic, SourceFile};
use hcl_edit::expr::Expression;
use hcl_edit::Span;
use std::sync::Arc;

/// An expression together with the file it came from, so errors can point into it.
#[derive(Clone, Debug)]
pub struct Expr {
    pub file: Arc<SourceFile>,
    pub expr: Expression,
}

impl Expr {
    pub fn location(&self) -> Option<crate::diag::Location> {
        self.expr.span().map(|r| self.file.location(r))
    }
}

/// Parse one file; a syntax error becomes a diagnostic with the file, line and column.
pub fn parse(file: &Arc<SourceFile>) -> Result<hcl_edit::structure::Body, Diagnostic> {
    hcl_edit::parser::parse_body(&file.text).map_err(|e| {
        let loc = e.location();
        // Locate the byte offset of the reported line/column to build a proper caret.
        let mut offset = 0;
        for (i, line) in file.text.split_inclusive('\n').enumerate() {
            if i + 1 == loc.line() {
                let col_bytes: usize = line
                    .chars()
                    .take(loc.column().saturating_sub(1))
                    .map(char::len_utf8)
                    .sum();
                offset += col_bytes;
                break;
            }
            offset += line.len();
        }
        Diagnostic::new(format!("syntax error: {}", first_line(e.message())))
            .at(Some(file.location(offset..offset + 1)))
            .help("fix the syntax at the marked position; stack files are HCL (https://github.com/hashicorp/hcl)")
    })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_string()
}
