//! The backend set changing under running builds: add, drain, change,
//! remove, elastic capacity, and what waits meanwhile.

use std::time::Duration;

use super::tests::{backend, job, job_for, now, queued};
use super::*;

fn got(rx: &mut oneshot::Receiver<Grant>) -> Slot {
    rx.try_recv().expect("a grant").expect("a slot")
}

fn admin_of(s: &Scheduler, name: &str) -> &'static str {
    let snap = s.snapshot();
    snap.backends
        .iter()
        .find(|b| b.name == name)
        .map_or("absent", |b| b.admin)
}

fn featured(name: &str, feature: &str) -> Backend {
    let mut b = backend(name, &["x"], 1);
    b.supported_features = vec![feature.into()];
    b
}

fn job_with(feature: &str) -> JobSpec {
    JobSpec {
        required_features: vec![feature.into()],
        ..job("x")
    }
}

fn spec(system: &str, feature: &str) -> ElasticSpec {
    ElasticSpec {
        name: "ec2".into(),
        systems: vec![system.into()],
        supported_features: vec![feature.into()],
        mandatory_features: vec![],
    }
}

#[tokio::test(start_paused = true)]
async fn a_draining_backend_finishes_its_build_and_takes_no_new_one() {
    let s = Scheduler::new(vec![backend("a", &["x"], 2), backend("b", &["x"], 2)], 10);
    let on_a = now(s.try_acquire(job("x")).unwrap());
    assert_eq!(on_a.backend().name, "a");
    assert!(s.drain("a", true));
    assert_eq!(admin_of(&s, "a"), "draining");
    for _ in 0..2 {
        let slot = now(s.try_acquire(job("x")).unwrap());
        assert_eq!(slot.backend().name, "b", "new work avoids the drained one");
        std::mem::forget(slot);
    }
    let (_, mut rx) = queued(s.try_acquire(job("x")).unwrap());
    drop(on_a);
    assert!(rx.try_recv().is_err(), "a's freed slot is not reused");
    assert!(s.drain("a", false));
    assert_eq!(got(&mut rx).backend().name, "a", "undrained: used again");
    assert!(!s.drain("nope", true), "unknown names are reported");
}

#[tokio::test(start_paused = true)]
async fn a_job_only_a_drained_backend_serves_waits_for_the_undrain() {
    let s = Scheduler::new(vec![featured("big", "kvm"), backend("b", &["x"], 1)], 10);
    s.drain("big", true);
    let (_, mut rx) = queued(s.try_acquire(job_with("kvm")).unwrap());
    let summary = s.waiting_summary();
    assert_eq!(summary.len(), 1);
    assert!(
        !summary[0].servable,
        "only a draining backend could serve it"
    );
    s.drain("big", false);
    assert_eq!(got(&mut rx).backend().name, "big");
}

#[tokio::test(start_paused = true)]
async fn a_removed_backend_keeps_its_running_build_and_is_forgotten_after() {
    let s = Scheduler::new(vec![backend("a", &["x"], 1), backend("b", &["x"], 1)], 10);
    let on_a = now(s.try_acquire(job("x")).unwrap());
    assert!(s.remove_backend("a"));
    assert_eq!(admin_of(&s, "a"), "removing");
    assert_eq!(on_a.backend().name, "a", "the build keeps its backend");
    let on_b = now(s.try_acquire(job("x")).unwrap());
    assert_eq!(on_b.backend().name, "b");
    let (_, mut rx) = queued(s.try_acquire(job("x")).unwrap());
    drop(on_a);
    assert_eq!(admin_of(&s, "a"), "absent", "forgotten once idle");
    assert!(rx.try_recv().is_err(), "its slot went with it");
    drop(on_b);
    assert_eq!(got(&mut rx).backend().name, "b");
    assert!(!s.remove_backend("a"));
}

#[tokio::test(start_paused = true)]
async fn reconcile_adds_removes_and_changes_without_touching_running_builds() {
    let s = Scheduler::new(
        vec![
            backend("h1", &["x"], 1),
            backend("h2", &["x"], 1),
            backend("h3", &["x"], 1),
        ],
        10,
    );
    let on_h1 = now(s.try_acquire(job("x")).unwrap());
    let on_h2 = now(s.try_acquire(job("x")).unwrap());
    assert_eq!(
        (on_h1.backend().name.as_str(), on_h2.backend().name.as_str()),
        ("h1", "h2")
    );
    let mut h1 = backend("h1", &["x"], 2);
    h1.speed_factor = 9.0;
    let sum = s.reconcile_backends(vec![h1, backend("h3", &["x"], 1), backend("h4", &["x"], 1)]);
    assert_eq!(sum.to_string(), "+h4 -h2 ~h1");
    assert_eq!(
        on_h1.backend().max_jobs,
        1,
        "the running build keeps its config"
    );
    let next = now(s.try_acquire(job("x")).unwrap());
    assert_eq!(
        (next.backend().name.as_str(), next.backend().max_jobs),
        ("h1", 2),
        "the changed config counts the running build against its new max"
    );
    let names: Vec<String> = s.backends().into_iter().map(|b| b.name).collect();
    assert_eq!(names, ["h1", "h3", "h4"], "config order, h2 being removed");
    assert_eq!(admin_of(&s, "h2"), "removing");
    let a = now(s.try_acquire(job("x")).unwrap());
    let b = now(s.try_acquire(job("x")).unwrap());
    let mut got_names = vec![a.backend().name.clone(), b.backend().name.clone()];
    got_names.sort();
    assert_eq!(got_names, ["h3", "h4"], "h2 gets no new work");
    drop(on_h2);
    assert_eq!(admin_of(&s, "h2"), "absent");
    assert_eq!(s.reconcile_backends(s.backends()).to_string(), "no change");
}

#[tokio::test(start_paused = true)]
async fn reconcile_leaves_runtime_backends_alone_and_revives_a_removed_one() {
    let s = Scheduler::new(vec![backend("h1", &["x"], 1)], 10);
    s.add_backend(backend("ec2-1", &["x"], 1));
    let on_h1 = now(s.try_acquire(job("x")).unwrap());
    assert_eq!(s.reconcile_backends(vec![]).to_string(), "-h1");
    assert_eq!(s.backends().len(), 1, "ec2-1 stays");
    let sum = s.reconcile_backends(vec![backend("h1", &["x"], 1)]);
    assert_eq!(sum.to_string(), "+h1");
    assert_eq!(admin_of(&s, "h1"), "active");
    drop(on_h1);
    assert_eq!(admin_of(&s, "h1"), "active", "revived, not forgotten");
}

#[tokio::test(start_paused = true)]
async fn waiting_jobs_nothing_can_serve_any_more_fail_with_a_reason() {
    let s = Scheduler::new(vec![backend("a", &["x"], 1), backend("b", &["y"], 1)], 10);
    let _on_a = now(s.try_acquire(job("x")).unwrap());
    let (_, mut rx) = queued(s.try_acquire(job("x")).unwrap());
    s.remove_backend("a");
    let Err(err) = rx.try_recv().expect("an answer") else {
        panic!("expected a failure");
    };
    assert!(err.to_string().contains("\"x\""), "{err}");
    assert!(s.waiting_summary().is_empty());
}

#[tokio::test(start_paused = true)]
async fn jobs_only_elastic_capacity_could_serve_wait_for_it() {
    let s = Scheduler::new(vec![backend("a", &["x"], 1)], 10);
    assert!(matches!(
        s.try_acquire(job_with("kvm")),
        Err(Error::NoneEligible { .. })
    ));
    s.set_elastic(vec![spec("x", "kvm")]);
    let (_, mut rx) = queued(s.try_acquire(job_with("kvm")).unwrap());
    let summary = s.waiting_summary();
    assert_eq!(
        (summary[0].count, summary[0].servable),
        (1, false),
        "{summary:?}"
    );
    assert_eq!(summary[0].required_features, ["kvm"]);
    s.add_backend(featured("ec2-1", "kvm"));
    assert_eq!(got(&mut rx).backend().name, "ec2-1");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_elastic_spec_fails_the_jobs_waiting_for_it() {
    let s = Scheduler::new(vec![backend("a", &["x"], 1)], 10);
    s.set_elastic(vec![spec("x", "kvm")]);
    let (_, mut rx) = queued(s.try_acquire(job_with("kvm")).unwrap());
    s.set_elastic(vec![]);
    assert!(matches!(rx.try_recv(), Ok(Err(Error::NoneEligible { .. }))));
}

#[tokio::test(start_paused = true)]
async fn a_job_waiting_for_special_capacity_does_not_block_ordinary_ones() {
    let s = Scheduler::new(vec![featured("big", "kvm"), backend("b", &["x"], 1)], 10);
    let _big = now(s.try_acquire(job_with("kvm")).unwrap());
    let (_, _kvm) = queued(s.try_acquire(job_with("kvm")).unwrap());
    assert_eq!(now(s.try_acquire(job("x")).unwrap()).backend().name, "b");
}

#[tokio::test(start_paused = true)]
async fn the_summary_says_how_long_the_oldest_job_waited() {
    let s = Scheduler::new(vec![backend("a", &["x"], 1)], 10);
    let _a = now(s.try_acquire(job_for("c1", "x")).unwrap());
    let _w1 = queued(s.try_acquire(job_for("c1", "x")).unwrap());
    tokio::time::advance(Duration::from_secs(30)).await;
    let _w2 = queued(s.try_acquire(job_for("c2", "x")).unwrap());
    let summary = s.waiting_summary();
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].count, 2);
    assert_eq!(summary[0].oldest_wait, Duration::from_secs(30));
    assert!(summary[0].servable);
}
