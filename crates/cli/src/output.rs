//! How commands speak: text for people, JSON for scripts, and errors with a code and advice.

use std::fmt::Display;
use std::io::Write;

/// `println!` for command output: a closed pipe (`plinth audit | head`) ends the process
/// quietly instead of panicking, and any other write error is reported once.
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for command output, with the same handling of a closed pipe as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

/// Writes command output to stdout. When the reader has gone away the command has nothing
/// left to do, so the process exits with 0 (as ripgrep does); other errors exit with 1.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error[cli.stdout]: could not write the output: {e}\n  help: check the file or pipe stdout goes to");
        std::process::exit(1);
    }
}

use plinth_core::{Diagnostics, ErrorCode};

/// The `--output` choice shared by every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// A command that could not do its job. Printed to stderr; the process exits with 1.
#[derive(Debug)]
pub struct Failure {
    text: String,
    json: serde_json::Value,
    format: Format,
}

impl Failure {
    /// An error that carries a stable code and advice.
    pub fn coded<E: ErrorCode + Display>(e: &E, format: Format) -> Self {
        let help = e.help();
        Failure {
            text: format!("error[{}]: {e}\n  help: {help}", e.code()),
            json: serde_json::json!({"error": {"code": e.code(), "message": e.to_string(), "help": help}}),
            format,
        }
    }

    /// Config or mapping errors, each with its file:line:column.
    pub fn diagnostics(d: &Diagnostics, format: Format) -> Self {
        Failure {
            text: d.to_string(),
            json: serde_json::json!({"error": {"code": d.code(), "message": "the file has errors", "help": d.help(),
                                     "diagnostics": d.to_json()}}),
            format,
        }
    }

    /// A plain problem with a code of our own, such as a file that would be overwritten.
    pub fn new(code: &'static str, message: impl Into<String>, help: impl Into<String>, format: Format) -> Self {
        let (message, help) = (message.into(), help.into());
        Failure {
            text: format!("error[{code}]: {message}\n  help: {help}"),
            json: serde_json::json!({"error": {"code": code, "message": message, "help": help}}),
            format,
        }
    }

    pub fn print(&self) {
        match self.format {
            Format::Text => eprintln!("{}", self.text),
            Format::Json => eprintln!("{}", self.json),
        }
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => outln!("{text}"),
        Err(e) => eprintln!("error: could not encode the output as JSON: {e}"),
    }
}

/// Lays out rows as aligned columns; the last column is never padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}
