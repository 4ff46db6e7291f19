//! The hardware both policies run on, and the event engine: timed events
//! plus machines that share their CPU among running builds.
//!
//! A machine with `max_jobs` slots runs up to `max_jobs` builds at full
//! speed; with n > max_jobs builds each gets max_jobs / n of a slot
//! (processor sharing). That is how oversubscription costs: the relay never
//! oversubscribes, three stock clients can.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::workload::Sys;

pub struct Machine {
    pub name: &'static str,
    pub sys: Sys,
    pub max_jobs: u32,
    pub speed: f64,
}

/// ser5 (x86_64, 12 slots, speed 4) runs the relay; opi01-03 (aarch64,
/// 2 slots each, speed 1) are both builders and the three clients.
pub fn homelab() -> Vec<Machine> {
    let board = |name| Machine {
        name,
        sys: Sys::Arm,
        max_jobs: 2,
        speed: 1.0,
    };
    vec![
        Machine {
            name: "ser5",
            sys: Sys::X86,
            max_jobs: 12,
            speed: 4.0,
        },
        board("opi01"),
        board("opi02"),
        board("opi03"),
    ]
}

/// The machine the relay (and its store) runs on.
pub const RELAY_HOST: usize = 0;
pub const CLIENTS: usize = 3;

/// Client `c` is board `c`, which is machine `1 + c`.
pub fn board(c: usize) -> usize {
    1 + c
}

/// Costs that are not build time, in seconds and bytes per second.
#[derive(Debug, Clone, Copy)]
pub struct Costs {
    /// LAN between any two machines (1 GbE), no contention.
    pub bandwidth: f64,
    /// Stock hook, per derivation: OpenSSH handshake + `nix-store --serve`
    /// start (0.28 s connect measured by relay_vs_direct.sh) + hook start.
    pub stock_handshake: f64,
    /// Client -> relay, per derivation: the client's hook still connects
    /// (0.12 s measured against the relay).
    pub relay_client_hop: f64,
    /// Relay -> backend per build: a pooled session, or a fresh connection.
    pub relay_backend_connect: f64,
    /// Derivations a client has at the relay at once (its machines line's
    /// maxJobs: `nix-relay machines-entry` prints the sum of the backends'
    /// max_jobs); clients build nothing locally.
    pub relay_client_max_jobs: u32,
    /// Stock clients' own max-jobs (local builds on their board).
    pub stock_local_jobs: u32,
}

pub const POOLED_CONNECT: f64 = 0.005;
pub const FRESH_CONNECT: f64 = 0.1;

impl Default for Costs {
    fn default() -> Self {
        Costs {
            bandwidth: 110e6,
            stock_handshake: 0.4,
            relay_client_hop: 0.12,
            relay_backend_connect: POOLED_CONNECT,
            relay_client_max_jobs: 18,
            stock_local_jobs: 2,
        }
    }
}

impl Costs {
    pub fn xfer(&self, from: usize, to: usize, bytes: f64) -> f64 {
        if from == to {
            0.0
        } else {
            bytes / self.bandwidth
        }
    }
}

struct Timed<E> {
    t: f64,
    seq: u64,
    ev: E,
}

impl<E> PartialEq for Timed<E> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl<E> Eq for Timed<E> {}
impl<E> PartialOrd for Timed<E> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<E> Ord for Timed<E> {
    /// Reversed: the heap pops the earliest, then the first scheduled.
    fn cmp(&self, o: &Self) -> Ordering {
        o.t.total_cmp(&self.t).then(o.seq.cmp(&self.seq))
    }
}

struct Running<K> {
    key: K,
    remaining: f64,
}

/// What happened next.
pub enum Occur<E, K> {
    Event(E),
    /// Build `K` finished on machine `usize`.
    Built(usize, K),
}

pub struct Engine<E, K> {
    pub now: f64,
    seq: u64,
    heap: BinaryHeap<Timed<E>>,
    cpus: Vec<Vec<Running<K>>>,
    speed: Vec<f64>,
    cap: Vec<f64>,
    /// Slot-seconds of build work done per machine (for utilisation).
    pub busy: Vec<f64>,
}

impl<E, K: Copy> Engine<E, K> {
    pub fn new(machines: &[Machine]) -> Self {
        Engine {
            now: 0.0,
            seq: 0,
            heap: BinaryHeap::new(),
            cpus: machines.iter().map(|_| Vec::new()).collect(),
            speed: machines.iter().map(|m| m.speed).collect(),
            cap: machines.iter().map(|m| f64::from(m.max_jobs)).collect(),
            busy: vec![0.0; machines.len()],
        }
    }

    pub fn at(&mut self, delay: f64, ev: E) {
        self.seq += 1;
        self.heap.push(Timed {
            t: self.now + delay.max(0.0),
            seq: self.seq,
            ev,
        });
    }

    /// Starts a build of `work` speed-1 seconds on machine `m`.
    pub fn build(&mut self, m: usize, key: K, work: f64) {
        self.cpus[m].push(Running {
            key,
            remaining: work,
        });
    }

    fn rate(&self, m: usize) -> f64 {
        let n = self.cpus[m].len() as f64;
        self.speed[m] * (self.cap[m] / n).min(1.0)
    }

    fn next_build(&self) -> Option<(f64, usize, usize)> {
        let mut best: Option<(f64, usize, usize)> = None;
        for m in 0..self.cpus.len() {
            let rate = self.rate(m);
            for (i, r) in self.cpus[m].iter().enumerate() {
                let t = self.now + r.remaining / rate;
                if best.is_none_or(|(bt, _, _)| t < bt) {
                    best = Some((t, m, i));
                }
            }
        }
        best
    }

    fn advance_to(&mut self, t: f64) {
        let dt = t - self.now;
        for m in 0..self.cpus.len() {
            if self.cpus[m].is_empty() {
                continue;
            }
            let step = self.rate(m) * dt;
            let n = self.cpus[m].len() as f64;
            self.busy[m] += dt * n.min(self.cap[m]);
            for r in &mut self.cpus[m] {
                r.remaining -= step;
            }
        }
        self.now = t;
    }

    pub fn next(&mut self) -> Option<Occur<E, K>> {
        let build = self.next_build();
        let event_t = self.heap.peek().map(|e| e.t);
        if let Some((bt, m, i)) = build
            && event_t.is_none_or(|et| bt <= et)
        {
            self.advance_to(bt);
            let done = self.cpus[m].swap_remove(i);
            return Some(Occur::Built(m, done.key));
        }
        let et = event_t?;
        self.advance_to(et);
        self.heap.pop().map(|e| Occur::Event(e.ev))
    }
}
