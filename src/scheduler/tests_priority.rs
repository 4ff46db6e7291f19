//! Longest expected build first within a client; clients still round-robin.

use std::time::Duration;

use super::tests::{backend, now, queued};
use super::*;

fn named(client: &str, name: &str, features: &[&str]) -> JobSpec {
    JobSpec {
        client: client.into(),
        name: name.into(),
        system: "x".into(),
        required_features: features.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    }
}

/// One slot on "x"; `llvm` learned at 2 h, `hello` at 10 s.
fn one_slot() -> Arc<Scheduler> {
    let mut a = backend("a", &["x"], 1);
    a.supported_features = vec!["big-parallel".into()];
    let s = Scheduler::new(vec![a], 100);
    s.history()
        .record("llvm-16.0.6", "x", Duration::from_secs(7200), 1.0);
    s.history()
        .record("hello-2.12", "x", Duration::from_secs(10), 1.0);
    s
}

/// Frees the running slot, then each granted one in turn; returns the
/// labels in the order the waiting jobs got the slot.
fn serve_all(running: Slot, mut waiting: Vec<(&str, oneshot::Receiver<Grant>)>) -> Vec<String> {
    let mut order = Vec::new();
    let mut current = running;
    while !waiting.is_empty() {
        drop(current);
        let granted = (waiting.iter_mut().enumerate())
            .find_map(|(i, (_, rx))| rx.try_recv().ok().map(|g| (i, g)));
        let (i, grant) = granted.expect("a freed slot goes to a waiting job");
        current = grant.expect("a slot");
        order.push(waiting.remove(i).0.to_string());
    }
    order
}

#[tokio::test]
async fn a_long_build_queued_behind_short_ones_goes_first() {
    let s = one_slot();
    let running = now(s.try_acquire(named("c", "hello-2.12", &[])).unwrap());
    let (p1, short1) = queued(s.try_acquire(named("c", "hello-2.12", &[])).unwrap());
    let (p2, short2) = queued(s.try_acquire(named("c", "hello-2.13", &[])).unwrap());
    let (p3, long) = queued(s.try_acquire(named("c", "llvm-17.0.1", &[])).unwrap());
    assert_eq!(
        (p1, p2, p3),
        (1, 2, 1),
        "llvm is next, whatever its version"
    );
    let order = serve_all(
        running,
        vec![("short1", short1), ("short2", short2), ("llvm", long)],
    );
    assert_eq!(
        order,
        ["llvm", "short1", "short2"],
        "equal ones keep arrival order"
    );
}

#[tokio::test]
async fn unknown_big_parallel_jobs_go_before_unknown_ordinary_ones_but_after_known_longer_ones() {
    let s = one_slot();
    let running = now(s.try_acquire(named("c", "x-1", &[])).unwrap());
    let (_, plain) = queued(s.try_acquire(named("c", "unknown-1", &[])).unwrap());
    let (_, big) = queued(
        s.try_acquire(named("c", "chromium-1", &["big-parallel"]))
            .unwrap(),
    );
    let (_, llvm) = queued(
        s.try_acquire(named("c", "llvm-16", &["big-parallel"]))
            .unwrap(),
    );
    let (_, hello) = queued(s.try_acquire(named("c", "hello-2", &[])).unwrap());
    let order = serve_all(
        running,
        vec![
            ("plain", plain),
            ("chromium", big),
            ("llvm", llvm),
            ("hello", hello),
        ],
    );
    assert_eq!(order, ["llvm", "chromium", "plain", "hello"]);
}

#[tokio::test]
async fn clients_still_take_turns_when_one_has_only_long_builds() {
    let s = one_slot();
    let running = now(s.try_acquire(named("a", "hello-1", &[])).unwrap());
    let (_, a1) = queued(s.try_acquire(named("a", "llvm-1", &[])).unwrap());
    let (_, a2) = queued(s.try_acquire(named("a", "llvm-2", &[])).unwrap());
    let (_, a3) = queued(s.try_acquire(named("a", "llvm-3", &[])).unwrap());
    let (pb, b) = queued(s.try_acquire(named("b", "hello-1", &[])).unwrap());
    assert_eq!(pb, 2, "one turn of a's, then b's");
    let order = serve_all(running, vec![("a1", a1), ("a2", a2), ("a3", a3), ("b", b)]);
    assert_eq!(order, ["a1", "b", "a2", "a3"]);
}

#[tokio::test]
async fn the_position_told_is_the_turn_the_job_gets_if_nothing_else_arrives() {
    let s = one_slot();
    let running = now(s.try_acquire(named("a", "hello-1", &[])).unwrap());
    let mut waiting = Vec::new();
    for (client, name) in [
        ("a", "hello-1"),
        ("a", "hello-2"),
        ("a", "hello-3"),
        ("a", "llvm-1"),
        ("b", "hello-1"),
        ("c", "llvm-1"),
        ("c", "hello-1"),
        ("c", "hello-2"),
    ] {
        waiting.push((
            name,
            queued(s.try_acquire(named(client, name, &[])).unwrap()).1,
        ));
    }
    let (position, last) = queued(s.try_acquire(named("b", "hello-9", &[])).unwrap());
    waiting.push(("last", last));
    let order = serve_all(running, waiting);
    let turn = order.iter().position(|l| l == "last").unwrap() + 1;
    assert_eq!(position, turn, "served in the order {order:?}");
    assert_eq!(position, 5, "a, b, c, a, then b's second");
}
