//! Compatibility with the CircleCI path-filtering orb: its mapping lines
//! (`<path-regex> <parameter> <json-value> [config-file]`) and the parameters JSON it writes,
//! so that a team can move off the orb one step at a time.

use std::fmt::Write as _;

use crate::error::{Diagnostic, Diagnostics, SourceFile};

/// One mapping line.
#[derive(Clone, Debug)]
struct Rule {
    regex: regex::Regex,
    parameter: String,
    value: serde_json::Value,
    config_file: Option<String>,
}

/// A parsed mapping file.
#[derive(Clone, Debug)]
pub struct Mapping {
    rules: Vec<Rule>,
}

/// What a mapping yields for a set of changed paths.
#[derive(Clone, Debug, PartialEq)]
pub struct MappingResult {
    /// Parameters in the order the orb's Python dict would hold them: the first line that sets
    /// a parameter fixes its place, the last one its value.
    pub parameters: Vec<(String, serde_json::Value)>,
    /// Config files named by matching lines (the orb's four-column form).
    pub config_files: Vec<String>,
}

impl Mapping {
    /// Parses mapping text the way the orb does: whitespace-separated columns, blank lines and
    /// `#` comments skipped, every line with as many columns as the first (3 or 4). Unlike the
    /// orb, every regex and JSON value is checked up front, not only those that match.
    pub fn parse(file_name: &str, text: &str) -> Result<Mapping, Diagnostics> {
        let mut diagnostics = Diagnostics::new(SourceFile::new(file_name, text));
        let mut rules = Vec::new();
        let mut columns: Option<usize> = None;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let start = offset;
            offset += line.len();
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<(usize, &str)> = split_whitespace_with_offsets(line).map(|(i, f)| (start + i, f)).collect();
            let expected = *columns.get_or_insert(fields.len());
            let line_span = start..start + line.trim_end().len();
            if !(expected == 3 || expected == 4) {
                diagnostics.push(
                    Diagnostic::error(
                        "mapping.columns",
                        format!("a mapping line has {expected} fields; the orb takes 3 or 4"),
                    )
                    .at(line_span)
                    .help("write `<path-regex> <parameter> <json-value>`, optionally followed by a config file"),
                );
                break;
            }
            if fields.len() != expected {
                diagnostics.push(
                    Diagnostic::error(
                        "mapping.columns",
                        format!("expected {expected} fields, like the first line, but found {}", fields.len()),
                    )
                    .at(line_span)
                    .help("give every line the same number of fields; JSON values cannot contain spaces"),
                );
                continue;
            }
            let (regex_at, pattern) = fields[0];
            // The orb compiles '^' + regex + '$' and calls Python's re.match, which also anchors
            // at the start; the outer \A reproduces that for alternations.
            let regex = match regex::Regex::new(&format!(r"\A(?:^{pattern}$)")) {
                Ok(r) => r,
                Err(e) => {
                    diagnostics.push(
                        Diagnostic::error("mapping.invalid_regex", format!("`{pattern}` is not a regex plinth can use: {}", first_line(&e.to_string())))
                            .at(regex_at..regex_at + pattern.len())
                            .help("plinth uses Rust regex syntax, which lacks Python's look-around and backreferences; rewrite the pattern without them"),
                    );
                    continue;
                }
            };
            let (value_at, raw_value) = fields[2];
            let value: serde_json::Value = match serde_json::from_str(raw_value) {
                Ok(v) => v,
                Err(e) => {
                    diagnostics.push(
                        Diagnostic::error("mapping.invalid_value", format!("`{raw_value}` is not a JSON value: {e}"))
                            .at(value_at..value_at + raw_value.len())
                            .help("write a JSON literal such as `true`, `1` or `\"text\"` (strings keep their quotes)"),
                    );
                    continue;
                }
            };
            rules.push(Rule {
                regex,
                parameter: fields[1].1.to_owned(),
                value,
                config_file: fields.get(3).map(|(_, f)| (*f).to_owned()),
            });
        }
        if columns.is_none() {
            diagnostics.push(
                Diagnostic::error("mapping.empty", "the mapping has no lines")
                    .help("add lines such as `terraform/stg/.* run-stg true`"),
            );
        }
        if diagnostics.has_errors() {
            return Err(diagnostics);
        }
        Ok(Mapping { rules })
    }

    /// Evaluates the mapping against changed paths.
    pub fn evaluate<S: AsRef<str>>(&self, changed: &[S]) -> MappingResult {
        let mut result = MappingResult { parameters: Vec::new(), config_files: Vec::new() };
        for rule in &self.rules {
            if !changed.iter().any(|c| rule.regex.is_match(c.as_ref())) {
                continue;
            }
            match result.parameters.iter_mut().find(|(p, _)| *p == rule.parameter) {
                Some(existing) => existing.1 = rule.value.clone(),
                None => result.parameters.push((rule.parameter.clone(), rule.value.clone())),
            }
            if let Some(file) = &rule.config_file
                && !result.config_files.contains(file)
            {
                result.config_files.push(file.clone());
            }
        }
        result
    }
}

impl MappingResult {
    /// The parameters as the orb writes them: Python's `json.dumps` of a dict.
    pub fn to_orb_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (name, value)) in self.parameters.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            python_string(name, &mut out);
            out.push_str(": ");
            python_json(value, &mut out);
        }
        out.push('}');
        out
    }
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim()
}

fn split_whitespace_with_offsets(line: &str) -> impl Iterator<Item = (usize, &str)> {
    line.split(char::is_whitespace)
        .scan(0usize, |pos, field| {
            let at = *pos;
            *pos += field.len() + 1;
            Some((at, field))
        })
        .filter(|(_, f)| !f.is_empty())
}

/// Writes a value the way Python's `json.dumps` does with its defaults: `", "` and `": "` as
/// separators and non-ASCII characters escaped.
pub fn python_json(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Null => out.push_str("null"),
        serde_json::Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        serde_json::Value::Number(n) => out.push_str(&n.to_string()),
        serde_json::Value::String(s) => python_string(s, out),
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_json(item, out);
            }
            out.push(']');
        }
        serde_json::Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_string(k, out);
                out.push_str(": ");
                python_json(v, out);
            }
            out.push('}');
        }
    }
}

fn python_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(mapping: &str, changed: &[&str]) -> String {
        Mapping::parse("mapping", mapping).unwrap().evaluate(changed).to_orb_json()
    }

    #[test]
    fn mappings_evaluate_like_the_orb() {
        let mapping = "\
# seed 000
terraform/stg/.* run-stg true
terraform/prd/.* run-prd true

modules/.* run-stg true
modules/.* run-prd true
.*\\.md docs \"changed\"
";
        let cases: &[(&[&str], &str)] = &[
            (&["terraform/stg/main.tf"], r#"{"run-stg": true}"#),
            (&["modules/app/main.tf"], r#"{"run-stg": true, "run-prd": true}"#),
            (&["README.md"], r#"{"docs": "changed"}"#),
            (&["terraform/stg"], "{}"),
            (&["xterraform/stg/a"], "{}"),
            (&[], "{}"),
        ];
        for (changed, expected) in cases {
            assert_eq!(eval(mapping, changed), *expected, "{changed:?}");
        }
    }

    #[test]
    fn later_lines_override_values_but_not_order() {
        let mapping = "a/.* p 1\nb/.* q 2\nc/.* p 3\n";
        assert_eq!(eval(mapping, &["a/x", "b/x", "c/x"]), r#"{"p": 3, "q": 2}"#);
    }

    #[test]
    fn alternations_are_anchored_like_python_re_match() {
        // Python: re.compile('^a|b$').match('xb') is None.
        assert_eq!(eval("a|b p true", &["xb"]), "{}");
        assert_eq!(eval("a|b p true", &["ax"]), r#"{"p": true}"#);
    }

    #[test]
    fn json_is_written_like_python() {
        let mapping = "x p {\"k\":[1,2.5,null]}\ny q \"日本\\n\"";
        assert_eq!(eval(mapping, &["x", "y"]), r#"{"p": {"k": [1, 2.5, null]}, "q": "\u65e5\u672c\n"}"#);
    }

    #[test]
    fn four_columns_name_config_files() {
        let m = Mapping::parse("m", "a/.* p true .circleci/a.yml\nb/.* q true .circleci/b.yml\n").unwrap();
        let r = m.evaluate(&["b/1"]);
        assert_eq!(r.config_files, [".circleci/b.yml"]);
    }

    #[test]
    fn bad_mappings_say_where() {
        let cases: &[(&str, &str, (usize, usize))] = &[
            ("a/.* p true\nb/.* q\n", "mapping.columns", (2, 1)),
            ("a p\n", "mapping.columns", (1, 1)),
            ("a/(?=x) p true\n", "mapping.invalid_regex", (1, 1)),
            ("a/.* p maybe\n", "mapping.invalid_value", (1, 8)),
            ("# only a comment\n", "mapping.empty", (0, 0)),
        ];
        for (text, code, (line, column)) in cases {
            let d = Mapping::parse("m", text).unwrap_err();
            let first = &d.items[0];
            assert_eq!(first.code, *code, "{text}");
            if *line > 0 {
                let p = d.file.position(first.span.clone().unwrap().start);
                assert_eq!((p.line, p.column), (*line, *column), "{text}");
            }
        }
    }
}
