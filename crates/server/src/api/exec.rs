//! `POST /api/v1/services/{service}/environments/{environment}/exec`: one-off commands. Checks
//! who asks, for what and where, and that a release is deployed there, in plain JSON errors;
//! then answers `101 Switching Protocols` and hands the connection to [`crate::exec`].

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use plinth_core::auth::{ADMIN, Action, CI, allowed};
use plinth_core::config::Config;
use plinth_core::deploy::DeploymentStatus;

use super::{AuditNote, PathPair, noted};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::exec::{PROTOCOL, TermSize};
use crate::state::AppState;

/// What the query string asks for: the command as repeated `arg`s, and a terminal.
#[derive(Debug, Default, PartialEq, Eq)]
struct ExecQuery {
    args: Vec<String>,
    tty: bool,
    cols: Option<u16>,
    rows: Option<u16>,
    term: Option<String>,
}

fn bad_query(message: String) -> ApiError {
    ApiError::bad_request(
        "api.bad_query",
        message,
        "Pass the command as repeated `arg` parameters, and `tty=true` with `cols`, `rows` and `term` for a terminal.",
    )
}

fn parse_query(uri: &Uri) -> Result<ExecQuery, ApiError> {
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| bad_query(format!("the query parameters are not what this endpoint takes: {}", e.body_text())))?
        .0;
    let mut query = ExecQuery::default();
    let size = |name: &str, value: &str| {
        value.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(|| bad_query(format!("`{name}` must be 1 to 65535")))
    };
    for (name, value) in pairs {
        match name.as_str() {
            "arg" => query.args.push(value),
            "tty" => {
                query.tty = value.parse().map_err(|_| bad_query("`tty` must be `true` or `false`".into()))?;
            }
            "cols" => query.cols = Some(size("cols", &value)?),
            "rows" => query.rows = Some(size("rows", &value)?),
            "term" => query.term = Some(value),
            other => return Err(bad_query(format!("unknown query parameter `{other}`"))),
        }
    }
    match query.args.first() {
        None => Err(ApiError::bad_request(
            "exec.no_command",
            "no command was given",
            "Pass the program and its arguments as repeated `arg` parameters: `?arg=ls&arg=-l`.",
        )),
        Some(program) if program.is_empty() => Err(ApiError::bad_request(
            "exec.no_command",
            "the program's name is empty",
            "Pass the program and its arguments as repeated `arg` parameters: `?arg=ls&arg=-l`.",
        )),
        Some(_) if query.args.iter().any(|a| a.contains('\0')) => Err(ApiError::bad_request(
            "exec.bad_command",
            "an argument holds a NUL byte",
            "Arguments are passed to the program as C strings; remove the NUL bytes.",
        )),
        Some(_) => Ok(query),
    }
}

/// Whether a token may run commands in `environment`: admins, and the roles that approve
/// deployments there (`approvers` of an environment with `approval = true`), as for rollbacks
/// and cancels. Never a token with the `ci` role, unless it is also admin.
fn may_exec(roles: &[String], environment: &str, config: &Config) -> bool {
    if roles.iter().any(|r| r == ADMIN) {
        return true;
    }
    if roles.iter().any(|r| r == CI) {
        return false;
    }
    allowed(roles, &Action::Approve { environment: Some(environment.to_owned()) }, Some(config))
}

fn forbidden(caller: &Caller, environment: &str, config: &Config) -> ApiError {
    let roles = if caller.roles.is_empty() { "no roles".to_owned() } else { caller.roles.join(", ") };
    let who = match config.environments.get(environment) {
        Some(e) if e.approval && !e.approvers.is_empty() => format!(
            "an admin token, or one with the role {} (the approvers of `{environment}`)",
            e.approvers.join(" or ")
        ),
        _ => "an admin token".to_owned(),
    };
    ApiError::new(
        403,
        "auth.forbidden",
        format!("token `{}` ({roles}) may not run commands in `{environment}`", caller.name),
        format!("This needs {who}; ci tokens never may."),
    )
}

/// Whether the request asks to switch to the exec protocol.
fn asks_upgrade(headers: &HeaderMap) -> bool {
    let upgrade = headers.get(header::UPGRADE).and_then(|v| v.to_str().ok());
    let connection = headers.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok());
    upgrade.is_some_and(|u| u.trim().eq_ignore_ascii_case(PROTOCOL))
        && connection.flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

fn upgrade_required() -> Response {
    let mut response = ApiError::new(
        426,
        "exec.upgrade_required",
        format!(
            "this endpoint runs a command over an upgraded HTTP/1.1 connection (`Connection: Upgrade`, `Upgrade: {PROTOCOL}`)"
        ),
        "Use `plinth exec SERVICE --env ENV -- COMMAND`; docs/deploys.md describes the protocol.",
    )
    .into_response();
    response.headers_mut().insert(header::UPGRADE, header::HeaderValue::from_static(PROTOCOL));
    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
    response
}

/// `POST /api/v1/services/{service}/environments/{environment}/exec?arg=CMD&arg=ARG…`
pub async fn exec(
    State(state): State<AppState>,
    caller: Caller,
    PathPair(service, environment): PathPair,
    mut request: Request,
) -> Result<Response, ApiError> {
    let mut note = AuditNote::new("service.exec", format!("service/{service}/{environment}"));
    let result = async {
        let policy = crate::policy::current(&state).await.map_err(|e| {
            ApiError::conflict(
                "exec.no_policy",
                format!("cannot read the services: {e}"),
                "Push a valid plinth.toml with the service to the main branch first.",
            )
        })?;
        // An environment made from a template is governed by the template's environment.
        let governing = match policy.config.environments.contains_key(&environment) {
            true => environment.clone(),
            false => match state.store.environment(&environment).await? {
                Some(env) if env.status.is_live() => env.policy_environment,
                _ => environment.clone(),
            },
        };
        if !may_exec(&caller.roles, &governing, &policy.config) {
            return Err(forbidden(&caller, &governing, &policy.config));
        }
        let Some(def) = policy.config.service(&service) else {
            let known: Vec<String> = policy.config.services.iter().map(|s| format!("`{}`", s.name)).collect();
            return Err(ApiError::not_found(
                "exec.unknown_service",
                format!(
                    "there is no service `{service}` in plinth.toml on the main branch{}",
                    if known.is_empty() { String::new() } else { format!(" (services: {})", known.join(", ")) }
                ),
                "Check the name; services are declared under [services.NAME].",
            ));
        };
        let service_settings = crate::environments::service_in(&state, &policy.config, def, &environment)
            .await
            .map_err(|e| {
                ApiError::not_found(
                    "exec.unknown_environment",
                    e,
                    "Name an environment of plinth.toml, or one made on request (`plinth env list`).",
                )
            })?;
        let query = parse_query(request.uri())?;
        note = note.clone().details(serde_json::json!({"command": query.args, "tty": query.tty}));
        let upgrade = match request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() {
            Some(upgrade) if asks_upgrade(request.headers()) => upgrade,
            _ => return Ok(upgrade_required()),
        };
        let history = state.store.deployments(&service, &environment, 1000).await?;
        let Some(current) = history.iter().find(|d| d.status == DeploymentStatus::Succeeded) else {
            return Err(ApiError::conflict(
                "exec.no_release",
                format!("`{service}` has no release deployed in `{environment}` yet"),
                "Commands run with the current release; publish one and wait for its deployment (`plinth deploy status SERVICE --env ENV`).",
            ));
        };
        let release = state
            .store
            .release(current.release_id)
            .await?
            .ok_or_else(|| ApiError::internal(format!("release #{} is gone", current.release_id)))?;
        let tty = query.tty.then(|| TermSize { cols: query.cols.unwrap_or(80), rows: query.rows.unwrap_or(24) });
        let exec =
            crate::exec::prepare(&state, &service_settings, &release, &query.args, tty, query.term, &caller.name)
                .await
                .map_err(|e| {
                    ApiError::new(
                        500,
                        "exec.not_prepared",
                        format!("the command's environment could not be prepared: {e}"),
                        "Check the server's log; the service's secrets must decrypt with the master key.",
                    )
                })?;
        // The command line as given, with any secret value in it masked; never the environment.
        let command: Vec<String> = query.args.iter().map(|a| exec.redactor.redact(a).into_owned()).collect();
        note = note.clone().details(serde_json::json!({
            "exec": exec.id,
            "release": release.id,
            "command": command,
            "tty": query.tty,
        }));
        let id = exec.id.clone();
        tokio::spawn(crate::exec::run(state.clone(), exec, upgrade));
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, PROTOCOL)
            .header("x-plinth-exec", id)
            .header("x-plinth-release", release.id.to_string())
            .body(Body::empty())
            .map_err(|e| ApiError::internal(e.to_string()))
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config() -> Config {
        let text = r#"
main_branch = "main"
[environments.stg]
branches = ["main"]
[environments.prd]
branches = ["main"]
approval = true
approvers = ["sre", "ci"]
"#;
        Config::parse("plinth.toml", text).unwrap().0
    }

    #[test]
    fn who_may_run_commands() {
        let config = config();
        // (roles, environment, may)
        let cases: &[(&[&str], &str, bool)] = &[
            (&["admin"], "stg", true),
            (&["admin"], "prd", true),
            (&["admin", "ci"], "prd", true),
            (&["sre"], "prd", true),
            (&["sre"], "stg", false),
            (&["developer"], "stg", false),
            (&["developer"], "prd", false),
            (&["ci"], "stg", false),
            // `ci` listed as an approver still may not.
            (&["ci"], "prd", false),
            (&["ci", "sre"], "prd", false),
            (&[], "prd", false),
            (&["sre"], "qa", false),
        ];
        for (roles, environment, may) in cases {
            let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
            assert_eq!(may_exec(&roles, environment, &config), *may, "{roles:?} in {environment}");
        }
    }

    #[test]
    fn the_query_carries_the_command() {
        let uri = |q: &str| format!("/x?{q}").parse::<Uri>().unwrap();
        let ok =
            parse_query(&uri("arg=sh&arg=-c&arg=echo%20%24A%20%26%26%20exit%207&tty=true&cols=120&rows=40&term=xterm"))
                .unwrap();
        assert_eq!(
            ok,
            ExecQuery {
                args: vec!["sh".into(), "-c".into(), "echo $A && exit 7".into()],
                tty: true,
                cols: Some(120),
                rows: Some(40),
                term: Some("xterm".into()),
            }
        );
        assert_eq!(parse_query(&uri("arg=a%2Bb&arg=")).unwrap().args, ["a+b", ""]);
        // (query, error code)
        for (query, code) in [
            ("", "exec.no_command"),
            ("tty=false", "exec.no_command"),
            ("arg=", "exec.no_command"),
            ("arg=a%00b", "exec.bad_command"),
            ("arg=ls&tty=yes", "api.bad_query"),
            ("arg=ls&cols=0", "api.bad_query"),
            ("arg=ls&rows=70000", "api.bad_query"),
            ("arg=ls&shell=true", "api.bad_query"),
        ] {
            assert_eq!(parse_query(&uri(query)).unwrap_err().code, code, "{query}");
        }
    }

    #[test]
    fn an_upgrade_needs_both_headers() {
        // (connection, upgrade, asks)
        for (connection, upgrade, asks) in [
            (Some("Upgrade"), Some("plinth-exec"), true),
            (Some("keep-alive, upgrade"), Some("Plinth-Exec"), true),
            (None, Some("plinth-exec"), false),
            (Some("upgrade"), None, false),
            (Some("upgrade"), Some("websocket"), false),
        ] {
            let mut headers = HeaderMap::new();
            if let Some(c) = connection {
                headers.insert(header::CONNECTION, c.parse().unwrap());
            }
            if let Some(u) = upgrade {
                headers.insert(header::UPGRADE, u.parse().unwrap());
            }
            assert_eq!(asks_upgrade(&headers), asks, "{connection:?} {upgrade:?}");
        }
    }
}
