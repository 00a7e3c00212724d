//! Health checks against real HTTP servers: becoming healthy only after enough passes, never
//! becoming healthy on a failing path, and following the path as it fails and recovers.

use std::time::Duration;

use plinth_runtime::{Health, Instance, InstanceLine, NotHealthy};
use tokio::time::Instant;

use crate::{DEADLINE, Lines, Sandbox, wait_for_health};

/// A server that answers every request with 200, after appending its path to the file `hits`
/// (so the file holds at least as many lines as answers were sent).
const COUNTING_SERVER: &str = r#"
import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open("hits", "a") as hits:
            hits.write(self.path + "\n")
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

#[tokio::test]
async fn an_instance_is_healthy_only_after_enough_passes_in_a_row() {
    let sandbox = Sandbox::new();
    let mut lines = Lines::new();
    let mut spec = sandbox.spec("api-stg-12-1", "python3", &["-c", COUNTING_SERVER]);
    spec.args.push(spec.port.to_string());
    spec.health.healthy = 3;
    spec.health.interval = Duration::from_millis(150);
    let instance = Instance::start(spec, lines.take_sender());
    assert_eq!(instance.health(), Health::Starting);

    let mut health = instance.watch();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = health.borrow_and_update().clone();
        let hits = std::fs::read_to_string(sandbox.path("hits")).unwrap_or_default();
        let passes = hits.lines().filter(|&path| path == "/healthz").count();
        match now {
            Health::Healthy => {
                // The third answer had been sent before the instance counted as healthy; the
                // fourth check comes an interval later.
                assert!(passes >= 3, "healthy after {passes} passes");
                break;
            }
            Health::Starting => {}
            other => panic!("{other:?}"),
        }
        tokio::time::timeout_at(deadline, health.changed()).await.expect("not healthy in time").unwrap();
    }
    instance.wait_healthy(Duration::from_secs(1)).await.unwrap();
    lines.until_plinth("healthy (3 health checks passed in a row)").await;
    instance.stop(None).await;
}

#[tokio::test]
async fn an_app_that_answers_failures_is_unhealthy_without_waiting_for_the_deadline() {
    let sandbox = Sandbox::new();
    let mut lines = Lines::new();
    // No `healthz` file: every check gets a 404, an answer that says the app is not well.
    let instance = Instance::start(sandbox.http_server("api-stg-12-1"), lines.take_sender());
    let deadline = Duration::from_secs(30);
    let start = Instant::now();
    let err = instance.wait_healthy(deadline).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    let NotHealthy::Unhealthy { instance: id, reason } = &err else { panic!("{err:?}") };
    assert_eq!(id, "api-stg-12-1");
    assert!(reason.contains("answered with a failure; the last: GET /healthz answered 404"), "{reason}");
    assert_eq!(instance.restarts(), 0);
    instance.stop(None).await;
}

#[tokio::test]
async fn an_app_that_does_not_listen_yet_gets_until_the_deadline() {
    let sandbox = Sandbox::new();
    let mut lines = Lines::new();
    // Nothing listens on the port: checks get no answer, which a slow start looks like.
    let mut spec = sandbox.http_server("api-stg-12-2");
    spec.program = "sleep".into();
    spec.args = vec!["30".into()];
    let instance = Instance::start(spec, lines.take_sender());
    let deadline = Duration::from_millis(1500);
    let start = Instant::now();
    let err = instance.wait_healthy(deadline).await.unwrap_err();
    let took = start.elapsed();
    assert!(took >= deadline && took < deadline + Duration::from_secs(2), "took {took:?}");
    let NotHealthy::Deadline { instance: id, waited, last_failure } = &err else { panic!("{err:?}") };
    assert_eq!((id.as_str(), *waited), ("api-stg-12-2", deadline));
    assert!(last_failure.as_deref().is_some_and(|f| f.starts_with("could not connect")), "{last_failure:?}");
    assert_eq!(instance.health(), Health::Starting);
    instance.stop(None).await;
}

#[tokio::test]
async fn health_follows_the_checks_down_and_up_again() {
    let sandbox = Sandbox::new();
    let mut lines = Lines::new();
    std::fs::write(sandbox.path("healthz"), "ok\n").unwrap();
    let instance = Instance::start(sandbox.http_server("api-stg-12-1"), lines.take_sender());
    instance.wait_healthy(DEADLINE).await.unwrap();

    std::fs::remove_file(sandbox.path("healthz")).unwrap();
    let health = wait_for_health(&instance, "unhealthy", |h| matches!(h, Health::Unhealthy { .. })).await;
    assert_eq!(
        health,
        Health::Unhealthy { reason: "2 health checks failed in a row; the last: GET /healthz answered 404".into() }
    );
    lines.until_plinth("unhealthy: 2 health checks failed in a row").await;

    std::fs::write(sandbox.path("healthz"), "ok\n").unwrap();
    wait_for_health(&instance, "healthy again", Health::is_healthy).await;
    // The process itself never stopped.
    assert_eq!(instance.restarts(), 0);
    let started = lines.seen.iter().filter(|l| l.stream == InstanceLine::PLINTH && l.text.starts_with("started"));
    assert_eq!(started.count(), 1);
    instance.stop(None).await;
}
