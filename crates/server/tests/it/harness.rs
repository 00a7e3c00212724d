//! Starting a real plinth server in-process on 127.0.0.1:0, over a real git repo, with the real
//! terraform CLI, and talking to it over HTTP.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plinth_core::run::{Run, RunStatus};
use plinth_server::ServerConfig;
use plinth_testkit::TestRepo;
use serde_json::Value;

/// A running server and the repo it watches.
pub struct Server {
    pub url: String,
    pub admin: String,
    pub repo: TestRepo,
    pub data: tempfile::TempDir,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A response: status and JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Answer {
    #[track_caller]
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {} {}", self.status, self.text))
    }
}

/// Waits for `check` to give a value, trying again until `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub const LONG: Duration = Duration::from_secs(60);

impl Server {
    /// Starts a server on `repo`, polling every 100 ms unless `tweak` says otherwise.
    pub async fn start(repo: TestRepo, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
        let data = tempfile::Builder::new().prefix("plinth-data-").tempdir().unwrap();
        Self::start_in(repo, data, tweak).await
    }

    pub async fn start_in(repo: TestRepo, data: tempfile::TempDir, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("plinth_server=debug,plinth_terraform=debug"))
            .with_test_writer()
            .try_init();
        let mut config = ServerConfig::new(repo.path().display().to_string(), data.path().to_path_buf());
        config.poll_interval = Duration::from_millis(100);
        config.shutdown_grace = Duration::from_secs(20);
        config.terraform_grace = Duration::from_secs(5);
        tweak(&mut config);
        let prepared = plinth_server::prepare(config).await.unwrap();
        let admin = match &prepared.admin_token {
            Some(secret) => secret.clone(),
            None => std::fs::read_to_string(data.path().join("admin.token")).unwrap().trim().to_owned(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            plinth_server::serve(prepared, listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Server { url, admin, repo, data, http: reqwest::Client::new(), stop: Some(stop), task: Some(task) }
    }

    /// Stops the server gracefully; returns what it was started on, to start again.
    pub async fn stop(mut self) -> (TestRepo, tempfile::TempDir) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        (self.repo, self.data)
    }

    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, body, text }
    }

    /// A GET as admin that must succeed.
    pub async fn get(&self, path: &str) -> Value {
        let answer = self.call("GET", path, Some(&self.admin), None).await;
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.text);
        answer.body
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call("POST", path, Some(token), Some(body)).await
    }

    pub async fn runs(&self) -> Vec<Run> {
        let mut runs: Vec<Run> =
            serde_json::from_value(self.get("/api/v1/runs?limit=1000").await["runs"].clone()).unwrap();
        runs.sort_by_key(|r| r.id);
        runs
    }

    pub async fn run(&self, id: i64) -> Run {
        serde_json::from_value(self.get(&format!("/api/v1/runs/{id}")).await).unwrap()
    }

    /// Waits until the runs for `commit` exist and have all ended (or wait for approval).
    pub async fn settle(&self, commit: &str, count: usize) -> Vec<Run> {
        let start = Instant::now();
        loop {
            let all = self.runs().await;
            let runs: Vec<Run> = all.iter().filter(|r| r.commit == commit).cloned().collect();
            let settled = runs.len() == count
                && runs.iter().all(|r| r.status.is_final(r.mode) || r.status == RunStatus::AwaitingApproval);
            if settled {
                return runs;
            }
            if start.elapsed() > LONG {
                let events = self.get("/api/v1/events").await;
                let mut logs = String::new();
                for run in all.iter().filter(|r| !r.status.is_final(r.mode)) {
                    let text =
                        self.call("GET", &format!("/api/v1/runs/{}/logs", run.id), Some(&self.admin), None).await.text;
                    logs.push_str(&format!("--- run #{} ({}) ---\n{text}\n", run.id, run.status));
                }
                panic!(
                    "timed out waiting for {count} settled runs for {commit}\nruns: {all:#?}\nevents: {events:#}\nlogs:\n{logs}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a run to reach a status that `done` accepts.
    pub async fn wait_run(&self, id: i64, done: impl Fn(&Run) -> bool) -> Run {
        eventually(&format!("run #{id}"), LONG, || async {
            let run = self.run(id).await;
            done(&run).then_some(run)
        })
        .await
    }

    /// Creates a token and returns its secret.
    pub async fn token(&self, name: &str, roles: &[&str]) -> String {
        // A ci token must be scoped to services; tests give it one that does not exist.
        let services: &[&str] = if roles.contains(&"ci") { &["some-service"] } else { &[] };
        let body = serde_json::json!({"name": name, "roles": roles, "services": services});
        let answer = self.post("/api/v1/tokens", &self.admin, body).await;
        assert_eq!(answer.status, 201, "{}", answer.text);
        answer.body["secret"].as_str().unwrap().to_owned()
    }

    pub fn data_path(&self) -> PathBuf {
        self.data.path().to_path_buf()
    }
}

/// A stack whose resource is replaced on every commit that changes `rev`, and whose apply
/// appends its start and end time to `log` from inside terraform.
pub fn timed_stack(name: &str, rev: u32, log: &Path, seconds: f32) -> String {
    format!(
        r#"locals {{
  rev = "{rev}"
}}

resource "terraform_data" "{name}" {{
  triggers_replace = local.rev
  provisioner "local-exec" {{
    command = "echo start {name} $(date +%s.%N) >> {log}; sleep {seconds}; echo end {name} $(date +%s.%N) >> {log}"
  }}
}}

output "rev" {{
  value = local.rev
}}
"#,
        log = log.display()
    )
}

/// A repo with one commit and no plinth.toml yet: the server starts on it, and tests then
/// commit the layout as a change.
pub fn empty_repo() -> TestRepo {
    let mut t = TestRepo::new();
    t.write("README.md", "# infra\n");
    t.commit("start");
    t
}

/// The files under `dir` that contain `needle`.
pub fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}
