//! Templates as the main branch has them, and the kept roots of environments: a template's
//! files (and the local modules it uses) exported from git, plus the root plinth generates
//! around it structurally (a module block, variables, outputs, the backend) with the
//! request's values in `terraform.tfvars.json`, where Terraform reads them literally.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plinth_core::config::Config;
use plinth_core::module_interface::ModuleInterface;
use plinth_core::render::{Backend, RootSpec, render_root};
use plinth_core::template::{Template, Value, read_template, template_names};
use plinth_core::tree::Tree;
use plinth_git::Repo;
use plinth_store::EnvRecord;

use crate::error::ApiError;
use crate::state::AppState;

/// A template read from the main branch, checked against its module and the policy.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub template: Template,
    /// The main branch commit it was read at.
    pub commit: String,
    /// Its directory in the repo, `templates/NAME`.
    pub dir: String,
    pub interface: ModuleInterface,
}

impl Loaded {
    /// Its description for the API: parameters as JSON Schema, and where it deploys.
    pub fn to_json(&self) -> serde_json::Value {
        let t = &self.template;
        serde_json::json!({
            "name": t.name,
            "description": t.description,
            "environment": t.environment,
            "account": t.account,
            "services": t.services,
            "domain": t.domain,
            "cidr": t.cidr.as_ref().map(|c| serde_json::json!({"pool": c.pool, "prefix": c.prefix})),
            "commit": self.commit,
            "path": self.dir,
            "parameters": t.json_schema(),
            "outputs": self.interface.outputs.iter().map(|o| serde_json::json!({"name": o.name, "sensitive": o.sensitive})).collect::<Vec<_>>(),
        })
    }
}

/// A template directory that does not make a usable template.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Broken {
    pub name: String,
    pub code: &'static str,
    /// The errors, rendered with file:line:column.
    pub message: String,
}

/// Every template on the main branch, in name order: the usable ones, and the broken ones
/// with why.
pub async fn all(state: &AppState) -> Result<(Vec<Loaded>, Vec<Broken>), ApiError> {
    let policy = policy(state).await?;
    let git_dir = state.mirror.git_dir().to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(Vec<Loaded>, Vec<Broken>), String> {
        let repo = Repo::discover(&git_dir).map_err(|e| e.to_string())?;
        let tree =
            repo.tree(Some(repo.resolve(&policy.commit).map_err(|e| e.to_string())?)).map_err(|e| e.to_string())?;
        let mut loaded = Vec::new();
        let mut broken = Vec::new();
        for name in template_names(&tree).map_err(|e| e.to_string())? {
            match read(&tree, &policy.config, &policy.commit, &name) {
                Ok(t) => loaded.push(t),
                Err(b) => broken.push(b),
            }
        }
        Ok((loaded, broken))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("reading the templates failed: {e}")))
}

/// One template from the main branch; 404 if there is none of that name, 422 if it is broken.
pub async fn one(state: &AppState, name: &str) -> Result<Loaded, ApiError> {
    let (loaded, broken) = all(state).await?;
    if let Some(t) = loaded.into_iter().find(|t| t.template.name == name) {
        return Ok(t);
    }
    if let Some(b) = broken.into_iter().find(|b| b.name == name) {
        return Err(ApiError::new(
            422,
            b.code,
            format!("template `{name}` on the main branch is broken:\n{}", b.message),
            "Fix templates/NAME/template.toml or the module as the errors say, and merge the fix.",
        ));
    }
    Err(ApiError::not_found(
        "template.not_found",
        format!("there is no template `{name}` on the main branch"),
        "List the templates with `plinth templates list`; a template is a directory templates/NAME/ with a template.toml.",
    ))
}

async fn policy(state: &AppState) -> Result<crate::policy::Policy, ApiError> {
    crate::policy::current(state).await.map_err(|e| {
        ApiError::conflict(
            "template.no_policy",
            format!("cannot read plinth.toml on the main branch: {e}"),
            "Push a valid plinth.toml to the main branch first.",
        )
    })
}

/// Reads and checks one template from a tree (see [`plinth_core::template::read_template`]).
fn read(tree: &dyn Tree, config: &Config, commit: &str, name: &str) -> Result<Loaded, Broken> {
    match read_template(tree, config, name) {
        Ok(found) => Ok(Loaded {
            template: found.template,
            commit: commit.to_owned(),
            dir: found.dir,
            interface: found.interface,
        }),
        Err(d) => Err(Broken {
            name: name.to_owned(),
            code: d.errors().next().map_or("template.invalid", |e| e.code),
            message: d.to_string(),
        }),
    }
}

/// A service's settings in an environment: a plinth.toml environment's own, or for an
/// environment made from a template, those of the template's environment, served at the
/// environment's FQDN.
pub async fn service_in(
    state: &AppState,
    config: &Config,
    def: &plinth_core::config::ServiceDef,
    environment: &str,
) -> Result<plinth_core::config::Service, String> {
    if config.environments.contains_key(environment) {
        return Ok(def.for_environment(environment));
    }
    match state.store.environment(environment).await {
        Ok(Some(env)) if env.status.is_live() => {
            if !env.services.contains(&def.name) {
                return Err(format!(
                    "service `{}` does not run in environment `{environment}` (its template `{}` runs: {})",
                    def.name,
                    env.template,
                    if env.services.is_empty() { "none".to_owned() } else { env.services.join(", ") }
                ));
            }
            Ok(def.for_provisioned(&env.name, &env.policy_environment, env.hosts_for(&def.name)))
        }
        Ok(_) => Err(format!("there is no environment `{environment}` in plinth.toml or made on request")),
        Err(e) => Err(e.to_string()),
    }
}

/// Where the environment keeps its Terraform state: plinth's data dir (a local backend), by
/// environment, or for review environments one state per template with a workspace per branch.
pub fn backend(state: &AppState, env: &EnvRecord) -> Backend {
    let dir = match &env.review {
        Some(_) => state.paths.state.join(format!("review-{}", env.template)),
        None => state.paths.state.join(format!("env-{}", env.id)),
    };
    let mut settings = BTreeMap::new();
    settings.insert("path".to_owned(), dir.join("terraform.tfstate").display().to_string());
    settings.insert("workspace_dir".to_owned(), dir.join("workspaces").display().to_string());
    Backend { kind: "local".to_owned(), settings }
}

/// Writes an environment's kept root for `values` from the template at `commit`: into
/// `root.next` first, then swapped in, with the previous root kept as `root.prev` until the
/// request ends. Returns the number of files written.
pub async fn write_kept_root(
    state: &AppState,
    env: &EnvRecord,
    template: &str,
    commit: &str,
    values: &[(String, Value)],
) -> Result<u64, String> {
    let root = state.paths.kept_root(env.id);
    let next = root.with_file_name("root.next");
    let prev = root.with_file_name("root.prev");
    let written = render_into(state, env, template, commit, values, &next).await?;
    let _ = tokio::fs::remove_dir_all(&prev).await;
    if tokio::fs::try_exists(&root).await.unwrap_or(false) {
        tokio::fs::rename(&root, &prev).await.map_err(|e| format!("keeping the previous root: {e}"))?;
    }
    tokio::fs::rename(&next, &root).await.map_err(|e| format!("putting the new root in place: {e}"))?;
    Ok(written)
}

/// Writes the root for `values` from the template at `commit` into `dest` (emptied first),
/// formatted. Returns the number of files written.
pub async fn render_into(
    state: &AppState,
    env: &EnvRecord,
    template: &str,
    commit: &str,
    values: &[(String, Value)],
    dest: &Path,
) -> Result<u64, String> {
    let _ = tokio::fs::remove_dir_all(dest).await;
    tokio::fs::create_dir_all(dest).await.map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let git_dir = state.mirror.git_dir().to_path_buf();
    let config = crate::policy::current(state).await?.config;
    let (template, commit, values, env_owned) = (template.to_owned(), commit.to_owned(), values.to_vec(), env.clone());
    let backend = backend(state, env);
    let next_dir = dest.to_path_buf();
    let written = tokio::task::spawn_blocking(move || -> Result<u64, String> {
        let repo = Repo::discover(&git_dir).map_err(|e| e.to_string())?;
        let tree = repo.tree(Some(repo.resolve(&commit).map_err(|e| e.to_string())?)).map_err(|e| e.to_string())?;
        let loaded = read(&tree, &config, &commit, &template).map_err(|b| b.message)?;
        let paths = plinth_core::inputs::module_closure(&tree, &loaded.dir).map_err(|e| e.to_string())?;
        let paths: Vec<String> = paths.into_iter().collect();
        let exported = tree.export_paths(&next_dir.join("repo"), &paths).map_err(|e| e.to_string())?;
        let mut inputs: Vec<(String, Value)> = values;
        for (name, value) in plinth_inputs(&env_owned) {
            if loaded.interface.variables.iter().any(|v| v.name == name) {
                inputs.push((name.to_owned(), Value::String(value)));
            }
        }
        let spec = RootSpec {
            module_name: "template".to_owned(),
            module_source: format!("./repo/{}", loaded.dir),
            inputs,
            outputs: loaded.interface.outputs.clone(),
            backend: Some(backend),
            header: format!(
                "Generated by plinth for environment `{}` from template `{}` at {}; plinth keeps it for updates and the destroy.",
                env_owned.name,
                loaded.template.name,
                &commit[..commit.len().min(12)]
            ),
        };
        let files = render_root(&spec).map_err(|e| e.to_string())?;
        for (name, bytes) in &files {
            std::fs::write(next_dir.join(name), bytes).map_err(|e| format!("writing {name}: {e}"))?;
        }
        Ok(exported + files.len() as u64)
    })
    .await
    .map_err(|e| format!("rendering the root failed: {e}"))??;
    fmt(state, env, dest).await?;
    Ok(written)
}

/// Commits an environment's kept root to `[provisioning] commit_branch`, when plinth.toml on
/// the main branch names one, as `environments/<name>/`: its current root while it exists,
/// nothing once it is gone. A failure is logged; the kept root in the data dir is what plinth
/// works from.
pub async fn publish(state: &AppState, environment_id: i64, message: &str) {
    let Ok(policy) = crate::policy::current(state).await else { return };
    let Some(branch) = policy.config.commit_branch else { return };
    let Ok(Some(env)) = state.store.environment_by_id(environment_id).await else { return };
    let _one_at_a_time = state.publish_lock.lock().await;
    let root = state.paths.kept_root(env.id);
    let exists = tokio::fs::try_exists(&root).await.unwrap_or(false);
    let files = (env.status.is_live() && exists).then_some(root.as_path());
    let path = format!("environments/{}", env.name);
    match state.mirror.publish_dir(&branch, &path, files, message).await {
        Ok(Some(commit)) => {
            tracing::info!(environment = %env.name, %branch, commit = %&commit[..commit.len().min(10)], "Committed the kept root.");
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(environment = %env.name, %branch, error = %e, "Could not commit the kept root to the branch.")
        }
    }
}

/// Puts the previous kept root back (an update that failed).
pub async fn restore_previous_root(state: &AppState, env_id: i64) -> Result<(), String> {
    let root = state.paths.kept_root(env_id);
    let prev = root.with_file_name("root.prev");
    if !tokio::fs::try_exists(&prev).await.unwrap_or(false) {
        return Ok(());
    }
    let _ = tokio::fs::remove_dir_all(&root).await;
    tokio::fs::rename(&prev, &root).await.map_err(|e| format!("restoring the previous root: {e}"))
}

/// Drops the previous kept root once a request is done with it.
pub async fn forget_previous_root(state: &AppState, env_id: i64) {
    let prev = state.paths.kept_root(env_id).with_file_name("root.prev");
    let _ = tokio::fs::remove_dir_all(&prev).await;
}

/// The inputs plinth fills itself, for modules that declare them.
fn plinth_inputs(env: &EnvRecord) -> Vec<(&'static str, String)> {
    vec![
        ("plinth_environment", env.name.clone()),
        ("plinth_product", env.product.clone()),
        ("plinth_fqdn", env.fqdn.clone().unwrap_or_default()),
        ("plinth_cidr", env.cidr.clone().unwrap_or_default()),
        ("plinth_workspace", env.workspace.clone().unwrap_or_else(|| "default".to_owned())),
    ]
}

/// `terraform fmt` on the generated files.
async fn fmt(state: &AppState, env: &EnvRecord, dir: &Path) -> Result<(), String> {
    let home = dir.with_file_name("fmt-home");
    let tmp = dir.with_file_name("fmt-tmp");
    let base = plinth_terraform::base_env(&home, &tmp, &state.paths.plugin_cache).map_err(|e| e.to_string())?;
    let terraform = plinth_terraform::Terraform::new(env.terraform.clone(), base);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = state.shutdown.child_token();
    let ctx = plinth_terraform::Invocation {
        dir,
        extra_env: &[],
        output: &tx,
        cancel: &cancel,
        grace: state.config.terraform_grace,
        on_spawn: None,
        redactor: None,
    };
    let result = terraform.fmt(&ctx).await.map_err(|e| format!("terraform fmt failed: {e}"));
    let _ = tokio::fs::remove_dir_all(&home).await;
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    result
}

/// Copies a directory tree (files, directories and symlinks as links). Returns the number of
/// files copied.
pub async fn copy_dir(from: &Path, to: &Path) -> Result<u64, String> {
    let (from, to): (PathBuf, PathBuf) = (from.to_path_buf(), to.to_path_buf());
    tokio::task::spawn_blocking(move || copy_dir_blocking(&from, &to))
        .await
        .map_err(|e| format!("the copy failed: {e}"))?
}

fn copy_dir_blocking(from: &Path, to: &Path) -> Result<u64, String> {
    std::fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    let mut count = 0;
    let entries = std::fs::read_dir(from).map_err(|e| format!("reading {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", from.display()))?;
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if kind.is_dir() {
            count += copy_dir_blocking(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(&target, &dst).map_err(|e| format!("linking {}: {e}", dst.display()))?;
            count += 1;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| format!("copying {}: {e}", src.display()))?;
            count += 1;
        }
    }
    Ok(count)
}
