#![allow(clippy::unwrap_used)]
//! The OpenAPI document the server serves matches the router: the same (method, path) pairs as
//! `ROUTES`, no dangling `$ref`s, and the unauthenticated endpoints marked as such.

use std::collections::BTreeSet;

use plinth_server::api::{OPENAPI, ROUTES};
use serde_json::Value;

/// The fields of a path item that are operations.
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The other fields a path item may have.
const PATH_ITEM_FIELDS: [&str; 5] = ["$ref", "summary", "description", "servers", "parameters"];

/// The routes that take no bearer token.
const UNAUTHENTICATED: [(&str, &str); 3] =
    [("GET", "/healthz"), ("GET", "/api/v1/openapi.json"), ("POST", "/hooks/github")];

fn document() -> Value {
    serde_json::from_str(OPENAPI).unwrap()
}

/// Every operation in the document: (upper-case method, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("`paths` is an object") {
        for (key, value) in item.as_object().unwrap_or_else(|| panic!("path item `{path}` is not an object")) {
            if METHODS.contains(&key.as_str()) {
                out.push((key.to_uppercase(), path.clone(), value.clone()));
            } else {
                assert!(
                    PATH_ITEM_FIELDS.contains(&key.as_str()) || key.starts_with("x-"),
                    "path item `{path}` has an unknown field `{key}`"
                );
            }
        }
    }
    out
}

#[test]
fn the_document_is_openapi_3_1() {
    let doc = document();
    let version = doc["openapi"].as_str().expect("`openapi` is a string");
    assert!(version.starts_with("3.1"), "openapi is `{version}`, not 3.1");
}

#[test]
fn the_document_has_exactly_the_routes() {
    let doc = document();
    let documented: BTreeSet<(String, String)> =
        operations(&doc).into_iter().map(|(method, path, _)| (method, path)).collect();
    let routes: BTreeSet<(String, String)> =
        ROUTES.iter().map(|(method, path)| ((*method).to_owned(), (*path).to_owned())).collect();
    assert_eq!(routes.len(), ROUTES.len(), "ROUTES lists a route twice");
    let missing: Vec<_> = routes.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routes).collect();
    assert!(missing.is_empty(), "routes missing from openapi.json: {missing:?}");
    assert!(extra.is_empty(), "operations in openapi.json that are not routes: {extra:?}");
}

/// Collects every `$ref` with the JSON pointer of where it is.
fn collect_refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let here = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                match (key.as_str(), child) {
                    ("$ref", Value::String(target)) => out.push((here, target.clone())),
                    ("$ref", other) => panic!("`{here}` is not a string: {other}"),
                    _ => collect_refs(child, &here, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                collect_refs(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_ref_resolves_to_a_component() {
    let doc = document();
    let mut refs = Vec::new();
    collect_refs(&doc, "", &mut refs);
    assert!(!refs.is_empty(), "the document has no $ref at all");
    for (at, target) in refs {
        let pointer =
            target.strip_prefix('#').unwrap_or_else(|| panic!("`{at}` points outside the document: {target}"));
        assert!(pointer.starts_with("/components/"), "`{at}` points at {target}, which is not a component");
        assert!(doc.pointer(pointer).is_some(), "`{at}` points at {target}, which does not exist");
    }
}

#[test]
fn only_the_unauthenticated_routes_skip_the_bearer_token() {
    let doc = document();
    assert_eq!(doc["security"], serde_json::json!([{"bearerAuth": []}]), "bearer auth is not the global default");
    assert_eq!(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
    for (method, path, operation) in operations(&doc) {
        let open = UNAUTHENTICATED.contains(&(method.as_str(), path.as_str()));
        match operation.get("security") {
            Some(security) if open => assert_eq!(security, &serde_json::json!([]), "{method} {path}"),
            None if open => panic!("{method} {path} needs no token but does not say `security: []`"),
            Some(security) => panic!("{method} {path} overrides the bearer token with {security}"),
            None => {}
        }
    }
}

#[test]
fn operation_ids_are_unique() {
    let doc = document();
    let mut seen = BTreeSet::new();
    for (method, path, operation) in operations(&doc) {
        let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(seen.insert(id.to_owned()), "operationId `{id}` is used twice");
    }
}
