//! The policy that decides what a branch may do: which environments it releases to, which need
//! an approval and who may give it, and which secrets its runs get. It is read from plinth.toml
//! at the head of the main branch, never from the commit being run: otherwise a commit on a
//! feature branch could give itself production by editing its own copy (`branches`,
//! `approval = false`, or a stack moved into another environment to get its secrets).

use plinth_core::Config;

use crate::runner::config_at;
use crate::state::AppState;
use crate::watcher::main_branch;

/// plinth.toml on the main branch, and the commit it was read at.
#[derive(Clone, Debug)]
pub struct Policy {
    pub commit: String,
    pub config: Config,
}

/// The policy as the mirror has it now.
pub async fn current(state: &AppState) -> Result<Policy, String> {
    let branches = state.mirror.branches().await.map_err(|e| e.to_string())?;
    let main = main_branch(state, &branches).await.ok_or("the repository has no branches")?;
    let commit = branches.get(&main).ok_or_else(|| format!("the main branch `{main}` does not exist"))?.clone();
    let config = config_at(state, &commit).await.map_err(|e| format!("plinth.toml on `{main}`: {e}"))?;
    Ok(Policy { commit, config })
}
