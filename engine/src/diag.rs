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
}

impl SourceFile {
    pub fn new(path: &Path, text: String) -> Arc<SourceFile> {
        let display = display_path(path);
        Arc::new(SourceFile {
            path: path.to_path_buf(),
            display,
            text,
        })
    }

    pub fn location(&self, range: std::ops::Range<usize>) -> Location {
        let start = range.start.min(self.text.len());
        let end = range.end.clamp(start, self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        let line_no = self.text[..start].matches('\n').count() + 1;
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
}

impl Diagnostic {
    pub fn new(summary: impl Into<String>) -> Diagnostic {
        Diagnostic {
            summary: summary.into(),
            detail: None,
            help: None,
            at: None,
        }
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
        writeln!(f, "error: {}", self.summary)?;
        if let Some(at) = &self.at {
            let num = at.line.to_string();
            let pad = " ".repeat(num.len());
            writeln!(f, "{pad}--> {at}")?;
            writeln!(f, "{pad} |")?;
            writeln!(f, "{num} | {}", at.line_text)?;
            let lead: String = at
                .line_text
                .chars()
                .take(at.col - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            writeln!(f, "{pad} | {lead}{}", "^".repeat(at.width))?;
        }
        if let Some(d) = &self.detail {
            for l in d.lines() {
                writeln!(f, "  {l}")?;
            }
        }
        if let Some(h) = &self.help {
            writeln!(f, "  = help: {h}")?;
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
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
