//! What went wrong in an inventory, where (`file:line:col`) and what to do about it.

use std::fmt;

/// The kind of mistake, for callers that decide by it (never by the message's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read (the OS error is in the message).
    Unreadable,
    /// Not UTF-8 outside a comment line.
    Encoding,
    /// A `[...]` line that is no valid section header, or one of an unknown type.
    Section,
    /// A host range (`web[01:05]`) that cannot be expanded.
    Range,
    /// A host pattern that is no host name (empty, ends in `:`, a YAML marker).
    HostPattern,
    /// Unbalanced quotes or a trailing backslash on a host line.
    Quoting,
    /// A word after a host that is not `key=value`.
    HostVariable,
    /// A `[g:vars]` line without `=`.
    GroupVariable,
    /// A host listed twice in one group.
    DuplicateHost,
    /// One host given two different values for one variable on two lines.
    ConflictingHostVariable,
    /// A `[g:children]` entry that is no group name.
    ChildName,
    /// A `[g:children]` entry naming a group the file never defines.
    UndefinedChild,
    /// `[g:vars]` for a group the file never defines.
    UndefinedGroup,
    /// Groups that contain each other.
    ChildCycle,
    /// A connection variable of the wrong type or range (`ansible_port`, `ansible_become`, ...).
    ConnectionVariable,
    /// A group a caller needs that the inventory lacks.
    UnknownGroup,
}

/// One error, located in its file when it has a place there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InventoryError {
    kind: ErrorKind,
    details: Box<Details>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Details {
    file: String,
    line: Option<usize>,
    column: Option<usize>,
    line_text: Option<String>,
    message: String,
    help: Option<String>,
}

impl InventoryError {
    pub(crate) fn new(kind: ErrorKind, file: &str, message: impl Into<String>) -> InventoryError {
        InventoryError {
            kind,
            details: Box::new(Details {
                file: file.to_string(),
                line: None,
                column: None,
                line_text: None,
                message: message.into(),
                help: None,
            }),
        }
    }

    pub(crate) fn at(mut self, line: usize, column: Option<usize>, text: &str) -> InventoryError {
        self.details.line = Some(line);
        self.details.column = column;
        self.details.line_text = Some(text.to_string());
        self
    }

    pub(crate) fn help(mut self, help: impl Into<String>) -> InventoryError {
        self.details.help = Some(help.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The inventory as the user named it (a path, or the name given to `parse`).
    pub fn file(&self) -> &str {
        &self.details.file
    }

    /// 1-based line, when the error has one.
    pub fn line(&self) -> Option<usize> {
        self.details.line
    }

    /// 1-based column in characters, when it helps.
    pub fn column(&self) -> Option<usize> {
        self.details.column
    }

    /// The source line, for a caret under `column`.
    pub fn line_text(&self) -> Option<&str> {
        self.details.line_text.as_deref()
    }

    /// What is wrong, without the place.
    pub fn message(&self) -> &str {
        &self.details.message
    }

    /// What to do about it.
    pub fn help_text(&self) -> Option<&str> {
        self.details.help.as_deref()
    }

    /// `file:line:col`, `file:line` or `file`: where to look.
    pub fn location(&self) -> String {
        let d = &self.details;
        match (d.line, d.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}", d.file),
            (Some(l), None) => format!("{}:{l}", d.file),
            _ => d.file.clone(),
        }
    }
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.details;
        write!(f, "{}: {}", escape(&self.location()), escape(&d.message))?;
        if let (Some(line), Some(text)) = (d.line, &d.line_text) {
            let gutter = line.to_string();
            write!(f, "\n {gutter} | {}", escape(text))?;
            if let Some(col) = d.column {
                let pad = " ".repeat(gutter.len());
                // The caret goes under the escaped text, so it counts escaped characters.
                let before: String = text.chars().take(col.saturating_sub(1)).collect();
                let indent: String = escape(&before)
                    .chars()
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                write!(f, "\n {pad} | {indent}^")?;
            }
        }
        if let Some(help) = &d.help {
            write!(f, "\n  help: {}", escape(help))?;
        }
        Ok(())
    }
}

/// Characters that would act on a terminal (ESC, CR, bidirectional overrides) shown as escapes.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let acts = (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if acts {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
