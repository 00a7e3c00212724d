//! Runs: one stack at one commit, its statuses and the moves between them, and the decisions
//! the scheduler makes about runs (which may start, which are superseded, what a dependency's
//! outcome means for its dependents).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::time::Timestamp;

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Planning,
    /// The plan is done. Final for plan-only runs; apply runs move on.
    Planned,
    AwaitingApproval,
    Applying,
    Applied,
    /// The plan found nothing to do. A success.
    NoChanges,
    Failed,
    Rejected,
    Cancelled,
    /// A newer commit on the branch changes the stack too; that commit's run supersedes this.
    Stale,
    /// The server stopped while Terraform was applying. The stack stays locked until an admin
    /// has checked the state and unlocks it.
    Interrupted,
}

impl RunStatus {
    pub const ALL: [RunStatus; 12] = [
        RunStatus::Queued,
        RunStatus::Planning,
        RunStatus::Planned,
        RunStatus::AwaitingApproval,
        RunStatus::Applying,
        RunStatus::Applied,
        RunStatus::NoChanges,
        RunStatus::Failed,
        RunStatus::Rejected,
        RunStatus::Cancelled,
        RunStatus::Stale,
        RunStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Planning => "planning",
            RunStatus::Planned => "planned",
            RunStatus::AwaitingApproval => "awaiting_approval",
            RunStatus::Applying => "applying",
            RunStatus::Applied => "applied",
            RunStatus::NoChanges => "no_changes",
            RunStatus::Failed => "failed",
            RunStatus::Rejected => "rejected",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Stale => "stale",
            RunStatus::Interrupted => "interrupted",
        }
    }

    /// Whether a run in this status will not move again (for its mode).
    pub fn is_final(self, mode: RunMode) -> bool {
        match self {
            RunStatus::Queued | RunStatus::Planning | RunStatus::AwaitingApproval | RunStatus::Applying => false,
            RunStatus::Planned => mode == RunMode::Plan,
            _ => true,
        }
    }

    /// Whether a finished run counts as a success: what it set out to do is done.
    pub fn is_success(self, mode: RunMode) -> bool {
        match self {
            RunStatus::Applied | RunStatus::NoChanges => true,
            RunStatus::Planned => mode == RunMode::Plan,
            _ => false,
        }
    }

    /// Whether Terraform may be running for this run right now.
    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Planning | RunStatus::Applying)
    }

    /// The moves a run may make. Everything else is a bug or a race the caller lost.
    pub fn can_move_to(self, to: RunStatus) -> bool {
        use RunStatus::*;
        matches!(
            (self, to),
            (Queued, Planning | Cancelled | Stale)
                | (Planning, Planned | NoChanges | Failed | Cancelled | Queued | Interrupted)
                | (Planned, AwaitingApproval | Applying | Stale | Cancelled | Queued)
                | (AwaitingApproval, Applying | Rejected | Stale | Cancelled)
                | (Applying, Applied | Failed | Cancelled | Interrupted)
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL.iter().copied().find(|st| st.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
            format!("`{s}` is not a run status; use one of: {}", all.join(", "))
        })
    }
}

/// What a run is allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    /// Plan, then apply as the environment's policy says.
    Apply,
    /// Plan only, never apply: commits on branches that do not release to the environment,
    /// and plans asked for by hand.
    Plan,
}

impl RunMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::Apply => "apply",
            RunMode::Plan => "plan",
        }
    }
}

impl FromStr for RunMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "apply" => Ok(RunMode::Apply),
            "plan" => Ok(RunMode::Plan),
            other => Err(format!("`{other}` is not a run mode; use `apply` or `plan`")),
        }
    }
}

/// What a plan would do: counts and the resources it touches. Replacing a resource counts as
/// one to add and one to destroy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSummary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
    pub resources: Vec<ResourceChange>,
    pub output_changes: usize,
}

/// One resource a plan touches, and how (`create`, `update`, `delete`, or both for a replace).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceChange {
    pub address: String,
    pub actions: Vec<String>,
}

impl PlanSummary {
    /// Whether the plan changes anything at all, outputs included.
    pub fn has_changes(&self) -> bool {
        !self.resources.is_empty() || self.output_changes > 0
    }
}

impl fmt::Display for PlanSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plan: {} to add, {} to change, {} to destroy", self.add, self.change, self.destroy)?;
        match self.output_changes {
            0 => write!(f, "."),
            1 => write!(f, "; 1 output changes."),
            n => write!(f, "; {n} outputs change."),
        }
    }
}

/// One stack at one commit: the unit plinth plans, applies and locks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub id: i64,
    /// The commit event that made this run; runs of one event share dependencies.
    pub event_id: i64,
    pub stack: String,
    /// The stack's directory in the repo.
    pub path: String,
    /// The Terraform workspace; `None` is `default`.
    pub workspace: Option<String>,
    pub environment: Option<String>,
    pub lock_key: String,
    /// The Terraform binary for this stack.
    pub terraform: String,
    pub commit: String,
    pub branch: Option<String>,
    pub mode: RunMode,
    pub status: RunStatus,
    pub wave: u32,
    /// Runs of the same event this one waits for.
    pub depends_on: Vec<i64>,
    /// The token, or the trigger (`poll`, `webhook`), that started it.
    pub created_by: String,
    pub approved_by: Option<String>,
    /// Why the run ended as it did, when that needs saying (stale, cancelled, failed).
    pub reason: Option<String>,
    pub plan: Option<PlanSummary>,
    /// Plans a destroy of everything in the state instead of an apply of the configuration.
    #[serde(default)]
    pub destroy: bool,
    /// The environment on request whose kept root this run works on; `None` for a stack of
    /// the repo, checked out at the commit.
    #[serde(default)]
    pub provisioned_env: Option<i64>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub updated_at: Timestamp,
}

/// Whether a commit on `branch` may apply a stack in `environment`: the environment must
/// release from that branch. A stack without an environment releases from the main branch.
pub fn run_mode(config: &Config, branch: Option<&str>, environment: Option<&str>) -> RunMode {
    let Some(branch) = branch else { return RunMode::Plan };
    let releases = match environment {
        Some(env) => config.environments.get(env).is_some_and(|e| e.releases_from(branch)),
        None => branch == config.main_branch,
    };
    if releases { RunMode::Apply } else { RunMode::Plan }
}

/// Whether applies in `environment` wait for an approver.
pub fn needs_approval(config: &Config, environment: Option<&str>) -> bool {
    environment.and_then(|e| config.environments.get(e)).is_some_and(|e| e.approval)
}

/// The lock a run takes: one per stack and Terraform workspace, so one per state.
pub fn lock_key(stack: &str, workspace: Option<&str>) -> String {
    format!("{stack}@{}", workspace.unwrap_or("default"))
}

/// What the scheduler needs to know about a run that has not finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub id: i64,
    pub lock_key: String,
    pub status: RunStatus,
    pub mode: RunMode,
    /// Runs of the same commit this one waits for.
    pub depends_on: Vec<i64>,
}

/// What has become of the runs a pending run depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DependencyState {
    /// Still going.
    Waiting,
    /// All succeeded.
    Done,
    /// One ended without success: the dependent cannot go ahead. Carries that run and its
    /// status.
    Broken(i64, RunStatus),
}

/// The outcome of a run's dependencies, given every run's status and mode. A dependency that
/// is unknown (pruned) counts as done.
pub fn dependency_state(depends_on: &[i64], outcome: &HashMap<i64, (RunStatus, RunMode)>) -> DependencyState {
    let mut waiting = false;
    for id in depends_on {
        match outcome.get(id) {
            Some(&(status, mode)) if status.is_final(mode) && !status.is_success(mode) => {
                return DependencyState::Broken(*id, status);
            }
            Some(&(status, mode)) if status.is_final(mode) => {}
            Some(_) => waiting = true,
            None => {}
        }
    }
    if waiting { DependencyState::Waiting } else { DependencyState::Done }
}

/// Which queued runs may start now, at most `free_slots` of them, oldest first.
///
/// One state has at most one Terraform process at a time: a run starts only when no other run
/// on its lock is planning or applying. `held_locks` are the locks of apply runs that wait for
/// approval or were interrupted: they keep other apply runs out (those would change the state
/// under a plan someone is reviewing), but plan-only runs may go ahead, since a plan changes
/// nothing. Otherwise runs on one lock start in the order they were made, which is commit
/// order; a run whose dependencies are not done keeps later runs on its lock waiting.
pub fn startable(
    pending: &[Pending],
    held_locks: &HashSet<String>,
    outcome: &HashMap<i64, (RunStatus, RunMode)>,
    free_slots: usize,
) -> Vec<i64> {
    let mut by_id: Vec<&Pending> = pending.iter().collect();
    by_id.sort_by_key(|p| p.id);
    let mut active: HashSet<&str> = by_id
        .iter()
        .filter(|p| p.status.is_active() || (p.status == RunStatus::Planned && p.mode == RunMode::Apply))
        .map(|p| p.lock_key.as_str())
        .collect();
    // Later runs on these locks wait: all of them, or only apply runs.
    let mut blocked_all: HashSet<&str> = HashSet::new();
    let mut blocked_apply: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for run in by_id.into_iter().filter(|p| p.status == RunStatus::Queued) {
        let key = run.lock_key.as_str();
        if active.contains(key) || blocked_all.contains(key) {
            continue;
        }
        if run.mode == RunMode::Apply && (held_locks.contains(key) || blocked_apply.contains(key)) {
            blocked_apply.insert(key);
            continue;
        }
        if dependency_state(&run.depends_on, outcome) != DependencyState::Done || out.len() >= free_slots {
            blocked_all.insert(key);
            continue;
        }
        out.push(run.id);
        active.insert(key);
    }
    out
}

/// For each affected stack, the affected stacks it must wait for: those it depends on,
/// directly or through stacks the change did not touch.
pub fn waits_for(
    affected: &BTreeSet<String>,
    mut deps: impl FnMut(&str) -> Vec<String>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for stack in affected {
        let mut found = BTreeSet::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut pending = deps(stack);
        while let Some(next) = pending.pop() {
            if next == *stack || !seen.insert(next.clone()) {
                continue;
            }
            if affected.contains(&next) {
                found.insert(next);
            } else {
                pending.extend(deps(&next));
            }
        }
        out.insert(stack.clone(), found);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn statuses_round_trip_and_know_their_ends() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>(), Ok(status));
        }
        assert!("done".parse::<RunStatus>().unwrap_err().contains("awaiting_approval"));
        assert!(RunStatus::Planned.is_final(RunMode::Plan) && !RunStatus::Planned.is_final(RunMode::Apply));
        assert!(RunStatus::NoChanges.is_success(RunMode::Apply));
        assert!(!RunStatus::Stale.is_success(RunMode::Apply));
    }

    #[test]
    fn only_sane_moves_are_allowed() {
        use RunStatus::*;
        let allowed = [
            (Queued, Planning),
            (Planning, NoChanges),
            (Planning, Planned),
            (Planned, AwaitingApproval),
            (AwaitingApproval, Applying),
            (AwaitingApproval, Rejected),
            (Applying, Applied),
            (Applying, Interrupted),
            (Planning, Queued),
        ];
        for (from, to) in allowed {
            assert!(from.can_move_to(to), "{from} -> {to}");
        }
        let refused =
            [(Applied, Applying), (Interrupted, Applying), (Queued, Applying), (Stale, Applying), (Applying, Queued)];
        for (from, to) in refused {
            assert!(!from.can_move_to(to), "{from} -> {to}");
        }
        // Nothing leaves a final status.
        for from in RunStatus::ALL.into_iter().filter(|s| s.is_final(RunMode::Apply)) {
            assert!(RunStatus::ALL.iter().all(|&to| !from.can_move_to(to)), "{from}");
        }
    }

    const CONFIG: &str = r#"
main_branch = "main"
[environments.stg]
branches = ["main", "release/*"]
[environments.prd]
branches = ["main"]
approval = true
approvers = ["sre"]
[stacks.x]
path = "x"
"#;

    #[test]
    fn branches_decide_whether_a_run_may_apply() {
        let (config, _) = Config::parse("plinth.toml", CONFIG).unwrap();
        let cases = [
            (Some("main"), Some("stg"), RunMode::Apply),
            (Some("release/1.2"), Some("stg"), RunMode::Apply),
            (Some("release/1.2"), Some("prd"), RunMode::Plan),
            (Some("feature/x"), Some("prd"), RunMode::Plan),
            (Some("main"), None, RunMode::Apply),
            (Some("feature/x"), None, RunMode::Plan),
            (None, Some("stg"), RunMode::Plan),
            (Some("main"), Some("undeclared"), RunMode::Plan),
        ];
        for (branch, env, expected) in cases {
            assert_eq!(run_mode(&config, branch, env), expected, "{branch:?} {env:?}");
        }
        assert!(needs_approval(&config, Some("prd")));
        assert!(!needs_approval(&config, Some("stg")) && !needs_approval(&config, None));
    }

    fn pending(id: i64, lock: &str, status: RunStatus, deps: &[i64]) -> Pending {
        Pending { id, lock_key: lock.into(), status, mode: RunMode::Apply, depends_on: deps.to_vec() }
    }

    #[test]
    fn runs_start_in_lock_order_within_the_slots() {
        use RunStatus::*;
        let runs = vec![
            pending(1, "a", AwaitingApproval, &[]),
            pending(2, "a", Queued, &[]),
            pending(3, "b", Queued, &[]),
            pending(4, "c", Queued, &[3]),
            pending(5, "d", Queued, &[]),
            pending(6, "e", Queued, &[]),
            pending(7, "b", Queued, &[]),
        ];
        let outcome: HashMap<i64, (RunStatus, RunMode)> = runs.iter().map(|r| (r.id, (r.status, r.mode))).collect();
        let held: HashSet<String> = ["a".to_owned()].into_iter().collect();
        // 2 waits behind 1's hold on a; 4 waits for 3; 7 waits behind 3 on b.
        assert_eq!(startable(&runs, &held, &outcome, 2), [3, 5]);
        assert_eq!(startable(&runs, &held, &outcome, 10), [3, 5, 6]);
        assert_eq!(startable(&runs, &held, &outcome, 0), Vec::<i64>::new());
    }

    #[test]
    fn plans_go_ahead_of_a_held_lock_but_never_beside_a_running_one() {
        use RunStatus::*;
        let plan =
            |id: i64, lock: &str, status: RunStatus| Pending { mode: RunMode::Plan, ..pending(id, lock, status, &[]) };
        let runs = vec![
            pending(1, "a", AwaitingApproval, &[]),
            pending(2, "a", Queued, &[]),
            plan(3, "a", Queued),
            plan(4, "a", Queued),
            pending(5, "b", Planning, &[]),
            plan(6, "b", Queued),
        ];
        let outcome: HashMap<i64, (RunStatus, RunMode)> = runs.iter().map(|r| (r.id, (r.status, r.mode))).collect();
        let held: HashSet<String> = ["a".to_owned()].into_iter().collect();
        // The plan-only run 3 goes ahead of apply run 2, which waits for the approval; one at a
        // time, so 4 waits for 3; 6 waits while 5 plans.
        assert_eq!(startable(&runs, &held, &outcome, 10), [3]);
        // An approved apply (applying, not yet running) keeps plans out too.
        let runs = vec![pending(1, "a", Applying, &[]), plan(2, "a", Queued)];
        assert_eq!(startable(&runs, &HashSet::new(), &outcome, 10), Vec::<i64>::new());
    }

    #[test]
    fn dependencies_gate_their_dependents() {
        use RunStatus::*;
        let mut outcome: HashMap<i64, (RunStatus, RunMode)> = HashMap::new();
        outcome.insert(1, (Applying, RunMode::Apply));
        outcome.insert(2, (NoChanges, RunMode::Apply));
        outcome.insert(3, (Planned, RunMode::Plan));
        outcome.insert(4, (Failed, RunMode::Apply));
        assert_eq!(dependency_state(&[1, 2], &outcome), DependencyState::Waiting);
        assert_eq!(dependency_state(&[2, 3], &outcome), DependencyState::Done);
        assert_eq!(dependency_state(&[2, 4, 1], &outcome), DependencyState::Broken(4, Failed));
        assert_eq!(dependency_state(&[99], &outcome), DependencyState::Done);
    }

    #[test]
    fn waits_go_through_untouched_stacks() {
        let graph: HashMap<&str, Vec<&str>> =
            [("app", vec!["common"]), ("common", vec!["network"]), ("network", vec![]), ("dns", vec!["app"])]
                .into_iter()
                .collect();
        let affected: BTreeSet<String> = ["app", "network", "dns"].iter().map(|s| s.to_string()).collect();
        let got = waits_for(&affected, |s| {
            graph.get(s).map(|d| d.iter().map(|x| x.to_string()).collect()).unwrap_or_default()
        });
        assert_eq!(got["app"], ["network".to_owned()].into_iter().collect());
        assert_eq!(got["dns"], ["app".to_owned()].into_iter().collect());
        assert!(got["network"].is_empty());
    }
}
