//! The stack language: HCL parsed with spans (hcl-edit), evaluated with unknown and
//! sensitive values, and the static reference walk the graph is built from.

pub mod eval;
pub mod fmt;
pub mod funcs;
pub mod refs;

#[cfg(test)]
mod eval_tests;

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
        let offset = byte_offset(&file.text, loc.line(), loc.column());
        syntax_error(file, offset, &first_line(e.message()))
    })
}

/// Byte offset of a 1-based line and character column.
fn byte_offset(text: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let col_bytes: usize = l
                .chars()
                .take(column.saturating_sub(1))
                .map(char::len_utf8)
                .sum();
            return offset + col_bytes;
        }
        offset += l.len();
    }
    offset.min(text.len())
}

const HCL_HELP: &str =
    "fix the syntax at the marked position; stack and var files are HCL (https://github.com/hashicorp/hcl)";

/// Turn the parser's message into one that names the real mistake. The parser reports an
/// unterminated string or an unclosed `{` where it gave up, often lines later; a lexical scan
/// finds where the mistake is.
fn syntax_error(file: &SourceFile, offset: usize, message: &str) -> Diagnostic {
    let text = &file.text;
    let scan = scan(text);
    let line_of = |o: usize| text[..o.min(text.len())].matches('\n').count() + 1;
    if let Some(start) = scan.unterminated_string {
        if line_of(start) <= line_of(offset) {
            let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
            return Diagnostic::new("syntax error: unterminated string")
                .at(Some(file.location(start..end)))
                .detail("a quoted string must end on the line it starts")
                .help("close the string with `\"`; for text over several lines use a heredoc (<<EOT ... EOT)");
        }
    }
    let rest_blank = text[offset.min(text.len())..].trim().is_empty();
    if rest_blank {
        if let Some(&open) = scan.open_braces.last() {
            return Diagnostic::new("syntax error: this `{` is never closed")
                .at(Some(file.location(open..open + 1)))
                .detail(format!(
                    "the file ends at line {} while the block opened here is still open",
                    line_of(text.trim_end().len())
                ))
                .help("add the missing `}` at the end of the block");
        }
    }
    if message.contains("redefined attribute") {
        let key: String = text[offset..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        let mut d = Diagnostic::new(format!("`{key}` is set twice in this block"))
            .at(Some(file.location(offset..offset + key.len().max(1))));
        if let Some(first) = earlier_definition(text, offset, &key) {
            d = d.detail(format!("first set at {}", file.location(first..first + 1)));
        }
        return d.help("keep one of them: each attribute is set once per block");
    }
    let here: Option<char> = text[offset.min(text.len())..].chars().next();
    if message.starts_with("invalid expression") {
        return Diagnostic::new("syntax error: expected a value")
            .at(Some(file.location(offset..offset + 1)))
            .help("write a value: a \"string\", a number, true or false, a [list], an { object } or an expression such as var.NAME");
    }
    if rest_blank {
        // Point at the last character of the file rather than past its end.
        let last = text.trim_end().len().saturating_sub(1);
        return Diagnostic::new(format!("syntax error: the file ends too early: {message}"))
            .at(Some(file.location(last..last + 1)))
            .help(HCL_HELP);
    }
    match here {
        Some(c) if message.contains("expected newline") && !c.is_whitespace() => {
            Diagnostic::new(format!("syntax error: unexpected `{c}` after a complete value"))
                .at(Some(file.location(offset..offset + c.len_utf8())))
                .help("each attribute is `NAME = VALUE` on a line of its own; an operator, a comma or a quote may be missing before the marked character")
        }
        _ if message.contains("expected `{`") => {
            Diagnostic::new(format!("syntax error: {message}"))
                .at(Some(file.location(offset..offset + 1)))
                .help("an attribute needs `=` (NAME = VALUE); a block needs `{ ... }` after its labels")
        }
        _ => Diagnostic::new(format!("syntax error: {message}"))
            .at(Some(file.location(offset..offset + 1)))
            .help(HCL_HELP),
    }
}

/// The offset of an earlier `key =` before `before`, at the start of a line.
fn earlier_definition(text: &str, before: usize, key: &str) -> Option<usize> {
    let mut offset = 0;
    let mut found = None;
    for line in text[..before].split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(key) {
            if rest.trim_start().starts_with('=') && !rest.trim_start().starts_with("==") {
                found = Some(offset + (line.len() - trimmed.len()));
            }
        }
        offset += line.len();
    }
    found
}

#[derive(Debug, Default, PartialEq)]
struct Scan {
    /// Offset of the first `"` whose string runs into the end of its line.
    unterminated_string: Option<usize>,
    /// Offsets of `{` never closed.
    open_braces: Vec<usize>,
}

/// A lexical pass over HCL: strings (with `${ }` and `%{ }` inside), comments, heredocs, braces.
fn scan(text: &str) -> Scan {
    #[derive(Clone, Copy, PartialEq)]
    enum Ctx {
        Brace(usize),
        Interp,
        Str(usize),
    }
    let b = text.as_bytes();
    let mut out = Scan::default();
    let mut stack: Vec<Ctx> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if let Some(&Ctx::Str(start)) = stack.last() {
            match c {
                b'\\' => i += 1,
                b'"' => {
                    stack.pop();
                }
                b'$' | b'%' if b.get(i + 1) == Some(&b'{') => {
                    if b.get(i.wrapping_sub(1)) != Some(&c) {
                        stack.push(Ctx::Interp);
                    }
                    i += 1;
                }
                b'\n' => {
                    out.unterminated_string.get_or_insert(start);
                    stack.pop();
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'#' => {
                i = text[i..].find('\n').map_or(b.len(), |n| i + n);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i = text[i..].find('\n').map_or(b.len(), |n| i + n);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = text[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
                continue;
            }
            b'<' if b.get(i + 1) == Some(&b'<') => {
                let rest = &text[i + 2..];
                let rest = rest.strip_prefix('-').unwrap_or(rest);
                let id: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !id.is_empty() {
                    // Skip to the line that closes the heredoc.
                    let mut pos = text[i..].find('\n').map_or(b.len(), |n| i + n + 1);
                    let mut closed = false;
                    while pos < b.len() {
                        let end = text[pos..].find('\n').map_or(b.len(), |n| pos + n);
                        let line = text[pos..end].trim();
                        pos = end + 1;
                        if line == id {
                            closed = true;
                            break;
                        }
                    }
                    i = if closed { pos.min(b.len()) } else { b.len() };
                    continue;
                }
            }
            b'"' => stack.push(Ctx::Str(i)),
            b'{' => stack.push(Ctx::Brace(i)),
            b'}' => {
                if matches!(stack.last(), Some(Ctx::Brace(_)) | Some(Ctx::Interp)) {
                    stack.pop();
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.open_braces = stack
        .iter()
        .filter_map(|c| match c {
            Ctx::Brace(o) => Some(*o),
            _ => None,
        })
        .collect();
    out
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn err(text: &str) -> Diagnostic {
        let f = SourceFile::new(Path::new("t.hcl"), text.to_string());
        parse(&f).expect_err("a syntax error")
    }

    #[test]
    fn scan_finds_strings_and_braces() {
        let s = scan("a = \"x ${ {b = 1}.b } y\"\nblock {\n  c = \"open\n}\n");
        assert_eq!(s.unterminated_string, Some(39));
        assert_eq!(s.open_braces, Vec::<usize>::new());
        let s = scan("x {\n  # } in a comment\n  y = <<EOT\n}\nEOT\n");
        assert_eq!(s.open_braces, vec![2]);
        assert_eq!(s.unterminated_string, None);
        let s = scan("a = \"$${not} %%{nor}\" /* { */ // {\n");
        assert_eq!(s, Scan::default());
    }

    #[test]
    fn unclosed_brace_points_at_the_brace() {
        let d = err("file \"a\" {\n  path = \"x\"\n\noutput \"o\" {\n  value = 1\n}\n");
        assert_eq!(d.summary, "syntax error: this `{` is never closed");
        let at = d.at.unwrap();
        assert_eq!((at.line, at.col), (1, 10));
    }

    #[test]
    fn unterminated_string_points_at_the_quote() {
        let d = err("file \"a\" {\n  path = \"x\n  content = \"y\"\n}\n");
        assert_eq!(d.summary, "syntax error: unterminated string");
        let at = d.at.unwrap();
        assert_eq!((at.line, at.col), (2, 10));
    }

    #[test]
    fn duplicate_attribute_names_the_key() {
        let d = err("file \"a\" {\n  path = \"x\"\n  path = \"y\"\n}\n");
        assert_eq!(d.summary, "`path` is set twice in this block");
        assert_eq!(d.at.unwrap().line, 3);
        assert!(d.detail.unwrap().contains("t.hcl:2:3"));
    }

    #[test]
    fn stray_token_is_named() {
        let d = err("a = 1 @ 2\n");
        assert_eq!(
            d.summary,
            "syntax error: unexpected `@` after a complete value"
        );
        assert!(d.help.is_some());
    }

    #[test]
    fn missing_value() {
        let d = err("a = 1\nb = \n");
        assert_eq!(d.summary, "syntax error: expected a value");
        assert_eq!(d.at.unwrap().line, 2);
    }
}
