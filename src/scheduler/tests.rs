use std::time::Duration;

use super::*;
use crate::config::BackendUri;

pub(super) fn backend(name: &str, systems: &[&str], max_jobs: u32) -> Backend {
    Backend {
        name: name.into(),
        uri: BackendUri::Local,
        ssh_key: None,
        host_key: None,
        systems: systems.iter().map(|s| s.to_string()).collect(),
        max_jobs,
        speed_factor: 1.0,
        supported_features: vec![],
        mandatory_features: vec![],
        connect_timeout: Duration::from_secs(5),
        store: None,
        untrusted_clients: false,
    }
}

pub(super) fn job(system: &str) -> JobSpec {
    job_for("", system)
}

pub(super) fn job_for(client: &str, system: &str) -> JobSpec {
    JobSpec {
        client: client.into(),
        system: system.into(),
        required_features: vec![],
        ..Default::default()
    }
}

pub(super) fn now(a: Acquired) -> Slot {
    match a {
        Acquired::Now(s) => s,
        Acquired::Queued { .. } => panic!("expected a slot now"),
    }
}

pub(super) fn queued(a: Acquired) -> (usize, oneshot::Receiver<Grant>) {
    match a {
        Acquired::Queued { position, rx } => (position, rx),
        Acquired::Now(_) => panic!("expected to wait"),
    }
}

#[tokio::test]
async fn waiting_jobs_get_freed_slots_in_arrival_order() {
    let s = Scheduler::new(vec![backend("a", &["x"], 1)], 10);
    let first = now(s.try_acquire(job("x")).unwrap());
    let (p1, mut rx1) = queued(s.try_acquire(job("x")).unwrap());
    let (p2, mut rx2) = queued(s.try_acquire(job("x")).unwrap());
    assert_eq!((p1, p2), (1, 2));
    drop(first);
    let second = rx1.try_recv().expect("oldest waiter gets the slot");
    assert!(rx2.try_recv().is_err());
    drop(second);
    assert_eq!(rx2.try_recv().unwrap().unwrap().backend().name, "a");
}

#[tokio::test]
async fn a_waiter_that_gave_up_does_not_leak_its_slot() {
    let s = Scheduler::new(vec![backend("a", &["x"], 1)], 10);
    let first = now(s.try_acquire(job("x")).unwrap());
    let (_, rx1) = queued(s.try_acquire(job("x")).unwrap());
    let (_, mut rx2) = queued(s.try_acquire(job("x")).unwrap());
    drop(rx1);
    drop(first);
    assert!(
        rx2.try_recv().is_ok(),
        "slot passed on past the departed waiter"
    );
}

#[tokio::test]
async fn other_systems_are_not_blocked_by_a_full_queue() {
    let s = Scheduler::new(vec![backend("a", &["x"], 1), backend("b", &["y"], 1)], 10);
    let _x = now(s.try_acquire(job("x")).unwrap());
    let _wait = queued(s.try_acquire(job("x")).unwrap());
    assert_eq!(now(s.try_acquire(job("y")).unwrap()).backend().name, "b");
}

#[tokio::test]
async fn jobs_nobody_can_build_fail_at_once_with_a_reason() {
    let s = Scheduler::new(vec![backend("a", &["x86_64-linux"], 1)], 10);
    let Err(err) = s.try_acquire(job("aarch64-linux")) else {
        panic!("expected an error")
    };
    let msg = err.to_string();
    assert!(
        msg.contains("aarch64-linux") && msg.contains("a (systems x86_64-linux"),
        "{msg}"
    );
}

#[tokio::test]
async fn the_waiting_queue_is_bounded() {
    let s = Scheduler::new(vec![backend("a", &["x"], 1)], 1);
    let _a = now(s.try_acquire(job("x")).unwrap());
    let _w = queued(s.try_acquire(job("x")).unwrap());
    assert!(matches!(s.try_acquire(job("x")), Err(Error::QueueFull(1))));
}

#[tokio::test]
async fn a_failed_backend_is_avoided_while_it_backs_off() {
    let s = Scheduler::new(vec![backend("a", &["x"], 1), backend("b", &["x"], 1)], 10);
    s.report_connect("a", false);
    assert_eq!(s.snapshot().backends[0].state, "down");
    let slot = now(s.try_acquire(job("x")).unwrap());
    assert_eq!(slot.backend().name, "b", "the down backend is skipped");
    let (_, mut rx) = queued(s.try_acquire(job("x")).unwrap());
    s.tick();
    assert!(
        rx.try_recv().is_err(),
        "still backing off: the job waits rather than using it"
    );
    s.report_connect("a", true);
    s.tick();
    assert_eq!(
        rx.try_recv().unwrap().unwrap().backend().name,
        "a",
        "back up: the waiting job gets it"
    );
}

#[tokio::test]
async fn clients_are_served_round_robin_not_first_come() {
    let s = Scheduler::new(vec![backend("a", &["x"], 1)], 100);
    let running = now(s.try_acquire(job_for("big", "x")).unwrap());
    let mut big = Vec::new();
    for _ in 0..5 {
        big.push(queued(s.try_acquire(job_for("big", "x")).unwrap()).1);
    }
    let (position, mut small) = queued(s.try_acquire(job_for("small", "x")).unwrap());
    assert_eq!(
        position, 2,
        "the single build waits for one turn, not for five"
    );
    drop(running);
    let first = big[0].try_recv().expect("big's oldest job goes first");
    assert!(small.try_recv().is_err());
    drop(first);
    let second = small.try_recv().expect("then it is small's turn");
    assert!(big[1].try_recv().is_err());
    drop(second);
    assert!(big[1].try_recv().is_ok(), "then big again");
}

#[tokio::test]
async fn the_waiting_message_says_what_is_running_where() {
    let s = Scheduler::new(
        vec![
            backend("opi01", &["aarch64-linux"], 1),
            backend("opi02", &["aarch64-linux"], 1),
        ],
        10,
    );
    let _a = now(s.try_acquire(job("aarch64-linux")).unwrap());
    let _b = now(s.try_acquire(job("aarch64-linux")).unwrap());
    assert_eq!(
        s.running_summary("aarch64-linux"),
        "2 running on opi01, opi02"
    );
    assert_eq!(s.running_summary("x86_64-linux"), "0 running on none");
}
