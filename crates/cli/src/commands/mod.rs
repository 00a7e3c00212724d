//! One module per subcommand.

pub mod ca;
pub mod changed;
pub mod check;
pub mod demo_app;
pub mod deploy;
pub mod env;
pub mod exec;
pub mod init;
pub mod quickstart;
pub mod release;
pub mod runs;
pub mod secrets;
pub mod server;
mod source;

use std::process::ExitCode;

use crate::output::Failure;

/// What every command returns: an exit code, or a failure to print.
pub type Outcome = Result<ExitCode, Failure>;
