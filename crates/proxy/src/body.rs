//! The body of every answer the proxy gives: a backend's response streamed through, or a short
//! text of the proxy's own.
//!
//! A forwarded body holds the request's in-flight count and the backend connection. When the
//! backend's body ends, the connection goes back to the pool (once hyper says it can take
//! another request) and the count is released; if the body is dropped before its end (the
//! client went away), the connection is closed and the count released all the same.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

use crate::backend::{InFlight, Sender};

#[derive(Debug)]
pub(crate) struct ProxyBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Forwarded { inner: Incoming, done: Option<Done> },
    Local(Option<Bytes>),
}

/// What a forwarded body gives back when it ends.
#[derive(Debug)]
struct Done {
    in_flight: InFlight,
    sender: Sender,
}

impl ProxyBody {
    pub(crate) fn forwarded(inner: Incoming, in_flight: InFlight, sender: Sender) -> Self {
        Self { kind: Kind::Forwarded { inner, done: Some(Done { in_flight, sender }) } }
    }

    pub(crate) fn text(text: String) -> Self {
        Self { kind: Kind::Local(Some(Bytes::from(text))) }
    }

    pub(crate) fn empty() -> Self {
        Self { kind: Kind::Local(None) }
    }

    #[cfg(test)]
    pub(crate) fn text_for_tests(&self) -> Option<&str> {
        match &self.kind {
            Kind::Local(Some(bytes)) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }
}

impl Done {
    /// Returns the connection to the pool if the response was read to its end, then releases
    /// the count, so that a drained backend's connections are already settled.
    fn finish(self, complete: bool) {
        let Done { in_flight, mut sender } = self;
        if complete {
            let backend = in_flight.backend();
            if sender.is_ready() {
                backend.checkin(sender);
            } else if !sender.is_closed()
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                // hyper marks the connection ready a moment after the body's end.
                let backend = std::sync::Arc::clone(backend);
                runtime.spawn(async move {
                    if sender.ready().await.is_ok() {
                        backend.checkin(sender);
                    }
                });
            }
        }
        drop(in_flight);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Forwarded { inner, done } => {
                let polled = Pin::new(inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => done.take().map_or((), |d| d.finish(true)),
                    Poll::Ready(Some(Err(_))) => done.take().map_or((), |d| d.finish(false)),
                    Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(bytes) => bytes.is_none(),
            Kind::Forwarded { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Forwarded { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Kind::Forwarded { inner, done } = &mut self.kind
            && let Some(done) = done.take()
        {
            done.finish(inner.is_end_stream());
        }
    }
}
