//! Scheduling simulator: the relay's shipped scheduler against three stock
//! Nix build hooks, in virtual time, on a synthetic NixOS-like closure; and
//! the scheduler's decision latency with a deep queue. Print-only; see
//! benches/README.md.
//!
//!   cargo bench --bench scheduler_sim [-- --seed N --drvs N --quick]

mod sim;

use std::time::Instant;

use sim::cluster::{Costs, homelab};

pub struct Args {
    pub seed: u64,
    pub drvs: usize,
    pub x86_share: f64,
    pub queued: usize,
    pub samples: usize,
    pub seeds: u64,
    pub trace: bool,
    /// 0: what `nix-relay machines-entry` advertises (the sum of the
    /// backends' max_jobs).
    pub client_jobs: u32,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "scheduler_sim: {msg}\nusage: scheduler_sim [--seed N] [--drvs N] [--seeds K] [--x86-share F] \
         [--client-jobs N] [--queued N] [--samples N] [--quick] [--trace]"
    );
    std::process::exit(2)
}

fn num<T: std::str::FromStr>(k: &str, v: Option<String>) -> T {
    v.and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage(&format!("{k} needs a number")))
}

fn parse() -> Args {
    let mut a = Args {
        seed: 1,
        drvs: 2000,
        x86_share: 0.25,
        queued: 10_000,
        samples: 20_000,
        seeds: 10,
        trace: false,
        client_jobs: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--seed" => a.seed = num(&k, it.next()),
            "--drvs" => a.drvs = num(&k, it.next()),
            "--seeds" => a.seeds = num(&k, it.next()),
            "--x86-share" => a.x86_share = num(&k, it.next()),
            "--client-jobs" => a.client_jobs = num(&k, it.next()),
            "--queued" => a.queued = num(&k, it.next()),
            "--samples" => a.samples = num(&k, it.next()),
            "--quick" => {
                a.samples = 2_000;
                a.seeds = 3;
            }
            "--trace" => a.trace = true,
            // cargo bench passes --bench; cargo test passes nothing.
            "--bench" => {}
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if a.samples == 0 || a.queued == 0 || a.drvs < 100 {
        usage("--samples and --queued must be positive, --drvs at least 100");
    }
    a
}

fn main() {
    let mut a = parse();
    let wall = Instant::now();
    let m = homelab();
    if a.client_jobs == 0 {
        a.client_jobs = m.iter().map(|m| m.max_jobs).sum();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    let costs = Costs {
        relay_client_max_jobs: a.client_jobs,
        ..Costs::default()
    };
    let main_run = sim::runs::run(&rt, &m, costs, a.seed, a.drvs, a.x86_share);
    let sweep: Vec<sim::runs::Runs> = (1..a.seeds)
        .map(|k| sim::runs::run(&rt, &m, costs, a.seed + k, a.drvs, a.x86_share))
        .collect();
    let lat = sim::latency::measure(&m, a.queued, a.samples);
    sim::report::print(&a, &m, &main_run, &sweep, &lat);
    eprintln!("scheduler_sim: {:.1} s wall", wall.elapsed().as_secs_f64());
}
