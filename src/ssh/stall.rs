//! Stall detection for backend connections, independent of any limit a
//! client sent: a backend that neither sends anything nor answers an SSH
//! keepalive for [`Watch::stall_timeout`] is lost. Its connection is then
//! cut (every read and write fails, see [`super::deadline::Cuttable`]), so
//! whatever waits on it fails as a lost backend and is retried elsewhere.
//!
//! Signs of life ([`Alive::touch`]): any message on the channel (data, a
//! log line, EOF), a keepalive answer. Time during which the relay itself
//! holds the data back (the channel's pipe is full because the relay is
//! not reading, see [`Alive::hold`]) does not count: then russh reads
//! nothing, keepalive answers included, and the silence is ours.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How a backend connection is kept alive and when it is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    /// A keepalive goes out this often; each answer is a sign of life.
    pub keepalive_interval: Duration,
    /// No sign of life for this long: the backend is lost.
    pub stall_timeout: Duration,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            keepalive_interval: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(300),
        }
    }
}

/// When a backend last showed it is alive, and whether the relay is
/// holding its data back right now.
#[derive(Clone)]
pub struct Alive(Arc<Mutex<State>>);

struct State {
    last: Instant,
    held: u32,
}

impl Default for Alive {
    fn default() -> Self {
        Alive(Arc::new(Mutex::new(State {
            last: Instant::now(),
            held: 0,
        })))
    }
}

impl Alive {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backend just showed it is alive.
    pub fn touch(&self) {
        self.lock().last = Instant::now();
    }

    /// The relay holds the backend's data back until the guard is dropped;
    /// the silence meanwhile is not the backend's.
    pub fn hold(&self) -> Hold {
        self.lock().held += 1;
        Hold(self.clone())
    }

    /// When the backend counts as lost; `None` while held.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        let s = self.lock();
        (s.held == 0).then(|| s.last + timeout)
    }
}

/// See [`Alive::hold`]; dropping it counts as a sign of life.
pub struct Hold(Alive);

impl Drop for Hold {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.held = s.held.saturating_sub(1);
        s.last = Instant::now();
    }
}

/// Resolves once `alive` has shown no sign of life for `timeout`.
pub async fn stalled(alive: &Alive, timeout: Duration) {
    loop {
        match alive.deadline(timeout) {
            Some(at) if at <= Instant::now() => return,
            Some(at) => tokio::time::sleep_until(at).await,
            // A hold ends with a touch, so its deadline is later than this.
            None => tokio::time::sleep(timeout).await,
        }
    }
}

/// Something that can send a keepalive and tell whether it was answered.
pub trait Pinger: Send + Sync + 'static {
    /// Sends a keepalive; true once the peer answered it.
    fn ping(&self) -> impl Future<Output = bool> + Send;
}

/// Keeps one connection watched until dropped.
pub struct Watched {
    /// Cancelled once the backend stalled.
    pub stalled: CancellationToken,
    _stop: DropGuard,
}

/// Spawns the keepalive and stall watch of connection `what`: a keepalive
/// every interval (at most one outstanding), and once `alive` has shown no
/// sign of life for the stall timeout, `stalled` is cancelled.
pub fn spawn<P: Pinger>(pinger: Arc<P>, alive: Alive, watch: Watch, what: String) -> Watched {
    let token = CancellationToken::new();
    let stop = CancellationToken::new();
    let (cut, stopped) = (token.clone(), stop.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = keep_pinging(pinger, &alive, watch.keepalive_interval) => {}
            () = stopped.cancelled() => {}
            () = stalled(&alive, watch.stall_timeout) => {
                tracing::warn!(
                    backend = %what,
                    secs = watch.stall_timeout.as_secs(),
                    "backend stalled: no output and no keepalive answer; cutting the connection"
                );
                cut.cancel();
            }
        }
    });
    Watched {
        stalled: token,
        _stop: stop.drop_guard(),
    }
}

async fn keep_pinging<P: Pinger>(pinger: Arc<P>, alive: &Alive, every: Duration) {
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Ok(true) = tokio::time::timeout(every, pinger.ping()).await {
            alive.touch();
        }
    }
}

impl Pinger for russh::client::Handle<super::client::Pinned> {
    async fn ping(&self) -> bool {
        // send_ping also returns when the connection is gone.
        self.send_ping().await.is_ok() && !self.is_closed()
    }
}

#[cfg(test)]
#[path = "stall_tests.rs"]
mod tests;
