//! `plinth exec SERVICE --env ENV [-i] [-t] -- COMMAND [ARG…]`: a one-off command run by the
//! server with the service's environment, secrets and current release. Stdin is streamed to it
//! until it ends, its stdout and stderr come back as they are written, and plinth exits with
//! its exit code. `-t` runs it on a terminal, with this one in raw mode and its size followed.

use std::io::{IsTerminal, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use plinth_server::exec::{Frame, PROTOCOL, TermSize};

use super::Outcome;
use crate::client::{Client, Connection, Upgraded, segment};
use crate::output::{Failure, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    /// The service whose environment, secrets and current release the command gets.
    service: String,
    /// The environment: the service's settings, secrets and current release there.
    #[arg(long = "env")]
    environment: String,
    /// Stream stdin to the command. It always is, until it ends; the flag is accepted so that
    /// `-it` reads as it does for docker and kubectl.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Run the command on a terminal (a PTY on the server), with this terminal in raw mode
    /// until it ends. Needs stdin to be a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// How plinth's own errors are printed; the command's output passes through as it is.
    #[arg(long, value_enum, default_value_t)]
    output: Format,
    /// The program and its arguments, after `--`. No shell: use `sh -c '…'` for one.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// 128 + SIGPIPE: what a command gets when the reader of its output goes away.
const BROKEN_PIPE: i32 = 141;

pub fn run(args: Args) -> Outcome {
    let format = args.output;
    let client = Client::new(&args.connection, format)?;
    if args.tty && !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            "exec.not_a_terminal",
            "-t needs stdin to be a terminal, and it is not one",
            "Drop -t: the command then runs with pipes, and stdin is still streamed to it.",
            format,
        ));
    }
    let mut query = vec![("tty", args.tty.to_string())];
    if args.tty {
        if let Some(size) = terminal_size() {
            query.push(("cols", size.cols.to_string()));
            query.push(("rows", size.rows.to_string()));
        }
        if let Some(term) = std::env::var_os("TERM").and_then(|t| t.into_string().ok()) {
            query.push(("term", term));
        }
    }
    query.extend(args.command.iter().map(|a| ("arg", a.clone())));
    let path = format!("/api/v1/services/{}/environments/{}/exec", segment(&args.service), segment(&args.environment));
    let Upgraded { reader, writer } = client.upgrade(&path, &query, PROTOCOL)?;
    let raw = if args.tty {
        Some(RawMode::enter().map_err(|e| {
            Failure::new(
                "exec.terminal",
                format!("could not put the terminal in raw mode: {e}"),
                "Run without -t.",
                format,
            )
        })?)
    } else {
        None
    };
    let writer = Arc::new(Mutex::new(writer));
    stream_stdin(writer.clone());
    if args.tty {
        follow_size(writer);
    }
    let code = pump(reader, args.tty, format);
    // Back to the terminal's own mode before anything else is printed.
    drop(raw);
    let code = code?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Sends one frame; false once the connection is gone.
fn send(writer: &Mutex<TcpStream>, frame: &Frame) -> bool {
    let mut stream = writer.lock().unwrap_or_else(|e| e.into_inner());
    stream.write_all(&frame.encode()).is_ok()
}

/// Streams stdin to the command on a thread of its own, until it ends. The thread is not
/// joined: when the command ends, plinth exits, even while the thread waits for input.
fn stream_stdin(writer: Arc<Mutex<TcpStream>>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if !send(&writer, &Frame::Stdin(buf[..n].to_vec())) {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        send(&writer, &Frame::StdinEof);
    });
}

/// Sends the terminal's size whenever it changes (SIGWINCH), on a thread of its own.
fn follow_size(writer: Arc<Mutex<TcpStream>>) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut changes) = signal(SignalKind::window_change()) else { return };
            while changes.recv().await.is_some() {
                if let Some(size) = terminal_size()
                    && !send(&writer, &Frame::Resize { cols: size.cols, rows: size.rows })
                {
                    return;
                }
            }
        });
    });
}

/// Passes the command's output on until its exit code comes; returns that code.
fn pump(mut reader: impl Read, tty: bool, format: Format) -> Result<i32, Failure> {
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        match Frame::read_from(&mut reader) {
            Ok(Some(Frame::Stdout(data))) => {
                if stdout.write_all(&data).and_then(|()| stdout.flush()).is_err() {
                    return Ok(BROKEN_PIPE);
                }
            }
            Ok(Some(Frame::Stderr(data))) => {
                let _ = stderr.write_all(&data).and_then(|()| stderr.flush());
            }
            Ok(Some(Frame::Error(message))) => {
                // In raw mode a line ends with CR LF, and the cursor may be mid-line.
                let (start, end) = if tty { ("\r\n", "\r\n") } else { ("", "\n") };
                let _ = write!(stderr, "{start}plinth exec: {message}{end}");
            }
            Ok(Some(Frame::Exit(code))) => return Ok(code),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                return Err(Failure::new(
                    "exec.connection_lost",
                    "the connection to the server ended before the command did",
                    "The server may have stopped or restarted; the command was killed with its connection. Check `plinth audit` for how it ended.",
                    format,
                ));
            }
        }
    }
}

/// The size of the terminal on stdin (or stdout), if it has one.
fn terminal_size() -> Option<TermSize> {
    let size = rustix::termios::tcgetwinsize(std::io::stdin())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdout()))
        .ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some(TermSize { cols: size.ws_col, rows: size.ws_row })
}

/// The terminal on stdin in raw mode (keys pass through as typed, Ctrl-C included, nothing
/// echoed locally), put back as it was when dropped.
struct RawMode {
    original: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> std::io::Result<RawMode> {
        let stdin = std::io::stdin();
        let original = rustix::termios::tcgetattr(&stdin)?;
        let mut raw = original.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw)?;
        Ok(RawMode { original })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, &self.original);
    }
}

impl std::fmt::Debug for RawMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawMode").finish_non_exhaustive()
    }
}
