//! plinth's domain model and decisions, as pure functions over plain data: the plinth.toml
//! model and its validation, stacks and their order, the local module graph, and which stacks
//! a change touches. This crate does no I/O; trees of files come in through [`tree::Tree`].

pub mod auth;
pub mod changes;
pub mod cidr;
pub mod config;
pub mod deploy;
pub mod environment;
pub mod error;
mod glob;
pub mod inputs;
pub mod mapping;
pub mod module_interface;
pub mod modules;
pub mod pattern;
pub mod redact;
pub mod release;
pub mod render;
pub mod run;
pub mod secret;
pub mod slug;
pub mod stack;
pub mod template;
pub mod time;
pub mod tree;

pub use config::{CONFIG_FILE, Config, Loaded};
pub use error::{Diagnostic, Diagnostics, ErrorCode, SourceFile};
pub use stack::{Stack, StackSet, Workspace};
