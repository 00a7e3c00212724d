//! The `plinth` binary, run for real against git repositories built in temp dirs.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod ca;
mod changed;
mod check;
mod client_errors;
mod crash;
mod demo_app;
mod deploy;
mod environments;
mod exec;
mod help;
mod history;
mod init;
mod mapping;
mod quickstart;
mod release;
mod secrets;
mod seeds;
mod server;
mod server_runs;

use std::path::Path;
use std::process::{Command, Output};

/// The result of one `plinth` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }

    #[track_caller]
    pub fn success(self) -> Self {
        assert_eq!(self.code, 0, "plinth failed:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn failure(self) -> Self {
        assert_eq!(self.code, 1, "expected exit 1:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

/// Runs the real binary in `dir`, with plinth's environment variables cleared.
pub fn plinth(dir: &Path, args: &[&str]) -> Run {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_plinth"))
        .current_dir(dir)
        .args(args)
        .env_remove("PLINTH_LOG")
        .env_remove("PLINTH_LOG_FORMAT")
        .env_remove("PLINTH_CACHE_DIR")
        .output()
        .expect("plinth runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The stacks `plinth changed --output json` reports, as `name` or `name(deleted)`, in order.
pub fn changed_names(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["changed", "--output", "json"];
    args.extend_from_slice(extra);
    let json = plinth(dir, &args).success().json();
    json["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let name = s["name"].as_str().unwrap().to_owned();
            if s["deleted"].as_bool().unwrap() { format!("{name}(deleted)") } else { name }
        })
        .collect()
}
