//! Releases: what CI publishes (CodePipeline's `imagedefinitions.json`, one image per container),
//! checked against the service before anything is recorded, and which environments a branch or
//! tag releases to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ServiceDef};

/// One entry of `imagedefinitions.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefinition {
    pub name: String,
    #[serde(rename = "imageUri")]
    pub image_uri: String,
}

/// Longest image reference accepted.
const MAX_IMAGE: usize = 512;

/// Parses `imagedefinitions.json` and checks it against the service: every container exactly
/// once, no unknown names, and well-formed image references. Returns the images by container.
/// Errors say which entry is wrong and how.
pub fn check_image_definitions(service: &ServiceDef, body: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not valid JSON (line {}, column {}): {e}", e.line(), e.column()))?;
    let entries = value.as_array().ok_or_else(|| {
        "the body must be a JSON array like `[{\"name\": \"app\", \"imageUri\": \"registry/app:1.2.3\"}]`".to_owned()
    })?;
    let mut images = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let object =
            entry.as_object().ok_or_else(|| format!("entry {i} is not an object with `name` and `imageUri`"))?;
        if let Some(key) = object.keys().find(|k| *k != "name" && *k != "imageUri") {
            return Err(format!("entry {i} has a key `{key}`; an entry has only `name` and `imageUri`"));
        }
        let name =
            object.get("name").and_then(|n| n.as_str()).ok_or_else(|| format!("entry {i} has no `name` string"))?;
        let image = object
            .get("imageUri")
            .and_then(|n| n.as_str())
            .ok_or_else(|| format!("entry {i} (`{name}`) has no `imageUri` string"))?;
        if !service.containers.iter().any(|c| c == name) {
            return Err(format!(
                "entry {i} names container `{name}`, which service `{}` does not have (it has {})",
                service.name,
                service.containers.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
            ));
        }
        check_image(image).map_err(|why| format!("entry {i} (`{name}`): image `{}` {why}", image.escape_debug()))?;
        if images.insert(name.to_owned(), image.to_owned()).is_some() {
            return Err(format!("entry {i} names container `{name}` again; each container appears once"));
        }
    }
    let missing: Vec<String> =
        service.containers.iter().filter(|c| !images.contains_key(*c)).map(|c| format!("`{c}`")).collect();
    if !missing.is_empty() {
        return Err(format!(
            "no image for container {} of service `{}`; a release names every container",
            missing.join(", "),
            service.name
        ));
    }
    Ok(images)
}

/// Checks an image reference: `[host[:port]/]path[:tag][@sha256:digest]`, with the path in
/// lowercase letters, digits and separators, as registries accept it.
pub fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("is empty".into());
    }
    if image.len() > MAX_IMAGE {
        return Err(format!("is longer than {MAX_IMAGE} characters"));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains spaces or control characters".into());
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let hex = digest.strip_prefix("sha256:").ok_or("has a digest that is not `sha256:…`")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err("has a digest that is not 64 lowercase hex digits".into());
        }
    }
    // A tag follows the last `:` after the last `/` (a `:` before it is a registry's port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err("has a tag that is not letters, digits, `_`, `.` and `-` (at most 128)".into());
        }
    }
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.len() > 1 && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (name, port) = host.split_once(':').map_or((host, None), |(h, p)| (h, Some(p)));
        let valid_host = !name.is_empty()
            && name.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
        if !valid_host {
            return Err(format!("has a registry `{host}` that is not a host name with an optional port"));
        }
    }
    for part in &parts {
        let valid = !part.is_empty()
            && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return Err(format!(
                "has a repository part `{part}` that is not lowercase letters, digits and `.`, `_`, `-` between them"
            ));
        }
    }
    Ok(())
}

/// Where a release is going: one environment, or those a branch or a tag releases to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Environment(&'a str),
    Branch(&'a str),
    Tag(&'a str),
}

/// The environments a release goes to under `policy`, or why there are none.
pub fn environments(policy: &Config, target: &Target<'_>) -> Result<Vec<String>, String> {
    let declared = || policy.environments.keys().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(", ");
    let envs: Vec<String> = match target {
        Target::Environment(env) => {
            if !policy.environments.contains_key(*env) {
                return Err(format!("environment `{env}` is not declared in plinth.toml (declared: {})", declared()));
            }
            vec![(*env).to_owned()]
        }
        Target::Branch(branch) => policy.environments_for_branch(branch).map(|e| e.name.clone()).collect(),
        Target::Tag(tag) => policy.environments_for_tag(tag).map(|e| e.name.clone()).collect(),
    };
    if envs.is_empty() {
        return Err(match target {
            Target::Branch(b) => {
                format!("branch `{b}` releases to no environment; environments list theirs in `branches`")
            }
            Target::Tag(t) => format!("tag `{t}` releases to no environment; environments list theirs in `tags`"),
            Target::Environment(env) => format!("environment `{env}` is not declared"),
        });
    }
    Ok(envs)
}

/// An environment made on request, as releases see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnRequest {
    pub name: String,
    /// The template's environment: its policy (approval) applies to deployments here.
    pub policy_environment: String,
    pub services: Vec<String>,
    /// The branch, for a review environment.
    pub review_branch: Option<String>,
}

/// Where one release of a service goes: the environment, and the plinth.toml environment whose
/// policy applies there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub environment: String,
    pub policy_environment: String,
}

/// The environments a release of `service` goes to, environments made on request included: a
/// branch also releases to its review environment (S1.3), and an environment made from a
/// template takes releases of the services its template runs.
pub fn destinations(
    policy: &Config,
    target: &Target<'_>,
    service: &str,
    on_request: &[OnRequest],
) -> Result<Vec<Destination>, String> {
    let declared = |e: &str| Destination { environment: e.to_owned(), policy_environment: e.to_owned() };
    let made =
        |e: &OnRequest| Destination { environment: e.name.clone(), policy_environment: e.policy_environment.clone() };
    match target {
        Target::Environment(env) if !policy.environments.contains_key(*env) => {
            match on_request.iter().find(|e| e.name == *env) {
                Some(e) if e.services.iter().any(|s| s == service) => Ok(vec![made(e)]),
                Some(e) => Err(format!(
                    "service `{service}` does not run in environment `{env}`; its template runs: {}",
                    if e.services.is_empty() { "none".to_owned() } else { e.services.join(", ") }
                )),
                None => {
                    environments(policy, target).map(|_| Vec::new()).map_err(|e| format!("{e}, nor made on request"))
                }
            }
        }
        Target::Branch(branch) => {
            let mut out: Vec<Destination> = policy.environments_for_branch(branch).map(|e| declared(&e.name)).collect();
            out.extend(
                on_request
                    .iter()
                    .filter(|e| e.review_branch.as_deref() == Some(*branch) && e.services.iter().any(|s| s == service))
                    .map(made),
            );
            if out.is_empty() {
                return environments(policy, target).map(|_| Vec::new());
            }
            Ok(out)
        }
        _ => Ok(environments(policy, target)?.iter().map(|e| declared(e)).collect()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CONFIG: &str = r#"
[environments.stg]
branches = ["main"]
[environments.prd]
branches = ["main"]
tags = ["v*.*.*"]
[environments.dev]
branches = ["feature/*"]
[services.api]
containers = ["app", "sidecar"]
command = ["x"]
"#;

    fn api() -> (Config, ServiceDef) {
        let (config, _) = Config::parse("plinth.toml", CONFIG).unwrap();
        let api = config.service("api").unwrap().clone();
        (config, api)
    }

    #[test]
    fn image_definitions_name_every_container_once() {
        let (_, api) = api();
        let ok = br#"[{"name": "app", "imageUri": "registry.example.com:5000/team/app:1.2.3"},
                      {"name": "sidecar", "imageUri": "envoy@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}]"#;
        let images = check_image_definitions(&api, ok).unwrap();
        assert_eq!(images["app"], "registry.example.com:5000/team/app:1.2.3");
        let cases: &[(&[u8], &str)] = &[
            (b"[{", "not valid JSON (line 1, column 2)"),
            (b"{}", "must be a JSON array"),
            (b"[1]", "entry 0 is not an object"),
            (br#"[{"name": "app"}]"#, "entry 0 (`app`) has no `imageUri`"),
            (br#"[{"imageUri": "x"}]"#, "entry 0 has no `name`"),
            (br#"[{"name": "web", "imageUri": "x"}]"#, "container `web`, which service `api` does not have"),
            (
                br#"[{"name": "app", "imageUri": ""}, {"name": "sidecar", "imageUri": "s"}]"#,
                "entry 0 (`app`): image `` is empty",
            ),
            (br#"[{"name": "app", "imageUri": "Team/App"}]"#, "repository part `Team`"),
            (br#"[{"name": "app", "imageUri": "a b"}]"#, "spaces"),
            (br#"[{"name": "app", "imageUri": "app:"}]"#, "tag"),
            (
                br#"[{"name": "app", "imageUri": "a"}, {"name": "app", "imageUri": "b"}]"#,
                "entry 1 names container `app` again",
            ),
            (br#"[{"name": "app", "imageUri": "a"}]"#, "no image for container `sidecar`"),
            (br#"[{"name": "app", "imageUri": "a", "tag": "x"}]"#, "has a key `tag`"),
            (br#"[{"name": "app", "imageUri": "a@sha256:12"}]"#, "digest"),
        ];
        for (body, expected) in cases {
            let err = check_image_definitions(&api, body).unwrap_err();
            assert!(err.contains(expected), "{}: {err}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn releases_reach_environments_made_on_request() {
        let (config, _) = Config::parse("plinth.toml", CONFIG).unwrap();
        let review = OnRequest {
            name: "review-feature-x".into(),
            policy_environment: "dev".into(),
            services: vec!["api".into()],
            review_branch: Some("feature/x".into()),
        };
        let sandbox = OnRequest {
            name: "shop1".into(),
            policy_environment: "dev".into(),
            services: vec!["api".into()],
            review_branch: None,
        };
        let all = [review.clone(), sandbox];
        let names = |d: Result<Vec<Destination>, String>| {
            d.map(|d| d.into_iter().map(|d| format!("{}:{}", d.environment, d.policy_environment)).collect::<Vec<_>>())
        };
        assert_eq!(
            names(destinations(&config, &Target::Branch("feature/x"), "api", &all)).unwrap(),
            ["dev:dev", "review-feature-x:dev"]
        );
        assert_eq!(names(destinations(&config, &Target::Branch("feature/x"), "worker", &all)).unwrap(), ["dev:dev"]);
        assert_eq!(names(destinations(&config, &Target::Environment("shop1"), "api", &all)).unwrap(), ["shop1:dev"]);
        assert!(
            destinations(&config, &Target::Environment("shop1"), "worker", &all)
                .unwrap_err()
                .contains("its template runs: api")
        );
        assert!(
            destinations(&config, &Target::Environment("qa"), "api", &all).unwrap_err().contains("nor made on request")
        );
        assert_eq!(names(destinations(&config, &Target::Tag("v1.2.3"), "api", &all)).unwrap(), ["prd:prd"]);
        assert!(destinations(&config, &Target::Branch("hotfix"), "api", &all).is_err());
    }

    #[test]
    fn branches_and_tags_pick_environments() {
        let (config, _) = api();
        assert_eq!(environments(&config, &Target::Branch("main")).unwrap(), ["prd", "stg"]);
        assert_eq!(environments(&config, &Target::Branch("feature/x")).unwrap(), ["dev"]);
        assert_eq!(environments(&config, &Target::Tag("v1.2.3")).unwrap(), ["prd"]);
        assert_eq!(environments(&config, &Target::Environment("stg")).unwrap(), ["stg"]);
        assert!(environments(&config, &Target::Branch("hotfix")).unwrap_err().contains("releases to no environment"));
        assert!(environments(&config, &Target::Tag("nightly")).unwrap_err().contains("`tags`"));
        assert!(
            environments(&config, &Target::Environment("qa")).unwrap_err().contains("declared: `dev`, `prd`, `stg`")
        );
    }
}
