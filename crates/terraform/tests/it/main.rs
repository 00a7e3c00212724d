//! plinth-terraform against real processes: the runner with `sh`, the driver with the real
//! terraform CLI and stacks that use only built-in providers, so nothing touches the network.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod process;
mod render;
mod terraform;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::kill;
use nix::unistd::Pid;
use plinth_terraform::{Invocation, OutputLine, Stream, Terraform, base_env};
use tempfile::TempDir;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long any condition in these tests may take to come true.
const DEADLINE: Duration = Duration::from_secs(10);

/// A temp dir with a stack directory and a home, tmp and plugin cache for terraform.
struct Sandbox {
    root: TempDir,
    env: Vec<(String, String)>,
}

impl Sandbox {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let env = base_env(&root.path().join("home"), &root.path().join("tmp"), &root.path().join("plugins")).unwrap();
        std::fs::create_dir(root.path().join("stack")).unwrap();
        Self { root, env }
    }

    /// A sandbox whose stack is `main_tf`.
    fn stack(main_tf: &str) -> Self {
        let sandbox = Self::new();
        sandbox.write("main.tf", main_tf);
        sandbox
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("stack")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).unwrap();
    }

    fn terraform(&self) -> Terraform {
        Terraform::new("terraform", self.env.clone())
    }
}

/// The output channel and cancellation token of one test, and what was sent so far.
struct Harness {
    tx: UnboundedSender<OutputLine>,
    rx: RefCell<UnboundedReceiver<OutputLine>>,
    cancel: CancellationToken,
}

impl Harness {
    fn new() -> Self {
        let (tx, rx) = unbounded_channel();
        Self { tx, rx: RefCell::new(rx), cancel: CancellationToken::new() }
    }

    fn at<'a>(&'a self, dir: &'a Path, extra_env: &'a [(String, String)]) -> Invocation<'a> {
        Invocation {
            dir,
            extra_env,
            output: &self.tx,
            cancel: &self.cancel,
            grace: Duration::from_secs(5),
            on_spawn: None,
            redactor: None,
        }
    }

    /// Every line sent since the last call.
    fn lines(&self) -> Vec<OutputLine> {
        let mut rx = self.rx.borrow_mut();
        let mut lines = Vec::new();
        while let Ok(line) = rx.try_recv() {
            lines.push(line);
        }
        lines
    }
}

fn texts(lines: &[OutputLine], stream: Stream) -> Vec<&str> {
    lines.iter().filter(|l| l.stream == stream).map(|l| l.text.as_str()).collect()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Waits until `path` holds a pid and a newline (a process writes it when it starts).
async fn wait_for_pid(path: &Path) -> i32 {
    let start = Instant::now();
    loop {
        // Without its newline the pid may still be half written.
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(line) = text.strip_suffix('\n')
            && let Ok(pid) = line.parse()
        {
            return pid;
        }
        assert!(start.elapsed() < DEADLINE, "no pid in {} after {DEADLINE:?}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process is running. A zombie has ended; it only waits for its parent to reap it.
fn alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The parent of a running process.
fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: state, then the parent's pid.
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits until the process `pid` has ended.
async fn wait_until_gone(pid: i32) {
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < DEADLINE, "process {pid} still running after {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
