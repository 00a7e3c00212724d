//! Running a child process in its own process group: an explicit environment, output streamed
//! line by line, a stop signal (SIGINT for terraform, see [`run`]; any other with
//! [`run_stopping_with`]) then SIGKILL to the whole group on cancellation, and nothing left
//! running when the run ends or its future is dropped.
//!
//! When this process dies without running any destructor (SIGKILL, the OOM killer), the kernel
//! kills the child itself (Linux's parent-death signal, see [`run`]). What the child started is
//! out of the kernel's reach, but it stays in the child's process group: [`run`] reports that
//! group's id as soon as the child starts, so that the owner can record it and, when it starts
//! again, kill what is left with [`kill_group`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getpgrp};
use plinth_core::ErrorCode;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The longest line passed on in one piece. A longer line is passed on in pieces of this size,
/// so that a process printing without newlines cannot make us hold its whole output.
pub const MAX_LINE: usize = 64 * 1024;

/// How long to keep reading output after the process has exited and its group has been killed.
/// Only a process that left the group (`setsid`) and kept the pipe open makes this run out.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);

/// Which of the child's output streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a child's output, without its newline. Invalid UTF-8 is replaced lossily.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputLine {
    pub stream: Stream,
    pub text: String,
}

impl OutputLine {
    pub fn stdout(text: impl Into<String>) -> Self {
        Self { stream: Stream::Stdout, text: text.into() }
    }

    pub fn stderr(text: impl Into<String>) -> Self {
        Self { stream: Stream::Stderr, text: text.into() }
    }
}

/// What to run: the program (a name looked up on the `PATH` in `env`, or a path), its
/// arguments, its working directory and its whole environment. Nothing is inherited.
#[derive(Clone)]
pub struct ProcessSpec {
    pub program: String,
    pub args: Vec<String>,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
}

impl fmt::Debug for ProcessSpec {
    // Environment values can be credentials: only their names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("dir", &self.dir)
            .field("env", &EnvNames(&self.env))
            .finish()
    }
}

/// Shows the names of environment variables, never their values.
pub(crate) struct EnvNames<'a>(pub(crate) &'a [(String, String)]);

impl fmt::Debug for EnvNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(name, _)| name)).finish()
    }
}

/// How a process ended, as the operating system reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(code) => Some(code),
            Exit::Signal(_) => None,
        }
    }

    fn from_std(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt as _;
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            // Neither a code nor a signal happens only for stopped processes, which `wait`
            // does not report; count it as a failure rather than invent a success.
            (None, None) => Exit::Code(-1),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(signal) => match Signal::try_from(*signal) {
                Ok(name) => write!(f, "signal {signal} ({name})"),
                Err(_) => write!(f, "signal {signal}"),
            },
        }
    }
}

/// Why the process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ending {
    /// It ended by itself; no cancellation was asked for while it ran.
    Completed,
    /// Cancellation sent the stop signal (SIGINT for [`run`]) to its group and it exited
    /// within the grace period.
    Interrupted,
    /// It was still running when the grace period after the stop signal ran out, and its
    /// group was sent SIGKILL.
    Killed,
}

/// The result of [`run`] and [`run_stopping_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    pub exit: Exit,
    pub ending: Ending,
}

/// The process could not be run, or its end could not be observed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("program `{program}` was not found")]
    NotFound { program: String },
    #[error("working directory `{}` does not exist", dir.display())]
    NoDir { dir: PathBuf },
    #[error("could not start `{program}`: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("lost track of `{program}` while it ran: {source}")]
    Wait { program: String, source: io::Error },
}

impl ErrorCode for ProcessError {
    fn code(&self) -> &'static str {
        match self {
            ProcessError::NotFound { .. } => "process.not_found",
            ProcessError::NoDir { .. } => "process.no_dir",
            ProcessError::Spawn { .. } => "process.spawn_failed",
            ProcessError::Wait { .. } => "process.wait_failed",
        }
    }

    fn http_status(&self) -> u16 {
        500
    }

    fn help(&self) -> String {
        match self {
            ProcessError::NotFound { .. } => "Install the program or put the directory holding it on the PATH.".into(),
            ProcessError::NoDir { .. } => "Check that the directory exists and is readable by the server's user.".into(),
            ProcessError::Spawn { .. } => {
                "Check that the program is executable by the server's user and that the system has free processes and memory."
                    .into()
            }
            ProcessError::Wait { .. } => "Check the server's logs and the system's process limits, then run again.".into(),
        }
    }
}

/// The environment a Terraform run needs and nothing else: `PATH` from this process, `HOME`,
/// `TMPDIR`, `LANG`, the automation switches, the plugin cache, and a CLI config file that
/// is empty so that the server user's `~/.terraformrc` is never read.
///
/// Creates `home`, `tmp`, `plugin_cache` and the empty config file (`home/plinth.tfrc`).
pub fn base_env(home: &Path, tmp: &Path, plugin_cache: &Path) -> io::Result<Vec<(String, String)>> {
    for dir in [home, tmp, plugin_cache] {
        std::fs::create_dir_all(dir)?;
    }
    let cli_config = home.join("plinth.tfrc");
    std::fs::write(&cli_config, "")?;
    // The one place this crate reads its own environment.
    let path = std::env::var_os("PATH")
        .map_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_owned(), |path| path.to_string_lossy().into_owned());
    let text = |p: &Path| p.to_string_lossy().into_owned();
    Ok(vec![
        ("PATH".into(), path),
        ("HOME".into(), text(home)),
        ("TMPDIR".into(), text(tmp)),
        ("LANG".into(), "C.UTF-8".into()),
        ("TF_IN_AUTOMATION".into(), "1".into()),
        ("TF_INPUT".into(), "0".into()),
        ("CHECKPOINT_DISABLE".into(), "1".into()),
        ("TF_PLUGIN_CACHE_DIR".into(), text(plugin_cache)),
        ("TF_CLI_CONFIG_FILE".into(), text(&cli_config)),
    ])
}

/// Where output goes as it is read.
pub(crate) trait Sink {
    /// One line (`newline` true) or a piece of one: the last line at end of file without a
    /// newline, or a part of a line longer than [`MAX_LINE`].
    fn chunk(&mut self, stream: Stream, bytes: &[u8], newline: bool);
}

/// Sends every line to a channel. A closed channel is ignored: the run goes on.
struct ChannelSink<'a>(&'a UnboundedSender<OutputLine>);

impl Sink for ChannelSink<'_> {
    fn chunk(&mut self, stream: Stream, bytes: &[u8], _newline: bool) {
        let _ = self.0.send(OutputLine { stream, text: String::from_utf8_lossy(bytes).into_owned() });
    }
}

/// Runs a process to its end, sending each line of its stdout and stderr to `output` as it is
/// read.
///
/// When `cancel` fires, the process group gets SIGINT; if it is still running `grace` later,
/// it gets SIGKILL. When the process exits, whatever it left running in its group is killed.
/// If the returned future is dropped, the whole group is killed.
///
/// If this process dies without dropping the future, the kernel sends the child SIGKILL (on
/// Linux). The rest of its group is left running: `on_spawn` is given the group's id right
/// after the child starts (its pid, which is the group's id as it leads the group), before any
/// of its output is read, so that the caller can record it for [`kill_group`]. It is called on
/// the thread that polls this future: it must be quick and must not block.
///
/// Linux sends that parent-death signal when the *thread* that spawned the child ends, even if
/// the process lives on. A tokio runtime's worker threads (and a current-thread runtime's
/// thread) live as long as the runtime, so poll this future there, never inside
/// `spawn_blocking` or `block_in_place`, whose threads end once they have been idle for a
/// while. Shutting the runtime down ends its threads, and so kills its children at once,
/// without the grace period.
pub async fn run(
    spec: &ProcessSpec,
    output: &UnboundedSender<OutputLine>,
    cancel: &CancellationToken,
    grace: Duration,
    on_spawn: Option<&(dyn Fn(u32) + Send + Sync)>,
) -> Result<Finished, ProcessError> {
    run_with(spec, &mut ChannelSink(output), cancel, grace, on_spawn).await
}

/// [`run`], but cancellation sends `stop_signal` to the process group instead of SIGINT, then
/// SIGKILL if the group is still running `grace` later. Services expect SIGTERM; terraform
/// expects SIGINT, which is what [`run`] sends.
///
/// Everything else is as for [`run`]: the group is killed when the process exits or the future
/// is dropped, the child dies with this process (on Linux, tied to the thread that polls the
/// future), and `on_spawn` reports the group's id as the child starts.
pub async fn run_stopping_with(
    spec: &ProcessSpec,
    output: &UnboundedSender<OutputLine>,
    cancel: &CancellationToken,
    stop_signal: Signal,
    grace: Duration,
    on_spawn: Option<&(dyn Fn(u32) + Send + Sync)>,
) -> Result<Finished, ProcessError> {
    run_sink(spec, &mut ChannelSink(output), cancel, stop_signal, grace, on_spawn).await
}

/// Sends SIGKILL to the process group `pgid`, such as one that [`run`] reported through
/// `on_spawn` and that a process which died without cleaning up left behind. Returns whether
/// the signal was delivered; a group that no longer exists is not an error.
///
/// Ids that cannot be a run's group are refused without sending anything: 0 and 1 (to
/// `killpg` they mean this process's own group and every process it may signal), ids too
/// large to be a pid, and this process's own group.
///
/// The kernel does not hand out a group's id again while any process is in the group, but once
/// the group is gone its id can become another process's. Only pass ids whose runs are known
/// not to have finished.
pub fn kill_group(pgid: u32) -> bool {
    let Some(group) = group_to_kill(pgid, getpgrp()) else {
        warn!(pgid, "Not killing this process group: no run can have this id.");
        return false;
    };
    match killpg(group, Signal::SIGKILL) {
        Ok(()) => {
            info!(pgid, "Killed a process group left behind by an earlier run.");
            true
        }
        Err(Errno::ESRCH) => false,
        Err(error) => {
            warn!(pgid, %error, "Killing the process group failed.");
            false
        }
    }
}

/// `pgid` as a group that [`kill_group`] may signal, or `None` if it must not be, given this
/// process's own group `own`.
fn group_to_kill(pgid: u32, own: Pid) -> Option<Pid> {
    let pgid = i32::try_from(pgid).ok().filter(|&pgid| pgid > 1 && pgid != own.as_raw())?;
    Some(Pid::from_raw(pgid))
}

/// [`run`] with output going to any [`Sink`].
pub(crate) async fn run_with(
    spec: &ProcessSpec,
    sink: &mut (dyn Sink + Send),
    cancel: &CancellationToken,
    grace: Duration,
    on_spawn: Option<&(dyn Fn(u32) + Send + Sync)>,
) -> Result<Finished, ProcessError> {
    run_sink(spec, sink, cancel, Signal::SIGINT, grace, on_spawn).await
}

/// [`run_stopping_with`] with output going to any [`Sink`].
async fn run_sink(
    spec: &ProcessSpec,
    sink: &mut (dyn Sink + Send),
    cancel: &CancellationToken,
    stop_signal: Signal,
    grace: Duration,
    on_spawn: Option<&(dyn Fn(u32) + Send + Sync)>,
) -> Result<Finished, ProcessError> {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .current_dir(&spec.dir)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut command);

    let mut child = command.spawn().map_err(|source| spawn_error(spec, source))?;
    // The guard is created before anything can fail or be cancelled, so that dropping this
    // future at any later point kills the whole group. The child is not reaped before the
    // guard is disarmed, so its pid still names this group.
    let mut group = child.id().and_then(|pid| i32::try_from(pid).ok()).map(|pid| GroupGuard::new(Pid::from_raw(pid)));
    let pid = child.id().unwrap_or(0);
    debug!(program = %spec.program, pid, dir = %spec.dir.display(), "Process started.");
    if let (Some(on_spawn), Some(pid)) = (on_spawn, child.id()) {
        on_spawn(pid);
    }

    let mut stdout = child.stdout.take().map(|s| LineReader::new(BufReader::new(s), MAX_LINE));
    let mut stderr = child.stderr.take().map(|s| LineReader::new(BufReader::new(s), MAX_LINE));

    let mut exit: Option<Exit> = None;
    let mut interrupted = false;
    let mut killed = false;
    // Armed when the stop signal is sent (then SIGKILL is due) and again when the process
    // exits (then reading what is left of the output must end).
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut timer_armed = false;

    while exit.is_none() || stdout.is_some() || stderr.is_some() {
        tokio::select! {
            chunk = next_chunk(&mut stdout) => pass_on(&mut stdout, chunk, Stream::Stdout, sink, spec),
            chunk = next_chunk(&mut stderr) => pass_on(&mut stderr, chunk, Stream::Stderr, sink, spec),
            status = child.wait(), if exit.is_none() => {
                let status = status.map_err(|source| ProcessError::Wait { program: spec.program.clone(), source })?;
                let status = Exit::from_std(status);
                exit = Some(status);
                debug!(program = %spec.program, pid, %status, "Process exited.");
                if let Some(group) = group.take() {
                    group.kill_leftovers(&spec.program);
                }
                timer.as_mut().reset(Instant::now() + DRAIN_AFTER_EXIT);
                timer_armed = true;
            }
            () = cancel.cancelled(), if exit.is_none() && !interrupted => {
                interrupted = true;
                debug!(program = %spec.program, pid, signal = %stop_signal, grace_ms = grace.as_millis(), "Cancelled; sending the stop signal to the process group.");
                if let Some(group) = &group {
                    group.signal(stop_signal, &spec.program);
                }
                timer.as_mut().reset(Instant::now() + grace);
                timer_armed = true;
            }
            () = &mut timer, if timer_armed => {
                timer_armed = false;
                if exit.is_none() {
                    killed = true;
                    warn!(program = %spec.program, pid, grace_ms = grace.as_millis(), "Still running after the grace period; killing the process group.");
                    if let Some(group) = &group {
                        group.signal(Signal::SIGKILL, &spec.program);
                    }
                } else {
                    warn!(program = %spec.program, pid, "Output still open after the process exited; no longer reading it.");
                    stdout = None;
                    stderr = None;
                }
            }
        }
    }

    let ending = if killed {
        Ending::Killed
    } else if interrupted {
        Ending::Interrupted
    } else {
        Ending::Completed
    };
    // Loop ends only once `exit` is set.
    let exit = exit.unwrap_or(Exit::Code(-1));
    Ok(Finished { exit, ending })
}

/// Has the kernel send the child SIGKILL when its parent dies, so that a child outlives
/// neither a clean exit nor a SIGKILL of this process, which runs no destructor.
///
/// The signal comes when the spawning *thread* ends (see [`run`]). Nothing in this crate
/// spawns from `spawn_blocking` or `block_in_place`.
#[cfg(target_os = "linux")]
#[expect(unsafe_code, reason = "`pre_exec` is the only way to run code between fork and exec")]
fn die_with_parent(command: &mut Command) {
    use nix::sys::prctl::set_pdeathsig;
    use nix::unistd::{getpid, getppid};

    let parent = getpid();
    // SAFETY: the closure runs in the child between fork and exec, where another thread of
    // this process may have held a lock (the allocator's, say) at the moment of the fork that
    // will never be released. It makes only two syscalls, prctl and getppid, which are
    // async-signal-safe; it takes no lock and allocates nothing (its errors are bare errno
    // values, which is all std passes back to the parent anyway); and it reads only `parent`,
    // an integer copied into it before the fork.
    unsafe {
        command.pre_exec(move || {
            set_pdeathsig(Signal::SIGKILL)?;
            // If the parent died after the fork but before prctl, no signal will come and the
            // child now belongs to another process: give up, and exec nothing.
            if getppid() != parent {
                return Err(Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

/// Other systems have no parent-death signal; the group guard and `on_spawn` remain.
#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

fn spawn_error(spec: &ProcessSpec, source: io::Error) -> ProcessError {
    if source.kind() == io::ErrorKind::NotFound {
        // A missing working directory is reported as NotFound too.
        if !spec.dir.is_dir() {
            return ProcessError::NoDir { dir: spec.dir.clone() };
        }
        return ProcessError::NotFound { program: spec.program.clone() };
    }
    ProcessError::Spawn { program: spec.program.clone(), source }
}

type Reader<R> = Option<LineReader<BufReader<R>>>;

/// The next chunk of a stream, or never if the stream is closed (so `select!` skips it).
async fn next_chunk<R: tokio::io::AsyncRead + Unpin>(reader: &mut Reader<R>) -> io::Result<Option<Chunk>> {
    match reader {
        Some(reader) => reader.next().await,
        None => std::future::pending().await,
    }
}

fn pass_on<R>(
    reader: &mut Reader<R>,
    chunk: io::Result<Option<Chunk>>,
    stream: Stream,
    sink: &mut (dyn Sink + Send),
    spec: &ProcessSpec,
) {
    match chunk {
        Ok(Some(chunk)) => sink.chunk(stream, &chunk.bytes, chunk.newline),
        Ok(None) => *reader = None,
        Err(error) => {
            // The pipe is broken; stop reading it but let the process run on.
            warn!(program = %spec.program, ?stream, %error, "Reading the output failed; ignoring the rest of this stream.");
            *reader = None;
        }
    }
}

/// Kills the process group when dropped, unless the group's leader has been reaped first.
struct GroupGuard {
    pgid: Pid,
}

impl GroupGuard {
    fn new(pgid: Pid) -> Self {
        Self { pgid }
    }

    fn signal(&self, signal: Signal, program: &str) {
        match killpg(self.pgid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(error) => {
                warn!(program, pgid = self.pgid.as_raw(), %signal, %error, "Signalling the process group failed.")
            }
        }
    }

    /// Called once the leader has exited: anything still in its group is killed. The leader's
    /// pid was released a moment ago; it cannot have come back as another group's id unless
    /// the system went through every pid in between.
    fn kill_leftovers(self, program: &str) {
        let pgid = self.pgid;
        // From here on the id may be reused by others, so `Drop` must never signal it.
        std::mem::forget(self);
        match killpg(pgid, Signal::SIGKILL) {
            Ok(()) => debug!(program, pgid = pgid.as_raw(), "Killed processes left behind in the group."),
            Err(Errno::ESRCH) => {}
            Err(error) => warn!(program, pgid = pgid.as_raw(), %error, "Killing leftover processes failed."),
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // Reached only while the leader is unreaped (a zombie at worst), so the group id is
        // still ours.
        match killpg(self.pgid, Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(error) => warn!(pgid = self.pgid.as_raw(), %error, "Killing the process group failed."),
        }
    }
}

/// A line, or a piece of one, without its newline.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub(crate) bytes: Vec<u8>,
    /// Whether a newline ended it.
    pub(crate) newline: bool,
}

/// Splits a byte stream into lines, handing over a piece early when a line grows past `max`.
/// `next` is cancel safe: bytes consumed from the reader are kept in `pending`.
pub(crate) struct LineReader<R> {
    inner: R,
    pending: Vec<u8>,
    max: usize,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub(crate) fn new(inner: R, max: usize) -> Self {
        Self { inner, pending: Vec::new(), max: max.max(4) }
    }

    pub(crate) async fn next(&mut self) -> io::Result<Option<Chunk>> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Chunk { bytes: std::mem::take(&mut self.pending), newline: false }));
            }
            // `pending` is shorter than `max` here; a newline right after a full piece still
            // belongs to it.
            let room = self.max - self.pending.len();
            let window = &available[..available.len().min(room + 1)];
            if let Some(i) = memchr::memchr(b'\n', window) {
                self.pending.extend_from_slice(&window[..i]);
                self.inner.consume(i + 1);
                return Ok(Some(Chunk { bytes: std::mem::take(&mut self.pending), newline: true }));
            }
            let taken = window.len().min(room);
            self.pending.extend_from_slice(&window[..taken]);
            self.inner.consume(taken);
            if self.pending.len() == self.max {
                // Keep a character cut in half for the next piece, so both read as text.
                let keep = incomplete_utf8_tail(&self.pending);
                let rest = self.pending.split_off(self.pending.len() - keep);
                let piece = std::mem::replace(&mut self.pending, rest);
                return Ok(Some(Chunk { bytes: piece, newline: false }));
            }
        }
    }
}

/// How many bytes at the end of `bytes` start a UTF-8 character that is not complete.
pub(crate) fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xC0 != 0x80 {
            let needed = match byte {
                0xF0.. => 4,
                0xE0.. => 3,
                0xC0.. => 2,
                _ => 1,
            };
            return if needed > back { back } else { 0 };
        }
    }
    0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    async fn chunks(input: &[u8], max: usize) -> Vec<(String, bool)> {
        let mut reader = LineReader::new(BufReader::with_capacity(3, input), max);
        let mut out = Vec::new();
        while let Some(chunk) = reader.next().await.unwrap() {
            out.push((String::from_utf8(chunk.bytes).unwrap(), chunk.newline));
        }
        out
    }

    #[tokio::test]
    async fn lines_are_split_on_newlines_and_long_ones_in_pieces() {
        // (input, longest piece, expected pieces with whether a newline ended them)
        type Case = (&'static [u8], usize, &'static [(&'static str, bool)]);
        let cases: &[Case] = &[
            (b"", 10, &[]),
            (b"a\nb\n", 10, &[("a", true), ("b", true)]),
            (b"a\nlast", 10, &[("a", true), ("last", false)]),
            (b"\n\n", 10, &[("", true), ("", true)]),
            (b"abcdefgh\nij", 4, &[("abcd", false), ("efgh", true), ("ij", false)]),
            (b"abc\ndefg\n", 4, &[("abc", true), ("defg", true)]),
            (b"abcdefghi", 4, &[("abcd", false), ("efgh", false), ("i", false)]),
            ("abc\u{e9}d\n".as_bytes(), 4, &[("abc", false), ("\u{e9}d", true)]),
            ("abc\u{1F600}x".as_bytes(), 4, &[("abc", false), ("\u{1F600}", false), ("x", false)]),
        ];
        for (input, max, want) in cases {
            let got = chunks(input, *max).await;
            let want: Vec<(String, bool)> = want.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect();
            assert_eq!(got, want, "input {:?} max {max}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn exits_read_well() {
        assert_eq!(Exit::Code(2).to_string(), "exit code 2");
        assert_eq!(Exit::Signal(9).to_string(), "signal 9 (SIGKILL)");
        assert!(Exit::Code(0).success());
        assert!(!Exit::Signal(2).success());
    }

    #[test]
    fn only_ids_a_run_can_have_are_signalled() {
        let own = Pid::from_raw(4242);
        // (id, whether it may be signalled)
        let cases = [
            (0, false),    // killpg(0): our own group
            (1, false),    // killpg(1): every process we may signal
            (4242, false), // our own group
            (2, true),     // the smallest ordinary group
            (4243, true),
            (i32::MAX as u32, true), // too large for a pid today, but not for `pid_t`
            (i32::MAX as u32 + 1, false),
            (u32::MAX, false), // -1 as a `pid_t`
        ];
        for (pgid, allowed) in cases {
            let got = group_to_kill(pgid, own);
            assert_eq!(got.is_some(), allowed, "pgid {pgid}");
            if let Some(group) = got {
                assert_eq!(i64::from(group.as_raw()), i64::from(pgid));
            }
        }
    }

    #[test]
    fn debug_hides_environment_values() {
        let spec = ProcessSpec {
            program: "x".into(),
            args: vec![],
            dir: PathBuf::from("/"),
            env: vec![("AWS_SECRET_ACCESS_KEY".into(), "hunter2".into())],
        };
        let shown = format!("{spec:?}");
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
