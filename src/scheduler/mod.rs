//! Slots and queues. [`Scheduler::acquire`] returns a [`Slot`] on a backend
//! chosen by [`policy::pick`]; dropping the slot frees it and hands it to
//! the oldest waiting job that fits.
//!
//! Invariant: all state lives in one `State` behind one lock, never held
//! across an await; the choice itself is the pure `policy::pick`. Per
//! system, waiting jobs are served round-robin across clients, and first
//! come, first served within a client (`queue`).

pub mod locality;
pub mod policy;
mod queue;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::Backend;
pub use policy::{BackendView, Decision, JobSpec};
use queue::{SystemQueue, Waiter};

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
    #[error("too many jobs waiting ({0}); try again later")]
    QueueFull(u64),
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

struct State {
    running: Vec<u32>,
    health: Vec<Health>,
    queues: BTreeMap<String, SystemQueue>,
    waiting: u64,
    next_seq: u64,
}

pub struct Scheduler {
    backends: Vec<Backend>,
    max_waiting: u64,
    state: Mutex<State>,
    /// What each backend is believed to have (placement by locality).
    locality: locality::Locality,
}

/// A claimed build slot. Dropping it releases the slot.
pub struct Slot {
    scheduler: Arc<Scheduler>,
    backend: usize,
}

impl Slot {
    pub fn backend(&self) -> &Backend {
        &self.scheduler.backends[self.backend]
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let sched = self.scheduler.clone();
        sched.release(self.backend);
    }
}

/// Returned while a job waits: where it stands in its queue.
pub enum Acquired {
    Now(Slot),
    Queued {
        position: usize,
        rx: oneshot::Receiver<Slot>,
    },
}

impl Scheduler {
    pub fn new(backends: Vec<Backend>, max_waiting: u64) -> Arc<Scheduler> {
        let state = State {
            running: vec![0; backends.len()],
            health: vec![Health::default(); backends.len()],
            queues: BTreeMap::new(),
            waiting: 0,
            next_seq: 0,
        };
        Arc::new(Scheduler {
            backends,
            max_waiting,
            state: Mutex::new(state),
            locality: Default::default(),
        })
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated
        // in a way that matters more than stopping; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn locality(&self) -> &locality::Locality {
        &self.locality
    }

    /// The backends as `job` sees them (its missing input bytes included).
    fn views<'a>(&'a self, st: &State, job: &JobSpec) -> Vec<BackendView<'a>> {
        self.backends
            .iter()
            .zip(st.running.iter().zip(&st.health))
            .map(|(b, (&running, health))| BackendView {
                name: &b.name,
                systems: &b.systems,
                supported_features: &b.supported_features,
                mandatory_features: &b.mandatory_features,
                max_jobs: b.max_jobs,
                running,
                speed_factor: b.speed_factor,
                down_until: health.down_until,
                missing_bytes: self.locality.missing_bytes(&b.name, &job.inputs),
            })
            .collect()
    }

    /// Claims a slot now, or queues the job (see `queue` for the order).
    pub fn try_acquire(self: &Arc<Self>, job: JobSpec) -> Result<Acquired, Error> {
        let mut st = self.lock();
        let queue_empty = st.queues.get(&job.system).is_none_or(SystemQueue::is_empty);
        match policy::pick(&job, &self.views(&st, &job), Instant::now()) {
            Decision::NoneEligible => Err(self.none_eligible(&job)),
            Decision::Run(i) if queue_empty => {
                st.running[i] += 1;
                self.publish_slots(&st, i);
                Ok(Acquired::Now(Slot {
                    scheduler: self.clone(),
                    backend: i,
                }))
            }
            Decision::Run(_) | Decision::Wait => {
                if st.waiting >= self.max_waiting {
                    return Err(Error::QueueFull(st.waiting));
                }
                let (tx, rx) = oneshot::channel();
                let seq = st.next_seq;
                st.next_seq += 1;
                st.waiting += 1;
                let system = job.system.clone();
                let q = st.queues.entry(system.clone()).or_default();
                let position = q.push_back(Waiter {
                    seq,
                    since: Instant::now(),
                    job,
                    tx,
                });
                crate::metrics::queue_depth(&system, q.len());
                Ok(Acquired::Queued { position, rx })
            }
        }
    }

    /// Waits for a queued job's slot. Dropping the future leaves the queue:
    /// a slot handed over meanwhile is released again.
    pub async fn wait(rx: oneshot::Receiver<Slot>) -> Option<Slot> {
        rx.await.ok()
    }

    fn none_eligible(&self, job: &JobSpec) -> Error {
        let configured = self
            .backends
            .iter()
            .map(|b| {
                format!(
                    "{} (systems {}; features {})",
                    b.name,
                    b.systems.join(","),
                    b.supported_features.join(",")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Error::NoneEligible {
            system: job.system.clone(),
            features: job.required_features.join(", "),
            configured,
        }
    }

    fn release(self: &Arc<Self>, backend: usize) {
        let refused = {
            let mut st = self.lock();
            st.running[backend] = st.running[backend].saturating_sub(1);
            self.publish_slots(&st, backend);
            self.dispatch(&mut st)
        };
        // Slots whose waiter had gone; dropping them (outside the lock)
        // releases them again.
        drop(refused);
    }

    /// Hands free slots to queue heads, oldest head first. Returns the
    /// slots whose waiters had already given up.
    fn dispatch(self: &Arc<Self>, st: &mut State) -> Vec<Slot> {
        let mut refused = Vec::new();
        loop {
            let mut heads: Vec<(u64, String)> = st
                .queues
                .iter()
                .filter_map(|(sys, q)| q.front().map(|w| (w.seq, sys.clone())))
                .collect();
            heads.sort();
            let mut progressed = false;
            for (_, sys) in heads {
                let Some(head) = st.queues.get(&sys).and_then(SystemQueue::front) else {
                    continue;
                };
                let Decision::Run(i) =
                    policy::pick(&head.job, &self.views(st, &head.job), Instant::now())
                else {
                    continue;
                };
                let Some(w) = st.queues.get_mut(&sys).and_then(SystemQueue::pop_front) else {
                    continue;
                };
                st.waiting -= 1;
                st.running[i] += 1;
                self.publish_slots(st, i);
                crate::metrics::queue_depth(&sys, st.queues.get(&sys).map_or(0, SystemQueue::len));
                let slot = Slot {
                    scheduler: self.clone(),
                    backend: i,
                };
                if let Err(slot) = w.tx.send(slot) {
                    refused.push(slot);
                }
                progressed = true;
            }
            if !progressed {
                return refused;
            }
        }
    }
}

/// What `/status` shows of the scheduler.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub backends: Vec<BackendStatus>,
    pub queues: Vec<QueueStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendStatus {
    pub name: String,
    pub systems: Vec<String>,
    pub features: Vec<String>,
    /// `up`, `down` (failed, backing off), `probing` (backoff over, next
    /// job tries it) or `unknown` (not tried yet).
    pub state: &'static str,
    pub running: u32,
    pub max_jobs: u32,
    pub speed_factor: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueStatus {
    pub system: String,
    /// Seconds each waiting job has waited, oldest first.
    pub waiting_seconds: Vec<f64>,
}

impl Scheduler {
    /// Records whether backend `name` worked. A failure marks it down for
    /// an exponentially growing backoff; it is re-probed by the next job
    /// after that.
    pub fn report_connect(&self, name: &str, ok: bool) {
        if let Some(i) = self.backends.iter().position(|b| b.name == name) {
            let mut st = self.lock();
            let h = &mut st.health[i];
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
        }
        crate::metrics::backend_up(name, ok);
    }

    /// `2 running on opi01, opi02`: builds on the backends serving `system`.
    pub fn running_summary(&self, system: &str) -> String {
        let st = self.lock();
        let on: Vec<&str> = self
            .backends
            .iter()
            .enumerate()
            .filter(|(i, b)| b.systems.iter().any(|s| s == system) && st.running[*i] > 0)
            .map(|(_, b)| b.name.as_str())
            .collect();
        let n: u32 = self
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.systems.iter().any(|s| s == system))
            .map(|(i, _)| st.running[i])
            .sum();
        format!(
            "{n} running on {}",
            if on.is_empty() {
                "none".into()
            } else {
                on.join(", ")
            }
        )
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

    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        let backends = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| BackendStatus {
                name: b.name.clone(),
                systems: b.systems.clone(),
                features: b.supported_features.clone(),
                state: match (st.health[i].last_ok, st.health[i].down_until) {
                    (_, Some(t)) if t > Instant::now() => "down",
                    (Some(true), _) => "up",
                    (Some(false), _) => "probing",
                    (None, _) => "unknown",
                },
                running: st.running[i],
                max_jobs: b.max_jobs,
                speed_factor: b.speed_factor,
            })
            .collect();
        let now = Instant::now();
        let queues = st
            .queues
            .iter()
            .map(|(system, q)| QueueStatus {
                system: system.clone(),
                waiting_seconds: q.iter().map(|w| (now - w.since).as_secs_f64()).collect(),
            })
            .collect();
        Snapshot { backends, queues }
    }

    fn publish_slots(&self, st: &State, i: usize) {
        let b = &self.backends[i];
        crate::metrics::backend_slots(&b.name, st.running[i], b.max_jobs);
    }
}

#[cfg(test)]
mod tests;
