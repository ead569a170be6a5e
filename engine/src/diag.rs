//! Diagnostics that name their source: `file:line:col`, the line itself, a caret and a help line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One loaded stack or module file, kept whole so any error can point into it.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub display: String,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    /// A leading UTF-8 byte order mark (some editors write one) is not part of the text:
    /// dropped here, where all source text enters, so parsing and columns start after it.
    pub fn new(path: &Path, text: String) -> Arc<SourceFile> {
        let text = match text.strip_prefix(BOM) {
            Some(rest) => rest.to_string(),
            None => text,
        };
        let display = display_path(path);
        // Byte offset of every line start: a location is a binary search, not a scan.
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Arc::new(SourceFile {
            path: path.to_path_buf(),
            display,
            text,
            line_starts,
        })
    }

    pub fn location(&self, range: std::ops::Range<usize>) -> Location {
        let mut start = range.start.min(self.text.len());
        while !self.text.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = range.end.clamp(start, self.text.len());
        while !self.text.is_char_boundary(end) {
            end += 1;
        }
        let line_idx = self.line_starts.partition_point(|&s| s <= start) - 1;
        let line_start = self.line_starts[line_idx];
        let line_end = self
            .line_starts
            .get(line_idx + 1)
            .map_or(self.text.len(), |&next| next - 1);
        let line_no = line_idx + 1;
        let col = self.text[line_start..start].chars().count() + 1;
        let width = self.text[start..end.min(line_end).max(start)]
            .chars()
            .count()
            .max(1);
        Location {
            file: self.display.clone(),
            line: line_no,
            col,
            line_text: self.text[line_start..line_end].to_string(),
            width,
        }
    }
}

/// The UTF-8 byte order mark.
pub const BOM: char = '\u{feff}';

/// Characters that would act on a terminal rather than show: controls (ESC, CR, BEL, NUL...) and
/// the bidirectional overrides that make text read differently from what it is.
fn acts_on_terminal(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text safe to print: each character that would act on a terminal is written as its escape
/// (`\u{1b}`, `\r`, `\0`); newlines and tabs stay. Every diagnostic goes through this.
pub fn escape_control(s: &str) -> String {
    if !s.chars().any(acts_on_terminal) {
        return s.to_string();
    }
    s.chars().map(escape_char).collect()
}

fn escape_char(c: char) -> String {
    if acts_on_terminal(c) {
        c.escape_default().to_string()
    } else {
        c.to_string()
    }
}

/// A path shown relative to the current directory when it is below it.
pub fn display_path(path: &Path) -> String {
    if let Ok(cwd) = std::env::current_dir() {
        if let Ok(rel) = path.strip_prefix(&cwd) {
            return rel.display().to_string();
        }
    }
    path.display().to_string()
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub col: usize,
    #[serde(skip)]
    pub line_text: String,
    #[serde(skip)]
    pub width: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Diagnostic {
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<Location>,
    /// Only repeats a failure reported by another diagnostic ("var.x could not be evaluated"):
    /// hidden when that other diagnostic is shown.
    #[serde(skip)]
    pub secondary: bool,
}

impl Diagnostic {
    pub fn new(summary: impl Into<String>) -> Diagnostic {
        Diagnostic {
            summary: summary.into(),
            detail: None,
            help: None,
            at: None,
            secondary: false,
        }
    }
    pub fn secondary(mut self) -> Self {
        self.secondary = true;
        self
    }
    pub fn at(mut self, loc: Option<Location>) -> Self {
        if self.at.is_none() {
            self.at = loc;
        }
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Source text and values reach the terminal escaped (invariant 4 holds for hostile text).
        writeln!(f, "error: {}", escape_control(&self.summary))?;
        if let Some(at) = &self.at {
            let num = at.line.to_string();
            let pad = " ".repeat(num.len());
            writeln!(f, "{pad}--> {}", escape_control(&at.to_string()))?;
            writeln!(f, "{pad} |")?;
            // The caret goes under the escaped text: an escape is as wide as it is written.
            let (mut line, mut lead, mut caret) = (String::new(), String::new(), 0);
            for (i, c) in at.line_text.chars().enumerate() {
                let shown = escape_char(c);
                if i + 1 < at.col {
                    lead.extend(shown.chars().map(|x| if x == '\t' { '\t' } else { ' ' }));
                } else if i + 1 < at.col + at.width {
                    caret += shown.chars().count();
                }
                line.push_str(&shown);
            }
            writeln!(f, "{num} | {line}")?;
            writeln!(f, "{pad} | {lead}{}", "^".repeat(caret.max(1)))?;
        }
        if let Some(d) = &self.detail {
            for l in escape_control(d).lines() {
                writeln!(f, "  {l}")?;
            }
        }
        if let Some(h) = &self.help {
            writeln!(f, "  = help: {}", escape_control(h))?;
        }
        Ok(())
    }
}

/// A batch of diagnostics: the result of a failed load, validation or evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn into_result(self) -> Result<(), Diagnostics> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let any_primary = self.0.iter().any(|d| !d.secondary);
        let shown = self.0.iter().filter(|d| !(any_primary && d.secondary));
        for (i, d) in shown.enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// The candidate closest to `name` when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = match name.chars().count() {
        0..=2 => 1,
        3..=5 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| {
            let d = edit_distance(&name.to_lowercase(), &c.to_lowercase());
            // "uppercase" for "upper", "len" for "length": one contains the other.
            let contained =
                c.len() >= 3 && name.len() >= 3 && (name.contains(c) || c.contains(name));
            (if contained { d.min(limit) } else { d }, c)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("contnet", ["path", "content"]),
            Some("content")
        );
        assert_eq!(
            did_you_mean("servce", ["host", "file", "service"]),
            Some("service")
        );
        assert_eq!(did_you_mean("uppercase", ["upper", "lower"]), Some("upper"));
        assert_eq!(did_you_mean("zzz", ["upper", "lower"]), None);
        assert_eq!(did_you_mean("a", ["b"]), Some("b"));
        assert_eq!(did_you_mean("ab", ["xy"]), None);
    }

    #[test]
    fn secondary_diagnostics_hide_behind_the_cause() {
        let d = Diagnostics(vec![
            Diagnostic::new("the cause").help("fix it"),
            Diagnostic::new("a consequence").secondary(),
        ]);
        let s = d.to_string();
        assert!(
            s.contains("the cause") && !s.contains("a consequence"),
            "{s}"
        );
        let only = Diagnostics(vec![Diagnostic::new("a consequence").secondary()]);
        assert!(only.to_string().contains("a consequence"));
    }

    #[test]
    fn location_and_caret() {
        let f = SourceFile::new(Path::new("x.hcl"), "a = 1\nbb = \"zz\"\n".into());
        let l = f.location(11..15);
        assert_eq!((l.line, l.col, l.width), (2, 6, 4));
        // Ranges inside a multi-byte character widen to the whole character.
        let u = SourceFile::new(Path::new("u.hcl"), "é = 1".into());
        assert_eq!(u.location(1..2).width, 1);
        let d = Diagnostic::new("bad").at(Some(l)).help("h");
        assert_eq!(
            d.to_string(),
            "error: bad\n --> x.hcl:2:6\n  |\n2 | bb = \"zz\"\n  |      ^^^^\n  = help: h\n"
        );
    }
}
