//! What `terraform validate -json` found: whether the configuration is valid, and each
//! diagnostic with its summary, detail and place, to reject a bad template before it runs.

use std::fmt;

use serde::Deserialize;

/// The result of `terraform validate -json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validation {
    pub valid: bool,
    pub diagnostics: Vec<ValidationDiagnostic>,
}

/// One error or warning.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ValidationDiagnostic {
    /// `error` or `warning`.
    pub severity: String,
    pub summary: String,
    pub detail: String,
    /// The file it points into, relative to the directory validated; `None` when it has no
    /// place (a missing provider, a module not installed).
    pub filename: Option<String>,
    pub line: Option<u64>,
    pub column: Option<u64>,
}

impl Validation {
    pub fn errors(&self) -> impl Iterator<Item = &ValidationDiagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

impl ValidationDiagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == "error"
    }
}

impl fmt::Display for ValidationDiagnostic {
    /// `main.tf:2:11: error: Summary: detail`, the place and the detail when there are ones.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.filename {
            write!(f, "{file}:")?;
            if let Some(line) = self.line {
                write!(f, "{line}:")?;
                if let Some(column) = self.column {
                    write!(f, "{column}:")?;
                }
            }
            f.write_str(" ")?;
        }
        write!(f, "{}: {}", self.severity, self.summary)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct RawValidation {
    valid: bool,
    #[serde(default)]
    diagnostics: Vec<RawDiagnostic>,
}

#[derive(Deserialize)]
struct RawDiagnostic {
    severity: String,
    summary: String,
    #[serde(default)]
    detail: String,
    range: Option<RawRange>,
}

#[derive(Deserialize)]
struct RawRange {
    filename: String,
    start: RawPos,
}

#[derive(Deserialize)]
struct RawPos {
    line: u64,
    column: u64,
}

/// Reads the JSON that `terraform validate -json` prints. Snippets, which can quote the
/// configuration, are left out.
pub fn parse_validation(json: &[u8]) -> Result<Validation, serde_json::Error> {
    let raw: RawValidation = serde_json::from_slice(json)?;
    Ok(Validation {
        valid: raw.valid,
        diagnostics: raw
            .diagnostics
            .into_iter()
            .map(|d| {
                let (filename, line, column) = match d.range {
                    Some(r) => (Some(r.filename), Some(r.start.line), Some(r.start.column)),
                    None => (None, None, None),
                };
                ValidationDiagnostic {
                    severity: d.severity,
                    summary: d.summary,
                    detail: d.detail,
                    filename,
                    line,
                    column,
                }
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_are_read_with_their_place() {
        let json = br#"{
          "format_version": "1.0", "valid": false, "error_count": 1, "warning_count": 1,
          "diagnostics": [
            {"severity": "error", "summary": "Reference to undeclared input variable",
             "detail": "An input variable with the name \"missing\" has not been declared.",
             "range": {"filename": "main.tf", "start": {"line": 2, "column": 11, "byte": 42},
                       "end": {"line": 2, "column": 22, "byte": 53}},
             "snippet": {"context": null, "code": "  input = var.missing", "start_line": 2,
                         "highlight_start_offset": 10, "highlight_end_offset": 21, "values": []}},
            {"severity": "warning", "summary": "Deprecated", "detail": ""}
          ]}"#;
        let validation = parse_validation(json).unwrap();
        assert!(!validation.valid);
        let shown: Vec<String> = validation.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "main.tf:2:11: error: Reference to undeclared input variable: An input variable with the name \"missing\" has not been declared.",
                "warning: Deprecated",
            ]
        );
        assert_eq!(validation.errors().count(), 1);

        let valid = parse_validation(
            br#"{"format_version":"1.0","valid":true,"error_count":0,"warning_count":0,"diagnostics":[]}"#,
        );
        assert_eq!(valid.unwrap(), Validation { valid: true, diagnostics: vec![] });
        assert!(parse_validation(b"not json").is_err());
    }
}
