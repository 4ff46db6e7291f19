//! The relay, in virtual time: the shipped `nix_relay::scheduler::Scheduler`
//! (try_acquire, queues, `Slot` drop -> dispatch, `policy::pick`) places
//! every build; around it the sim plays the relay's session layer (cache
//! hit, attach to a flight in progress, or a new flight), the three
//! clients' Nix (a derivation is sent once all its inputs are in the
//! client's store) and the machines.
//!
//! The clock the scheduler sees is tokio's paused clock, advanced to each
//! event's time, so `Instant::now()` inside it is virtual.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use nix_relay::config::{Backend, BackendUri};
use nix_relay::scheduler::history::History;
use nix_relay::scheduler::locality::InputSummary;
use nix_relay::scheduler::{Acquired, Error, JobSpec, Scheduler, Slot};
use nix_relay::wire::store_path::StorePath;
use tokio::sync::oneshot;

use super::cluster::{CLIENTS, Costs, Engine, Machine, Occur, RELAY_HOST, board};
use super::workload::Workload;

/// The order in which waiting jobs get slots. `Shipped` is the real
/// `Scheduler`'s queue (clients round-robin, longest expected build first
/// within a client, expectations from the build history the run is given). The others
/// are what-ifs: the sim holds waiting jobs in its own priority queue and
/// calls `try_acquire` only when a slot of the job's system is free, so
/// the shipped `policy::pick` still places every job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Order {
    Shipped,
    /// `big-parallel` jobs first (the relay sees the feature), then FIFO.
    BigParallelFirst,
    /// Longest expected build first (as if the relay knew each build's
    /// duration, e.g. from an earlier build of the same name).
    LongestFirst,
    /// Longest path to the end of the closure first: an oracle (the relay
    /// never sees the graph), the classic critical-path list schedule.
    CriticalPathFirst,
}

pub struct Outcome {
    /// When the last client had the whole closure.
    pub makespan: f64,
    /// Builds run (each derivation once, if dedup works).
    pub builds: usize,
    /// Slot-seconds busy per machine.
    pub busy: Vec<f64>,
    /// Per derivation: first submitted (relay got it), build started.
    pub submitted: Vec<f64>,
    pub started: Vec<f64>,
}

#[derive(Clone, Copy)]
enum Ev {
    /// Client's BuildDerivation reaches the relay.
    Arrive(usize, usize),
    /// Inputs pushed, the backend starts building.
    Start(usize),
    /// Outputs are in the relay store (the tee).
    Teed(usize),
    /// The client has the outputs in its own store.
    Got(usize, usize),
}

#[derive(Default)]
struct Flight {
    rx: Option<oneshot::Receiver<Result<Slot, Error>>>,
    slot: Option<Slot>,
    backend: usize,
    attached: Vec<usize>,
}

#[derive(Clone, Copy, PartialEq)]
enum Goal {
    Blocked,
    Submitted,
    Done,
}

struct Sim<'a> {
    w: &'a Workload,
    m: &'a [Machine],
    costs: Costs,
    sched: Arc<Scheduler>,
    eng: Engine<Ev, usize>,
    /// Per machine, which outputs its store holds (a board's store is
    /// also its client's store).
    stores: Vec<Vec<bool>>,
    relay_has: Vec<bool>,
    flights: Vec<Option<Flight>>,
    queued: Vec<usize>,
    pending: Vec<Vec<usize>>,
    goal: Vec<Vec<Goal>>,
    outstanding: Vec<u32>,
    backlog: Vec<VecDeque<usize>>,
    done: Vec<usize>,
    finish: Vec<f64>,
    builds: usize,
    clock_ns: u128,
    submitted: Vec<f64>,
    started: Vec<f64>,
    order: Order,
    priority: Vec<f64>,
    /// What-if orders: waiting jobs per system, highest priority first.
    held: Vec<BinaryHeap<(u64, Reverse<u64>, usize)>>,
    running: Vec<u32>,
    seq: u64,
    history: Arc<History>,
    /// The version every derivation name carries in this run.
    version: u32,
    /// Per derivation: when its slot was claimed.
    claimed: Vec<f64>,
}

pub fn backends(m: &[Machine]) -> Vec<Backend> {
    m.iter()
        .map(|m| Backend {
            name: m.name.into(),
            uri: BackendUri::Local,
            ssh_key: None,
            host_key: None,
            systems: vec![m.sys.nix().into()],
            max_jobs: m.max_jobs,
            speed_factor: m.speed,
            supported_features: vec!["big-parallel".into()],
            mandatory_features: vec![],
            connect_timeout: Duration::from_secs(5),
            store: None,
            untrusted_clients: false,
        })
        .collect()
}

/// A synthetic store path for derivation `d`'s output.
pub fn store_path(d: usize) -> StorePath {
    StorePath::parse(&format!("/nix/store/{d:032}-out")).expect("a valid store path")
}

/// The one place a `JobSpec` is built (the latency probe uses it too).
pub fn spec(
    client: String,
    name: String,
    system: &str,
    big_parallel: bool,
    inputs: Arc<InputSummary>,
) -> JobSpec {
    JobSpec {
        client,
        name,
        system: system.into(),
        required_features: if big_parallel {
            vec!["big-parallel".into()]
        } else {
            vec![]
        },
        inputs,
        untrusted: false,
    }
}

/// A Nix-like derivation name for `d`: `aarch64-linux-lib-3-17` at
/// version 2 becomes `lib_3_17-2` (the history key is `lib_3_17`).
pub fn drv_name(w: &Workload, d: usize, version: u32) -> String {
    let drv = &w.drvs[d];
    let bare = drv.name.strip_prefix(drv.sys.nix()).unwrap_or(&drv.name);
    format!(
        "{}-{version}",
        bare.trim_start_matches('-').replace('-', "_")
    )
}

/// The job with its direct inputs as the locality summary.
pub fn job(w: &Workload, client: usize, d: usize, version: u32) -> JobSpec {
    let drv = &w.drvs[d];
    let inputs = InputSummary::new(
        drv.deps
            .iter()
            .map(|&i| (store_path(i), w.drvs[i].out_size as u64)),
    );
    spec(
        format!("opi0{}", client + 1),
        drv_name(w, d, version),
        drv.sys.nix(),
        drv.big_parallel,
        Arc::new(inputs),
    )
}

/// Runs the closure through the relay, its derivations named at
/// `version`, the scheduler ordering queues by `history` and learning
/// into it as the relay does; needs a paused tokio clock.
pub async fn run(
    w: &Workload,
    m: &[Machine],
    costs: Costs,
    order: Order,
    history: Arc<History>,
    version: u32,
) -> Outcome {
    let n = w.drvs.len();
    let priority = match order {
        Order::Shipped => vec![0.0; n],
        Order::BigParallelFirst => w
            .drvs
            .iter()
            .map(|d| f64::from(u8::from(d.big_parallel)))
            .collect(),
        Order::LongestFirst => w.drvs.iter().map(|d| d.work).collect(),
        Order::CriticalPathFirst => super::bound::longest_from(w, m),
    };
    let mut sim = Sim {
        w,
        m,
        costs,
        sched: Scheduler::with_history(backends(m), 1 << 20, history.clone()),
        eng: Engine::new(m),
        stores: vec![vec![false; n]; m.len()],
        relay_has: vec![false; n],
        flights: (0..n).map(|_| None).collect(),
        queued: Vec::new(),
        pending: vec![w.drvs.iter().map(|d| d.deps.len()).collect(); CLIENTS],
        goal: vec![vec![Goal::Blocked; n]; CLIENTS],
        outstanding: vec![0; CLIENTS],
        backlog: vec![VecDeque::new(); CLIENTS],
        done: vec![0; CLIENTS],
        finish: vec![0.0; CLIENTS],
        builds: 0,
        clock_ns: 0,
        submitted: vec![f64::NAN; n],
        started: vec![f64::NAN; n],
        order,
        priority,
        held: vec![BinaryHeap::new(), BinaryHeap::new()],
        running: vec![0; m.len()],
        seq: 0,
        history,
        version,
        claimed: vec![f64::NAN; n],
    };
    for c in 0..CLIENTS {
        for d in 0..n {
            if w.drvs[d].deps.is_empty() {
                sim.ready(c, d);
            }
        }
    }
    while let Some(o) = sim.eng.next() {
        sim.sync_clock().await;
        match o {
            Occur::Event(Ev::Arrive(c, d)) => sim.arrive(c, d),
            Occur::Event(Ev::Start(d)) => {
                sim.started[d] = sim.eng.now;
                let f = sim.flights[d].as_ref().expect("a started flight");
                sim.eng.build(f.backend, d, w.drvs[d].work);
            }
            Occur::Built(b, d) => {
                sim.stores[b][d] = true;
                // As session::build does after a build: the outputs are there.
                sim.sched.locality().confirm(m[b].name, [&store_path(d)]);
                let t = costs.xfer(b, RELAY_HOST, w.drvs[d].out_size);
                sim.eng.at(t, Ev::Teed(d));
            }
            Occur::Event(Ev::Teed(d)) => sim.teed(d),
            Occur::Event(Ev::Got(c, d)) => sim.got(c, d),
        }
    }
    assert!(
        sim.done.iter().all(|&k| k == n),
        "every client got the closure"
    );
    Outcome {
        makespan: sim.finish.iter().copied().fold(0.0, f64::max),
        builds: sim.builds,
        busy: sim.eng.busy.clone(),
        submitted: sim.submitted,
        started: sim.started,
    }
}

impl Sim<'_> {
    async fn sync_clock(&mut self) {
        let target = (self.eng.now * 1e9) as u128;
        if target > self.clock_ns {
            let step = u64::try_from(target - self.clock_ns).expect("a sane step");
            tokio::time::advance(Duration::from_nanos(step)).await;
            self.clock_ns = target;
        }
    }

    /// All inputs of `d` are in client `c`'s store.
    fn ready(&mut self, c: usize, d: usize) {
        if self.stores[board(c)][d] {
            // Built on this very board for someone else: valid already.
            self.eng.at(0.0, Ev::Got(c, d));
        } else if self.outstanding[c] < self.costs.relay_client_max_jobs {
            self.outstanding[c] += 1;
            self.goal[c][d] = Goal::Submitted;
            self.eng.at(self.costs.relay_client_hop, Ev::Arrive(c, d));
        } else {
            self.backlog[c].push_back(d);
        }
    }

    fn arrive(&mut self, c: usize, d: usize) {
        if self.relay_has[d] {
            let t = self.to_client(c, d);
            self.eng.at(t, Ev::Got(c, d));
        } else if let Some(f) = self.flights[d].as_mut() {
            f.attached.push(c);
        } else {
            self.submitted[d] = self.eng.now;
            let mut f = Flight {
                attached: vec![c],
                ..Flight::default()
            };
            if self.order != Order::Shipped {
                f.rx = None;
                self.flights[d] = Some(f);
                let key = (self.priority[d] * 1e3) as u64;
                let sys = self.w.drvs[d].sys as usize;
                self.seq += 1;
                self.held[sys].push((key, Reverse(self.seq), d));
                self.pump();
                return;
            }
            match self.sched.try_acquire(job(self.w, c, d, self.version)) {
                Ok(Acquired::Now(slot)) => {
                    self.flights[d] = Some(f);
                    self.start(d, slot);
                }
                Ok(Acquired::Queued { rx, .. }) => {
                    f.rx = Some(rx);
                    self.flights[d] = Some(f);
                    self.queued.push(d);
                }
                Err(e) => panic!("scheduler refused {}: {e}", self.w.drvs[d].name),
            }
        }
    }

    /// What-if orders: hands free slots to the held jobs, best first.
    fn pump(&mut self) {
        for sys in 0..self.held.len() {
            while let Some(&(_, _, d)) = self.held[sys].peek() {
                let free = self
                    .m
                    .iter()
                    .enumerate()
                    .any(|(i, m)| m.sys == self.w.drvs[d].sys && self.running[i] < m.max_jobs);
                if !free {
                    break;
                }
                self.held[sys].pop();
                let c = self.flights[d].as_ref().map_or(0, |f| f.attached[0]);
                match self.sched.try_acquire(job(self.w, c, d, self.version)) {
                    Ok(Acquired::Now(slot)) => self.start(d, slot),
                    _ => unreachable!("a free slot of the job's system"),
                }
            }
        }
    }

    fn start(&mut self, d: usize, slot: Slot) {
        let b = self
            .m
            .iter()
            .position(|m| m.name == slot.backend().name)
            .expect("a configured backend");
        let mut push = 0.0;
        for &i in &self.w.drvs[d].deps {
            if !self.stores[b][i] {
                push += self.costs.xfer(RELAY_HOST, b, self.w.drvs[i].out_size);
                self.stores[b][i] = true;
            }
        }
        // As push_inputs does: the backend now holds every input.
        let paths: Vec<StorePath> = self.w.drvs[d].deps.iter().map(|&i| store_path(i)).collect();
        self.sched.locality().confirm(self.m[b].name, &paths);
        self.builds += 1;
        self.running[b] += 1;
        self.claimed[d] = self.eng.now;
        let f = self.flights[d].as_mut().expect("a flight");
        f.slot = Some(slot);
        f.backend = b;
        self.eng
            .at(self.costs.relay_backend_connect + push, Ev::Start(d));
    }

    fn teed(&mut self, d: usize) {
        self.relay_has[d] = true;
        let f = self.flights[d].take().expect("a running flight");
        self.running[f.backend] -= 1;
        // As session::build does: slot claimed to outputs fetched, scaled
        // by the backend's speed factor.
        let took = Duration::from_secs_f64(self.eng.now - self.claimed[d]);
        let (name, sys) = (drv_name(self.w, d, self.version), self.w.drvs[d].sys.nix());
        self.history
            .record(&name, sys, took, self.m[f.backend].speed);
        drop(f.slot); // -> Scheduler::release -> dispatch
        let queued = std::mem::take(&mut self.queued);
        for q in queued {
            let got = self.flights[q]
                .as_mut()
                .and_then(|f| f.rx.as_mut())
                .and_then(|rx| rx.try_recv().ok())
                .map(|g| g.expect("a granted slot"));
            match got {
                Some(slot) => self.start(q, slot),
                None => self.queued.push(q),
            }
        }
        self.pump();
        for c in f.attached {
            let t = self.to_client(c, d);
            self.eng.at(t, Ev::Got(c, d));
        }
    }

    fn to_client(&self, c: usize, d: usize) -> f64 {
        if self.stores[board(c)][d] {
            0.0
        } else {
            self.costs
                .xfer(RELAY_HOST, board(c), self.w.drvs[d].out_size)
        }
    }

    fn got(&mut self, c: usize, d: usize) {
        if self.goal[c][d] == Goal::Done {
            return;
        }
        if self.goal[c][d] == Goal::Submitted {
            self.outstanding[c] -= 1;
        }
        self.goal[c][d] = Goal::Done;
        self.stores[board(c)][d] = true;
        self.done[c] += 1;
        self.finish[c] = self.eng.now;
        for &e in &self.w.dependents[d] {
            self.pending[c][e] -= 1;
            if self.pending[c][e] == 0 {
                self.ready(c, e);
            }
        }
        while self.outstanding[c] < self.costs.relay_client_max_jobs {
            let Some(next) = self.backlog[c].pop_front() else {
                break;
            };
            self.ready(c, next);
        }
    }
}
