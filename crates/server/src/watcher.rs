//! Triggers: fetching the repository on a timer or when a webhook says so, turning each new
//! commit on each branch into an event with one run per affected stack, and plans asked for by
//! hand.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use plinth_core::CONFIG_FILE;
use plinth_core::config::Config;
use plinth_core::run::{RunMode, lock_key, run_mode};
use plinth_core::time::Timestamp;
use plinth_core::tree::Tree;
use plinth_git::{ChangedOptions, ModuleCache, Repo};
use plinth_store::{NewEvent, NewRun, Recorded};

use crate::error::ApiError;
use crate::runner::{remove_workspace, short};
use crate::state::AppState;

/// Fetches on every tick of the poll interval, and whenever woken (by a webhook). Ticks are
/// fixed (a slow poll does not push the next one back), and [`prepare`](crate::prepare) has
/// already polled once.
pub async fn run(state: AppState) {
    let interval = state.config.poll_interval;
    let period = if interval.is_zero() { Duration::from_secs(3600) } else { interval };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = state.wake_watcher.notified() => {}
            _ = ticks.tick(), if !interval.is_zero() => {}
        }
        if let Err(e) = poll_once(&state, "poll").await {
            tracing::warn!(code = e.code, error = %e.message, "Polling the repository failed; trying again on the next tick.");
        }
    }
}

/// Makes sure the mirror has been fetched since `asked_at`: returns at once if a fetch that
/// started after it has succeeded, else fetches. Runs checking their branch before applying
/// share fetches this way instead of queueing one each.
pub async fn fetch_since(state: &AppState, asked_at: Instant) -> Result<(), plinth_git::MirrorError> {
    let mut last = state.poll_lock.lock().await;
    if last.is_some_and(|started| started >= asked_at) {
        return Ok(());
    }
    fetch_locked(state, &mut last).await
}

/// Fetches while holding the poll lock, and remembers when the fetch started.
async fn fetch_locked(state: &AppState, last: &mut Option<Instant>) -> Result<(), plinth_git::MirrorError> {
    let started = Instant::now();
    state.mirror.fetch().await?;
    *last = Some(started);
    Ok(())
}

/// What one fetch found.
#[derive(Debug, Default)]
pub struct Polled {
    pub events: Vec<Recorded>,
}

/// Fetches, and records an event for each new commit on each branch, oldest first. The first
/// time, the branch heads are remembered without events: plinth acts on commits made after it
/// starts watching.
pub async fn poll_once(state: &AppState, trigger: &str) -> Result<Polled, ApiError> {
    let mut last = state.poll_lock.lock().await;
    fetch_locked(state, &mut last).await.map_err(|e| ApiError::from_error(&e))?;
    // Runs count from here: the commit has been seen.
    let seen_at = state.now();
    let branches = state.mirror.branches().await.map_err(|e| ApiError::from_error(&e))?;
    let known = state.store.refs().await?;
    let mut polled = Polled::default();
    if known.is_empty() && state.store.events(1).await?.is_empty() {
        let baseline: BTreeMap<String, Option<String>> =
            branches.iter().map(|(b, s)| (b.clone(), Some(s.clone()))).collect();
        state.store.set_refs(&baseline, state.now()).await?;
        tracing::info!(branches = baseline.len(), "Watching the repository; commits from now on trigger runs.");
        return Ok(polled);
    }
    // The main branch first, so that its commits queue ahead of branches built on them.
    let main = main_branch(state, &branches).await;
    // The branch plinth commits kept roots to is plinth's own output, not something to run.
    let generated = crate::policy::current(state).await.ok().and_then(|p| p.config.commit_branch);
    let mut order: Vec<&String> = branches.keys().filter(|b| Some(b.as_str()) != generated.as_deref()).collect();
    order.sort_by_key(|b| (Some(b.as_str()) != main.as_deref(), b.as_str()));
    let mut gone: BTreeMap<String, Option<String>> = BTreeMap::new();
    for branch in known.keys().filter(|b| !branches.contains_key(*b)) {
        gone.insert(branch.clone(), None);
    }
    for branch in order {
        let tip = &branches[branch];
        let previous = known.get(branch);
        if previous == Some(tip) {
            continue;
        }
        let stop_at: Vec<String> = match previous {
            Some(old) => vec![old.clone()],
            None => known.values().cloned().collect(),
        };
        let commits = state.mirror.new_commits(tip, &stop_at).await.map_err(|e| ApiError::from_error(&e))?;
        if commits.is_empty() {
            let moved: BTreeMap<String, Option<String>> = [(branch.clone(), Some(tip.clone()))].into_iter().collect();
            state.store.set_refs(&moved, state.now()).await?;
            continue;
        }
        for commit in commits {
            polled.events.push(record_commit(state, branch, &commit, trigger, seen_at).await?);
        }
    }
    if !gone.is_empty() {
        state.store.set_refs(&gone, state.now()).await?;
    }
    drop(last);
    crate::review::sync(state).await;
    if !polled.events.is_empty() {
        state.wake_scheduler.notify_one();
        // New objects arrived: let git pack them if its thresholds say so, off the poll path.
        let mirror = state.mirror.clone();
        tokio::spawn(async move {
            if let Err(e) = mirror.maintain().await {
                tracing::warn!(error = %e, "git maintenance of the mirror failed.");
            }
        });
    }
    Ok(polled)
}

/// The main branch, as the config at the branch named `main`, `master` or the first branch says.
pub async fn main_branch(state: &AppState, branches: &BTreeMap<String, String>) -> Option<String> {
    let first = branches.keys().next().map(String::as_str);
    for candidate in ["main", "master"].into_iter().chain(first) {
        if let Some(commit) = branches.get(candidate)
            && let Ok(config) = crate::runner::config_at(state, commit).await
        {
            return Some(config.main_branch);
        }
    }
    first.map(str::to_owned)
}

/// The stacks one commit changes, ready to become runs.
struct Planned {
    runs: Vec<NewRun>,
    note: Option<String>,
}

/// Works out the runs for a commit on a branch (or a detached revision for plans by hand).
async fn runs_for(
    state: &AppState,
    branch: Option<&str>,
    commit: &str,
    only: Option<&str>,
    by_hand: bool,
) -> Result<Planned, String> {
    // Which branch applies where comes from the main branch, not from this commit.
    let policy = if by_hand { None } else { Some(crate::policy::current(state).await) };
    let git_dir = state.mirror.git_dir().to_path_buf();
    let cache = ModuleCache::at(state.paths.module_cache.clone());
    let commit = commit.to_owned();
    let branch_owned = branch.map(str::to_owned);
    let only = only.map(str::to_owned);
    tokio::task::spawn_blocking(move || -> Result<Planned, String> {
        let repo = Repo::discover(&git_dir).map_err(|e| e.to_string())?;
        let id = repo.resolve(&commit).map_err(|e| e.to_string())?;
        let tree = repo.tree(Some(id)).map_err(|e| e.to_string())?;
        let Some(bytes) = tree.read_file(CONFIG_FILE).map_err(|e| e.to_string())? else {
            return Err(format!("there is no {CONFIG_FILE} at {}", short(&commit)));
        };
        let text = String::from_utf8(bytes).map_err(|_| format!("{CONFIG_FILE} is not UTF-8"))?;
        let (config, _) = Config::parse(CONFIG_FILE, &text).map_err(|d| first_line(&d.to_string()))?;
        let (stacks, waits_for, mut notes) = match &only {
            Some(name) => {
                let loaded =
                    plinth_core::Loaded::load(CONFIG_FILE, &text, &tree).map_err(|e| first_line(&e.to_string()))?;
                let stack = loaded
                    .stacks
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("there is no stack `{name}` at {}", short(&commit)))?;
                (vec![(stack, 1)], BTreeMap::new(), Vec::new())
            }
            None => {
                let options = ChangedOptions {
                    base: config.main_branch.clone(),
                    head: commit.clone(),
                    with_dependents: false,
                    cache,
                };
                let report = plinth_git::changed(&repo, &options).map_err(|e| first_line(&e.to_string()))?;
                let mut notes = report.notes.clone();
                for deleted in report.stacks.iter().filter(|s| s.deleted) {
                    notes.push(format!(
                        "stack `{}` was deleted; plinth does not destroy it by itself",
                        deleted.stack.name
                    ));
                }
                let stacks =
                    report.stacks.into_iter().filter(|s| !s.deleted).map(|s| (s.stack, s.wave as u32)).collect();
                (stacks, report.waits_for, notes)
            }
        };
        let mut policy_stacks = None;
        let mut runs = Vec::new();
        for (stack, wave) in stacks {
            let workspace = match (&stack.workspace, branch_owned.as_deref()) {
                (plinth_core::Workspace::PerBranch, None) => {
                    notes.push(format!("`{}` has one workspace per branch; plan it through a branch", stack.name));
                    continue;
                }
                (ws, branch) => ws.for_branch(branch),
            };
            let mode = match &policy {
                None => RunMode::Plan,
                Some(Err(why)) => {
                    notes.push(format!("`{}` plans only: cannot read the policy: {why}", stack.name));
                    RunMode::Plan
                }
                Some(Ok(policy)) => {
                    let mode = run_mode(&policy.config, branch_owned.as_deref(), stack.environment.as_deref());
                    let on_main = branch_owned.as_deref() == Some(policy.config.main_branch.as_str());
                    if mode == RunMode::Apply && !on_main {
                        let on_policy = policy_stacks.get_or_insert_with(|| PolicyStacks::open(&repo, policy));
                        match on_policy.environment_of(&stack.name) {
                            Ok(Some(env)) if env != stack.environment => {
                                notes.push(format!(
                                    "`{}` plans only: this branch moves it from environment `{}` to `{}`, which applies once merged",
                                    stack.name,
                                    env.as_deref().unwrap_or("(none)"),
                                    stack.environment.as_deref().unwrap_or("(none)")
                                ));
                                RunMode::Plan
                            }
                            Ok(_) => mode,
                            Err(why) => {
                                notes.push(format!("`{}` plans only: {why}", stack.name));
                                RunMode::Plan
                            }
                        }
                    } else {
                        mode
                    }
                }
            };
            runs.push(NewRun {
                lock_key: lock_key(&stack.name, workspace.as_deref()),
                waits_for: waits_for.get(&stack.name).map(|w| w.iter().cloned().collect()).unwrap_or_default(),
                stack: stack.name,
                path: stack.dir,
                workspace,
                environment: stack.environment,
                terraform: stack.terraform,
                mode,
                wave,
                destroy: false,
                provisioned_env: None,
                approved_by: None,
            });
        }
        let note = if runs.is_empty() && notes.is_empty() {
            Some("no stack changed".to_owned())
        } else if notes.is_empty() {
            None
        } else {
            Some(notes.join("; "))
        };
        Ok(Planned { runs, note })
    })
    .await
    .map_err(|e| format!("change detection failed: {e}"))?
}

/// The stacks of the main branch's plinth.toml, resolved on demand, to see whether a branch
/// moved one into another environment.
struct PolicyStacks<'r> {
    tree: Result<(plinth_git::GitTree<'r>, Config), String>,
}

impl<'r> PolicyStacks<'r> {
    fn open(repo: &'r Repo, policy: &crate::policy::Policy) -> Self {
        let tree = repo
            .resolve(&policy.commit)
            .and_then(|id| repo.tree(Some(id)))
            .map(|tree| (tree, policy.config.clone()))
            .map_err(|e| format!("cannot read the main branch: {e}"));
        PolicyStacks { tree }
    }

    /// The environment of the stack of that name on the main branch: `None` if it has none
    /// there or does not exist there (a new stack).
    fn environment_of(&self, name: &str) -> Result<Option<Option<String>>, String> {
        let (tree, config) = self.tree.as_ref().map_err(Clone::clone)?;
        let resolver = plinth_core::config::Resolver::new(config, tree).map_err(|e| first_line(&e.to_string()))?;
        let Some(site) = resolver.site_named(name).map_err(|e| first_line(&e.to_string()))? else {
            return Ok(None);
        };
        let stack = resolver.stack(&site).map_err(|e| first_line(&e.to_string()))?;
        Ok(Some(stack.environment.clone()))
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or(text).to_owned()
}

/// Records the event for one commit on a branch, with its runs.
async fn record_commit(
    state: &AppState,
    branch: &str,
    commit: &str,
    trigger: &str,
    seen_at: Timestamp,
) -> Result<Recorded, ApiError> {
    let (runs, note) = match runs_for(state, Some(branch), commit, None, false).await {
        Ok(planned) => (planned.runs, planned.note),
        Err(why) => {
            tracing::warn!(%branch, commit = short(commit), reason = %why, "No runs for this commit.");
            (Vec::new(), Some(why))
        }
    };
    let event = NewEvent {
        branch: Some(branch.to_owned()),
        commit: commit.to_owned(),
        trigger: trigger.to_owned(),
        created_by: trigger.to_owned(),
        note,
        advance_ref: Some((branch.to_owned(), commit.to_owned())),
        supersede: true,
    };
    let recorded = state.store.record_event(event, runs, seen_at).await?;
    tracing::info!(%branch, commit = short(commit), runs = recorded.runs.len(), superseded = recorded.superseded.len(), "Recorded a commit.");
    for old in &recorded.superseded {
        remove_workspace(state, old.id).await;
    }
    Ok(recorded)
}

/// A plan asked for by hand: of the stacks a revision changes (against the main branch), or of
/// one stack. Plans by hand never apply.
pub async fn plan_by_hand(state: &AppState, rev: &str, stack: Option<&str>, by: &str) -> Result<Recorded, ApiError> {
    if let Err(e) = fetch_since(state, Instant::now()).await {
        tracing::warn!(error = %e, "Could not fetch before a plan by hand; using the last fetched state.");
    }
    let branches = state.mirror.branches().await.map_err(|e| ApiError::from_error(&e))?;
    let (branch, commit) = match branches.get(rev) {
        Some(sha) => (Some(rev.to_owned()), sha.clone()),
        None => {
            let git_dir = state.mirror.git_dir().to_path_buf();
            let rev_owned = rev.to_owned();
            let resolved = tokio::task::spawn_blocking(move || {
                let repo = Repo::discover(&git_dir)?;
                repo.resolve(&rev_owned)
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
            match resolved {
                Ok(id) => (None, id.to_string()),
                Err(e) => return Err(ApiError::from_error(&e)),
            }
        }
    };
    let planned = runs_for(state, branch.as_deref(), &commit, stack, true).await.map_err(|why| {
        ApiError::new(
            422,
            "plan.not_possible",
            format!("cannot plan {rev}: {why}"),
            "Check the revision and the stack name with `plinth stacks list`.",
        )
    })?;
    let stacks: BTreeSet<String> = planned.runs.iter().map(|r| r.stack.clone()).collect();
    let event = NewEvent {
        branch,
        commit,
        trigger: "manual".to_owned(),
        created_by: by.to_owned(),
        note: planned.note,
        advance_ref: None,
        supersede: false,
    };
    let recorded = state.store.record_event(event, planned.runs, state.now()).await?;
    tracing::info!(rev, by, stacks = ?stacks, "Recorded a plan by hand.");
    for old in &recorded.superseded {
        remove_workspace(state, old.id).await;
    }
    state.wake_scheduler.notify_one();
    Ok(recorded)
}
