//! One client conversation. Sessions decode requests and call the core
//! ([`Relay`]: store, scheduler, backends); they know nothing about SSH.
//!
//! Parts: [`serve`] and [`worker`] (one conversation per protocol; a
//! worker client's every reply is a STDERR stream, its build logs
//! `RESULT buildLogLine` messages under one build activity); [`build`]
//! (one BuildDerivation: cache hit, attach, or a new flight; a build lost
//! to infrastructure is retried on another backend, up to 3 attempts, one
//! that fails on its own is not); [`flight`] (builds in flight, keyed by
//! scope and outputs, with their attached sessions); `outputs` (the tee);
//! `watchdog` (the client's `timeout` and `max-silent-time`, enforced by
//! the relay too); [`log`] (the build log's bounds and max-log-size). A
//! client that sent no limits is still protected from a wedged SSH backend:
//! [`crate::ssh::stall`] cuts one silent for `backend_stall_timeout`, and
//! the build counts as lost.

pub mod build;
pub mod derived;
mod error;
pub mod flight;
pub mod log;
mod outputs;
pub mod serve;
mod watchdog;
pub mod worker;

use std::sync::Arc;

use crate::buildlog::LogSink;
use crate::scheduler::Scheduler;
use crate::store::Store;
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;

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
    /// Warm backend sessions, reused across builds.
    pub pool: Arc<crate::backend::Pool>,
    pub limits: crate::config::Limits,
    pub flights: flight::Flights,
    /// Finish builds every client gave up on (`[cache] keep_going`).
    pub keep_going: bool,
    /// `[[client]]` build timeouts, by client name (see [`Relay::timeouts`]).
    pub client_timeouts: std::collections::HashMap<String, crate::config::Timeouts>,
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
            pool: crate::backend::Pool::new(crate::backend::PoolLimits::from_limits(&limits)),
            limits,
            flights: Default::default(),
            keep_going,
            client_timeouts: Default::default(),
            recent: Default::default(),
            started: std::time::Instant::now(),
        }
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
    #[error("remote-store build")]
    Derived(#[from] derived::DerivedError),
}

/// The finished build still holding `path` on its backend, as `client`
/// sees it: its own last build's (`pending`), else any finished flight's.
/// An output a session reported built is servable at once from every
/// session (Nix 2.26 fetches a build's outputs over a second connection).
pub struct Holder {
    pub finished: Arc<tokio::sync::Mutex<outputs::Finished>>,
    _claim: Option<flight::Attachment>,
}

pub fn holder(
    relay: &Relay,
    pending: Option<&build::Pending>,
    client: &ClientId,
    path: &StorePath,
) -> Option<Holder> {
    if let Some(p) = pending
        && p.holds(path)
    {
        let finished = p.finished.clone();
        return Some(Holder {
            finished,
            _claim: None,
        });
    }
    let (claim, finished) = relay.flights.holding(path, &client.name)?;
    Some(Holder {
        finished,
        _claim: Some(claim),
    })
}

/// Metadata of `path` as `client` sees it: an output of a finished build
/// still on the backend ([`holder`]), else the relay store.
pub async fn lookup(
    relay: &Relay,
    pending: Option<&build::Pending>,
    client: &ClientId,
    path: &StorePath,
) -> Result<Option<ValidPathInfo>, Error> {
    if let Some(h) = holder(relay, pending, client, path)
        && let Some(i) = h.finished.lock().await.outputs.get(path)
    {
        return Ok(Some(i.clone()));
    }
    Ok(relay.store.path_info(path, Some(&client.name)).await?)
}

/// Publishes an upload whose NAR `writer` has received, where the trust
/// rules put it (`Store::commit_upload`: checked metadata, verified
/// signatures, an existing public entry kept), and counts its bytes.
pub async fn commit_upload(
    relay: &Relay,
    client: &ClientId,
    writer: crate::store::NarWriter,
    info: ValidPathInfo,
) -> Result<crate::store::Scope, crate::store::Error> {
    crate::metrics::nar_bytes(crate::metrics::Direction::FromClient, info.nar_size);
    let verify = crate::store::Verify::Declared;
    (relay.store)
        .commit_upload(writer, info, verify, &client.name, client.trusted)
        .await
}

/// Sends one line of the relay's own to the client's log (stderr).
pub async fn say(log: &LogSink, msg: impl std::fmt::Display) {
    // The client may be gone; its log is then nobody's concern.
    let _ = log.send(format!("nix-relay: {msg}\n").into()).await;
}
