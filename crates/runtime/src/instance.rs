//! An instance: the handle the rest of plinth holds, and the supervisor task behind it that
//! runs the process, checks its health, restarts it when it exits and stops it when asked.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use plinth_core::ErrorCode;
use plinth_terraform::process::{Ending, Exit, Finished, OutputLine, ProcessError, Stream, run_stopping_with};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{OnceCell, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use crate::health::{Health, Tracker, later, probe_answered};
use crate::restart::Restarts;
use crate::spec::{HealthCheck, InstanceLine, InstanceSpec, PreStop};

/// A running service instance, supervised by a task of its own.
///
/// A handle: cheap to clone, and every clone speaks for the same instance. The process runs in
/// its own process group and never outlives its supervisor: [`Instance::stop`] stops it
/// gracefully; dropping the last handle without stopping kills its group at once (SIGKILL);
/// if the server dies, the kernel kills it (Linux's parent-death signal, tied to the thread
/// that started it, which is one of the tokio runtime's worker threads).
#[derive(Clone)]
pub struct Instance {
    inner: Arc<Handle>,
}

/// What the handles share. Its drop (the last handle's) abandons the instance.
struct Handle {
    shared: Arc<Shared>,
    /// Cancelled first by a stop: no restart from then on.
    stopping: CancellationToken,
    /// Cancelled once the pre-stop hook is done: the process group gets SIGTERM.
    terminate: CancellationToken,
    /// Cancelled by the supervisor as it ends, however it ends (a guard does it).
    finished: CancellationToken,
    output: UnboundedSender<InstanceLine>,
    /// The result of the one stop, for every caller of `stop`.
    stopped: OnceCell<Stopped>,
    /// Cancels the supervisor's `abandon` token when the last handle goes.
    _abandon: DropGuard,
}

/// What the handles and the supervisor both read and write.
struct Shared {
    id: String,
    port: u16,
    health: watch::Sender<Health>,
    restarts: AtomicU32,
    /// The running process's id, 0 when none is running.
    pid: AtomicU32,
    /// Why the last health check failed; `None` once one passes.
    last_failure: Mutex<Option<String>>,
    /// How the process running when the stop came ended; set before `finished` is cancelled.
    last_run: Mutex<Option<Finished>>,
}

impl Shared {
    fn line(&self, output: &UnboundedSender<InstanceLine>, stream: &'static str, text: String) {
        // A closed channel is ignored: nobody reads the output, the instance runs on.
        let _ = output.send(InstanceLine { instance: self.id.clone(), stream, text });
    }

    fn say(&self, output: &UnboundedSender<InstanceLine>, text: String) {
        self.line(output, InstanceLine::PLINTH, text);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is plain values, each written in one assignment: a panic elsewhere cannot leave
    // it half changed.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How [`Instance::stop`] went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// How the process ended, if one was running when the stop came; `None` if the instance
    /// was waiting to be restarted (or its last process exited on its own meanwhile and was
    /// not restarted).
    pub exit: Option<Exit>,
    /// Whether the process group was still running when the grace period after SIGTERM ran
    /// out, and was killed.
    pub killed: bool,
    /// How the pre-stop hook went, if one was given.
    pub pre_stop: Option<PreStopOutcome>,
}

/// How a pre-stop hook went. None of these keeps the instance from being stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreStopOutcome {
    /// It ran to its end, with this exit.
    Exited(Exit),
    /// It was still running when its timeout ran out, and its group was killed.
    TimedOut,
    /// It could not be started.
    Failed { reason: String },
    /// The instance was not running (it was waiting to be restarted), so it was not run.
    Skipped,
}

/// Why [`Instance::wait_healthy`] gave up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotHealthy {
    #[error("instance {instance} is unhealthy: {reason}")]
    Unhealthy { instance: String, reason: String },
    #[error("instance {instance} is in a crash loop: {reason}")]
    CrashLoop { instance: String, reason: String },
    #[error("instance {instance} was stopped before it became healthy")]
    Stopped { instance: String },
    #[error("instance {instance} was not healthy after {waited:?}{}", last_failure.as_ref().map(|f| format!(" (last health check: {f})")).unwrap_or_default())]
    Deadline { instance: String, waited: Duration, last_failure: Option<String> },
}

impl ErrorCode for NotHealthy {
    fn code(&self) -> &'static str {
        match self {
            NotHealthy::Unhealthy { .. } => "runtime.unhealthy",
            NotHealthy::CrashLoop { .. } => "runtime.crash_loop",
            NotHealthy::Stopped { .. } => "runtime.stopped",
            NotHealthy::Deadline { .. } => "runtime.not_healthy_in_time",
        }
    }

    fn http_status(&self) -> u16 {
        503
    }

    fn help(&self) -> String {
        match self {
            NotHealthy::Unhealthy { .. } | NotHealthy::CrashLoop { .. } => {
                "Read the instance's output for why it exits or fails its health check, fix it and release again.".into()
            }
            NotHealthy::Stopped { .. } => "Start the release again.".into(),
            NotHealthy::Deadline { .. } => {
                "Check that the service listens on 127.0.0.1 at the port it is given and answers its health check path with 2xx or 3xx, or allow it more time to start.".into()
            }
        }
    }
}

impl Instance {
    /// Starts supervising `spec` and returns at once: the process is started by a task spawned
    /// on the current tokio runtime (calling this outside one panics, as `tokio::spawn` does).
    /// Every line of its output, and what plinth says about it, goes to `output`; a closed
    /// channel is ignored.
    pub fn start(spec: InstanceSpec, output: UnboundedSender<InstanceLine>) -> Instance {
        let (health, _) = watch::channel(Health::Starting);
        let shared = Arc::new(Shared {
            id: spec.id.clone(),
            port: spec.port,
            health,
            restarts: AtomicU32::new(0),
            pid: AtomicU32::new(0),
            last_failure: Mutex::new(None),
            last_run: Mutex::new(None),
        });
        let stopping = CancellationToken::new();
        let terminate = CancellationToken::new();
        let finished = CancellationToken::new();
        let abandon = CancellationToken::new();
        let supervisor = Supervisor {
            ctx: Ctx {
                spec,
                shared: Arc::clone(&shared),
                output: output.clone(),
                stopping: stopping.clone(),
                terminate: terminate.clone(),
            },
            state: State { tracker: Tracker::new(), healthy_since: None },
            restarts: Restarts::default(),
        };
        tokio::spawn(supervisor.run(abandon.clone(), finished.clone().drop_guard()));
        Instance {
            inner: Arc::new(Handle {
                shared,
                stopping,
                terminate,
                finished,
                output,
                stopped: OnceCell::new(),
                _abandon: abandon.drop_guard(),
            }),
        }
    }

    /// The instance's id, as given in its spec.
    pub fn id(&self) -> &str {
        &self.inner.shared.id
    }

    /// The loopback port the instance listens on.
    pub fn port(&self) -> u16 {
        self.inner.shared.port
    }

    /// `127.0.0.1:{port}`: where to send its traffic.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port()))
    }

    /// Its health now.
    pub fn health(&self) -> Health {
        self.inner.shared.health.borrow().clone()
    }

    /// Its health now and every change from here on.
    pub fn watch(&self) -> watch::Receiver<Health> {
        self.inner.shared.health.subscribe()
    }

    /// How many times the process has been started again after it exited.
    pub fn restarts(&self) -> u32 {
        self.inner.shared.restarts.load(Ordering::Relaxed)
    }

    /// The id of the running process (which leads its process group), or `None` while none is
    /// running.
    pub fn pid(&self) -> Option<u32> {
        Some(self.inner.shared.pid.load(Ordering::Relaxed)).filter(|&pid| pid != 0)
    }

    /// Waits until the instance is [`Health::Healthy`], at most `deadline`. Meant for right after
    /// [`Instance::start`]: gives up at once when the instance is (or becomes) unhealthy, in a
    /// crash loop or stopped, since a start that fails once is not one to route traffic to.
    pub async fn wait_healthy(&self, deadline: Duration) -> Result<(), NotHealthy> {
        let instance = || self.id().to_owned();
        let mut health = self.watch();
        let waiting = async {
            loop {
                let verdict = match &*health.borrow_and_update() {
                    Health::Starting => None,
                    Health::Healthy => Some(Ok(())),
                    Health::Unhealthy { reason } => {
                        Some(Err(NotHealthy::Unhealthy { instance: instance(), reason: reason.clone() }))
                    }
                    Health::CrashLoop { reason } => {
                        Some(Err(NotHealthy::CrashLoop { instance: instance(), reason: reason.clone() }))
                    }
                    Health::Stopped => Some(Err(NotHealthy::Stopped { instance: instance() })),
                };
                if let Some(verdict) = verdict {
                    return verdict;
                }
                if health.changed().await.is_err() {
                    return Err(NotHealthy::Stopped { instance: instance() });
                }
            }
        };
        match tokio::time::timeout(deadline, waiting).await {
            Ok(verdict) => verdict,
            Err(_) => Err(NotHealthy::Deadline {
                instance: instance(),
                waited: deadline,
                last_failure: lock(&self.inner.shared.last_failure).clone(),
            }),
        }
    }

    /// Stops the instance for good and waits until its process has exited:
    /// 1. from now on it is not restarted;
    /// 2. if a process is running and `pre_stop` is given, runs that hook (output to the
    ///    instance's channel) and waits for it, at most its timeout;
    /// 3. sends SIGTERM to the process group, and SIGKILL if it is still running
    ///    [`InstanceSpec::stop_grace`] later.
    ///
    /// Its health is then [`Health::Stopped`]. Calling it again (or from another clone) waits
    /// for the same stop and returns the same result, without running the hook again. If this
    /// future is dropped before the SIGTERM, the next call starts over at step 2.
    ///
    /// Poll it on a tokio worker thread, never inside `spawn_blocking` (the hook dies with the
    /// thread that started it, see [`plinth_terraform::process::run`]).
    pub async fn stop(&self, pre_stop: Option<&PreStop>) -> Stopped {
        self.inner.stopped.get_or_init(|| self.stop_once(pre_stop)).await.clone()
    }

    async fn stop_once(&self, pre_stop: Option<&PreStop>) -> Stopped {
        let h = &*self.inner;
        if !h.stopping.is_cancelled() {
            h.stopping.cancel();
            info!(instance = %h.shared.id, "Stopping the instance.");
            h.shared.say(&h.output, "stopping".into());
        }
        let running = self.pid().is_some() && !h.finished.is_cancelled();
        let pre_stop = match pre_stop {
            None => None,
            Some(_) if !running => {
                h.shared.say(&h.output, "not running; skipping the pre-stop hook".into());
                Some(PreStopOutcome::Skipped)
            }
            Some(hook) => Some(run_pre_stop(&h.shared, &h.output, hook).await),
        };
        h.terminate.cancel();
        h.finished.cancelled().await;
        let last_run = *lock(&h.shared.last_run);
        Stopped {
            exit: last_run.map(|run| run.exit),
            killed: last_run.is_some_and(|run| run.ending == Ending::Killed),
            pre_stop,
        }
    }
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.id())
            .field("port", &self.port())
            .field("health", &self.health())
            .field("restarts", &self.restarts())
            .field("pid", &self.pid())
            .finish()
    }
}

/// Runs the pre-stop hook to its end or its timeout, passing its output on.
async fn run_pre_stop(shared: &Shared, output: &UnboundedSender<InstanceLine>, hook: &PreStop) -> PreStopOutcome {
    let process = hook.process();
    shared.say(output, format!("running the pre-stop hook `{}`", hook.program));
    let (tx, mut rx) = unbounded_channel();
    // Never cancelled: when the timeout runs out the run is dropped, which kills its group.
    let cancel = CancellationToken::new();
    let result = {
        let run = run_stopping_with(&process, &tx, &cancel, Signal::SIGTERM, Duration::ZERO, None);
        tokio::pin!(run);
        let deadline = tokio::time::sleep(hook.timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                result = &mut run => break Some(result),
                Some(line) = rx.recv() => forward(shared, output, line),
                () = &mut deadline => break None,
            }
        }
    };
    drain(shared, output, &mut rx);
    let outcome = match result {
        Some(Ok(finished)) => PreStopOutcome::Exited(finished.exit),
        Some(Err(error)) => PreStopOutcome::Failed { reason: error.to_string() },
        None => PreStopOutcome::TimedOut,
    };
    let said = match &outcome {
        PreStopOutcome::Exited(exit) => format!("the pre-stop hook {}", describe(*exit)),
        PreStopOutcome::TimedOut => format!("the pre-stop hook was still running after {:?}; killed it", hook.timeout),
        PreStopOutcome::Failed { reason } => format!("the pre-stop hook could not run: {reason}"),
        PreStopOutcome::Skipped => String::new(),
    };
    if !matches!(outcome, PreStopOutcome::Exited(exit) if exit.success()) {
        warn!(instance = %shared.id, outcome = %said, "The pre-stop hook did not succeed; stopping anyway.");
    }
    shared.say(output, said);
    outcome
}

fn forward(shared: &Shared, output: &UnboundedSender<InstanceLine>, line: OutputLine) {
    let stream = match line.stream {
        Stream::Stdout => InstanceLine::STDOUT,
        Stream::Stderr => InstanceLine::STDERR,
    };
    shared.line(output, stream, line.text);
}

/// Passes on what is left in `rx`: everything a finished run sent.
fn drain(shared: &Shared, output: &UnboundedSender<InstanceLine>, rx: &mut UnboundedReceiver<OutputLine>) {
    while let Ok(line) = rx.try_recv() {
        forward(shared, output, line);
    }
}

/// "exited with code 3", "was ended by signal 9 (SIGKILL)".
fn describe(exit: Exit) -> String {
    match exit {
        Exit::Code(code) => format!("exited with code {code}"),
        Exit::Signal(_) => format!("was ended by {exit}"),
    }
}

/// What the supervisor's parts read.
struct Ctx {
    spec: InstanceSpec,
    shared: Arc<Shared>,
    output: UnboundedSender<InstanceLine>,
    stopping: CancellationToken,
    terminate: CancellationToken,
}

impl Ctx {
    fn say(&self, text: String) {
        self.shared.say(&self.output, text);
    }

    fn publish(&self, health: Health) {
        let text = match &health {
            Health::Healthy => format!("healthy ({} health checks passed in a row)", self.spec.health.healthy.max(1)),
            other => other.to_string(),
        };
        info!(instance = %self.shared.id, health = %health, "Health changed.");
        self.say(text);
        self.shared.health.send_replace(health);
    }
}

/// What the health checks change.
struct State {
    tracker: Tracker,
    /// When the instance last became healthy, if it is healthy.
    healthy_since: Option<Instant>,
}

/// The task behind an [`Instance`].
struct Supervisor {
    ctx: Ctx,
    state: State,
    restarts: Restarts,
}

impl Supervisor {
    /// Supervises until stopped or abandoned; `finished` is cancelled when this ends, or when
    /// the task is dropped (the runtime shutting down).
    async fn run(mut self, abandon: CancellationToken, finished: DropGuard) {
        let last_run = tokio::select! {
            // Dropping `supervise` drops the process's run, which kills its group.
            () = abandon.cancelled() => None,
            last_run = self.supervise() => Some(last_run),
        };
        let was_running = self.ctx.shared.pid.swap(0, Ordering::Relaxed) != 0;
        let health = self.state.tracker.stopped();
        match last_run {
            None => {
                info!(instance = %self.ctx.shared.id, was_running, "Every handle was dropped; stopped the instance.");
                self.ctx.say(if was_running {
                    "every handle was dropped; killed the process group".into()
                } else {
                    "every handle was dropped; stopped".into()
                });
            }
            Some(last_run) => {
                let said = match last_run {
                    Some(run) if run.ending == Ending::Killed => format!(
                        "stopped: still running {:?} after SIGTERM, killed ({})",
                        self.ctx.spec.stop_grace, run.exit
                    ),
                    Some(run) => format!("stopped: {}", describe(run.exit)),
                    None => "stopped".into(),
                };
                info!(instance = %self.ctx.shared.id, outcome = %said, "Instance stopped.");
                self.ctx.say(said);
                *lock(&self.ctx.shared.last_run) = last_run;
            }
        }
        self.ctx.shared.health.send_replace(health);
        drop(finished);
    }

    /// Runs the process, again and again, until a stop; returns how the last run ended if a
    /// process was running when the stop came.
    async fn supervise(&mut self) -> Option<Finished> {
        let policy = self.ctx.spec.restart.clone();
        loop {
            if self.ctx.stopping.is_cancelled() {
                return None;
            }
            let result = run_once(&self.ctx, &mut self.state).await;
            self.ctx.shared.pid.store(0, Ordering::Relaxed);
            if self.ctx.stopping.is_cancelled() {
                return match result {
                    Ok(finished) => Some(finished),
                    Err(error) => {
                        self.ctx.say(format!("could not start: {error}"));
                        None
                    }
                };
            }
            let reason = match &result {
                Ok(finished) => describe(finished.exit),
                Err(error) => format!("could not start: {error}"),
            };
            let now = Instant::now();
            let stable = self.state.healthy_since.is_some_and(|since| now.duration_since(since) >= policy.stable_after);
            self.state.healthy_since = None;
            let decision = self.restarts.on_exit(now, stable, &policy);
            let loop_note = if decision.crash_loop {
                format!(" ({} exits within {:?})", decision.recent_exits, policy.crash_loop_window)
            } else {
                String::new()
            };
            warn!(instance = %self.ctx.shared.id, %reason, delay_ms = decision.delay.as_millis(), crash_loop = decision.crash_loop, "The instance ended; restarting it.");
            self.ctx.say(format!("{reason}; restarting in {:?}{loop_note}", decision.delay));
            let health = self.state.tracker.exited(format!("{reason}{loop_note}"), decision.crash_loop);
            self.ctx.shared.health.send_replace(health);
            tokio::select! {
                () = tokio::time::sleep(decision.delay) => {}
                () = self.ctx.stopping.cancelled() => return None,
            }
            self.ctx.shared.restarts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs the process once, to its end, checking its health and passing its output on meanwhile.
async fn run_once(ctx: &Ctx, state: &mut State) -> Result<Finished, ProcessError> {
    let process = ctx.spec.process();
    let (tx, mut rx) = unbounded_channel();
    let on_spawn = |pid: u32| {
        ctx.shared.pid.store(pid, Ordering::Relaxed);
        debug!(instance = %ctx.shared.id, pid, port = ctx.shared.port, "Instance started.");
        ctx.say(format!("started (pid {pid}, port {})", ctx.shared.port));
    };
    let result = {
        let run =
            run_stopping_with(&process, &tx, &ctx.terminate, Signal::SIGTERM, ctx.spec.stop_grace, Some(&on_spawn));
        tokio::pin!(run);
        let checks = check_health(ctx, state);
        tokio::pin!(checks);
        loop {
            tokio::select! {
                // The run first, so that it has started before the first check.
                biased;
                result = &mut run => break result,
                Some(line) = rx.recv() => forward(&ctx.shared, &ctx.output, line),
                // Health no longer matters once the process has been told to stop.
                () = &mut checks, if !ctx.terminate.is_cancelled() => {}
            }
        }
    };
    drain(&ctx.shared, &ctx.output, &mut rx);
    result
}

/// Checks the instance's health every interval, one check at a time, from now until dropped.
async fn check_health(ctx: &Ctx, state: &mut State) {
    let HealthCheck { path, interval, timeout, healthy, unhealthy } = &ctx.spec.health;
    let interval = (*interval).max(HealthCheck::MIN_INTERVAL);
    loop {
        let started = Instant::now();
        let (result, answered) = probe_answered(ctx.shared.port, path, *timeout).await;
        *lock(&ctx.shared.last_failure) = result.as_ref().err().cloned();
        if let Some(health) = state.tracker.check_answered(&result, answered, *healthy, *unhealthy) {
            state.healthy_since = health.is_healthy().then(Instant::now);
            ctx.publish(health);
        }
        tokio::time::sleep_until(later(started, interval)).await;
    }
}
