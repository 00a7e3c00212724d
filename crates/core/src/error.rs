//! Errors that reach users: a stable code, an HTTP status and a sentence that says what to do,
//! plus diagnostics that point at a file, line and column.

use std::fmt;
use std::ops::Range;

/// Implemented by every error that can reach a user, whether through the CLI or the API.
///
/// The code is stable: scripts and API clients match on it. The help sentence tells the user
/// what to do next; it never repeats the message.
pub trait ErrorCode {
    /// A stable, dotted identifier such as `config.unknown_stack`.
    fn code(&self) -> &'static str;
    /// The HTTP status the API answers with.
    fn http_status(&self) -> u16;
    /// One sentence telling the user what to do about it.
    fn help(&self) -> String;
}

/// How bad a diagnostic is. Warnings never make a command fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// A file whose text diagnostics point into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// A 1-based line and column (counted in characters) in a [`SourceFile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self { name: name.into(), text: text.into() }
    }

    /// The line and column of a byte offset. Offsets past the end point just after the last
    /// character; offsets inside a character point at it.
    pub fn position(&self, offset: usize) -> Position {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Position { line, column }
    }

    /// The text of a 1-based line, without its line ending.
    fn line_text(&self, line: usize) -> &str {
        self.text.lines().nth(line.saturating_sub(1)).unwrap_or("")
    }
}

/// One finding about a file: an error or a warning, where it is, and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    /// Byte range in the source file, when the finding has a place.
    pub span: Option<Range<usize>>,
    pub help: String,
    /// Further places worth showing, such as the first definition of a duplicate.
    pub notes: Vec<Note>,
}

/// A secondary place attached to a [`Diagnostic`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            span: None,
            help: String::new(),
            notes: Vec::new(),
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, ..Self::error(code, message) }
    }

    pub fn at(mut self, span: Range<usize>) -> Self {
        self.span = Some(span);
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = help.into();
        self
    }

    pub fn note(mut self, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        self.notes.push(Note { span, message: message.into() });
        self
    }
}

/// Every diagnostic found in one file, with the file so that they can be rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics {
    pub file: SourceFile,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(file: SourceFile) -> Self {
        Self { file, items: Vec::new() }
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.items.push(diagnostic);
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Warning)
    }

    /// Sorts by position, errors before warnings at the same place, so output is stable.
    pub fn sort(&mut self) {
        self.items.sort_by(|a, b| {
            let key = |d: &Diagnostic| (d.span.as_ref().map_or(usize::MAX, |s| s.start), d.severity);
            key(a).cmp(&key(b)).then_with(|| a.message.cmp(&b.message))
        });
        self.items.dedup();
    }

    /// Where a diagnostic points, as `file:line:column`.
    pub fn location(&self, diagnostic: &Diagnostic) -> String {
        match &diagnostic.span {
            Some(span) => {
                let p = self.file.position(span.start);
                format!("{}:{}:{}", self.file.name, p.line, p.column)
            }
            None => self.file.name.clone(),
        }
    }

    /// The diagnostics as plain data, for `--output json` and the API.
    pub fn to_json(&self) -> Vec<DiagnosticJson> {
        self.items
            .iter()
            .map(|d| {
                let position = d.span.as_ref().map(|s| self.file.position(s.start));
                DiagnosticJson {
                    severity: match d.severity {
                        Severity::Error => "error",
                        Severity::Warning => "warning",
                    },
                    code: d.code,
                    message: d.message.clone(),
                    file: self.file.name.clone(),
                    line: position.map(|p| p.line),
                    column: position.map(|p| p.column),
                    help: d.help.clone(),
                }
            })
            .collect()
    }

    fn render_one(&self, d: &Diagnostic, out: &mut String) {
        use fmt::Write as _;
        let label = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{label}[{}]: {}", d.code, d.message);
        let _ = writeln!(out, "  --> {}", self.location(d));
        if let Some(span) = &d.span {
            self.render_snippet(span, out);
        }
        for note in &d.notes {
            match &note.span {
                Some(span) => {
                    let p = self.file.position(span.start);
                    let _ = writeln!(out, "  note: {} ({}:{}:{})", note.message, self.file.name, p.line, p.column);
                    self.render_snippet(span, out);
                }
                None => {
                    let _ = writeln!(out, "  note: {}", note.message);
                }
            }
        }
        if !d.help.is_empty() {
            let _ = writeln!(out, "  help: {}", d.help);
        }
    }

    fn render_snippet(&self, span: &Range<usize>, out: &mut String) {
        use fmt::Write as _;
        let start = self.file.position(span.start);
        let end = self.file.position(span.end.max(span.start));
        let text = self.file.line_text(start.line);
        let width = start.line.to_string().len();
        let underline_len = if end.line == start.line {
            end.column.saturating_sub(start.column).max(1)
        } else {
            text.chars().count().saturating_sub(start.column - 1).max(1)
        };
        let _ = writeln!(out, "{:width$} |", "");
        let _ = writeln!(out, "{} | {}", start.line, text);
        let _ = writeln!(out, "{:width$} | {}{}", "", " ".repeat(start.column - 1), "^".repeat(underline_len));
    }
}

/// A diagnostic as plain data.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DiagnosticJson {
    pub severity: &'static str,
    pub code: &'static str,
    pub message: String,
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub help: String,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            self.render_one(d, &mut out);
        }
        f.write_str(out.trim_end())
    }
}

impl std::error::Error for Diagnostics {}

impl ErrorCode for Diagnostics {
    fn code(&self) -> &'static str {
        self.errors().next().map_or("config.invalid", |d| d.code)
    }

    fn http_status(&self) -> u16 {
        422
    }

    fn help(&self) -> String {
        format!("Fix the errors in {} listed above, then run `plinth check`.", self.file.name)
    }
}
