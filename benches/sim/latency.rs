//! Routing decision latency of the shipped `Scheduler` with a deep queue:
//! every slot taken, `queued` jobs waiting (mixed systems, 12 clients),
//! then per sample (wall clock, real time):
//!
//! * enqueue: `try_acquire` of a new job (policy::pick + queue push);
//! * dispatch: dropping a slot (release -> dispatch -> `pick` for the queue
//!   heads -> hand-over to the waiter).
//!
//! The queue stays at `queued` jobs: each sample adds one and serves one.
//! A sample during which the OS preempted the thread (its involuntary
//! context switches grew) is counted apart: on a loaded machine it measures
//! the other processes, and it hits long operations more often than short
//! ones. Both figures are printed.

use std::sync::Arc;
use std::time::Instant;

use nix_relay::scheduler::locality::InputSummary;
use nix_relay::scheduler::{Acquired, Error, JobSpec, Scheduler, Slot};

/// What a queued job receives: its slot, or why it got none.
type Grant = Result<Slot, Error>;
use tokio::sync::oneshot;

use super::cluster::Machine;
use super::relay::{backends, spec, store_path};

/// Seconds per sample, and whether the OS preempted the thread meanwhile.
#[derive(Default)]
pub struct Samples(pub Vec<(f64, bool)>);

impl Samples {
    /// Runs and times `f` (wall clock), noting a preemption.
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let before = preemptions();
        let t = Instant::now();
        let out = f();
        let secs = t.elapsed().as_secs_f64();
        self.0.push((secs, preemptions() != before));
        out
    }

    /// The samples the OS did not interrupt.
    pub fn clean(&self) -> Vec<f64> {
        self.0.iter().filter(|s| !s.1).map(|s| s.0).collect()
    }

    pub fn all(&self) -> Vec<f64> {
        self.0.iter().map(|s| s.0).collect()
    }

    pub fn preempted(&self) -> usize {
        self.0.iter().filter(|s| s.1).count()
    }
}

/// This thread's involuntary context switches so far (0 where /proc has
/// no such line): a sample that spans one measured the machine's load.
fn preemptions() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

pub struct Latency {
    pub enqueue: Samples,
    pub dispatch: Samples,
}

/// Paths the probe's backends are believed to hold (of 2 x that many).
const KNOWN_PATHS: usize = 8_000;

/// Job `i`: 32 inputs (the summary's size), half of them known somewhere.
fn job(i: usize) -> JobSpec {
    let system = if i.is_multiple_of(4) {
        "x86_64-linux"
    } else {
        "aarch64-linux"
    };
    let inputs =
        InputSummary::new((0..32).map(|k| (store_path((i * 32 + k) % (2 * KNOWN_PATHS)), 1 << 20)));
    spec(
        format!("client{}", i % 12),
        format!("pkg{}-1.0", i % NAMES),
        system,
        i.is_multiple_of(10),
        Arc::new(inputs),
    )
}

/// Distinct derivation names of the probe's jobs, all in the history
/// with durations from 1 s to an hour (so the queues hold many classes).
const NAMES: usize = 3_000;

pub fn measure(m: &[Machine], queued: usize, samples: usize) -> Latency {
    let sched = Scheduler::new(backends(m), (queued as u64) * 2);
    for k in 0..NAMES {
        let secs = ((k * 7919) % 3600 + 1) as u64;
        for sys in ["x86_64-linux", "aarch64-linux"] {
            let took = std::time::Duration::from_secs(secs);
            sched
                .history()
                .record(&format!("pkg{k}-0.9"), sys, took, 1.0);
        }
    }
    for (i, b) in m.iter().enumerate() {
        let known: Vec<_> = (0..KNOWN_PATHS)
            .map(|k| store_path(i * 1_000 + k))
            .collect();
        sched.locality().confirm(b.name, &known);
    }
    let mut slots: Vec<Slot> = Vec::new();
    let mut rxs: Vec<oneshot::Receiver<Grant>> = Vec::new();
    let mut i = 0;
    while rxs.len() < queued {
        match sched.try_acquire(job(i)).expect("eligible") {
            Acquired::Now(s) => slots.push(s),
            Acquired::Queued { rx, .. } => rxs.push(rx),
        }
        i += 1;
    }
    let mut lat = Latency {
        enqueue: Samples::default(),
        dispatch: Samples::default(),
    };
    for k in 0..samples {
        let j = job(i);
        let system = j.system.clone();
        let a = lat.enqueue.time(|| sched.try_acquire(j)).expect("eligible");
        i += 1;
        match a {
            Acquired::Queued { rx, .. } => rxs.push(rx),
            Acquired::Now(_) => unreachable!("every slot is taken"),
        }
        // Free a slot of the same system (so each queue keeps its depth);
        // the oldest waiter that fits takes it over.
        let same: Vec<usize> = (0..slots.len())
            .filter(|&s| slots[s].backend().systems.contains(&system))
            .collect();
        let slot = slots.swap_remove(same[k % same.len()]);
        lat.dispatch.time(|| drop(slot));
        let pos = rxs
            .iter_mut()
            .position(|rx| {
                rx.try_recv()
                    .map(|g| slots.push(g.expect("a granted slot")))
                    .is_ok()
            })
            .expect("a waiter got the freed slot");
        rxs.swap_remove(pos);
    }
    lat
}

/// (p50, p99, max) in seconds.
pub fn percentiles(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), s[s.len() - 1])
}
