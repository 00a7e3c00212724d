//! The process runner with plain `sh` commands: streaming, environment, cancellation, drop,
//! the death of the parent, and process groups left behind.

use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Pid, getpgid};
use plinth_terraform::process::{Ending, Exit, ProcessError, ProcessSpec, run, run_stopping_with};
use plinth_terraform::{Stream, base_env, kill_group};
use tokio::sync::mpsc::unbounded_channel;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{DEADLINE, Harness, Sandbox, alive, env, parent_of, texts, wait_for_pid, wait_until_gone};

fn sh(sandbox: &Sandbox, script: &str, extra: &[(&str, &str)]) -> ProcessSpec {
    let mut env_vars = sandbox.env.clone();
    env_vars.extend(env(extra));
    ProcessSpec { program: "sh".into(), args: vec!["-c".into(), script.into()], dir: sandbox.dir(), env: env_vars }
}

#[tokio::test]
async fn both_streams_arrive_line_by_line() {
    let sandbox = Sandbox::new();
    let h = Harness::new();
    // The last line of each stream has no newline; one line is not UTF-8.
    let script = r"printf 'one\ntwo\n\nbad \377 byte\nlast'; printf 'err1\nerr2' >&2";
    let done = run(&sh(&sandbox, script, &[]), &h.tx, &h.cancel, Duration::from_secs(5), None).await.unwrap();
    assert_eq!(done.exit, Exit::Code(0));
    assert_eq!(done.ending, Ending::Completed);
    let lines = h.lines();
    assert_eq!(texts(&lines, Stream::Stdout), ["one", "two", "", "bad \u{FFFD} byte", "last"]);
    assert_eq!(texts(&lines, Stream::Stderr), ["err1", "err2"]);
}

#[tokio::test]
async fn lines_are_sent_as_they_are_read() {
    let sandbox = Sandbox::new();
    let Harness { tx, rx, cancel } = Harness::new();
    let mut rx = rx.into_inner();
    // The script prints a line, then waits for a file that the test writes only after it has
    // received that line.
    let go = sandbox.path("go");
    let script = format!("echo ready; while [ ! -e '{}' ]; do sleep 0.02; done; echo done", go.display());
    let spec = sh(&sandbox, &script, &[]);
    let running = run(&spec, &tx, &cancel, Duration::from_secs(5), None);
    let watcher = async {
        let first = tokio::time::timeout(crate::DEADLINE, rx.recv()).await.unwrap().unwrap();
        std::fs::write(&go, "").unwrap();
        first
    };
    let (done, first) = tokio::join!(running, watcher);
    assert_eq!(done.unwrap().exit, Exit::Code(0));
    assert_eq!(first.text, "ready");
    assert_eq!(rx.recv().await.unwrap().text, "done");
}

#[tokio::test]
async fn exit_codes_and_signals_are_reported() {
    let sandbox = Sandbox::new();
    let h = Harness::new();
    let grace = Duration::from_secs(5);
    let done = run(&sh(&sandbox, "exit 3", &[]), &h.tx, &h.cancel, grace, None).await.unwrap();
    assert_eq!(done.exit, Exit::Code(3));
    let done = run(&sh(&sandbox, "kill -TERM $$", &[]), &h.tx, &h.cancel, grace, None).await.unwrap();
    assert_eq!(done.exit, Exit::Signal(15));
    assert_eq!(done.ending, Ending::Completed);
}

#[tokio::test]
async fn the_environment_is_only_what_was_passed() {
    let sandbox = Sandbox::new();
    let h = Harness::new();
    // Cargo sets this for the test process; the child must not inherit it.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let script =
        r#"echo "manifest=${CARGO_MANIFEST_DIR-unset} passed=${PLINTH_PASSED-unset} home=$HOME tf=$TF_IN_AUTOMATION""#;
    let spec = sh(&sandbox, script, &[("PLINTH_PASSED", "yes")]);
    run(&spec, &h.tx, &h.cancel, Duration::from_secs(5), None).await.unwrap();
    let home = sandbox.root.path().join("home");
    assert_eq!(
        texts(&h.lines(), Stream::Stdout),
        [format!("manifest=unset passed=yes home={} tf=1", home.display()).as_str()]
    );
}

#[test]
fn base_env_creates_an_empty_cli_config() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let vars = base_env(&home, &root.path().join("tmp"), &root.path().join("cache")).unwrap();
    let get = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap();
    let config = get("TF_CLI_CONFIG_FILE");
    assert!(config.starts_with(&*home.to_string_lossy()), "{config}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "");
    assert!(root.path().join("cache").is_dir() && root.path().join("tmp").is_dir());
    for (name, value) in
        [("TF_IN_AUTOMATION", "1"), ("TF_INPUT", "0"), ("CHECKPOINT_DISABLE", "1"), ("LANG", "C.UTF-8")]
    {
        assert_eq!(get(name), value, "{name}");
    }
    assert!(!get("PATH").is_empty());
}

#[tokio::test]
async fn cancelling_interrupts_the_group() {
    let sandbox = Sandbox::new();
    let h = Harness::new();
    let pid_file = sandbox.path("pid");
    // The sleep is a grandchild: it only stops because the whole group gets SIGINT.
    let script = format!("sh -c 'echo $$ > \"{}\"; exec sleep 30'; echo not reached", pid_file.display());
    let spec = sh(&sandbox, &script, &[]);
    let grace = Duration::from_secs(5);
    let canceller = async {
        let pid = wait_for_pid(&pid_file).await;
        h.cancel.cancel();
        (pid, Instant::now())
    };
    let (done, (pid, cancelled_at)) = tokio::join!(run(&spec, &h.tx, &h.cancel, grace, None), canceller);
    let done = done.unwrap();
    assert!(cancelled_at.elapsed() < grace, "took {:?}", cancelled_at.elapsed());
    assert_eq!(done.ending, Ending::Interrupted);
    assert_eq!(done.exit, Exit::Signal(2));
    wait_until_gone(pid).await;
}

#[tokio::test]
async fn cancelling_with_another_stop_signal_sends_that_signal() {
    let sandbox = Sandbox::new();
    let h = Harness::new();
    let pid_file = sandbox.path("pid");
    // A service that shuts down cleanly on SIGTERM and would die of SIGINT. The shell waits on
    // a background sleep so that the trap runs as soon as the signal arrives.
    let script = format!(
        r#"trap 'echo got TERM; exit 0' TERM; trap 'echo got INT; exit 1' INT; sleep 30 & echo $$ > '{}'; wait"#,
        pid_file.display()
    );
    let spec = sh(&sandbox, &script, &[]);
    let grace = Duration::from_secs(5);
    let canceller = async {
        let pid = wait_for_pid(&pid_file).await;
        h.cancel.cancel();
        pid
    };
    let (done, pid) = tokio::join!(run_stopping_with(&spec, &h.tx, &h.cancel, Signal::SIGTERM, grace, None), canceller);
    let done = done.unwrap();
    assert_eq!(done.ending, Ending::Interrupted);
    assert_eq!(done.exit, Exit::Code(0));
    assert_eq!(texts(&h.lines(), Stream::Stdout), ["got TERM"]);
    wait_until_gone(pid).await;
}

#[tokio::test]
async fn a_group_that_ignores_sigint_is_killed_after_the_grace_period() {
    let sandbox = Sandbox::new();
    let h = Harness::new();
    let pid_file = sandbox.path("pid");
    let script = format!("trap '' INT; sleep 30 & echo $! > '{}'; wait", pid_file.display());
    let spec = sh(&sandbox, &script, &[]);
    let grace = Duration::from_millis(500);
    let canceller = async {
        let pid = wait_for_pid(&pid_file).await;
        h.cancel.cancel();
        (pid, Instant::now())
    };
    let (done, (pid, cancelled_at)) = tokio::join!(run(&spec, &h.tx, &h.cancel, grace, None), canceller);
    let done = done.unwrap();
    let took = cancelled_at.elapsed();
    assert!(took >= grace && took < grace + Duration::from_secs(3), "took {took:?}");
    assert_eq!(done.ending, Ending::Killed);
    assert_eq!(done.exit, Exit::Signal(9));
    wait_until_gone(pid).await;
}

#[tokio::test]
async fn dropping_the_future_kills_the_group() {
    let sandbox = Sandbox::new();
    let h = Harness::new();
    let pid_file = sandbox.path("pid");
    let script = format!("trap '' INT TERM; sleep 30 & echo $! > '{}'; wait", pid_file.display());
    let spec = sh(&sandbox, &script, &[]);
    let pid = tokio::select! {
        done = run(&spec, &h.tx, &h.cancel, Duration::from_secs(5), None) => panic!("finished early: {done:?}"),
        pid = wait_for_pid(&pid_file) => pid,
    };
    // `select!` has dropped the run.
    wait_until_gone(pid).await;
    assert!(!alive(pid));
}

#[tokio::test]
async fn leftovers_in_the_group_are_killed_when_the_process_exits() {
    let sandbox = Sandbox::new();
    let h = Harness::new();
    let pid_file = sandbox.path("pid");
    // The background sleep keeps stdout open; the run must still end.
    let script = format!("sleep 30 & echo $! > '{}'", pid_file.display());
    let started = Instant::now();
    let done = run(&sh(&sandbox, &script, &[]), &h.tx, &h.cancel, Duration::from_secs(5), None).await.unwrap();
    assert_eq!(done.exit, Exit::Code(0));
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    wait_until_gone(wait_for_pid(&pid_file).await).await;
}

#[tokio::test]
async fn missing_programs_and_directories_are_told_apart() {
    let sandbox = Sandbox::new();
    let h = Harness::new();
    let mut spec = sh(&sandbox, "true", &[]);
    spec.program = "plinth-no-such-program".into();
    let err = run(&spec, &h.tx, &h.cancel, Duration::from_secs(1), None).await.unwrap_err();
    assert!(matches!(&err, ProcessError::NotFound { program } if program == "plinth-no-such-program"), "{err:?}");

    let mut spec = sh(&sandbox, "true", &[]);
    spec.dir = sandbox.path("nope");
    let err = run(&spec, &h.tx, &h.cancel, Duration::from_secs(1), None).await.unwrap_err();
    assert!(matches!(&err, ProcessError::NoDir { .. }), "{err:?}");
}

/// Set on the copy of this test binary that [`the_child_dies_with_its_parent`] starts: the copy
/// then plays the parent, and its child writes its pid to the file this names.
const PARENT_PID_FILE: &str = "PLINTH_TEST_PARENT_PID_FILE";

/// What the test harness calls [`the_child_dies_with_its_parent`], for running only it.
const PARENT_TEST: &str = "process::the_child_dies_with_its_parent";

#[tokio::test]
async fn the_child_dies_with_its_parent() {
    if let Some(pid_file) = std::env::var_os(PARENT_PID_FILE) {
        return play_the_parent(Path::new(&pid_file)).await;
    }
    let sandbox = Sandbox::new();
    let pid_file = sandbox.path("pid");
    let log_path = sandbox.path("parent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut parent = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", PARENT_TEST])
        .env(PARENT_PID_FILE, &pid_file)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let parent_pid = i32::try_from(parent.id().unwrap()).unwrap();
    let child = tokio::select! {
        pid = wait_for_pid(&pid_file) => pid,
        status = parent.wait() => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("the parent ended before its child started ({status:?}):\n{log}");
        }
    };
    assert_eq!(parent_of(child), parent_pid);

    // SIGKILL: the parent runs no destructor, so only the kernel can kill the child now.
    parent.start_kill().unwrap();
    let status = tokio::time::timeout(DEADLINE, parent.wait()).await.unwrap().unwrap();
    assert_eq!(status.signal(), Some(9));
    wait_until_gone(child).await;
}

/// The parent's side of [`the_child_dies_with_its_parent`]: runs a long `sleep` as a child
/// until it is killed.
async fn play_the_parent(pid_file: &Path) {
    let path = std::env::var("PATH").unwrap();
    let spec = ProcessSpec {
        program: "sh".into(),
        args: vec!["-c".into(), format!("echo $$ > '{}'; exec sleep 60", pid_file.display())],
        dir: pid_file.parent().unwrap().to_owned(),
        env: env(&[("PATH", &path)]),
    };
    let (tx, _rx) = unbounded_channel();
    let done = run(&spec, &tx, &CancellationToken::new(), Duration::from_secs(5), None).await;
    panic!("the parent was not killed while its child ran: {done:?}");
}

#[tokio::test]
async fn the_process_group_is_reported_as_the_process_starts() {
    let sandbox = Sandbox::new();
    let h = Harness::new();
    let reported = Mutex::new(Vec::new());
    let on_spawn = |pid: u32| {
        // The process has not been reaped yet, so its group can still be looked up.
        let pgid = getpgid(Some(Pid::from_raw(i32::try_from(pid).unwrap()))).unwrap();
        reported.lock().unwrap().push((pid, pgid.as_raw()));
    };
    let spec = sh(&sandbox, "echo $$", &[]);
    let done = run(&spec, &h.tx, &h.cancel, Duration::from_secs(5), Some(&on_spawn)).await.unwrap();
    assert_eq!(done.exit, Exit::Code(0));
    let lines = h.lines();
    let shell: i32 = texts(&lines, Stream::Stdout)[0].parse().unwrap();
    assert_eq!(*reported.lock().unwrap(), [(u32::try_from(shell).unwrap(), shell)]);
}

#[tokio::test]
async fn a_group_left_behind_is_killed_by_its_id() {
    let sandbox = Sandbox::new();
    let pid_file = sandbox.path("pid");
    // A group like one a run leaves when its owner dies: the runner is not used, because it
    // would kill the group itself when the leader exits.
    let script = format!("sleep 60 & echo $! > '{}'; wait", pid_file.display());
    let mut leader = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let grandchild = wait_for_pid(&pid_file).await;
    assert!(kill_group(leader.id().unwrap()));
    let status = tokio::time::timeout(DEADLINE, leader.wait()).await.unwrap().unwrap();
    assert_eq!(status.signal(), Some(9));
    wait_until_gone(grandchild).await;

    // Pids stay below 2^22, so no group has this id.
    assert!(!kill_group(i32::MAX.unsigned_abs()));
}
