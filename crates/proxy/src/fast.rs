//! The fast path: plain HTTP/1.1 requests proxied byte by byte, without hyper's request and
//! response types and without a task per backend connection.
//!
//! A client connection starts here. Each request head is parsed in place (httparse), checked,
//! rewritten (hop-by-hop headers out, `X-Forwarded-*` in) and written to a raw keep-alive TCP
//! stream to the backend; the response head is parsed and rewritten the same way, and the body
//! is copied through as it comes, its framing followed to find its end. All of it runs in the
//! client connection's task.
//!
//! A request the fast path does not take (see [`Parsed::Fallback`]) hands the whole connection,
//! with every byte read so far, to the hyper path for the rest of its life. The rule is to take
//! only what is unambiguous: HTTP/1.1, an origin-form target, one `Host`, at most one valid
//! `Content-Length`, no `Transfer-Encoding`, `Upgrade` or `Expect`, CRLF line ends. Anything
//! else, request smuggling attempts included, gets hyper's treatment (and its 400).
//!
//! The same rules as the hyper path hold: the same route choice ([`Choice`]), the in-flight
//! count held from the choice of a backend until the response is written (or the client has
//! gone), retries only of what was never sent, the proxy's own answers with `x-plinth-error`.
//! A pooled connection that turns out closed before any byte of a response came sends the
//! request again on another connection only when it has no body and an idempotent method.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::error::{ERROR_HEADER, LOCAL_HEADERS, ProxyError};
use crate::forward::{Choice, Conn, connect_tcp};
use crate::headers::ConnectionOptions;
use crate::signal::{Signal, Wait};
use plinth_core::ErrorCode;

/// Request headers beyond this many send the request to the hyper path.
const MAX_HEADERS: usize = 64;
/// A backend's response with more headers than this is a failure (502).
const MAX_RESPONSE_HEADERS: usize = 100;
/// The buffers start this large...
const BUF_START: usize = 16 * 1024;
/// ... and grow up to this for a long head. A longer request head goes to the hyper path; a
/// longer response head is a failure (502).
const MAX_HEAD: usize = 64 * 1024;
/// A chunked response's trailers may take this many bytes.
const MAX_TRAILERS: usize = 16 * 1024;

/// How a client connection left the fast path.
pub(crate) enum Served<I> {
    /// It is closed (or done with): nothing more to do.
    Closed,
    /// The hyper path takes it over, with the bytes read but not served, which come first.
    Fallback(I, Vec<u8>),
}

/// Serves a client connection on the fast path until it closes, the shutdown signal finds it
/// between requests, or a request needs the hyper path.
pub(crate) async fn serve<I>(mut io: I, conn: &Conn, stopping: &Arc<Signal>) -> Served<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut state = State::new();
    let mut wait = stopping.wait();
    let timer = tokio::time::sleep_until(Instant::now());
    let mut timer = std::pin::pin!(timer);
    loop {
        let plan = match next_request(&mut io, &mut state, conn, timer.as_mut(), &mut wait).await {
            Next::Request(plan) => plan,
            Next::Close => break,
            Next::Fallback => {
                let buffered = state.client.unread().to_vec();
                return Served::Fallback(io, buffered);
            }
        };
        let keep = forward(&mut io, &mut state, conn, &plan, stopping).await;
        if !keep || stopping.is_fired() {
            break;
        }
    }
    // A clean end for the client: FIN, or TLS's close_notify. It may be gone already.
    let _ = io.shutdown().await;
    Served::Closed
}

/// What one client connection keeps between requests.
struct State {
    /// Bytes from the client: request heads, and bodies on their way through.
    client: Buf,
    /// Bytes from the backend: response heads, and bodies on their way through.
    backend: Buf,
    /// The request as it goes to the backend: head, and the body's first bytes if they came
    /// with it. Kept intact for a retry.
    request: Vec<u8>,
    /// The response head as it goes to the client, and the body's first bytes.
    response: Vec<u8>,
    /// The request's host as the client sent it.
    host: String,
    /// Bytes of the current request's body still to take from the client.
    body_left: u64,
}

impl State {
    fn new() -> Self {
        Self {
            client: Buf::new(BUF_START),
            backend: Buf::new(BUF_START),
            request: Vec::with_capacity(1024),
            response: Vec::with_capacity(1024),
            host: String::new(),
            body_left: 0,
        }
    }
}

/// A byte buffer: the unread bytes are `data[pos..end]`.
struct Buf {
    data: Vec<u8>,
    pos: usize,
    end: usize,
}

impl Buf {
    fn new(size: usize) -> Self {
        Self { data: vec![0; size], pos: 0, end: 0 }
    }

    fn unread(&self) -> &[u8] {
        &self.data[self.pos..self.end]
    }

    fn len(&self) -> usize {
        self.end - self.pos
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.end);
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
    }

    /// Room to read into after the unread bytes: made by moving them to the front, or by
    /// growing up to `max`. Empty when the buffer holds `max` unread bytes.
    fn spare(&mut self, max: usize) -> &mut [u8] {
        if self.end == self.data.len() {
            if self.pos > 0 {
                self.data.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            } else if self.data.len() < max {
                let grown = (self.data.len() * 2).min(max);
                self.data.resize(grown, 0);
            }
        }
        &mut self.data[self.end..]
    }

    fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }
}

/// What a parsed request head is, for the fast path.
struct Plan {
    /// The request's body length (`Content-Length`, or 0).
    body: u64,
    /// The client asked to close after this request.
    close: bool,
    /// A HEAD request: its response has no body, whatever its headers say.
    head: bool,
    /// Sent on a pooled connection that turned out closed, it may be sent again: no body and
    /// an idempotent method.
    retriable: bool,
}

enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// Not for the fast path: the hyper path serves the connection from here on.
    Fallback,
    /// Parsed and rewritten into `State::request`; the head's bytes are consumed.
    Ready(Plan),
}

enum Next {
    Request(Plan),
    Fallback,
    Close,
}

/// Waits for the next request head, parsing what comes. The header read timeout runs from
/// the moment the connection has to wait; the shutdown signal closes a connection that has
/// no part of a request yet.
async fn next_request<I>(
    io: &mut I,
    state: &mut State,
    conn: &Conn,
    mut timer: Pin<&mut Sleep>,
    wait: &mut Wait,
) -> Next
where
    I: AsyncRead + Unpin,
{
    let mut armed = false;
    loop {
        if state.client.len() > 0 {
            match parse_request(state, conn) {
                Parsed::Ready(plan) => return Next::Request(plan),
                Parsed::Fallback => return Next::Fallback,
                Parsed::Partial => {}
            }
        }
        let idle = state.client.len() == 0;
        let spare = state.client.spare(MAX_HEAD);
        if spare.is_empty() {
            // A head longer than the fast path takes: hyper has its own limit and answer.
            return Next::Fallback;
        }
        let mut read = ReadBuf::new(spare);
        let woke = poll_fn(|cx| {
            if let Poll::Ready(result) = Pin::new(&mut *io).poll_read(cx, &mut read) {
                return Poll::Ready(result.map(|()| read.filled().len()).map_err(Some));
            }
            if !armed {
                timer.as_mut().reset(Instant::now() + conn.inner.config.header_read_timeout);
                armed = true;
            }
            if timer.as_mut().poll(cx).is_ready() || (idle && Pin::new(&mut *wait).poll(cx).is_ready()) {
                return Poll::Ready(Err(None));
            }
            Poll::Pending
        })
        .await;
        match woke {
            Ok(0) | Err(_) => return Next::Close,
            Ok(n) => state.client.filled(n),
        }
    }
}

/// Parses the request head at the start of the client buffer and, if the fast path takes it,
/// writes the backend's version into `state.request`.
fn parse_request(state: &mut State, conn: &Conn) -> Parsed {
    let bytes = state.client.unread();
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(bytes, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Fallback,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Fallback;
    };
    if method == "CONNECT" || !is_origin_form(target) || !crlf_only(&bytes[..head_len]) {
        return Parsed::Fallback;
    }
    let Some(scan) = RequestHeaders::scan(req.headers) else {
        return Parsed::Fallback;
    };
    let out = &mut state.request;
    out.clear();
    write_request_head(out, method, target, req.headers, &scan, conn);
    state.host.clear();
    state.host.push_str(scan.host);
    let plan = Plan {
        body: scan.content_length,
        close: scan.connection.close,
        head: method == "HEAD",
        retriable: scan.content_length == 0
            && matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"),
    };
    state.client.consume(head_len);
    state.body_left = plan.body;
    Parsed::Ready(plan)
}

/// An origin-form target (`/path?query`) of characters every parser reads alike; anything
/// else (absolute form, `*`, odd bytes) is for the hyper path.
fn is_origin_form(target: &str) -> bool {
    target.starts_with('/') && target.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b))
}

/// Every line of the head ends in CRLF: no bare LF or CR, which parsers read differently.
fn crlf_only(head: &[u8]) -> bool {
    head.iter().enumerate().all(|(i, &b)| match b {
        b'\n' => i > 0 && head[i - 1] == b'\r',
        b'\r' => head.get(i + 1) == Some(&b'\n'),
        _ => true,
    })
}

/// What the fast path needs from a request's headers; `None` when they make it the hyper
/// path's.
struct RequestHeaders<'a> {
    host: &'a str,
    content_length: u64,
    connection: ConnectionOptions<'a>,
}

impl<'a> RequestHeaders<'a> {
    fn scan(headers: &[httparse::Header<'a>]) -> Option<Self> {
        let mut host = None;
        let mut content_length = None;
        let mut connection = ConnectionOptions::default();
        for header in headers {
            let name = header.name;
            if name.eq_ignore_ascii_case("host") {
                if host.is_some() {
                    return None;
                }
                host = Some(visible_ascii(header.value)?);
            } else if name.eq_ignore_ascii_case("content-length") {
                if content_length.is_some() {
                    return None;
                }
                content_length = Some(parse_length(header.value)?);
            } else if name.eq_ignore_ascii_case("connection") {
                connection.add(header.value);
            } else if ["transfer-encoding", "upgrade", "expect"].iter().any(|n| name.eq_ignore_ascii_case(n)) {
                return None;
            }
        }
        // Headers the rewrite sets or frames by must not vanish because `Connection` names
        // them; such odd requests are hyper's.
        let framing = ["host", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];
        if connection.upgrade || framing.iter().any(|name| connection.names(name)) {
            return None;
        }
        Some(Self { host: host?, content_length: content_length.unwrap_or(0), connection })
    }
}

/// A header value as text, if it is printable ASCII (what `HeaderValue::to_str` accepts).
fn visible_ascii(value: &[u8]) -> Option<&str> {
    if value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)) { std::str::from_utf8(value).ok() } else { None }
}

/// A `Content-Length` value: digits only, that fit in a u64.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// The request line and headers as the backend gets them, as `headers::prepare_request`
/// makes them on the hyper path: hop-by-hop headers removed, `X-Forwarded-For` extended,
/// `X-Forwarded-Proto` and `X-Forwarded-Host` set.
fn write_request_head(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    headers: &[httparse::Header<'_>],
    scan: &RequestHeaders<'_>,
    conn: &Conn,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for = false;
    for header in headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for = true;
        } else if !scan.connection.stops(name)
            && !name.eq_ignore_ascii_case("x-forwarded-proto")
            && !name.eq_ignore_ascii_case("x-forwarded-host")
        {
            write_header(out, name.as_bytes(), header.value);
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if forwarded_for {
        for header in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for")) {
            out.extend_from_slice(header.value);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(conn.client_ip.as_bytes());
    out.extend_from_slice(if conn.tls {
        b"\r\nx-forwarded-proto: https\r\n"
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
    write_header(out, b"x-forwarded-host", scan.host.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Forwards one request and its response. Returns whether the client connection can serve
/// another request.
async fn forward<I>(io: &mut I, state: &mut State, conn: &Conn, plan: &Plan, stopping: &Signal) -> bool
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let host = std::mem::take(&mut state.host);
    let keep = forward_to_backends(io, state, conn, plan, stopping, &host).await;
    state.host = host;
    keep
}

async fn forward_to_backends<I>(
    io: &mut I,
    state: &mut State,
    conn: &Conn,
    plan: &Plan,
    stopping: &Signal,
    host: &str,
) -> bool
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let inner = &conn.inner;
    let mut choice = match Choice::new(inner, host) {
        Ok(choice) => choice,
        Err(error) => return answer(io, state, plan, error).await,
    };
    'backends: loop {
        let in_flight = match choice.next() {
            Ok(in_flight) => in_flight,
            Err(error) => return answer(io, state, plan, error).await,
        };
        let backend = Arc::clone(in_flight.backend());
        loop {
            let (mut stream, reused) = match backend.checkout_raw() {
                Some(stream) => (stream, true),
                None => match connect_tcp(inner, &backend).await {
                    Ok(stream) => {
                        backend.connect_succeeded();
                        (stream, false)
                    }
                    Err(error) => {
                        choice.connect_failed(in_flight, &error);
                        continue 'backends;
                    }
                },
            };
            match exchange(io, &mut stream, state, plan, stopping).await {
                Exchanged::Complete { reusable, keep_client } => {
                    // Back in the pool before the count is released, so that a drained
                    // backend's connections are settled.
                    if reusable {
                        backend.checkin_raw(stream);
                    }
                    drop(in_flight);
                    return keep_client;
                }
                Exchanged::NoResponse if reused && plan.retriable => {
                    debug!(backend = %backend.backend.id, "A pooled backend connection was closed; sending again.");
                }
                Exchanged::NoResponse | Exchanged::Invalid => {
                    debug!(backend = %backend.backend.id, "The backend failed after the request was sent.");
                    let error = choice.backend_failed();
                    drop(stream);
                    drop(in_flight);
                    return answer(io, state, plan, error).await;
                }
                Exchanged::Broken => return false,
            }
        }
    }
}

/// How one request on one backend connection went.
enum Exchanged {
    /// The response reached the client whole.
    Complete {
        /// The backend connection can take another request.
        reusable: bool,
        /// The client connection can send another request.
        keep_client: bool,
    },
    /// The connection ended (or failed) before any byte of a response came.
    NoResponse,
    /// The backend answered with something that is no response the proxy can forward, or
    /// failed mid-head; nothing went to the client yet.
    Invalid,
    /// The response broke off after its head went out, or the client went away: the client
    /// connection closes.
    Broken,
}

/// Sends the request over `stream` and copies the response back; the request's body streams
/// up while the response comes down, so that a backend that answers as it reads does not
/// stall.
async fn exchange<I>(io: &mut I, stream: &mut TcpStream, state: &mut State, plan: &Plan, stopping: &Signal) -> Exchanged
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    // The body's first bytes go with the head (not for a retriable request, which has none).
    let head_len = state.request.len();
    let buffered = usize::try_from(state.body_left).unwrap_or(usize::MAX).min(state.client.len());
    state.request.extend_from_slice(&state.client.unread()[..buffered]);
    state.client.consume(buffered);
    state.body_left -= buffered as u64;
    let written = stream.write_all(&state.request).await;
    state.request.truncate(head_len);
    if written.is_err() {
        return if state.body_left == 0 && buffered == 0 { Exchanged::NoResponse } else { Exchanged::Invalid };
    }
    let State { client, backend, response, body_left, .. } = state;
    if *body_left == 0 {
        return respond(stream, io, backend, response, plan, stopping).await;
    }
    let (mut backend_read, mut backend_write) = stream.split();
    let (mut client_read, mut client_write) = tokio::io::split(&mut *io);
    let upload = upload(&mut client_read, &mut backend_write, client, body_left);
    let download = respond(&mut backend_read, &mut client_write, backend, response, plan, stopping);
    let (mut upload, mut download) = (std::pin::pin!(upload), std::pin::pin!(download));
    let mut uploading = true;
    let mut uploaded_all = false;
    let answered = loop {
        tokio::select! {
            biased;
            uploaded = &mut upload, if uploading => match uploaded {
                Ok(()) => {
                    uploading = false;
                    uploaded_all = true;
                }
                // The client went away mid-body.
                Err(Side::Client) => return Exchanged::Broken,
                // The backend stopped reading; it may still answer.
                Err(Side::Backend) => uploading = false,
            },
            answered = &mut download => break answered,
        }
    };
    match answered {
        // Whatever of the body is left cannot be told from the next request: close.
        Exchanged::Complete { .. } if !uploaded_all => Exchanged::Complete { reusable: false, keep_client: false },
        other => other,
    }
}

/// Which end of a copy failed.
enum Side {
    Client,
    Backend,
}

/// Copies the rest of the request body, `left` bytes, from the client to the backend.
async fn upload<R, W>(client: &mut R, backend: &mut W, buf: &mut Buf, left: &mut u64) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while *left > 0 {
        let room = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.data.len());
        let n = match client.read(&mut buf.data[..room]).await {
            Ok(0) | Err(_) => return Err(Side::Client),
            Ok(n) => n,
        };
        backend.write_all(&buf.data[..n]).await.map_err(|_| Side::Backend)?;
        *left -= n as u64;
    }
    Ok(())
}

/// How a response's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes.
    Close,
}

/// Reads the response head (skipping interim 1xx answers), writes the client's version, then
/// copies the body to its end. A response that ends before the request body was all sent
/// closes the client connection afterwards (see `exchange`).
async fn respond<R, W>(
    backend: &mut R,
    client: &mut W,
    buf: &mut Buf,
    out: &mut Vec<u8>,
    plan: &Plan,
    stopping: &Signal,
) -> Exchanged
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    buf.consume(buf.len());
    let mut seen_any = false;
    let head = loop {
        match parse_response(buf.unread(), plan, out) {
            Ok(Some(head)) if head.interim => {
                buf.consume(head.len);
                continue;
            }
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(()) => return Exchanged::Invalid,
        }
        let spare = buf.spare(MAX_HEAD);
        if spare.is_empty() {
            return Exchanged::Invalid;
        }
        match backend.read(spare).await {
            Ok(0) | Err(_) if !seen_any => return Exchanged::NoResponse,
            Ok(0) | Err(_) => return Exchanged::Invalid,
            Ok(n) => {
                seen_any = true;
                buf.filled(n);
            }
        }
    };
    buf.consume(head.len);
    let keep_client = !plan.close && head.framing != Framing::Close && !stopping.is_fired();
    finish_head(out, head.framing, head.codings.as_deref(), keep_client);
    let mut body = Body::new(head.framing);
    let taken = match body.take(buf.unread()) {
        Ok(taken) => taken,
        Err(()) => return Exchanged::Invalid,
    };
    out.extend_from_slice(&buf.unread()[..taken]);
    let mut clean = taken == buf.len();
    buf.consume(buf.len());
    if send(client, out).await.is_err() {
        return Exchanged::Broken;
    }
    while !body.is_done() {
        let n = match backend.read(&mut buf.data).await {
            Ok(n) => n,
            Err(_) => return Exchanged::Broken,
        };
        if n == 0 {
            if body.framing == Framing::Close {
                break;
            }
            return Exchanged::Broken;
        }
        let Ok(taken) = body.take(&buf.data[..n]) else { return Exchanged::Broken };
        clean &= taken == n;
        if send(client, &buf.data[..taken]).await.is_err() {
            return Exchanged::Broken;
        }
    }
    Exchanged::Complete { reusable: clean && head.reusable, keep_client }
}

/// Writes to the client and flushes (a TLS stream holds records back until then).
async fn send<W: AsyncWrite + Unpin>(client: &mut W, bytes: &[u8]) -> io::Result<()> {
    client.write_all(bytes).await?;
    client.flush().await
}

/// A parsed response head; its rewritten start is in the output buffer.
struct ResponseHead {
    len: usize,
    /// A 1xx answer before the real one: skipped.
    interim: bool,
    framing: Framing,
    /// The backend keeps the connection open after this response.
    reusable: bool,
    /// `Transfer-Encoding` when it names more than `chunked` (`gzip, chunked`): the body is
    /// copied as it is, so the client needs the same codings to read it.
    codings: Option<Vec<u8>>,
}

/// Parses a response head and writes the client's version (all but the framing headers and
/// the blank line, which `finish_head` adds). `Ok(None)`: not complete yet; `Err`: not a
/// response the proxy forwards.
fn parse_response(bytes: &[u8], plan: &Plan, out: &mut Vec<u8>) -> Result<Option<ResponseHead>, ()> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut res = httparse::Response::new(&mut slots);
    let len = match res.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let (Some(version), Some(code)) = (res.version, res.code) else { return Err(()) };
    if code == 101 || !(100..=999).contains(&code) {
        // The fast path never asks to switch protocols.
        return Err(());
    }
    if code < 200 {
        return Ok(Some(ResponseHead { len, interim: true, framing: Framing::Empty, reusable: true, codings: None }));
    }
    let mut connection = ConnectionOptions::default();
    let mut chunked = None;
    let mut length = None;
    let mut dated = false;
    let mut codings: Option<&[u8]> = None;
    for header in res.headers.iter() {
        if header.name.eq_ignore_ascii_case("date") {
            dated = true;
        } else if header.name.eq_ignore_ascii_case("connection") {
            connection.add(header.value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked.is_some() {
                // Codings split over two headers: not worth reading right.
                return Err(());
            }
            codings = Some(header.value.trim_ascii());
            // The last coding decides: chunked, or the body runs until the close.
            let last = header.value.rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value = parse_length(header.value).ok_or(())?;
            if length.is_some_and(|known| known != value) {
                return Err(());
            }
            length = Some(value);
        }
    }
    let framing = if plan.head || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::Close,
            (None, Some(length)) => Framing::Length(length),
        }
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(code).as_slice());
    out.push(b' ');
    out.extend_from_slice(res.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in res.headers.iter() {
        let framing_header = framing != Framing::Empty && header.name.eq_ignore_ascii_case("content-length");
        if !framing_header && !connection.stops(header.name) {
            write_header(out, header.name.as_bytes(), header.value);
        }
    }
    if !dated {
        // RFC 9110 section 6.6.1: a response forwarded without a `Date` gets one (hyper's
        // path adds it too).
        if let Some(date) = http_date() {
            write_header(out, b"date", &date);
        }
    }
    if let Framing::Length(length) = framing {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(length.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let reusable = version == 1 && !connection.close && framing != Framing::Close;
    let codings = match framing {
        Framing::Chunked | Framing::Close => {
            codings.filter(|c| !c.eq_ignore_ascii_case(b"chunked")).map(<[u8]>::to_vec)
        }
        Framing::Empty | Framing::Length(_) => None,
    };
    Ok(Some(ResponseHead { len, interim: false, framing, reusable, codings }))
}

/// Now as an HTTP date (`Sun, 06 Dec 2026 06:30:00 GMT`), formatted once a second per thread.
fn http_date() -> Option<[u8; 29]> {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, Option<[u8; 29]>)> = const { std::cell::Cell::new((u64::MAX, None)) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let (at, text) = cached.get();
        if at == second {
            return text;
        }
        // 29 bytes for every year from 1970 to 9999; a clock outside that sends no date.
        let text = httpdate::fmt_http_date(now).as_bytes().try_into().ok();
        cached.set((second, text));
        text
    })
}

/// A status code's three digits.
fn itoa3(code: u16) -> [u8; 3] {
    let digit = |n: u16| b'0' + u8::try_from(n % 10).unwrap_or(0);
    [digit(code / 100), digit(code / 10), digit(code)]
}

/// Ends the client's response head with its framing and connection headers.
fn finish_head(out: &mut Vec<u8>, framing: Framing, codings: Option<&[u8]>, keep_client: bool) {
    match codings {
        Some(codings) => write_header(out, b"transfer-encoding", codings),
        None if framing == Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        None => {}
    }
    if !keep_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Follows a response body's framing through the bytes as they pass, to find its end.
struct Body {
    framing: Framing,
    /// For `Length`: bytes still to come.
    left: u64,
    chunks: Chunks,
}

impl Body {
    fn new(framing: Framing) -> Self {
        let left = if let Framing::Length(length) = framing { length } else { 0 };
        Self { framing, left, chunks: Chunks::default() }
    }

    fn is_done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunks.is_done(),
            Framing::Close => false,
        }
    }

    /// How many of `bytes`, the next bytes from the backend, belong to the body.
    fn take(&mut self, bytes: &[u8]) -> Result<usize, ()> {
        match self.framing {
            Framing::Empty => Ok(0),
            Framing::Length(_) => {
                let n = usize::try_from(self.left).unwrap_or(usize::MAX).min(bytes.len());
                self.left -= n as u64;
                Ok(n)
            }
            Framing::Chunked => self.chunks.scan(bytes),
            Framing::Close => Ok(bytes.len()),
        }
    }
}

/// Where a chunked body's scanner is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk's size: its value so far and how many hex digits.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size: an extension (or whitespace) up to the CR.
    Extension(u64),
    /// The LF after a size line.
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final blank line.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

#[derive(Debug)]
struct Chunks {
    state: Chunk,
    trailer_bytes: usize,
}

impl Default for Chunks {
    fn default() -> Self {
        Self { state: Chunk::Size { value: 0, digits: 0 }, trailer_bytes: 0 }
    }
}

impl Chunks {
    fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Scans the next bytes of a chunked body; returns how many belong to it (all of them,
    /// or up to its end). Malformed framing is an error.
    fn scan(&mut self, bytes: &[u8]) -> Result<usize, ()> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                Chunk::Done => return Ok(i),
                Chunk::Data(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len() - i);
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 { Chunk::DataCr } else { Chunk::Data(left) };
                    continue;
                }
                _ => {}
            }
            let byte = bytes[i];
            i += 1;
            self.state = self.step(byte)?;
        }
        Ok(i)
    }

    fn step(&mut self, byte: u8) -> Result<Chunk, ()> {
        Ok(match (self.state, byte) {
            (Chunk::Size { value, digits }, _) if byte.is_ascii_hexdigit() => {
                if digits >= 15 {
                    return Err(());
                }
                let digit = u64::from(char::from(byte).to_digit(16).ok_or(())?);
                Chunk::Size { value: value << 4 | digit, digits: digits + 1 }
            }
            (Chunk::Size { value, digits: 1.. }, b';' | b' ' | b'\t') => Chunk::Extension(value),
            (Chunk::Size { value, digits: 1.. } | Chunk::Extension(value), b'\r') => Chunk::SizeLf(value),
            (Chunk::Extension(value), _) if byte != b'\n' => Chunk::Extension(value),
            (Chunk::SizeLf(0), b'\n') => Chunk::TrailerStart,
            (Chunk::SizeLf(value), b'\n') => Chunk::Data(value),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Size { value: 0, digits: 0 },
            (Chunk::TrailerStart, b'\r') => Chunk::FinalLf,
            (Chunk::TrailerStart | Chunk::TrailerLine, _) if byte != b'\n' => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_TRAILERS {
                    return Err(());
                }
                if byte == b'\r' { Chunk::TrailerLf } else { Chunk::TrailerLine }
            }
            (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
            (Chunk::FinalLf, b'\n') => Chunk::Done,
            _ => return Err(()),
        })
    }
}

/// Answers a request with the proxy's own error. The connection stays open only if the
/// request's body can be skipped from what is already read.
async fn answer<I>(io: &mut I, state: &mut State, plan: &Plan, error: ProxyError) -> bool
where
    I: AsyncWrite + Unpin,
{
    let skippable = state.body_left <= state.client.len() as u64;
    if skippable {
        state.client.consume(usize::try_from(state.body_left).unwrap_or(usize::MAX));
        state.body_left = 0;
    }
    let keep = skippable && !plan.close;
    let out = &mut state.response;
    out.clear();
    write_error(out, &error, keep);
    send(io, out).await.is_ok() && keep
}

/// The proxy's own answer, as `ProxyError::into_response` makes it on the hyper path.
fn write_error(out: &mut Vec<u8>, error: &ProxyError, keep: bool) {
    let status = error.status();
    let text = error.text();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in LOCAL_HEADERS {
        write_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    write_header(out, ERROR_HEADER.as_str().as_bytes(), error.code().as_bytes());
    write_header(out, b"content-length", text.len().to_string().as_bytes());
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(body: &[u8], piece: usize) -> Result<(usize, bool), ()> {
        let mut chunks = Chunks::default();
        let mut taken = 0;
        for part in body.chunks(piece) {
            taken += chunks.scan(part)?;
            if chunks.is_done() {
                break;
            }
        }
        Ok((taken, chunks.is_done()))
    }

    #[test]
    fn chunked_bodies_end_where_their_framing_says() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for piece in [1, 2, 3, 7, body.len()] {
            assert_eq!(scan_all(body, piece), Ok((end, true)), "pieces of {piece}");
        }
        assert_eq!(scan_all(b"0\r\n\r\n", 1), Ok((5, true)));
        assert_eq!(scan_all(b"3\r\nab", 2), Ok((5, false)));
        for bad in [&b"x\r\n"[..], b"\r\n", b"5\nhello", b"3\r\nabcX", b"fffffffffffffffff\r\n", b"0\r\n\n"] {
            assert_eq!(scan_all(bad, 1), Err(()), "{bad:?}");
        }
    }

    /// A small deterministic generator (xorshift), so that a failure can be replayed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A well-formed chunked body as an instance could send it: sizes in either case, with
    /// or without leading zeros and extensions, data that looks like framing, trailers or none.
    fn chunked_body(rng: &mut Rng) -> Vec<u8> {
        let mut body = Vec::new();
        for _ in 0..rng.below(6) {
            let len = [1, 2, 15, 16, 255, 4096][rng.below(6) as usize] + rng.below(3) as usize;
            let size = match rng.below(3) {
                0 => format!("{len:x}"),
                1 => format!("{len:X}"),
                _ => format!("00{len:x}"),
            };
            body.extend_from_slice(size.as_bytes());
            if rng.below(3) == 0 {
                body.extend_from_slice(b";name=\"a;b\"; x");
            }
            body.extend_from_slice(b"\r\n");
            body.extend((0..len).map(|i| b"0\r\n\r\n;x"[(i + rng.below(7) as usize) % 7]));
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n");
        for _ in 0..rng.below(3) {
            body.extend_from_slice(b"x-trailer: 0\r\n");
        }
        body.extend_from_slice(b"\r\n");
        body
    }

    #[test]
    fn generated_chunked_bodies_end_exactly_however_they_are_split() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..500 {
            let body = chunked_body(&mut rng);
            let mut stream = body.clone();
            stream.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let mut chunks = Chunks::default();
            let (mut at, mut taken) = (0, 0);
            while at < stream.len() && !chunks.is_done() {
                let end = (at + 1 + rng.below(40) as usize).min(stream.len());
                taken += chunks.scan(&stream[at..end]).unwrap_or_else(|()| panic!("case {case}: {body:?}"));
                at = end;
            }
            assert!(chunks.is_done(), "case {case}: not done");
            assert_eq!(taken, body.len(), "case {case}: the end is misplaced");
            // One byte short is never the end: the connection must not go back to the pool.
            let mut short = Chunks::default();
            assert_eq!(short.scan(&body[..body.len() - 1]), Ok(body.len() - 1), "case {case}");
            assert!(!short.is_done(), "case {case}: done one byte early");
        }
    }

    #[test]
    fn only_unambiguous_heads_are_taken() {
        assert!(crlf_only(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!crlf_only(b"GET / HTTP/1.1\nHost: a\r\n\r\n"));
        assert!(!crlf_only(b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n"));
        assert!(is_origin_form("/a/b?c=d&e=%20"));
        assert!(!is_origin_form("http://a/"));
        assert!(!is_origin_form("*"));
        assert!(!is_origin_form("/a\"b"));
        assert_eq!(parse_length(b"123"), Some(123));
        for bad in [&b""[..], b"+1", b"1 ", b"1,1", b"0x10", b"99999999999999999999"] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<httparse::Header<'a>> {
        pairs.iter().map(|(name, value)| httparse::Header { name, value: value.as_bytes() }).collect()
    }

    #[test]
    fn ambiguous_framing_goes_to_hyper() {
        let ok = [("Host", "a"), ("Content-Length", "3")];
        assert!(RequestHeaders::scan(&headers(&ok)).is_some());
        for pairs in [
            &[("Host", "a"), ("Content-Length", "3"), ("Transfer-Encoding", "chunked")][..],
            &[("Host", "a"), ("Content-Length", "3"), ("content-length", "3")],
            &[("Host", "a"), ("Content-Length", "3x")],
            &[("Host", "a"), ("Host", "b")],
            &[("Content-Length", "3")],
            &[("Host", "a"), ("Expect", "100-continue")],
            &[("Host", "a"), ("Upgrade", "websocket")],
            &[("Host", "a"), ("Connection", "upgrade")],
            &[("Host", "a"), ("Connection", "content-length")],
        ] {
            assert!(RequestHeaders::scan(&headers(pairs)).is_none(), "{pairs:?}");
        }
    }
}
