//! Slots and queues. [`Scheduler::try_acquire`] returns a [`Slot`] on a
//! backend chosen by [`policy::pick`]; dropping the slot frees it and hands
//! it to the oldest waiting job that fits.
//!
//! The backend set changes at runtime (`set`): backends are added, drained,
//! changed and removed while builds run. Each backend has a stable id; a
//! slot holds that id and its own copy of the backend's config, so a build
//! keeps the config it started with and its release still counts after the
//! backend was changed or removed.
//!
//! Invariant: all state lives in one `State` behind one lock, never held
//! across an await; the choice itself is the pure `policy::pick`. Waiting
//! jobs are queued per (system, required features); within a queue they are
//! served round-robin across clients, and within a client longest expected
//! build first, arrival order among equals (`queue`, expectations from
//! `history`). A draining backend takes no new job.
//!
//! A backend that failed is marked down for 5 s, doubling per failure up
//! to 5 min ([`Scheduler::report_connect`]); [`Scheduler::tick`] hands
//! slots to waiting jobs when a backoff ends. Free slots go to the queue
//! heads by class (longest expected first), then by age. The history is
//! recorded by `session::build` after each successful build and saved by
//! `cli` periodically and on shutdown. `examples/sched_bench.rs` measures
//! a decision with 10,000 queued jobs.

pub mod elastic;
pub mod history;
pub mod locality;
pub mod notice;
pub mod policy;
mod queue;
mod set;
mod status;

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::Backend;
pub use policy::{BackendView, Decision, JobSpec};
use queue::{SystemQueue, Waiter};
pub use set::{ElasticSpec, ReloadSummary, WaitingJobs};
pub use status::{BackendStatus, QueueStatus, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no backend can build for system {system:?} with features [{features}]; configured: {configured}"
    )]
    NoneEligible {
        system: String,
        features: String,
        configured: String,
    },
    #[error(
        "no backend takes this untrusted client's build for system {system:?} with features [{features}]: untrusted clients build only on backends marked `untrusted_clients = true`; marked: {marked}"
    )]
    NoUntrustedBackend {
        system: String,
        features: String,
        marked: String,
    },
    #[error("too many jobs waiting ({0}); try again later")]
    QueueFull(u64),
    #[error("the scheduler dropped the job")]
    Dropped,
}

/// First backoff after a failure; it doubles per failure up to the max.
const BACKOFF_FIRST: std::time::Duration = std::time::Duration::from_secs(5);
const BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, Clone, Default)]
struct Health {
    last_ok: Option<bool>,
    failures: u32,
    down_until: Option<Instant>,
}

/// One backend of the current set.
struct Entry {
    /// Stable for the backend's lifetime in the set, never reused.
    id: u64,
    config: Arc<Backend>,
    running: u32,
    health: Health,
    /// Drained by the operator: finishes its builds, takes no new ones.
    drained: bool,
    /// Removed: draining, forgotten once its last build ends.
    removing: bool,
    /// From the config file (a reload may remove it), not added at runtime.
    from_config: bool,
}

impl Entry {
    fn draining(&self) -> bool {
        self.drained || self.removing
    }
}

/// Waiting jobs are queued per system, set of required features and
/// trust, so a job only special capacity can serve never blocks ordinary
/// ones, and untrusted and trusted jobs never wait for each other.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct QueueKey {
    system: String,
    features: Vec<String>,
    untrusted: bool,
}

impl QueueKey {
    fn of(job: &JobSpec) -> QueueKey {
        let mut features = job.required_features.clone();
        features.sort();
        features.dedup();
        QueueKey {
            system: job.system.clone(),
            features,
            untrusted: job.untrusted,
        }
    }
}

struct State {
    entries: Vec<Entry>,
    elastic: Vec<ElasticSpec>,
    queues: BTreeMap<QueueKey, SystemQueue>,
    waiting: u64,
    next_seq: u64,
    next_id: u64,
    /// What each backend is believed to have (placement by locality).
    locality: Arc<locality::Locality>,
}

pub struct Scheduler {
    max_waiting: u64,
    state: Mutex<State>,
    locality: Arc<locality::Locality>,
    history: Arc<history::History>,
    /// Launches of elastic capacity, for the jobs waiting for it (`notice`).
    launches: tokio::sync::broadcast::Sender<Arc<notice::LaunchNotice>>,
}

/// A claimed build slot. Dropping it releases the slot.
pub struct Slot {
    scheduler: Arc<Scheduler>,
    id: u64,
    backend: Arc<Backend>,
}

impl Slot {
    /// The backend's config as it was when the slot was claimed.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let sched = self.scheduler.clone();
        sched.release(self.id);
    }
}

/// What a waiting job receives: a slot, or why it will never get one.
type Grant = Result<Slot, Error>;

/// Returned while a job waits: where it stands in its queue.
pub enum Acquired {
    Now(Slot),
    Queued {
        position: usize,
        rx: oneshot::Receiver<Grant>,
    },
}

impl Scheduler {
    /// A scheduler with an empty, in-memory build history.
    pub fn new(backends: Vec<Backend>, max_waiting: u64) -> Arc<Scheduler> {
        Scheduler::with_history(backends, max_waiting, Default::default())
    }

    /// A scheduler whose queues order jobs by `history`.
    pub fn with_history(
        backends: Vec<Backend>,
        max_waiting: u64,
        history: Arc<history::History>,
    ) -> Arc<Scheduler> {
        let mut state = State {
            entries: Vec::new(),
            elastic: Vec::new(),
            queues: BTreeMap::new(),
            waiting: 0,
            next_seq: 0,
            next_id: 0,
            locality: Default::default(),
        };
        for b in backends {
            state.insert(b, true);
        }
        let locality = state.locality.clone();
        Arc::new(Scheduler {
            max_waiting,
            state: Mutex::new(state),
            locality,
            history,
            launches: tokio::sync::broadcast::channel(notice::NOTICE_BACKLOG).0,
        })
    }

    /// How long builds took (learned after each success; orders queues).
    pub fn history(&self) -> &history::History {
        &self.history
    }

    /// What the relay believes each backend has (see [`locality`]).
    pub fn locality(&self) -> &locality::Locality {
        &self.locality
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated
        // in a way that matters more than stopping; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims a slot now, or queues the job (see `queue` for the order). A
    /// job no current backend could ever serve is queued too when an
    /// elastic spec could (capacity that can be launched), else it fails.
    pub fn try_acquire(self: &Arc<Self>, job: JobSpec) -> Result<Acquired, Error> {
        // The history's lock is never taken under the state's.
        let class = queue::class(self.history.expected_secs(&job));
        let mut st = self.lock();
        let key = QueueKey::of(&job);
        let queue_empty = st.queues.get(&key).is_none_or(SystemQueue::is_empty);
        match st.decide(&job) {
            Decision::NoneEligible if !st.elastic_could(&job) => Err(st.none_eligible(&job)),
            Decision::Run(i) if queue_empty => Ok(Acquired::Now(self.claim(&mut st, i))),
            Decision::Run(_) | Decision::Wait | Decision::NoneEligible => {
                if st.waiting >= self.max_waiting {
                    return Err(Error::QueueFull(st.waiting));
                }
                let (tx, rx) = oneshot::channel();
                let seq = st.next_seq;
                st.next_seq += 1;
                st.waiting += 1;
                let position = st.queues.entry(key.clone()).or_default().push_back(Waiter {
                    seq,
                    since: Instant::now(),
                    class,
                    job,
                    tx,
                });
                st.publish_depth(&key.system);
                Ok(Acquired::Queued { position, rx })
            }
        }
    }

    /// Waits for a queued job's slot. Dropping the future leaves the queue:
    /// a slot handed over meanwhile is released again.
    pub async fn wait(rx: oneshot::Receiver<Grant>) -> Result<Slot, Error> {
        rx.await.unwrap_or(Err(Error::Dropped))
    }

    /// Counts a job on entry `i` and returns its slot.
    fn claim(self: &Arc<Self>, st: &mut State, i: usize) -> Slot {
        let e = &mut st.entries[i];
        e.running += 1;
        crate::metrics::backend_slots(&e.config.name, e.running, e.config.max_jobs);
        Slot {
            scheduler: self.clone(),
            id: e.id,
            backend: e.config.clone(),
        }
    }

    fn release(self: &Arc<Self>, id: u64) {
        let refused = {
            let mut st = self.lock();
            if let Some(i) = st.entries.iter().position(|e| e.id == id) {
                let e = &mut st.entries[i];
                e.running = e.running.saturating_sub(1);
                crate::metrics::backend_slots(&e.config.name, e.running, e.config.max_jobs);
                if e.removing && e.running == 0 {
                    st.forget(i);
                }
            }
            self.dispatch(&mut st)
        };
        // Slots whose waiter had gone; dropping them (outside the lock)
        // releases them again.
        drop(refused);
    }

    /// Hands free slots to queue heads: the longest expected first (a
    /// `big-parallel` queue's head before ordinary ones, by default), then
    /// the oldest. O(queues) per slot: the number of (system, features)
    /// pairs, not of jobs. Returns the slots whose waiters had given up.
    fn dispatch(self: &Arc<Self>, st: &mut State) -> Vec<Slot> {
        let mut refused = Vec::new();
        loop {
            let mut heads: Vec<(Reverse<u32>, u64, QueueKey)> = (st.queues.iter())
                .filter_map(|(k, q)| q.front().map(|w| (Reverse(w.class), w.seq, k.clone())))
                .collect();
            heads.sort();
            let mut progressed = false;
            for (_, _, key) in heads {
                let Some(head) = st.queues.get(&key).and_then(SystemQueue::front) else {
                    continue;
                };
                let Decision::Run(i) = st.decide(&head.job) else {
                    continue;
                };
                let Some(w) = st.queues.get_mut(&key).and_then(SystemQueue::pop_front) else {
                    continue;
                };
                st.waiting -= 1;
                st.publish_depth(&key.system);
                let slot = self.claim(st, i);
                if let Err(Ok(slot)) = w.tx.send(Ok(slot)) {
                    refused.push(slot);
                }
                progressed = true;
            }
            st.queues.retain(|_, q| !q.is_empty());
            if !progressed {
                return refused;
            }
        }
    }

    /// Records whether backend `name` worked. A failure marks it down for
    /// an exponentially growing backoff; it is re-probed by the next job
    /// after that.
    pub fn report_connect(&self, name: &str, ok: bool) {
        let mut st = self.lock();
        let Some(e) = st.entries.iter_mut().find(|e| e.config.name == name) else {
            return;
        };
        let h = &mut e.health;
        h.last_ok = Some(ok);
        if ok {
            h.failures = 0;
            h.down_until = None;
        } else {
            h.failures = h.failures.saturating_add(1);
            let backoff = BACKOFF_FIRST
                .saturating_mul(1 << (h.failures - 1).min(10))
                .min(BACKOFF_MAX);
            h.down_until = Some(Instant::now() + backoff);
            tracing::warn!(
                backend = name,
                failures = h.failures,
                ?backoff,
                "backend marked down"
            );
        }
        crate::metrics::backend_up(name, ok);
    }

    /// Hands slots of backends whose backoff ended to waiting jobs. Run
    /// periodically.
    pub fn tick(self: &Arc<Self>) {
        let refused = {
            let mut st = self.lock();
            self.dispatch(&mut st)
        };
        drop(refused);
    }
}

impl State {
    /// Adds a backend with a fresh id, at the end of the order.
    fn insert(&mut self, b: Backend, from_config: bool) {
        crate::metrics::backend_slots(&b.name, 0, b.max_jobs);
        crate::metrics::backend_draining(&b.name, false);
        self.entries.push(Entry {
            id: self.next_id,
            config: Arc::new(b),
            running: 0,
            health: Health::default(),
            drained: false,
            removing: false,
            from_config,
        });
        self.next_id += 1;
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.config.name == name)
    }

    /// The policy's view of the set: every backend not being removed; a
    /// draining one offers no slot (max_jobs 0) yet stays eligible, so a
    /// job only it can serve waits for the undrain rather than failing.
    /// Returns the views and, for each, its index in `entries`.
    /// The backends as `job` sees them (its missing input bytes included).
    fn views(&self, job: &JobSpec) -> (Vec<BackendView<'_>>, Vec<usize>) {
        // One lock for the whole placement, none when there are no inputs.
        let known = (!job.inputs.largest.is_empty()).then(|| self.locality.view());
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.removing)
            .map(|(i, e)| {
                let b = &e.config;
                let mut view = BackendView {
                    name: &b.name,
                    systems: &b.systems,
                    supported_features: &b.supported_features,
                    mandatory_features: &b.mandatory_features,
                    max_jobs: if e.drained { 0 } else { b.max_jobs },
                    running: e.running,
                    speed_factor: b.speed_factor,
                    down_until: e.health.down_until,
                    missing_bytes: 0,
                    untrusted_clients: b.untrusted_clients,
                };
                // Only a backend with a free slot can be picked: only its
                // missing bytes are worth the lookups.
                if let Some(k) = &known
                    && view.running < view.max_jobs
                    && policy::eligible(job, &view)
                {
                    view.missing_bytes = k.missing_bytes(&b.name, &job.inputs);
                }
                (view, i)
            })
            .unzip()
    }

    /// `policy::pick` over the current set; `Run` holds an `entries` index.
    fn decide(&self, job: &JobSpec) -> Decision {
        let (views, index) = self.views(job);
        match policy::pick(job, &views, Instant::now()) {
            Decision::Run(v) => Decision::Run(index[v]),
            d => d,
        }
    }

    fn none_eligible(&self, job: &JobSpec) -> Error {
        let configured = self
            .entries
            .iter()
            .filter(|e| !e.removing && e.config.untrusted_clients == job.untrusted)
            .map(|e| {
                let b = &e.config;
                format!(
                    "{} (systems {}; features {})",
                    b.name,
                    b.systems.join(","),
                    b.supported_features.join(",")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        if job.untrusted {
            return Error::NoUntrustedBackend {
                system: job.system.clone(),
                features: job.required_features.join(", "),
                marked: if configured.is_empty() {
                    "none".into()
                } else {
                    configured
                },
            };
        }
        Error::NoneEligible {
            system: job.system.clone(),
            features: job.required_features.join(", "),
            configured,
        }
    }

    /// The queue-depth gauge counts every waiting job of the system.
    fn publish_depth(&self, system: &str) {
        let depth = self
            .queues
            .iter()
            .filter(|(k, _)| k.system == system)
            .map(|(_, q)| q.len())
            .sum();
        crate::metrics::queue_depth(system, depth);
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_dynamic;
#[cfg(test)]
mod tests_health;
#[cfg(test)]
mod tests_priority;
