//! One seed's workload through every policy.

use std::sync::Arc;

use nix_relay::scheduler::history::History;

use super::bound::{Bound, lower_bound};
use super::cluster::{Costs, FRESH_CONNECT, Machine};
use super::relay::{self, Order};
use super::stock;
use super::workload::{Workload, generate};

/// One policy's result.
pub struct Row {
    pub name: String,
    pub makespan: f64,
    pub builds: usize,
    pub busy: Vec<f64>,
    /// Relay runs only: per derivation, when the relay got it / started it.
    pub trace: Option<relay::Outcome>,
}

pub struct Runs {
    pub seed: u64,
    pub w: Workload,
    pub bound: Bound,
    /// The shipped relay (pooled) with a warm build history, with a cold
    /// one, the relay connecting per build (warm), the stock hooks, then
    /// the what-if orders.
    pub rows: Vec<Row>,
    /// The huge derivations (over 10 min): name, builds by the stock hooks.
    pub stock_huge: Vec<(String, u32)>,
}

pub const RELAY: usize = 0;
pub const STOCK: usize = 3;
pub const WHAT_IFS: [Order; 3] = [
    Order::BigParallelFirst,
    Order::LongestFirst,
    Order::CriticalPathFirst,
];

fn relay_row(name: &str, o: relay::Outcome) -> Row {
    Row {
        name: name.into(),
        makespan: o.makespan,
        builds: o.builds,
        busy: o.busy.clone(),
        trace: Some(o),
    }
}

/// The history a home lab's relay has when it rebuilds this closure: it
/// built the same closure once before (version 1 of every name; the
/// measured run is version 2, the key drops the version), from an empty
/// history.
fn warm(rt: &tokio::runtime::Runtime, w: &Workload, m: &[Machine], costs: Costs) -> Arc<History> {
    let h = Arc::new(History::in_memory());
    rt.block_on(relay::run(w, m, costs, Order::Shipped, h.clone(), 1));
    h
}

pub fn run(
    rt: &tokio::runtime::Runtime,
    m: &[Machine],
    costs: Costs,
    seed: u64,
    drvs: usize,
    x86_share: f64,
) -> Runs {
    let w = generate(seed, drvs, x86_share);
    let bound = lower_bound(&w, m);
    let fresh = Costs {
        relay_backend_connect: FRESH_CONNECT,
        ..costs
    };
    let shipped =
        |costs, history| rt.block_on(relay::run(&w, m, costs, Order::Shipped, history, 2));
    let mut rows = vec![
        relay_row(
            "relay, pooled, warm history",
            shipped(costs, warm(rt, &w, m, costs)),
        ),
        relay_row(
            "relay, pooled, cold history",
            shipped(costs, Default::default()),
        ),
        relay_row(
            "relay, per-build connection, warm",
            shipped(fresh, warm(rt, &w, m, fresh)),
        ),
    ];
    let s = stock::run(&w, m, costs);
    let stock_huge = (0..w.drvs.len())
        .filter(|&d| w.drvs[d].work >= 600.0 && w.drvs[d].name.contains("-linux-"))
        .filter(|&d| !w.drvs[d].name.contains("-lib-"))
        .map(|d| (w.drvs[d].name.clone(), s.built[d]))
        .collect();
    rows.push(Row {
        name: "stock hook, 3 clients".into(),
        makespan: s.makespan,
        builds: s.builds,
        busy: s.busy,
        trace: None,
    });
    for o in WHAT_IFS {
        rows.push(relay_row(
            &format!("what-if: relay, {o:?}"),
            rt.block_on(relay::run(&w, m, costs, o, Default::default(), 2)),
        ));
    }
    for r in &rows {
        // Below the bound means the sim or the bound is wrong.
        assert!(
            r.makespan >= bound.value() * (1.0 - 1e-9),
            "seed {seed}: {} finished in {:.0} s, under the lower bound {:.0} s",
            r.name,
            r.makespan,
            bound.value()
        );
    }
    Runs {
        seed,
        w,
        bound,
        rows,
        stock_huge,
    }
}
