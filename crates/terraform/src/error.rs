//! Errors from running terraform, with codes and advice. Terraform's own messages are not
//! copied in: they went to the output channel with the rest of its output.

use std::path::PathBuf;
use std::time::Duration;

use plinth_core::ErrorCode;

use crate::process::Exit;

/// A terraform command could not run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum TerraformError {
    #[error("the terraform binary `{binary}` was not found")]
    NotFound { binary: String },
    #[error("the stack directory `{}` does not exist", dir.display())]
    NoDir { dir: PathBuf },
    #[error("could not run `{command}`: {reason}")]
    Start { command: String, reason: String },
    #[error("`{command}` failed with {exit}")]
    Failed { command: String, exit: Exit },
    #[error("the state is locked by another operation{}", lock_id.as_deref().map(|id| format!(" (lock ID {id})")).unwrap_or_default())]
    StateLocked { lock_id: Option<String> },
    #[error("`{command}` was interrupted")]
    Interrupted { command: String },
    #[error("`{command}` was killed: it did not stop within {}s of the interrupt", grace.as_secs_f64())]
    Killed { command: String, grace: Duration },
    #[error("`{command}` printed JSON that could not be read: {reason}")]
    BadJson { command: String, reason: String },
}

impl ErrorCode for TerraformError {
    fn code(&self) -> &'static str {
        match self {
            TerraformError::NotFound { .. } => "terraform.not_found",
            TerraformError::NoDir { .. } => "terraform.no_dir",
            TerraformError::Start { .. } => "terraform.start_failed",
            TerraformError::Failed { .. } => "terraform.failed",
            TerraformError::StateLocked { .. } => "terraform.state_locked",
            TerraformError::Interrupted { .. } => "terraform.interrupted",
            TerraformError::Killed { .. } => "terraform.killed",
            TerraformError::BadJson { .. } => "terraform.bad_json",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            TerraformError::NotFound { .. } | TerraformError::NoDir { .. } | TerraformError::Start { .. } => 500,
            TerraformError::Failed { .. } => 422,
            TerraformError::StateLocked { .. } => 423,
            TerraformError::Interrupted { .. } => 409,
            TerraformError::Killed { .. } => 500,
            TerraformError::BadJson { .. } => 502,
        }
    }

    fn help(&self) -> String {
        match self {
            TerraformError::NotFound { .. } => {
                "Install terraform on the server's PATH, or set the `terraform` key in plinth.toml to its path.".into()
            }
            TerraformError::NoDir { .. } => {
                "Check the stack's `dir` in plinth.toml and that the checkout of the commit succeeded.".into()
            }
            TerraformError::Start { .. } => {
                "Check that the terraform binary is executable by the server's user and that the system has free processes and memory.".into()
            }
            TerraformError::Failed { .. } => {
                "Read terraform's output above for the cause, fix the stack or its inputs, and run again.".into()
            }
            TerraformError::StateLocked { lock_id: Some(id) } => format!(
                "Wait for the operation holding the lock to finish; if nothing holds it any more, release it with an explicit unlock of lock `{id}`."
            ),
            TerraformError::StateLocked { lock_id: None } => {
                "Wait for the operation holding the lock to finish; if nothing holds it any more, release it with an explicit unlock.".into()
            }
            TerraformError::Interrupted { .. } => "The run was cancelled; start it again when it should run.".into(),
            TerraformError::Killed { .. } => {
                "Check whether the state is still locked and release it with an explicit unlock before the next run; raise the grace period if terraform needs longer to stop.".into()
            }
            TerraformError::BadJson { .. } => {
                "Check that the terraform binary is a supported version (1.x) and that nothing else writes to its output.".into()
            }
        }
    }
}
