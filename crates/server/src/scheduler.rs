//! The scheduler: which runs start, when. Runs on one lock go one at a time in the order they
//! were made (commit order); a run waits for the runs of its commit that it depends on; at most
//! `--concurrency` Terraform processes run at once. Also what happens to runs when the server
//! starts after a stop.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use plinth_core::run::{DependencyState, Pending, Run, RunMode, RunStatus, dependency_state, startable};
use plinth_store::{LogLine, RunPatch, Start};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::runner::{self, Phase};
use crate::state::AppState;

/// Puts runs left over from a previous process in order, before anything starts: a plan that
/// was running starts over; an apply that was running is interrupted, and its stack stays
/// locked until an admin has checked the state; a plan waiting for approval whose files are
/// gone is cancelled. Nothing is applied again by itself.
pub async fn recover(state: &AppState) -> Result<(), plinth_store::StoreError> {
    // The output a killed process had not stored yet comes first, before any note follows it.
    state.logs.recover_spools().await?;
    let unfinished = state.store.unfinished_runs().await?;
    let mut keep: HashSet<i64> = HashSet::new();
    // Terraform (and what it started) may have outlived a crashed server: end it first.
    let workspaces: Vec<(i64, PathBuf)> = unfinished
        .iter()
        .filter(|r| r.status.is_active() || r.status == RunStatus::Planned)
        .map(|r| (r.id, state.paths.workspace(r.id)))
        .collect();
    let _ = tokio::task::spawn_blocking(move || {
        for (run_id, workspace) in workspaces {
            kill_leftovers(run_id, &workspace);
        }
    })
    .await;
    for run in &unfinished {
        let (to, text) = match run.status {
            RunStatus::Planning | RunStatus::Planned => {
                (RunStatus::Queued, "plinth restarted while this run was planning; it plans again.".to_owned())
            }
            RunStatus::Applying => (
                RunStatus::Interrupted,
                "plinth stopped while terraform was applying. The stack stays locked: check its state, then run `plinth runs unlock STACK`."
                    .to_owned(),
            ),
            RunStatus::AwaitingApproval => {
                if state.paths.workspace(run.id).join(crate::runner::SEALED_PLAN_FILE).exists() {
                    keep.insert(run.id);
                    continue;
                }
                (RunStatus::Cancelled, "the saved plan was lost while plinth was stopped; the stack plans again on its next change.".to_owned())
            }
            _ => continue,
        };
        append_note(state, run.id, &text).await;
        let patch = RunPatch { reason: Some(text.clone()), ..Default::default() };
        state.store.transition(run.id, to, patch, state.now()).await?;
        tracing::warn!(run = run.id, stack = %run.stack, from = %run.status, to = %to, "Recovered a run left over from the last process.");
    }
    // Workspaces of runs that are not waiting for approval are leftovers.
    if let Ok(mut entries) = tokio::fs::read_dir(&state.paths.workspaces).await {
        while let Ok(Some(entry)) = entries.next_entry().await {
            let id = entry.file_name().to_string_lossy().parse::<i64>().ok();
            if id.is_none_or(|id| !keep.contains(&id)) {
                let _ = tokio::fs::remove_dir_all(entry.path()).await;
            }
        }
    }
    Ok(())
}

/// Kills the process group a run's terraform ran in, if processes of it are still there and
/// still working in the run's workspace (so that a reused group id never hits a stranger).
fn kill_leftovers(run_id: i64, workspace: &Path) {
    let Ok(text) = std::fs::read_to_string(workspace.join(runner::PGID_FILE)) else { return };
    let Ok(pgid) = text.trim().parse::<u32>() else { return };
    let ours = processes_in_group(pgid)
        .into_iter()
        .any(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(workspace)));
    if ours && plinth_terraform::process::kill_group(pgid) {
        tracing::warn!(run = run_id, pgid, "Killed terraform processes left over from the last server process.");
    }
}

/// The processes whose process group is `pgid`, from /proc.
fn processes_in_group(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces and parens.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.to_owned()))
                .and_then(|rest| rest.split_whitespace().nth(2).and_then(|g| g.parse::<u32>().ok()))
                == Some(pgid)
        })
        .collect()
}

async fn append_note(state: &AppState, run_id: i64, text: &str) {
    let seq = state.store.last_log_seq(run_id).await.unwrap_or(0) + 1;
    let line = LogLine { seq, stream: "plinth".into(), text: text.into(), at: state.now() };
    if let Err(e) = state.store.append_logs(run_id, &[line]).await {
        tracing::error!(run = run_id, error = %e, "Could not log a recovery note.");
    }
}

/// Starts runs as they become startable until shutdown.
pub async fn run(state: AppState, tracker: TaskTracker) {
    loop {
        if state.shutdown.is_cancelled() {
            return;
        }
        if let Err(e) = tick(&state, &tracker).await {
            tracing::error!(error = %e, "The scheduler could not read the store; retrying.");
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = state.wake_scheduler.notified() => {}
            // A safety net: every change also wakes the scheduler.
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// One round: settle runs whose dependencies failed, start approved applies, then start
/// queued runs in order, as slots allow.
pub async fn tick(state: &AppState, tracker: &TaskTracker) -> Result<(), plinth_store::StoreError> {
    // Read what runs before what the store says: a runner that finishes in between is then
    // still counted as running, rather than its final run looking unattended.
    let running: HashSet<i64> = state.running.lock().map(|m| m.keys().copied().collect()).unwrap_or_default();
    let unfinished = state.store.unfinished_runs().await?;
    let mut outcome: HashMap<i64, (RunStatus, RunMode)> =
        unfinished.iter().map(|r| (r.id, (r.status, r.mode))).collect();
    let missing: Vec<i64> = unfinished
        .iter()
        .flat_map(|r| r.depends_on.iter().copied())
        .filter(|id| !outcome.contains_key(id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    for (id, status, mode) in state.store.outcomes(&missing).await? {
        outcome.insert(id, (status, mode));
    }

    // Dependents of a run that did not succeed cannot go ahead.
    let mut settled: HashSet<i64> = HashSet::new();
    for run in unfinished.iter().filter(|r| r.status == RunStatus::Queued) {
        if let DependencyState::Broken(dep, status) = dependency_state(&run.depends_on, &outcome) {
            let to = if status == RunStatus::Stale { RunStatus::Stale } else { RunStatus::Cancelled };
            let text = format!("run #{dep}, which this run waits for, ended {status}");
            append_note(state, run.id, &text).await;
            let patch = RunPatch { reason: Some(text), ..Default::default() };
            if let Some(updated) = state.store.transition(run.id, to, patch, state.now()).await? {
                outcome.insert(run.id, (updated.status, updated.mode));
                settled.insert(run.id);
            }
        }
    }
    if state.shutdown.is_cancelled() {
        return Ok(());
    }

    let mut free = state.config.concurrency.saturating_sub(running.len());
    // Approved applies take slots first: their plans are ready and their locks held. A plan
    // that went ahead while this run waited for approval finishes first.
    let planning: HashSet<&str> =
        unfinished.iter().filter(|r| r.status == RunStatus::Planning).map(|r| r.lock_key.as_str()).collect();
    for run in unfinished.iter().filter(|r| r.status == RunStatus::Applying && !running.contains(&r.id)) {
        if free == 0 {
            break;
        }
        if planning.contains(run.lock_key.as_str()) {
            continue;
        }
        spawn(state, tracker, run.clone(), Phase::Apply);
        free -= 1;
    }
    let pending: Vec<Pending> = unfinished
        .iter()
        .filter(|r| !settled.contains(&r.id))
        .map(|r| Pending {
            id: r.id,
            lock_key: r.lock_key.clone(),
            status: r.status,
            mode: r.mode,
            depends_on: r.depends_on.clone(),
        })
        .collect();
    let held: HashSet<String> = state.store.locks().await?.into_iter().map(|l| l.lock_key).collect();
    for id in startable(&pending, &held, &outcome, free) {
        match state.store.start_run(id, state.now()).await? {
            Start::Started(run) => spawn(state, tracker, *run, Phase::Plan),
            Start::Locked(lock) => tracing::debug!(run = id, holder = lock.run_id, "Run waits for its lock."),
            Start::Busy(other) => tracing::debug!(run = id, other, "Run waits for another run on its lock."),
            Start::NotQueued => {}
        }
    }
    Ok(())
}

fn spawn(state: &AppState, tracker: &TaskTracker, run: Run, phase: Phase) {
    let token = CancellationToken::new();
    if let Ok(mut running) = state.running.lock() {
        running.insert(run.id, token.clone());
    }
    tracker.spawn(runner::execute(state.clone(), run, phase, token));
}
