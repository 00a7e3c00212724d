//! The client commands when they cannot talk to a server: no token, nobody listening, a URL
//! that is not one, and usage errors. Each error has its code and advice on stderr (JSON with
//! `--output json`), and the exit code scripts rely on.

use std::net::{TcpListener, TcpStream};

use crate::Run;
use crate::server::{output_of, plinth_command};

/// A local URL where nobody listens, and nobody can start listening while it is held: its port
/// is the local end of a connection this test keeps open, so connecting to it is refused.
#[derive(Debug)]
struct Unreachable {
    url: String,
    _held: (TcpListener, TcpStream),
}

fn unreachable() -> Unreachable {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let url = format!("http://127.0.0.1:{}", stream.local_addr().unwrap().port());
    Unreachable { url, _held: (listener, stream) }
}

/// Every client command, with the arguments it needs.
const COMMANDS: &[&[&str]] = &[
    &["runs", "list"],
    &["runs", "show", "1"],
    &["runs", "logs", "1"],
    &["runs", "logs", "1", "--follow"],
    &["runs", "approve", "1"],
    &["runs", "reject", "1"],
    &["runs", "cancel", "1"],
    &["runs", "wait", "1"],
    &["runs", "unlock", "app/stg"],
    &["plan", "--ref", "main"],
    &["stacks", "list"],
    &["stacks", "unlock", "app/stg"],
    &["tokens", "create", "--name", "ci", "--role", "ci", "--service", "api"],
    &["tokens", "list"],
    &["tokens", "revoke", "ci"],
    &["audit"],
    &["secrets", "set", "X_TOKEN", "--env", "stg"],
    &["secrets", "list"],
    &["secrets", "rm", "X_TOKEN", "--env", "stg"],
    &["secrets", "rotate-master-key"],
    &["release", "list", "--service", "api", "--env", "stg"],
];

fn with_output_json(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).chain(["--output".to_owned(), "json".to_owned()]).collect()
}

fn run(server: Option<&str>, token: Option<&str>, args: &[&str]) -> Run {
    output_of(plinth_command(server, token, args))
}

/// Checks the text form: `error[code]: message` then `  help: ...`, nothing on stdout.
#[track_caller]
fn assert_text_error(run: &Run, code: &str) -> String {
    assert_eq!(run.code, 1, "expected exit 1:\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    let mut lines = run.stderr.lines();
    let first = lines.next().unwrap_or_default();
    let prefix = format!("error[{code}]: ");
    assert!(first.starts_with(&prefix), "expected {prefix:?}:\n{}", run.stderr);
    let help = lines.next().unwrap_or_default();
    assert!(help.starts_with("  help: ") && help.len() > 10, "no help line:\n{}", run.stderr);
    first[prefix.len()..].to_owned()
}

/// Checks the JSON form: one object on stderr with code, message and help, nothing on stdout.
#[track_caller]
fn assert_json_error(run: &Run, code: &str) {
    assert_eq!(run.code, 1, "expected exit 1:\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    let error = run.json_error();
    assert_eq!(error["code"], code, "{}", run.stderr);
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", run.stderr);
    assert!(error["help"].as_str().is_some_and(|h| !h.is_empty()), "{}", run.stderr);
}

#[test]
fn without_a_token_nothing_is_sent() {
    // Nobody listens there: the error comes before any request.
    let nobody = unreachable();
    let server = nobody.url.as_str();
    for args in COMMANDS {
        let text = run(Some(server), None, args);
        let message = assert_text_error(&text, "client.no_token");
        assert_eq!(message, "no API token given");
        assert!(text.stderr.contains("PLINTH_TOKEN"), "{}", text.stderr);
        let json = with_output_json(args);
        let json: Vec<&str> = json.iter().map(String::as_str).collect();
        assert_json_error(&run(Some(server), None, &json), "client.no_token");
    }
    // An empty token is no token.
    let empty = run(Some(server), Some(""), &["runs", "list"]);
    assert_text_error(&empty, "client.no_token");
    let empty = run(None, None, &["runs", "list", "--server", server, "--token", ""]);
    assert_text_error(&empty, "client.no_token");
}

#[test]
fn a_server_that_is_not_running_is_unreachable() {
    let nobody = unreachable();
    let url = nobody.url.as_str();
    for args in COMMANDS {
        let text = run(Some(url), Some("plinth_not_a_real_token"), args);
        let message = assert_text_error(&text, "client.unreachable");
        assert!(message.starts_with(&format!("could not reach the plinth server at {url}: ")), "{message}");
        assert!(text.stderr.contains("plinth server"), "{}", text.stderr);
        let json = with_output_json(args);
        let json: Vec<&str> = json.iter().map(String::as_str).collect();
        assert_json_error(&run(Some(url), Some("plinth_not_a_real_token"), &json), "client.unreachable");
    }
    // The same through flags instead of the environment, which the flags override.
    let flags = run(
        Some("http://127.0.0.1:9"),
        Some("ignored"),
        &["runs", "list", "--server", url, "--token", "plinth_not_a_real_token"],
    );
    let message = assert_text_error(&flags, "client.unreachable");
    assert!(message.contains(url), "{message}");
    // The token never shows in an error.
    assert!(!flags.stderr.contains("plinth_not_a_real_token"), "{}", flags.stderr);
}

#[test]
fn a_server_url_that_is_not_http_is_refused() {
    for url in ["127.0.0.1:8080", "localhost", "ftp://127.0.0.1:8080", "file:///tmp/plinth"] {
        let text = run(Some(url), Some("plinth_x"), &["runs", "list"]);
        let message = assert_text_error(&text, "client.bad_server");
        assert!(message.starts_with(&format!("`{url}` is not an http:// or https:// URL")), "{message}");
        assert_json_error(
            &run(Some(url), Some("plinth_x"), &["runs", "list", "--output", "json"]),
            "client.bad_server",
        );
        let flag = run(None, None, &["stacks", "list", "--server", url, "--token", "plinth_x", "--output", "json"]);
        assert_json_error(&flag, "client.bad_server");
    }
    // A bad URL is reported before a missing token.
    assert_text_error(&run(Some("localhost:8080"), None, &["audit"]), "client.bad_server");
}

#[test]
fn usage_errors_exit_2() {
    let nobody = unreachable();
    for args in [
        &["runs", "wait", "abc"][..],
        &["runs", "wait", "1", "--timeout", "soon"],
        &["runs", "list", "--output", "yaml"],
        &["runs", "show"],
        &["runs", "frobnicate"],
        &["plan", "--stack", "app/stg"],
        &["tokens", "create", "--name", "ci"],
        &["runs", "unlock", "app/stg", "--workspace", "blue"],
    ] {
        let usage = run(Some(&nobody.url), Some("plinth_x"), args);
        assert_eq!(usage.code, 2, "{args:?}:\nstdout:\n{}\nstderr:\n{}", usage.stdout, usage.stderr);
        assert!(usage.stderr.starts_with("error: "), "{args:?}: {}", usage.stderr);
        assert!(usage.stdout.is_empty(), "{args:?}: {}", usage.stdout);
    }
}
