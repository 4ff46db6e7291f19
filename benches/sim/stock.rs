//! The baseline: three stock Nix 2.8 clients (the boards), each with its own
//! build hook and machines file (ser5 + the two other boards), no relay.
//!
//! Modelled on Nix 2.8's `build-remote`: a client counts only its own slots
//! on each machine (its lock files); among machines of the right system
//! with a free slot (own load < maxJobs) it takes the lowest load /
//! speedFactor, then the faster, then the less loaded, then the first
//! listed. No free slot: build locally if the client's own max-jobs allows
//! and the system is its own (aarch64), else postpone until one of its
//! builds ends. Every remote build pays an SSH handshake + `nix-store
//! --serve` start, then copies the inputs the builder lacks, builds, and
//! copies the outputs back.
//!
//! Cross-client dedup exists only inside one builder's store: if the
//! outputs are already valid there the build is a no-op, and a second build
//! of the same derivation on the same machine waits for the first one's
//! path lock and then finds them valid. The boards share no binary cache.
//! Since every client respects max-jobs only for itself, a machine can run
//! up to 3 x maxJobs (+ its own local builds): time-shared.

use std::collections::{HashMap, VecDeque};

use super::cluster::{CLIENTS, Costs, Engine, Machine, Occur, board};
use super::workload::{Sys, Workload};

pub struct Outcome {
    pub makespan: f64,
    /// Builds that ran (a derivation built on two machines counts twice).
    pub builds: usize,
    pub busy: Vec<f64>,
    /// Per derivation: how many times it was built.
    pub built: Vec<u32>,
}

#[derive(Clone, Copy)]
enum Ev {
    /// Handshake done and inputs copied: ask machine `m` to build.
    Connected { c: usize, d: usize, m: usize },
    /// Outputs copied back from `m` to the client.
    CopiedBack { c: usize, d: usize, m: usize },
}

struct Sim<'a> {
    w: &'a Workload,
    m: &'a [Machine],
    costs: Costs,
    eng: Engine<Ev, usize>,
    stores: Vec<Vec<bool>>,
    /// Per machine: derivations building there, and the clients waiting.
    building: Vec<HashMap<usize, Vec<usize>>>,
    pending: Vec<Vec<usize>>,
    done_goal: Vec<Vec<bool>>,
    own_load: Vec<Vec<u32>>,
    local: Vec<u32>,
    ready: VecDeque<(usize, usize)>,
    postponed: Vec<VecDeque<usize>>,
    done: Vec<usize>,
    finish: Vec<f64>,
    builds: usize,
    built: Vec<u32>,
}

pub fn run(w: &Workload, m: &[Machine], costs: Costs) -> Outcome {
    let n = w.drvs.len();
    let mut sim = Sim {
        w,
        m,
        costs,
        eng: Engine::new(m),
        stores: vec![vec![false; n]; m.len()],
        building: (0..m.len()).map(|_| HashMap::new()).collect(),
        pending: vec![w.drvs.iter().map(|d| d.deps.len()).collect(); CLIENTS],
        done_goal: vec![vec![false; n]; CLIENTS],
        own_load: vec![vec![0; m.len()]; CLIENTS],
        local: vec![0; CLIENTS],
        ready: VecDeque::new(),
        postponed: vec![VecDeque::new(); CLIENTS],
        done: vec![0; CLIENTS],
        finish: vec![0.0; CLIENTS],
        builds: 0,
        built: vec![0; n],
    };
    for c in 0..CLIENTS {
        for d in (0..n).filter(|&d| w.drvs[d].deps.is_empty()) {
            sim.ready.push_back((c, d));
        }
    }
    sim.settle();
    while let Some(o) = sim.eng.next() {
        match o {
            Occur::Event(Ev::Connected { c, d, m }) => sim.request(c, d, m),
            Occur::Built(m, d) => {
                sim.stores[m][d] = true;
                let waiters = sim.building[m].remove(&d).unwrap_or_default();
                for c in waiters {
                    sim.output_ready(c, d, m);
                }
            }
            Occur::Event(Ev::CopiedBack { c, d, m }) => {
                sim.own_load[c][m] -= 1;
                sim.goal_done(c, d);
            }
        }
        sim.settle();
    }
    assert!(
        sim.done.iter().all(|&k| k == n),
        "every client built the closure"
    );
    Outcome {
        makespan: sim.finish.iter().copied().fold(0.0, f64::max),
        builds: sim.builds,
        busy: sim.eng.busy.clone(),
        built: sim.built,
    }
}

impl Sim<'_> {
    /// Tries every ready goal, in order.
    fn settle(&mut self) {
        while let Some((c, d)) = self.ready.pop_front() {
            self.try_build(c, d);
        }
    }

    fn try_build(&mut self, c: usize, d: usize) {
        let own = board(c);
        if self.stores[own][d] {
            return self.goal_done(c, d);
        }
        let sys = self.w.drvs[d].sys;
        if let Some(m) = self.hook_choice(c, sys) {
            self.own_load[c][m] += 1;
            let mut t = self.costs.stock_handshake;
            for &i in &self.w.drvs[d].deps {
                if !self.stores[m][i] {
                    t += self.costs.xfer(own, m, self.w.drvs[i].out_size);
                    self.stores[m][i] = true;
                }
            }
            self.eng.at(t, Ev::Connected { c, d, m });
        } else if sys == Sys::Arm && self.local[c] < self.costs.stock_local_jobs {
            self.local[c] += 1;
            self.request(c, d, own);
        } else {
            self.postponed[c].push_back(d);
        }
    }

    /// build-remote's choice among this client's machines (all but its own
    /// board), by its own load only.
    fn hook_choice(&self, c: usize, sys: Sys) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        for (m, mach) in self.m.iter().enumerate() {
            let load = self.own_load[c][m];
            if m == board(c) || mach.sys != sys || load >= mach.max_jobs {
                continue;
            }
            let better = match best {
                None => true,
                Some((b, bl)) => {
                    let (x, y) = (
                        f64::from(load) / mach.speed,
                        f64::from(bl) / self.m[b].speed,
                    );
                    x < y
                        || (x == y
                            && (mach.speed > self.m[b].speed
                                || (mach.speed == self.m[b].speed && load < bl)))
                }
            };
            if better {
                best = Some((m, load));
            }
        }
        best.map(|(m, _)| m)
    }

    /// Client `c` asks machine `m` to build `d` (remotely or locally).
    fn request(&mut self, c: usize, d: usize, m: usize) {
        if self.stores[m][d] {
            self.output_ready(c, d, m);
        } else if let Some(waiters) = self.building[m].get_mut(&d) {
            // The first build holds the output path lock.
            waiters.push(c);
        } else {
            self.building[m].insert(d, vec![c]);
            self.builds += 1;
            self.built[d] += 1;
            self.eng.build(m, d, self.w.drvs[d].work);
        }
    }

    fn output_ready(&mut self, c: usize, d: usize, m: usize) {
        if m == board(c) {
            self.local[c] -= 1;
            self.goal_done(c, d);
        } else {
            let t = if self.stores[board(c)][d] {
                0.0
            } else {
                self.costs.xfer(m, board(c), self.w.drvs[d].out_size)
            };
            self.eng.at(t, Ev::CopiedBack { c, d, m });
        }
    }

    fn goal_done(&mut self, c: usize, d: usize) {
        // A slot of this client may have freed: postponed goals retry first.
        let retry: Vec<usize> = self.postponed[c].drain(..).collect();
        self.ready.extend(retry.into_iter().map(|d| (c, d)));
        if self.done_goal[c][d] {
            return;
        }
        self.done_goal[c][d] = true;
        self.stores[board(c)][d] = true;
        self.done[c] += 1;
        self.finish[c] = self.eng.now;
        for &e in &self.w.dependents[d] {
            self.pending[c][e] -= 1;
            if self.pending[c][e] == 0 {
                self.ready.push_back((c, e));
            }
        }
    }
}
