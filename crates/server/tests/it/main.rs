//! The plinth server end to end: a real server in-process, a real git repo, the real terraform
//! CLI with built-in providers only.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod environments;
mod harness;
mod releases;
mod runs;
mod secrets;
mod security;
mod shutdown;
mod triggers;
