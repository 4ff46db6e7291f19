//! Warm backend sessions, reused across builds.
//!
//! What is pooled is the protocol session itself: the SSH connection with
//! its `nix-store --serve --write` (or `nix-daemon --stdio`) already running
//! and past its handshake, so a build that finds an idle session pays
//! neither the SSH handshake nor the remote process start. Both protocols
//! are request/reply loops that serve any number of requests (Nix's own
//! `ssh://` and `ssh-ng://` stores pool them the same way); worker builds
//! send SetOptions before each build, serve builds carry their options.
//!
//! Rules:
//! * at most [`PoolLimits::max_idle`] idle sessions per backend (the
//!   oldest goes first), each dropped after [`PoolLimits::idle_timeout`];
//! * a session is taken back only when its last operation completed
//!   ([`super::Client::is_idle`]): after an error, a timeout or a
//!   cancellation the [`Lease`] drops it, which closes the connection and
//!   stops the remote build, as without a pool;
//! * SSH sessions get keepalives, idle ones too, and one that stalls (see
//!   [`crate::ssh::stall`]) counts as closed;
//! * on checkout a closed transport is discarded, and a session idle for
//!   longer than [`PROBE_AFTER`] must first answer an empty
//!   QueryValidPaths within the backend's connect timeout;
//! * sessions are keyed by backend name and the backend's whole
//!   configuration, so a changed backend never gets an old session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{BackendConn, Error, connect_watched};
use crate::buildlog::EventSink;
use crate::config::Backend;

/// A session idle at least this long answers a probe before reuse.
pub const PROBE_AFTER: Duration = Duration::from_secs(10);

/// How many idle sessions to keep, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Idle sessions kept per backend; 0 turns pooling off.
    pub max_idle: usize,
    /// An idle session is closed after this long.
    pub idle_timeout: Duration,
    /// Keepalives and stall timeout of every SSH session opened.
    pub watch: crate::ssh::stall::Watch,
}

impl PoolLimits {
    /// The pool's part of the relay's `[limits]`.
    pub fn from_limits(l: &crate::config::Limits) -> Self {
        PoolLimits {
            max_idle: usize::try_from(l.backend_idle_sessions).unwrap_or(usize::MAX),
            idle_timeout: l.backend_idle_timeout,
            watch: crate::ssh::stall::Watch {
                keepalive_interval: l.backend_keepalive_interval,
                stall_timeout: l.backend_stall_timeout,
            },
        }
    }
}

/// Whether a checkout opened a session or reused one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    New,
    Reused,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::New => "new",
            Kind::Reused => "reused",
        }
    }
}

struct Idle {
    conn: BackendConn,
    since: Instant,
}

/// Idle sessions per backend, most recently used last.
pub struct Pool {
    limits: PoolLimits,
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
}

/// A backend's name and a fingerprint of its configuration.
type Key = (String, String);

fn key(b: &Backend) -> Key {
    (b.name.clone(), format!("{b:?}"))
}

impl Pool {
    pub fn new(limits: PoolLimits) -> Arc<Pool> {
        Arc::new(Pool {
            limits,
            idle: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A session on `b` whose stderr goes to `log`: an idle one that is
    /// still healthy, else a new connection.
    pub async fn checkout(
        self: &Arc<Self>,
        b: &Backend,
        log: Arc<dyn EventSink>,
        limits: crate::wire::Limits,
    ) -> Result<(Lease, Kind), Error> {
        let k = key(b);
        while let Some(idle) = self.take(&k) {
            let mut conn = idle.conn;
            if !conn.transport_open() {
                tracing::debug!(backend = %b.name, "idle session closed; discarded");
                continue;
            }
            if idle.since.elapsed() >= PROBE_AFTER && !probe(&mut conn, b).await {
                tracing::debug!(backend = %b.name, "idle session did not answer a probe; discarded");
                continue;
            }
            conn.set_log(Some(log));
            return Ok((self.lease(k, conn), Kind::Reused));
        }
        let conn = connect_watched(b, Some(log), limits, Some(self.limits.watch)).await?;
        Ok((self.lease(k, conn), Kind::New))
    }

    fn lease(self: &Arc<Self>, key: Key, conn: BackendConn) -> Lease {
        Lease {
            conn: Some(conn),
            key,
            pool: Arc::downgrade(self),
        }
    }

    /// The most recently used live-looking idle session, expired ones dropped.
    fn take(&self, k: &Key) -> Option<Idle> {
        let mut idle = self.lock();
        let list = idle.get_mut(k)?;
        let timeout = self.limits.idle_timeout;
        list.retain(|i| i.since.elapsed() < timeout);
        let got = list.pop();
        publish(&idle, &k.0);
        got
    }

    /// Takes `conn` back if it is at a request boundary and open.
    fn checkin(self: &Arc<Self>, key: Key, mut conn: BackendConn) {
        if self.limits.max_idle == 0 || !conn.client.is_idle() || !conn.transport_open() {
            return;
        }
        conn.set_log(None);
        {
            let mut idle = self.lock();
            let list = idle.entry(key.clone()).or_default();
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
            if list.len() > self.limits.max_idle {
                list.remove(0);
            }
            publish(&idle, &key.0);
        }
        self.reap_later();
    }

    /// Closes what expires within the idle timeout, once it has.
    fn reap_later(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = Arc::downgrade(self);
        let at = Instant::now() + self.limits.idle_timeout;
        rt.spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(p) = pool.upgrade() {
                p.reap();
            }
        });
    }

    /// Closes the idle sessions older than the idle timeout.
    pub fn reap(&self) {
        let timeout = self.limits.idle_timeout;
        let mut idle = self.lock();
        let mut names = Vec::new();
        for ((name, _), list) in idle.iter_mut() {
            list.retain(|i| i.since.elapsed() < timeout);
            names.push(name.clone());
        }
        idle.retain(|_, list| !list.is_empty());
        for n in names {
            publish(&idle, &n);
        }
    }

    /// Closes every idle session of backend `name` (it just failed).
    pub fn forget(&self, name: &str) {
        let mut idle = self.lock();
        idle.retain(|(n, _), _| n != name);
        publish(&idle, name);
    }

    /// Idle sessions of backend `name` now.
    pub fn idle_count(&self, name: &str) -> usize {
        self.lock()
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, l)| l.len())
            .sum()
    }
}

/// Sets the idle-sessions gauge of backend `name`.
fn publish(idle: &HashMap<Key, Vec<Idle>>, name: &str) {
    let n: usize = idle
        .iter()
        .filter(|((k, _), _)| k == name)
        .map(|(_, l)| l.len())
        .sum();
    crate::metrics::backend_sessions_idle(name, n);
}

/// Answers an empty QueryValidPaths within the connect timeout.
async fn probe(conn: &mut BackendConn, b: &Backend) -> bool {
    let q = conn.client.query_valid_paths(Vec::new(), false);
    matches!(tokio::time::timeout(b.connect_timeout, q).await, Ok(Ok(v)) if v.is_empty())
}

/// A checked-out session. Dropping it gives the session back to the pool
/// if its last operation completed, and closes it otherwise.
pub struct Lease {
    conn: Option<BackendConn>,
    key: Key,
    pool: Weak<Pool>,
}

impl std::ops::Deref for Lease {
    type Target = BackendConn;
    fn deref(&self) -> &BackendConn {
        self.conn
            .as_ref()
            .expect("a lease holds its session until dropped")
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut BackendConn {
        self.conn
            .as_mut()
            .expect("a lease holds its session until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.upgrade()) {
            pool.checkin(std::mem::take(&mut self.key), conn);
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
