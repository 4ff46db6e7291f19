//! The backend set at runtime: add, drain, change and remove backends
//! while builds run (reload, the admin endpoint, elastic capacity), and the
//! summary of waiting jobs an autoscaler acts on.
//!
//! `add_backend` (an elastic instance that joined), `drain` / undrain,
//! `remove_backend` (drain, then forget once idle), `reconcile_backends`
//! (SIGHUP reload: add new, replace changed, remove gone; backends added at
//! runtime are left alone), `set_elastic` (capacity that can be launched:
//! jobs only it could serve wait instead of failing) and `waiting_summary`
//! (per queue: count, oldest wait, whether a current non-draining backend
//! could serve it — what an autoscaler reads).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::queue::{SystemQueue, Waiter};
use super::{BackendView, Error, JobSpec, QueueKey, Scheduler, State, policy};
use crate::config::Backend;

/// Capacity that can be launched on demand (e.g. an EC2 template): jobs
/// only such capacity could serve are queued instead of failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElasticSpec {
    pub name: String,
    pub systems: Vec<String>,
    pub supported_features: Vec<String>,
    pub mandatory_features: Vec<String>,
}

/// Waiting jobs of one (system, required features) queue.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingJobs {
    pub system: String,
    pub required_features: Vec<String>,
    pub count: usize,
    /// How long the oldest of them has waited.
    pub oldest_wait: Duration,
    /// Some current backend, neither draining nor being removed, could
    /// ever serve them (busy or backing off maybe, but eligible).
    pub servable: bool,
}

/// What a reconcile changed, by backend name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl std::fmt::Display for ReloadSummary {
    /// `+h4 -h2 ~h1`, or `no change`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = (self.added.iter().map(|n| format!("+{n}")))
            .chain(self.removed.iter().map(|n| format!("-{n}")))
            .chain(self.changed.iter().map(|n| format!("~{n}")))
            .collect();
        if parts.is_empty() {
            f.write_str("no change")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// What a change did to one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upsert {
    Added,
    Changed,
    Same,
}

impl Scheduler {
    /// Adds a backend at runtime (an elastic instance that joined), or
    /// replaces the config of the one with that name (see `reconcile`).
    pub fn add_backend(self: &Arc<Self>, backend: Backend) {
        self.mutate(|st| {
            st.upsert(backend, false);
        });
    }

    /// Drains backend `name` and forgets it once its running builds end.
    /// Jobs then left with no possible backend fail. False: unknown name.
    pub fn remove_backend(self: &Arc<Self>, name: &str) -> bool {
        self.mutate(|st| st.remove(name))
    }

    /// Drains (`true`: finish running builds, take no new ones) or
    /// undrains backend `name`. False: unknown name.
    pub fn drain(self: &Arc<Self>, name: &str, on: bool) -> bool {
        self.mutate(|st| {
            let Some(i) = st.find(name) else {
                return false;
            };
            let e = &mut st.entries[i];
            if e.drained != on {
                tracing::info!(
                    backend = name,
                    draining = on,
                    running = e.running,
                    "drain changed"
                );
            }
            e.drained = on;
            crate::metrics::backend_draining(name, e.draining());
            true
        })
    }

    /// Replaces the elastic specs; queued jobs only a dropped spec could
    /// serve fail.
    pub fn set_elastic(self: &Arc<Self>, specs: Vec<ElasticSpec>) {
        self.mutate(|st| st.elastic = specs);
    }

    /// Makes the config file's backends `backends`: adds new ones, replaces
    /// changed ones (running builds keep the config they started with),
    /// drains and then forgets the ones gone. Backends added at runtime
    /// (`add_backend`) are left alone. The order follows `backends`.
    pub fn reconcile_backends(self: &Arc<Self>, backends: Vec<Backend>) -> ReloadSummary {
        self.mutate(|st| {
            let mut sum = ReloadSummary::default();
            let wanted: HashSet<String> = backends.iter().map(|b| b.name.clone()).collect();
            let order: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
            for b in backends {
                let name = b.name.clone();
                match st.upsert(b, true) {
                    Upsert::Added => sum.added.push(name),
                    Upsert::Changed => sum.changed.push(name),
                    Upsert::Same => {}
                }
            }
            let gone: Vec<String> = (st.entries.iter())
                .filter(|e| e.from_config && !e.removing && !wanted.contains(&e.config.name))
                .map(|e| e.config.name.clone())
                .collect();
            for name in gone {
                st.remove(&name);
                sum.removed.push(name);
            }
            let rank = |n: &str| order.iter().position(|o| o == n).unwrap_or(order.len());
            st.entries
                .sort_by_key(|e| (e.removing, rank(&e.config.name)));
            sum
        })
    }

    /// Every waiting-job queue: how many, how old, and whether a current
    /// backend could ever serve them (if not, only new capacity will).
    /// Untrusted clients' jobs are left out: launched capacity never
    /// serves them.
    pub fn waiting_summary(&self) -> Vec<WaitingJobs> {
        let st = self.lock();
        let now = Instant::now();
        (st.queues.iter())
            .filter(|(k, q)| !q.is_empty() && !k.untrusted)
            .map(|(k, q)| WaitingJobs {
                system: k.system.clone(),
                required_features: k.features.clone(),
                count: q.len(),
                oldest_wait: q.iter().next().map_or(Duration::ZERO, |w| now - w.since),
                servable: st.servable(k),
            })
            .collect()
    }

    /// The current backends' configs (being removed ones excluded).
    pub fn backends(&self) -> Vec<Backend> {
        let st = self.lock();
        (st.entries.iter())
            .filter(|e| !e.removing)
            .map(|e| Backend::clone(&e.config))
            .collect()
    }

    /// Applies `f`, then fails the waiting jobs nothing can serve any more
    /// and hands free slots to the others.
    fn mutate<T>(self: &Arc<Self>, f: impl FnOnce(&mut State) -> T) -> T {
        let (out, refused, hopeless) = {
            let mut st = self.lock();
            let out = f(&mut st);
            let hopeless = st.take_hopeless();
            (out, self.dispatch(&mut st), hopeless)
        };
        for (w, err) in hopeless {
            tracing::warn!(system = %w.job.system, "waiting job failed: {err}");
            let _ = w.tx.send(Err(err));
        }
        drop(refused);
        out
    }
}

impl State {
    /// Adds `b`, or replaces the config of the backend with its name (its
    /// running count and drain stay, its health starts over). A backend
    /// being removed is revived.
    fn upsert(&mut self, b: Backend, from_config: bool) -> Upsert {
        let Some(i) = self.find(&b.name) else {
            tracing::info!(backend = %b.name, "backend added");
            self.insert(b, from_config);
            return Upsert::Added;
        };
        let e = &mut self.entries[i];
        e.from_config = from_config;
        let revived = std::mem::take(&mut e.removing);
        crate::metrics::backend_draining(&b.name, e.draining());
        if *e.config == b && !revived {
            return Upsert::Same;
        }
        tracing::info!(backend = %b.name, running = e.running, "backend config replaced");
        crate::metrics::backend_slots(&b.name, e.running, b.max_jobs);
        e.config = Arc::new(b);
        e.health = super::Health::default();
        if revived {
            Upsert::Added
        } else {
            Upsert::Changed
        }
    }

    /// Marks `name` as being removed; forgets it now if idle.
    fn remove(&mut self, name: &str) -> bool {
        let Some(i) = self.find(name) else {
            return false;
        };
        let e = &mut self.entries[i];
        e.removing = true;
        tracing::info!(
            backend = name,
            running = e.running,
            "backend removed; draining"
        );
        crate::metrics::backend_draining(name, true);
        if e.running == 0 {
            self.forget(i);
        }
        true
    }

    /// Drops entry `i` (removed and idle); its gauges read as no slots.
    pub(super) fn forget(&mut self, i: usize) {
        let e = self.entries.remove(i);
        tracing::info!(backend = %e.config.name, "removed backend idle: forgotten");
        crate::metrics::backend_slots(&e.config.name, 0, 0);
        crate::metrics::backend_draining(&e.config.name, false);
    }

    /// Could an elastic spec ever serve `job`?
    pub(super) fn elastic_could(&self, job: &JobSpec) -> bool {
        self.elastic.iter().any(|s| {
            let view = BackendView {
                name: &s.name,
                systems: &s.systems,
                supported_features: &s.supported_features,
                mandatory_features: &s.mandatory_features,
                max_jobs: 0,
                running: 0,
                speed_factor: 1.0,
                down_until: None,
                missing_bytes: 0,
                // Launched capacity is for trusted work only.
                untrusted_clients: false,
            };
            policy::eligible(job, &view)
        })
    }

    /// Could a current backend that is not draining ever serve the queue?
    fn servable(&self, k: &QueueKey) -> bool {
        let job = JobSpec {
            client: String::new(),
            system: k.system.clone(),
            required_features: k.features.clone(),
            untrusted: k.untrusted,
            ..Default::default()
        };
        let (views, index) = self.views(&job);
        (views.iter().zip(index))
            .any(|(v, i)| !self.entries[i].draining() && policy::eligible(&job, v))
    }

    /// Takes out the waiting jobs that no backend (draining ones included)
    /// and no elastic spec could ever serve, each with its error.
    fn take_hopeless(&mut self) -> Vec<(Waiter, Error)> {
        let keys: Vec<QueueKey> = self.queues.keys().cloned().collect();
        let mut out = Vec::new();
        for k in keys {
            let job = JobSpec {
                client: String::new(),
                system: k.system.clone(),
                required_features: k.features.clone(),
                untrusted: k.untrusted,
                ..Default::default()
            };
            if self.decide(&job) != policy::Decision::NoneEligible || self.elastic_could(&job) {
                continue;
            }
            let gone = self.queues.remove(&k).map(SystemQueue::into_all);
            for w in gone.unwrap_or_default() {
                self.waiting -= 1;
                let e = self.none_eligible(&w.job);
                out.push((w, e));
            }
            self.publish_depth(&k.system);
        }
        out
    }
}
