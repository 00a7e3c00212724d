//! Talking to a plinth server: where it is, the bearer token, and turning its JSON errors into
//! failures with their code and advice.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::output::{Failure, Format};

// Where the server is and who we are; shared by every client command. A plain comment, not a
// doc comment: clap would take a doc comment as the description of every command that
// flattens this, in place of the command's own (main.rs defers building subcommands).
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The server's URL.
    #[arg(long, env = "PLINTH_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    pub server: String,
    /// The API token. Prefer the environment variable: arguments show in process lists.
    #[arg(long, env = "PLINTH_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// An HTTP client for one server.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
    format: Format,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    pub fn new(connection: &Connection, format: Format) -> Result<Client, Failure> {
        // One TLS stack, one crypto provider: rustls with ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = connection.server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::new(
                "client.bad_server",
                format!("`{base}` is not an http:// or https:// URL"),
                "Pass --server http://HOST:PORT or set PLINTH_SERVER.",
                format,
            ));
        }
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(None)
            .build()
            .map_err(|e| {
                Failure::new("client.setup", e.to_string(), "This is a bug in plinth; please report it.", format)
            })?;
        Ok(Client { base, token: connection.token.clone().filter(|t| !t.is_empty()), http, format })
    }

    fn token(&self) -> Result<&str, Failure> {
        self.token.as_deref().ok_or_else(|| {
            Failure::new(
                "client.no_token",
                "no API token given",
                "Set PLINTH_TOKEN (the server prints the admin token on its first start and writes it to <data-dir>/admin.token).",
                self.format,
            )
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> Result<reqwest::blocking::RequestBuilder, Failure> {
        let token = self.token()?;
        Ok(self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token))
    }

    fn unreachable(&self, cause: impl std::fmt::Display) -> Failure {
        Failure::new(
            "client.unreachable",
            format!("could not reach the plinth server at {}: {cause}", self.base),
            "Check that `plinth server` is running there, or point --server / PLINTH_SERVER at it.",
            self.format,
        )
    }

    /// The failure an error answer describes: its code, message and help, from the API's JSON.
    fn api_error(&self, status: impl std::fmt::Display, body: &serde_json::Value) -> Failure {
        let error = &body["error"];
        let code = error["code"].as_str().map(leak).unwrap_or("server.error");
        let message =
            error["message"].as_str().map(str::to_owned).unwrap_or_else(|| format!("the server answered {status}"));
        let help = error["help"].as_str().unwrap_or("Check the server's log.").to_owned();
        Failure::new(code, message, help, self.format)
    }

    fn send(&self, builder: reqwest::blocking::RequestBuilder) -> Result<reqwest::blocking::Response, Failure> {
        let response = builder.send().map_err(|e| self.unreachable(root_cause(&e)))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: serde_json::Value = response.json().unwrap_or_default();
        Err(self.api_error(status, &body))
    }

    /// POSTs to `path` asking to switch the connection to `protocol`, and returns the
    /// connection once the server has answered `101 Switching Protocols`. An error answer is a
    /// failure with the API's code, as for every other request.
    ///
    /// The request is written by hand over a plain TCP connection: reqwest's blocking client
    /// does not hand over upgraded connections. So this needs an `http://` server URL.
    pub fn upgrade(&self, path: &str, query: &[(&str, String)], protocol: &str) -> Result<Upgraded, Failure> {
        let token = self.token()?;
        let Some(rest) = self.base.strip_prefix("http://") else {
            return Err(Failure::new(
                "client.upgrade_unsupported",
                format!("`{}` is not an http:// URL, and this command speaks plain HTTP only for now", self.base),
                "Point --server / PLINTH_SERVER at the server's http:// address (on its host, or through an SSH tunnel).",
                self.format,
            ));
        };
        let (authority, prefix) = match rest.split_once('/') {
            Some((authority, prefix)) => (authority, format!("/{prefix}")),
            None => (rest, String::new()),
        };
        let has_port = authority.rsplit_once(':').is_some_and(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            && !authority.ends_with(']');
        let address = if has_port { authority.to_owned() } else { format!("{authority}:80") };
        let addrs: Vec<_> = address.to_socket_addrs().map_err(|e| self.unreachable(e))?.collect();
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut stream =
            stream.ok_or_else(|| self.unreachable(last.map_or_else(|| "no address".to_owned(), |e| e.to_string())))?;
        let _ = stream.set_nodelay(true);
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{}={}", segment(k), segment(v))).collect();
        let target =
            if query.is_empty() { format!("{prefix}{path}") } else { format!("{prefix}{path}?{}", query.join("&")) };
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\nContent-Length: 0\r\nUser-Agent: plinth/{}\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        let broken = |e: std::io::Error| self.unreachable(e);
        stream.write_all(request.as_bytes()).map_err(broken)?;
        let writer = stream.try_clone().map_err(broken)?;
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).map_err(broken)?;
        let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
            Failure::new(
                "client.bad_response",
                format!("the server's answer could not be read: `{}`", status_line.trim()),
                "Check that --server points at a plinth server of the same version.",
                self.format,
            )
        })?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(broken)? == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.trim().eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        if status == 101 {
            return Ok(Upgraded { reader, writer });
        }
        let mut body = vec![0u8; length.min(1024 * 1024)];
        let _ = reader.read_exact(&mut body);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        Err(self.api_error(status_line.trim().split_once(' ').map_or("", |(_, s)| s), &body))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T, Failure> {
        let response = self.send(self.request(reqwest::Method::GET, path)?.query(query))?;
        self.decode(response)
    }

    /// GETs a text answer, such as a PEM certificate.
    pub fn get_text(&self, path: &str) -> Result<String, Failure> {
        let response = self.send(self.request(reqwest::Method::GET, path)?)?;
        response.text().map_err(|e| {
            Failure::new(
                "client.bad_response",
                format!("the server's answer could not be read: {e}"),
                "Check that --server points at a plinth server of the same version.",
                self.format,
            )
        })
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> Result<T, Failure> {
        let response = self.send(self.request(reqwest::Method::POST, path)?.json(body))?;
        self.decode(response)
    }

    /// POSTs a body that is already JSON text (such as a file the user gave), unparsed, so the
    /// server reports what is wrong with it.
    pub fn post_raw<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<T, Failure> {
        let request = self
            .request(reqwest::Method::POST, path)?
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let response = self.send(request)?;
        self.decode(response)
    }

    pub fn put<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> Result<T, Failure> {
        let response = self.send(self.request(reqwest::Method::PUT, path)?.json(body))?;
        self.decode(response)
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let response = self.send(self.request(reqwest::Method::DELETE, path)?)?;
        self.decode(response)
    }

    /// Streams a response line by line, calling `line` for each, until it ends.
    pub fn stream_lines(
        &self,
        path: &str,
        query: &[(&str, String)],
        mut line: impl FnMut(&str),
    ) -> Result<(), Failure> {
        let response = self.send(self.request(reqwest::Method::GET, path)?.query(query))?;
        let reader = BufReader::new(response);
        for next in reader.lines() {
            let text = next.map_err(|e| {
                Failure::new(
                    "client.stream",
                    format!("the stream broke: {e}"),
                    "Run the command again; it resumes where you were with --after.",
                    self.format,
                )
            })?;
            line(&text);
        }
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, response: reqwest::blocking::Response) -> Result<T, Failure> {
        response.json().map_err(|e| {
            Failure::new(
                "client.bad_response",
                format!("the server's answer could not be read: {e}"),
                "Check that --server points at a plinth server of the same version.",
                self.format,
            )
        })
    }
}

/// A connection switched to another protocol: the server's bytes come from `reader`, and ours go
/// to `writer` (the same socket).
#[derive(Debug)]
pub struct Upgraded {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

/// Error codes come from the server as strings; failures keep `&'static str` codes. The set of
/// codes is small and fixed, so keeping each one alive for the life of the process is fine.
fn leak(code: &str) -> &'static str {
    Box::leak(code.to_owned().into_boxed_str())
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut current = e;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// Percent-encodes a path segment (stack names hold `/`).
pub fn segment(s: &str) -> String {
    let mut out = String::new();
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
