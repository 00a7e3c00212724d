//! `plinth demo-app`, run for real: its answers, the flags that make it misbehave, its
//! graceful stop on SIGTERM and its error for a port in use.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long the app may take to start or stop on a busy machine.
const LONG: Duration = Duration::from_secs(60);

/// A `plinth demo-app` child process, with its output read line by line. Killed when
/// dropped, so that no test leaves one behind, even when it fails.
#[derive(Debug)]
struct DemoApp {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    out: Vec<String>,
    err: Vec<String>,
    /// Where it listens, from its "listening on" line; unset until that line is read.
    addr: Option<SocketAddr>,
}

/// Which of the app's streams.
#[derive(Clone, Copy, Debug)]
enum Pipe {
    Stdout,
    Stderr,
}

fn lines_of(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl DemoApp {
    /// `plinth demo-app --version V` with `args`, debug logs on stderr and no PLINTH_INSTANCE.
    fn command(version: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_plinth"));
        command
            .args(["demo-app", "--version", version])
            .args(args)
            .current_dir(std::env::temp_dir())
            .env("PLINTH_LOG", "plinth=debug")
            .env_remove("PLINTH_LOG_FORMAT")
            .env_remove("PLINTH_INSTANCE")
            .stdin(Stdio::null());
        command
    }

    /// Starts the app; does not wait for it to listen.
    fn launch(mut command: Command) -> DemoApp {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("plinth demo-app starts");
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        DemoApp { child, stdout, stderr, out: Vec::new(), err: Vec::new(), addr: None }
    }

    /// Starts `plinth demo-app --version V` with `args`; does not wait for it to listen.
    fn spawn(version: &str, args: &[&str]) -> DemoApp {
        DemoApp::launch(DemoApp::command(version, args))
    }

    /// Starts the app on a port of its choosing and waits until it says where it listens.
    fn start(version: &str, args: &[&str]) -> DemoApp {
        let mut args = args.to_vec();
        args.extend(["--port", "0"]);
        let mut app = DemoApp::spawn(version, &args);
        app.wait_listening();
        app
    }

    /// Waits for the "listening on" line and learns the address from it.
    #[track_caller]
    fn wait_listening(&mut self) -> SocketAddr {
        let line = self.wait_for_line(Pipe::Stdout, " listening on ", LONG);
        let addr = line.rsplit(' ').next().unwrap().parse().unwrap_or_else(|e| panic!("{e}: {line}"));
        self.addr = Some(addr);
        addr
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr.expect("the app listens"))
    }

    /// Waits for a line on `pipe` that contains `needle`; returns it.
    #[track_caller]
    fn wait_for_line(&mut self, pipe: Pipe, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let (rx, seen) = match pipe {
                Pipe::Stdout => (&self.stdout, &mut self.out),
                Pipe::Stderr => (&self.stderr, &mut self.err),
            };
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line with {needle:?} on {pipe:?} within {timeout:?}; saw:\n{}", seen.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{pipe:?} ended without a line with {needle:?}; saw:\n{}", seen.join("\n"))
                }
            }
        }
    }

    fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.child.id()).unwrap();
        kill(Pid::from_raw(pid), signal).unwrap();
    }

    /// Waits for the app to exit by itself; returns its status and all it wrote on stderr.
    #[track_caller]
    fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < timeout, "the app did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The process is gone, so both pipes reach their end.
        self.out.extend(self.stdout.iter());
        self.err.extend(self.stderr.iter());
        (status, self.err.join("\n"))
    }
}

impl Drop for DemoApp {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A blocking HTTP client that never reuses a connection the app may have closed.
fn client() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder().timeout(LONG).build().unwrap()
}

/// `GET url`: the status and the body.
#[track_caller]
fn get(client: &reqwest::blocking::Client, url: &str) -> (u16, String) {
    let response = client.get(url).send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().unwrap())
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn answers_its_version_and_its_health() {
    let app = DemoApp::start("v1", &[]);
    let addr = app.addr.unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_ne!(addr.port(), 0);
    assert_eq!(app.out[0], format!("demo-app v1 listening on {addr}"));
    let http = client();
    let response = http.get(app.url("/")).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers().get("x-demo-instance").is_none(), "{:?}", response.headers());
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(response.text().unwrap(), "v1\n");
    assert_eq!(get(&http, &app.url("/healthz")), (200, "ok".to_owned()));
    assert_eq!(get(&http, &app.url("/healthz")), (200, "ok".to_owned()));
    assert_eq!(get(&http, &app.url("/env/PATH")).0, 404, "no environment variables are served");
}

#[test]
fn names_its_instance_from_the_environment() {
    let mut command = DemoApp::command("v2", &["--port", "0"]);
    command.env("PLINTH_INSTANCE", "web-2");
    let mut app = DemoApp::launch(command);
    app.wait_listening();
    let response = client().get(app.url("/")).send().unwrap();
    assert_eq!(response.headers()["x-demo-instance"], "web-2");
    assert_eq!(response.text().unwrap(), "v2\n");
}

#[test]
fn fail_health_always_answers_503() {
    let app = DemoApp::start("v1", &["--fail-health"]);
    let http = client();
    for _ in 0..3 {
        assert_eq!(get(&http, &app.url("/healthz")).0, 503);
    }
    assert_eq!(get(&http, &app.url("/")), (200, "v1\n".to_owned()), "only the health check fails");
}

#[test]
fn fail_health_after_goes_bad_after_n_checks() {
    let app = DemoApp::start("v1", &["--fail-health-after", "2"]);
    let http = client();
    let statuses: Vec<u16> = (0..4).map(|_| get(&http, &app.url("/healthz")).0).collect();
    assert_eq!(statuses, [200, 200, 503, 503]);
}

#[test]
fn slow_requests_and_response_delay_take_their_time() {
    let app = DemoApp::start("v1", &[]);
    let http = client();
    let start = Instant::now();
    assert_eq!(get(&http, &app.url("/slow?ms=300")), (200, "v1\n".to_owned()));
    assert!(start.elapsed() >= Duration::from_millis(300), "{:?}", start.elapsed());
    assert_eq!(get(&http, &app.url("/slow?ms=soon")).0, 400);

    let delayed = DemoApp::start("v1", &["--response-delay", "250ms"]);
    let start = Instant::now();
    assert_eq!(get(&http, &delayed.url("/")), (200, "v1\n".to_owned()));
    assert!(start.elapsed() >= Duration::from_millis(250), "{:?}", start.elapsed());
    // The health check is not delayed; it answers at once however slow the app is.
    assert_eq!(get(&http, &delayed.url("/healthz")).0, 200);
}

#[test]
fn crash_after_answers_n_requests_then_exits_1() {
    let mut app = DemoApp::start("v1", &["--crash-after", "3"]);
    // One client with keep-alive: the third answer must arrive whole before the process ends.
    let http = client();
    assert_eq!(get(&http, &app.url("/")), (200, "v1\n".to_owned()));
    assert_eq!(get(&http, &app.url("/slow?ms=10")), (200, "v1\n".to_owned()));
    assert_eq!(get(&http, &app.url("/healthz")).0, 200, "health checks do not count");
    assert_eq!(get(&http, &app.url("/")), (200, "v1\n".to_owned()));
    let (status, stderr) = app.wait_exit(LONG);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("crashed"), "{stderr}");
    assert!(http.get(app.url("/")).send().is_err(), "nothing answers after the crash");
}

#[test]
fn start_delay_neither_announces_nor_accepts_before_it_has_passed() {
    let port = free_port();
    let start = Instant::now();
    let mut app = DemoApp::spawn("v1", &["--port", &port.to_string(), "--start-delay", "500ms"]);
    // Connect until a connection is accepted: the first one must come after the delay.
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok() {
            break;
        }
        assert!(start.elapsed() < LONG, "the app never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    let accepted = start.elapsed();
    assert!(accepted >= Duration::from_millis(500), "accepted a connection after {accepted:?}");
    let addr = app.wait_listening();
    assert_eq!(addr, target);
    // No line came before the one that says it listens, and that one came after the delay.
    assert_eq!(app.out.len(), 1, "{:?}", app.out);
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert_eq!(get(&client(), &app.url("/")), (200, "v1\n".to_owned()));
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let mut app = DemoApp::start("v1", &[]);
    let url = app.url("/slow?ms=3000");
    let request = std::thread::spawn(move || {
        let start = Instant::now();
        let answer = get(&client(), &url);
        (answer, start.elapsed())
    });
    app.wait_for_line(Pipe::Stderr, "Holding a slow request", LONG);
    app.signal(Signal::SIGTERM);
    app.wait_for_line(Pipe::Stderr, "Stopping", LONG);
    // It stops accepting while the slow request is still being answered.
    let target = app.addr.unwrap();
    let start = Instant::now();
    while TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok() {
        assert!(start.elapsed() < LONG, "still accepting connections after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!request.is_finished(), "the slow request was answered before the listener closed");
    let ((status, body), took) = request.join().unwrap();
    assert_eq!((status, body.as_str()), (200, "v1\n"));
    assert!(took >= Duration::from_millis(3000), "{took:?}");
    let (status, stderr) = app.wait_exit(LONG);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn sigint_during_start_delay_exits_0() {
    let mut app = DemoApp::spawn("v1", &["--port", "0", "--start-delay", "60s"]);
    app.wait_for_line(Pipe::Stderr, "Waiting before listening", LONG);
    app.signal(Signal::SIGINT);
    let (status, stderr) = app.wait_exit(LONG);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(app.out.is_empty(), "it never listened: {:?}", app.out);
}

#[test]
fn a_port_in_use_is_a_coded_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut app = DemoApp::spawn("v1", &["--port", &port]);
    let (status, stderr) = app.wait_exit(LONG);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error[demo_app.listen]"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

#[test]
fn help_describes_every_flag() {
    let run = crate::plinth(&std::env::temp_dir(), &["demo-app", "--help"]).success();
    let flags = [
        "--port",
        "--host",
        "--version",
        "--instance",
        "--start-delay",
        "--fail-health",
        "--fail-health-after",
        "--response-delay",
        "--crash-after",
    ];
    for flag in flags {
        // Each flag's line, or the line after it, says what the flag does.
        let lines: Vec<&str> = run.stdout.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(flag) && !l.trim_start()[flag.len()..].starts_with('-'))
            .unwrap_or_else(|| panic!("{flag} missing:\n{}", run.stdout));
        let described = lines[at].trim_start()[flag.len()..].split("  ").any(|part| part.trim().len() > 10)
            || lines.get(at + 1).is_some_and(|next| !next.trim_start().starts_with('-') && next.trim().len() > 10);
        assert!(described, "{flag} has no help:\n{}", run.stdout);
    }
}
