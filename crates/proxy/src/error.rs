//! The proxy's own answers when it cannot forward a request, and why `serve` can fail.
//!
//! An answer of the proxy's own is plain text, `<code>: <message>; <help>` on one line, with
//! the header `x-plinth-error: <code>` so that users and tests can tell it from the app's own
//! 404s and 502s. The codes are stable:
//!
//! | status | code                         | when                                                 |
//! |--------|------------------------------|------------------------------------------------------|
//! | 400    | `proxy.invalid_host`         | the request names no host, or not a readable one     |
//! | 405    | `proxy.connect_not_supported`| a `CONNECT` request: the proxy is no forward proxy   |
//! | 404    | `proxy.unknown_host`         | no route matches the host                            |
//! | 503    | `proxy.no_healthy_instance`  | the host's route has no backend                      |
//! | 502    | `proxy.bad_gateway`          | no backend could be reached, or one failed mid-way   |

use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use hyper::{Response, StatusCode};
use plinth_core::ErrorCode;

use crate::body::ProxyBody;

/// The header that marks an answer as the proxy's own; its value is the error code.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-plinth-error");

/// Why the proxy answered a request itself instead of forwarding it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    #[error("the request names no valid host")]
    InvalidHost,
    #[error("the proxy does not tunnel CONNECT requests")]
    ConnectNotSupported,
    #[error("no service is routed for host `{host}`")]
    UnknownHost { host: String },
    #[error("no healthy instance serves host `{host}`")]
    NoHealthyInstance { host: String },
    #[error("no instance for host `{host}` could be reached")]
    Unreachable { host: String },
    #[error("the instance for host `{host}` failed before answering")]
    BackendFailed { host: String },
}

impl ErrorCode for ProxyError {
    fn code(&self) -> &'static str {
        match self {
            ProxyError::InvalidHost => "proxy.invalid_host",
            ProxyError::ConnectNotSupported => "proxy.connect_not_supported",
            ProxyError::UnknownHost { .. } => "proxy.unknown_host",
            ProxyError::NoHealthyInstance { .. } => "proxy.no_healthy_instance",
            ProxyError::Unreachable { .. } | ProxyError::BackendFailed { .. } => "proxy.bad_gateway",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            ProxyError::InvalidHost => 400,
            ProxyError::ConnectNotSupported => 405,
            ProxyError::UnknownHost { .. } => 404,
            ProxyError::NoHealthyInstance { .. } => 503,
            ProxyError::Unreachable { .. } | ProxyError::BackendFailed { .. } => 502,
        }
    }

    fn help(&self) -> String {
        match self {
            ProxyError::InvalidHost => "Send a Host header naming the service, such as `app.localhost`.".into(),
            ProxyError::ConnectNotSupported => {
                "Send requests to the service's host directly; plinth's proxy only routes by Host.".into()
            }
            ProxyError::UnknownHost { .. } => "Check the service's `hosts` in plinth.toml.".into(),
            ProxyError::NoHealthyInstance { .. } => {
                "Wait for the deployment to finish, or check why the service's instances fail their health checks."
                    .into()
            }
            ProxyError::Unreachable { .. } => {
                "Check that the service's instances are running and listening on their ports.".into()
            }
            ProxyError::BackendFailed { .. } => {
                "Check the service's logs; the instance closed the connection before its answer was complete.".into()
            }
        }
    }
}

/// The headers of every answer of the proxy's own, besides `x-plinth-error` and the framing;
/// both serving paths send exactly these.
pub(crate) const LOCAL_HEADERS: [(HeaderName, &str); 3] =
    [(CONTENT_TYPE, "text/plain; charset=utf-8"), (X_CONTENT_TYPE_OPTIONS, "nosniff"), (CACHE_CONTROL, "no-store")];

impl ProxyError {
    /// The status of the answer (500 should a code ever be out of range).
    pub(crate) fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The answer's body: `<code>: <message>; <help>` on one line.
    pub(crate) fn text(&self) -> String {
        format!("{}: {self}; {}\n", self.code(), lowercase_first(&self.help()))
    }

    /// The plain-text answer, with the code in `x-plinth-error`.
    pub(crate) fn into_response(self) -> Response<ProxyBody> {
        let mut response = Response::new(ProxyBody::text(self.text()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        for (name, value) in LOCAL_HEADERS {
            headers.insert(name, HeaderValue::from_static(value));
        }
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.code()));
        response
    }
}

fn lowercase_first(sentence: &str) -> String {
    let mut chars = sentence.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Why [`Proxy::serve`](crate::Proxy::serve) or [`Proxy::serve_tls`](crate::Proxy::serve_tls)
/// stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the proxy's listener is not usable: {0}")]
    Listener(std::io::Error),
    #[error("the proxy could not start its worker threads: {0}")]
    Workers(std::io::Error),
}

impl ErrorCode for ServeError {
    fn code(&self) -> &'static str {
        match self {
            ServeError::Listener(_) => "proxy.listener",
            ServeError::Workers(_) => "proxy.workers",
        }
    }

    fn http_status(&self) -> u16 {
        500
    }

    fn help(&self) -> String {
        match self {
            ServeError::Listener(_) => {
                "Check that `--proxy-listen` (or `--tls-listen`) names a free address this user may bind.".into()
            }
            ServeError::Workers(_) => {
                "The system refused a thread or an event queue: check this user's limits on processes and open \
                 files (`ulimit -u`, `ulimit -n`)."
                    .into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_their_code() {
        let response = ProxyError::UnknownHost { host: "x.localhost".into() }.into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[ERROR_HEADER], "proxy.unknown_host");
        assert_eq!(
            response.body().text_for_tests(),
            Some(
                "proxy.unknown_host: no service is routed for host `x.localhost`; \
                 check the service's `hosts` in plinth.toml.\n"
            )
        );
        for (error, status) in [
            (ProxyError::InvalidHost, 400),
            (ProxyError::ConnectNotSupported, 405),
            (ProxyError::NoHealthyInstance { host: "a".into() }, 503),
            (ProxyError::Unreachable { host: "a".into() }, 502),
            (ProxyError::BackendFailed { host: "a".into() }, 502),
        ] {
            let code = error.code();
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()[ERROR_HEADER], code);
        }
    }
}
