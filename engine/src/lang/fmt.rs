//! `pipeline fmt`: the canonical layout of a stack file, as `terraform fmt` lays out Terraform.
//!
//! The formatter works on the text, line by line, and never moves a token to another line: it
//! re-indents (two spaces per open bracket), normalises the spacing around `=`, `,` and inside
//! brackets, aligns `=` within a run of consecutive attributes, collapses blank lines, puts one
//! blank line between top-level blocks and ends the file with one newline. Strings, heredocs and
//! comments are tokens it copies as they are (a comment loses only trailing whitespace), so every
//! comment stays on its line, in its block. The file is parsed before (a syntax error is a
//! diagnostic at `file:line:col`) and the result parsed again and compared with the input's
//! syntax tree (layout and comments aside), so a bug here cannot write a file that no longer
//! parses or that means something else. Beyond layout it makes two changes, both from the parse:
//! bare block labels are quoted, and the operators the parser found (binary, `? :`, a `for`'s
//! `:` and `=>`) get one space either side, where a name with a `-` in it (`a-1`) stays whole.

use crate::diag::{Diagnostic, SourceFile};
use hcl_edit::expr::{Array, BinaryOperator, Conditional, ForExpr, FuncArgs, Object};
use hcl_edit::structure::{Block, BlockLabel, Body};
use hcl_edit::visit::{self, Visit};
use hcl_edit::visit_mut::{self, VisitMut};
use hcl_edit::{Decorated, Span};
use std::path::Path;

/// A body with the layout inside brackets removed: hcl-edit compares the blanks and comments
/// before an array's, object's or call's closing bracket; nothing else of the layout.
fn meaning(mut body: Body) -> Body {
    struct Strip;
    impl VisitMut for Strip {
        fn visit_array_mut(&mut self, a: &mut Array) {
            a.set_trailing("");
            visit_mut::visit_array_mut(self, a);
        }
        fn visit_object_mut(&mut self, o: &mut Object) {
            o.set_trailing("");
            visit_mut::visit_object_mut(self, o);
        }
        fn visit_func_args_mut(&mut self, f: &mut FuncArgs) {
            f.set_trailing("");
            visit_mut::visit_func_args_mut(self, f);
        }
    }
    Strip.visit_body_mut(&mut body);
    body
}

/// The text with every bare block label quoted, or `None` when it has none.
fn quote_labels(body: &Body, text: &str) -> Option<String> {
    struct Labels(Vec<std::ops::Range<usize>>);
    impl Visit for Labels {
        fn visit_block(&mut self, block: &Block) {
            for l in &block.labels {
                if let BlockLabel::Ident(i) = l {
                    self.0.extend(i.span());
                }
            }
            visit::visit_block(self, block);
        }
    }
    let mut labels = Labels(Vec::new());
    labels.visit_body(body);
    if labels.0.is_empty() {
        return None;
    }
    let mut out = text.to_string();
    labels.0.sort_by_key(|r| std::cmp::Reverse(r.start));
    for r in labels.0 {
        // An identifier needs no escaping inside quotes.
        let quoted = format!("\"{}\"", &text[r.clone()]);
        out.replace_range(r, &quoted);
    }
    Some(out)
}

/// Where the parser found operators that take one space either side, as `(offset, length)` in
/// the text: binary operators, a conditional's `?` and `:`, a `for` expression's `:` and `=>`.
/// Unary `-` and `!` are not among them and stay next to their operand.
fn operators(body: &Body, text: &str) -> Vec<(usize, usize)> {
    struct Ops<'a> {
        text: &'a str,
        out: Vec<(usize, usize)>,
    }
    impl Ops<'_> {
        /// The first `what` between two expressions, outside comments.
        fn between(
            &mut self,
            a: Option<std::ops::Range<usize>>,
            b: Option<std::ops::Range<usize>>,
            what: &str,
        ) {
            let (Some(a), Some(b)) = (a, b) else { return };
            if a.end > b.start || b.start > self.text.len() {
                return;
            }
            let gap = &self.text[a.end..b.start];
            let mut i = 0;
            while i < gap.len() {
                let rest = &gap[i..];
                if rest.starts_with('#') || rest.starts_with("//") {
                    i += rest.find('\n').unwrap_or(rest.len());
                } else if rest.starts_with("/*") {
                    i += rest.find("*/").map_or(rest.len(), |e| e + 2);
                } else if rest.starts_with(what) {
                    self.out.push((a.end + i, what.len()));
                    return;
                } else {
                    i += rest.chars().next().map_or(1, char::len_utf8);
                }
            }
        }
    }
    impl Visit for Ops<'_> {
        fn visit_binary_operator(&mut self, op: &Decorated<BinaryOperator>) {
            if let Some(r) = op.span() {
                self.out.push((r.start, r.len()));
            }
        }
        fn visit_conditional(&mut self, c: &Conditional) {
            self.between(c.cond_expr.span(), c.true_expr.span(), "?");
            self.between(c.true_expr.span(), c.false_expr.span(), ":");
            visit::visit_conditional(self, c);
        }
        fn visit_for_expr(&mut self, f: &ForExpr) {
            let first = f.key_expr.as_ref().unwrap_or(&f.value_expr);
            self.between(f.intro.collection_expr.span(), first.span(), ":");
            if let Some(k) = &f.key_expr {
                self.between(k.span(), f.value_expr.span(), "=>");
            }
            visit::visit_for_expr(self, f);
        }
    }
    let mut ops = Ops {
        text,
        out: Vec::new(),
    };
    ops.visit_body(body);
    ops.out.sort_unstable();
    ops.out
}

/// Format a file's text: `Ok(formatted)` (equal to the input when it was already canonical), or
/// the syntax error at `file:line:col`.
pub fn format_source(path: &Path, text: &str) -> Result<String, Diagnostic> {
    let bom = text.starts_with('\u{feff}');
    let file = SourceFile::new(path, text.to_string());
    let body = super::parse(&file)?;
    // Bare block labels (`service app {`) become quoted ones, as everywhere else in the repository;
    // the engine reads both alike. The text changed, so it is parsed again for the operators.
    let quoted = quote_labels(&body, &file.text);
    let (text, body) = match quoted {
        Some(q) => {
            let f = SourceFile::new(path, q);
            let b = super::parse(&f)?;
            (f.text.clone(), b)
        }
        None => (file.text.clone(), body),
    };
    let mut out = format_with(&text, &operators(&body, &text));
    // The result must say what the input said: hcl-edit's equality ignores layout and comments
    // (decor) but not one name, value, operator or label. A bug here cannot change a stack.
    let reparsed = SourceFile::new(path, out.clone());
    match super::parse(&reparsed) {
        Ok(b) if meaning(b.clone()) == meaning(body.clone()) => {}
        Ok(_) => {
            return Err(Diagnostic::new(format!(
                "fmt would have changed what {} means (a bug in pipeline fmt; the file is left as it is)",
                path.display()
            )))
        }
        Err(d) => {
            return Err(Diagnostic::new(format!(
                "fmt would have made {} unparsable (a bug in pipeline fmt; the file is left as it is): {}",
                path.display(),
                d.summary
            )))
        }
    }
    if bom {
        out.insert(0, '\u{feff}');
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Open(u8),
    Close(u8),
    Comma,
    Assign,
    Str,
    Comment,
    /// An operator the parser found (see `operators`).
    Op,
    Other,
}

#[derive(Debug)]
struct Tok<'a> {
    kind: Kind,
    text: &'a str,
    space_before: bool,
}

/// What the tokenizer leaves open at the end of a line.
enum Open {
    None,
    Heredoc(String),
    BlockComment,
}

/// End of a quoted string starting at `i` (the `"`), or the end of the line if it does not close.
fn string_end(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return j + 1,
            b'$' | b'%' if b.get(j + 1) == Some(&b'$') || b.get(j + 1) == Some(&b'%') => j += 2,
            b'$' | b'%' if b.get(j + 1) == Some(&b'{') => j = template_end(b, j + 2),
            _ => j += 1,
        }
    }
    b.len()
}

/// End of a `${ ... }` whose body starts at `i`.
fn template_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 1;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = string_end(b, i);
                continue;
            }
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// A heredoc opener `<<EOT` / `<<-EOT` at `i` that ends the line: its marker.
fn heredoc_marker(s: &str) -> Option<String> {
    let rest = s.strip_prefix("<<")?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let rest = rest.trim_end();
    let mut chars = rest.chars();
    let first = chars.next()?;
    if !(first.is_ascii_alphabetic() || first == '_') {
        return None;
    }
    if !rest
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return None;
    }
    Some(rest.to_string())
}

/// The tokens of one line; `ops` are the operators on it, as `(offset in the line, length)`.
fn tokenize<'a>(line: &'a str, ops: &[(usize, usize)]) -> (Vec<Tok<'a>>, Open) {
    let op_at = |i: usize| ops.iter().find(|o| o.0 == i).map(|o| o.1);
    let b = line.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    let mut space = false;
    let mut open = Open::None;
    while i < b.len() {
        let c = b[i];
        if c == b' ' || c == b'\t' || c == b'\r' {
            space = true;
            i += 1;
            continue;
        }
        let start = i;
        let kind;
        if let Some(len) = op_at(i) {
            i += len;
            kind = Kind::Op;
        } else if c == b'#' || b[i..].starts_with(b"//") {
            i = b.len();
            kind = Kind::Comment;
        } else if b[i..].starts_with(b"/*") {
            match line[i + 2..].find("*/") {
                Some(e) => i = i + 2 + e + 2,
                None => {
                    i = b.len();
                    open = Open::BlockComment;
                }
            }
            kind = Kind::Comment;
        } else if c == b'"' {
            i = string_end(b, i);
            kind = Kind::Str;
        } else if let Some(marker) = b[i..]
            .starts_with(b"<<")
            .then(|| heredoc_marker(&line[i..]))
            .flatten()
        {
            i = b.len();
            open = Open::Heredoc(marker);
            kind = Kind::Other;
        } else if matches!(c, b'{' | b'[' | b'(') {
            i += 1;
            kind = Kind::Open(c);
        } else if matches!(c, b'}' | b']' | b')') {
            i += 1;
            kind = Kind::Close(c);
        } else if c == b',' {
            i += 1;
            kind = Kind::Comma;
        } else if c == b'=' && !matches!(b.get(i + 1), Some(b'=') | Some(b'>')) {
            i += 1;
            kind = Kind::Assign;
        } else {
            // A run of anything else: names, numbers, operators (`==`, `=>`, `!=`, `a.b[*]`...).
            while i < b.len() {
                let d = b[i];
                if i > start && op_at(i).is_some() {
                    break;
                }
                if matches!(
                    d,
                    b' ' | b'\t'
                        | b'\r'
                        | b'"'
                        | b'#'
                        | b'{'
                        | b'}'
                        | b'['
                        | b']'
                        | b'('
                        | b')'
                        | b','
                ) || b[i..].starts_with(b"//")
                    || b[i..].starts_with(b"/*")
                {
                    break;
                }
                if d == b'=' {
                    if i == start {
                        // `==` or `=>` (a lone `=` is an assignment, taken above)
                        i += 2;
                        break;
                    }
                    if !matches!(b[i - 1], b'!' | b'<' | b'>') {
                        break;
                    }
                }
                i += 1;
            }
            if i == start {
                i += line[i..].chars().next().map_or(1, char::len_utf8);
            }
            kind = Kind::Other;
        }
        let text = if kind == Kind::Comment {
            line[start..i].trim_end()
        } else {
            &line[start..i]
        };
        toks.push(Tok {
            kind,
            text,
            space_before: space,
        });
        space = false;
    }
    (toks, open)
}

/// The tokens of one line with canonical spacing.
fn emit(toks: &[Tok<'_>]) -> String {
    let mut out = String::new();
    for (n, t) in toks.iter().enumerate() {
        if n > 0 {
            let p = toks[n - 1].kind;
            let space = match (p, t.kind) {
                (_, Kind::Comment) => true,
                (_, Kind::Op) | (Kind::Op, _) => true,
                (_, Kind::Comma) => false,
                (_, Kind::Close(b')')) | (_, Kind::Close(b']')) => false,
                (Kind::Open(b'{'), Kind::Close(b'}')) => false,
                (_, Kind::Close(b'}')) => true,
                (Kind::Open(b'('), _) | (Kind::Open(b'['), _) => false,
                (Kind::Open(b'{'), _) => true,
                (Kind::Comma, _) => true,
                (Kind::Assign, _) | (_, Kind::Assign) => true,
                (Kind::Other | Kind::Str | Kind::Close(_), Kind::Open(b'{')) => true,
                _ => t.space_before,
            };
            if space {
                out.push(' ');
            }
        }
        out.push_str(t.text);
    }
    out
}

enum Line {
    Blank,
    /// Copied as it is (heredoc body, the inside of a block comment).
    Verbatim(String),
    Code {
        indent: usize,
        text: String,
        /// `key = ...`: the key's length and whether the value ends on this line.
        attr: Option<(usize, bool)>,
        /// A comment after code on this line: where it starts in `text`.
        comment: Option<usize>,
        /// This line ends a top-level block.
        ends_top_block: bool,
    },
}

struct Bracket {
    indent: usize,
    /// A `{` that opens a block (not an object value) at the top level.
    top_block: bool,
    /// The line it is on.
    line: usize,
}

/// The canonical layout of a text that parses, with the operators `operators` found in it.
fn format_with(text: &str, ops: &[(usize, usize)]) -> String {
    let mut lines: Vec<Line> = Vec::new();
    let mut stack: Vec<Bracket> = Vec::new();
    let mut open = Open::None;
    let mut line_start = 0;
    for (n, raw) in text.split('\n').enumerate() {
        let base = line_start;
        line_start += raw.len() + 1;
        let line_ops: Vec<(usize, usize)> = ops
            .iter()
            .filter(|o| o.0 >= base && o.0 < base + raw.len())
            .map(|o| (o.0 - base, o.1))
            .collect();
        match &open {
            Open::Heredoc(marker) => {
                if raw.trim() == marker {
                    open = Open::None;
                }
                lines.push(Line::Verbatim(raw.to_string()));
                continue;
            }
            Open::BlockComment => {
                let Some(e) = raw.find("*/") else {
                    lines.push(Line::Verbatim(raw.to_string()));
                    continue;
                };
                // Code after the comment's end still opens and closes brackets.
                let (toks, o) = tokenize(&raw[e + 2..], &[]);
                open = o;
                for t in &toks {
                    match t.kind {
                        Kind::Open(_) => stack.push(Bracket {
                            indent: stack.last().map_or(0, |b| b.indent + 1),
                            top_block: false,
                            line: n,
                        }),
                        Kind::Close(_) => {
                            stack.pop();
                        }
                        _ => {}
                    }
                }
                lines.push(Line::Verbatim(raw.trim_end().to_string()));
                continue;
            }
            Open::None => {}
        }
        let (toks, o) = tokenize(raw, &line_ops);
        open = o;
        if toks.is_empty() {
            lines.push(Line::Blank);
            continue;
        }
        let depth_before = stack.len();
        let lead_closers = toks
            .iter()
            .take_while(|t| matches!(t.kind, Kind::Close(_)))
            .count();
        let mut indent = stack.last().map_or(0, |b| b.indent + 1);
        let mut ends_top_block = false;
        for _ in 0..lead_closers {
            if let Some(b) = stack.pop() {
                indent = b.indent;
                ends_top_block |= b.top_block;
            }
        }
        let is_attr = toks.len() >= 2
            && matches!(toks[0].kind, Kind::Other | Kind::Str)
            && toks[1].kind == Kind::Assign;
        let mut min_depth = stack.len();
        for t in &toks[lead_closers..] {
            match t.kind {
                Kind::Open(c) => stack.push(Bracket {
                    indent,
                    top_block: c == b'{' && stack.is_empty() && !is_attr,
                    line: n,
                }),
                Kind::Close(_) => {
                    if let Some(b) = stack.pop() {
                        // A block on one line (`variable "a" {}`) may stand next to another.
                        ends_top_block |= b.top_block && b.line < n;
                    }
                    min_depth = min_depth.min(stack.len());
                }
                _ => {}
            }
        }
        let single =
            stack.len() == depth_before && min_depth == depth_before && matches!(open, Open::None);
        let text = emit(&toks);
        let comment = match toks.last() {
            Some(c) if c.kind == Kind::Comment && toks.len() > 1 => Some(text.len() - c.text.len()),
            _ => None,
        };
        lines.push(Line::Code {
            indent,
            attr: is_attr.then(|| (toks[0].text.chars().count(), single)),
            comment,
            ends_top_block: ends_top_block && stack.is_empty(),
            text,
        });
    }
    align(&mut lines);
    render(&lines)
}

/// Pad the keys of each run of consecutive attributes at one indentation so their `=` line up,
/// and the comments that end lines of the run so they start in one column. A run ends at any
/// other line (blank, comment, block, closing bracket); an attribute whose value goes on over the
/// next lines is in no run (as `terraform fmt` leaves it).
fn align(lines: &mut [Line]) {
    let mut i = 0;
    while i < lines.len() {
        let Line::Code {
            indent,
            attr: Some((_, true)),
            ..
        } = &lines[i]
        else {
            i += 1;
            continue;
        };
        let run_indent = *indent;
        let mut end = i + 1;
        while end < lines.len() {
            match &lines[end] {
                Line::Code {
                    indent,
                    attr: Some((_, true)),
                    ..
                } if *indent == run_indent => end += 1,
                _ => break,
            }
        }
        let width = lines[i..end]
            .iter()
            .map(|l| match l {
                Line::Code {
                    attr: Some((w, _)), ..
                } => *w,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        for l in &mut lines[i..end] {
            if let Line::Code {
                text,
                attr: Some((w, _)),
                comment,
                ..
            } = l
            {
                // The key's length in chars; the text is `key = ...`.
                let key_bytes: usize = text.chars().take(*w).map(char::len_utf8).sum();
                let pad = " ".repeat(width - *w);
                text.insert_str(key_bytes, &pad);
                if let Some(c) = comment {
                    *c += pad.len();
                }
            }
        }
        let code_width = |text: &str, c: usize| text[..c].trim_end().chars().count();
        let column = lines[i..end]
            .iter()
            .filter_map(|l| match l {
                Line::Code {
                    text,
                    comment: Some(c),
                    ..
                } => Some(code_width(text, *c)),
                _ => None,
            })
            .max();
        if let Some(column) = column {
            for l in &mut lines[i..end] {
                if let Line::Code {
                    text,
                    comment: Some(c),
                    ..
                } = l
                {
                    let code = text[..*c].trim_end().to_string();
                    let pad = column + 1 - code.chars().count();
                    *text = format!("{code}{}{}", " ".repeat(pad), &text[*c..]);
                }
            }
        }
        i = end;
    }
}

fn render(lines: &[Line]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut blank_pending = false;
    let mut after_top_block = false;
    for l in lines {
        match l {
            Line::Blank => blank_pending = !out.is_empty(),
            Line::Verbatim(s) => {
                if blank_pending || after_top_block {
                    out.push(String::new());
                }
                blank_pending = false;
                after_top_block = false;
                out.push(s.clone());
            }
            Line::Code {
                indent,
                text,
                ends_top_block,
                ..
            } => {
                if blank_pending || after_top_block {
                    out.push(String::new());
                }
                blank_pending = false;
                after_top_block = *ends_top_block;
                out.push(format!("{}{}", "  ".repeat(*indent), text));
            }
        }
    }
    if out.is_empty() {
        return String::new();
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::format_source;

    fn format_text(text: &str) -> String {
        format_source(std::path::Path::new("t.hcl"), text).expect("parses")
    }

    #[test]
    fn aligns_runs_and_normalises_spacing() {
        let input = "resource \"x\" \"a\"{\n  name=\"a\"\n      longer_name   =  [ 1,2 ,3 ]\n\n  b = {a=1}\n  # c\n  cc = {}\n}\n\n\n\nvariable \"v\" {}\nvariable \"w\" {}\nlocals {\n}\nlocals {}\n";
        let want = "resource \"x\" \"a\" {\n  name        = \"a\"\n  longer_name = [1, 2, 3]\n\n  b = { a = 1 }\n  # c\n  cc = {}\n}\n\nvariable \"v\" {}\nvariable \"w\" {}\nlocals {\n}\n\nlocals {}\n";
        assert_eq!(format_text(input), want);
        assert_eq!(format_text(want), want);
    }

    #[test]
    fn heredocs_and_block_comments_are_copied() {
        let input = "a {\n  x = <<EOT\n   keep  \n\n\nEOT\n  /* one\n     two  */ y = 1\n}\n";
        let got = format_text(input);
        assert!(got.contains("   keep  \n\n\nEOT\n"), "{got}");
        assert!(got.contains("     two  */ y = 1\n"), "{got}");
        assert_eq!(format_text(&got), got);
    }

    #[test]
    fn operators_get_one_space_and_unary_ones_none() {
        // `a-1` is one name: HCL identifiers may contain `-`, and the parser says which it is.
        let input = "locals {\n  a = 1+2*-3\n  b = x==1&&!y ? \"s${1+1}\":{for k,v in m: k=>v if v>=0}\n  c = ( a*2 )\n  d = a-1\n}\n";
        let want = "locals {\n  a = 1 + 2 * -3\n  b = x == 1 && !y ? \"s${1+1}\" : { for k, v in m : k => v if v >= 0 }\n  c = (a * 2)\n  d = a-1\n}\n";
        assert_eq!(format_text(input), want);
        assert_eq!(format_text(want), want);
    }

    #[test]
    fn bare_labels_are_quoted() {
        let got = format_text("service app {\n  port = 1\n}\nvariable \"v\" {}\n");
        assert_eq!(
            got,
            "service \"app\" {\n  port = 1\n}\n\nvariable \"v\" {}\n"
        );
    }

    #[test]
    fn trailing_comments_of_a_run_line_up() {
        let input =
            "a {\n  x = 1 # one\n  long_name = \"v\"   // two\n  y = 2\n\n  z = 3    # alone\n}\n";
        let want = "a {\n  x         = 1   # one\n  long_name = \"v\" // two\n  y         = 2\n\n  z = 3 # alone\n}\n";
        assert_eq!(format_text(input), want);
        assert_eq!(format_text(want), want);
    }

    #[test]
    fn meaning_ignores_layout_and_comments_but_not_a_value() {
        let m = |s: &str| super::meaning(hcl_edit::parser::parse_body(s).unwrap());
        assert_eq!(
            m("a = [ 1,2 ]  # c\nb = f( x , { k=1 } )\n"),
            m("a = [1, 2]\nb = f(x, { k = 1 })\n")
        );
        assert_ne!(m("a = 1+2\n"), m("a = 1-2\n"));
        assert_ne!(m("a = x-1\n"), m("a = x - 1\n"));
        assert_ne!(m("a = \"x  y\"\n"), m("a = \"x y\"\n"));
    }
}
