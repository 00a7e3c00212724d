//! template.toml: parsing with positions, value checks rule by rule, and the JSON Schema.

use super::*;

const WEB: &str = r#"description = "A web service on the shared cluster"
environment = "sandbox"
account = "sandbox-a"
services = ["api"]
domain = "sandbox.localhost"
cidr = { pool = "sandbox", prefix = 24 }

[parameters.app_name]
type = "string"
pattern = "[a-z][a-z0-9-]*"
max = 20
description = "The application's name"

[parameters.replicas]
type = "int"
min = 1
max = 10
default = 2

[parameters.auth]
type = "bool"
default = true

[parameters.size]
type = "enum"
values = ["small", "large"]
default = "small"

[parameters.allowed]
type = "cidr"
min = 8
max = 28
required = false
"#;

fn web() -> Template {
    Template::parse("web", "templates/web/template.toml", WEB).unwrap()
}

fn values(pairs: &[(&str, Json)]) -> BTreeMap<String, Json> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[test]
fn a_template_parses() {
    let t = web();
    assert_eq!(t.environment, "sandbox");
    assert_eq!(t.account, "sandbox-a");
    assert_eq!(t.services, ["api"]);
    assert_eq!(t.cidr.as_ref().map(|c| (c.pool.as_str(), c.prefix)), Some(("sandbox", 24)));
    let names: Vec<&str> = t.parameters.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["app_name", "replicas", "auth", "size", "allowed"], "in the order written");
    let minimal = Template::parse("m", "t.toml", "environment = \"dev\"\n").unwrap();
    assert_eq!(minimal.account, "dev", "the account defaults to the environment");
    assert_eq!(minimal.terraform, "terraform");
}

#[test]
fn values_are_checked_and_typed() {
    let t = web();
    let ok = t
        .check_values(&values(&[
            ("app_name", json!("shop")),
            ("replicas", json!("3")),
            ("auth", json!("false")),
            ("allowed", json!("10.0.0.0/16")),
        ]))
        .unwrap();
    assert_eq!(
        ok,
        vec![
            ("app_name".to_owned(), Value::String("shop".into())),
            ("replicas".to_owned(), Value::Int(3)),
            ("auth".to_owned(), Value::Bool(false)),
            ("size".to_owned(), Value::String("small".into())),
            ("allowed".to_owned(), Value::String("10.0.0.0/16".into())),
        ]
    );
    let optional_left_out = t.check_values(&values(&[("app_name", json!("x"))])).unwrap();
    assert!(optional_left_out.iter().all(|(k, _)| k != "allowed"));
}

#[test]
fn every_broken_rule_is_named() {
    let t = web();
    /// The values given, then the parameter, rule and message expected.
    type Case<'a> = (Vec<(&'a str, Json)>, &'a str, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], "app_name", "required", "is required (a string)"),
        (vec![("app_name", json!("Shop"))], "app_name", "pattern", "does not match the pattern `[a-z][a-z0-9-]*`"),
        (vec![("app_name", json!("a".repeat(21)))], "app_name", "max", "longer than the maximum 20"),
        (vec![("app_name", json!(5))], "app_name", "type", "must be a string, not a number"),
        (vec![("app_name", json!("x")), ("replicas", json!(11))], "replicas", "max", "11 is above the maximum 10"),
        (vec![("app_name", json!("x")), ("replicas", json!(0))], "replicas", "min", "0 is below the minimum 1"),
        (
            vec![("app_name", json!("x")), ("replicas", json!("two"))],
            "replicas",
            "type",
            "must be a whole number, not `two`",
        ),
        (vec![("app_name", json!("x")), ("replicas", json!(1.5))], "replicas", "type", "must be a whole number"),
        (vec![("app_name", json!("x")), ("auth", json!("yes"))], "auth", "type", "must be true or false, not `yes`"),
        (vec![("app_name", json!("x")), ("size", json!("huge"))], "size", "enum", "`huge` is not one of: small, large"),
        (vec![("app_name", json!("x")), ("allowed", json!("10.0.0.1/16"))], "allowed", "cidr", "host bits set"),
        (vec![("app_name", json!("x")), ("allowed", json!("10.0.0.0/30"))], "allowed", "max", "smaller than a /28"),
        (vec![("app_name", json!("x")), ("allowed", json!("0.0.0.0/0"))], "allowed", "min", "larger than a /8"),
        (
            vec![("app_name", json!("x")), ("colour", json!("red"))],
            "colour",
            "unknown",
            "has no such parameter (it takes: app_name, replicas, auth, size, allowed)",
        ),
    ];
    for (given, parameter, rule, message) in cases {
        let errors = t.check_values(&values(&given)).unwrap_err();
        let e = errors.iter().find(|e| e.parameter == parameter).unwrap_or_else(|| panic!("{given:?}: {errors:?}"));
        assert_eq!(e.rule, rule, "{given:?}");
        assert!(e.message.contains(message), "{given:?}: {}", e.message);
    }
    let all = t.check_values(&values(&[("replicas", json!(99)), ("size", json!("x"))])).unwrap_err();
    assert_eq!(all.len(), 3, "every problem at once: {all:?}");
}

#[test]
fn injection_shaped_values_are_just_strings() {
    let text = "environment = \"dev\"\n[parameters.v]\ntype = \"string\"\n";
    let t = Template::parse("t", "t.toml", text).unwrap();
    for v in ["${file(\"/etc/passwd\")}", "%{ if true }x%{ endif }", "a\"b\\c\nd", ""] {
        let got = t.check_values(&values(&[("v", json!(v))])).unwrap();
        assert_eq!(got, vec![("v".to_owned(), Value::String(v.to_owned()))]);
    }
}

#[test]
fn the_schema_describes_the_form() {
    let schema = web().json_schema();
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["required"], json!(["app_name"]));
    let p = &schema["properties"];
    assert_eq!(
        p["app_name"],
        json!({"description": "The application's name", "type": "string", "pattern": "^(?:[a-z][a-z0-9-]*)$", "maxLength": 20})
    );
    assert_eq!(p["replicas"], json!({"type": "integer", "minimum": 1, "maximum": 10, "default": 2}));
    assert_eq!(p["auth"], json!({"type": "boolean", "default": true}));
    assert_eq!(p["size"], json!({"type": "string", "enum": ["small", "large"], "default": "small"}));
    assert_eq!(p["allowed"]["format"], "ipv4-cidr");
    let pattern = regex::Regex::new(p["allowed"]["pattern"].as_str().unwrap()).unwrap();
    assert!(pattern.is_match("10.0.0.0/16") && !pattern.is_match("10.0.0.0/33") && !pattern.is_match("x"));
}

fn error_at(text: &str) -> (String, &'static str, usize, usize) {
    let d = Template::parse("t", "templates/t/template.toml", text).unwrap_err();
    let first = d.errors().next().unwrap().clone();
    let span = first.span.clone().unwrap_or(0..0);
    let p = d.file.position(span.start);
    (first.message.clone(), first.code, p.line, p.column)
}

#[test]
fn errors_point_at_their_place() {
    let cases: Vec<(&str, &str, &str, usize, usize)> = vec![
        ("environment = \"dev\"\ncolour = 1\n", "config.unknown_key", "unknown field `colour`", 2, 1),
        ("description = \"x\"\n", "config.missing_key", "missing field `environment`", 1, 1),
        (
            "environment = \"dev\"\n[parameters.x]\ntype = \"float\"\n",
            "template.invalid_type",
            "`float` is not a parameter type",
            3,
            8,
        ),
        (
            "environment = \"dev\"\n[parameters.x]\ntype = \"string\"\npattern = \"[a-\"\n",
            "template.invalid_pattern",
            "not a valid regex",
            4,
            11,
        ),
        (
            "environment = \"dev\"\n[parameters.x]\ntype = \"int\"\nmin = 5\nmax = 1\n",
            "template.invalid_rule",
            "`min = 5` is above `max = 1`",
            5,
            7,
        ),
        (
            "environment = \"dev\"\n[parameters.x]\ntype = \"int\"\nmax = 3\ndefault = 4\n",
            "template.invalid_default",
            "the default 4 is above the maximum 3",
            5,
            11,
        ),
        (
            "environment = \"dev\"\n[parameters.x]\ntype = \"enum\"\n",
            "template.invalid_rule",
            "lists no `values`",
            3,
            8,
        ),
        (
            "environment = \"dev\"\n[parameters.x]\ntype = \"bool\"\npattern = \"x\"\n",
            "template.invalid_rule",
            "`pattern` does not apply to a `bool` parameter",
            4,
            11,
        ),
        (
            "environment = \"dev\"\n[parameters.plinth_fqdn]\ntype = \"string\"\n",
            "template.reserved_parameter",
            "reserved",
            2,
            13,
        ),
        (
            "environment = \"dev\"\n[parameters.\"1x\"]\ntype = \"string\"\n",
            "template.invalid_parameter",
            "not a valid parameter name",
            2,
            13,
        ),
        (
            "environment = \"dev\"\ncidr = { pool = \"p\", prefix = 40 }\n",
            "template.invalid_cidr",
            "`prefix = 40`",
            2,
            31,
        ),
        ("environment = \"dev\"\ndomain = \"a..b\"\n", "template.invalid_domain", "not a domain name", 2, 10),
    ];
    for (text, code, message, line, column) in cases {
        let (got_message, got_code, got_line, got_column) = error_at(text);
        assert_eq!(got_code, code, "{text}");
        assert!(got_message.contains(message), "{text}: {got_message}");
        assert_eq!((got_line, got_column), (line, column), "{text}: {got_message}");
    }
}
