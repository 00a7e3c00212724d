//! Templates, the reviewed "design patterns" environments are built from (S4.1, S4.2, S4.9):
//! a directory `templates/NAME/` holding a Terraform module and a `template.toml` that
//! describes it, says where environments made from it go, and types its parameters. This
//! module parses `template.toml` (errors point at file:line:column), checks a request's
//! values against the parameters, and writes the parameters as JSON Schema for forms.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use serde_json::{Value as Json, json};
use toml::Spanned;

use crate::cidr::Cidr;
use crate::config::Config;
use crate::error::{Diagnostic, Diagnostics, SourceFile};
use crate::module_interface::{ModuleInterface, module_interface};
use crate::modules::is_terraform_file;
use crate::tree::{EntryKind, Tree, TreeError};

/// Where templates live in the repo.
pub const TEMPLATES_DIR: &str = "templates";
/// The file that makes a directory under `templates/` a template.
pub const TEMPLATE_FILE: &str = "template.toml";
/// Module inputs plinth fills itself, when the module declares a variable of that name.
pub const PLINTH_INPUTS: [&str; 5] =
    ["plinth_environment", "plinth_product", "plinth_fqdn", "plinth_cidr", "plinth_workspace"];

/// A parsed `template.toml`.
#[derive(Clone, Debug)]
pub struct Template {
    pub name: String,
    pub description: String,
    /// The plinth.toml environment whose policy applies to environments made from this
    /// template: who approves, and which secrets their runs get.
    pub environment: String,
    /// The target account. Provisioning runs one at a time per account (S4.5).
    pub account: String,
    /// The Terraform binary.
    pub terraform: String,
    /// Services that run in environments made from this template; the first is served at the
    /// environment's FQDN, others at `SERVICE.FQDN`.
    pub services: Vec<String>,
    /// Environments made from this template are served at `NAME.DOMAIN`.
    pub domain: Option<String>,
    /// A CIDR block from a pool, for templates whose module needs a network range.
    pub cidr: Option<CidrRequest>,
    /// Parameters in the order written.
    pub parameters: Vec<Parameter>,
    pub source: SourceFile,
}

/// The size of network an environment gets, and from which pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrRequest {
    pub pool: String,
    pub prefix: u8,
    pub span: Range<usize>,
}

/// One typed parameter.
#[derive(Clone, Debug)]
pub struct Parameter {
    pub name: String,
    pub kind: Kind,
    pub description: String,
    pub required: bool,
    pub default: Option<Value>,
    pub span: Range<usize>,
}

/// A parameter's type, with its rules.
#[derive(Clone, Debug)]
pub enum Kind {
    String {
        /// The whole value must match.
        pattern: Option<(String, regex::Regex)>,
        /// Length bounds, in characters.
        min: Option<i64>,
        max: Option<i64>,
    },
    Int {
        min: Option<i64>,
        max: Option<i64>,
    },
    Bool,
    Enum {
        values: Vec<String>,
    },
    /// An IPv4 network such as `10.0.0.0/16`; `min`/`max` bound the prefix length.
    Cidr {
        min: Option<i64>,
        max: Option<i64>,
    },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::String { .. } => "string",
            Kind::Int { .. } => "int",
            Kind::Bool => "bool",
            Kind::Enum { .. } => "enum",
            Kind::Cidr { .. } => "cidr",
        }
    }
}

/// A value that broke a parameter's rule.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ParamError {
    /// The parameter, as the request named it.
    pub parameter: String,
    /// `required`, `unknown`, `type`, `pattern`, `min`, `max`, `enum` or `cidr`.
    pub rule: &'static str,
    pub message: String,
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "parameter `{}`: {}", self.parameter, self.message)
    }
}

/// Whether a name works as a Terraform variable name and a template parameter.
pub fn is_parameter_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= 64
}

/// Whether a name works as a template name: a DNS-label-like identifier.
pub fn is_template_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !name.starts_with('-')
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    description: Option<Spanned<String>>,
    environment: Spanned<String>,
    account: Option<Spanned<String>>,
    terraform: Option<Spanned<String>>,
    #[serde(default)]
    services: Vec<Spanned<String>>,
    domain: Option<Spanned<String>>,
    cidr: Option<Spanned<RawCidr>>,
    #[serde(default)]
    parameters: BTreeMap<Spanned<String>, Spanned<RawParameter>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCidr {
    pool: Spanned<String>,
    prefix: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParameter {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    description: Option<String>,
    required: Option<bool>,
    default: Option<Spanned<toml::Value>>,
    pattern: Option<Spanned<String>>,
    min: Option<Spanned<i64>>,
    max: Option<Spanned<i64>>,
    values: Option<Spanned<Vec<String>>>,
}

impl Template {
    /// Parses `templates/NAME/template.toml`. Returns every problem found.
    pub fn parse(name: &str, file_name: &str, text: &str) -> Result<Template, Diagnostics> {
        let source = SourceFile::new(file_name, text);
        let mut diagnostics = Diagnostics::new(source.clone());
        if !is_template_name(name) {
            diagnostics.push(
                Diagnostic::error("template.invalid_name", format!("`{name}` is not a valid template name"))
                    .help("name the directory with lowercase letters, digits, `-` and `_`, such as `web-service`"),
            );
        }
        let raw: RawTemplate = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let mut d = crate::config::toml_error(&e);
                if let Some(span) = e.span() {
                    d = d.at(span);
                }
                diagnostics.push(d);
                return Err(diagnostics);
            }
        };
        let environment = raw.environment.get_ref().clone();
        if !crate::config::is_identifier(&environment) {
            diagnostics.push(
                Diagnostic::error(
                    "template.invalid_environment",
                    format!("`{environment}` is not an environment name"),
                )
                .at(raw.environment.span())
                .help("name an environment declared in plinth.toml, such as `sandbox`"),
            );
        }
        let account = match &raw.account {
            Some(a) if crate::config::is_identifier(a.get_ref()) => a.get_ref().clone(),
            Some(a) => {
                diagnostics.push(
                    Diagnostic::error("template.invalid_account", format!("`{}` is not an account name", a.get_ref()))
                        .at(a.span())
                        .help("use letters, digits, `_` and `-`, such as `sandbox-a` or an AWS account id"),
                );
                String::new()
            }
            None => environment.clone(),
        };
        let terraform = match &raw.terraform {
            Some(t) if t.get_ref().trim().is_empty() => {
                diagnostics.push(
                    Diagnostic::error("template.invalid_terraform", "`terraform` is empty")
                        .at(t.span())
                        .help("name the binary (`terraform`, `tofu`) or give its path, or remove the key"),
                );
                String::new()
            }
            Some(t) => t.get_ref().clone(),
            None => crate::config::DEFAULT_TERRAFORM.to_owned(),
        };
        for service in &raw.services {
            if !crate::config::is_identifier(service.get_ref()) {
                diagnostics.push(
                    Diagnostic::error(
                        "template.invalid_service",
                        format!("`{}` is not a service name", service.get_ref()),
                    )
                    .at(service.span())
                    .help("name a service declared under [services.NAME] in plinth.toml"),
                );
            }
        }
        if let Some(domain) = &raw.domain
            && !is_domain(domain.get_ref())
        {
            diagnostics.push(
                Diagnostic::error("template.invalid_domain", format!("`{}` is not a domain name", domain.get_ref()))
                    .at(domain.span())
                    .help("use letters, digits, `-` and dots, such as `sandbox.example.com`"),
            );
        }
        let cidr = raw.cidr.as_ref().and_then(|c| {
            let span = c.span();
            let c = c.get_ref();
            let prefix = *c.prefix.get_ref();
            if !(1..=32).contains(&prefix) {
                diagnostics.push(
                    Diagnostic::error("template.invalid_cidr", format!("`prefix = {prefix}` is not a prefix length"))
                        .at(c.prefix.span())
                        .help("give the size of network each environment gets, from 1 to 32, such as `24`"),
                );
                return None;
            }
            Some(CidrRequest { pool: c.pool.get_ref().clone(), prefix: prefix as u8, span })
        });
        let mut parameters = Vec::new();
        for (key, raw) in raw.parameters {
            if let Some(p) = parameter(&mut diagnostics, &key, raw) {
                parameters.push(p);
            }
        }
        parameters.sort_by_key(|p| p.span.start);
        diagnostics.sort();
        if diagnostics.has_errors() {
            return Err(diagnostics);
        }
        Ok(Template {
            name: name.to_owned(),
            description: raw.description.map(|d| d.into_inner()).unwrap_or_default(),
            environment,
            account,
            terraform,
            services: raw.services.into_iter().map(Spanned::into_inner).collect(),
            domain: raw.domain.map(|d| d.into_inner().to_ascii_lowercase()),
            cidr,
            parameters,
            source,
        })
    }

    pub fn parameter(&self, name: &str) -> Option<&Parameter> {
        self.parameters.iter().find(|p| p.name == name)
    }

    /// Checks a request's values: each must name a parameter and keep its rules; required
    /// parameters must be given; defaults fill the rest. Values may come typed (JSON) or as
    /// text (`--param k=v`), and are returned typed, in parameter order. Returns every broken
    /// rule, not only the first.
    pub fn check_values(&self, given: &BTreeMap<String, Json>) -> Result<Vec<(String, Value)>, Vec<ParamError>> {
        let mut errors = Vec::new();
        for name in given.keys() {
            if self.parameter(name).is_none() {
                let known: Vec<&str> = self.parameters.iter().map(|p| p.name.as_str()).collect();
                errors.push(ParamError {
                    parameter: name.clone(),
                    rule: "unknown",
                    message: if known.is_empty() {
                        format!("template `{}` takes no parameters", self.name)
                    } else {
                        format!("template `{}` has no such parameter (it takes: {})", self.name, known.join(", "))
                    },
                });
            }
        }
        let mut out = Vec::new();
        for p in &self.parameters {
            match given.get(&p.name) {
                Some(value) => match p.check(value) {
                    Ok(v) => out.push((p.name.clone(), v)),
                    Err(e) => errors.push(e),
                },
                None => match &p.default {
                    Some(d) => out.push((p.name.clone(), d.clone())),
                    None if p.required => errors.push(ParamError {
                        parameter: p.name.clone(),
                        rule: "required",
                        message: format!("is required{}", describe(p)),
                    }),
                    None => {}
                },
            }
        }
        if errors.is_empty() { Ok(out) } else { Err(errors) }
    }

    /// The parameters as a JSON Schema (draft 2020-12) object, for forms and API clients.
    pub fn json_schema(&self) -> Json {
        let mut properties = serde_json::Map::new();
        let mut required = Vec::new();
        for p in &self.parameters {
            let mut s = serde_json::Map::new();
            if !p.description.is_empty() {
                s.insert("description".into(), json!(p.description));
            }
            match &p.kind {
                Kind::String { pattern, min, max } => {
                    s.insert("type".into(), json!("string"));
                    if let Some((raw, _)) = pattern {
                        s.insert("pattern".into(), json!(format!("^(?:{raw})$")));
                    }
                    if let Some(min) = min {
                        s.insert("minLength".into(), json!(min));
                    }
                    if let Some(max) = max {
                        s.insert("maxLength".into(), json!(max));
                    }
                }
                Kind::Int { min, max } => {
                    s.insert("type".into(), json!("integer"));
                    if let Some(min) = min {
                        s.insert("minimum".into(), json!(min));
                    }
                    if let Some(max) = max {
                        s.insert("maximum".into(), json!(max));
                    }
                }
                Kind::Bool => {
                    s.insert("type".into(), json!("boolean"));
                }
                Kind::Enum { values } => {
                    s.insert("type".into(), json!("string"));
                    s.insert("enum".into(), json!(values));
                }
                Kind::Cidr { min, max } => {
                    s.insert("type".into(), json!("string"));
                    s.insert("format".into(), json!("ipv4-cidr"));
                    s.insert(
                        "pattern".into(),
                        json!(r"^(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])){3}/(3[0-2]|[12]?[0-9])$"),
                    );
                    if min.is_some() || max.is_some() {
                        s.insert("x-plinth-prefix".into(), json!({"min": min.unwrap_or(0), "max": max.unwrap_or(32)}));
                    }
                }
            }
            if let Some(d) = &p.default {
                s.insert("default".into(), d.to_json());
            }
            if p.required && p.default.is_none() {
                required.push(json!(p.name));
            }
            properties.insert(p.name.clone(), Json::Object(s));
        }
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": self.name,
            "description": self.description,
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        })
    }
}

fn describe(p: &Parameter) -> String {
    match &p.kind {
        Kind::Enum { values } => format!(" (one of: {})", values.join(", ")),
        kind => format!(" (a {})", kind.name()),
    }
}

/// A checked parameter value, typed as the module's variable will be.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Value {
    String(String),
    Int(i64),
    Bool(bool),
}

impl Value {
    pub fn to_json(&self) -> Json {
        match self {
            Value::String(s) => json!(s),
            Value::Int(n) => json!(n),
            Value::Bool(b) => json!(b),
        }
    }
}

impl Parameter {
    /// Checks one value against this parameter's type and rules.
    pub fn check(&self, value: &Json) -> Result<Value, ParamError> {
        let fail = |rule: &'static str, message: String| ParamError { parameter: self.name.clone(), rule, message };
        let text = || match value {
            Json::String(s) => Ok(s.clone()),
            other => Err(fail("type", format!("must be a {}, not {}", self.kind.name(), json_kind(other)))),
        };
        match &self.kind {
            Kind::String { pattern, min, max } => {
                let s = text()?;
                let len = s.chars().count() as i64;
                if let Some(min) = min.filter(|m| len < *m) {
                    return Err(fail("min", format!("is {len} characters long, shorter than the minimum {min}")));
                }
                if let Some(max) = max.filter(|m| len > *m) {
                    return Err(fail("max", format!("is {len} characters long, longer than the maximum {max}")));
                }
                if let Some((raw, re)) = pattern
                    && !re.is_match(&s)
                {
                    return Err(fail("pattern", format!("`{}` does not match the pattern `{raw}`", s.escape_debug())));
                }
                Ok(Value::String(s))
            }
            Kind::Int { min, max } => {
                let n = match value {
                    Json::Number(n) => n.as_i64(),
                    Json::String(s) => s.trim().parse::<i64>().ok(),
                    _ => None,
                }
                .ok_or_else(|| fail("type", format!("must be a whole number, not {}", shown(value))))?;
                if let Some(min) = min.filter(|m| n < *m) {
                    return Err(fail("min", format!("{n} is below the minimum {min}")));
                }
                if let Some(max) = max.filter(|m| n > *m) {
                    return Err(fail("max", format!("{n} is above the maximum {max}")));
                }
                Ok(Value::Int(n))
            }
            Kind::Bool => match value {
                Json::Bool(b) => Ok(Value::Bool(*b)),
                Json::String(s) if s == "true" => Ok(Value::Bool(true)),
                Json::String(s) if s == "false" => Ok(Value::Bool(false)),
                other => Err(fail("type", format!("must be true or false, not {}", shown(other)))),
            },
            Kind::Enum { values } => {
                let s = text()?;
                if values.contains(&s) {
                    Ok(Value::String(s))
                } else {
                    Err(fail("enum", format!("`{}` is not one of: {}", s.escape_debug(), values.join(", "))))
                }
            }
            Kind::Cidr { min, max } => {
                let s = text()?;
                let cidr: Cidr = s.parse().map_err(|e| fail("cidr", e))?;
                let prefix = i64::from(cidr.prefix());
                if let Some(min) = min.filter(|m| prefix < *m) {
                    return Err(fail("min", format!("`{cidr}` is larger than a /{min}, the largest allowed")));
                }
                if let Some(max) = max.filter(|m| prefix > *m) {
                    return Err(fail("max", format!("`{cidr}` is smaller than a /{max}, the smallest allowed")));
                }
                Ok(Value::String(cidr.to_string()))
            }
        }
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

fn shown(v: &Json) -> String {
    match v {
        Json::String(s) => format!("`{}`", s.escape_debug()),
        other => json_kind(other).to_owned(),
    }
}

/// Whether `s` is a DNS name: labels of letters, digits and `-`.
pub fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A template read from a tree and checked against its module and plinth.toml.
#[derive(Clone, Debug)]
pub struct Found {
    pub template: Template,
    /// Its directory, `templates/NAME`.
    pub dir: String,
    pub interface: ModuleInterface,
}

/// The names of the templates in a tree: the directories under `templates/` that hold a
/// `template.toml`, in name order.
pub fn template_names(tree: &dyn Tree) -> Result<Vec<String>, TreeError> {
    let Some(entries) = tree.read_dir(TEMPLATES_DIR)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for entry in entries.iter().filter(|e| e.kind == EntryKind::Dir) {
        if tree.read_file(&format!("{TEMPLATES_DIR}/{}/{TEMPLATE_FILE}", entry.name))?.is_some() {
            out.push(entry.name.clone());
        }
    }
    out.sort();
    Ok(out)
}

/// Reads `templates/NAME/` from a tree: parses its `template.toml`, reads its module's
/// variables and outputs, and checks the two against each other and against `config`. Every
/// problem is a diagnostic of `template.toml`.
pub fn read_template(tree: &dyn Tree, config: &Config, name: &str) -> Result<Found, Diagnostics> {
    let dir = format!("{TEMPLATES_DIR}/{name}");
    let file = format!("{dir}/{TEMPLATE_FILE}");
    let plain = |code: &'static str, message: String, help: &str| {
        let mut d = Diagnostics::new(SourceFile::new(file.clone(), ""));
        d.push(Diagnostic::error(code, message).help(help));
        d
    };
    let text = match tree.read_file(&file) {
        Ok(Some(bytes)) => String::from_utf8(bytes)
            .map_err(|_| plain("template.not_utf8", format!("{file} is not UTF-8"), "Save the file as UTF-8."))?,
        Ok(None) => {
            return Err(plain(
                "template.not_found",
                format!("{file} does not exist"),
                "A template is a directory templates/NAME/ with a Terraform module and a template.toml.",
            ));
        }
        Err(e) => return Err(plain("template.unreadable", e.message, "Check the repository.")),
    };
    let template = Template::parse(name, &file, &text)?;
    let mut d = Diagnostics::new(template.source.clone());
    let mut files = Vec::new();
    let entries = tree.read_dir(&dir).map_err(|e| plain("template.unreadable", e.message, "Check the repository."))?;
    for entry in entries.unwrap_or_default().iter().filter(|e| e.kind == EntryKind::File && is_terraform_file(&e.name))
    {
        let path = format!("{dir}/{}", entry.name);
        if let Ok(Some(bytes)) = tree.read_file(&path) {
            files.push((path, bytes));
        }
    }
    if files.is_empty() {
        d.push(
            Diagnostic::error("template.no_module", format!("{dir} holds no Terraform files"))
                .help("a template is a Terraform module (main.tf with variables and outputs) plus template.toml"),
        );
        return Err(d);
    }
    let interface = match module_interface(&files) {
        Ok(interface) => interface,
        Err(e) => {
            d.push(Diagnostic::error("template.bad_module", e).help("fix the module so that Terraform can read it"));
            return Err(d);
        }
    };
    check_against(&template, &interface, config, &mut d);
    if d.has_errors() {
        d.sort();
        return Err(d);
    }
    Ok(Found { template, dir, interface })
}

/// What a template must agree with: its module's variables, and plinth.toml.
fn check_against(t: &Template, interface: &ModuleInterface, config: &Config, d: &mut Diagnostics) {
    if !config.environments.contains_key(&t.environment) {
        d.push(
            Diagnostic::error("template.unknown_environment", format!("environment `{}` is not in plinth.toml", t.environment))
                .help("declare it as [environments.NAME]; its approval and secrets apply to environments made from this template"),
        );
    }
    for service in &t.services {
        if config.service(service).is_none() {
            d.push(
                Diagnostic::error("template.unknown_service", format!("service `{service}` is not in plinth.toml"))
                    .help("declare it as [services.NAME], or remove it from `services`"),
            );
        }
    }
    if let Some(cidr) = &t.cidr {
        if !config.cidr_pools.contains_key(&cidr.pool) {
            d.push(
                Diagnostic::error("template.unknown_pool", format!("CIDR pool `{}` is not in plinth.toml", cidr.pool))
                    .at(cidr.span.clone())
                    .help("declare it as [cidr_pools.NAME] with `ranges`"),
            );
        }
        if interface.variable("plinth_cidr").is_none() {
            d.push(
                Diagnostic::error(
                    "template.unused_cidr",
                    "the template asks for a CIDR block, but its module has no `plinth_cidr` variable",
                )
                .at(cidr.span.clone())
                .help("add `variable \"plinth_cidr\" { type = string }` to the module, or remove `cidr`"),
            );
        }
    }
    for p in &t.parameters {
        if interface.variable(&p.name).is_none() {
            d.push(
                Diagnostic::error(
                    "template.unknown_variable",
                    format!("parameter `{}` is not a variable of the module", p.name),
                )
                .at(p.span.clone())
                .help(format!("add `variable \"{}\"` to the module, or remove the parameter", p.name)),
            );
        }
    }
    for v in interface.variables.iter().filter(|v| v.required) {
        if t.parameter(&v.name).is_none() && !PLINTH_INPUTS.contains(&v.name.as_str()) {
            d.push(
                Diagnostic::error(
                    "template.missing_parameter",
                    format!("the module's variable `{}` has no default and no parameter", v.name),
                )
                .help(format!("add [parameters.{}] to {TEMPLATE_FILE}, or give the variable a default", v.name)),
            );
        }
    }
}

/// Turns one `[parameters.NAME]` table into a parameter, or records why it cannot be one.
fn parameter(d: &mut Diagnostics, key: &Spanned<String>, raw: Spanned<RawParameter>) -> Option<Parameter> {
    let span = raw.span();
    let raw = raw.into_inner();
    let name = key.get_ref().clone();
    let before = d.errors().count();
    if !is_parameter_name(&name) {
        d.push(
            Diagnostic::error("template.invalid_parameter", format!("`{name}` is not a valid parameter name"))
                .at(key.span())
                .help(
                    "parameter names are Terraform variable names: a letter or `_`, then letters, digits, `_` and `-`",
                ),
        );
    } else if name.starts_with("plinth_") {
        d.push(
            Diagnostic::error("template.reserved_parameter", format!("`{name}` is reserved for plinth"))
                .at(key.span())
                .help(format!("rename the parameter; plinth fills {} itself", PLINTH_INPUTS.join(", "))),
        );
    }
    let mut rule_not_for = |what: &str, at: Range<usize>, kind: &str| {
        d.push(
            Diagnostic::error("template.invalid_rule", format!("`{what}` does not apply to a `{kind}` parameter"))
                .at(at)
                .help(
                    "remove it; `pattern` is for strings, `min`/`max` for strings, ints and cidrs, `values` for enums",
                ),
        );
    };
    let kind_name = raw.kind.get_ref().as_str();
    if let Some(v) = &raw.values
        && kind_name != "enum"
    {
        rule_not_for("values", v.span(), kind_name);
    }
    if let Some(p) = &raw.pattern
        && kind_name != "string"
    {
        rule_not_for("pattern", p.span(), kind_name);
    }
    if matches!(kind_name, "bool" | "enum") {
        for (what, bound) in [("min", &raw.min), ("max", &raw.max)] {
            if let Some(bound) = bound {
                rule_not_for(what, bound.span(), kind_name);
            }
        }
    }
    let (min, max) = (raw.min.as_ref().map(|m| *m.get_ref()), raw.max.as_ref().map(|m| *m.get_ref()));
    if let (Some(lo), Some(hi), Some(at)) = (min, max, raw.max.as_ref())
        && lo > hi
    {
        d.push(
            Diagnostic::error("template.invalid_rule", format!("`min = {lo}` is above `max = {hi}`"))
                .at(at.span())
                .help("swap them, or widen the range"),
        );
    }
    let kind = match kind_name {
        "string" => {
            let pattern =
                raw.pattern.as_ref().and_then(|p| match regex::Regex::new(&format!("^(?:{})$", p.get_ref())) {
                    Ok(re) => Some((p.get_ref().clone(), re)),
                    Err(e) => {
                        d.push(
                            Diagnostic::error(
                                "template.invalid_pattern",
                                format!("`pattern` is not a valid regex: {e}"),
                            )
                            .at(p.span())
                            .help("write a regular expression the whole value must match, such as `[a-z][a-z0-9-]*`"),
                        );
                        None
                    }
                });
            if min.is_some_and(|m| m < 0) || max.is_some_and(|m| m < 0) {
                d.push(
                    Diagnostic::error("template.invalid_rule", "string lengths cannot be negative")
                        .at(span.clone())
                        .help("give `min` and `max` as lengths in characters, 0 or more"),
                );
            }
            Kind::String { pattern, min, max }
        }
        "int" => Kind::Int { min, max },
        "bool" => Kind::Bool,
        "enum" => match &raw.values {
            Some(v) if !v.get_ref().is_empty() => {
                let mut values = v.get_ref().clone();
                values.dedup();
                Kind::Enum { values }
            }
            _ => {
                d.push(
                    Diagnostic::error("template.invalid_rule", format!("enum parameter `{name}` lists no `values`"))
                        .at(raw.kind.span())
                        .help("add `values = [\"small\", \"large\"]` with the choices"),
                );
                Kind::Enum { values: Vec::new() }
            }
        },
        "cidr" => {
            if min.is_some_and(|m| !(0..=32).contains(&m)) || max.is_some_and(|m| !(0..=32).contains(&m)) {
                d.push(
                    Diagnostic::error("template.invalid_rule", "a cidr's `min` and `max` are prefix lengths")
                        .at(span.clone())
                        .help("give prefix lengths from 0 to 32: `min = 16, max = 24` allows a /16 up to a /24"),
                );
            }
            Kind::Cidr { min, max }
        }
        other => {
            d.push(
                Diagnostic::error("template.invalid_type", format!("`{other}` is not a parameter type"))
                    .at(raw.kind.span())
                    .help("use one of: string, int, bool, enum, cidr"),
            );
            return None;
        }
    };
    let mut p = Parameter {
        name,
        kind,
        description: raw.description.unwrap_or_default(),
        required: raw.required.unwrap_or(true),
        default: None,
        span,
    };
    if let Some(default) = &raw.default {
        let as_json = match default.get_ref() {
            toml::Value::String(s) => Json::String(s.clone()),
            toml::Value::Integer(n) => json!(n),
            toml::Value::Boolean(b) => json!(b),
            _ => Json::Null,
        };
        match p.check(&as_json) {
            Ok(v) => p.default = Some(v),
            Err(e) => d.push(
                Diagnostic::error("template.invalid_default", format!("the default {}", e.message))
                    .at(default.span())
                    .help("give a default that keeps the parameter's own rules, or remove it"),
            ),
        }
    }
    if d.errors().count() > before { None } else { Some(p) }
}

#[cfg(test)]
mod tests;
