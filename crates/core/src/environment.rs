//! Environments on request: their names, statuses and the moves between them, the requests
//! that change them (create, update, destroy) and which of those may start (one at a time per
//! target account, S4.5), and what review environments need given the branches that exist.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Review;
use crate::time::Timestamp;

/// Where an environment made from a template is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvStatus {
    /// Its create request waits for the account.
    Queued,
    /// init, plan and apply are running (or the apply waits for an approval).
    Provisioning,
    Ready,
    /// An update request is running.
    Updating,
    /// The create failed; what its apply made was destroyed again, so nothing is left.
    Failed,
    /// The create or an update failed and cleaning up failed too: resources may be left.
    /// `plinth env destroy` tries again.
    CleanupFailed,
    Destroying,
    Destroyed,
    /// A destroy failed; `plinth env destroy` tries again.
    DestroyFailed,
}

impl EnvStatus {
    pub const ALL: [EnvStatus; 9] = [
        EnvStatus::Queued,
        EnvStatus::Provisioning,
        EnvStatus::Ready,
        EnvStatus::Updating,
        EnvStatus::Failed,
        EnvStatus::CleanupFailed,
        EnvStatus::Destroying,
        EnvStatus::Destroyed,
        EnvStatus::DestroyFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EnvStatus::Queued => "queued",
            EnvStatus::Provisioning => "provisioning",
            EnvStatus::Ready => "ready",
            EnvStatus::Updating => "updating",
            EnvStatus::Failed => "failed",
            EnvStatus::CleanupFailed => "cleanup_failed",
            EnvStatus::Destroying => "destroying",
            EnvStatus::Destroyed => "destroyed",
            EnvStatus::DestroyFailed => "destroy_failed",
        }
    }

    /// Whether the environment still holds its name, and possibly resources: everything but
    /// `destroyed` and a `failed` create (which left nothing behind).
    pub fn is_live(self) -> bool {
        !matches!(self, EnvStatus::Destroyed | EnvStatus::Failed)
    }

    /// Whether a request is working on it right now (or waits to).
    pub fn is_busy(self) -> bool {
        matches!(self, EnvStatus::Queued | EnvStatus::Provisioning | EnvStatus::Updating | EnvStatus::Destroying)
    }

    /// The moves an environment may make.
    pub fn can_move_to(self, to: EnvStatus) -> bool {
        use EnvStatus::*;
        matches!(
            (self, to),
            (Queued, Provisioning | Failed | Destroyed)
                | (Provisioning, Ready | Failed | CleanupFailed)
                | (Ready, Updating | Destroying)
                | (Updating, Ready | CleanupFailed)
                | (CleanupFailed, Destroying | Updating)
                | (Destroying, Destroyed | DestroyFailed)
                | (DestroyFailed, Destroying)
        )
    }
}

impl fmt::Display for EnvStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EnvStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EnvStatus::ALL.iter().copied().find(|st| st.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = EnvStatus::ALL.iter().map(|s| s.as_str()).collect();
            format!("`{s}` is not an environment status; use one of: {}", all.join(", "))
        })
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Create,
    Update,
    Destroy,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Create => "create",
            RequestKind::Update => "update",
            RequestKind::Destroy => "destroy",
        }
    }
}

impl FromStr for RequestKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "create" => Ok(RequestKind::Create),
            "update" => Ok(RequestKind::Update),
            "destroy" => Ok(RequestKind::Destroy),
            other => Err(format!("`{other}` is not a request kind; use create, update or destroy")),
        }
    }
}

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Waits for its account (another request there runs first).
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RequestStatus {
    pub const ALL: [RequestStatus; 5] = [
        RequestStatus::Queued,
        RequestStatus::Running,
        RequestStatus::Succeeded,
        RequestStatus::Failed,
        RequestStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Queued => "queued",
            RequestStatus::Running => "running",
            RequestStatus::Succeeded => "succeeded",
            RequestStatus::Failed => "failed",
            RequestStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, RequestStatus::Queued | RequestStatus::Running)
    }
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RequestStatus::ALL
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a request status"))
    }
}

/// Whether a name works for an environment made on request: a DNS label (lowercase letters,
/// digits and `-`, at most 63 characters), since it becomes part of host names and state paths.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a valid environment name: use lowercase letters, digits and `-`, at most 63 characters, not starting or ending with `-`",
            name.escape_debug()
        ))
    }
}

/// The name of a branch's review environment.
pub fn review_name(slug: &str) -> String {
    format!("review-{slug}")
}

/// A request waiting or running, as the provisioner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub id: i64,
    pub account: String,
    pub status: RequestStatus,
}

/// Which queued requests may start now: the oldest queued request of each account that has
/// none running. Requests of one account go one at a time, in the order they were made.
pub fn startable(pending: &[Pending]) -> Vec<i64> {
    let mut by_id: Vec<&Pending> = pending.iter().collect();
    by_id.sort_by_key(|p| p.id);
    let mut busy: HashSet<&str> =
        by_id.iter().filter(|p| p.status == RequestStatus::Running).map(|p| p.account.as_str()).collect();
    let mut out = Vec::new();
    for p in by_id.into_iter().filter(|p| p.status == RequestStatus::Queued) {
        if busy.insert(p.account.as_str()) {
            out.push(p.id);
        }
    }
    out
}

/// How many requests of the same account are ahead of request `id`.
pub fn queue_position(pending: &[Pending], id: i64) -> usize {
    let Some(me) = pending.iter().find(|p| p.id == id) else { return 0 };
    pending.iter().filter(|p| p.account == me.account && p.id < id && !p.status.is_final()).count()
}

/// A review environment as the watcher knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewEnv {
    pub name: String,
    pub branch: String,
    pub slug: String,
    /// The branch head it was last made or touched for.
    pub head: Option<String>,
    /// When that head was seen.
    pub pushed_at: Timestamp,
    pub status: EnvStatus,
}

/// What the review watcher should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReviewAction {
    /// Make a review environment for the branch, named after `slug`.
    Create { branch: String, slug: String, head: String },
    /// The branch moved: remember the new head and when (the TTL counts from here).
    Touch { name: String, head: String },
    /// Destroy it, and say why.
    Destroy { name: String, reason: String },
    /// No room: `max` review environments exist already.
    Refuse { branch: String, reason: String },
}

/// What review environments need, given the branches that exist now (name to head), the
/// review environments that exist, and the time. Deletions come first, so that a branch
/// replacing a deleted one finds room; branches are taken in name order, for stable results.
pub fn review_actions(
    review: &Review,
    branches: &BTreeMap<String, String>,
    envs: &[ReviewEnv],
    now: Timestamp,
) -> Vec<ReviewAction> {
    let mut out = Vec::new();
    let live: Vec<&ReviewEnv> = envs.iter().filter(|e| e.status.is_live()).collect();
    let mut count = live.iter().filter(|e| e.status != EnvStatus::Destroying).count();
    let ttl = i64::try_from(review.ttl.as_millis()).unwrap_or(i64::MAX);
    for env in &live {
        if env.status == EnvStatus::Destroying {
            continue;
        }
        let reason = match branches.get(&env.branch) {
            None => Some(format!("branch `{}` was deleted", env.branch)),
            Some(_) if !review.applies_to(&env.branch) => {
                Some(format!("branch `{}` no longer matches [review] branches", env.branch))
            }
            Some(head) if env.head.as_deref() != Some(head.as_str()) => None,
            // The TTL counts while it exists, not while it is being made or changed.
            Some(_) if env.status.is_busy() => None,
            Some(_) if now.millis().saturating_sub(env.pushed_at.millis()) > ttl => Some(format!(
                "no push to `{}` for {}, longer than the review TTL",
                env.branch,
                humantime::format_duration(Duration::from_millis(
                    now.millis().saturating_sub(env.pushed_at.millis()).max(0) as u64 / 1000 * 1000
                ))
            )),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            if env.status != EnvStatus::DestroyFailed {
                out.push(ReviewAction::Destroy { name: env.name.clone(), reason });
                count = count.saturating_sub(1);
            }
        } else if let Some(head) = branches.get(&env.branch)
            && env.head.as_deref() != Some(head.as_str())
        {
            out.push(ReviewAction::Touch { name: env.name.clone(), head: head.clone() });
        }
    }
    let mut taken: Vec<(String, String)> = live.iter().map(|e| (e.branch.clone(), e.slug.clone())).collect();
    for (branch, head) in branches {
        if !review.applies_to(branch) || live.iter().any(|e| &e.branch == branch) {
            continue;
        }
        // One that failed to create, expired, or was destroyed by hand at this head comes back
        // with the next push, not on the next poll.
        if envs.iter().any(|e| &e.branch == branch && !e.status.is_live() && e.head.as_ref() == Some(head)) {
            continue;
        }
        if count >= review.max as usize {
            out.push(ReviewAction::Refuse {
                branch: branch.clone(),
                reason: format!(
                    "{count} review environments exist, the most [review] max allows; destroy one (`plinth env destroy NAME`) or raise `max`"
                ),
            });
            continue;
        }
        let slug = crate::slug::unique(branch, &taken);
        taken.push((branch.clone(), slug.clone()));
        count += 1;
        out.push(ReviewAction::Create { branch: branch.clone(), slug, head: head.clone() });
    }
    out
}

#[cfg(test)]
mod tests;
