//! Scheduling simulator: the relay's shipped scheduler against three stock
//! Nix build hooks, in virtual time, on a synthetic NixOS-like closure; and
//! the scheduler's decision latency with a deep queue. See benches/README.md.
//!
//!   cargo bench --bench scheduler_sim [-- --seed N --drvs N --quick]

mod sim;

use std::time::{Duration, Instant};

use sim::cluster::{Costs, FRESH_CONNECT, homelab};
use sim::workload::{Sys, generate};

struct Args {
    seed: u64,
    drvs: usize,
    x86_share: f64,
    queued: usize,
    samples: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "scheduler_sim: {msg}\nusage: scheduler_sim [--seed N] [--drvs N] [--x86-share F] [--queued N] [--samples N] [--quick]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        seed: 1,
        drvs: 2000,
        x86_share: 0.25,
        queued: 10_000,
        samples: 20_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{k} needs a value")))
        };
        match k.as_str() {
            "--seed" => a.seed = val().parse().unwrap_or_else(|_| usage("bad --seed")),
            "--drvs" => a.drvs = val().parse().unwrap_or_else(|_| usage("bad --drvs")),
            "--x86-share" => {
                a.x86_share = val().parse().unwrap_or_else(|_| usage("bad --x86-share"))
            }
            "--queued" => a.queued = val().parse().unwrap_or_else(|_| usage("bad --queued")),
            "--samples" => a.samples = val().parse().unwrap_or_else(|_| usage("bad --samples")),
            "--quick" => a.samples = 2_000,
            // cargo bench passes --bench; cargo test passes nothing.
            "--bench" => {}
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if a.samples == 0 || a.queued == 0 {
        usage("--samples and --queued must be positive");
    }
    a
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn main() {
    let a = parse();
    let wall = Instant::now();
    let m = homelab();
    let w = generate(a.seed, a.drvs, a.x86_share);
    let b = sim::bound::lower_bound(&w, &m);
    let lb = b.value();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    let costs = Costs::default();
    let pooled = rt.block_on(sim::relay::run(&w, &m, costs));
    let fresh = rt.block_on(sim::relay::run(
        &w,
        &m,
        Costs {
            relay_backend_connect: FRESH_CONNECT,
            ..costs
        },
    ));
    let stock = sim::stock::run(&w, &m, costs);
    let lat = sim::latency::measure(&m, a.queued, a.samples);

    println!(
        "scheduler_sim: seed {}, {} derivations ({} aarch64-linux, {} x86_64-linux), 3 clients (opi01-03) rebuilding the same closure",
        a.seed,
        w.drvs.len(),
        w.count(Sys::Arm),
        w.count(Sys::X86)
    );
    let machines: Vec<String> = m
        .iter()
        .map(|m| format!("{} ({}, {} x {})", m.name, m.sys.nix(), m.max_jobs, m.speed))
        .collect();
    println!("machines: {}", machines.join(", "));
    let terms: Vec<String> = b
        .work
        .iter()
        .map(|(s, t)| format!("{} work {:.0} s", s.nix(), t))
        .collect();
    println!(
        "lower bound: {:.0} s = max(critical path {:.0} s, {})",
        lb,
        b.critical_path,
        terms.join(", ")
    );
    println!();
    println!(
        "  {:<36} {:>10} {:>7} {:>8}   {}",
        "policy", "makespan", "builds", "/bound", "slot use per machine"
    );
    let row = |name: &str, ms: f64, builds: usize, busy: &[f64]| {
        let util: Vec<String> = m
            .iter()
            .zip(busy)
            .map(|(m, b)| {
                format!(
                    "{} {:.0}%",
                    m.name,
                    100.0 * b / (ms * f64::from(m.max_jobs))
                )
            })
            .collect();
        println!(
            "  {:<36} {:>8.0} s {:>7} {:>8.3}   {}",
            name,
            ms,
            builds,
            ms / lb,
            util.join(" ")
        );
    };
    row(
        "relay, pooled backend sessions",
        pooled.makespan,
        pooled.builds,
        &pooled.busy,
    );
    row(
        "relay, a connection per build",
        fresh.makespan,
        fresh.builds,
        &fresh.busy,
    );
    row(
        "stock hook, 3 clients",
        stock.makespan,
        stock.builds,
        &stock.busy,
    );
    println!();
    let (e50, e99, emax) = sim::latency::percentiles(&lat.enqueue);
    let (d50, d99, dmax) = sim::latency::percentiles(&lat.dispatch);
    let ms = |s: f64| s * 1e3;
    println!(
        "decision latency, {} queued, {} samples (ms): enqueue p50 {:.4} p99 {:.4} max {:.3}; release->dispatch p50 {:.4} p99 {:.4} max {:.3}",
        a.queued,
        a.samples,
        ms(e50),
        ms(e99),
        ms(emax),
        ms(d50),
        ms(d99),
        ms(dmax)
    );
    println!();
    let ratio = pooled.makespan / lb;
    let vs = pooled.makespan / stock.makespan;
    let p99 = e99.max(d99);
    println!(
        "relay makespan / lower bound: {ratio:.3} (goal <= 1.10) {}",
        verdict(ratio <= 1.10)
    );
    println!(
        "relay / stock-hook makespan: {vs:.3} (goal < 1: the relay strictly better) {}",
        verdict(vs < 1.0)
    );
    println!(
        "decision latency p99: {:.4} ms (goal < 1 ms) {}",
        ms(p99),
        verdict(p99 < Duration::from_millis(1).as_secs_f64())
    );
    eprintln!("scheduler_sim: {:.1} s wall", wall.elapsed().as_secs_f64());
}
