//! A lower bound on any schedule's makespan, from build times alone
//! (transfers, handshakes and queueing only add to a real schedule):
//!
//! * the critical path, every node on the fastest machine of its system;
//! * per system, its total work / the speed-weighted slots serving it
//!   (sum of max_jobs x speed). (All systems together is never tighter
//!   here: the mediant of the per-system ratios.)

use super::cluster::Machine;
use super::workload::{Sys, Workload};

pub struct Bound {
    pub critical_path: f64,
    pub work: Vec<(Sys, f64)>,
}

impl Bound {
    pub fn value(&self) -> f64 {
        self.work
            .iter()
            .map(|w| w.1)
            .fold(self.critical_path, f64::max)
    }
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

pub fn lower_bound(w: &Workload, m: &[Machine]) -> Bound {
    let critical_path = longest_to(w, m).into_iter().fold(0.0, f64::max);
    let mut work = Vec::new();
    for sys in [Sys::X86, Sys::Arm] {
        if w.count(sys) > 0 {
            work.push((sys, w.work_by_sys(sys) / capacity(m, sys)));
        }
    }
    Bound {
        critical_path,
        work,
    }
}
