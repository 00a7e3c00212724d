//! A Terraform module's interface, read from its `.tf` and `.tf.json` files: the variables it
//! takes (which are required, of what type) and the outputs it gives (which are sensitive).
//! Used to check a template's module and to render a root that calls it ([`crate::render`]).

use std::collections::BTreeMap;
use std::fmt;

use hcl_edit::Span;
use hcl_edit::expr::Expression;
use serde_json::Value as Json;

use crate::error::SourceFile;

/// What a module takes and gives, each list sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ModuleInterface {
    pub variables: Vec<ModuleVariable>,
    pub outputs: Vec<ModuleOutput>,
}

/// One `variable` block.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ModuleVariable {
    pub name: String,
    /// Whether a caller must give it: it has no `default`.
    pub required: bool,
    /// Its `type` as written, such as `string` or `list(string)`; `None` when it has none.
    pub type_expr: Option<String>,
}

/// One `output` block.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ModuleOutput {
    pub name: String,
    pub sensitive: bool,
}

impl ModuleInterface {
    pub fn variable(&self, name: &str) -> Option<&ModuleVariable> {
        self.variables.iter().find(|v| v.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&ModuleOutput> {
        self.outputs.iter().find(|o| o.name == name)
    }
}

/// Whether `name` works as a Terraform name (variable, output, module, attribute): a letter or
/// `_` first, then letters, digits, `_` and `-`. A subset of what HCL allows, without
/// non-ASCII letters.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Reads the interface of the module whose files are `files` (name, contents), as Terraform
/// does: `.tf` and `.tf.json` files (other files are skipped, and so are the ones Terraform
/// ignores: hidden, `#…#` and `…~` editor files), override files (`override.tf`,
/// `*_override.tf` and their JSON forms) merged in last. Errors name the file, and for HCL
/// and JSON syntax errors the line and column.
pub fn module_interface(files: &[(String, Vec<u8>)]) -> Result<ModuleInterface, String> {
    let mut read: Vec<(&str, bool, Vec<Decl>)> = Vec::new();
    for (name, bytes) in files {
        let Some(kind) = file_kind(name) else { continue };
        let text =
            std::str::from_utf8(bytes).map_err(|e| format!("{name}: not UTF-8 (at byte {})", e.valid_up_to()))?;
        let decls = match kind {
            FileKind::Hcl => hcl_decls(name, text)?,
            FileKind::Json => json_decls(name, text)?,
        };
        read.push((name, is_override(name), decls));
    }
    // Terraform reads the primary files, then merges the override files, each in name order.
    read.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));

    let mut variables: BTreeMap<String, (ModuleVariable, String)> = BTreeMap::new();
    let mut outputs: BTreeMap<String, (ModuleOutput, String)> = BTreeMap::new();
    for (_, is_override, decls) in read {
        for decl in decls {
            let what = decl.kind;
            match (decl.kind, is_override) {
                (Kind::Variable, false) => {
                    let variable = ModuleVariable {
                        name: decl.name.clone(),
                        required: !decl.has_default,
                        type_expr: decl.type_expr,
                    };
                    if let Some((_, first)) = variables.get(&decl.name) {
                        return Err(twice(&decl.at, what, &decl.name, first));
                    }
                    variables.insert(decl.name, (variable, decl.at));
                }
                (Kind::Output, false) => {
                    let output = ModuleOutput { name: decl.name.clone(), sensitive: decl.sensitive.unwrap_or(false) };
                    if let Some((_, first)) = outputs.get(&decl.name) {
                        return Err(twice(&decl.at, what, &decl.name, first));
                    }
                    outputs.insert(decl.name, (output, decl.at));
                }
                (Kind::Variable, true) => {
                    let Some((variable, _)) = variables.get_mut(&decl.name) else {
                        return Err(no_base(&decl.at, what, &decl.name));
                    };
                    // An override can give a default but not take one away.
                    variable.required &= !decl.has_default;
                    if decl.type_expr.is_some() {
                        variable.type_expr = decl.type_expr;
                    }
                }
                (Kind::Output, true) => {
                    let Some((output, _)) = outputs.get_mut(&decl.name) else {
                        return Err(no_base(&decl.at, what, &decl.name));
                    };
                    if let Some(sensitive) = decl.sensitive {
                        output.sensitive = sensitive;
                    }
                }
            }
        }
    }
    Ok(ModuleInterface {
        variables: variables.into_values().map(|(v, _)| v).collect(),
        outputs: outputs.into_values().map(|(o, _)| o).collect(),
    })
}

fn twice(at: &str, what: Kind, name: &str, first: &str) -> String {
    format!("{at}: {what} `{name}` is declared twice (first at {first})")
}

fn no_base(at: &str, what: Kind, name: &str) -> String {
    format!("{at}: an override file changes {what} `{name}`, which no other file declares")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileKind {
    Hcl,
    Json,
}

/// How Terraform reads a file of a module directory, if it does.
fn file_kind(path: &str) -> Option<FileKind> {
    let base = path.rsplit('/').next().unwrap_or(path);
    let ignored = base.starts_with('.') || base.ends_with('~') || (base.starts_with('#') && base.ends_with('#'));
    if ignored {
        None
    } else if base.ends_with(".tf") {
        Some(FileKind::Hcl)
    } else if base.ends_with(".tf.json") {
        Some(FileKind::Json)
    } else {
        None
    }
}

fn is_override(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.strip_suffix(".tf.json").or_else(|| base.strip_suffix(".tf")).unwrap_or(base);
    stem == "override" || stem.ends_with("_override")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Variable,
    Output,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Variable => "variable",
            Kind::Output => "output",
        })
    }
}

/// One block as one file writes it, before overrides are merged.
struct Decl {
    kind: Kind,
    name: String,
    /// `file:line:column`, or the file alone when the position is not known.
    at: String,
    has_default: bool,
    type_expr: Option<String>,
    sensitive: Option<bool>,
}

fn hcl_decls(file: &str, text: &str) -> Result<Vec<Decl>, String> {
    let body = hcl_edit::parser::parse_body(text).map_err(|e| {
        let at = e.location();
        format!("{file}:{}:{}: {}", at.line(), at.column(), e.message())
    })?;
    let source = SourceFile::new(file, text);
    let at = |span: Option<std::ops::Range<usize>>| match span {
        Some(span) => {
            let position = source.position(span.start);
            format!("{file}:{}:{}", position.line, position.column)
        }
        None => file.to_owned(),
    };
    let mut decls = Vec::new();
    for block in body.blocks() {
        let kind = match block.ident.as_str() {
            "variable" => Kind::Variable,
            "output" => Kind::Output,
            _ => continue,
        };
        let [label] = block.labels.as_slice() else {
            return Err(format!("{}: a {kind} block takes one label, its name", at(block.span())));
        };
        let name = label.as_str();
        if !is_identifier(name) {
            return Err(format!("{}: {kind} name `{name}` is not a valid Terraform name", at(block.span())));
        }
        let type_expr = block.body.get_attribute("type").map(|attr| {
            // As written, comments and line breaks inside it included.
            attr.value
                .span()
                .and_then(|span| text.get(span))
                .map_or_else(|| attr.value.to_string(), str::to_owned)
                .trim()
                .to_owned()
        });
        let sensitive = match block.body.get_attribute("sensitive") {
            None => None,
            Some(attr) => match &attr.value {
                Expression::Bool(b) => Some(*b.value()),
                _ => return Err(format!("{}: `sensitive` must be `true` or `false`", at(attr.span()))),
            },
        };
        decls.push(Decl {
            kind,
            name: name.to_owned(),
            at: at(block.span()),
            has_default: block.body.has_attribute("default"),
            type_expr: if kind == Kind::Variable { type_expr } else { None },
            sensitive: if kind == Kind::Output { sensitive } else { None },
        });
    }
    Ok(decls)
}

/// Terraform's JSON syntax allows a block (or the blocks of one type) to be an object or an
/// array of objects.
fn objects(value: &Json) -> Vec<&Json> {
    match value {
        Json::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

fn json_decls(file: &str, text: &str) -> Result<Vec<Decl>, String> {
    let value: Json = serde_json::from_str(text).map_err(|e| format!("{file}:{}:{}: {e}", e.line(), e.column()))?;
    if !value.is_object() {
        return Err(format!("{file}: the top level must be a JSON object"));
    }
    let mut decls = Vec::new();
    for (key, kind) in [("variable", Kind::Variable), ("output", Kind::Output)] {
        let Some(blocks) = value.get(key) else { continue };
        for group in objects(blocks) {
            let Some(group) = group.as_object() else {
                return Err(format!("{file}: `{key}` must hold an object of {kind} blocks by name"));
            };
            // A `//` property is a comment in Terraform's JSON syntax.
            for (name, bodies) in group.iter().filter(|(name, _)| name.as_str() != "//") {
                if !is_identifier(name) {
                    return Err(format!("{file}: {kind} name `{name}` is not a valid Terraform name"));
                }
                for body in objects(bodies) {
                    let Some(body) = body.as_object() else {
                        return Err(format!("{file}: {kind} `{name}` must be an object"));
                    };
                    let type_expr = match body.get("type") {
                        Some(Json::String(t)) => Some(t.clone()),
                        Some(_) => return Err(format!("{file}: {kind} `{name}`: `type` must be a string")),
                        None => None,
                    };
                    let sensitive = match body.get("sensitive") {
                        Some(Json::Bool(b)) => Some(*b),
                        Some(_) => {
                            return Err(format!("{file}: {kind} `{name}`: `sensitive` must be `true` or `false`"));
                        }
                        None => None,
                    };
                    decls.push(Decl {
                        kind,
                        name: name.clone(),
                        at: file.to_owned(),
                        has_default: body.contains_key("default"),
                        type_expr: if kind == Kind::Variable { type_expr } else { None },
                        sensitive: if kind == Kind::Output { sensitive } else { None },
                    });
                }
            }
        }
    }
    Ok(decls)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, contents) pairs, as a table writes them.
    type Files = Vec<(&'static str, &'static str)>;

    fn files(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter().map(|(name, text)| ((*name).to_owned(), text.as_bytes().to_vec())).collect()
    }

    fn var(name: &str, required: bool, type_expr: Option<&str>) -> ModuleVariable {
        ModuleVariable { name: name.into(), required, type_expr: type_expr.map(str::to_owned) }
    }

    fn out(name: &str, sensitive: bool) -> ModuleOutput {
        ModuleOutput { name: name.into(), sensitive }
    }

    #[test]
    fn interfaces_are_read_from_hcl_and_json() {
        let cases: Vec<(&str, Files, ModuleInterface)> = vec![
            ("empty module", vec![], ModuleInterface::default()),
            (
                "hcl, sorted by name",
                vec![(
                    "main.tf",
                    r#"
                    variable "zone" { type = string }
                    variable "count_of" {
                      type    = number
                      default = 2
                    }
                    variable "untyped" {}
                    variable "nullable" {
                      type    = list( string ) # spacing kept
                      default = null
                    }
                    resource "terraform_data" "x" {}
                    output "url" { value = "x" }
                    output "password" {
                      value     = "y"
                      sensitive = true
                    }
                    output "plain" {
                      value     = 1
                      sensitive = false
                    }
                    "#,
                )],
                ModuleInterface {
                    variables: vec![
                        var("count_of", false, Some("number")),
                        var("nullable", false, Some("list( string )")),
                        var("untyped", true, None),
                        var("zone", true, Some("string")),
                    ],
                    outputs: vec![out("password", true), out("plain", false), out("url", false)],
                },
            ),
            (
                "multi-line type as written",
                vec![("v.tf", "variable \"o\" {\n  type = object({\n    a = string\n  })\n}\n")],
                ModuleInterface {
                    variables: vec![var("o", true, Some("object({\n    a = string\n  })"))],
                    outputs: vec![],
                },
            ),
            (
                "json, objects and arrays, comments skipped",
                vec![(
                    "main.tf.json",
                    r#"{
                      "//": "a comment",
                      "variable": [
                        {"b": {"type": "bool", "default": false}},
                        {"a": {"type": "map(string)"}, "//": "a comment"}
                      ],
                      "output": {"o": [{"value": "${var.a}", "sensitive": true}]}
                    }"#,
                )],
                ModuleInterface {
                    variables: vec![var("a", true, Some("map(string)")), var("b", false, Some("bool"))],
                    outputs: vec![out("o", true)],
                },
            ),
            (
                "hcl and json together, other and ignored files skipped",
                vec![
                    ("variables.tf", r#"variable "a" { type = string }"#),
                    ("outputs.tf.json", r#"{"output": {"b": {"value": "x"}}}"#),
                    ("template.toml", "not terraform"),
                    ("README.md", "variable \"no\" {}"),
                    (".hidden.tf", "variable \"no\" {}"),
                    ("main.tf~", "variable \"no\" {}"),
                    ("#main.tf#", "variable \"no\" {}"),
                ],
                ModuleInterface { variables: vec![var("a", true, Some("string"))], outputs: vec![out("b", false)] },
            ),
            (
                "override files merge last, whatever the order given",
                vec![
                    ("override.tf", "variable \"a\" {\n  default = \"x\"\n}\noutput \"o\" {\n  sensitive = true\n}\n"),
                    ("b_override.tf.json", r#"{"variable": {"b": {"type": "number"}}}"#),
                    ("main.tf", "variable \"a\" {}\nvariable \"b\" { type = string }\noutput \"o\" { value = 1 }\n"),
                ],
                ModuleInterface {
                    variables: vec![var("a", false, None), var("b", true, Some("number"))],
                    outputs: vec![out("o", true)],
                },
            ),
        ];
        for (what, given, expected) in cases {
            assert_eq!(module_interface(&files(&given)), Ok(expected), "{what}");
        }
    }

    #[test]
    fn errors_name_the_file_and_the_place() {
        let cases: Vec<(Files, &str)> = vec![
            (vec![("bad.tf", "variable \"x\" {\n  type = \n")], "bad.tf:2:10: "),
            (vec![("bad.tf.json", "{\"variable\": \n  {\"x\": }}")], "bad.tf.json:2:9: "),
            (vec![("a.tf", "\n\n  variable \"x\" \"y\" {}")], "a.tf:3:3: a variable block takes one label"),
            (vec![("a.tf", "output \"o\" {\n  sensitive = var.s\n}")], "a.tf:2:3: `sensitive` must be"),
            (vec![("a.tf", "variable \"1x\" {}")], "a.tf:1:1: variable name `1x` is not a valid Terraform name"),
            (
                vec![("a.tf", "variable \"x\" {}"), ("b.tf", "\nvariable \"x\" {}")],
                "b.tf:2:1: variable `x` is declared twice (first at a.tf:1:1)",
            ),
            (vec![("x_override.tf", "output \"o\" {}")], "x_override.tf:1:1: an override file changes output `o`"),
            (vec![("a.tf.json", "[]")], "a.tf.json: the top level must be a JSON object"),
            (vec![("a.tf.json", r#"{"variable": {"x": {"type": 1}}}"#)], "a.tf.json: variable `x`: `type` must be"),
            (vec![("a.tf.json", r#"{"output": {"o": {"sensitive": "yes"}}}"#)], "a.tf.json: output `o`: `sensitive`"),
            (vec![("a.tf.json", r#"{"output": ["o"]}"#)], "a.tf.json: `output` must hold an object"),
            (vec![("a.tf.json", r#"{"variable": {"a b": {}}}"#)], "a.tf.json: variable name `a b` is not"),
        ];
        for (given, expected) in cases {
            let err = module_interface(&files(&given)).unwrap_err();
            assert!(err.starts_with(expected), "{given:?}: {err}");
        }
        let binary = vec![("bin.tf".to_owned(), vec![b'x', 0xff])];
        assert_eq!(module_interface(&binary), Err("bin.tf: not UTF-8 (at byte 1)".to_owned()));
    }

    #[test]
    fn identifiers_follow_terraform() {
        for good in ["a", "_", "_a", "a-b_c9", "A"] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in ["", "1a", "-a", "a.b", "a b", "é", "a${x}", "a\"b"] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }
}
