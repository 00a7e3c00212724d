//! Environments on request over the API: templates with their parameters as JSON Schema,
//! create / update / destroy requests (checked, queued per account, recorded in the request
//! log), and the catalog.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plinth_core::auth::Action;
use plinth_core::config::Config;
use plinth_core::environment::{EnvStatus, RequestKind, RequestStatus, check_name};
use plinth_core::template::Template;
use plinth_store::{CidrAsk, EnvFilter, EnvRecord, EnvRequest, NewEnv};
use serde::Deserialize;

use super::{AuditNote, JsonBody, PathParam, QueryParams, noted};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// `GET /api/v1/templates`
pub async fn templates(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let (loaded, broken) = crate::environments::all(&state).await?;
    let templates: Vec<serde_json::Value> = loaded.iter().map(|t| t.to_json()).collect();
    Ok(axum::Json(serde_json::json!({"templates": templates, "broken": broken})).into_response())
}

/// `GET /api/v1/templates/{name}`
pub async fn template(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let t = crate::environments::one(&state, &name).await?;
    Ok(axum::Json(t.to_json()).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    template: String,
    product: String,
    name: String,
    #[serde(default)]
    params: BTreeMap<String, serde_json::Value>,
}

/// The block a template asks for, from its pool in plinth.toml.
pub fn cidr_ask(config: &Config, template: &Template) -> Option<CidrAsk> {
    let ask = template.cidr.as_ref()?;
    let pool = config.cidr_pools.get(&ask.pool)?;
    Some(CidrAsk { pool: pool.name.clone(), ranges: pool.ranges.clone(), prefix: ask.prefix })
}

fn bad_params(template: &str, errors: &[plinth_core::template::ParamError]) -> ApiError {
    let list: Vec<String> = errors.iter().map(|e| format!("{e} [{}]", e.rule)).collect();
    ApiError::bad_request(
        "environment.bad_parameter",
        list.join("; "),
        format!(
            "Fix the values as each message says; `plinth templates show {template}` lists the parameters and their rules."
        ),
    )
}

/// `POST /api/v1/environments`: checks the request and queues it for its account.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let mut note =
        AuditNote::new("environment.create", format!("environment/{}", body.name)).details(serde_json::json!({
            "template": body.template, "product": body.product, "params": body.params,
        }));
    let result = async {
        caller.require(&Action::Provision, None)?;
        check_name(&body.name).map_err(|e| {
            ApiError::bad_request(
                "environment.bad_name",
                e,
                "Pick a name such as `shop-dev1`; it becomes part of host names.",
            )
        })?;
        let policy = crate::policy::current(&state).await.map_err(|e| {
            ApiError::conflict(
                "environment.no_policy",
                format!("cannot read plinth.toml on the main branch: {e}"),
                "Push a valid plinth.toml to the main branch first.",
            )
        })?;
        if policy.config.environments.contains_key(&body.name) {
            return Err(ApiError::conflict(
                "environment.exists",
                format!("`{}` is an environment of plinth.toml", body.name),
                "Pick another name; environments made on request share names with plinth.toml's.",
            ));
        }
        let Some(product) = policy.config.products.get(&body.product) else {
            let known: Vec<&str> = policy.config.products.keys().map(String::as_str).collect();
            return Err(ApiError::bad_request(
                "environment.unknown_product",
                format!(
                    "there is no product `{}` in plinth.toml{}",
                    body.product,
                    if known.is_empty() { String::new() } else { format!(" (products: {})", known.join(", ")) }
                ),
                "Declare products as [products.NAME] with an `owner` on the main branch.",
            ));
        };
        let loaded = crate::environments::one(&state, &body.template).await?;
        let t = &loaded.template;
        let values = t.check_values(&body.params).map_err(|errors| bad_params(&t.name, &errors))?;
        let params: serde_json::Map<String, serde_json::Value> =
            values.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
        let new = NewEnv {
            name: body.name.clone(),
            product: product.name.clone(),
            template: t.name.clone(),
            template_commit: loaded.commit.clone(),
            policy_environment: t.environment.clone(),
            account: t.account.clone(),
            params: serde_json::Value::Object(params),
            owner: product.owner.clone(),
            requested_by: caller.name.clone(),
            fqdn: t.domain.as_ref().map(|d| format!("{}.{d}", body.name)),
            services: t.services.clone(),
            workspace: None,
            terraform: t.terraform.clone(),
            review: None,
            cidr: cidr_ask(&policy.config, t),
        };
        let (env, request) = state.store.create_environment(new, state.now()).await?;
        state.wake_provisioner.notify_one();
        note = note.clone().details(serde_json::json!({
            "template": t.name, "product": product.name, "params": env.params, "request": request.id,
            "account": env.account, "cidr": env.cidr,
        }));
        Ok((StatusCode::ACCEPTED, axum::Json(queued(&state, env, request).await?)).into_response())
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

/// A request's answer: the environment, the request, and where it is in its account's queue.
async fn queued(state: &AppState, env: EnvRecord, request: EnvRequest) -> Result<serde_json::Value, ApiError> {
    let pending = state.store.unfinished_environment_requests().await?;
    let ahead: Vec<i64> = pending
        .iter()
        .filter(|r| r.account == request.account && r.id < request.id && !r.status.is_final())
        .map(|r| r.id)
        .collect();
    let message = if ahead.is_empty() {
        format!("{} request #{} for `{}` starts now", request.kind.as_str(), request.id, env.name)
    } else {
        format!(
            "{} request #{} for `{}` is queued behind {} request(s) for account `{}` (#{}); they run one at a time",
            request.kind.as_str(),
            request.id,
            env.name,
            ahead.len(),
            request.account,
            ahead.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", #")
        )
    };
    Ok(serde_json::json!({"environment": env, "request": request, "ahead": ahead, "message": message}))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    product: Option<String>,
    template: Option<String>,
    status: Option<String>,
    /// Only review environments.
    review: Option<bool>,
    /// Include destroyed environments and failed creates.
    all: Option<bool>,
    /// A part of the name.
    q: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

fn filter_of(query: &ListQuery) -> Result<EnvFilter, ApiError> {
    let status = match &query.status {
        Some(s) => Some(s.parse::<EnvStatus>().map_err(|e| {
            ApiError::bad_request("api.bad_query", e, "Filter by one of the statuses the message lists.")
        })?),
        None => None,
    };
    Ok(EnvFilter {
        product: query.product.clone(),
        template: query.template.clone(),
        status,
        live: !query.all.unwrap_or(false) && status.is_none(),
        review: query.review.unwrap_or(false),
        query: query.q.clone(),
        after: query.after.clone(),
        limit: Some(query.limit.unwrap_or(1000).clamp(1, 100_000)),
    })
}

/// `GET /api/v1/environments`
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let (environments, next) = page(&state, &filter_of(&query)?).await?;
    Ok(axum::Json(EnvList { environments, next }).into_response())
}

async fn find(state: &AppState, name: &str) -> Result<EnvRecord, ApiError> {
    state.store.environment(name).await?.ok_or_else(|| {
        ApiError::not_found(
            "environment.not_found",
            format!("there is no environment `{name}` made on request"),
            "List them with `plinth env list`; environments of plinth.toml are not made on request.",
        )
    })
}

/// `GET /api/v1/environments/{name}`: the environment, its request log, the services running in
/// it and their releases.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let env = find(&state, &name).await?;
    let requests = state.store.environment_requests(Some(env.id), 200).await?;
    let pending = state.store.unfinished_environment_requests().await?;
    let positions = crate::provisioner::queue_positions(&pending);
    let mut log = Vec::new();
    for r in &requests {
        let mut entry = serde_json::to_value(r).map_err(|e| ApiError::internal(e.to_string()))?;
        if let Some(ahead) = positions.get(&r.id) {
            entry["ahead"] = serde_json::json!(ahead);
        }
        log.push(entry);
    }
    let services = services_of(&state, &env).await?;
    Ok(axum::Json(serde_json::json!({"environment": env, "requests": log, "services": services})).into_response())
}

/// The services of an environment with their current release and hosts.
async fn services_of(state: &AppState, env: &EnvRecord) -> Result<Vec<serde_json::Value>, ApiError> {
    let mut out = Vec::new();
    for service in &env.services {
        let history = state.store.deployments(service, &env.name, 50).await?;
        let current = history.iter().find(|d| d.status == plinth_core::deploy::DeploymentStatus::Succeeded);
        let release = match current {
            Some(d) => state.store.release(d.release_id).await?,
            None => None,
        };
        out.push(serde_json::json!({
            "service": service,
            "hosts": env.hosts_for(service),
            "release": release,
            "instances": state.deployer.instances(service, &env.name).len(),
        }));
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// Values to change; the others keep theirs.
    #[serde(default)]
    params: BTreeMap<String, serde_json::Value>,
    /// Only plan: show what the update would change, change nothing.
    #[serde(default)]
    plan_only: bool,
}

/// `POST /api/v1/environments/{name}/update`: new values, re-rendered, planned, then applied.
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam,
    JsonBody(body): JsonBody<UpdateBody>,
) -> Result<Response, ApiError> {
    let mut note = AuditNote::new("environment.update", format!("environment/{name}"))
        .details(serde_json::json!({"params": body.params}));
    let result = async {
        caller.require(&Action::Provision, None)?;
        let env = find(&state, &name).await?;
        if !matches!(
            env.status,
            EnvStatus::Ready
                | EnvStatus::CleanupFailed
                | EnvStatus::Queued
                | EnvStatus::Provisioning
                | EnvStatus::Updating
        ) {
            return Err(ApiError::conflict(
                "environment.not_updatable",
                format!("environment `{name}` is {}", env.status),
                "Only an environment that exists can be updated; create a new one instead.",
            ));
        }
        let loaded = crate::environments::one(&state, &env.template).await?;
        let mut merged: BTreeMap<String, serde_json::Value> =
            env.params.as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
        // Values the template no longer takes are dropped; new ones come from what is given.
        merged.retain(|k, _| loaded.template.parameter(k).is_some());
        merged.extend(body.params.clone());
        let values = loaded.template.check_values(&merged).map_err(|errors| bad_params(&env.template, &errors))?;
        let params: serde_json::Map<String, serde_json::Value> =
            values.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
        if body.plan_only {
            let run = plan_update(&state, &env, &loaded, &values, &caller.name).await?;
            note = AuditNote::new("environment.plan_update", format!("environment/{name}"))
                .details(serde_json::json!({"params": params, "run": run.id}));
            let message = format!(
                "planning the update of `{name}` in run #{}; nothing is changed (`plinth runs logs {}`)",
                run.id, run.id
            );
            return Ok(
                (StatusCode::ACCEPTED, axum::Json(serde_json::json!({"run": run, "message": message}))).into_response()
            );
        }
        let request = state
            .store
            .request_environment_change(
                env.id,
                RequestKind::Update,
                &caller.name,
                serde_json::Value::Object(params),
                state.now(),
            )
            .await?;
        state.wake_provisioner.notify_one();
        note = note.clone().details(serde_json::json!({"params": request.params, "request": request.id}));
        Ok((StatusCode::ACCEPTED, axum::Json(queued(&state, env, request).await?)).into_response())
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

/// A plan-only run of an update: the root for the new values rendered beside the kept root,
/// planned against the environment's state, never applied. It takes no turn in the account's
/// queue, since it changes nothing.
async fn plan_update(
    state: &AppState,
    env: &EnvRecord,
    loaded: &crate::environments::Loaded,
    values: &[(String, plinth_core::template::Value)],
    by: &str,
) -> Result<plinth_core::run::Run, ApiError> {
    if !matches!(env.status, EnvStatus::Ready | EnvStatus::CleanupFailed) {
        return Err(ApiError::conflict(
            "environment.not_updatable",
            format!("environment `{}` is {}; a plan needs its state as it is when ready", env.name, env.status),
            "Wait for its request to end (`plinth env show NAME`).",
        ));
    }
    let mut nonce = [0u8; 4];
    getrandom::fill(&mut nonce).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    let dir = format!("plan-{}", hex::encode(nonce));
    let dest = state.paths.env_source(env.id, &dir);
    crate::environments::render_into(state, env, &loaded.template.name, &loaded.commit, values, &dest)
        .await
        .map_err(|e| ApiError::internal(format!("could not generate the Terraform root: {e}")))?;
    let stack = env.stack();
    let event = plinth_store::NewEvent {
        branch: None,
        commit: loaded.commit.clone(),
        trigger: "request".into(),
        created_by: by.to_owned(),
        note: Some(format!("plan of an update of environment `{}`", env.name)),
        advance_ref: None,
        supersede: false,
    };
    let run = plinth_store::NewRun {
        lock_key: plinth_core::run::lock_key(&stack, env.workspace.as_deref()),
        stack,
        path: dir,
        workspace: env.workspace.clone(),
        environment: Some(env.policy_environment.clone()),
        terraform: env.terraform.clone(),
        mode: plinth_core::run::RunMode::Plan,
        wave: 1,
        waits_for: Vec::new(),
        destroy: false,
        provisioned_env: Some(env.id),
        approved_by: None,
    };
    let recorded = state.store.record_event(event, vec![run], state.now()).await?;
    state.wake_scheduler.notify_one();
    recorded.runs.into_iter().next().ok_or_else(|| ApiError::internal("the run was not recorded"))
}

/// `DELETE /api/v1/environments/{name}`: destroys it with its kept root, and frees its block.
pub async fn destroy(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam,
) -> Result<Response, ApiError> {
    let mut note = AuditNote::new("environment.destroy", format!("environment/{name}"));
    let result = async {
        caller.require(&Action::Provision, None)?;
        let env = find(&state, &name).await?;
        if !env.status.is_live() {
            return Err(ApiError::conflict(
                "environment.gone",
                format!("environment `{name}` is {} already", env.status),
                "Nothing is left to destroy; `plinth env show NAME` shows its history.",
            ));
        }
        let pending = state.store.unfinished_environment_requests().await?;
        if let Some(r) = pending.iter().find(|r| r.environment_id == env.id && r.kind == RequestKind::Destroy) {
            return Err(ApiError::conflict(
                "environment.destroy_requested",
                format!("a destroy of `{name}` is already requested (request #{})", r.id),
                "Follow it with `plinth env show NAME`.",
            ));
        }
        if env.status == EnvStatus::Queued {
            // Its create has not started: nothing was made. Cancel it and free the name.
            for r in pending.iter().filter(|r| r.environment_id == env.id && r.status == RequestStatus::Queued) {
                state
                    .store
                    .move_environment_request(r.id, RequestStatus::Cancelled, Some(format!("cancelled by {}", caller.name)), state.now())
                    .await?;
            }
            let patch = plinth_store::EnvPatch { reason: Some(format!("cancelled by {} before it started", caller.name)), ..Default::default() };
            let env = state.store.move_environment(env.id, EnvStatus::Destroyed, patch, state.now()).await?;
            note = note.clone().details(serde_json::json!({"cancelled_before_start": true}));
            return Ok(axum::Json(serde_json::json!({"environment": env, "message": format!("`{name}` had not started; its create was cancelled")})).into_response());
        }
        let request = state
            .store
            .request_environment_change(env.id, RequestKind::Destroy, &caller.name, serde_json::json!({}), state.now())
            .await?;
        state.wake_provisioner.notify_one();
        note = note.clone().details(serde_json::json!({"request": request.id}));
        Ok((StatusCode::ACCEPTED, axum::Json(queued(&state, env, request).await?)).into_response())
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestsQuery {
    limit: Option<u32>,
}

/// `GET /api/v1/environment-requests`: the request log (S4.3), newest first.
pub async fn requests(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<RequestsQuery>,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let requests = state.store.environment_requests(None, query.limit.unwrap_or(200).clamp(1, 10_000)).await?;
    Ok(axum::Json(serde_json::json!({"requests": requests})).into_response())
}

/// `GET /api/v1/catalog`: products, environments (with their services' releases), and the
/// stacks with their last apply: plinth's CMDB (S4.6). Filters and pages like `/environments`;
/// `next` names the page after this one, when there is one.
pub async fn catalog(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let filter = filter_of(&query)?;
    let (envs, next) = page(&state, &filter).await?;
    let parts = CatalogParts::read(&state, &envs, query.product.as_deref()).await?;
    Ok(axum::Json(parts.catalog(&envs, next.as_deref())).into_response())
}

/// `GET /api/v1/catalog/export`: everything, destroyed environments included, for a backup or
/// another CMDB.
pub async fn export(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let envs = state.store.environments(&EnvFilter::default()).await?;
    let parts = CatalogParts::read(&state, &envs, None).await?;
    let requests = state.store.environment_requests(None, u32::MAX).await?;
    let export = Export { catalog: parts.catalog(&envs, None), requests, exported_at: state.now() };
    Ok(axum::Json(export).into_response())
}

/// A page of environments, and where the next one starts.
#[derive(serde::Serialize)]
struct EnvList {
    environments: Vec<EnvRecord>,
    next: Option<String>,
}

/// One page of environments under `filter`, and the name to page on from, if more follow.
async fn page(state: &AppState, filter: &EnvFilter) -> Result<(Vec<EnvRecord>, Option<String>), ApiError> {
    let limit = filter.limit.unwrap_or(u32::MAX);
    let mut ask = filter.clone();
    ask.limit = Some(limit.saturating_add(1));
    let mut envs = state.store.environments(&ask).await?;
    let next = if envs.len() > limit as usize {
        envs.truncate(limit as usize);
        envs.last().map(|e| e.name.clone())
    } else {
        None
    };
    Ok((envs, next))
}

/// What the catalog shows besides the environments themselves.
struct CatalogParts {
    products: Vec<plinth_core::config::Product>,
    /// The current release of each service in each environment it runs in.
    current: BTreeMap<(String, String), i64>,
    stacks: Vec<plinth_core::run::Run>,
}

/// The catalog's body, serialized straight from the records (no JSON tree in between: at
/// 10,000 environments that tree cost more than reading the rows).
#[derive(serde::Serialize)]
struct Catalog<'a> {
    products: &'a [plinth_core::config::Product],
    environments: Vec<CatalogEnv<'a>>,
    services: Vec<ServiceEntry<'a>>,
    stacks: Vec<StackEntry<'a>>,
    next: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct Export<'a> {
    #[serde(flatten)]
    catalog: Catalog<'a>,
    requests: Vec<EnvRequest>,
    exported_at: plinth_core::time::Timestamp,
}

#[derive(serde::Serialize)]
struct CatalogEnv<'a> {
    #[serde(flatten)]
    env: &'a EnvRecord,
    /// Its services with their hosts and current release.
    releases: Vec<ServiceRelease<'a>>,
}

#[derive(serde::Serialize)]
struct ServiceRelease<'a> {
    service: &'a str,
    hosts: Vec<String>,
    release: Option<i64>,
}

#[derive(serde::Serialize)]
struct ServiceEntry<'a> {
    service: &'a str,
    environment: &'a str,
    release: i64,
}

#[derive(serde::Serialize)]
struct StackEntry<'a> {
    stack: &'a str,
    environment: Option<&'a str>,
    last_apply: LastApply<'a>,
}

#[derive(serde::Serialize)]
struct LastApply<'a> {
    run: i64,
    commit: &'a str,
    finished_at: Option<plinth_core::time::Timestamp>,
    destroy: bool,
}

impl CatalogParts {
    async fn read(state: &AppState, envs: &[EnvRecord], product: Option<&str>) -> Result<CatalogParts, ApiError> {
        let policy = crate::policy::current(state).await.ok();
        let products = policy
            .as_ref()
            .map(|p| {
                p.config.products.values().filter(|p| product.is_none_or(|want| want == p.name)).cloned().collect()
            })
            .unwrap_or_default();
        let deployed = state.store.current_deployments().await?;
        // Services run in plinth.toml's environments and in live ones made on request. With a
        // product, only its environments (those listed) count.
        let declared = |env: &str| policy.as_ref().is_some_and(|p| p.config.environments.contains_key(env));
        let keep: std::collections::HashSet<String> = match product {
            Some(_) => envs.iter().filter(|e| e.status.is_live()).map(|e| e.name.clone()).collect(),
            None => state.store.live_environment_names().await?.into_iter().collect(),
        };
        let current = deployed
            .into_iter()
            .filter(|d| keep.contains(&d.environment) || (product.is_none() && declared(&d.environment)))
            .map(|d| ((d.service, d.environment), d.release_id))
            .collect();
        let stacks = if product.is_some() { Vec::new() } else { state.store.last_applies().await? };
        Ok(CatalogParts { products, current, stacks })
    }

    fn catalog<'a>(&'a self, envs: &'a [EnvRecord], next: Option<&'a str>) -> Catalog<'a> {
        let environments = envs
            .iter()
            .map(|e| CatalogEnv {
                env: e,
                releases: e
                    .services
                    .iter()
                    .map(|s| ServiceRelease {
                        service: s,
                        hosts: e.hosts_for(s),
                        release: self.current.get(&(s.clone(), e.name.clone())).copied(),
                    })
                    .collect(),
            })
            .collect();
        let services = self
            .current
            .iter()
            .map(|((service, environment), release)| ServiceEntry { service, environment, release: *release })
            .collect();
        let stacks = self
            .stacks
            .iter()
            .map(|r| StackEntry {
                stack: &r.stack,
                environment: r.environment.as_deref(),
                last_apply: LastApply { run: r.id, commit: &r.commit, finished_at: r.finished_at, destroy: r.destroy },
            })
            .collect();
        Catalog { products: &self.products, environments, services, stacks, next }
    }
}
