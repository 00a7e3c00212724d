//! Restarts: a command that keeps crashing backs off and reaches a crash loop; a service that
//! is killed comes back on the same port.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use plinth_runtime::{Health, Instance, NotHealthy};

use crate::{DEADLINE, Lines, Sandbox, backoffs, wait_for_health, wait_until, wait_until_gone};

#[tokio::test]
async fn a_crashing_command_backs_off_into_a_crash_loop_and_keeps_restarting() {
    let sandbox = Sandbox::new();
    let mut lines = Lines::new();
    let instance = Instance::start(sandbox.sh("api-stg-12-1", "exit 3"), lines.take_sender());

    let health = wait_for_health(&instance, "in a crash loop", |h| matches!(h, Health::CrashLoop { .. })).await;
    assert_eq!(health, Health::CrashLoop { reason: "exited with code 3 (3 exits within 60s)".into() });
    let err = instance.wait_healthy(DEADLINE).await.unwrap_err();
    assert!(matches!(&err, NotHealthy::CrashLoop { .. }), "{err:?}");

    // A crash loop is reported, not acted on: the instance is still restarted.
    wait_until("restarted five times", || instance.restarts() >= 5).await;
    lines.until_plinth("restarting in 1s (").await;
    let waits = backoffs(&lines);
    let ms = Duration::from_millis;
    assert_eq!(waits[..5], [ms(50), ms(100), ms(200), ms(400), ms(800)], "{:#?}", lines.seen);
    let first = lines.texts("plinth").into_iter().find(|t| t.contains("restarting")).unwrap();
    assert_eq!(first, "exited with code 3; restarting in 50ms");
    let third = lines.texts("plinth").into_iter().filter(|t| t.contains("restarting")).nth(2).unwrap();
    assert_eq!(third, "exited with code 3; restarting in 200ms (3 exits within 60s)");

    let stopped = instance.stop(None).await;
    assert!(!stopped.killed);
    assert_eq!(instance.health(), Health::Stopped);
}

#[tokio::test]
async fn a_killed_service_comes_back_on_the_same_port() {
    let sandbox = Sandbox::new();
    let mut lines = Lines::new();
    std::fs::write(sandbox.path("healthz"), "ok\n").unwrap();
    let spec = sandbox.http_server("api-stg-12-1");
    let port = spec.port;
    let instance = Instance::start(spec, lines.take_sender());
    instance.wait_healthy(DEADLINE).await.unwrap();
    let first = instance.pid().unwrap();

    kill(Pid::from_raw(i32::try_from(first).unwrap()), Signal::SIGKILL).unwrap();
    let health = wait_for_health(
        &instance,
        "exited",
        |h| matches!(h, Health::Unhealthy { reason } if reason.contains("signal")),
    )
    .await;
    assert_eq!(health, Health::Unhealthy { reason: "was ended by signal 9 (SIGKILL)".into() });
    lines.until_plinth("was ended by signal 9 (SIGKILL); restarting in 50ms").await;

    wait_for_health(&instance, "healthy again", Health::is_healthy).await;
    assert_eq!(instance.restarts(), 1);
    assert_eq!(instance.port(), port);
    let second = instance.pid().unwrap();
    assert_ne!(first, second);
    wait_until_gone(i32::try_from(first).unwrap()).await;
    instance.stop(None).await;
}
