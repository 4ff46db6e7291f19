//! The client-facing front end: the SSH server Nix clients log into
//! ([`server`]) and the one command line it accepts ([`command`]).
//! It authenticates, then hands the channel's bytes to a protocol session
//! (`session::serve` / `session::worker`); nothing below it knows SSH.

pub mod command;
pub mod server;
