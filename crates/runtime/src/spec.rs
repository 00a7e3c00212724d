//! What an instance is made of: its command and environment, its port, its health check, its
//! restart policy and stop grace period, the pre-stop hook a stop may run, and the lines of
//! output it produces. Plain data; the caller fills it in from plinth.toml.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use plinth_terraform::process::ProcessSpec;

/// How an instance's health is checked: `GET {path}` on its port, every `interval`, each check
/// given `timeout`. A 2xx or 3xx answer passes; anything else, or no answer in time, fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// The request path, starting with `/`, such as `/healthz`. A path with spaces or control
    /// characters cannot be sent: every check fails and says so.
    pub path: String,
    /// From the start of one check to the start of the next. A check never overlaps the next:
    /// one that takes longer delays the next. At least [`HealthCheck::MIN_INTERVAL`].
    pub interval: Duration,
    /// How long one check may take, from connecting to reading the status line.
    pub timeout: Duration,
    /// Consecutive passing checks before the instance counts as healthy (and takes traffic).
    /// 0 counts as 1.
    pub healthy: u32,
    /// Consecutive failing checks before a healthy instance counts as unhealthy. 0 counts as 1.
    pub unhealthy: u32,
}

impl HealthCheck {
    /// The shortest interval used; a shorter one is raised to this, so that checks never spin.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
}

impl Default for HealthCheck {
    /// `{ path = "/healthz", interval = "500ms", timeout = "1s", healthy = 2, unhealthy = 3 }`.
    fn default() -> Self {
        Self {
            path: "/healthz".into(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            healthy: 2,
            unhealthy: 3,
        }
    }
}

/// When an instance that exited by itself is started again.
///
/// The first restart waits `initial_backoff`; each one after waits twice as long as the one
/// before, up to `max_backoff`. An instance that was healthy for `stable_after` before it
/// exited starts over at `initial_backoff`. `crash_loop_after` exits within
/// `crash_loop_window` make a crash loop: the instance keeps being restarted (with the same
/// capped backoff), and its health says [`Health::CrashLoop`](crate::Health::CrashLoop) so
/// that a rollout can give up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The wait before the first restart. At least [`RestartPolicy::MIN_BACKOFF`].
    pub initial_backoff: Duration,
    /// The longest wait between restarts. Never less than `initial_backoff`.
    pub max_backoff: Duration,
    /// How many exits within `crash_loop_window` make a crash loop. 0 counts as 1.
    pub crash_loop_after: u32,
    /// The window in which exits are counted.
    pub crash_loop_window: Duration,
    /// How long an instance must have been healthy, when it exits, for the backoff to start
    /// over.
    pub stable_after: Duration,
}

impl RestartPolicy {
    /// The shortest wait before a restart; a shorter one is raised to this, so that a command
    /// that fails at once is not started in a tight loop.
    pub const MIN_BACKOFF: Duration = Duration::from_millis(10);
}

impl Default for RestartPolicy {
    /// 200ms doubling to 10s; a crash loop is 3 exits within 60s; healthy for 30s resets the
    /// backoff.
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            crash_loop_after: 3,
            crash_loop_window: Duration::from_secs(60),
            stable_after: Duration::from_secs(30),
        }
    }
}

/// One service instance to run: what to start, where it listens, how its health is checked,
/// how it is restarted and how long it gets to stop.
#[derive(Clone)]
pub struct InstanceSpec {
    /// Names the instance in output lines and logs, such as `api-stg-12-1`.
    pub id: String,
    /// The program (looked up on the `PATH` in `env`, or a path) and its arguments, with every
    /// placeholder (`{port}`, …) already filled in.
    pub program: String,
    pub args: Vec<String>,
    /// The working directory; it must exist.
    pub dir: PathBuf,
    /// The whole environment of the process: nothing is inherited from the server, so the
    /// caller passes `PATH` and the `PLINTH_INSTANCE`, `PLINTH_SERVICE`, `PLINTH_ENV` and
    /// `PLINTH_RELEASE` variables itself. Values are never shown by `Debug`.
    pub env: Vec<(String, String)>,
    /// The loopback port the instance must listen on (`127.0.0.1`), picked with
    /// [`free_port`]. Restarts reuse it.
    pub port: u16,
    pub health: HealthCheck,
    pub restart: RestartPolicy,
    /// How long the process group has between SIGTERM and SIGKILL when it is stopped.
    pub stop_grace: Duration,
}

impl InstanceSpec {
    /// What the process runner needs to start this instance.
    pub(crate) fn process(&self) -> ProcessSpec {
        ProcessSpec {
            program: self.program.clone(),
            args: self.args.clone(),
            dir: self.dir.clone(),
            env: self.env.clone(),
        }
    }
}

impl fmt::Debug for InstanceSpec {
    // Environment values can be credentials: only their names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceSpec")
            .field("id", &self.id)
            .field("program", &self.program)
            .field("args", &self.args)
            .field("dir", &self.dir)
            .field("env", &EnvNames(&self.env))
            .field("port", &self.port)
            .field("health", &self.health)
            .field("restart", &self.restart)
            .field("stop_grace", &self.stop_grace)
            .finish()
    }
}

/// A command run before an instance is sent SIGTERM, such as one that takes it out of a load
/// balancer or lets it finish its work; [`Instance::stop`](crate::Instance::stop) waits for it
/// (at most `timeout`) whatever it exits with.
#[derive(Clone)]
pub struct PreStop {
    /// The program (looked up on the `PATH` in `env`, or a path) and its arguments.
    pub program: String,
    pub args: Vec<String>,
    /// Its working directory; it must exist.
    pub dir: PathBuf,
    /// Its whole environment, as for [`InstanceSpec::env`]. Values are never shown by `Debug`.
    pub env: Vec<(String, String)>,
    /// How long it may run. Its process group is killed (SIGKILL) when the time is up, and the
    /// stop goes on.
    pub timeout: Duration,
}

impl PreStop {
    pub(crate) fn process(&self) -> ProcessSpec {
        ProcessSpec {
            program: self.program.clone(),
            args: self.args.clone(),
            dir: self.dir.clone(),
            env: self.env.clone(),
        }
    }
}

impl fmt::Debug for PreStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreStop")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("dir", &self.dir)
            .field("env", &EnvNames(&self.env))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Shows the names of environment variables, never their values.
struct EnvNames<'a>(&'a [(String, String)]);

impl fmt::Debug for EnvNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(name, _)| name)).finish()
    }
}

/// One line about an instance: a line of its output (or of its pre-stop hook's), or a line
/// from plinth about it (started, exited, restarting, health changes, stopping).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceLine {
    /// The instance's [`InstanceSpec::id`].
    pub instance: String,
    /// [`InstanceLine::STDOUT`], [`InstanceLine::STDERR`] or [`InstanceLine::PLINTH`].
    pub stream: &'static str,
    /// The line without its newline. Invalid UTF-8 is replaced lossily; a very long line
    /// arrives in pieces (see [`plinth_terraform::process::MAX_LINE`]).
    pub text: String,
}

impl InstanceLine {
    /// The process's standard output.
    pub const STDOUT: &'static str = "stdout";
    /// The process's standard error.
    pub const STDERR: &'static str = "stderr";
    /// What plinth says about the instance.
    pub const PLINTH: &'static str = "plinth";
}

/// A loopback port that is free right now: binds `127.0.0.1:0`, reads the port the system
/// picked, and lets it go. Another process can take it before the instance binds it: the
/// instance then exits (or never passes its health check) and its rollout fails, so pick the
/// port right before [`Instance::start`](crate::Instance::start).
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
