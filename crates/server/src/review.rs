//! Review environments, one per branch (S1.3): after each fetch, branches matching `[review]`
//! get an environment made from the review template (a Terraform workspace named after the
//! branch's slug, served at `SLUG.DOMAIN`), and environments whose branch is gone, no longer
//! matches, or saw no push for longer than the TTL are destroyed. A branch stacked on another
//! branch is just a branch here, so it is cleaned up like any other.

use std::collections::BTreeMap;

use plinth_core::environment::{EnvStatus, RequestKind, ReviewAction, ReviewEnv, review_actions, review_name};
use plinth_store::{EnvFilter, NewAudit, NewEnv, ReviewInfo, StoreError};

use crate::state::AppState;

/// Brings review environments in line with the branches the mirror has now.
pub async fn sync(state: &AppState) {
    let _one_at_a_time = state.review_lock.lock().await;
    let policy = match crate::policy::current(state).await {
        Ok(policy) => policy,
        Err(_) => return,
    };
    let Some(review) = policy.config.review.clone() else { return };
    let branches = match state.mirror.branches().await {
        Ok(mut branches) => {
            if let Some(generated) = &policy.config.commit_branch {
                branches.remove(generated);
            }
            branches
        }
        Err(e) => {
            tracing::warn!(error = %e, "Could not read the branches for review environments.");
            return;
        }
    };
    let records = match state.store.environments(&EnvFilter { review: true, ..Default::default() }).await {
        Ok(records) => records,
        Err(e) => {
            tracing::warn!(error = %e, "Could not read the review environments.");
            return;
        }
    };
    // The newest record per name stands for it (older ones are destroyed or failed creates).
    let mut latest: BTreeMap<String, plinth_store::EnvRecord> = BTreeMap::new();
    for r in records {
        if latest.get(&r.name).is_none_or(|old| old.id < r.id) {
            latest.insert(r.name.clone(), r);
        }
    }
    let envs: Vec<ReviewEnv> = latest
        .values()
        .filter_map(|e| {
            let info = e.review.as_ref()?;
            Some(ReviewEnv {
                name: e.name.clone(),
                branch: info.branch.clone(),
                slug: info.slug.clone(),
                head: info.head.clone(),
                pushed_at: info.pushed_at,
                status: e.status,
            })
        })
        .collect();
    let destroying: std::collections::HashSet<i64> = state
        .store
        .unfinished_environment_requests()
        .await
        .map(|all| all.into_iter().filter(|r| r.kind == RequestKind::Destroy).map(|r| r.environment_id).collect())
        .unwrap_or_default();
    let actions = review_actions(&review, &branches, &envs, state.now());
    for action in actions {
        match action {
            ReviewAction::Create { branch, slug, head } => create(state, &policy, &review, &branch, &slug, &head).await,
            ReviewAction::Touch { name, head } => {
                if let Some(env) = latest.get(&name)
                    && let Err(e) = state.store.touch_review(env.id, &head, state.now()).await
                {
                    tracing::warn!(environment = %name, error = %e, "Could not record a push to a review branch.");
                }
            }
            ReviewAction::Destroy { name, reason } => {
                let Some(env) = latest.get(&name) else { continue };
                if destroying.contains(&env.id) {
                    continue;
                }
                if env.status == EnvStatus::Queued {
                    // Not started yet: nothing was made, so nothing to destroy.
                    cancel_queued(state, env, &reason).await;
                    continue;
                }
                let params = serde_json::json!({"reason": reason});
                match state
                    .store
                    .request_environment_change(env.id, RequestKind::Destroy, "plinth", params, state.now())
                    .await
                {
                    Ok(request) => {
                        tracing::info!(environment = %name, request = request.id, %reason, "Destroying a review environment.");
                        audit(
                            state,
                            "environment.review_destroy",
                            &name,
                            serde_json::json!({"reason": reason, "request": request.id}),
                        )
                        .await;
                    }
                    Err(e) => {
                        tracing::warn!(environment = %name, error = %e, "Could not request a review environment's destroy.")
                    }
                }
            }
            ReviewAction::Refuse { branch, reason } => {
                let key = (branch.clone(), branches.get(&branch).cloned().unwrap_or_default());
                let first = state.review_refused.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
                if first {
                    tracing::warn!(%branch, %reason, "No review environment for a branch.");
                    audit(
                        state,
                        "environment.review_refused",
                        &format!("branch/{branch}"),
                        serde_json::json!({"reason": reason}),
                    )
                    .await;
                }
            }
        }
    }
    state.wake_provisioner.notify_one();
}

/// Makes the review environment of a branch (its create request queues for the account).
async fn create(
    state: &AppState,
    policy: &crate::policy::Policy,
    review: &plinth_core::config::Review,
    branch: &str,
    slug: &str,
    head: &str,
) {
    let name = review_name(slug);
    let template = match crate::environments::one(state, &review.template).await {
        Ok(t) => t,
        Err(e) => {
            refuse_once(state, branch, head, &format!("the review template cannot be used: {}", e.message)).await;
            return;
        }
    };
    let values = match template.template.check_values(&BTreeMap::new()) {
        Ok(values) => values,
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            let why = format!(
                "the review template `{}` needs values review environments cannot give ({}); give its parameters defaults",
                review.template,
                list.join("; ")
            );
            refuse_once(state, branch, head, &why).await;
            return;
        }
    };
    let product = review.product.clone().unwrap_or_else(|| "review".to_owned());
    let owner = policy.config.products.get(&product).map(|p| p.owner.clone()).unwrap_or_default();
    let params: serde_json::Map<String, serde_json::Value> =
        values.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
    let t = &template.template;
    let new = NewEnv {
        name: name.clone(),
        product,
        template: t.name.clone(),
        template_commit: template.commit.clone(),
        policy_environment: t.environment.clone(),
        account: t.account.clone(),
        params: serde_json::Value::Object(params),
        owner,
        requested_by: format!("plinth (push to {branch})"),
        fqdn: Some(format!("{slug}.{}", review.domain)),
        services: t.services.clone(),
        workspace: Some(slug.to_owned()),
        terraform: t.terraform.clone(),
        review: Some(ReviewInfo {
            branch: branch.to_owned(),
            slug: slug.to_owned(),
            head: Some(head.to_owned()),
            pushed_at: state.now(),
        }),
        cidr: crate::api::environments::cidr_ask(&policy.config, t),
    };
    match state.store.create_environment(new, state.now()).await {
        Ok((env, request)) => {
            tracing::info!(environment = %env.name, %branch, request = request.id, "Creating a review environment.");
            audit(
                state,
                "environment.review_create",
                &env.name,
                serde_json::json!({"branch": branch, "head": head, "request": request.id, "fqdn": env.fqdn}),
            )
            .await;
        }
        Err(StoreError::EnvironmentExists(_)) => {}
        Err(e) => refuse_once(state, branch, head, &e.to_string()).await,
    }
}

/// A queued review environment whose branch went away before it started.
async fn cancel_queued(state: &AppState, env: &plinth_store::EnvRecord, reason: &str) {
    if let Ok(requests) = state.store.environment_requests(Some(env.id), 100).await {
        for r in requests.into_iter().filter(|r| r.status == plinth_core::environment::RequestStatus::Queued) {
            let _ = state
                .store
                .move_environment_request(
                    r.id,
                    plinth_core::environment::RequestStatus::Cancelled,
                    Some(reason.to_owned()),
                    state.now(),
                )
                .await;
        }
    }
    let patch =
        plinth_store::EnvPatch { reason: Some(format!("{reason}; cancelled before it started")), ..Default::default() };
    let _ = state.store.move_environment(env.id, EnvStatus::Destroyed, patch, state.now()).await;
}

async fn refuse_once(state: &AppState, branch: &str, head: &str, why: &str) {
    let first =
        state.review_refused.lock().unwrap_or_else(|e| e.into_inner()).insert((branch.to_owned(), head.to_owned()));
    if first {
        tracing::warn!(%branch, reason = %why, "No review environment for a branch.");
        audit(state, "environment.review_refused", &format!("branch/{branch}"), serde_json::json!({"reason": why}))
            .await;
    }
}

async fn audit(state: &AppState, action: &str, object: &str, details: serde_json::Value) {
    let entry = NewAudit {
        actor: "plinth".into(),
        action: action.into(),
        object: if object.starts_with("branch/") { object.to_owned() } else { format!("environment/{object}") },
        result: "ok".into(),
        details,
    };
    if let Err(e) = state.store.append_audit(entry, state.now()).await {
        tracing::error!(error = %e, "Could not audit a review environment change.");
    }
}
