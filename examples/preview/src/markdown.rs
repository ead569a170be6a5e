//! A small, dependency-free renderer for a practical subset of Markdown.
//!
//! Supported (CommonMark-flavoured, simplified):
//!
//! * ATX (`#`..`######`) and setext (`===` / `---`) headings
//! * paragraphs, hard line breaks (two trailing spaces or a trailing `\`)
//! * `**strong**`, `__strong__`, `*em*`, `_em_`, `***both***`, `~~strike~~`
//! * `` `code` `` spans, fenced (```` ``` ````/`~~~`) and indented code blocks
//! * unordered (`-`, `*`, `+`) and ordered (`1.`, `1)`) lists, nested, tight/loose
//! * links `[text](url "title")`, images `![alt](src)`, autolinks `<https://…>`
//! * blockquotes, horizontal rules
//! * GFM pipe tables with alignment — only when [`Options::tables`] is set
//!
//! Raw HTML in the input is always escaped and link destinations with
//! script-capable schemes (`javascript:`, `vbscript:`, `data:`, `file:`) are
//! replaced with `#`, so the output is safe to insert into a page.
//!
//! Adversarial input cannot make rendering super-linear: nesting depth is
//! capped and every forward scan for a closing delimiter draws from a "fuel"
//! budget proportional to the input size. When the budget is exhausted the
//! remaining constructs are rendered as literal (escaped) text.

use std::fmt::Write as _;

/// Renderer options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Render GFM pipe tables (`| a | b |` followed by `|---|---|`).
    pub tables: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { tables: true }
    }
}

const MAX_BLOCK_DEPTH: usize = 16;
const MAX_INLINE_DEPTH: usize = 16;
const MAX_TABLE_COLUMNS: usize = 128;
const MAX_LINK_PAREN_DEPTH: usize = 32;
const FUEL_PER_BYTE: usize = 64;
const FUEL_BASE: usize = 1 << 16;
/// Fuel for one padding cell of a short table row: at most ~n/4 such cells.
const PAD_CELL_FUEL: usize = 4 * FUEL_PER_BYTE;

struct Ctx {
    opts: Options,
    fuel: usize,
}

impl Ctx {
    /// Consume `n` units of scanning budget; `false` once it is exhausted.
    fn spend(&mut self, n: usize) -> bool {
        if self.fuel >= n {
            self.fuel -= n;
            true
        } else {
            self.fuel = 0;
            false
        }
    }
}

/// Render `markdown` to an HTML fragment.
pub fn render(markdown: &str, opts: Options) -> String {
    let text = normalize(markdown);
    let lines: Vec<&str> = text.lines().collect();
    let mut ctx = Ctx {
        opts,
        fuel: text
            .len()
            .saturating_mul(FUEL_PER_BYTE)
            .saturating_add(FUEL_BASE),
    };
    let mut out = String::with_capacity(text.len() + text.len() / 2 + 16);
    blocks(&mut ctx, &lines, 0, false, &mut out);
    out
}

/// Escape `&`, `<`, `>` and `"` for use in HTML text or a double-quoted attribute.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(s, &mut out);
    out
}

fn escape_into(s: &str, out: &mut String) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

/// Normalise line endings, replace NUL, expand tabs in leading indentation.
fn normalize(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut at_line_start = true;
    let mut col = 0usize;
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
                at_line_start = true;
                col = 0;
            }
            '\t' if at_line_start => {
                let n = 4 - col % 4;
                out.extend(std::iter::repeat_n(' ', n));
                col += n;
            }
            ' ' if at_line_start => {
                out.push(' ');
                col += 1;
            }
            '\0' => {
                out.push('\u{FFFD}');
                at_line_start = false;
            }
            _ => {
                out.push(c);
                at_line_start = false;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Block level
// ---------------------------------------------------------------------------

fn is_blank(line: &str) -> bool {
    line.bytes().all(|b| b == b' ' || b == b'\t')
}

fn indent_of(line: &str) -> usize {
    line.bytes().take_while(|&b| b == b' ').count()
}

fn strip_indent(line: &str, max: usize) -> &str {
    &line[indent_of(line).min(max)..]
}

fn run_len(b: &[u8], i: usize, c: u8) -> usize {
    b[i..].iter().take_while(|&&x| x == c).count()
}

fn blocks(ctx: &mut Ctx, lines: &[&str], depth: usize, tight: bool, out: &mut String) {
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if is_blank(line) {
            i += 1;
            continue;
        }
        let ind = indent_of(line);
        if ind >= 4 {
            i = indented_code(lines, i, out);
            continue;
        }
        let rest = &line[ind..];
        if let Some(fence) = fence_open(rest) {
            i = fenced_code(lines, i, ind, fence, out);
            continue;
        }
        if let Some((level, text)) = atx_heading(rest) {
            heading(ctx, level, text, out);
            i += 1;
            continue;
        }
        if is_hr(rest) {
            out.push_str("<hr />\n");
            i += 1;
            continue;
        }
        if depth < MAX_BLOCK_DEPTH {
            if rest.starts_with('>') {
                i = blockquote(ctx, lines, i, depth, out);
                continue;
            }
            if let Some(marker) = list_marker(line) {
                i = list(ctx, lines, i, marker, depth, out);
                continue;
            }
        }
        if ctx.opts.tables {
            if let Some((head, aligns)) = table_head(lines, i) {
                i = table(ctx, lines, i, &head, &aligns, depth, out);
                continue;
            }
        }
        i = paragraph(ctx, lines, i, depth, tight, out);
    }
}

/// Whether line `i` starts a block that may interrupt a paragraph.
fn interrupts_paragraph(ctx: &Ctx, lines: &[&str], i: usize, depth: usize) -> bool {
    let line = lines[i];
    let ind = indent_of(line);
    if ind >= 4 {
        return false;
    }
    let rest = &line[ind..];
    if fence_open(rest).is_some() || atx_heading(rest).is_some() || is_hr(rest) {
        return true;
    }
    if depth < MAX_BLOCK_DEPTH {
        if rest.starts_with('>') {
            return true;
        }
        if let Some(m) = list_marker(line) {
            if !m.empty && (!m.ordered || m.start == 1) {
                return true;
            }
        }
    }
    ctx.opts.tables && table_head(lines, i).is_some()
}

fn heading(ctx: &mut Ctx, level: usize, text: &str, out: &mut String) {
    let _ = write!(out, "<h{level}>");
    inline_root(ctx, text, out);
    let _ = writeln!(out, "</h{level}>");
}

fn atx_heading(rest: &str) -> Option<(usize, &str)> {
    let b = rest.as_bytes();
    let n = run_len(b, 0, b'#');
    if n == 0 || n > 6 {
        return None;
    }
    match b.get(n) {
        None => return Some((n, "")),
        Some(b' ') | Some(b'\t') => {}
        _ => return None,
    }
    let content = rest[n..].trim();
    // Optional closing sequence: trailing #s preceded by whitespace.
    let without = content.trim_end_matches('#');
    let content = if without.is_empty() {
        ""
    } else if without.ends_with(' ') || without.ends_with('\t') {
        without.trim_end()
    } else {
        content
    };
    Some((n, content))
}

fn is_hr(rest: &str) -> bool {
    let mut ch = None;
    let mut count = 0;
    for b in rest.bytes() {
        match b {
            b' ' | b'\t' => {}
            b'-' | b'*' | b'_' => {
                if ch.is_some_and(|c| c != b) {
                    return false;
                }
                ch = Some(b);
                count += 1;
            }
            _ => return false,
        }
    }
    count >= 3
}

fn setext_level(rest: &str) -> Option<usize> {
    let t = rest.trim_end();
    if t.is_empty() {
        None
    } else if t.bytes().all(|b| b == b'=') {
        Some(1)
    } else if t.bytes().all(|b| b == b'-') {
        Some(2)
    } else {
        None
    }
}

fn paragraph(
    ctx: &mut Ctx,
    lines: &[&str],
    i: usize,
    depth: usize,
    tight: bool,
    out: &mut String,
) -> usize {
    let mut text = String::from(lines[i].trim_start());
    let mut j = i + 1;
    while j < lines.len() {
        let l = lines[j];
        if is_blank(l) {
            break;
        }
        let ind = indent_of(l);
        if ind < 4 {
            if let Some(level) = setext_level(&l[ind..]) {
                heading(ctx, level, text.trim_end(), out);
                return j + 1;
            }
            if interrupts_paragraph(ctx, lines, j, depth) {
                break;
            }
        }
        text.push('\n');
        text.push_str(l.trim_start());
        j += 1;
    }
    let text = text.trim_end();
    if tight {
        inline_root(ctx, text, out);
        out.push('\n');
    } else {
        out.push_str("<p>");
        inline_root(ctx, text, out);
        out.push_str("</p>\n");
    }
    j
}

fn indented_code(lines: &[&str], i: usize, out: &mut String) -> usize {
    let mut j = i;
    let mut end = i;
    while j < lines.len() {
        let l = lines[j];
        if is_blank(l) {
            j += 1;
        } else if indent_of(l) >= 4 {
            j += 1;
            end = j;
        } else {
            break;
        }
    }
    out.push_str("<pre><code>");
    for l in &lines[i..end] {
        escape_into(strip_indent(l, 4), out);
        out.push('\n');
    }
    out.push_str("</code></pre>\n");
    end
}

#[derive(Clone, Copy)]
struct Fence<'a> {
    ch: u8,
    len: usize,
    info: &'a str,
}

fn fence_open(rest: &str) -> Option<Fence<'_>> {
    let b = rest.as_bytes();
    let ch = *b.first()?;
    if ch != b'`' && ch != b'~' {
        return None;
    }
    let len = run_len(b, 0, ch);
    if len < 3 {
        return None;
    }
    let info = rest[len..].trim();
    if ch == b'`' && info.contains('`') {
        return None;
    }
    Some(Fence { ch, len, info })
}

fn is_fence_close(line: &str, fence: Fence<'_>) -> bool {
    let ind = indent_of(line);
    if ind >= 4 {
        return false;
    }
    let rest = &line[ind..];
    let r = run_len(rest.as_bytes(), 0, fence.ch);
    r >= fence.len && rest[r..].trim().is_empty()
}

fn fenced_code(
    lines: &[&str],
    i: usize,
    indent: usize,
    fence: Fence<'_>,
    out: &mut String,
) -> usize {
    out.push_str("<pre><code");
    if let Some(lang) = fence.info.split_whitespace().next() {
        out.push_str(" class=\"language-");
        escape_into(lang, out);
        out.push('"');
    }
    out.push('>');
    let mut j = i + 1;
    let mut end = lines.len();
    while j < lines.len() {
        if is_fence_close(lines[j], fence) {
            end = j + 1;
            break;
        }
        escape_into(strip_indent(lines[j], indent), out);
        out.push('\n');
        j += 1;
    }
    out.push_str("</code></pre>\n");
    end
}

fn blockquote(ctx: &mut Ctx, lines: &[&str], i: usize, depth: usize, out: &mut String) -> usize {
    let mut inner: Vec<&str> = Vec::new();
    let mut j = i;
    while j < lines.len() {
        let l = lines[j];
        let ind = indent_of(l);
        if ind < 4 && l[ind..].starts_with('>') {
            let r = &l[ind + 1..];
            inner.push(r.strip_prefix(' ').unwrap_or(r));
            j += 1;
        } else if !is_blank(l)
            && inner.last().is_some_and(|p| !is_blank(p))
            && !interrupts_paragraph(ctx, lines, j, depth)
        {
            // Lazy continuation of a paragraph inside the quote.
            inner.push(l);
            j += 1;
        } else {
            break;
        }
    }
    out.push_str("<blockquote>\n");
    blocks(ctx, &inner, depth + 1, false, out);
    out.push_str("</blockquote>\n");
    j
}

#[derive(Debug, Clone, Copy)]
struct Marker {
    ordered: bool,
    /// Bullet character, or the delimiter (`.`/`)`) of an ordered marker.
    ch: u8,
    start: u64,
    /// Byte offset of the item content within the line (= continuation indent).
    content: usize,
    /// Nothing follows the marker on its line.
    empty: bool,
}

fn list_marker(line: &str) -> Option<Marker> {
    let ind = indent_of(line);
    if ind >= 4 {
        return None;
    }
    let b = line.as_bytes();
    let (ordered, ch, start, end) = match *b.get(ind)? {
        c @ (b'-' | b'*' | b'+') => (false, c, 0, ind + 1),
        c if c.is_ascii_digit() => {
            let digits = b[ind..].iter().take_while(|x| x.is_ascii_digit()).count();
            if digits > 9 {
                return None;
            }
            let delim = *b.get(ind + digits)?;
            if delim != b'.' && delim != b')' {
                return None;
            }
            let start = line[ind..ind + digits].parse().ok()?;
            (true, delim, start, ind + digits + 1)
        }
        _ => return None,
    };
    let after = &line[end..];
    if is_blank(after) {
        return Some(Marker {
            ordered,
            ch,
            start,
            content: end + 1,
            empty: true,
        });
    }
    if !after.starts_with(' ') && !after.starts_with('\t') {
        return None;
    }
    let spaces = indent_of(after);
    // Five or more spaces: the content is indented code, indent is marker + 1.
    let content = if spaces > 4 {
        end + 1
    } else {
        end + spaces.max(1)
    };
    Some(Marker {
        ordered,
        ch,
        start,
        content,
        empty: false,
    })
}

fn same_kind(a: Marker, b: Marker) -> bool {
    a.ordered == b.ordered && a.ch == b.ch
}

fn trim_trailing_blank(item: &mut Vec<&str>) {
    while item.last().is_some_and(|l| is_blank(l)) {
        item.pop();
    }
}

fn list(
    ctx: &mut Ctx,
    lines: &[&str],
    i: usize,
    first: Marker,
    depth: usize,
    out: &mut String,
) -> usize {
    let mut items: Vec<Vec<&str>> = Vec::new();
    let mut cur: Vec<&str> = vec![lines[i].get(first.content..).unwrap_or("")];
    let mut content_indent = first.content;
    let mut loose = false;
    let mut after_blank = false;
    let mut j = i + 1;
    while j < lines.len() {
        let l = lines[j];
        if is_blank(l) {
            cur.push("");
            after_blank = true;
            j += 1;
            continue;
        }
        let ind = indent_of(l);
        if ind >= content_indent {
            if after_blank && cur.iter().any(|x| !is_blank(x)) {
                loose = true;
            }
            cur.push(&l[content_indent..]);
            after_blank = false;
            j += 1;
            continue;
        }
        if ind < 4 && !is_hr(&l[ind..]) {
            if let Some(m) = list_marker(l) {
                if same_kind(first, m) {
                    loose |= after_blank;
                    trim_trailing_blank(&mut cur);
                    let next = vec![l.get(m.content..).unwrap_or("")];
                    items.push(std::mem::replace(&mut cur, next));
                    content_indent = m.content;
                    after_blank = false;
                    j += 1;
                    continue;
                }
            }
        }
        if !after_blank && !interrupts_paragraph(ctx, lines, j, depth) {
            // Lazy paragraph continuation.
            cur.push(l.trim_start());
            j += 1;
            continue;
        }
        break;
    }
    trim_trailing_blank(&mut cur);
    items.push(cur);

    let tag = if first.ordered { "ol" } else { "ul" };
    if first.ordered && first.start != 1 {
        let _ = writeln!(out, "<ol start=\"{}\">", first.start);
    } else {
        let _ = writeln!(out, "<{tag}>");
    }
    for item in &items {
        let mut inner = String::new();
        blocks(ctx, item, depth + 1, !loose, &mut inner);
        if loose {
            out.push_str("<li>\n");
            out.push_str(&inner);
        } else {
            out.push_str("<li>");
            out.push_str(inner.trim_end_matches('\n'));
        }
        out.push_str("</li>\n");
    }
    let _ = writeln!(out, "</{tag}>");
    j
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    None,
    Left,
    Center,
    Right,
}

/// Split a table row into trimmed cells, honouring `\|` escapes.
fn split_row(line: &str) -> Vec<&str> {
    let mut s = line.trim();
    if let Some(r) = s.strip_prefix('|') {
        s = r;
    }
    if s.ends_with('|') {
        let backslashes = s[..s.len() - 1]
            .bytes()
            .rev()
            .take_while(|&b| b == b'\\')
            .count();
        if backslashes % 2 == 0 {
            s = &s[..s.len() - 1];
        }
    }
    let b = s.as_bytes();
    let mut cells = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'|' => {
                cells.push(s[start..i].trim());
                start = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    cells.push(s[start..].trim());
    cells
}

fn parse_align(cell: &str) -> Option<Align> {
    let (left, rest) = match cell.strip_prefix(':') {
        Some(r) => (true, r),
        None => (false, cell),
    };
    let (right, rest) = match rest.strip_suffix(':') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || !rest.bytes().all(|b| b == b'-') {
        return None;
    }
    Some(match (left, right) {
        (true, true) => Align::Center,
        (true, false) => Align::Left,
        (false, true) => Align::Right,
        (false, false) => Align::None,
    })
}

/// If lines `i` and `i + 1` are a table header and delimiter row, return the
/// header cells and column alignments.
fn table_head<'a>(lines: &[&'a str], i: usize) -> Option<(Vec<&'a str>, Vec<Align>)> {
    let head = lines[i];
    let delim = *lines.get(i + 1)?;
    if indent_of(head) >= 4 || indent_of(delim) >= 4 {
        return None;
    }
    if !head.contains('|') || !delim.contains('|') {
        return None;
    }
    let aligns = split_row(delim)
        .into_iter()
        .map(parse_align)
        .collect::<Option<Vec<_>>>()?;
    let cells = split_row(head);
    if cells.len() != aligns.len() || cells.len() > MAX_TABLE_COLUMNS {
        return None;
    }
    Some((cells, aligns))
}

fn table_cell(ctx: &mut Ctx, tag: &str, content: &str, align: Align, out: &mut String) {
    out.push('<');
    out.push_str(tag);
    out.push_str(match align {
        Align::None => "",
        Align::Left => " align=\"left\"",
        Align::Center => " align=\"center\"",
        Align::Right => " align=\"right\"",
    });
    out.push('>');
    if content.contains("\\|") {
        inline_root(ctx, &content.replace("\\|", "|"), out);
    } else {
        inline_root(ctx, content, out);
    }
    out.push_str("</");
    out.push_str(tag);
    out.push_str(">\n");
}

fn table(
    ctx: &mut Ctx,
    lines: &[&str],
    i: usize,
    head: &[&str],
    aligns: &[Align],
    depth: usize,
    out: &mut String,
) -> usize {
    out.push_str("<table>\n<thead>\n<tr>\n");
    for (cell, align) in head.iter().zip(aligns) {
        table_cell(ctx, "th", cell, *align, out);
    }
    out.push_str("</tr>\n</thead>\n");
    let mut j = i + 2;
    let mut body = false;
    while j < lines.len() {
        let l = lines[j];
        if is_blank(l) || interrupts_paragraph(ctx, lines, j, depth) {
            break;
        }
        if !body {
            out.push_str("<tbody>\n");
            body = true;
        }
        out.push_str("<tr>\n");
        let cells = split_row(l);
        for (k, align) in aligns.iter().enumerate() {
            match cells.get(k) {
                Some(cell) => table_cell(ctx, "td", cell, *align, out),
                // Padding cells are not backed by input bytes: bound them.
                None if ctx.spend(PAD_CELL_FUEL) => table_cell(ctx, "td", "", *align, out),
                None => break,
            }
        }
        out.push_str("</tr>\n");
        j += 1;
    }
    if body {
        out.push_str("</tbody>\n");
    }
    out.push_str("</table>\n");
    j
}

// ---------------------------------------------------------------------------
// Inline level
// ---------------------------------------------------------------------------

fn is_special(b: u8) -> bool {
    matches!(
        b,
        b'\\' | b'`' | b'*' | b'_' | b'~' | b'!' | b'[' | b'<' | b'>' | b'&' | b'"' | b'\n'
    )
}

fn inline_root(ctx: &mut Ctx, s: &str, out: &mut String) {
    inline(ctx, s, 0, false, out);
}

fn inline(ctx: &mut Ctx, s: &str, depth: usize, in_link: bool, out: &mut String) {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => match b.get(i + 1) {
                Some(&n) if n.is_ascii_punctuation() => {
                    escape_into(&s[i + 1..i + 2], out);
                    i += 2;
                }
                Some(b'\n') => {
                    out.push_str("<br />\n");
                    i += 2;
                }
                _ => {
                    out.push('\\');
                    i += 1;
                }
            },
            b'`' => {
                let n = run_len(b, i, b'`');
                match find_run(ctx, b, i + n, b'`', n) {
                    Some(close) => {
                        code_span(&s[i + n..close], out);
                        i = close + n;
                    }
                    None => {
                        out.push_str(&s[i..i + n]);
                        i += n;
                    }
                }
            }
            b'*' | b'_' => i = emphasis(ctx, s, i, depth, in_link, out),
            b'~' => i = strikethrough(ctx, s, i, depth, in_link, out),
            b'!' if b.get(i + 1) == Some(&b'[') => {
                i = match image(ctx, s, i, depth, out) {
                    Some(end) => end,
                    None => {
                        out.push('!');
                        i + 1
                    }
                };
            }
            b'[' => {
                i = match link(ctx, s, i, depth, in_link, out) {
                    Some(end) => end,
                    None => {
                        out.push('[');
                        i + 1
                    }
                };
            }
            b'<' => {
                i = match autolink(s, i) {
                    Some((url, end)) => {
                        let href = safe_url(url);
                        if href == "#" {
                            escape_into(&s[i..end], out);
                        } else {
                            out.push_str("<a href=\"");
                            escape_into(href, out);
                            out.push_str("\">");
                            escape_into(url, out);
                            out.push_str("</a>");
                        }
                        end
                    }
                    None => {
                        out.push_str("&lt;");
                        i + 1
                    }
                };
            }
            b'&' => match entity_len(b, i) {
                // Valid character references pass through; the browser decodes them.
                Some(n) => {
                    out.push_str(&s[i..i + n]);
                    i += n;
                }
                None => {
                    out.push_str("&amp;");
                    i += 1;
                }
            },
            b'>' => {
                out.push_str("&gt;");
                i += 1;
            }
            b'"' => {
                out.push_str("&quot;");
                i += 1;
            }
            b'\n' => {
                line_break(out);
                i += 1;
            }
            _ => {
                let j = b[i + 1..]
                    .iter()
                    .position(|&c| is_special(c))
                    .map_or(b.len(), |p| i + 1 + p);
                out.push_str(&s[i..j]);
                i = j;
            }
        }
    }
}

/// Soft break, or a hard break if the line ended with two or more spaces.
fn line_break(out: &mut String) {
    let trimmed = out.trim_end_matches(' ').len();
    let spaces = out.len() - trimmed;
    out.truncate(trimmed);
    out.push_str(if spaces >= 2 { "<br />\n" } else { "\n" });
}

fn code_span(content: &str, out: &mut String) {
    let c = content.replace('\n', " ");
    let t = if c.len() >= 2
        && c.starts_with(' ')
        && c.ends_with(' ')
        && !c.bytes().all(|b| b == b' ')
    {
        &c[1..c.len() - 1]
    } else {
        &c[..]
    };
    out.push_str("<code>");
    escape_into(t, out);
    out.push_str("</code>");
}

/// Find the next run of exactly `n` bytes `c` at or after `from`.
fn find_run(ctx: &mut Ctx, b: &[u8], from: usize, c: u8, n: usize) -> Option<usize> {
    let mut j = from;
    while j < b.len() {
        if !ctx.spend(1) {
            return None;
        }
        if b[j] == c {
            let r = run_len(b, j, c);
            if r == n {
                return Some(j);
            }
            j += r;
        } else {
            j += 1;
        }
    }
    None
}

/// Find a closing delimiter run of exactly `len` bytes `c` after `from`,
/// skipping backslash escapes and code spans.
fn find_closer(ctx: &mut Ctx, s: &str, from: usize, c: u8, len: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut j = from;
    while j < b.len() {
        if !ctx.spend(1) {
            return None;
        }
        match b[j] {
            b'\\' => j += 2,
            b'`' => {
                let n = run_len(b, j, b'`');
                j = find_run(ctx, b, j + n, b'`', n).map_or(j + n, |e| e + n);
            }
            x if x == c => {
                let r = run_len(b, j, c);
                if r == len && j > from {
                    let before_ok = s[..j]
                        .chars()
                        .next_back()
                        .is_some_and(|ch| !ch.is_whitespace());
                    let after_ok = c != b'_'
                        || !s[j + r..]
                            .chars()
                            .next()
                            .is_some_and(|ch| ch.is_alphanumeric());
                    if before_ok && after_ok {
                        return Some(j);
                    }
                }
                j += r;
            }
            _ => j += 1,
        }
    }
    None
}

fn emphasis(
    ctx: &mut Ctx,
    s: &str,
    i: usize,
    depth: usize,
    in_link: bool,
    out: &mut String,
) -> usize {
    let b = s.as_bytes();
    let c = b[i];
    let n = run_len(b, i, c);
    let next = s[i + n..].chars().next();
    let prev = s[..i].chars().next_back();
    let can_open = next.is_some_and(|ch| !ch.is_whitespace())
        && (c == b'*' || !prev.is_some_and(|ch| ch.is_alphanumeric()));
    if can_open && depth < MAX_INLINE_DEPTH {
        for l in (1..=n.min(3)).rev() {
            let content = i + n;
            if let Some(close) = find_closer(ctx, s, content, c, l) {
                // Unused opener characters stay literal.
                out.push_str(&s[i..i + n - l]);
                let (open_tag, close_tag) = match l {
                    1 => ("<em>", "</em>"),
                    2 => ("<strong>", "</strong>"),
                    _ => ("<em><strong>", "</strong></em>"),
                };
                out.push_str(open_tag);
                inline(ctx, &s[content..close], depth + 1, in_link, out);
                out.push_str(close_tag);
                return close + l;
            }
        }
    }
    out.push_str(&s[i..i + n]);
    i + n
}

fn strikethrough(
    ctx: &mut Ctx,
    s: &str,
    i: usize,
    depth: usize,
    in_link: bool,
    out: &mut String,
) -> usize {
    let b = s.as_bytes();
    let n = run_len(b, i, b'~');
    let next = s[i + n..].chars().next();
    if n == 2 && depth < MAX_INLINE_DEPTH && next.is_some_and(|ch| !ch.is_whitespace()) {
        if let Some(close) = find_closer(ctx, s, i + 2, b'~', 2) {
            out.push_str("<del>");
            inline(ctx, &s[i + 2..close], depth + 1, in_link, out);
            out.push_str("</del>");
            return close + 2;
        }
    }
    out.push_str(&s[i..i + n]);
    i + n
}

struct LinkParts {
    text_start: usize,
    text_end: usize,
    dest: String,
    title: Option<String>,
    end: usize,
}

fn skip_ws(b: &[u8], mut p: usize) -> usize {
    while p < b.len() && matches!(b[p], b' ' | b'\t' | b'\n') {
        p += 1;
    }
    p
}

/// Remove backslashes before ASCII punctuation.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&n) = chars.peek() {
                if n.is_ascii_punctuation() {
                    out.push(n);
                    chars.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

/// Parse `[text](dest "title")` with `[` at `open`.
fn parse_link(ctx: &mut Ctx, s: &str, open: usize) -> Option<LinkParts> {
    let b = s.as_bytes();
    let mut depth = 1usize;
    let mut j = open + 1;
    let close = loop {
        if j >= b.len() || !ctx.spend(1) {
            return None;
        }
        match b[j] {
            b'\\' => j += 2,
            b'`' => {
                let n = run_len(b, j, b'`');
                j = find_run(ctx, b, j + n, b'`', n).map_or(j + n, |e| e + n);
            }
            b'[' => {
                depth += 1;
                j += 1;
            }
            b']' => {
                depth -= 1;
                if depth == 0 {
                    break j;
                }
                j += 1;
            }
            _ => j += 1,
        }
    };
    if b.get(close + 1) != Some(&b'(') {
        return None;
    }
    let mut p = skip_ws(b, close + 2);
    let dest;
    if b.get(p) == Some(&b'<') {
        let start = p + 1;
        let mut q = start;
        loop {
            if q >= b.len() || !ctx.spend(1) {
                return None;
            }
            match b[q] {
                b'>' => break,
                b'\n' | b'<' => return None,
                b'\\' => q += 2,
                _ => q += 1,
            }
        }
        dest = unescape(&s[start..q]);
        p = q + 1;
    } else {
        let start = p;
        let mut parens = 0usize;
        while p < b.len() {
            if !ctx.spend(1) {
                return None;
            }
            match b[p] {
                b'\\' if b.get(p + 1).is_some_and(|c| c.is_ascii_punctuation()) => p += 2,
                c if c <= b' ' => break,
                b'(' => {
                    parens += 1;
                    if parens > MAX_LINK_PAREN_DEPTH {
                        return None;
                    }
                    p += 1;
                }
                b')' => {
                    if parens == 0 {
                        break;
                    }
                    parens -= 1;
                    p += 1;
                }
                _ => p += 1,
            }
        }
        if parens != 0 {
            return None;
        }
        dest = unescape(&s[start..p]);
    }
    let dest_end = p;
    p = skip_ws(b, p);
    let mut title = None;
    if let Some(&q) = b.get(p) {
        if p > dest_end && matches!(q, b'"' | b'\'' | b'(') {
            let closer = if q == b'(' { b')' } else { q };
            let start = p + 1;
            let mut r = start;
            loop {
                if r >= b.len() || !ctx.spend(1) {
                    return None;
                }
                let ch = b[r];
                if ch == b'\\' {
                    r += 2;
                    continue;
                }
                if ch == closer {
                    break;
                }
                if q == b'(' && ch == b'(' {
                    return None;
                }
                r += 1;
            }
            title = Some(unescape(&s[start..r]));
            p = skip_ws(b, r + 1);
        }
    }
    if b.get(p) != Some(&b')') {
        return None;
    }
    Some(LinkParts {
        text_start: open + 1,
        text_end: close,
        dest,
        title,
        end: p + 1,
    })
}

fn link(
    ctx: &mut Ctx,
    s: &str,
    i: usize,
    depth: usize,
    in_link: bool,
    out: &mut String,
) -> Option<usize> {
    if in_link || depth >= MAX_INLINE_DEPTH {
        return None;
    }
    let l = parse_link(ctx, s, i)?;
    out.push_str("<a href=\"");
    escape_into(safe_url(&l.dest), out);
    out.push('"');
    if let Some(t) = &l.title {
        out.push_str(" title=\"");
        escape_into(t, out);
        out.push('"');
    }
    out.push('>');
    inline(ctx, &s[l.text_start..l.text_end], depth + 1, true, out);
    out.push_str("</a>");
    Some(l.end)
}

fn image(ctx: &mut Ctx, s: &str, i: usize, depth: usize, out: &mut String) -> Option<usize> {
    if depth >= MAX_INLINE_DEPTH {
        return None;
    }
    let l = parse_link(ctx, s, i + 1)?;
    out.push_str("<img src=\"");
    escape_into(safe_url(&l.dest), out);
    out.push_str("\" alt=\"");
    escape_into(&unescape(&s[l.text_start..l.text_end]), out);
    out.push('"');
    if let Some(t) = &l.title {
        out.push_str(" title=\"");
        escape_into(t, out);
        out.push('"');
    }
    out.push_str(" />");
    Some(l.end)
}

/// `<scheme:rest>` autolink starting at `i`; returns the URL and end offset.
fn autolink(s: &str, i: usize) -> Option<(&str, usize)> {
    let b = s.as_bytes();
    let start = i + 1;
    let mut j = start;
    while j < b.len()
        && j - start <= 32
        && (b[j].is_ascii_alphanumeric() || matches!(b[j], b'+' | b'.' | b'-'))
    {
        j += 1;
    }
    let scheme_len = j - start;
    if !(2..=32).contains(&scheme_len) || !b[start].is_ascii_alphabetic() || b.get(j) != Some(&b':')
    {
        return None;
    }
    while j < b.len() {
        match b[j] {
            b'>' => return Some((&s[start..j], j + 1)),
            b'<' | 0..=b' ' => return None,
            _ => j += 1,
        }
    }
    None
}

/// Length of a character reference (`&amp;`, `&#123;`, `&#x1F600;`) at `i`.
fn entity_len(b: &[u8], i: usize) -> Option<usize> {
    let rest = &b[i + 1..];
    if rest.first() == Some(&b'#') {
        let hex = matches!(rest.get(1), Some(b'x' | b'X'));
        let digits = if hex { &rest[2..] } else { &rest[1..] };
        let n = digits
            .iter()
            .take(8)
            .take_while(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
            .count();
        let max = if hex { 6 } else { 7 };
        if (1..=max).contains(&n) && digits.get(n) == Some(&b';') {
            return Some(1 + (rest.len() - digits.len()) + n + 1);
        }
        None
    } else {
        let n = rest
            .iter()
            .take(33)
            .take_while(|c| c.is_ascii_alphanumeric())
            .count();
        if (2..=32).contains(&n) && rest[0].is_ascii_alphabetic() && rest.get(n) == Some(&b';') {
            Some(n + 2)
        } else {
            None
        }
    }
}

/// Neutralise script-capable URL schemes.
fn safe_url(url: &str) -> &str {
    let scheme: String = url
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase();
    if ["javascript:", "vbscript:", "data:", "file:"]
        .iter()
        .any(|bad| scheme.starts_with(bad))
    {
        "#"
    } else {
        url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(s: &str) -> String {
        render(s, Options::default())
    }

    fn md_no_tables(s: &str) -> String {
        render(s, Options { tables: false })
    }

    #[test]
    fn headings() {
        assert_eq!(md("# One"), "<h1>One</h1>\n");
        assert_eq!(md("###### Six"), "<h6>Six</h6>\n");
        assert_eq!(md("####### Seven"), "<p>####### Seven</p>\n");
        assert_eq!(md("#NoSpace"), "<p>#NoSpace</p>\n");
        assert_eq!(md("## Closed ##"), "<h2>Closed</h2>\n");
        assert_eq!(md("#"), "<h1></h1>\n");
        assert_eq!(md("Title\n====="), "<h1>Title</h1>\n");
        assert_eq!(md("Sub\n---"), "<h2>Sub</h2>\n");
        assert_eq!(md("# *em* title"), "<h1><em>em</em> title</h1>\n");
    }

    #[test]
    fn paragraphs_and_breaks() {
        assert_eq!(md("a\nb\n\nc"), "<p>a\nb</p>\n<p>c</p>\n");
        assert_eq!(md("a  \nb"), "<p>a<br />\nb</p>\n");
        assert_eq!(md("a\\\nb"), "<p>a<br />\nb</p>\n");
        assert_eq!(md("  indented para  "), "<p>indented para</p>\n");
        assert_eq!(md(""), "");
        assert_eq!(md("\n\n  \n"), "");
        assert_eq!(md("a\r\nb\rc"), "<p>a\nb\nc</p>\n");
    }

    #[test]
    fn emphasis_and_strong() {
        assert_eq!(md("**bold**"), "<p><strong>bold</strong></p>\n");
        assert_eq!(md("*em*"), "<p><em>em</em></p>\n");
        assert_eq!(
            md("__bold__ _em_"),
            "<p><strong>bold</strong> <em>em</em></p>\n"
        );
        assert_eq!(md("***both***"), "<p><em><strong>both</strong></em></p>\n");
        assert_eq!(
            md("*a **b** c*"),
            "<p><em>a <strong>b</strong> c</em></p>\n"
        );
        assert_eq!(
            md("**a *b* c**"),
            "<p><strong>a <em>b</em> c</strong></p>\n"
        );
        assert_eq!(md("**a*"), "<p>*<em>a</em></p>\n");
        assert_eq!(md("2 * 3 * 4"), "<p>2 * 3 * 4</p>\n");
        assert_eq!(md("snake_case_name"), "<p>snake_case_name</p>\n");
        assert_eq!(md("*unclosed"), "<p>*unclosed</p>\n");
        assert_eq!(md("~~gone~~"), "<p><del>gone</del></p>\n");
        assert_eq!(md("\\*not em\\*"), "<p>*not em*</p>\n");
    }

    #[test]
    fn code_spans() {
        assert_eq!(md("`code`"), "<p><code>code</code></p>\n");
        assert_eq!(md("`<b>&`"), "<p><code>&lt;b&gt;&amp;</code></p>\n");
        assert_eq!(md("`` a ` b ``"), "<p><code>a ` b</code></p>\n");
        assert_eq!(md("`*not em*`"), "<p><code>*not em*</code></p>\n");
        assert_eq!(md("`unclosed"), "<p>`unclosed</p>\n");
        assert_eq!(md("*a `*` b*"), "<p><em>a <code>*</code> b</em></p>\n");
    }

    #[test]
    fn fenced_code_blocks() {
        assert_eq!(
            md("```rust\nfn main() { println!(\"<hi>\"); }\n```"),
            "<pre><code class=\"language-rust\">fn main() { println!(&quot;&lt;hi&gt;&quot;); }\n</code></pre>\n"
        );
        assert_eq!(
            md("~~~\n# not heading\n\n*x*\n~~~"),
            "<pre><code># not heading\n\n*x*\n</code></pre>\n"
        );
        assert_eq!(md("```\nunclosed"), "<pre><code>unclosed\n</code></pre>\n");
        assert_eq!(md("````\n```\n````"), "<pre><code>```\n</code></pre>\n");
        assert_eq!(
            md("para\n```\ncode\n```"),
            "<p>para</p>\n<pre><code>code\n</code></pre>\n"
        );
        assert_eq!(
            md("    indented\n    code"),
            "<pre><code>indented\ncode\n</code></pre>\n"
        );
    }

    #[test]
    fn unordered_lists() {
        assert_eq!(md("- a\n- b"), "<ul>\n<li>a</li>\n<li>b</li>\n</ul>\n");
        assert_eq!(md("* a\n* b"), "<ul>\n<li>a</li>\n<li>b</li>\n</ul>\n");
        assert_eq!(
            md("- a\n\n- b"),
            "<ul>\n<li>\n<p>a</p>\n</li>\n<li>\n<p>b</p>\n</li>\n</ul>\n"
        );
        assert_eq!(
            md("- a\n  - b\n  - c\n- d"),
            "<ul>\n<li>a\n<ul>\n<li>b</li>\n<li>c</li>\n</ul></li>\n<li>d</li>\n</ul>\n"
        );
        assert_eq!(md("- a\ncontinued"), "<ul>\n<li>a\ncontinued</li>\n</ul>\n");
        assert_eq!(
            md("- a\n+ b"),
            "<ul>\n<li>a</li>\n</ul>\n<ul>\n<li>b</li>\n</ul>\n"
        );
        assert_eq!(
            md("para\n- item"),
            "<p>para</p>\n<ul>\n<li>item</li>\n</ul>\n"
        );
        assert_eq!(
            md("- **b** `c`"),
            "<ul>\n<li><strong>b</strong> <code>c</code></li>\n</ul>\n"
        );
    }

    #[test]
    fn ordered_lists() {
        assert_eq!(md("1. a\n2. b"), "<ol>\n<li>a</li>\n<li>b</li>\n</ol>\n");
        assert_eq!(
            md("3) a\n4) b"),
            "<ol start=\"3\">\n<li>a</li>\n<li>b</li>\n</ol>\n"
        );
        // An ordered list not starting at 1 cannot interrupt a paragraph.
        assert_eq!(md("see\n2. x"), "<p>see\n2. x</p>\n");
        assert_eq!(
            md("1. a\n   ```\n   code\n   ```"),
            "<ol>\n<li>a\n<pre><code>code\n</code></pre></li>\n</ol>\n"
        );
    }

    #[test]
    fn links_and_images() {
        assert_eq!(
            md("[t](http://x.io)"),
            "<p><a href=\"http://x.io\">t</a></p>\n"
        );
        assert_eq!(
            md("[**t**](/p?a=1&b=2 \"Ti\\\"tle\")"),
            "<p><a href=\"/p?a=1&amp;b=2\" title=\"Ti&quot;tle\"><strong>t</strong></a></p>\n"
        );
        assert_eq!(md("[a](x(y)z)"), "<p><a href=\"x(y)z\">a</a></p>\n");
        assert_eq!(
            md("[a](<with space>)"),
            "<p><a href=\"with space\">a</a></p>\n"
        );
        assert_eq!(md("[not a link] (x)"), "<p>[not a link] (x)</p>\n");
        assert_eq!(
            md("[a](javascript:alert(1))"),
            "<p><a href=\"#\">a</a></p>\n"
        );
        assert_eq!(
            md("[a](JaVa\tScRiPt:alert(1))"),
            "<p>[a](JaVa\tScRiPt:alert(1))</p>\n"
        );
        assert_eq!(
            md("![alt \"x\"](i.png)"),
            "<p><img src=\"i.png\" alt=\"alt &quot;x&quot;\" /></p>\n"
        );
        assert_eq!(
            md("[![b](i.svg)](http://c)"),
            "<p><a href=\"http://c\"><img src=\"i.svg\" alt=\"b\" /></a></p>\n"
        );
        assert_eq!(
            md("<https://e.com/a?b>"),
            "<p><a href=\"https://e.com/a?b\">https://e.com/a?b</a></p>\n"
        );
        assert_eq!(
            md("<javascript:alert(1)>"),
            "<p>&lt;javascript:alert(1)&gt;</p>\n"
        );
        assert_eq!(md("[[nested]](u)"), "<p><a href=\"u\">[nested]</a></p>\n");
        assert_eq!(
            md("[a [b](c) d](e)"),
            "<p><a href=\"e\">a [b](c) d</a></p>\n"
        );
    }

    #[test]
    fn blockquotes() {
        assert_eq!(md("> quote"), "<blockquote>\n<p>quote</p>\n</blockquote>\n");
        assert_eq!(
            md("> a\nlazy"),
            "<blockquote>\n<p>a\nlazy</p>\n</blockquote>\n"
        );
        assert_eq!(
            md("> # h\n>\n> > inner"),
            "<blockquote>\n<h1>h</h1>\n<blockquote>\n<p>inner</p>\n</blockquote>\n</blockquote>\n"
        );
        assert_eq!(
            md("> - a\n> - b"),
            "<blockquote>\n<ul>\n<li>a</li>\n<li>b</li>\n</ul>\n</blockquote>\n"
        );
    }

    #[test]
    fn horizontal_rules() {
        assert_eq!(md("---"), "<hr />\n");
        assert_eq!(md("* * *"), "<hr />\n");
        assert_eq!(md("___"), "<hr />\n");
        assert_eq!(md("a\n\n---\n\nb"), "<p>a</p>\n<hr />\n<p>b</p>\n");
        assert_eq!(md("--"), "<p>--</p>\n");
        assert_eq!(md("- a\n- - -"), "<ul>\n<li>a</li>\n</ul>\n<hr />\n");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            md("<script>alert('x')</script> & \"q\""),
            "<p>&lt;script&gt;alert('x')&lt;/script&gt; &amp; &quot;q&quot;</p>\n"
        );
        assert_eq!(
            md("# <img src=x onerror=alert(1)>"),
            "<h1>&lt;img src=x onerror=alert(1)&gt;</h1>\n"
        );
        assert_eq!(
            md("&copy; &#169; &#xA9; &nope"),
            "<p>&copy; &#169; &#xA9; &amp;nope</p>\n"
        );
        assert_eq!(
            md("[x](\"onmouseover=\"alert(1))"),
            "<p><a href=\"&quot;onmouseover=&quot;alert(1)\">x</a></p>\n"
        );
        assert_eq!(md("héllo wörld ✓"), "<p>héllo wörld ✓</p>\n");
        assert_eq!(md("a\0b"), "<p>a\u{FFFD}b</p>\n");
    }

    const TABLE: &str =
        "| Name | Qty | Note |\n|:-----|----:|:----:|\n| *a* | 1 | x \\| y |\n| b | 2 |\n";

    #[test]
    fn tables_enabled() {
        assert_eq!(
            md(TABLE),
            "<table>\n<thead>\n<tr>\n<th align=\"left\">Name</th>\n<th align=\"right\">Qty</th>\n\
             <th align=\"center\">Note</th>\n</tr>\n</thead>\n<tbody>\n\
             <tr>\n<td align=\"left\"><em>a</em></td>\n<td align=\"right\">1</td>\n<td align=\"center\">x | y</td>\n</tr>\n\
             <tr>\n<td align=\"left\">b</td>\n<td align=\"right\">2</td>\n<td align=\"center\"></td>\n</tr>\n\
             </tbody>\n</table>\n"
        );
        assert_eq!(
            md("a | b\n--- | ---"),
            "<table>\n<thead>\n<tr>\n<th>a</th>\n<th>b</th>\n</tr>\n</thead>\n</table>\n"
        );
        // Table ends at a blank line; a paragraph line before it stays a paragraph.
        let html = md("intro\n| a |\n|---|\n| 1 |\n\nafter");
        assert!(html.starts_with("<p>intro</p>\n<table>"), "{html}");
        assert!(html.ends_with("</table>\n<p>after</p>\n"), "{html}");
        // Mismatched delimiter row: not a table.
        assert_eq!(md("| a | b |\n|---|"), "<p>| a | b |\n|---|</p>\n");
    }

    #[test]
    fn tables_disabled() {
        let html = md_no_tables(TABLE);
        assert!(!html.contains("<table>"), "{html}");
        assert!(
            html.starts_with("<p>| Name | Qty | Note |\n|:-----|----:|:----:|\n| <em>a</em> |"),
            "{html}"
        );
    }

    #[test]
    fn pathological_input_is_bounded() {
        // These would be quadratic (or overflow the stack) without the limits.
        let inputs = [
            "*a ".repeat(100_000),
            "[".repeat(200_000),
            "[a](b ((".repeat(50_000),
            "`a``".repeat(100_000),
            ">".repeat(100_000),
            "- ".repeat(50_000) + "x",
            "**".repeat(100_000) + "x",
        ];
        for input in &inputs {
            let html = md(input);
            assert!(!html.is_empty());
        }
        // Padding cells of short rows are bounded as well.
        let wide = format!(
            "{}\n{}\n{}",
            "|a".repeat(128),
            "|-".repeat(128),
            "x\n".repeat(100_000)
        );
        assert!(md(&wide).len() < 16 * wide.len());
    }
}
