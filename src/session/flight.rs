//! Builds in flight, shared by every client that wants the same outputs.
//!
//! A [`Flight`] is one backend build, keyed by (scope, output paths). The
//! first client's request starts it in a task of its own; later clients
//! asking for the same outputs attach to it and get the live log and the
//! same result, each through its own `BuildHandle`. Each attachment is
//! counted: when the last one goes away before the build finished, the
//! build is cancelled — unless
//! `keep_going`, then it finishes and lands in the store anyway. After a
//! success the flight stays until every attachment is gone, so attached
//! sessions can stream outputs from the backend (the tee); then it stores
//! whatever outputs nobody fetched and leaves the registry.
//!
//! Invariant: at most one flight per key; a flight leaves the registry only
//! once its outputs are stored or it failed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

type AsyncMutex<T> = tokio::sync::Mutex<T>;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::log::FlightLog;
use super::outputs::Finished;
use crate::store::Scope;
use crate::wire::build::BuildResult;
use crate::wire::store_path::StorePath;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlightKey {
    pub scope: Scope,
    pub outputs: Vec<StorePath>,
}

/// What a finished flight hands to the sessions attached to it.
#[derive(Clone)]
pub struct Outcome {
    pub result: BuildResult,
    /// Outputs still on the backend (None after a failure).
    pub finished: Option<Arc<tokio::sync::Mutex<Finished>>>,
}

pub struct Flight {
    pub key: FlightKey,
    /// The build's events: the sink its backend attempts publish into,
    /// read by every attached session (see [`FlightLog`]).
    pub log: Arc<FlightLog>,
    pub outcome: watch::Sender<Option<Outcome>>,
    attached: AtomicUsize,
    detached: Notify,
    pub cancel: CancellationToken,
    /// An output of this finished build was lost mid-fetch
    /// (`outputs::Finished::spoiled`): not attachable any more.
    pub spoiled: Arc<std::sync::atomic::AtomicBool>,
    keep_going: bool,
    created: std::time::Instant,
}

impl Flight {
    fn new(key: FlightKey, keep_going: bool) -> Arc<Flight> {
        Arc::new(Flight {
            key,
            log: FlightLog::new(),
            outcome: watch::channel(None).0,
            attached: AtomicUsize::new(0),
            detached: Notify::new(),
            cancel: CancellationToken::new(),
            spoiled: Default::default(),
            keep_going,
            created: std::time::Instant::now(),
        })
    }

    pub fn attached(&self) -> usize {
        self.attached.load(Ordering::SeqCst)
    }

    /// Waits until no session is attached any more.
    pub async fn all_detached(&self) {
        loop {
            let notified = self.detached.notified();
            if self.attached() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FlightStatus {
    /// Output names (never full paths); for a private flight only
    /// [`super::REDACTED`].
    pub outputs: Vec<String>,
    pub private: bool,
    pub attached: usize,
    pub state: &'static str,
    pub age_seconds: f64,
    /// Bytes of build log (and activities) so far.
    pub log_bytes: u64,
}

/// A session's claim on a flight; dropping it detaches.
pub struct Attachment {
    pub flight: Arc<Flight>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let f = &self.flight;
        if f.attached.fetch_sub(1, Ordering::SeqCst) == 1 {
            if f.outcome.borrow().is_none() && !f.keep_going {
                tracing::info!(outputs = ?f.key.outputs, "last client gone: cancelling the build");
                f.cancel.cancel();
            }
            f.detached.notify_waiters();
        }
    }
}

/// The registry of flights.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<FlightKey, Arc<Flight>>>,
}

impl Flights {
    /// Attaches to the flight for `key`, or creates it. `true` when created:
    /// the caller must then start it.
    pub fn attach(&self, key: FlightKey, keep_going: bool) -> (Attachment, bool) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (flight, created) = match map.get(&key) {
            Some(f) if !f.cancel.is_cancelled() && !f.spoiled.load(Ordering::SeqCst) => {
                (f.clone(), false)
            }
            _ => {
                let f = Flight::new(key.clone(), keep_going);
                map.insert(key, f.clone());
                (f, true)
            }
        };
        flight.attached.fetch_add(1, Ordering::SeqCst);
        (Attachment { flight }, created)
    }

    /// Removes `flight` (if it is still the one registered for its key).
    pub fn remove(&self, flight: &Arc<Flight>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&flight.key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(&flight.key);
        }
    }

    /// A finished flight whose outputs include `path`, still on its
    /// backend and visible to `client` (public, or private to it), with a
    /// claim that keeps it from settling while the caller fetches.
    pub fn holding(
        &self,
        path: &StorePath,
        client: &str,
    ) -> Option<(Attachment, Arc<AsyncMutex<Finished>>)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values().find_map(|f| {
            let visible = match &f.key.scope {
                Scope::Public => true,
                Scope::Private(owner) => owner == client,
            };
            if !visible || !f.key.outputs.contains(path) {
                return None;
            }
            let finished = f.outcome.borrow().as_ref()?.finished.clone()?;
            f.attached.fetch_add(1, Ordering::SeqCst);
            Some((Attachment { flight: f.clone() }, finished))
        })
    }

    /// What `/status` shows of the builds in flight.
    pub fn snapshot(&self) -> Vec<FlightStatus> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|f| FlightStatus {
                outputs: match f.key.scope {
                    Scope::Public => f.key.outputs.iter().map(|p| p.name().to_owned()).collect(),
                    Scope::Private(_) => vec![super::REDACTED.to_owned()],
                },
                private: f.key.scope != Scope::Public,
                attached: f.attached(),
                state: if f.outcome.borrow().is_some() {
                    "storing outputs"
                } else {
                    "building"
                },
                age_seconds: f.created.elapsed().as_secs_f64(),
                log_bytes: f.log.bytes(),
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> FlightKey {
        let p = format!("/nix/store/{}-{n}", "1".repeat(32));
        FlightKey {
            scope: Scope::Public,
            outputs: vec![StorePath::parse(&p).unwrap()],
        }
    }

    #[test]
    fn a_second_client_attaches_to_the_running_flight() {
        let flights = Flights::default();
        let (a, created_a) = flights.attach(key("x"), false);
        let (b, created_b) = flights.attach(key("x"), false);
        assert!(created_a && !created_b);
        assert!(Arc::ptr_eq(&a.flight, &b.flight));
        assert_eq!(a.flight.attached(), 2);
        let (_c, created_c) = flights.attach(key("other"), false);
        assert!(created_c);
    }

    #[test]
    fn the_build_is_cancelled_only_when_the_last_client_leaves() {
        let flights = Flights::default();
        let (a, _) = flights.attach(key("x"), false);
        let (b, _) = flights.attach(key("x"), false);
        let flight = a.flight.clone();
        drop(a);
        assert!(!flight.cancel.is_cancelled(), "B keeps it alive");
        drop(b);
        assert!(flight.cancel.is_cancelled());
        let (fresh, created) = flights.attach(key("x"), false);
        assert!(created, "a cancelled flight is not reused");
        assert!(!Arc::ptr_eq(&fresh.flight, &flight));
    }

    #[test]
    fn keep_going_finishes_builds_nobody_waits_for() {
        let flights = Flights::default();
        let (a, _) = flights.attach(key("x"), true);
        let flight = a.flight.clone();
        drop(a);
        assert!(!flight.cancel.is_cancelled());
    }

    #[test]
    fn a_finished_flight_is_not_cancelled_by_its_clients_leaving() {
        let flights = Flights::default();
        let (a, _) = flights.attach(key("x"), false);
        let flight = a.flight.clone();
        flight.outcome.send_replace(Some(Outcome {
            result: BuildResult::failure(crate::wire::build::BuildStatus::Built, ""),
            finished: None,
        }));
        drop(a);
        assert!(!flight.cancel.is_cancelled());
        flights.remove(&flight);
        assert!(flights.is_empty());
    }
}
