//! Health: the states an instance goes through, the pure rules that move it between them
//! (consecutive passes and failures, exits, crash loops), and the plain HTTP/1.1 probe over a
//! loopback TCP connection that feeds them.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// Where an instance stands.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    /// Started, and not yet passed `healthy` checks in a row. Checks that get no answer (the app
    /// is not listening yet) keep it here until the caller's deadline; `unhealthy` answers in a
    /// row with a failing status make it unhealthy at once: the app is up and says it is not
    /// well, and waiting longer would only delay a rollback.
    Starting,
    /// Passed `healthy` checks in a row, and has not failed `unhealthy` in a row since: it can
    /// take traffic.
    Healthy,
    /// Failed `unhealthy` checks in a row after it was healthy, or exited. It becomes healthy
    /// again after `healthy` passes in a row.
    Unhealthy { reason: String },
    /// Exited `crash_loop_after` times within `crash_loop_window`. It is still restarted, and
    /// becomes healthy again after `healthy` passes in a row.
    CrashLoop { reason: String },
    /// Stopped for good: by [`Instance::stop`](crate::Instance::stop), or because every handle
    /// was dropped.
    Stopped,
}

impl Health {
    /// Whether the instance can take traffic.
    pub fn is_healthy(&self) -> bool {
        *self == Health::Healthy
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Starting => f.write_str("starting"),
            Health::Healthy => f.write_str("healthy"),
            Health::Unhealthy { reason } => write!(f, "unhealthy: {reason}"),
            Health::CrashLoop { reason } => write!(f, "crash loop: {reason}"),
            Health::Stopped => f.write_str("stopped"),
        }
    }
}

/// The result of one check: `Err` says why it failed.
pub(crate) type CheckResult = Result<(), String>;

/// The rules that turn checks and exits into a [`Health`].
#[derive(Debug)]
pub(crate) struct Tracker {
    state: Health,
    passes: u32,
    failures: u32,
    /// Failing answers in a row while starting (checks that got no answer do not count).
    answered_failures: u32,
}

impl Tracker {
    pub(crate) fn new() -> Self {
        Self { state: Health::Starting, passes: 0, failures: 0, answered_failures: 0 }
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> &Health {
        &self.state
    }

    /// Counts one check; returns the new state if it changed. `healthy` and `unhealthy` are
    /// the thresholds of [`HealthCheck`](crate::HealthCheck) (0 counts as 1).
    #[cfg(test)]
    pub(crate) fn check(&mut self, result: &CheckResult, healthy: u32, unhealthy: u32) -> Option<Health> {
        self.check_answered(result, false, healthy, unhealthy)
    }

    /// [`Tracker::check`], saying whether a failed check got an HTTP answer (with a failing
    /// status) rather than none.
    pub(crate) fn check_answered(
        &mut self,
        result: &CheckResult,
        answered: bool,
        healthy: u32,
        unhealthy: u32,
    ) -> Option<Health> {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.answered_failures = 0;
                self.passes = self.passes.saturating_add(1);
                let waiting = !matches!(self.state, Health::Healthy | Health::Stopped);
                (waiting && self.passes >= healthy.max(1)).then(|| self.enter(Health::Healthy))
            }
            Err(why) => {
                self.passes = 0;
                self.failures = self.failures.saturating_add(1);
                if answered {
                    self.answered_failures = self.answered_failures.saturating_add(1);
                }
                if self.state == Health::Starting && answered && self.answered_failures >= unhealthy.max(1) {
                    let reason = format!(
                        "{} health check(s) in a row answered with a failure; the last: {why}",
                        self.answered_failures
                    );
                    return Some(self.enter(Health::Unhealthy { reason }));
                }
                // Only a healthy instance becomes unhealthy through checks: a starting one is
                // given until its caller's deadline, and one that exited already says why.
                (self.state == Health::Healthy && self.failures >= unhealthy.max(1)).then(|| {
                    let reason = match self.failures {
                        1 => format!("a health check failed: {why}"),
                        n => format!("{n} health checks failed in a row; the last: {why}"),
                    };
                    self.enter(Health::Unhealthy { reason })
                })
            }
        }
    }

    /// The process exited (or could not start) for `reason`; returns the new state.
    pub(crate) fn exited(&mut self, reason: String, crash_loop: bool) -> Health {
        self.passes = 0;
        self.failures = 0;
        if crash_loop { self.enter(Health::CrashLoop { reason }) } else { self.enter(Health::Unhealthy { reason }) }
    }

    /// Stopped for good.
    pub(crate) fn stopped(&mut self) -> Health {
        self.enter(Health::Stopped)
    }

    fn enter(&mut self, state: Health) -> Health {
        self.state = state.clone();
        state
    }
}

/// The longest status line read; a longer one fails the check.
const MAX_STATUS_LINE: usize = 1024;

/// The most of an answer read after its status line, so that the server can finish writing
/// before the connection closes; the rest is dropped.
const MAX_DRAIN: usize = 64 * 1024;

/// One check: `GET {path} HTTP/1.1` to `127.0.0.1:{port}` with `Connection: close`. Passes on
/// a 2xx or 3xx status; fails on any other status, on a connection or read error, or when no
/// status line arrived within `timeout`. Never takes much longer than `timeout`.
#[cfg(test)]
pub(crate) async fn probe(port: u16, path: &str, timeout: Duration) -> CheckResult {
    probe_answered(port, path, timeout).await.0
}

/// [`probe`], and whether the failure (if any) was an HTTP answer with a failing status.
pub(crate) async fn probe_answered(port: u16, path: &str, timeout: Duration) -> (CheckResult, bool) {
    let result = probe_inner(port, path, timeout).await;
    match result {
        Ok(None) => (Ok(()), false),
        Ok(Some(why)) => (Err(why), true),
        Err(why) => (Err(why), false),
    }
}

/// `Ok(None)` passed, `Ok(Some(why))` answered with a failing status, `Err` got no answer.
async fn probe_inner(port: u16, path: &str, timeout: Duration) -> Result<Option<String>, String> {
    if !valid_path(path) {
        return Err(format!(
            "the health check path {path:?} is not a request path (it must start with `/` and hold no spaces or control characters)"
        ));
    }
    let deadline = later(Instant::now(), timeout);
    let (status, mut stream) = match timeout_at(deadline, request(port, path)).await {
        Ok(answer) => answer?,
        Err(_) => return Err(format!("GET {path} got no answer within {timeout:?}")),
    };
    let verdict = if (200..400).contains(&status) { None } else { Some(format!("GET {path} answered {status}")) };
    // Read the rest of the answer while time is left, so that closing early does not make the
    // server see a reset; the verdict is already known.
    let _ = timeout_at(deadline, drain(&mut stream)).await;
    Ok(verdict)
}

/// Sends the request and reads the status code; the stream is returned for draining.
async fn request(port: u16, path: &str) -> Result<(u16, TcpStream), String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| format!("could not connect to 127.0.0.1:{port}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: plinth-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("sending GET {path} failed: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    loop {
        if let Some(end) = head.iter().position(|&b| b == b'\n') {
            return match parse_status(&head[..end]) {
                Some(status) => Ok((status, stream)),
                None => {
                    let line = String::from_utf8_lossy(&head[..end.min(80)]).into_owned();
                    Err(format!("GET {path} got an answer that is not HTTP: {:?}", line.trim_end()))
                }
            };
        }
        if head.len() > MAX_STATUS_LINE {
            return Err(format!("GET {path} got a status line longer than {MAX_STATUS_LINE} bytes"));
        }
        let n = stream.read(&mut buf).await.map_err(|e| format!("reading the answer to GET {path} failed: {e}"))?;
        if n == 0 {
            return Err(format!("GET {path}: the connection closed before a status line arrived"));
        }
        head.extend_from_slice(&buf[..n]);
    }
}

async fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let mut read = 0;
    while read < MAX_DRAIN {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
}

/// `by` after `from`, or about thirty years from it if that cannot be represented (a huge
/// interval or timeout in a spec must not panic).
pub(crate) fn later(from: Instant, by: Duration) -> Instant {
    from.checked_add(by).unwrap_or_else(|| from + Duration::from_secs(30 * 365 * 24 * 60 * 60))
}

/// Whether `path` can be sent as a request target as it is.
fn valid_path(path: &str) -> bool {
    path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic())
}

/// The status code of an HTTP/1.x status line such as `HTTP/1.1 200 OK` (with or without its
/// `\r`).
fn parse_status(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.trim_end_matches('\r').splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read() {
        let cases: &[(&[u8], Option<u16>)] = &[
            (b"HTTP/1.1 200 OK\r", Some(200)),
            (b"HTTP/1.0 404 File not found", Some(404)),
            (b"HTTP/1.1 302 ", Some(302)),
            (b"HTTP/1.1 204", Some(204)),
            (b"HTTP/2 200 OK", None),
            (b"HTTP/1.1 2000 OK", None),
            (b"HTTP/1.1 +20 OK", None),
            (b"SSH-2.0-OpenSSH_9.6", None),
            (b"", None),
            (b"HTTP/1.1 \xff\xfe", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_status(line), *want, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn only_plain_paths_are_sent() {
        let cases = [
            ("/healthz", true),
            ("/health?full=1", true),
            ("/", true),
            ("healthz", false),
            ("", false),
            ("/a b", false),
            ("/a\r\nHost: evil", false),
            ("/caf\u{e9}", false),
        ];
        for (path, want) in cases {
            assert_eq!(valid_path(path), want, "{path:?}");
        }
    }

    #[tokio::test]
    async fn odd_specs_fail_checks_instead_of_panicking() {
        let err = probe(1, "/a\r\nX: y", Duration::from_secs(1)).await.unwrap_err();
        assert!(err.starts_with("the health check path \"/a\\r\\nX: y\" is not a request path"), "{err}");
        // Nothing listens on port 1; a timeout too large for the clock must not overflow it.
        let err = probe(1, "/healthz", Duration::MAX).await.unwrap_err();
        assert!(err.starts_with("could not connect to 127.0.0.1:1: "), "{err}");
        assert!(probe(1, "/healthz", Duration::ZERO).await.is_err());
    }

    fn pass() -> CheckResult {
        Ok(())
    }

    fn fail() -> CheckResult {
        Err("GET /healthz answered 500".into())
    }

    #[test]
    fn a_starting_instance_that_answers_failures_is_unhealthy_at_once_but_silence_waits() {
        let mut t = Tracker::new();
        // Not listening yet: however many, the caller's deadline decides.
        for _ in 0..10 {
            assert_eq!(t.check_answered(&Err("could not connect".into()), false, 2, 3), None);
        }
        assert_eq!(t.check_answered(&fail(), true, 2, 3), None);
        assert_eq!(t.check_answered(&fail(), true, 2, 3), None);
        let Some(Health::Unhealthy { reason }) = t.check_answered(&fail(), true, 2, 3) else {
            panic!("{:?}", t.state())
        };
        assert!(reason.starts_with("3 health check(s) in a row answered with a failure"), "{reason}");
        // It can still recover.
        assert_eq!(t.check_answered(&pass(), false, 2, 3), None);
        assert_eq!(t.check_answered(&pass(), false, 2, 3), Some(Health::Healthy));
    }

    #[test]
    fn checks_move_the_state_after_enough_in_a_row() {
        // Steps: 'p' pass, 'f' fail, 'x' exit, 'c' exit in a crash loop; with healthy = 2 and
        // unhealthy = 3, the state after each step (S starting, H healthy, U unhealthy,
        // C crash loop).
        let cases = [
            ("p", "S"),
            ("pp", "SH"),
            ("fffpp", "SSSSH"),
            ("pfp", "SSS"),
            ("ppfff", "SHHHU"),
            ("ppffpfff", "SHHHHHHU"),
            ("ppfffp", "SHHHUU"),
            ("ppfffpp", "SHHHUUH"),
            ("ppx", "SHU"),
            ("xpp", "UUH"),
            ("ppfffffff", "SHHHUUUUU"),
            ("xc", "UC"),
            ("cfpp", "CCCH"),
            ("pxp", "SUU"),
        ];
        for (steps, want) in cases {
            let mut tracker = Tracker::new();
            let got: String = steps
                .chars()
                .map(|step| {
                    match step {
                        'p' => drop(tracker.check(&pass(), 2, 3)),
                        'f' => drop(tracker.check(&fail(), 2, 3)),
                        'x' => drop(tracker.exited("exited with code 1".into(), false)),
                        _ => drop(tracker.exited("exited with code 1".into(), true)),
                    }
                    match tracker.state() {
                        Health::Starting => 'S',
                        Health::Healthy => 'H',
                        Health::Unhealthy { .. } => 'U',
                        Health::CrashLoop { .. } => 'C',
                        Health::Stopped => '-',
                    }
                })
                .collect();
            assert_eq!(got, want, "steps {steps}");
        }
    }

    #[test]
    fn changes_are_reported_once_with_their_reason() {
        let mut tracker = Tracker::new();
        assert_eq!(tracker.check(&pass(), 1, 2), Some(Health::Healthy));
        assert_eq!(tracker.check(&pass(), 1, 2), None);
        assert_eq!(tracker.check(&fail(), 1, 2), None);
        let Some(Health::Unhealthy { reason }) = tracker.check(&fail(), 1, 2) else { panic!("{tracker:?}") };
        assert_eq!(reason, "2 health checks failed in a row; the last: GET /healthz answered 500");
        assert_eq!(tracker.check(&fail(), 1, 2), None);
        // Thresholds of 0 count as 1.
        let mut tracker = Tracker::new();
        assert_eq!(tracker.check(&pass(), 0, 0), Some(Health::Healthy));
        let Some(Health::Unhealthy { reason }) = tracker.check(&fail(), 0, 0) else { panic!("{tracker:?}") };
        assert_eq!(reason, "a health check failed: GET /healthz answered 500");
        // Nothing moves a stopped instance.
        assert_eq!(tracker.stopped(), Health::Stopped);
        assert_eq!(tracker.check(&pass(), 1, 1), None);
        assert_eq!(tracker.state(), &Health::Stopped);
    }
}
