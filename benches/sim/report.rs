//! The printed table and goal lines.

use super::bound::{earliest_start, longest_to};
use super::cluster::Machine;
use super::latency::{Latency, percentiles};
use super::runs::{RELAY, Row, Runs, STOCK};
use super::workload::{Sys, Workload};
use crate::Args;

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

const RATIO_GOAL: f64 = 1.10;
const LATENCY_GOAL_MS: f64 = 1.0;

pub fn print(a: &Args, m: &[Machine], r: &Runs, sweep: &[Runs], lat: &Latency) {
    let (w, b) = (&r.w, &r.bound);
    println!(
        "scheduler_sim: seed {}, {} derivations ({} aarch64-linux, {} x86_64-linux); clients opi01-03 each rebuild it (relay: maxJobs {} each)",
        a.seed,
        w.drvs.len(),
        w.count(Sys::Arm),
        w.count(Sys::X86),
        a.client_jobs
    );
    let machines: Vec<String> = m
        .iter()
        .map(|m| {
            format!(
                "{} ({}, {} x speed {})",
                m.name,
                m.sys.nix(),
                m.max_jobs,
                m.speed
            )
        })
        .collect();
    println!("machines: {}", machines.join(", "));
    let terms: Vec<String> = b
        .work
        .iter()
        .map(|(s, t)| format!("{} work {t:.0}", s.nix()))
        .collect();
    let rel: Vec<String> = b
        .release
        .iter()
        .map(|(s, v, t)| format!("{} {v:.0} (T = {t:.0})", s.nix()))
        .collect();
    println!(
        "lower bound: {:.0} s; simple: {:.0} s = max(critical path {:.0}, {}); release-time: {}",
        b.value(),
        b.simple(),
        b.critical_path,
        terms.join(", "),
        rel.join(", ")
    );
    println!();
    let head = "slot use per machine";
    println!(
        "  {:<36} {:>10} {:>7} {:>7} {:>7}   {head}",
        "policy", "makespan", "builds", "/bound", "/simple"
    );
    for row in &r.rows {
        print_row(m, b.value(), b.simple(), row);
    }
    let huge: Vec<String> = r
        .stock_huge
        .iter()
        .map(|(name, n)| format!("{name} {n}x"))
        .collect();
    println!(
        "  huge derivations: the relay built each once; the stock hooks built {}",
        huge.join(", ")
    );
    if a.trace {
        for row in r.rows.iter().filter(|r| r.trace.is_some()) {
            trace(w, m, row);
        }
    }
    println!();
    if !sweep.is_empty() {
        print_sweep(r, sweep);
    }
    let ms = |s: f64| s * 1e3;
    let mut p99 = 0.0f64;
    for (name, smp) in [
        ("enqueue", &lat.enqueue),
        ("release->dispatch", &lat.dispatch),
    ] {
        let (c50, c99, cmax) = percentiles(&smp.clean());
        let (_, a99, amax) = percentiles(&smp.all());
        p99 = p99.max(c99);
        println!(
            "decision latency, {} queued, {name} (ms): p50 {:.4} p99 {:.4} max {:.3} \
             [{} of {} samples preempted by the OS, left out; with them p99 {:.4} max {:.3}]",
            a.queued,
            ms(c50),
            ms(c99),
            ms(cmax),
            smp.preempted(),
            smp.0.len(),
            ms(a99),
            ms(amax)
        );
    }
    println!();
    let relay = &r.rows[RELAY];
    let ratio = relay.makespan / b.value();
    let vs = relay.makespan / r.rows[STOCK].makespan;
    let p99 = ms(p99);
    println!(
        "relay makespan / lower bound: {ratio:.3} (goal <= {RATIO_GOAL:.2}) {} [simple bound: {:.3}]",
        verdict(ratio <= RATIO_GOAL),
        relay.makespan / b.simple()
    );
    let all = || std::iter::once(r).chain(sweep);
    let n = sweep.len() + 1;
    if n > 1 {
        let worst = all()
            .map(|x| x.rows[RELAY].makespan / x.bound.value())
            .fold(0.0, f64::max);
        println!(
            "relay makespan / lower bound, worst of {n} seeds: {worst:.3} (goal <= {RATIO_GOAL:.2}) {}",
            verdict(worst <= RATIO_GOAL)
        );
    }
    println!(
        "relay / stock-hook makespan: {vs:.3} (goal < 1, the relay strictly better) {}",
        verdict(vs < 1.0)
    );
    if n > 1 {
        let worst = all()
            .map(|x| x.rows[RELAY].makespan / x.rows[STOCK].makespan)
            .fold(0.0, f64::max);
        println!(
            "relay / stock-hook makespan, worst of {n} seeds: {worst:.3} (goal < 1) {}",
            verdict(worst < 1.0)
        );
    }
    println!(
        "decision latency p99: {p99:.4} ms (goal < {LATENCY_GOAL_MS} ms) {}",
        verdict(p99 < LATENCY_GOAL_MS)
    );
}

fn print_row(m: &[Machine], lb: f64, simple: f64, row: &Row) {
    let util: Vec<String> = m
        .iter()
        .zip(&row.busy)
        .map(|(m, b)| {
            let used = b / (row.makespan * f64::from(m.max_jobs));
            format!("{} {:.0}%", m.name, 100.0 * used)
        })
        .collect();
    println!(
        "  {:<36} {:>8.0} s {:>7} {:>7.3} {:>7.3}   {}",
        row.name,
        row.makespan,
        row.builds,
        row.makespan / lb,
        row.makespan / simple,
        util.join(" ")
    );
}

/// Mean and worst makespan / bound per policy over every seed run.
fn print_sweep(r: &Runs, sweep: &[Runs]) {
    let all: Vec<&Runs> = std::iter::once(r).chain(sweep).collect();
    println!(
        "over {} seeds ({}..{}), makespan / lower bound: mean, worst; relay / stock: mean, worst",
        all.len(),
        all[0].seed,
        all[all.len() - 1].seed
    );
    for (i, row) in r.rows.iter().enumerate() {
        let ratios: Vec<f64> = all
            .iter()
            .map(|x| x.rows[i].makespan / x.bound.value())
            .collect();
        let vs: Vec<f64> = all
            .iter()
            .map(|x| x.rows[i].makespan / x.rows[STOCK].makespan)
            .collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        println!(
            "  {:<36} {:>7.3} {:>7.3}   {:>7.3} {:>7.3}",
            row.name,
            mean(&ratios),
            worst(&ratios),
            mean(&vs),
            worst(&vs)
        );
    }
    println!();
}

/// The nodes on the critical path, and when the relay got and started them.
fn trace(w: &Workload, m: &[Machine], row: &Row) {
    let Some(o) = &row.trace else { return };
    let upto = longest_to(w, m);
    let earliest = earliest_start(w, m);
    let mut d = (0..w.drvs.len())
        .max_by(|&a, &b| upto[a].total_cmp(&upto[b]))
        .expect("a node");
    println!("{}: the critical path, last first (s)", row.name);
    println!(
        "    {:<34} {:>8} {:>8} {:>8}",
        "derivation", "earliest", "at relay", "started"
    );
    loop {
        let drv = &w.drvs[d];
        println!(
            "    {:<34} {:>8.0} {:>8.0} {:>8.0}",
            drv.name, earliest[d], o.submitted[d], o.started[d]
        );
        let Some(&prev) = drv
            .deps
            .iter()
            .max_by(|&&a, &&b| upto[a].total_cmp(&upto[b]))
        else {
            break;
        };
        d = prev;
    }
}
