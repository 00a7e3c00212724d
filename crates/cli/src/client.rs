//! Talking to a plinth server: where it is, the bearer token, and turning its JSON errors into
//! failures with their code and advice.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::output::{Failure, Format};

/// Where the server is and who we are; shared by every client command.
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

    fn request(&self, method: reqwest::Method, path: &str) -> Result<reqwest::blocking::RequestBuilder, Failure> {
        let Some(token) = &self.token else {
            return Err(Failure::new(
                "client.no_token",
                "no API token given",
                "Set PLINTH_TOKEN (the server prints the admin token on its first start and writes it to <data-dir>/admin.token).",
                self.format,
            ));
        };
        Ok(self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token))
    }

    fn send(&self, builder: reqwest::blocking::RequestBuilder) -> Result<reqwest::blocking::Response, Failure> {
        let response = builder.send().map_err(|e| {
            Failure::new(
                "client.unreachable",
                format!("could not reach the plinth server at {}: {}", self.base, root_cause(&e)),
                "Check that `plinth server` is running there, or point --server / PLINTH_SERVER at it.",
                self.format,
            )
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: serde_json::Value = response.json().unwrap_or_default();
        let error = &body["error"];
        let code = error["code"].as_str().map(leak).unwrap_or("server.error");
        let message =
            error["message"].as_str().map(str::to_owned).unwrap_or_else(|| format!("the server answered {status}"));
        let help = error["help"].as_str().unwrap_or("Check the server's log.").to_owned();
        Err(Failure::new(code, message, help, self.format))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T, Failure> {
        let response = self.send(self.request(reqwest::Method::GET, path)?.query(query))?;
        self.decode(response)
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
