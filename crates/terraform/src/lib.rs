//! Driving the real `terraform` CLI: a process runner that keeps each run in its own process
//! group with an explicit environment and streams its output line by line ([`process`]), and a
//! [`Terraform`] driver with typed calls for init, workspaces, plan, show, apply, outputs,
//! formatting, validation and unlocking.
//!
//! Every process started here is killed when its owner goes away:
//! - when the run is cancelled, after a grace period; when the call returns, whatever it left
//!   in its group; when the call's future is dropped, the whole group at once;
//! - when this process dies without running destructors (SIGKILL, the OOM killer), terraform
//!   itself, by the kernel (Linux's parent-death signal, tied to the spawning thread: poll
//!   the calls on a runtime's worker threads, never in `spawn_blocking`);
//! - what terraform started (providers, `local-exec` shells), which the kernel does not kill,
//!   by the owner when it starts again: [`Invocation::on_spawn`] reports each process group
//!   as it starts, and [`kill_group`] kills one left behind.

mod error;
mod plan;
pub mod process;
mod terraform;
mod validate;

pub use error::TerraformError;
pub use plan::{PlanOutcome, PlanSummary, ResourceChange, summarize};
pub use process::{Exit, OutputLine, Stream, base_env, kill_group};
pub use terraform::{Invocation, Terraform};
pub use validate::{Validation, ValidationDiagnostic, parse_validation};
