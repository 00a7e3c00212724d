//! Zero-downtime deploys, end to end: the real `plinth server` with its proxy, services run by
//! the process runtime as `plinth demo-app`, and a load generator with 8 keep-alive clients
//! counting every failed request while releases roll out, roll back and get cancelled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::server::{Server, watched_repo};

/// `{image.app}` is the version the demo app answers; `v3` is a release whose health check
/// fails.
fn config(marks: &std::path::Path, strategy: &str) -> String {
    format!(
        r#"main_branch = "main"

[environments.stg]
branches = ["main"]

[services.api]
containers = ["app"]
command = ["sh", "-c", "if [ {{image.app}} = v3 ]; then exec plinth demo-app --port {{port}} --version {{image.app}} --fail-health; else exec plinth demo-app --port {{port}} --version {{image.app}}; fi"]
count = 3
health = {{ path = "/healthz", interval = "100ms", timeout = "500ms", healthy = 2, unhealthy = 2 }}
strategy = {strategy}
drain_timeout = "10s"
pre_stop = ["sh", "-c", "echo $PLINTH_INSTANCE >> {marks}/pre-stop.log"]
hosts = ["api.{{env}}.localhost"]
"#,
        marks = marks.display()
    )
}

/// An HTTP client that resolves the service's host to the proxy.
fn client(proxy: std::net::SocketAddr, timeout: Duration) -> reqwest::blocking::Client {
    client_for("api.stg.localhost", proxy, timeout)
}

fn client_for(host: &str, proxy: std::net::SocketAddr, timeout: Duration) -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder().resolve(host, proxy).timeout(timeout).build().unwrap()
}

/// When a request started, and the version that answered it (or why it failed).
type Answer = (Instant, Result<String, String>);

/// Requests sent through the proxy by 8 clients until stopped: what each answered, in order.
struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let addr: std::net::SocketAddr = proxy.parse().unwrap();
        let threads = (0..8)
            .map(|_| {
                let (stop, answers) = (stop.clone(), answers.clone());
                std::thread::spawn(move || {
                    let client = client(addr, Duration::from_secs(30));
                    let url = format!("http://api.stg.localhost:{}/", addr.port());
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let answer = match client.get(&url).send() {
                            Ok(r) if r.status() == 200 => Ok(r.text().unwrap_or_default().trim().to_owned()),
                            Ok(r) => Err(format!("{} {}", r.status(), r.text().unwrap_or_default())),
                            Err(e) => Err(e.to_string()),
                        };
                        answers.lock().unwrap().push((started, answer));
                    }
                })
            })
            .collect();
        Load { stop, answers, threads }
    }

    /// Waits until `n` more requests have been answered, so that the load covers what just
    /// happened.
    fn more(&self, n: usize, server: &Server) {
        let start = self.answers.lock().unwrap().len();
        server.eventually(&format!("{n} more requests"), || {
            (self.answers.lock().unwrap().len() >= start + n).then_some(())
        });
    }

    fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let mut answers = Arc::try_unwrap(self.answers).unwrap().into_inner().unwrap();
        answers.sort_by_key(|(at, _)| *at);
        answers
    }
}

fn publish(server: &Server, ci: &str, version: &str) -> i64 {
    publish_to(server, ci, "stg", version)
}

fn deployment(server: &Server, id: i64) -> Value {
    server.admin(&["deploy", "show", &id.to_string(), "--output", "json"]).success().json()
}

/// Waits until deployment `id` ends; returns it.
pub(crate) fn ended(server: &Server, id: i64) -> Value {
    server.eventually(&format!("deployment #{id} to end"), || {
        let d = deployment(server, id);
        let status = d["deployment"]["status"].as_str().unwrap_or("").to_owned();
        matches!(status.as_str(), "succeeded" | "failed" | "cancelled" | "superseded" | "rejected").then_some(d)
    })
}

fn setup(strategy: &str) -> (Server, String) {
    setup_with(|marks| config(marks, strategy))
}

/// A server whose repo has the plinth.toml `config` writes (given the marks directory), and a
/// ci token scoped to `api`.
fn setup_with(config: impl FnOnce(&std::path::Path) -> String) -> (Server, String) {
    setup_on(Server::start(watched_repo()), config)
}

/// [`setup_with`] on a server started some other way.
pub(crate) fn setup_on(mut server: Server, config: impl FnOnce(&std::path::Path) -> String) -> (Server, String) {
    let text = config(&server.marks());
    server.repo.write("plinth.toml", &text);
    let commit = server.repo.commit("a service");
    server.eventually("the commit to be seen", || {
        let run = server.admin(&["stacks", "list", "--output", "json"]);
        (run.code == 0 && run.json()["commit"].as_str() == Some(commit.as_str())).then_some(())
    });
    let created = server
        .admin(&["tokens", "create", "--name", "ci", "--role", "ci", "--service", "api", "--output", "json"])
        .success()
        .json();
    (server, created["secret"].as_str().unwrap().to_owned())
}

#[test]
fn rolling_deploys_and_an_automatic_rollback_fail_no_request() {
    let (server, ci) = setup(r#"{ kind = "rolling", max_surge = "1", max_unavailable = "0" }"#);
    let first = publish(&server, &ci, "v1");
    let d = ended(&server, first);
    assert_eq!(d["deployment"]["status"], "succeeded", "{d:#}");

    let load = Load::start(&server.proxy);
    // Slow requests in flight on v1 instances when they start draining finish all the same.
    let proxy: std::net::SocketAddr = server.proxy.parse().unwrap();
    let slow: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                client(proxy, Duration::from_secs(30))
                    .get(format!("http://api.stg.localhost:{}/slow?ms=1500", proxy.port()))
                    .send()
                    .map(|r| r.status())
            })
        })
        .collect();
    let second = publish(&server, &ci, "v2");
    let d = ended(&server, second);
    assert_eq!(d["deployment"]["status"], "succeeded", "{d:#}");
    let v2_done = Instant::now();
    for handle in slow {
        assert_eq!(handle.join().unwrap().unwrap(), 200);
    }

    // v3 fails its health check: the rollout stops and v2 keeps serving.
    let third = publish(&server, &ci, "v3");
    let d = ended(&server, third);
    assert_eq!(d["deployment"]["status"], "failed", "{d:#}");
    assert!(d["deployment"]["reason"].as_str().unwrap().contains("did not become healthy"), "{d:#}");
    load.more(100, &server);
    let answers = load.finish();

    let failures: Vec<&String> = answers.iter().filter_map(|(_, a)| a.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        answers.len(),
        &failures[..failures.len().min(5)]
    );
    let versions: Vec<&str> = answers.iter().filter_map(|(_, a)| a.as_ref().ok()).map(String::as_str).collect();
    assert!(versions.contains(&"v1") && versions.contains(&"v2"), "responses switch from v1 to v2");
    assert!(!versions.contains(&"v3"), "no request reached the broken release");
    let after: Vec<&str> = answers
        .iter()
        .filter(|(at, _)| *at > v2_done)
        .filter_map(|(_, a)| a.as_ref().ok())
        .map(String::as_str)
        .collect();
    assert!(!after.is_empty() && after.iter().all(|v| *v == "v2"), "only v2 after its rollout");

    // pre_stop ran for each v1 instance before it was stopped.
    let stopped = std::fs::read_to_string(server.marks().join("pre-stop.log")).unwrap_or_default();
    assert_eq!(stopped.lines().filter(|l| l.contains(&format!("-d{first}-"))).count(), 3, "{stopped}");

    let status = server.admin(&["deploy", "status", "api", "--env", "stg", "--output", "json"]).success().json();
    assert_eq!(status["release"]["images"]["app"], "v2", "{status:#}");
    assert_eq!(status["instances"].as_array().unwrap().len(), 3, "{status:#}");
    let history = server.admin(&["deploy", "history", "api", "--env", "stg"]).success();
    assert!(history.stdout.contains("failed") && history.stdout.contains("succeeded"), "{}", history.stdout);
    let logs = server.admin(&["logs", "api", "--env", "stg"]).success();
    assert!(logs.stdout.contains("demo-app v2 listening"), "{}", logs.stdout);

    // Rollback: back to v1 without CI, and the ci token may not ask for it.
    let run = server.cli(&ci, &["deploy", "rollback", "api", "--env", "stg"]).failure();
    assert!(run.stderr.contains("auth.forbidden"), "{}", run.stderr);
    let back = server.admin(&["deploy", "rollback", "api", "--env", "stg", "--output", "json"]).success().json();
    let d = ended(&server, back["deployment"]["id"].as_i64().unwrap());
    assert_eq!(
        (d["deployment"]["status"].as_str(), d["deployment"]["kind"].as_str()),
        (Some("succeeded"), Some("rollback"))
    );
    assert_eq!(d["release"]["images"]["app"], "v1");
}

#[test]
fn double_deploys_fail_no_request_and_a_server_restart_brings_services_back() {
    let (mut server, ci) = setup(r#"{ kind = "double" }"#);
    let d = ended(&server, publish(&server, &ci, "v1"));
    assert_eq!(d["deployment"]["status"], "succeeded", "{d:#}");
    let load = Load::start(&server.proxy);
    let d = ended(&server, publish(&server, &ci, "v2"));
    assert_eq!(d["deployment"]["status"], "succeeded", "{d:#}");
    let answers = load.finish();
    let failures: Vec<&String> = answers.iter().filter_map(|(_, a)| a.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        answers.len(),
        &failures[..failures.len().min(5)]
    );
    let events: Vec<String> =
        d["events"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap().to_owned()).collect();
    let routed = events.iter().position(|e| e.contains("routed to 3 new instance")).unwrap();
    let first_stop = events.iter().position(|e| e.contains("drained and stopped")).unwrap();
    assert!(routed < first_stop, "double: all new instances first, then the old ones go: {events:#?}");

    server.terminate();
    server.restart();
    let status = server.eventually("the service to come back", || {
        let s = server.admin(&["deploy", "status", "api", "--env", "stg", "--output", "json"]).success().json();
        let up = s["instances"].as_array().is_some_and(|i| i.len() == 3 && i.iter().all(|i| i["health"] == "Healthy"));
        up.then_some(s)
    });
    assert_eq!(status["release"]["images"]["app"], "v2");
    let proxy: std::net::SocketAddr = server.proxy.parse().unwrap();
    let answer = client(proxy, Duration::from_secs(10))
        .get(format!("http://api.stg.localhost:{}/", proxy.port()))
        .send()
        .unwrap();
    assert_eq!(answer.text().unwrap().trim(), "v2");
}

const APPROVALS: &str = r#"main_branch = "main"

[environments.prd]
branches = ["main"]
approval = true
approvers = ["sre"]

[services.api]
containers = ["app"]
command = ["sh", "-c", "case {image.app} in slow) exec plinth demo-app --port {port} --version slow --start-delay 60s;; *) exec plinth demo-app --port {port} --version {image.app};; esac"]
count = 2
health = { path = "/healthz", interval = "100ms", timeout = "500ms", healthy = 2, unhealthy = 2 }
hosts = ["api.{env}.localhost"]
"#;

pub(crate) fn publish_to(server: &Server, ci: &str, env: &str, version: &str) -> i64 {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imagedefinitions.json");
    std::fs::write(&file, format!(r#"[{{"name": "app", "imageUri": "{version}"}}]"#)).unwrap();
    let file = file.display().to_string();
    let out = server
        .cli(
            ci,
            &["release", "publish", "--service", "api", "--env", env, "--image-definitions", &file, "--output", "json"],
        )
        .success()
        .json();
    out["deployments"][0]["id"].as_i64().unwrap()
}

#[test]
fn production_waits_for_an_approver_newer_releases_supersede_and_a_cancel_keeps_the_old_release() {
    let (server, ci) = setup_with(|_| APPROVALS.to_owned());
    let sre = server
        .admin(&["tokens", "create", "--name", "oncall", "--role", "sre", "--output", "json"])
        .success()
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_owned();

    // Two releases before anyone approves: the first is superseded, the second waits.
    let first = publish_to(&server, &ci, "prd", "v1");
    let second = publish_to(&server, &ci, "prd", "v2");
    assert_eq!(deployment(&server, first)["deployment"]["status"], "superseded");
    assert_eq!(deployment(&server, second)["deployment"]["status"], "awaiting_approval");
    let run = server.cli(&ci, &["deploy", "approve", &second.to_string()]).failure();
    assert!(run.stderr.contains("auth.forbidden"), "{}", run.stderr);
    server.cli(&sre, &["deploy", "approve", &second.to_string()]).success();
    let d = ended(&server, second);
    assert_eq!(
        (d["deployment"]["status"].as_str(), d["deployment"]["approved_by"].as_str()),
        (Some("succeeded"), Some("oncall"))
    );

    // A rollout that cannot finish (its instances never start listening) is cancelled: its new
    // instances go, and v2 keeps serving.
    let slow = publish_to(&server, &ci, "prd", "slow");
    server.cli(&sre, &["deploy", "approve", &slow.to_string()]).success();
    server.eventually("the slow rollout to start its instances", || {
        let d = deployment(&server, slow);
        let started = d["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap_or("").starts_with("started api-prd-"));
        started.then_some(())
    });
    server.cli(&sre, &["deploy", "cancel", &slow.to_string()]).success();
    let d = ended(&server, slow);
    assert_eq!(
        (d["deployment"]["status"].as_str(), d["deployment"]["reason"].as_str()),
        (Some("cancelled"), Some("cancelled by oncall"))
    );
    let status = server.admin(&["deploy", "status", "api", "--env", "prd", "--output", "json"]).success().json();
    assert_eq!(status["release"]["images"]["app"], "v2", "{status:#}");
    let ids: Vec<&str> = status["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert!(ids.len() == 2 && ids.iter().all(|id| id.contains(&format!("-d{second}-"))), "{status:#}");
    let proxy: std::net::SocketAddr = server.proxy.parse().unwrap();
    let client = client_for("api.prd.localhost", proxy, Duration::from_secs(10));
    assert_eq!(
        client.get(format!("http://api.prd.localhost:{}/", proxy.port())).send().unwrap().text().unwrap().trim(),
        "v2"
    );

    // Unknown hosts get plinth's 404; a rollback to a release that does not exist is refused.
    let answer = client.get(format!("http://{}/", server.proxy)).header("host", "nope.localhost").send().unwrap();
    assert_eq!(answer.status(), 404);
    assert_eq!(answer.headers()["x-plinth-error"], "proxy.unknown_host");
    let run = server.admin(&["deploy", "rollback", "api", "--env", "prd", "--to", "999"]).failure();
    assert!(run.stderr.contains("release.not_found"), "{}", run.stderr);
}
