//! One client conversation. Sessions decode requests and call the core
//! ([`Relay`]: store, scheduler, backends); they know nothing about SSH.

pub mod build;
pub mod flight;
pub mod serve;

use std::sync::Arc;

use crate::scheduler::Scheduler;
use crate::ssh::LogSink;
use crate::store::Store;

/// Who is on the other end of a session, as authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId {
    pub name: String,
    /// Trusted clients' uploads are public; others' stay private to them.
    pub trusted: bool,
}

/// The shared core every session calls.
pub struct Relay {
    pub store: Store,
    pub scheduler: Arc<Scheduler>,
    pub limits: crate::config::Limits,
    pub flights: flight::Flights,
    /// Finish builds every client gave up on (`[cache] keep_going`).
    pub keep_going: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("client protocol")]
    Wire(#[from] crate::wire::Error),
    #[error("relay store")]
    Store(#[from] crate::store::Error),
    #[error("{0} needs `nix-store --serve --write`")]
    ReadOnly(&'static str),
    #[error("{0}")]
    Refused(String),
}

/// Sends one line of the relay's own to the client's log (stderr).
pub async fn say(log: &LogSink, msg: impl std::fmt::Display) {
    // The client may be gone; its log is then nobody's concern.
    let _ = log.send(format!("nix-relay: {msg}\n").into()).await;
}

/// Renders an error with its whole cause chain on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
