//! plinth-proxy end to end: the real proxy between real clients and real backends, all over TCP
//! on 127.0.0.1.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod bodies;
mod drain;
mod fast;
mod headers;
mod keep_alive;
mod retry;
mod routing;
mod shutdown;
mod support;
mod switch;
mod tls;
mod upgrade;
