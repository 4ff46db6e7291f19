//! One system's waiting jobs. Clients are served round-robin — one
//! client's 500-derivation rebuild cannot starve another client's single
//! build. Within a client, the job expected to take longest goes first
//! (`history`): a long critical-path build (llvm, the kernel) that becomes
//! ready behind hundreds of short ones starts at once instead of hours
//! late. Equal expectations keep arrival order.
//!
//! Expectations are compared by [`class`]: [`CLASSES_PER_OCTAVE`] classes
//! per doubling of the expected seconds, so "equal" means within ~9%, the
//! noise of a learned duration anyway. A client's jobs are kept in one
//! FIFO per class, so push and pop are O(log classes) and a job's position
//! is counted in O(classes + clients), whatever the queue's length.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Grant, JobSpec};

/// Resolution of the longest-first order: classes per doubling.
pub const CLASSES_PER_OCTAVE: f64 = 8.0;

/// The priority class of a job expected to take `secs` (higher: sooner).
pub fn class(secs: f64) -> u32 {
    // `as` saturates: NaN and negatives give 0, huge values u32::MAX.
    (secs.max(1.0).log2() * CLASSES_PER_OCTAVE) as u32
}

pub(super) struct Waiter {
    pub seq: u64,
    pub since: Instant,
    /// Priority class (see [`class`]); higher is served first.
    pub class: u32,
    pub job: JobSpec,
    pub tx: oneshot::Sender<Grant>,
}

/// One client's jobs: one FIFO per class, highest class first.
#[derive(Default)]
struct ClientQueue {
    by_class: BTreeMap<Reverse<u32>, VecDeque<Waiter>>,
    len: usize,
}

impl ClientQueue {
    /// Queues `w`; returns its rank in this client's order (1: next).
    fn push(&mut self, w: Waiter) -> usize {
        let key = Reverse(w.class);
        let ahead: usize = self.by_class.range(..key).map(|(_, q)| q.len()).sum();
        let q = self.by_class.entry(key).or_default();
        q.push_back(w);
        self.len += 1;
        ahead + q.len()
    }

    fn front(&self) -> Option<&Waiter> {
        self.by_class.values().next()?.front()
    }

    fn pop(&mut self) -> Option<Waiter> {
        let mut entry = self.by_class.first_entry()?;
        let w = entry.get_mut().pop_front();
        if entry.get().is_empty() {
            entry.remove();
        }
        self.len -= usize::from(w.is_some());
        w
    }
}

#[derive(Default)]
pub(super) struct SystemQueue {
    /// Clients with waiting jobs; the front one is served next.
    rotation: VecDeque<String>,
    per_client: HashMap<String, ClientQueue>,
    len: usize,
}

impl SystemQueue {
    /// Queues `w`; returns how many jobs will be served before it, plus
    /// one, if nothing else arrives: its rank among its client's jobs, and
    /// the jobs of other clients whose turns come before each of its own.
    pub fn push_back(&mut self, w: Waiter) -> usize {
        let client = w.job.client.clone();
        let q = self.per_client.entry(client.clone()).or_default();
        let rank = q.push(w);
        if q.len == 1 {
            self.rotation.push_back(client.clone());
        }
        self.len += 1;
        let mut before = rank - 1;
        let mut ours_seen = false;
        for c in &self.rotation {
            if *c == client {
                ours_seen = true;
                continue;
            }
            // A client ahead in the rotation is served in the job's own
            // round too; one behind it only in the rounds before.
            let rounds = if ours_seen { rank - 1 } else { rank };
            before += self.per_client.get(c).map_or(0, |q| q.len.min(rounds));
        }
        before + 1
    }

    /// The job that would be served next.
    pub fn front(&self) -> Option<&Waiter> {
        let client = self.rotation.front()?;
        self.per_client.get(client)?.front()
    }

    /// Takes the next job and moves its client to the back of the rotation.
    pub fn pop_front(&mut self) -> Option<Waiter> {
        let client = self.rotation.pop_front()?;
        let q = self.per_client.get_mut(&client)?;
        let w = q.pop();
        if q.len == 0 {
            self.per_client.remove(&client);
        } else {
            self.rotation.push_back(client);
        }
        self.len -= usize::from(w.is_some());
        w
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.rotation.is_empty()
    }

    /// Every waiting job, oldest first, taken out.
    pub fn into_all(self) -> Vec<Waiter> {
        let mut all: Vec<Waiter> = (self.per_client.into_values())
            .flat_map(|q| q.by_class.into_values().flatten())
            .collect();
        all.sort_by_key(|w| w.seq);
        all
    }

    /// Every waiting job, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Waiter> {
        let mut all: Vec<&Waiter> = (self.per_client.values())
            .flat_map(|q| q.by_class.values().flatten())
            .collect();
        all.sort_by_key(|w| w.seq);
        all.into_iter()
    }
}
