//! Secrets on the server: setting and removing them (sealed before they reach the store),
//! rotating the master key, and handing the right ones to a run, and nothing else. Values exist
//! in plaintext only in a request being handled and in the environment of the one terraform
//! process that needs them; see [`for_run`].

use std::sync::Arc;

use plinth_core::redact::Redactor;
use plinth_core::run::Run;
use plinth_core::secret::{self, Scope};
use plinth_secrets::{KeyWrapper, Sealed};
use plinth_store::{NewAudit, NewSecretVersion, Rewrapped, SealedSecret, SecretKey, SecretMeta};

use crate::error::ApiError;
use crate::state::AppState;

/// The associated data that binds a ciphertext to its secret and version: a value copied to
/// another row, or an older version put back, does not decrypt.
fn aad(key: &SecretKey, version: i64) -> Vec<u8> {
    format!(
        "plinth-secret-v1\0{}\0{}\0{}\0{}\0{version}",
        key.environment,
        key.scope.kind(),
        key.scope.target(),
        key.name
    )
    .into_bytes()
}

fn sealed_of(row: &SealedSecret) -> Result<Sealed, String> {
    let nonce: [u8; 12] =
        row.nonce.as_slice().try_into().map_err(|_| format!("secret `{}` has a damaged nonce", row.meta.name))?;
    Ok(Sealed {
        key_id: row.meta.key_id.clone(),
        wrapped_key: row.wrapped_key.clone(),
        nonce,
        ciphertext: row.ciphertext.clone(),
    })
}

fn bad(code: &'static str, message: impl Into<String>, help: &str) -> ApiError {
    ApiError::bad_request(code, message, help)
}

/// Checks a secret's name and scope against the main branch's plinth.toml.
pub async fn check_key(state: &AppState, key: &SecretKey) -> Result<(), ApiError> {
    secret::check_name(&key.name).map_err(|e| bad("secret.bad_name", e, "Rename the secret."))?;
    let policy = crate::policy::current(state).await.map_err(|e| {
        ApiError::new(
            409,
            "secret.no_policy",
            format!("cannot check the environment: {e}"),
            "Push a valid plinth.toml to the main branch first; secrets belong to its environments.",
        )
    })?;
    let stack_environment = match &key.scope {
        Scope::Stack(name) => stack_environment(state, &policy, name).await?,
        _ => None,
    };
    secret::check_scope(&policy.config, &key.environment, &key.scope, stack_environment.as_ref().map(|e| e.as_deref()))
        .map_err(|e| bad("secret.bad_scope", e, "List environments and stacks with `plinth stacks list`."))
}

/// The environment of a stack on the main branch: `None` if there is no such stack, `Some(None)`
/// if it has no environment.
async fn stack_environment(
    state: &AppState,
    policy: &crate::policy::Policy,
    name: &str,
) -> Result<Option<Option<String>>, ApiError> {
    let git_dir = state.mirror.git_dir().to_path_buf();
    let (commit, config, name) = (policy.commit.clone(), policy.config.clone(), name.to_owned());
    tokio::task::spawn_blocking(move || -> Result<Option<Option<String>>, String> {
        let repo = plinth_git::Repo::discover(&git_dir).map_err(|e| e.to_string())?;
        let tree = repo.tree(Some(repo.resolve(&commit).map_err(|e| e.to_string())?)).map_err(|e| e.to_string())?;
        let resolver = plinth_core::config::Resolver::new(&config, &tree).map_err(|e| e.to_string())?;
        let Some(site) = resolver.site_named(&name).map_err(|e| e.to_string())? else { return Ok(None) };
        Ok(Some(resolver.stack(&site).map_err(|e| e.to_string())?.environment.clone()))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(ApiError::internal)
}

/// Seals and stores a new value; returns the new version's metadata.
pub async fn set(state: &AppState, key: SecretKey, value: &str, by: &str) -> Result<SecretMeta, ApiError> {
    secret::check_value(value).map_err(|e| bad("secret.bad_value", e, "Pipe a different value in."))?;
    check_key(state, &key).await?;
    let _writing = state.secrets_write.lock().await;
    let current = state.store.secret(&key).await?.map(|row| row.meta.version);
    let version = current.unwrap_or(0) + 1;
    let sealed = plinth_secrets::seal(state.keys.as_ref(), &aad(&key, version), value.as_bytes())
        .await
        .map_err(|e| ApiError::from_error(&e))?;
    let new = NewSecretVersion {
        key,
        replaces: current,
        key_id: sealed.key_id,
        wrapped_key: sealed.wrapped_key,
        nonce: sealed.nonce.to_vec(),
        ciphertext: sealed.ciphertext,
        by: by.to_owned(),
    };
    Ok(state.store.put_secret(new, state.now()).await?)
}

/// What a rotation did.
#[derive(Debug, serde::Serialize)]
pub struct Rotated {
    pub key_id: String,
    pub previous_key_id: String,
    pub rewrapped: usize,
}

/// Re-wraps every data key under a new master key. Secrets stay readable throughout: the
/// keyring keeps the old key in memory, and the old key file is replaced only once no row
/// needs it.
pub async fn rotate(state: &AppState) -> Result<Rotated, ApiError> {
    let _writing = state.secrets_write.lock().await;
    let previous_key_id = state.keys.current_key_id();
    let keys = state.keys.clone();
    let next = tokio::task::spawn_blocking(move || keys.prepare_rotation())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::from_error(&e))?;
    let rewrapped = rewrap_all_but(state, &next).await?;
    let keys = state.keys.clone();
    tokio::task::spawn_blocking(move || keys.commit_rotation())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::from_error(&e))?;
    Ok(Rotated { key_id: next, previous_key_id, rewrapped })
}

/// Wraps again, under `key_id`, every data key that another key wraps.
async fn rewrap_all_but(state: &AppState, key_id: &str) -> Result<usize, ApiError> {
    let rows = state.store.wrapped_keys().await?;
    let mut updates = Vec::new();
    for (id, from, wrapped_key) in rows.into_iter().filter(|(_, k, _)| k != key_id) {
        let sealed = Sealed { key_id: from.clone(), wrapped_key, nonce: [0; 12], ciphertext: Vec::new() };
        let moved = plinth_secrets::rewrap(state.keys.as_ref(), state.keys.as_ref(), &sealed)
            .await
            .map_err(|e| ApiError::from_error(&e))?;
        updates.push(Rewrapped { id, from_key_id: from, key_id: moved.key_id, wrapped_key: moved.wrapped_key });
    }
    Ok(state.store.rewrap_secrets(&updates).await?)
}

/// On start, finishes or drops a rotation a previous process did not complete.
pub async fn finish_pending_rotation(state: &AppState) -> Result<(), ApiError> {
    let Some(next) = state.keys.pending_rotation() else { return Ok(()) };
    let in_use = state.store.secrets_wrapped_by(&next).await? > 0;
    if in_use {
        let moved = rewrap_all_but(state, &next).await?;
        tracing::warn!(key = %next, rewrapped = moved, "Finishing a master key rotation that was interrupted.");
    } else {
        tracing::warn!(key = %next, "Dropping a master key rotation that was interrupted before it changed anything.");
    }
    let keys = state.keys.clone();
    tokio::task::spawn_blocking(move || keys.finish_pending(in_use))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::from_error(&e))
}

/// The secrets a service's instances get: those of its environment and its own, always (a
/// release reaches an environment only through a token allowed to publish there). Audited as
/// handed to the instance.
pub async fn for_instances(
    state: &AppState,
    service: &str,
    environment: &str,
    instance: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let rows = state.store.sealed_secrets(environment).await.map_err(|e| e.to_string())?;
    let chosen = secret::for_service(service, rows.iter().map(|r| (&r.meta.scope, r.meta.name.as_str())));
    let mut out = std::collections::BTreeMap::new();
    let mut handed = Vec::new();
    for row in chosen.into_iter().map(|i| &rows[i]) {
        let text = decrypt(state, environment, row).await?;
        handed.push(handed_entry(row));
        out.insert(row.meta.name.clone(), text);
    }
    if !handed.is_empty() {
        let entry = NewAudit {
            actor: "plinth".into(),
            action: "secret.hand".into(),
            object: format!("instance/{instance}"),
            result: "ok".into(),
            details: serde_json::json!({"environment": environment, "service": service, "secrets": handed}),
        };
        state.store.append_audit(entry, state.now()).await.map_err(|e| format!("could not audit the handing: {e}"))?;
    }
    Ok(out)
}

/// Opens one stored secret; the plaintext lives only in the returned string.
async fn decrypt(state: &AppState, environment: &str, row: &SealedSecret) -> Result<String, String> {
    let key =
        SecretKey { environment: environment.to_owned(), scope: row.meta.scope.clone(), name: row.meta.name.clone() };
    let value = plinth_secrets::open(state.keys.as_ref(), &aad(&key, row.meta.version), &sealed_of(row)?)
        .await
        .map_err(|e| format!("secret `{}` ({}): {e}", row.meta.name, row.meta.scope))?;
    String::from_utf8(value.expose().to_vec()).map_err(|_| format!("secret `{}` is not UTF-8", row.meta.name))
}

/// What the audit log records of a handed secret: never its value.
fn handed_entry(row: &SealedSecret) -> serde_json::Value {
    serde_json::json!({"name": row.meta.name, "scope": row.meta.scope, "version": row.meta.version})
}

/// What a run phase gets: environment variables, and the redactor built from their values.
/// `Debug` names the variables, never their values.
#[derive(Default)]
pub struct Handed {
    pub env: Vec<(String, String)>,
    pub redactor: Option<Arc<Redactor>>,
    /// Why none were handed, when some exist for the run's environment.
    pub withheld: Option<String>,
}

impl std::fmt::Debug for Handed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handed")
            .field("env", &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("withheld", &self.withheld)
            .finish()
    }
}

/// The secrets a run of its stack gets, decrypted, if its branch releases to its environment
/// under the main branch's policy. Each handing is audited: which secrets, which run, when.
pub async fn for_run(state: &AppState, run: &Run, phase: &str) -> Result<Handed, String> {
    let to = Recipient {
        stack: &run.stack,
        environment: run.environment.as_deref(),
        branch: run.branch.as_deref(),
        object: format!("run/{}", run.id),
        on_request: run.provisioned_env.is_some(),
    };
    hand(state, &to, phase).await
}

/// Who gets secrets: a stack's terraform, working for a branch, recorded in the audit log as
/// `object`.
#[derive(Debug)]
pub struct Recipient<'a> {
    pub stack: &'a str,
    pub environment: Option<&'a str>,
    pub branch: Option<&'a str>,
    pub object: String,
    /// An environment made on request: the request was allowed by the caller's role, and the
    /// environment's runs work for it, not for a branch. They get their environment's secrets.
    pub on_request: bool,
}

/// The secrets a stack's terraform gets (see [`for_run`]).
pub async fn hand(state: &AppState, to: &Recipient<'_>, phase: &str) -> Result<Handed, String> {
    let Some(environment) = to.environment else { return Ok(Handed::default()) };
    let rows = state.store.sealed_secrets(environment).await.map_err(|e| e.to_string())?;
    let chosen = secret::for_stack(to.stack, rows.iter().map(|r| (&r.meta.scope, r.meta.name.as_str())));
    if chosen.is_empty() {
        return Ok(Handed::default());
    }
    let policy = crate::policy::current(state).await?;
    if !to.on_request && !secret::may_receive(&policy.config, to.branch, Some(environment)) {
        let why = match to.branch {
            Some(branch) => format!("branch `{branch}` does not release to `{environment}`"),
            None => format!("a plan of a bare commit gets no secrets; plan a branch that releases to `{environment}`"),
        };
        return Ok(Handed {
            withheld: Some(format!("{} secret(s) of `{environment}` are not handed to this run: {why}.", chosen.len())),
            ..Handed::default()
        });
    }
    let mut env = Vec::new();
    let mut handed = Vec::new();
    for row in chosen.into_iter().map(|i| &rows[i]) {
        let text = decrypt(state, environment, row).await?;
        handed.push(handed_entry(row));
        env.push((row.meta.name.clone(), text));
    }
    let redactor = Redactor::new(env.iter().map(|(_, v)| v.as_str())).map_err(|e| e.to_string())?;
    let redactor = Some(Arc::new(redactor));
    let entry = NewAudit {
        actor: "plinth".into(),
        action: "secret.hand".into(),
        object: to.object.clone(),
        result: "ok".into(),
        details: serde_json::json!({
            "environment": environment,
            "stack": to.stack,
            "phase": phase,
            "secrets": handed,
        }),
    };
    state.store.append_audit(entry, state.now()).await.map_err(|e| format!("could not audit the handing: {e}"))?;
    Ok(Handed { env, redactor, withheld: None })
}
