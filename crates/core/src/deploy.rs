//! Deployments: one per release (or rollback), one active at a time per service and
//! environment, with the moves between their statuses as plain rules.

use serde::{Deserialize, Serialize};

/// Where a deployment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Waiting for the active deployment of its service and environment to end.
    Queued,
    /// Waiting for an approver (the environment has `approval = true`).
    AwaitingApproval,
    /// Rolling out.
    InProgress,
    /// Every instance runs the release.
    Succeeded,
    /// The rollout stopped; the previous release keeps serving. The reason says why.
    Failed,
    /// Stopped by someone; the previous release keeps serving.
    Cancelled,
    /// A newer release came before this one started.
    Superseded,
    /// An approver said no.
    Rejected,
}

impl DeploymentStatus {
    pub const ALL: [DeploymentStatus; 8] = [
        DeploymentStatus::Queued,
        DeploymentStatus::AwaitingApproval,
        DeploymentStatus::InProgress,
        DeploymentStatus::Succeeded,
        DeploymentStatus::Failed,
        DeploymentStatus::Cancelled,
        DeploymentStatus::Superseded,
        DeploymentStatus::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Queued => "queued",
            DeploymentStatus::AwaitingApproval => "awaiting_approval",
            DeploymentStatus::InProgress => "in_progress",
            DeploymentStatus::Succeeded => "succeeded",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::Cancelled => "cancelled",
            DeploymentStatus::Superseded => "superseded",
            DeploymentStatus::Rejected => "rejected",
        }
    }

    /// Whether nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Succeeded
                | DeploymentStatus::Failed
                | DeploymentStatus::Cancelled
                | DeploymentStatus::Superseded
                | DeploymentStatus::Rejected
        )
    }

    /// Whether it has not started yet (and a newer release may supersede it).
    pub fn is_waiting(self) -> bool {
        matches!(self, DeploymentStatus::Queued | DeploymentStatus::AwaitingApproval)
    }

    /// The moves a deployment may make.
    pub fn can_move_to(self, to: DeploymentStatus) -> bool {
        use DeploymentStatus::*;
        matches!(
            (self, to),
            (Queued, InProgress | Cancelled | Superseded)
                | (AwaitingApproval, Queued | Rejected | Cancelled | Superseded)
                | (InProgress, Succeeded | Failed | Cancelled)
        )
    }
}

impl std::fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeploymentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DeploymentStatus::ALL.into_iter().find(|d| d.as_str() == s).ok_or_else(|| {
            format!(
                "`{s}` is not a deployment status; use one of {}",
                DeploymentStatus::ALL.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// Why a deployment exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    /// A release was published.
    Release,
    /// Someone asked to go back to an earlier release (CI does not run again).
    Rollback,
}

impl DeploymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentKind::Release => "release",
            DeploymentKind::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "release" => Some(DeploymentKind::Release),
            "rollback" => Some(DeploymentKind::Rollback),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::DeploymentStatus::*;
    use super::*;

    #[test]
    fn statuses_round_trip_and_move_forward_only() {
        for s in DeploymentStatus::ALL {
            assert_eq!(s.as_str().parse::<DeploymentStatus>().unwrap(), s);
            for to in DeploymentStatus::ALL {
                if s.is_final() {
                    assert!(!s.can_move_to(to), "{s} -> {to}");
                }
            }
        }
        assert!(AwaitingApproval.can_move_to(Queued));
        assert!(Queued.can_move_to(Superseded) && !InProgress.can_move_to(Superseded));
        assert!(InProgress.can_move_to(Cancelled));
        assert!("done".parse::<DeploymentStatus>().unwrap_err().contains("in_progress"));
    }
}
