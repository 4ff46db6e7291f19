//! One seed's workload through every policy.

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
    /// The shipped relay (pooled), the relay connecting per build, the
    /// stock hooks, then the what-if orders.
    pub rows: Vec<Row>,
    /// The huge derivations (over 10 min): name, builds by the stock hooks.
    pub stock_huge: Vec<(String, u32)>,
}

pub const RELAY: usize = 0;
pub const STOCK: usize = 2;
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
    let mut rows = vec![
        relay_row(
            "relay, pooled backend sessions",
            rt.block_on(relay::run(&w, m, costs, Order::Shipped)),
        ),
        relay_row(
            "relay, a connection per build",
            rt.block_on(relay::run(&w, m, fresh, Order::Shipped)),
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
            rt.block_on(relay::run(&w, m, costs, o)),
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
