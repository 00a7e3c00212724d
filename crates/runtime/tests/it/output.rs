//! Output and environment: lines arrive tagged with the instance and their stream, and the
//! process sees exactly the environment it was given.

use std::collections::BTreeSet;

use plinth_runtime::{Instance, InstanceLine};

use crate::{Lines, Sandbox};

#[tokio::test]
async fn output_lines_arrive_with_the_instance_id_and_stream() {
    let sandbox = Sandbox::new();
    let mut lines = Lines::new();
    let script = "echo hello; echo oops >&2; echo \"instance $PLINTH_INSTANCE\"; exec sleep 300";
    let instance = Instance::start(sandbox.sh("api-stg-12-1", script), lines.take_sender());
    lines.until_all(&["hello", "oops", "instance api-stg-12-1"]).await;

    let pid = instance.pid().unwrap();
    let started = format!("started (pid {pid}, port {})", instance.port());
    let line = |stream, text: &str| InstanceLine { instance: "api-stg-12-1".into(), stream, text: text.into() };
    // The start is announced before any output; the streams are told apart.
    assert_eq!(lines.seen[0], line(InstanceLine::PLINTH, &started));
    // Each stream keeps its own order.
    assert_eq!(lines.texts(InstanceLine::STDOUT), ["hello", "instance api-stg-12-1"]);
    assert!(lines.seen.contains(&line(InstanceLine::STDOUT, "hello")));
    assert!(lines.seen.contains(&line(InstanceLine::STDERR, "oops")));
    assert!(lines.seen.iter().all(|l| l.instance == "api-stg-12-1"));
    assert_eq!(instance.addr().to_string(), format!("127.0.0.1:{}", instance.port()));
    instance.stop(None).await;
}

#[tokio::test]
async fn the_process_sees_exactly_the_environment_it_was_given() {
    let sandbox = Sandbox::new();
    let mut lines = Lines::new();
    // Cargo sets this for the test process; the instance must not inherit it.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    // `env` itself, not a shell, which would add variables of its own.
    let mut spec = sandbox.spec("api-stg-12-1", "env", &[]);
    spec.env.push(("GREETING".into(), "hello world".into()));
    let given: BTreeSet<String> = spec.env.iter().map(|(name, _)| name.clone()).collect();
    let instance = Instance::start(spec, lines.take_sender());
    // Its output is passed on before its exit is announced.
    lines.until_plinth("exited with code 0").await;
    instance.stop(None).await;

    let stdout: Vec<&str> = lines
        .seen
        .iter()
        .take_while(|l| !l.text.starts_with("exited"))
        .filter(|l| l.stream == InstanceLine::STDOUT)
        .map(|l| l.text.as_str())
        .collect();
    let names: BTreeSet<String> = stdout.iter().map(|l| l.split_once('=').unwrap().0.to_owned()).collect();
    assert_eq!(names, given);
    assert!(stdout.contains(&"GREETING=hello world"));
    assert!(stdout.contains(&"PLINTH_INSTANCE=api-stg-12-1"));
    assert!(stdout.contains(&"PLINTH_RELEASE=12"));
}
