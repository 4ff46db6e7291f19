//! nix-relay: one SSH endpoint for Nix remote builds.
//!
//! Stock Nix clients list the relay as a single builder (`ssh://` or
//! `ssh-ng://`). The relay decodes each session ([`session`]), keeps every
//! path it sees in its own store ([`store`], Nix's binary-cache layout),
//! routes each derivation to the best backend ([`scheduler`]) and drives
//! that backend over the same protocols ([`backend`]). See ARCHITECTURE.md.

pub mod admin;
pub mod backend;
pub mod cli;
pub mod config;
pub mod durable;
pub mod ec2;
pub mod http;
pub mod keys;
pub mod machines;
pub mod metrics;
pub mod scheduler;
pub mod session;
pub mod ssh;
pub mod status;
pub mod store;
pub mod wire;
