//! `plinth exec` end to end: the real server with a service deployed by the process runtime,
//! and the real client streaming stdin, stdout and stderr, returning exit codes, masking
//! secrets, refusing who may not, running on a terminal (a PTY the test opens, as a user's
//! terminal), killing the command when the client goes away, and the audit log.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Run;
use crate::server::{Pipe, Server, watched_repo};

const SECRET: &str = "exec-secret-value-5521";

const CONFIG: &str = r#"main_branch = "main"

[environments.stg]
branches = ["main"]

[environments.prd]
branches = ["main"]
approval = true
approvers = ["sre"]

[services.api]
containers = ["app"]
command = ["plinth", "demo-app", "--port", "{port}", "--version", "{image.app}"]
health = { path = "/healthz", interval = "100ms", timeout = "500ms", healthy = 1, unhealthy = 2 }
hosts = ["api.{env}.localhost"]
env = { GREETING = "hello" }
"#;

/// Runs `plinth ARGS` with `token`, `input` written to its stdin.
fn with_stdin(server: &Server, token: &str, args: &[&str], input: &[u8]) -> Run {
    let mut command = server.command(token, args);
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn exec_args<'a>(env: &'a str, command: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["exec", "api", "--env", env, "--"];
    args.extend_from_slice(command);
    args
}

/// Asserts a failure with `code` in the text form.
#[track_caller]
fn refused(run: Run, code: &str) -> Run {
    let run = run.failure();
    assert!(run.stderr.starts_with(&format!("error[{code}]: ")), "expected {code}:\n{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    run
}

fn setup() -> (Server, String, String) {
    let mut server = Server::start(watched_repo());
    server.repo.write("plinth.toml", CONFIG);
    let commit = server.repo.commit("a service");
    server.eventually("the commit to be seen", || {
        let run = server.admin(&["stacks", "list", "--output", "json"]);
        (run.code == 0 && run.json()["commit"].as_str() == Some(commit.as_str())).then_some(())
    });
    let token = |name: &str, role: &str, extra: &[&str]| {
        let mut args = vec!["tokens", "create", "--name", name, "--role", role];
        args.extend_from_slice(extra);
        args.extend(["--output", "json"]);
        let created = server.admin(&args).success().json();
        created["secret"].as_str().unwrap().to_owned()
    };
    let ci = token("ci", "ci", &["--service", "api"]);
    let sre = token("oncall", "sre", &[]);
    (server, ci, sre)
}

fn publish(server: &Server, ci: &str, version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imagedefinitions.json");
    std::fs::write(&file, format!(r#"[{{"name": "app", "imageUri": "{version}"}}]"#)).unwrap();
    let file = file.display().to_string();
    let args =
        ["release", "publish", "--service", "api", "--env", "stg", "--image-definitions", &file, "--output", "json"];
    let out = server.cli(ci, &args).success().json();
    let id = out["deployments"][0]["id"].as_i64().unwrap().to_string();
    let d = server.eventually(&format!("deployment #{id} to end"), || {
        let d = server.admin(&["deploy", "show", &id, "--output", "json"]).success().json();
        let status = d["deployment"]["status"].as_str().unwrap_or("").to_owned();
        matches!(status.as_str(), "succeeded" | "failed" | "cancelled").then_some(d)
    });
    assert_eq!(d["deployment"]["status"], "succeeded", "{d:#}");
}

/// The audit log, oldest first.
fn audit(server: &Server) -> Vec<Value> {
    let audit = server.admin(&["audit", "--limit", "1000", "--output", "json"]).success().json();
    let mut entries = audit["entries"].as_array().unwrap().clone();
    entries.sort_by_key(|e| e["id"].as_i64().unwrap());
    entries
}

#[test]
fn exec_runs_commands_with_the_service_environment() {
    let (server, ci, sre) = setup();
    let admin = server.admin.clone();

    // Nothing is deployed yet.
    refused(server.cli(&admin, &exec_args("stg", &["true"])), "exec.no_release");
    publish(&server, &ci, "v1");

    // How long a trivial command takes, end to end, from a fresh `plinth` process.
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        server.cli(&admin, &exec_args("stg", &["true"])).success();
        times.push(start.elapsed());
    }
    times.sort();
    println!("plinth exec api --env stg -- true: {times:?} (median {:?})", times[times.len() / 2]);

    // The service's environment, stdout and stderr apart, and the exit code.
    let script = "echo $PLINTH_SERVICE $PLINTH_ENV $PLINTH_IMAGE_APP; echo err >&2; exit 7";
    let run = server.cli(&admin, &exec_args("stg", &["sh", "-c", script]));
    assert_eq!((run.code, run.stdout.as_str(), run.stderr.as_str()), (7, "api stg v1\n", "err\n"), "{run:?}");
    let script = "echo $GREETING $PLINTH_RELEASE $PLINTH_INSTANCE; pwd; echo $HOME";
    let run = server.cli(&admin, &exec_args("stg", &["sh", "-c", script])).success();
    let lines: Vec<&str> = run.stdout.lines().collect();
    let words: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(words[0], "hello", "{}", run.stdout);
    assert!(words[1].parse::<i64>().unwrap() > 0, "{}", run.stdout);
    assert!(words[2].starts_with("api-stg-exec-"), "{}", run.stdout);
    let home = server.data_dir().join("exec").join(words[2]);
    assert_eq!(lines[1..], [home.display().to_string(), home.display().to_string()], "{}", run.stdout);
    assert!(!home.exists(), "the exec's directory is deleted afterwards");

    // Stdin is streamed, to its end; large input and output pass whole.
    let run = with_stdin(&server, &admin, &exec_args("stg", &["wc", "-l"]), b"a\nb\n").success();
    assert_eq!(run.stdout.trim(), "2");
    let big = vec![b'x'; 3 * 1024 * 1024 + 17];
    let run = with_stdin(&server, &admin, &exec_args("stg", &["wc", "-c"]), &big).success();
    assert_eq!(run.stdout.trim(), big.len().to_string());
    let run = server.cli(&admin, &exec_args("stg", &["head", "-c", "5000000", "/dev/zero"])).success();
    assert_eq!(run.stdout.len(), 5_000_000);

    // A program that does not exist: the shell's 127, and why.
    let run = server.cli(&admin, &exec_args("stg", &["no-such-program-here"]));
    assert_eq!(run.code, 127, "{run:?}");
    assert!(run.stderr.contains("`no-such-program-here` was not found"), "{}", run.stderr);

    // A secret of the environment reaches the command, and is masked in its output; the
    // command line that names it is masked in the audit log.
    let mut set = server.command(&admin, &["secrets", "set", "API_TOKEN", "--env", "stg"]);
    set.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = set.spawn().unwrap();
    child.stdin.take().unwrap().write_all(SECRET.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let script = format!("echo token=$API_TOKEN; [ \"$API_TOKEN\" = {SECRET} ] && echo same; echo $API_TOKEN >&2");
    let run = server.cli(&admin, &exec_args("stg", &["sh", "-c", &script])).success();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("token=***\nsame\n", "***\n"));

    // Who may: admins, the approvers of an environment that needs approval; never ci.
    let run = refused(server.cli(&ci, &exec_args("stg", &["true"])), "auth.forbidden");
    assert!(run.stderr.contains("may not run commands in `stg`"), "{}", run.stderr);
    let mut args = exec_args("stg", &["true"]);
    args.splice(1..1, ["--output", "json"]);
    let run = server.cli(&ci, &args).failure();
    assert_eq!(run.json_error()["code"], "auth.forbidden");
    refused(server.cli(&sre, &exec_args("stg", &["true"])), "auth.forbidden");
    refused(server.cli(&sre, &exec_args("prd", &["true"])), "exec.no_release");
    refused(server.cli(&admin, &["exec", "apx", "--env", "stg", "--", "true"]), "exec.unknown_service");
    refused(server.cli(&admin, &exec_args("qa", &["true"])), "exec.unknown_environment");

    // -t needs a terminal on stdin; the tests' stdin is none.
    let run = refused(
        server.cli(&admin, &["exec", "-it", "api", "--env", "stg", "--", "sh", "-c", "tty; echo done"]),
        "exec.not_a_terminal",
    );
    assert!(run.stderr.contains("Drop -t"), "{}", run.stderr);

    // When the client goes away, the command's processes are killed.
    let mut background = server.spawn(&admin, &exec_args("stg", &["sh", "-c", "sleep 600 & echo $!; wait"]));
    let pid: u32 = background.wait_for_line(Pipe::Stdout, "", Duration::from_secs(30)).trim().parse().unwrap();
    assert!(alive(pid), "sleep runs");
    drop(background);
    server.eventually("the command's processes to be killed", || (!alive(pid)).then_some(()));

    // Every exec is audited with its command line, and its end with the exit code; secret
    // values never appear.
    let entries = server.eventually("the last exec's end in the audit log", || {
        let entries = audit(&server);
        entries
            .iter()
            .any(|e| e["action"] == "service.exec.exit" && e["details"]["ended"] == "client_gone")
            .then_some(entries)
    });
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains(SECRET), "a secret value is in the audit log");
    let started: Vec<&Value> = entries.iter().filter(|e| e["action"] == "service.exec").collect();
    let seven = started
        .iter()
        .find(|e| {
            e["details"]["command"]
                == serde_json::json!([
                    "sh",
                    "-c",
                    "echo $PLINTH_SERVICE $PLINTH_ENV $PLINTH_IMAGE_APP; echo err >&2; exit 7"
                ])
        })
        .unwrap_or_else(|| panic!("no service.exec for the exit 7 script in {started:#?}"));
    assert_eq!(
        (&seven["actor"], &seven["object"], &seven["result"]),
        (&Value::from("admin"), &Value::from("service/api/stg"), &Value::from("ok"))
    );
    let id = seven["details"]["exec"].as_str().unwrap();
    let ended = entries
        .iter()
        .find(|e| e["action"] == "service.exec.exit" && e["details"]["exec"] == id)
        .unwrap_or_else(|| panic!("no service.exec.exit for {id}"));
    assert_eq!(
        (&ended["result"], &ended["details"]["exit_code"], &ended["details"]["ended"]),
        (&Value::from("exit 7"), &Value::from(7), &Value::from("exited"))
    );
    let masked =
        started.iter().find(|e| e["details"]["command"][2].as_str().is_some_and(|c| c.contains("token="))).unwrap();
    assert!(masked["details"]["command"][2].as_str().unwrap().contains("= *** ]"), "{masked:#}");
    let handed = entries
        .iter()
        .find(|e| {
            e["action"] == "secret.hand"
                && e["object"].as_str().is_some_and(|o| o.starts_with("instance/api-stg-exec-"))
        })
        .unwrap_or_else(|| panic!("the secret's handing to an exec is not audited"));
    assert_eq!(handed["details"]["secrets"][0]["name"], "API_TOKEN");
    assert!(
        started.iter().any(|e| e["actor"] == "ci" && e["result"] == "403 auth.forbidden"),
        "the refused exec is audited"
    );

    // When the server stops, the command is stopped too.
    let mut server = server;
    let mut background = server.spawn(&admin, &exec_args("stg", &["sh", "-c", "echo $$; exec sleep 600"]));
    let pid: u32 = background.wait_for_line(Pipe::Stdout, "", Duration::from_secs(30)).trim().parse().unwrap();
    assert!(server.terminate().is_some_and(|s| s.success()), "the server stops cleanly:\n{}", server.log());
    let run = background.finish(Duration::from_secs(30));
    assert_ne!(run.code, 0, "{run:?}");
    assert!(!alive(pid), "the command was stopped with the server");
}

/// Whether a process runs (a zombie does not count).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// A terminal for the client, as a user's: the test holds the master side and types into it.
struct Terminal {
    master: File,
    slave: File,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    fn open(cols: u16, rows: u16) -> Terminal {
        use rustix::pty::OpenptFlags;
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        rustix::pty::grantpt(&master).unwrap();
        rustix::pty::unlockpt(&master).unwrap();
        let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
            .open(std::ffi::OsStr::from_bytes(name.as_bytes()))
            .unwrap();
        resize(&master, cols, rows);
        let master = File::from(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal { master, slave, output }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().unwrap())
    }
}

fn resize(fd: impl std::os::fd::AsFd, cols: u16, rows: u16) {
    let size = rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    rustix::termios::tcsetwinsize(fd, size).unwrap();
}

#[test]
fn exec_with_a_terminal() {
    let (server, ci, _) = setup();
    publish(&server, &ci, "v1");
    let admin = server.admin.clone();
    let terminal = Terminal::open(100, 40);
    let before = rustix::termios::tcgetattr(&terminal.slave).unwrap();
    let spawn = |script: &str| {
        let mut command = server.command(&admin, &["exec", "-it", "api", "--env", "stg", "--", "sh", "-c", script]);
        command.stdin(terminal.stdio()).stdout(terminal.stdio()).stderr(terminal.stdio());
        command.spawn().unwrap()
    };
    let wait_for = |what: &str, child: &mut std::process::Child| {
        server.eventually(&format!("{what:?} on the terminal"), || {
            assert!(
                child.try_wait().unwrap().is_none() || terminal.text().contains(what),
                "plinth ended:\n{}",
                terminal.text()
            );
            terminal.text().contains(what).then_some(())
        });
    };

    // The command runs on a terminal of this terminal's size, and its exit code comes back.
    let mut child = spawn("tty; stty size; echo $TERM; echo done; exit 3");
    let status = server.eventually("plinth to end", || child.try_wait().unwrap());
    server.eventually("the output", || terminal.text().contains("done").then_some(()));
    let text = terminal.text();
    assert_eq!(status.code(), Some(3), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("40 100\r\n"), "{text}");
    // This terminal is back in the mode it had.
    let after = rustix::termios::tcgetattr(&terminal.slave).unwrap();
    assert_eq!(after.local_modes, before.local_modes);
    assert_eq!(after.input_modes, before.input_modes);

    // Keys go through as typed: Ctrl-C interrupts the command on its terminal.
    terminal.output.lock().unwrap().clear();
    let mut child = spawn("echo ready; sleep 30; echo late");
    wait_for("ready", &mut child);
    let mut master = &terminal.master;
    master.write_all(&[3]).unwrap();
    let status = server.eventually("plinth to end", || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(130), "{}", terminal.text());
    assert!(!terminal.text().contains("late"), "{}", terminal.text());

    // A job the command leaves behind in a process group of its own (job control is on, as
    // the command leads a session on its terminal) is killed with the session.
    terminal.output.lock().unwrap().clear();
    let mut child = spawn("set -m; sleep 600 & echo pid=$!; exit 0");
    let status = server.eventually("plinth to end", || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(0), "{}", terminal.text());
    let pid: u32 = server.eventually("the job's pid", || {
        let text = terminal.text();
        let line = text.lines().find_map(|l| l.trim().strip_prefix("pid="))?;
        line.parse().ok()
    });
    server.eventually("the job to be killed", || (!alive(pid)).then_some(()));

    // Size changes follow (SIGWINCH reaches the client from its terminal; sent by hand here,
    // as the test's terminal is not the client's controlling terminal).
    terminal.output.lock().unwrap().clear();
    let mut child = spawn("echo ready; until [ \"$(stty size)\" = '50 120' ]; do sleep 0.05; done; echo resized");
    wait_for("ready", &mut child);
    resize(&terminal.master, 120, 50);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGWINCH).unwrap();
    wait_for("resized", &mut child);
    let status = server.eventually("plinth to end", || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(0), "{}", terminal.text());
}
