//! One client conversation, and the core it talks to.
//!
//! [`Core`] is the relay's one core (store, scheduler, backend pool,
//! flights, limits; its fields private) with a typed async API both
//! protocol fronts call, each request arm "decode → core call → encode":
//! queries, uploads, exports and NARs (`api`), builds ([`Core::build`] →
//! a [`build::BuildHandle`] of typed events) and remote-store builds
//! ([`derived`]). Its errors are one [`CoreError`], classified
//! ([`Class`]); the fronts map it to their protocol's form.
//!
//! Parts: [`serve`] and [`worker`] (one conversation per protocol; a
//! worker client's every reply is a STDERR stream, its build logs
//! `RESULT buildLogLine` messages under one build activity, a worker
//! backend's other activities nested under it); [`build`] (one
//! BuildDerivation: cache hit, attach, or a new flight; a build lost to
//! infrastructure is retried on another backend, up to 3 attempts, one
//! that fails on its own is not); [`flight`] (builds in flight, keyed by
//! scope and outputs, with their attached sessions); `handle` (a build as
//! one session reads it); `outputs` (the tee); `watchdog` (the client's
//! `timeout` and `max-silent-time`, enforced by the relay too); [`log`]
//! (the flight's event sink, its bounds and max-log-size). A client that
//! sent no limits is still protected from a wedged SSH backend:
//! [`crate::ssh::stall`] cuts one silent for `backend_stall_timeout`, and
//! the build counts as lost.

mod api;
mod backlog;
pub mod build;
pub mod derived;
mod error;
pub mod flight;
mod handle;
mod lease;
pub mod log;
mod outputs;
mod push;
pub mod serve;
mod watchdog;
pub mod worker;

use std::sync::Arc;

pub use self::api::{Holder, NarOut};
pub use self::error::{Class, CoreError};
use crate::buildlog::LogSink;
use crate::scheduler::Scheduler;
use crate::store::Store;

/// Who is on the other end of a session, as authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId {
    pub name: String,
    /// Trusted clients' uploads are public; others' stay private to them.
    pub trusted: bool,
}

/// The relay's core: what every session calls. Its fields are private
/// (to `session`); the accessors below are for `/status`, the HTTP cache,
/// the command line and tests, not for the protocol fronts, which use the
/// core's operations.
pub struct Core {
    store: Store,
    scheduler: Arc<Scheduler>,
    /// Warm backend sessions, reused across builds.
    pool: Arc<crate::backend::Pool>,
    limits: crate::config::Limits,
    flights: flight::Flights,
    /// Finish builds every client gave up on (`[cache] keep_going`).
    keep_going: bool,
    /// `[[client]]` build timeouts, by client name (see [`Core::timeouts`]).
    client_timeouts: std::collections::HashMap<String, crate::config::Timeouts>,
    /// The last builds, newest last (for `/status`).
    recent: std::sync::Mutex<std::collections::VecDeque<BuildRecord>>,
    started: std::time::Instant,
    /// Binary caches the relay substitutes from (`[cache] upstream`).
    upstream: Option<Arc<crate::upstream::Upstream>>,
    /// Untrusted clients' private entries in the bucket (`[cache] store`).
    private: Option<Arc<crate::s3::private::Private>>,
    /// Cross-relay leases on public builds, in the bucket.
    leases: Option<Arc<crate::s3::lease::Leases>>,
}

/// Builds kept for `/status`.
const RECENT_BUILDS: usize = 50;

impl Core {
    pub fn new(
        store: Store,
        scheduler: Arc<Scheduler>,
        limits: crate::config::Limits,
        keep_going: bool,
    ) -> Self {
        Core {
            store,
            scheduler,
            pool: crate::backend::Pool::new(crate::backend::PoolLimits::from_limits(&limits)),
            limits,
            flights: Default::default(),
            keep_going,
            client_timeouts: Default::default(),
            recent: Default::default(),
            started: std::time::Instant::now(),
            upstream: None,
            private: None,
            leases: None,
        }
    }

    /// Substituting from `upstream` (None: from nothing).
    pub fn with_upstream(mut self, upstream: Option<Arc<crate::upstream::Upstream>>) -> Self {
        self.upstream = upstream;
        self
    }

    pub fn upstream(&self) -> Option<&Arc<crate::upstream::Upstream>> {
        self.upstream.as_ref()
    }

    /// Pulling untrusted clients' private entries from `private` (None:
    /// from nowhere).
    pub fn with_private(mut self, private: Option<Arc<crate::s3::private::Private>>) -> Self {
        self.private = private;
        self
    }

    /// Building public derivations under `leases` (None: no leases).
    pub fn with_leases(mut self, leases: Option<Arc<crate::s3::lease::Leases>>) -> Self {
        self.leases = leases;
        self
    }

    /// Whether `client` sees `path` now, pulled from its private scope in
    /// the bucket if need be (untrusted clients only: a trusted client has
    /// no private scope). A failed pull is logged and counts as absent.
    pub async fn pull_private(
        &self,
        client: &ClientId,
        path: &crate::wire::store_path::StorePath,
    ) -> bool {
        let Some(p) = self.private.as_ref().filter(|_| !client.trusted) else {
            return false;
        };
        let up = self.upstream.clone();
        let public = move |r: crate::wire::store_path::StorePath| {
            let up = up.clone();
            Box::pin(async move {
                match up {
                    Some(u) => u.fetch(&r).await.unwrap_or(false),
                    None => false,
                }
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        };
        match p.pull(&client.name, path, &public).await {
            Ok(there) => there,
            Err(e) => {
                tracing::warn!("{}", crate::error_chain(&e));
                false
            }
        }
    }

    /// With `[[client]]` build timeouts, by client name.
    pub fn with_client_timeouts(
        mut self,
        t: std::collections::HashMap<String, crate::config::Timeouts>,
    ) -> Self {
        self.client_timeouts = t;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    pub fn pool(&self) -> &crate::backend::Pool {
        &self.pool
    }

    pub fn limits(&self) -> &crate::config::Limits {
        &self.limits
    }

    pub fn flights(&self) -> &flight::Flights {
        &self.flights
    }

    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    /// The build timeouts for `client` when it sends none: its own
    /// `[[client]]` ones, else `[limits]`.
    pub fn timeouts(&self, client: &str) -> crate::config::Timeouts {
        let own = self
            .client_timeouts
            .get(client)
            .copied()
            .unwrap_or_default();
        own.or(self.limits.timeouts)
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

/// What `/status` shows instead of the name of a private build (one whose
/// outputs are private to an untrusted client, see the trust model).
pub const REDACTED: &str = "(private)";

/// One finished backend build, as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildRecord {
    /// The derivation's name, or [`REDACTED`] for a private build.
    pub drv: String,
    pub private: bool,
    pub system: String,
    pub backend: String,
    pub outcome: &'static str,
    pub duration_seconds: f64,
    pub finished_unix: u64,
}

impl BuildRecord {
    pub fn new(
        drv_path: &crate::wire::store_path::StorePath,
        scope: &crate::store::Scope,
        system: &str,
        backend: &str,
        outcome: crate::metrics::Outcome,
        took: std::time::Duration,
    ) -> Self {
        let private = *scope != crate::store::Scope::Public;
        BuildRecord {
            drv: if private {
                REDACTED.to_owned()
            } else {
                crate::wire::build::drv_name(drv_path).to_owned()
            },
            private,
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

/// Why a session ended: its client's protocol, or a core operation whose
/// failure the protocol cannot carry (see each session).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("client protocol")]
    Wire(#[from] crate::wire::Error),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{0} needs `nix-store --serve --write`")]
    ReadOnly(&'static str),
    #[error("{0}")]
    Refused(String),
}

impl Error {
    pub fn class(&self) -> Class {
        match self {
            Error::Core(e) => e.class(),
            Error::Wire(_) | Error::ReadOnly(_) | Error::Refused(_) => Class::Client,
        }
    }
}

/// Sends one line of the relay's own to the client's log (stderr).
pub async fn say(log: &LogSink, msg: impl std::fmt::Display) {
    // The client may be gone; its log is then nobody's concern.
    let _ = log.send(format!("nix-relay: {msg}\n").into()).await;
}
