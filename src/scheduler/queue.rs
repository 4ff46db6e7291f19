//! One system's waiting jobs: first come, first served per client, and the
//! clients served round-robin — one client's 500-derivation rebuild cannot
//! starve another client's single build.

use std::collections::{HashMap, VecDeque};

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Grant, JobSpec};

pub(super) struct Waiter {
    pub seq: u64,
    pub since: Instant,
    pub job: JobSpec,
    pub tx: oneshot::Sender<Grant>,
}

#[derive(Default)]
pub(super) struct SystemQueue {
    /// Clients with waiting jobs; the front one is served next.
    rotation: VecDeque<String>,
    per_client: HashMap<String, VecDeque<Waiter>>,
}

impl SystemQueue {
    /// Queues `w`; returns how many jobs will be served before it, plus one.
    pub fn push_back(&mut self, w: Waiter) -> usize {
        let client = w.job.client.clone();
        let q = self.per_client.entry(client.clone()).or_default();
        q.push_back(w);
        let own = q.len();
        if own == 1 {
            self.rotation.push_back(client.clone());
        }
        let turn = self.rotation.iter().position(|c| *c == client).unwrap_or(0);
        // Every round serves one job of each client in the rotation.
        turn + 1 + (own - 1) * self.rotation.len()
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
        let w = q.pop_front();
        if q.is_empty() {
            self.per_client.remove(&client);
        } else {
            self.rotation.push_back(client);
        }
        w
    }

    pub fn len(&self) -> usize {
        self.per_client.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.rotation.is_empty()
    }

    /// Every waiting job, oldest first, taken out.
    pub fn into_all(self) -> Vec<Waiter> {
        let mut all: Vec<Waiter> = self.per_client.into_values().flatten().collect();
        all.sort_by_key(|w| w.seq);
        all
    }

    /// Every waiting job, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Waiter> {
        let mut all: Vec<&Waiter> = self.per_client.values().flatten().collect();
        all.sort_by_key(|w| w.seq);
        all.into_iter()
    }
}
