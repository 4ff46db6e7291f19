//! A lower bound on any schedule's makespan, from build times alone
//! (transfers, handshakes and queueing only add to a real schedule):
//!
//! * the critical path, every node on the fastest machine of its system;
//! * per system, its total work / the speed-weighted slots serving it
//!   (sum of max_jobs x speed). (All systems together is never tighter
//!   here: the mediant of the per-system ratios.)
//!
//! Those two are the bound. A tighter one, still valid, adds release
//! times: no node can start before its earliest start r (the longest chain
//! of inputs before it, on the fastest machines), so for any T the work of
//! the nodes with r >= T is done after T, at most at the system's capacity:
//! makespan >= T + work(r >= T) / capacity, for every T (T = 0 is the plain
//! work bound). It matters when a serial head (the bootstrap chain, with
//! one slot of six busy for half an hour) precedes the bulk of the work.

use super::cluster::Machine;
use super::workload::{Sys, Workload};

pub struct Bound {
    pub critical_path: f64,
    pub work: Vec<(Sys, f64)>,
    /// Per system: the best T + work(r >= T) / capacity, and that T.
    pub release: Vec<(Sys, f64, f64)>,
}

impl Bound {
    /// The bound: max(critical path, work / capacity).
    pub fn simple(&self) -> f64 {
        self.work
            .iter()
            .map(|w| w.1)
            .fold(self.critical_path, f64::max)
    }

    /// The tightest: the simple one and the release-time terms.
    pub fn value(&self) -> f64 {
        self.release
            .iter()
            .map(|r| r.1)
            .fold(self.simple(), f64::max)
    }
}

/// max over T of T + work(r >= T) / cap, over one system's nodes.
fn release_term(w: &Workload, m: &[Machine], release: &[f64], sys: Sys) -> (f64, f64) {
    let mut nodes: Vec<(f64, f64)> = (0..w.drvs.len())
        .filter(|&i| w.drvs[i].sys == sys)
        .map(|i| (release[i], w.drvs[i].work))
        .collect();
    nodes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let cap = capacity(m, sys);
    let mut after: f64 = nodes.iter().map(|n| n.1).sum();
    let mut best = (0.0, 0.0);
    for (r, work) in nodes {
        if r + after / cap > best.0 {
            best = (r + after / cap, r);
        }
        after -= work;
    }
    best
}

fn capacity(m: &[Machine], sys: Sys) -> f64 {
    m.iter()
        .filter(|m| m.sys == sys)
        .map(|m| f64::from(m.max_jobs) * m.speed)
        .sum()
}

fn fastest(m: &[Machine], sys: Sys) -> f64 {
    m.iter()
        .filter(|m| m.sys == sys)
        .map(|m| m.speed)
        .fold(0.0, f64::max)
}

/// Longest chain of build times ending at each node (ids are topological).
pub fn longest_to(w: &Workload, m: &[Machine]) -> Vec<f64> {
    let mut upto = vec![0.0f64; w.drvs.len()];
    for (i, d) in w.drvs.iter().enumerate() {
        let before = d.deps.iter().map(|&j| upto[j]).fold(0.0, f64::max);
        upto[i] = before + d.work / fastest(m, d.sys);
    }
    upto
}

/// Earliest start of each node: the longest chain of inputs before it.
pub fn earliest_start(w: &Workload, m: &[Machine]) -> Vec<f64> {
    let upto = longest_to(w, m);
    (0..w.drvs.len())
        .map(|i| upto[i] - w.drvs[i].work / fastest(m, w.drvs[i].sys))
        .collect()
}

/// Longest chain of build times starting at each node (its "bottom level").
pub fn longest_from(w: &Workload, m: &[Machine]) -> Vec<f64> {
    let mut from = vec![0.0f64; w.drvs.len()];
    for i in (0..w.drvs.len()).rev() {
        let after = w.dependents[i].iter().map(|&j| from[j]).fold(0.0, f64::max);
        from[i] = after + w.drvs[i].work / fastest(m, w.drvs[i].sys);
    }
    from
}

pub fn lower_bound(w: &Workload, m: &[Machine]) -> Bound {
    let upto = longest_to(w, m);
    let critical_path = upto.iter().copied().fold(0.0, f64::max);
    let earliest = earliest_start(w, m);
    let mut work = Vec::new();
    let mut release = Vec::new();
    for sys in [Sys::X86, Sys::Arm] {
        if w.count(sys) > 0 {
            work.push((sys, w.work_by_sys(sys) / capacity(m, sys)));
            let (value, t) = release_term(w, m, &earliest, sys);
            release.push((sys, value, t));
        }
    }
    Bound {
        critical_path,
        work,
        release,
    }
}
