//! Scheduler decision time with a deep queue (issue 5: p99 < 1 ms with
//! 10,000 queued jobs), placement by locality included.
//!
//!   cargo run --release --example sched_bench [QUEUED] [BACKENDS] [INPUTS]
//!
//! BACKENDS backends (2 slots each, two systems) all busy; QUEUED jobs from
//! 8 clients wait, each with an input summary of INPUTS paths (32, the
//! summary's maximum; some of them known on each backend). Measured: every enqueue (a `pick` over all
//! backends), then every slot release (a dispatch that hands the slot to
//! the next waiter, which runs `pick` for each system's queue head).
//! Prints p50/p99/max for both and one goal line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix_relay::config::{Backend, BackendUri};
use nix_relay::scheduler::locality::InputSummary;
use nix_relay::scheduler::{Acquired, JobSpec, Scheduler, Slot};
use nix_relay::wire::store_path::StorePath;

const SYSTEMS: [&str; 2] = ["x86_64-linux", "aarch64-linux"];

fn backend(i: usize) -> Backend {
    Backend {
        name: format!("b{i:02}"),
        uri: BackendUri::Local,
        ssh_key: None,
        host_key: None,
        systems: vec![SYSTEMS[i % 2].to_owned()],
        max_jobs: 2,
        speed_factor: 1.0 + (i % 3) as f64 * 0.5,
        supported_features: Vec::new(),
        mandatory_features: Vec::new(),
        connect_timeout: Duration::from_secs(10),
        store: None,
        untrusted_clients: false,
    }
}

fn path(i: usize) -> StorePath {
    StorePath::parse(&format!("/nix/store/{i:032}-input")).expect("a valid store path")
}

fn job(n: usize, paths: usize) -> JobSpec {
    let inputs = (0..paths).map(|k| (path(n % 500 * 32 + k), 1_000_000 + k as u64));
    JobSpec {
        client: format!("client{}", n % 8),
        name: format!("pkg{}-1.0", n % 500),
        system: SYSTEMS[n % 2].to_owned(),
        required_features: Vec::new(),
        inputs: Arc::new(InputSummary::new(inputs)),
        untrusted: false,
    }
}

fn percentiles(name: &str, mut d: Vec<Duration>) -> Duration {
    d.sort();
    let at = |q: f64| d[((d.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<28} n={:<6} p50 {:>8.1} µs  p99 {:>8.1} µs  max {:>8.1} µs",
        d.len(),
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        d[d.len() - 1].as_secs_f64() * 1e6
    );
    at(0.99)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let queued = args.first().copied().unwrap_or(10_000);
    let nb = args.get(1).copied().unwrap_or(16);
    // 0: no locality at all (the baseline the summary's cost adds to).
    let paths = args.get(2).copied().unwrap_or(32);
    let sched = Scheduler::new((0..nb).map(backend).collect(), queued as u64 + 1);
    for i in 0..nb {
        let name = format!("b{i:02}");
        let known: Vec<StorePath> = (0..8_000).map(|k| path(k * (i + 1) % 16_000)).collect();
        sched.locality().confirm(&name, &known);
    }
    // Fill every slot.
    let mut running: Vec<Slot> = Vec::new();
    for n in 0..nb * 2 {
        match sched.try_acquire(job(n, paths)) {
            Ok(Acquired::Now(s)) => running.push(s),
            _ => panic!("expected a free slot for job {n}"),
        }
    }
    let mut waiters = Vec::with_capacity(queued);
    let mut enqueue = Vec::with_capacity(queued);
    for n in 0..queued {
        let j = job(n, paths);
        let t = Instant::now();
        let r = sched.try_acquire(j);
        enqueue.push(t.elapsed());
        match r {
            Ok(Acquired::Queued { rx, .. }) => waiters.push(rx),
            _ => panic!("job {n} should have queued"),
        }
    }
    // Release slots one by one; each release dispatches to a waiter, whose
    // slot is released in turn, until the queue is drained.
    let mut release = Vec::with_capacity(queued);
    let mut waiters = waiters;
    while let Some(slot) = running.pop() {
        let t = Instant::now();
        drop(slot);
        release.push(t.elapsed());
        waiters.retain_mut(|rx| match rx.try_recv() {
            Ok(Ok(s)) => {
                running.push(s);
                false
            }
            Ok(Err(e)) => panic!("a queued job failed: {e}"),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => true,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => false,
        });
    }
    assert!(waiters.is_empty(), "every queued job got a slot");
    println!(
        "{queued} jobs queued behind {nb} busy backends ({} slots)",
        nb * 2
    );
    let p_enq = percentiles("enqueue (pick)", enqueue);
    let p_rel = percentiles("release (dispatch + pick)", release);
    let p99 = p_enq.max(p_rel);
    println!(
        "scheduler decision p99: {:.1} µs with {queued} queued (goal < 1000 µs): {}",
        p99.as_secs_f64() * 1e6,
        if p99 < Duration::from_millis(1) {
            "met"
        } else {
            "MISSED"
        }
    );
}
