//! Child processes the benchmarks start beside the one they measure (the demo app, nginx):
//! asked to stop with a signal and reaped when dropped, so that no path out of a benchmark
//! leaves one running, and with their CPU time readable from `/proc` while they run.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, ChildStdout, Command, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running child. Dropping it stops it (its stop signal, then SIGKILL after a deadline).
#[derive(Debug)]
pub struct Running {
    child: Option<Child>,
    name: String,
    /// How it is asked to stop: SIGTERM for the demo app, SIGTERM for nginx too (its master
    /// then waits for its workers, so their CPU time reaches this process when it is reaped).
    stop_signal: Signal,
}

/// How long a child may take to stop before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

impl Running {
    pub fn spawn(name: &str, command: &mut Command) -> Result<Running> {
        let child = command.spawn().with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Running { child: Some(child), name: name.to_owned(), stop_signal: Signal::SIGTERM })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its stdout, if it was piped and not taken yet.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// Fails if it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else { bail!("{} was stopped", self.name) };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!("{} exited ({status})", self.name);
        }
        Ok(())
    }

    /// Sends the stop signal and reaps it; SIGKILL if it is still there after the deadline.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().with_context(|| format!("{} was already stopped", self.name))?;
        if child.try_wait()?.is_none() {
            let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
            let _ = kill(pid, self.stop_signal);
        }
        let asked = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if asked.elapsed() > STOP_DEADLINE {
                let _ = child.kill();
                let status = child.wait()?;
                bail!("{} did not stop within {STOP_DEADLINE:?} and was killed ({status})", self.name);
            }
            sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(e) = self.stop()
        {
            eprintln!("plinth-bench: stopping {}: {e:#}", self.name);
        }
    }
}

/// Reads `plinth demo-app`'s first line, `demo-app VERSION listening on ADDR`, and returns the
/// address.
pub fn demo_app_addr(stdout: ChildStdout) -> Result<std::net::SocketAddr> {
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).context("reading the demo app's output")?;
    let addr = line
        .trim()
        .rsplit_once(" listening on ")
        .map(|(_, addr)| addr)
        .with_context(|| format!("the demo app said `{}`, not `… listening on ADDR`", line.trim()))?;
    addr.parse().with_context(|| format!("`{addr}` is not an address"))
}

/// CPU time in clock ticks (10 ms each), split as `/proc/PID/stat` splits it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ticks {
    pub user: u64,
    pub system: u64,
}

impl Ticks {
    pub fn total(self) -> u64 {
        self.user + self.system
    }

    pub fn since(self, earlier: Ticks) -> Ticks {
        Ticks { user: self.user.saturating_sub(earlier.user), system: self.system.saturating_sub(earlier.system) }
    }
}

impl std::ops::Add for Ticks {
    type Output = Ticks;

    fn add(self, other: Ticks) -> Ticks {
        Ticks { user: self.user + other.user, system: self.system + other.system }
    }
}

impl std::iter::Sum for Ticks {
    fn sum<I: Iterator<Item = Ticks>>(iter: I) -> Ticks {
        iter.fold(Ticks::default(), |a, b| a + b)
    }
}

/// The CPU time a process has used itself (all its threads, not its children); `None` once
/// it is gone.
pub fn own_ticks(pid: u32) -> Option<Ticks> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `PID (comm) `: utime and stime are fields 14 and 15.
    Some(Ticks { user: fields.get(11)?.parse().ok()?, system: fields.get(12)?.parse().ok()? })
}

/// The CPU time of the children this process has waited for, in clock ticks.
pub fn reaped_children_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // cutime and cstime are fields 16 and 17.
    Some(fields.get(13)?.parse::<u64>().ok()? + fields.get(14)?.parse::<u64>().ok()?)
}

/// The direct children of a process (nginx's workers), from `/proc/PID/task/PID/children`.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
