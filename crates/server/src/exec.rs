//! `plinth exec`: one-off commands run with a service's environment, secrets and current
//! release, their stdin, stdout and stderr streamed over an upgraded HTTP connection.
//!
//! The protocol after `101 Switching Protocols` (`Upgrade: plinth-exec`) is a stream of frames,
//! each 1 byte of kind, 4 bytes of payload length (big-endian) and the payload ([`Frame`]). The
//! client sends stdin, its end, and terminal sizes; the server sends stdout, stderr, messages
//! for the user, and last the exit code. The connection closing without an exit frame means the
//! session was lost.
//!
//! The command runs as given (no shell) in a fresh directory under `<data-dir>/exec/`, deleted
//! afterwards, leading its own process group: when it exits, what it left in its group is
//! killed; when the client goes away, the whole group is killed; when the server stops, the
//! group gets SIGTERM, then SIGKILL. Its output passes through a [`StreamRedactor`] built from
//! the secret values it was handed, per stream, before it reaches the client.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use plinth_core::config::Service;
use plinth_core::redact::{Redactor, StreamRedactor};
use plinth_store::{NewAudit, Release};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// The `Upgrade` protocol name.
pub const PROTOCOL: &str = "plinth-exec";

/// The largest payload a frame may carry.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// Kind (1 byte) and payload length (4 bytes, big-endian).
pub const HEADER_LEN: usize = 5;

/// How long output is still read after the command exited and its group was killed: only a
/// process that left the group and kept the output open makes this run out.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// SIGTERM to SIGKILL when the server stops during a command.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Output held back by the redactor (the start of what could be a secret) is let out after this
/// much quiet, so that a prompt or an echoed keystroke is not held until the next output.
const IDLE_FLUSH: Duration = Duration::from_millis(50);

/// How long the client has to take the upgraded connection after the 101.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// One message of the protocol.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client to server, kind 0: bytes for the command's stdin.
    Stdin(Vec<u8>),
    /// Client to server, kind 1: stdin has ended (the pipe is closed; ignored with a terminal).
    StdinEof,
    /// Client to server, kind 2: the terminal's size (u16 columns, u16 rows).
    Resize { cols: u16, rows: u16 },
    /// Server to client, kind 10: output, masked (a terminal's whole output with `tty`).
    Stdout(Vec<u8>),
    /// Server to client, kind 11.
    Stderr(Vec<u8>),
    /// Server to client, kind 12, the last frame: the exit code (i32), or 128+N after signal N.
    Exit(i32),
    /// Server to client, kind 13: a message for the user (UTF-8), such as why the command could
    /// not start; an exit frame follows.
    Error(String),
}

impl fmt::Debug for Frame {
    // Data frames show their length only: stdin may be anything the user typed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Stdin(data) => write!(f, "Stdin({} bytes)", data.len()),
            Frame::StdinEof => write!(f, "StdinEof"),
            Frame::Resize { cols, rows } => write!(f, "Resize({cols}x{rows})"),
            Frame::Stdout(data) => write!(f, "Stdout({} bytes)", data.len()),
            Frame::Stderr(data) => write!(f, "Stderr({} bytes)", data.len()),
            Frame::Exit(code) => write!(f, "Exit({code})"),
            Frame::Error(message) => write!(f, "Error({message:?})"),
        }
    }
}

/// A frame that breaks the protocol.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("a frame of {0} bytes is larger than the limit of {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("frame kind {kind} cannot carry {len} bytes")]
    BadLength { kind: u8, len: usize },
}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl Frame {
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Stdin(_) => 0,
            Frame::StdinEof => 1,
            Frame::Resize { .. } => 2,
            Frame::Stdout(_) => 10,
            Frame::Stderr(_) => 11,
            Frame::Exit(_) => 12,
            Frame::Error(_) => 13,
        }
    }

    /// The frame as bytes on the wire. Data longer than [`MAX_PAYLOAD`] must be split by the
    /// caller (see [`Frame::chunks`]).
    pub fn encode(&self) -> Vec<u8> {
        let payload: std::borrow::Cow<'_, [u8]> = match self {
            Frame::Stdin(data) | Frame::Stdout(data) | Frame::Stderr(data) => data.as_slice().into(),
            Frame::StdinEof => (&[][..]).into(),
            Frame::Resize { cols, rows } => [cols.to_be_bytes(), rows.to_be_bytes()].concat().into(),
            Frame::Exit(code) => code.to_be_bytes().to_vec().into(),
            Frame::Error(message) => message.as_bytes().into(),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.push(self.kind());
        out.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// `make` applied to each piece of `data` of at most [`MAX_PAYLOAD`] bytes.
    pub fn chunks(data: &[u8], make: fn(Vec<u8>) -> Frame) -> impl Iterator<Item = Frame> + '_ {
        data.chunks(MAX_PAYLOAD).map(move |piece| make(piece.to_vec()))
    }

    /// The kind and payload length a header announces.
    pub fn header(bytes: [u8; HEADER_LEN]) -> Result<(u8, usize), FrameError> {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        Ok((bytes[0], len))
    }

    /// A frame from its kind and payload.
    pub fn decode(kind: u8, payload: Vec<u8>) -> Result<Frame, FrameError> {
        let bad = |len| FrameError::BadLength { kind, len };
        Ok(match kind {
            0 => Frame::Stdin(payload),
            1 if payload.is_empty() => Frame::StdinEof,
            2 => match payload[..] {
                [a, b, c, d] => Frame::Resize { cols: u16::from_be_bytes([a, b]), rows: u16::from_be_bytes([c, d]) },
                _ => return Err(bad(payload.len())),
            },
            10 => Frame::Stdout(payload),
            11 => Frame::Stderr(payload),
            12 => match payload[..] {
                [a, b, c, d] => Frame::Exit(i32::from_be_bytes([a, b, c, d])),
                _ => return Err(bad(payload.len())),
            },
            13 => Frame::Error(String::from_utf8_lossy(&payload).into_owned()),
            1 => return Err(bad(payload.len())),
            other => return Err(FrameError::UnknownKind(other)),
        })
    }

    /// Reads the next frame; `None` when the stream ends between frames.
    pub fn read_from(reader: &mut impl io::Read) -> io::Result<Option<Frame>> {
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match reader.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let (kind, len) = Frame::header(header)?;
        let mut payload = vec![0u8; len];
        reader.read_exact(&mut payload)?;
        Ok(Some(Frame::decode(kind, payload)?))
    }
}

/// [`Frame::read_from`] for an async stream.
async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match reader.read(&mut header[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let (kind, len) = Frame::header(header)?;
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    Ok(Some(Frame::decode(kind, payload)?))
}

/// The exit code a shell would report: the code, or 128+N after signal N.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// A terminal's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermSize {
    pub cols: u16,
    pub rows: u16,
}

/// What one exec runs, decided before the connection is upgraded.
pub(crate) struct Exec {
    /// `{service}-{env}-exec-{hex}`: the instance id it runs as, in the audit log too.
    pub id: String,
    pub service: String,
    pub environment: String,
    pub release: i64,
    /// The token that asked.
    pub caller: String,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// A terminal of this size, or pipes.
    pub tty: Option<TermSize>,
    pub dir: PathBuf,
    pub redactor: Arc<Redactor>,
}

impl fmt::Debug for Exec {
    // Environment values hold secrets: only names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exec")
            .field("id", &self.id)
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("tty", &self.tty)
            .finish_non_exhaustive()
    }
}

/// A new exec id for a service in an environment.
pub(crate) fn new_id(service: &str, environment: &str) -> Result<String, String> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for an exec id: {e}"))?;
    Ok(format!("{service}-{environment}-exec-{}", hex::encode(bytes)))
}

/// The environment variable naming a container's image: `PLINTH_IMAGE_` and the container's
/// name in upper case, other characters than letters and digits as `_`.
pub(crate) fn image_variable(container: &str) -> String {
    let name: String =
        container.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("PLINTH_IMAGE_{name}")
}

/// Whether `term` is a plausible `TERM` value, passed on to a terminal session.
pub(crate) fn valid_term(term: &str) -> bool {
    !term.is_empty()
        && term.len() <= 64
        && term.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'))
}

/// What the command is given, before it starts: its id, the environment an instance of the
/// service gets (the secrets decrypted now, and audited as handed to this exec), the current
/// release's id and images, its own directory as `HOME`, and `TERM` with a terminal.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn prepare(
    state: &AppState,
    service: &Service,
    release: &Release,
    command: &[String],
    tty: Option<TermSize>,
    term: Option<String>,
    caller: &str,
) -> Result<Exec, String> {
    let id = new_id(&service.name, &service.environment)?;
    let secrets = crate::secrets::for_instances(state, &service.name, &service.policy_environment, &id).await?;
    let redactor = Redactor::new(secrets.values()).map_err(|e| e.to_string())?;
    let dir = state.paths.data.join("exec").join(&id);
    let mut env: BTreeMap<String, String> =
        crate::deployer::instance_env(service, &id, release.id, &secrets).into_iter().collect();
    for (container, image) in &release.images {
        env.insert(image_variable(container), image.clone());
    }
    env.insert("HOME".into(), dir.display().to_string());
    if tty.is_some() {
        env.insert("TERM".into(), term.filter(|t| valid_term(t)).unwrap_or_else(|| "xterm".into()));
    }
    let (program, args) = match command.split_first() {
        Some((program, args)) => (crate::deployer::program(program), args.to_vec()),
        None => return Err("no command".into()),
    };
    Ok(Exec {
        id,
        service: service.name.clone(),
        environment: service.environment.clone(),
        release: release.id,
        caller: caller.to_owned(),
        program,
        args,
        env: env.into_iter().collect(),
        tty,
        dir,
        redactor: Arc::new(redactor),
    })
}

/// How a session ended, for the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// The command exited by itself.
    Exited,
    /// The client went away; the group was killed.
    ClientGone,
    /// The server began stopping; the group got SIGTERM.
    ServerStopping,
    /// The command could not start.
    NotStarted,
}

impl Ended {
    fn as_str(self) -> &'static str {
        match self {
            Ended::Exited => "exited",
            Ended::ClientGone => "client_gone",
            Ended::ServerStopping => "server_stopping",
            Ended::NotStarted => "not_started",
        }
    }
}

/// Waits for the client to take the upgraded connection, runs the command to its end, deletes
/// its directory, and records how it ended in the audit log (`service.exec.exit`).
pub(crate) async fn run(state: AppState, exec: Exec, upgrade: hyper::upgrade::OnUpgrade) {
    let started = Instant::now();
    let (code, ended) = match tokio::time::timeout(UPGRADE_TIMEOUT, upgrade).await {
        Ok(Ok(upgraded)) => {
            let (reader, writer) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
            let outcome = session(&state, &exec, reader, Out { writer, open: true }).await;
            if let Err(e) = tokio::fs::remove_dir_all(&exec.dir).await
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(exec = %exec.id, dir = %exec.dir.display(), error = %e, "Could not delete the exec's directory.");
            }
            outcome
        }
        Ok(Err(e)) => {
            tracing::warn!(exec = %exec.id, error = %e, "The exec connection was not upgraded.");
            (None, Ended::NotStarted)
        }
        Err(_) => {
            tracing::warn!(exec = %exec.id, "The client did not take the exec connection in time.");
            (None, Ended::NotStarted)
        }
    };
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(exec = %exec.id, code = ?code, ended = ended.as_str(), duration_ms, "Exec ended.");
    let result = match (code, ended) {
        (Some(0), Ended::Exited) => "ok".to_owned(),
        (Some(code), Ended::Exited) => format!("exit {code}"),
        (_, ended) => ended.as_str().to_owned(),
    };
    let entry = NewAudit {
        actor: exec.caller.clone(),
        action: "service.exec.exit".into(),
        object: format!("service/{}/{}", exec.service, exec.environment),
        result,
        details: serde_json::json!({
            "exec": exec.id,
            "release": exec.release,
            "exit_code": code,
            "ended": ended.as_str(),
            "duration_ms": duration_ms,
        }),
    };
    if let Err(e) = state.store.append_audit(entry, state.now()).await {
        tracing::error!(exec = %exec.id, error = %e, "Could not append the end of an exec to the audit log.");
    }
}

/// The client's side of the connection, as long as it takes frames.
struct Out<W> {
    writer: W,
    open: bool,
}

impl<W: AsyncWrite + Unpin> Out<W> {
    /// Sends a frame; false (and nothing more is sent) once the client is gone.
    async fn send(&mut self, frame: Frame) -> bool {
        if !self.open {
            return false;
        }
        let sent = async {
            self.writer.write_all(&frame.encode()).await?;
            self.writer.flush().await
        }
        .await;
        if sent.is_err() {
            self.open = false;
        }
        self.open
    }

    async fn output(&mut self, data: Vec<u8>, make: fn(Vec<u8>) -> Frame) -> bool {
        for frame in Frame::chunks(&data, make) {
            if !self.send(frame).await {
                return false;
            }
        }
        true
    }

    async fn close(&mut self) {
        if self.open {
            let _ = self.writer.shutdown().await;
            self.open = false;
        }
    }
}

/// Where stdin goes: a pipe, or the terminal's master side.
enum StdinSink {
    Pipe(tokio::process::ChildStdin),
    Tty(pipe::Sender),
}

impl StdinSink {
    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            StdinSink::Pipe(pipe) => {
                pipe.write_all(data).await?;
                pipe.flush().await
            }
            StdinSink::Tty(master) => master.write_all(data).await,
        }
    }
}

/// A running command.
struct Spawned {
    child: Child,
    group: Group,
    stdin: StdinSink,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
    /// The terminal's master side, with `tty`: its whole output.
    tty: Option<pipe::Receiver>,
    /// The terminal's master side again, for resizes.
    resize: Option<OwnedFd>,
}

/// Runs the command and pumps its streams until it ends; returns its exit code (none if it
/// could not start) and how it ended.
async fn session<R, W>(state: &AppState, exec: &Exec, reader: R, mut out: Out<W>) -> (Option<i32>, Ended)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let spawned = match tokio::fs::create_dir_all(&exec.dir).await {
        Ok(()) => spawn(exec),
        Err(e) => Err((126, format!("could not create the directory {}: {e}", exec.dir.display()))),
    };
    let Spawned { mut child, group, stdin, mut stdout, mut stderr, mut tty, resize } = match spawned {
        Ok(spawned) => spawned,
        Err((code, message)) => {
            tracing::warn!(exec = %exec.id, %message, "An exec could not start.");
            out.send(Frame::Error(message)).await;
            out.send(Frame::Exit(code)).await;
            out.close().await;
            return (Some(code), Ended::NotStarted);
        }
    };
    tracing::info!(exec = %exec.id, program = %exec.program, pid = child.id().unwrap_or(0), tty = exec.tty.is_some(), "Exec started.");
    let mut group = Some(group);

    let gone = CancellationToken::new();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(16);
    let from_client = tokio::spawn(read_client(reader, stdin_tx, resize, gone.clone()));
    let to_stdin = tokio::spawn(write_stdin(stdin_rx, stdin));

    let mut out_mask = StreamRedactor::new(exec.redactor.clone());
    let mut err_mask = StreamRedactor::new(exec.redactor.clone());
    let mut out_buf = vec![0u8; 32 * 1024];
    let mut err_buf = vec![0u8; 32 * 1024];
    let mut tty_buf = vec![0u8; 32 * 1024];
    let mut code: Option<i32> = None;
    let mut ended = Ended::Exited;
    // Armed after SIGTERM (SIGKILL is due) and after the exit (reading must end).
    let deadline = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(deadline);
    let mut deadline_armed = false;
    // Armed by output: when it fires, what the redactors hold back is let out.
    let idle = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(idle);
    let mut idle_armed = false;

    while code.is_none() || stdout.is_some() || stderr.is_some() || tty.is_some() {
        let sent = tokio::select! {
            read = read_pipe(&mut stdout, &mut out_buf) => {
                let data = pass(read, &mut stdout, &mut out_mask, &out_buf);
                idle.as_mut().reset(Instant::now() + IDLE_FLUSH);
                idle_armed = true;
                out.output(data, Frame::Stdout).await
            }
            read = read_pipe(&mut stderr, &mut err_buf) => {
                let data = pass(read, &mut stderr, &mut err_mask, &err_buf);
                idle.as_mut().reset(Instant::now() + IDLE_FLUSH);
                idle_armed = true;
                out.output(data, Frame::Stderr).await
            }
            read = read_pipe(&mut tty, &mut tty_buf) => {
                let data = pass(read, &mut tty, &mut out_mask, &tty_buf);
                idle.as_mut().reset(Instant::now() + IDLE_FLUSH);
                idle_armed = true;
                out.output(data, Frame::Stdout).await
            }
            () = &mut idle, if idle_armed => {
                idle_armed = false;
                let (held_out, held_err) = (out_mask.finish(), err_mask.finish());
                out.output(held_out, Frame::Stdout).await && out.output(held_err, Frame::Stderr).await
            }
            status = child.wait(), if code.is_none() => {
                code = Some(match status {
                    Ok(status) => exit_code(status),
                    Err(e) => {
                        tracing::warn!(exec = %exec.id, error = %e, "Lost track of an exec's process.");
                        1
                    }
                });
                if let Some(group) = group.take() {
                    group.kill_leftovers();
                }
                deadline.as_mut().reset(Instant::now() + DRAIN_AFTER_EXIT);
                deadline_armed = true;
                true
            }
            () = gone.cancelled(), if out.open && code.is_none() => false,
            () = state.shutdown.cancelled(), if ended == Ended::Exited && code.is_none() => {
                ended = Ended::ServerStopping;
                if let Some(group) = &group {
                    group.signal(Signal::SIGTERM);
                }
                deadline.as_mut().reset(Instant::now() + STOP_GRACE);
                deadline_armed = true;
                out.send(Frame::Error("the server is stopping; the command was sent SIGTERM".into())).await
            }
            () = &mut deadline, if deadline_armed => {
                deadline_armed = false;
                match &group {
                    Some(group) if code.is_none() => group.signal(Signal::SIGKILL),
                    _ => {
                        tracing::warn!(exec = %exec.id, "Output still open after the command exited; no longer reading it.");
                        (stdout, stderr, tty) = (None, None, None);
                    }
                }
                true
            }
        };
        if !sent {
            // The client is gone (its connection closed or broke): nothing more is sent, and
            // the command's whole group is killed.
            out.open = false;
            if code.is_none() && ended != Ended::ClientGone {
                ended = Ended::ClientGone;
                if let Some(group) = &group {
                    group.signal(Signal::SIGKILL);
                }
            }
        }
    }
    let rest_out = out_mask.finish();
    let rest_err = err_mask.finish();
    out.output(rest_out, Frame::Stdout).await;
    out.output(rest_err, Frame::Stderr).await;
    let code = code.unwrap_or(1);
    out.send(Frame::Exit(code)).await;
    out.close().await;
    from_client.abort();
    to_stdin.abort();
    (Some(code), ended)
}

/// The next piece of a pipe; pending forever once it is closed.
async fn read_pipe<P: AsyncRead + Unpin>(pipe: &mut Option<P>, buf: &mut [u8]) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buf).await,
        None => std::future::pending().await,
    }
}

/// What a read gives the client: the bytes, masked; at the end of the stream (or an error,
/// such as EIO from a terminal whose every process is gone), what the redactor held back, and
/// the stream is closed.
fn pass<S>(
    read: io::Result<usize>,
    stream: &mut Option<S>,
    mask: &mut StreamRedactor<Arc<Redactor>>,
    buf: &[u8],
) -> Vec<u8> {
    match read {
        Ok(n) if n > 0 => mask.push(&buf[..n]),
        _ => {
            *stream = None;
            mask.finish()
        }
    }
}

/// Reads frames from the client: stdin goes to the stdin writer, sizes to the terminal. When
/// the connection ends or breaks, `gone` fires.
async fn read_client<R: AsyncRead + Unpin>(
    mut reader: R,
    stdin: mpsc::Sender<Vec<u8>>,
    master: Option<OwnedFd>,
    gone: CancellationToken,
) {
    let mut stdin = Some(stdin);
    loop {
        match read_frame(&mut reader).await {
            Ok(Some(Frame::Stdin(data))) => {
                if let Some(tx) = &stdin
                    && tx.send(data).await.is_err()
                {
                    stdin = None;
                }
            }
            Ok(Some(Frame::StdinEof)) => stdin = None,
            Ok(Some(Frame::Resize { cols, rows })) => {
                if let Some(master) = &master {
                    let size = rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                    let _ = rustix::termios::tcsetwinsize(master, size);
                }
            }
            // Frames only the server sends are ignored.
            Ok(Some(_)) => {}
            Ok(None) => {
                gone.cancel();
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "The exec client's stream ended.");
                gone.cancel();
                return;
            }
        }
    }
}

/// Writes stdin as it comes; when it ends, a pipe is closed (the command sees end of file). A
/// command that closed its stdin gets nothing more; what arrives is dropped so that the client
/// is never stuck.
async fn write_stdin(mut rx: mpsc::Receiver<Vec<u8>>, mut sink: StdinSink) {
    let mut broken = false;
    while let Some(data) = rx.recv().await {
        if !broken && sink.write_all(&data).await.is_err() {
            broken = true;
        }
    }
}

/// A terminal pair: the master (non-blocking, for this process) and the slave (for the
/// command), both close-on-exec so that no other child of the server inherits them.
fn open_pty(size: TermSize) -> io::Result<(File, File)> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    use rustix::pty::OpenptFlags;

    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(std::ffi::OsStr::from_bytes(name.as_bytes()))?;
    let winsize = rustix::termios::Winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    rustix::termios::tcsetwinsize(&master, winsize)?;
    rustix::io::ioctl_fionbio(&master, true)?;
    Ok((File::from(master), slave))
}

/// `name` on the `PATH` of `env`.
fn on_path(env: &[(String, String)], name: &str) -> Option<PathBuf> {
    let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str())?;
    std::env::split_paths(path).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Starts the command: with pipes in its own process group, or on a new terminal.
///
/// With a terminal, the command should lead a new session whose controlling terminal it is, so
/// that Ctrl-C, job control and `/dev/tty` work. That takes `setsid()` between fork and exec,
/// which needs `unsafe` here; util-linux's `setsid --ctty` does it instead when it is on the
/// `PATH` (the command then leads its own session and process group). Without it the command
/// gets the terminal as stdin, stdout and stderr only, in its own process group.
fn spawn(exec: &Exec) -> Result<Spawned, (i32, String)> {
    let setsid = exec.tty.and_then(|_| on_path(&exec.env, "setsid"));
    let mut command = match &setsid {
        Some(setsid) => {
            let mut command = Command::new(setsid);
            command.arg("--ctty").arg("--").arg(&exec.program);
            command
        }
        None => Command::new(&exec.program),
    };
    command
        .args(&exec.args)
        .current_dir(&exec.dir)
        .env_clear()
        .envs(exec.env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true);
    if setsid.is_none() {
        command.process_group(0);
    }
    let cannot = |e: io::Error| (126, format!("could not set up the command's terminal: {e}"));
    let master = match exec.tty {
        None => {
            command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            None
        }
        Some(size) => {
            let (master, slave) = open_pty(size).map_err(cannot)?;
            command
                .stdin(Stdio::from(slave.try_clone().map_err(cannot)?))
                .stdout(Stdio::from(slave.try_clone().map_err(cannot)?))
                .stderr(Stdio::from(slave));
            // tokio's pipe types poll any non-blocking descriptor; the master reads and
            // writes like a pipe, and EIO ends it once the terminal has no process left.
            let reader = pipe::Receiver::from_file_unchecked(master.try_clone().map_err(cannot)?).map_err(cannot)?;
            let writer = pipe::Sender::from_file_unchecked(master.try_clone().map_err(cannot)?).map_err(cannot)?;
            Some((reader, writer, OwnedFd::from(master)))
        }
    };
    let spawned = command.spawn();
    // The command holds the terminal's slave side: it must close here, so that reading the
    // master ends once the command's processes are gone.
    drop(command);
    let mut child = spawned.map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => (127, format!("`{}` was not found on the service's PATH", exec.program)),
        io::ErrorKind::PermissionDenied => (126, format!("`{}` is not executable", exec.program)),
        _ => (126, format!("could not start `{}`: {e}", exec.program)),
    })?;
    let group = Group::new(child.id(), setsid.is_some());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (stdin, tty, resize) = match (master, child.stdin.take()) {
        (Some((reader, writer, resize)), _) => (StdinSink::Tty(writer), Some(reader), Some(resize)),
        (None, Some(pipe)) => (StdinSink::Pipe(pipe), None, None),
        (None, None) => return Err((126, "the command's stdin could not be opened".into())),
    };
    Ok(Spawned { child, group, stdin, stdout, stderr, tty, resize })
}

/// The command's process group (its pid, as it leads the group), and with `setsid` its whole
/// session (a shell on a terminal puts its jobs in groups of their own): killed when dropped,
/// unless the command has been reaped first.
struct Group {
    pgid: Option<Pid>,
    session: bool,
}

impl Group {
    fn new(pid: Option<u32>, session: bool) -> Self {
        let pgid = pid.and_then(|pid| i32::try_from(pid).ok()).filter(|pid| *pid > 1).map(Pid::from_raw);
        Group { pgid, session }
    }

    fn signal(&self, signal: Signal) {
        let Some(pgid) = self.pgid else { return };
        match killpg(pgid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(error) => tracing::warn!(pgid = pgid.as_raw(), %signal, %error, "Signalling an exec's group failed."),
        }
        if self.session {
            for pid in session_members(pgid) {
                let _ = nix::sys::signal::kill(pid, signal);
            }
        }
    }

    /// Called once the command has exited: what it left in its group (or session) is killed,
    /// and the id, free for reuse from now on, is never signalled again. While any process of
    /// the group or session lives, the kernel hands its id to no other process.
    fn kill_leftovers(mut self) {
        self.signal(Signal::SIGKILL);
        self.pgid = None;
    }
}

/// The processes whose session is `sid`, from `/proc` (none where there is no `/proc`).
fn session_members(sid: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let sid = sid.as_raw().to_string();
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid pgrp session …`; comm may hold spaces and parentheses.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(3)) == Some(sid.as_str())
        })
        .map(Pid::from_raw)
        .collect()
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Stdin(b"ls\n".to_vec()),
            Frame::Stdin(Vec::new()),
            Frame::StdinEof,
            Frame::Resize { cols: 120, rows: 40 },
            Frame::Stdout(vec![0, 255, 10]),
            Frame::Stderr(b"err".to_vec()),
            Frame::Exit(7),
            Frame::Exit(-1),
            Frame::Error("`x` was not found".into()),
        ];
        let mut wire = Vec::new();
        for frame in &frames {
            wire.extend(frame.encode());
        }
        let mut reader = &wire[..];
        let mut read = Vec::new();
        while let Some(frame) = Frame::read_from(&mut reader).unwrap() {
            read.push(frame);
        }
        assert_eq!(read, frames);
    }

    #[test]
    fn frames_are_laid_out_as_documented() {
        // (frame, bytes on the wire)
        let cases: [(Frame, &[u8]); 4] = [
            (Frame::Stdin(b"hi".to_vec()), &[0, 0, 0, 0, 2, b'h', b'i']),
            (Frame::StdinEof, &[1, 0, 0, 0, 0]),
            (Frame::Resize { cols: 80, rows: 24 }, &[2, 0, 0, 0, 4, 0, 80, 0, 24]),
            (Frame::Exit(130), &[12, 0, 0, 0, 4, 0, 0, 0, 130]),
        ];
        for (frame, bytes) in cases {
            assert_eq!(frame.encode(), bytes, "{frame:?}");
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        // (bytes, the error)
        let too_large = u32::try_from(MAX_PAYLOAD + 1).unwrap().to_be_bytes();
        let cases: [(Vec<u8>, FrameError); 4] = [
            (vec![99, 0, 0, 0, 0], FrameError::UnknownKind(99)),
            (vec![1, 0, 0, 0, 1, 0], FrameError::BadLength { kind: 1, len: 1 }),
            (vec![2, 0, 0, 0, 3, 0, 0, 0], FrameError::BadLength { kind: 2, len: 3 }),
            ([&[0u8][..], &too_large].concat(), FrameError::TooLarge(MAX_PAYLOAD + 1)),
        ];
        for (bytes, want) in cases {
            let err = Frame::read_from(&mut &bytes[..]).unwrap_err();
            let got = err.into_inner().unwrap().downcast::<FrameError>().unwrap();
            assert_eq!(*got, want);
        }
        // A stream that ends inside a frame is an error; between frames it is the end.
        assert!(Frame::read_from(&mut &[0u8, 0, 0][..]).is_err());
        assert!(Frame::read_from(&mut &[0u8, 0, 0, 0, 5, 1][..]).is_err());
        assert_eq!(Frame::read_from(&mut &[][..]).unwrap(), None);
    }

    #[test]
    fn large_output_is_split_into_frames() {
        let data = vec![7u8; MAX_PAYLOAD * 2 + 3];
        let sizes: Vec<usize> = Frame::chunks(&data, Frame::Stdout)
            .map(|f| match f {
                Frame::Stdout(d) => d.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, [MAX_PAYLOAD, MAX_PAYLOAD, 3]);
    }

    #[test]
    fn image_variables_and_terms() {
        for (container, variable) in [("app", "PLINTH_IMAGE_APP"), ("web-proxy", "PLINTH_IMAGE_WEB_PROXY")] {
            assert_eq!(image_variable(container), variable);
        }
        for (term, ok) in
            [("xterm-256color", true), ("screen.xterm", true), ("", false), ("a b", false), ("x;y", false)]
        {
            assert_eq!(valid_term(term), ok, "{term:?}");
        }
    }

    #[test]
    fn debug_shows_no_stdin_or_environment_values() {
        assert_eq!(format!("{:?}", Frame::Stdin(b"hunter2".to_vec())), "Stdin(7 bytes)");
    }
}
