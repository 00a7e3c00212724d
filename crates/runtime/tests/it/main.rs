//! plinth-runtime against real processes: `sh` scripts that crash, trap signals and print
//! their environment, and Python's `http.server` as a service with a health check.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod health;
mod output;
mod restart;
mod stop;

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::kill;
use nix::unistd::Pid;
use plinth_runtime::{Health, HealthCheck, Instance, InstanceLine, InstanceSpec, RestartPolicy, free_port};
use tempfile::TempDir;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::Instant;

/// How long any condition in these tests may take to come true.
const DEADLINE: Duration = Duration::from_secs(10);

/// A temp dir for one test's instance to run in.
struct Sandbox {
    root: TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Self { root: tempfile::tempdir().unwrap() }
    }

    fn dir(&self) -> PathBuf {
        self.root.path().to_owned()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// The environment instances get here: `PATH` and the variables plinth sets.
    fn env(&self, id: &str) -> Vec<(String, String)> {
        env(&[
            ("PATH", &std::env::var("PATH").unwrap()),
            ("PLINTH_INSTANCE", id),
            ("PLINTH_SERVICE", "api"),
            ("PLINTH_ENV", "stg"),
            ("PLINTH_RELEASE", "12"),
        ])
    }

    /// An instance of `program` with quick health checks and restarts, on a free port.
    fn spec(&self, id: &str, program: &str, args: &[&str]) -> InstanceSpec {
        InstanceSpec {
            id: id.into(),
            program: program.into(),
            args: args.iter().map(|&a| a.to_owned()).collect(),
            dir: self.dir(),
            env: self.env(id),
            port: free_port().unwrap(),
            health: HealthCheck {
                path: "/healthz".into(),
                interval: Duration::from_millis(100),
                timeout: Duration::from_secs(1),
                healthy: 2,
                unhealthy: 2,
            },
            restart: RestartPolicy {
                initial_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                crash_loop_after: 3,
                crash_loop_window: Duration::from_secs(60),
                stable_after: Duration::from_secs(30),
            },
            stop_grace: Duration::from_secs(5),
        }
    }

    /// An instance running `script` with `sh -c`.
    fn sh(&self, id: &str, script: &str) -> InstanceSpec {
        self.spec(id, "sh", &["-c", script])
    }

    /// Python's static file server on the sandbox: `GET /healthz` passes while the file
    /// `healthz` exists and answers 404 otherwise.
    fn http_server(&self, id: &str) -> InstanceSpec {
        let mut spec = self.spec(id, "python3", &[]);
        let dir = self.dir().to_string_lossy().into_owned();
        spec.args = vec!["-m".into(), "http.server".into(), spec.port.to_string(), "--bind".into(), "127.0.0.1".into()];
        spec.args.extend(["--directory".into(), dir]);
        spec.env.push(("PYTHONUNBUFFERED".into(), "1".into()));
        spec
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The output channel of one test and every line read from it so far.
struct Lines {
    tx: UnboundedSender<InstanceLine>,
    rx: UnboundedReceiver<InstanceLine>,
    seen: Vec<InstanceLine>,
}

impl Lines {
    fn new() -> Self {
        let (tx, rx) = unbounded_channel();
        Self { tx, rx, seen: Vec::new() }
    }

    /// A sender for [`Instance::start`]; the test keeps none, so that the channel closes once
    /// the instance is gone.
    fn take_sender(&mut self) -> UnboundedSender<InstanceLine> {
        std::mem::replace(&mut self.tx, unbounded_channel().0)
    }

    /// Reads lines until one matches `want`, and returns it.
    async fn until(&mut self, what: &str, want: impl Fn(&InstanceLine) -> bool) -> InstanceLine {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Ok(None) => panic!("the channel closed before {what}; lines: {:#?}", self.seen),
                Err(_) => panic!("no {what} after {DEADLINE:?}; lines: {:#?}", self.seen),
            }
        }
    }

    /// Reads lines until every one of `texts` has been seen, on any stream (the order between
    /// streams is not kept).
    async fn until_all(&mut self, texts: &[&str]) {
        while let Some(missing) = texts.iter().find(|&&t| !self.seen.iter().any(|l| l.text == t)) {
            let what = format!("{missing:?}");
            self.until(&what, |l| l.text == *missing).await;
        }
    }

    /// Reads lines until a plinth line contains `text`.
    async fn until_plinth(&mut self, text: &str) -> InstanceLine {
        self.until(&format!("plinth line with {text:?}"), |l| l.stream == InstanceLine::PLINTH && l.text.contains(text))
            .await
    }

    /// Reads every line until the channel closes (every sender is gone).
    async fn until_closed(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(line)) => self.seen.push(line),
                Ok(None) => return,
                Err(_) => panic!("the channel was still open after {DEADLINE:?}; lines: {:#?}", self.seen),
            }
        }
    }

    /// The texts of the lines seen so far on `stream`.
    fn texts(&self, stream: &str) -> Vec<&str> {
        self.seen.iter().filter(|l| l.stream == stream).map(|l| l.text.as_str()).collect()
    }
}

/// Waits until the instance's health satisfies `want`, and returns it.
async fn wait_for_health(instance: &Instance, what: &str, want: impl Fn(&Health) -> bool) -> Health {
    let mut health = instance.watch();
    let found = tokio::time::timeout(DEADLINE, health.wait_for(|h| want(h))).await;
    match found {
        Ok(Ok(health)) => health.clone(),
        Ok(Err(_)) => panic!("the health channel closed before {what}"),
        Err(_) => panic!("not {what} after {DEADLINE:?}: {:?}", instance.health()),
    }
}

/// Waits until `ready` is true, checking every 20ms.
async fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < DEADLINE, "not {what} after {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `path` holds a pid and a newline (a process writes it when it starts).
async fn wait_for_pid(path: &Path) -> i32 {
    let mut pid = 0;
    wait_until(&format!("a pid in {}", path.display()), || {
        // Without its newline the pid may still be half written.
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(line) = text.strip_suffix('\n')
            && let Ok(read) = line.parse()
        {
            pid = read;
        }
        pid != 0
    })
    .await;
    pid
}

/// Whether a process is running (`kill -0`). A zombie has ended; it only waits to be reaped.
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

/// Waits until the process `pid` has ended.
async fn wait_until_gone(pid: i32) {
    wait_until(&format!("gone: process {pid}"), || !alive(pid)).await;
}

/// The waits in "restarting in 50ms" lines, in order.
fn backoffs(lines: &Lines) -> Vec<Duration> {
    lines
        .texts(InstanceLine::PLINTH)
        .iter()
        .filter_map(|text| {
            let after = text.split_once("restarting in ")?.1;
            let ms = after.split_once("ms")?.0;
            Some(Duration::from_millis(ms.parse().ok()?))
        })
        .collect()
}

#[test]
fn free_ports_can_be_bound() {
    let port = free_port().unwrap();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}
