//! One client conversation. Sessions decode requests and call the core
//! ([`Relay`]: store, scheduler, backends); they know nothing about SSH.

pub mod build;
pub mod flight;
pub mod serve;
mod watchdog;
pub mod worker;

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
    /// The last builds, newest last (for `/status`).
    recent: std::sync::Mutex<std::collections::VecDeque<BuildRecord>>,
    pub started: std::time::Instant,
}

/// Builds kept for `/status`.
const RECENT_BUILDS: usize = 50;

impl Relay {
    pub fn new(
        store: Store,
        scheduler: Arc<Scheduler>,
        limits: crate::config::Limits,
        keep_going: bool,
    ) -> Self {
        Relay {
            store,
            scheduler,
            limits,
            flights: Default::default(),
            keep_going,
            recent: Default::default(),
            started: std::time::Instant::now(),
        }
    }

    pub fn record(&self, r: BuildRecord) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_BUILDS {
            recent.pop_front();
        }
        recent.push_back(r);
    }

    pub fn recent_builds(&self) -> Vec<BuildRecord> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// One finished backend build, as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildRecord {
    pub drv: String,
    pub system: String,
    pub backend: String,
    pub outcome: &'static str,
    pub duration_seconds: f64,
    pub finished_unix: u64,
}

impl BuildRecord {
    pub fn new(
        drv_path: &crate::wire::store_path::StorePath,
        system: &str,
        backend: &str,
        outcome: crate::metrics::Outcome,
        took: std::time::Duration,
    ) -> Self {
        BuildRecord {
            drv: crate::wire::build::drv_name(drv_path).to_owned(),
            system: system.to_owned(),
            backend: backend.to_owned(),
            outcome: outcome.label(),
            duration_seconds: took.as_secs_f64(),
            finished_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
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
