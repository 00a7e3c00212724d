//! The process runtime: plinth's embedded default for running service instances, each a
//! supervised child process listening on a loopback port.
//!
//! [`Instance::start`] spawns a supervisor task that runs the instance's command in its own
//! process group with exactly the environment it is given, passes every line of its output on
//! (as [`InstanceLine`]s, with plinth's own lines about starts, exits and health changes),
//! checks its health over plain HTTP/1.1 on `127.0.0.1:{port}` ([`HealthCheck`]), restarts it
//! with a doubling backoff when it exits, and reports a crash loop ([`RestartPolicy`]). The
//! state is a [`Health`], read with [`Instance::health`] or watched with [`Instance::watch`].
//!
//! A rollout starts an instance on a [`free_port`], waits with [`Instance::wait_healthy`],
//! switches traffic, and retires the old instance with [`Instance::stop`] (pre-stop hook,
//! SIGTERM, SIGKILL after the grace period).
//!
//! No instance runs without its supervisor: dropping every handle kills its process group, and
//! the kernel kills the process if the server dies (see [`plinth_terraform::process`], whose
//! runner this crate uses).

mod health;
mod instance;
mod restart;
mod spec;

pub use health::Health;
pub use instance::{Instance, NotHealthy, PreStopOutcome, Stopped};
pub use plinth_terraform::process::Exit;
pub use spec::{HealthCheck, InstanceLine, InstanceSpec, PreStop, RestartPolicy, free_port};
