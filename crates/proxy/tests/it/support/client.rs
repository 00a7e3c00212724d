//! Clients: hyper's own HTTP/1 client on one connection, and a raw TCP client for what hyper
//! would not send (no Host, garbage, upgrades, a disconnect mid-response).

use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Bytes};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HOST;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::within;

/// A response read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The backend that answered, from its `x-backend` header.
    pub fn backend(&self) -> &str {
        self.header("x-backend").unwrap_or("<none>")
    }

    /// The proxy's error code, if the proxy answered itself.
    pub fn error_code(&self) -> Option<&str> {
        self.header("x-plinth-error")
    }

    pub async fn read(response: Response<hyper::body::Incoming>) -> Result<Self, hyper::Error> {
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Self { status: parts.status.as_u16(), headers: parts.headers, body })
    }
}

/// Opens one HTTP/1 connection with hyper's client.
pub async fn handshake<B>(addr: SocketAddr) -> SendRequest<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

/// One keep-alive connection for many requests.
#[derive(Debug)]
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn open(addr: SocketAddr) -> Self {
        Self { sender: handshake(addr).await }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply, hyper::Error> {
        let req = Request::get(path).header(HOST, host).body(Full::default()).unwrap();
        self.send(req).await
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        self.sender.ready().await?;
        Reply::read(self.sender.send_request(req).await?).await
    }
}

/// One request on a connection of its own.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    let mut sender = handshake::<Empty<Bytes>>(addr).await;
    let req = Request::get(path).header(HOST, host).body(Empty::new()).unwrap();
    within(&format!("GET {host}{path}"), async { Reply::read(sender.send_request(req).await?).await }).await.unwrap()
}

/// A raw HTTP/1 connection: bytes out, responses parsed by hand.
#[derive(Debug)]
pub struct Raw {
    stream: BufReader<TcpStream>,
}

/// A response as read off the wire; header names lowercased.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self { stream: BufReader::new(TcpStream::connect(addr).await.unwrap()) }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// Reads a status line and headers.
    pub async fn read_head(&mut self) -> RawResponse {
        within("a response head", async {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            let status =
                line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status line {line:?}"));
            let mut headers = Vec::new();
            loop {
                line.clear();
                self.stream.read_line(&mut line).await.unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
            RawResponse { status, headers, body: Vec::new() }
        })
        .await
    }

    /// Reads a whole response framed by `Content-Length` or chunked encoding.
    pub async fn read_response(&mut self) -> RawResponse {
        let mut response = self.read_head().await;
        let body = within("a response body", async {
            if let Some(length) = response.header("content-length") {
                let mut body = vec![0; length.parse().unwrap()];
                self.stream.read_exact(&mut body).await.unwrap();
                return body;
            }
            assert_eq!(response.header("transfer-encoding"), Some("chunked"), "{response:?}");
            let mut body = Vec::new();
            let mut line = String::new();
            loop {
                line.clear();
                self.stream.read_line(&mut line).await.unwrap();
                let size = usize::from_str_radix(line.trim_end(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                self.stream.read_exact(&mut chunk).await.unwrap();
                if size == 0 {
                    return body;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        })
        .await;
        response.body = body;
        response
    }

    /// Reads exactly `n` bytes (after a protocol switch, or of a body).
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut bytes = vec![0; n];
        within("bytes to read", self.stream.read_exact(&mut bytes)).await.unwrap();
        bytes
    }

    /// Reads until the peer closes the connection; what arrived.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut bytes = Vec::new();
        within("the connection to close", self.stream.read_to_end(&mut bytes)).await.unwrap();
        bytes
    }

    pub fn into_inner(self) -> TcpStream {
        self.stream.into_inner()
    }
}
