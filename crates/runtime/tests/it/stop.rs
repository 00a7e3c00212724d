//! Stopping: the pre-stop hook runs before SIGTERM, a process that ignores SIGTERM is killed
//! after the grace period, a stop between restarts is immediate, nothing restarts after a stop,
//! and dropping every handle kills the process group.

use std::time::Duration;

use plinth_runtime::{Exit, Health, Instance, InstanceLine, PreStop, PreStopOutcome, Stopped};
use tokio::time::Instant;

use crate::{DEADLINE, Lines, Sandbox, alive, wait_for_pid, wait_until_gone};

fn hook(sandbox: &Sandbox, script: &str, timeout: Duration) -> PreStop {
    PreStop {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        dir: sandbox.dir(),
        env: sandbox.env("api-stg-12-1"),
        timeout,
    }
}

#[tokio::test]
async fn stop_runs_the_pre_stop_hook_then_sigterm_and_never_restarts() {
    let sandbox = Sandbox::new();
    let mut lines = Lines::new();
    // The service writes to `order` when SIGTERM arrives; the hook writes to it first, after
    // checking that the service is still running.
    let script = "trap 'echo got TERM >> order; exit 0' TERM; echo $$ > pid; sleep 300 & wait";
    let instance = Instance::start(sandbox.sh("api-stg-12-1", script), lines.take_sender());
    let pid = wait_for_pid(&sandbox.path("pid")).await;
    let pre_stop = hook(&sandbox, "kill -0 $(cat pid) && echo pre_stop >> order && echo draining", DEADLINE);

    let stopped = instance.stop(Some(&pre_stop)).await;
    assert_eq!(
        stopped,
        Stopped { exit: Some(Exit::Code(0)), killed: false, pre_stop: Some(PreStopOutcome::Exited(Exit::Code(0))) }
    );
    assert_eq!(std::fs::read_to_string(sandbox.path("order")).unwrap(), "pre_stop\ngot TERM\n");
    assert_eq!(instance.health(), Health::Stopped);
    assert!(!alive(pid));

    // Stopping again waits for the same stop: the hook does not run twice.
    assert_eq!(instance.clone().stop(Some(&pre_stop)).await, stopped);
    assert_eq!(std::fs::read_to_string(sandbox.path("order")).unwrap(), "pre_stop\ngot TERM\n");

    // Once the instance is gone, so is every sender: the channel closes with one start only.
    drop(instance);
    lines.until_closed().await;
    let plinth = lines.texts(InstanceLine::PLINTH);
    assert_eq!(plinth.iter().filter(|t| t.starts_with("started")).count(), 1, "{plinth:#?}");
    assert!(!plinth.iter().any(|t| t.contains("restarting")), "{plinth:#?}");
    // The hook's output reaches the instance's channel, between plinth's lines about it.
    let texts: Vec<&str> = lines.seen.iter().map(|l| l.text.as_str()).collect();
    let at =
        |text: &str| texts.iter().position(|t| t.starts_with(text)).unwrap_or_else(|| panic!("{text}: {texts:#?}"));
    assert!(at("stopping") < at("running the pre-stop hook `sh`"));
    assert!(at("running the pre-stop hook") < at("draining"));
    assert!(at("draining") < at("the pre-stop hook exited with code 0"));
    assert!(at("the pre-stop hook exited") < at("stopped: exited with code 0"));
    assert!(lines.seen.iter().all(|l| l.instance == "api-stg-12-1"));
}

#[tokio::test]
async fn a_process_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let sandbox = Sandbox::new();
    let mut lines = Lines::new();
    // Ignored signals stay ignored across exec, so the sleep ignores SIGTERM too.
    let script = "trap '' TERM; sleep 300 & echo $! > pid; wait";
    let mut spec = sandbox.sh("api-stg-12-1", script);
    spec.stop_grace = Duration::from_millis(300);
    let instance = Instance::start(spec, lines.take_sender());
    let sleep = wait_for_pid(&sandbox.path("pid")).await;
    // A hook that hangs is killed at its timeout, and the stop goes on.
    let timeout = Duration::from_millis(200);
    let pre_stop = hook(&sandbox, "echo hanging; exec sleep 300", timeout);

    let start = Instant::now();
    let stopped = instance.stop(Some(&pre_stop)).await;
    let took = start.elapsed();
    assert_eq!(
        stopped,
        Stopped { exit: Some(Exit::Signal(9)), killed: true, pre_stop: Some(PreStopOutcome::TimedOut) }
    );
    assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(3), "took {took:?}");
    wait_until_gone(sleep).await;
    lines.until_plinth("the pre-stop hook was still running after 200ms; killed it").await;
    lines.until_plinth("stopped: still running 300ms after SIGTERM, killed (signal 9 (SIGKILL))").await;
    assert!(lines.texts(InstanceLine::STDOUT).contains(&"hanging"));
}

#[tokio::test]
async fn a_stop_between_restarts_is_immediate() {
    let sandbox = Sandbox::new();
    let mut lines = Lines::new();
    let mut spec = sandbox.sh("api-stg-12-1", "exit 3");
    spec.restart.initial_backoff = Duration::from_secs(300);
    let instance = Instance::start(spec, lines.take_sender());
    lines.until_plinth("exited with code 3; restarting in 300s").await;

    let start = Instant::now();
    let pre_stop = hook(&sandbox, "touch ran", DEADLINE);
    let stopped = instance.stop(Some(&pre_stop)).await;
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    assert_eq!(stopped, Stopped { exit: None, killed: false, pre_stop: Some(PreStopOutcome::Skipped) });
    assert!(!sandbox.path("ran").exists());
    assert_eq!((instance.health(), instance.restarts()), (Health::Stopped, 0));
}

#[tokio::test]
async fn dropping_every_handle_kills_the_process_group() {
    let sandbox = Sandbox::new();
    let mut lines = Lines::new();
    // Neither the shell nor its child would stop for SIGTERM or SIGINT.
    let script = "trap '' TERM INT; echo $$ > shell; sleep 300 & echo $! > pid; wait";
    let instance = Instance::start(sandbox.sh("api-stg-12-1", script), lines.take_sender());
    let shell = wait_for_pid(&sandbox.path("shell")).await;
    let sleep = wait_for_pid(&sandbox.path("pid")).await;

    let other = instance.clone();
    drop(instance);
    // One handle is left: the instance runs on.
    assert_eq!(other.pid(), Some(u32::try_from(shell).unwrap()));
    assert!(alive(shell) && alive(sleep));

    drop(other);
    wait_until_gone(sleep).await;
    wait_until_gone(shell).await;
    lines.until_closed().await;
    assert_eq!(lines.texts(InstanceLine::PLINTH).last(), Some(&"every handle was dropped; killed the process group"));
}
