//! The lifecycle in paused time: the in-memory fake EC2, the real
//! scheduler, a probe that says whether SSH answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use super::api::{ApiError, ErrorKind};
use super::fake::Fake;
use super::manager::{Manager, Phase, Probe};
use super::{InstanceState, Market};
use crate::config::ec2::{Ec2Config, Template};
use crate::scheduler::{Acquired, JobSpec, Scheduler};

const BUILDER: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGsl9bcFHoLUq3ANWXnbW6LpSeLX/vfMeDfPmkl2aNB1";

fn template(name: &str, system: &str, price: f64) -> Template {
    Template {
        name: name.into(),
        systems: vec![system.into()],
        supported_features: vec![],
        instance_type: match system {
            "aarch64-linux" => "c7g.large".into(),
            _ => "c7i.large".into(),
        },
        ami: "ami-1".into(),
        subnet: Some("subnet-1".into()),
        security_group: Some("sg-1".into()),
        spot: false,
        price_per_hour: price,
        on_demand_price_per_hour: None,
        boot_estimate: Duration::from_secs(120),
        idle_grace: Duration::from_secs(300),
        max_lifetime: Duration::from_secs(4 * 3600),
        max_instances: 2,
        speed_factor: 1.0,
        max_jobs: None,
    }
}

fn config(budget: f64) -> Ec2Config {
    Ec2Config {
        region: "us-east-1".into(),
        endpoint: None,
        budget_per_day: budget,
        relay_id: "relay-t".into(),
        ssh_key: "/nonexistent/key".into(),
        ssh_user: "nix-relay".into(),
        dead_man_switch: Duration::from_secs(1800),
        reconcile_interval: Duration::from_secs(60),
        templates: vec![
            template("x86", "x86_64-linux", 0.1),
            template("arm", "aarch64-linux", 0.3),
        ],
    }
}

struct Rig {
    fake: Arc<Fake>,
    sched: Arc<Scheduler>,
    m: Manager,
    reachable: Arc<AtomicBool>,
}

async fn rig(cfg: Ec2Config) -> Rig {
    let fake = Arc::new(Fake::new(4));
    rig_with(cfg, fake).await
}

/// Wall time at the rig's start: day 100, 00:00 UTC.
const WALL: Duration = Duration::from_secs(86_400 * 100);

async fn rig_with(cfg: Ec2Config, fake: Arc<Fake>) -> Rig {
    rig_full(cfg, fake, None, WALL).await
}

/// A rig whose manager keeps its spend in `state_dir` and starts at wall
/// time `wall` since the epoch.
async fn rig_full(
    cfg: Ec2Config,
    fake: Arc<Fake>,
    state_dir: Option<&std::path::Path>,
    wall: Duration,
) -> Rig {
    let sched = Scheduler::new(vec![], 100);
    let reachable = Arc::new(AtomicBool::new(true));
    let r = reachable.clone();
    let probe: Probe = Arc::new(move |_| {
        let ok = r.load(Ordering::SeqCst);
        Box::pin(async move { ok })
    });
    let mut m = Manager::new(
        fake.clone(),
        cfg,
        sched.clone(),
        BUILDER.into(),
        probe,
        SystemTime::UNIX_EPOCH + wall,
    );
    if let Some(dir) = state_dir {
        m = m.with_ledger_file(dir);
    }
    m.start().await.unwrap();
    Rig {
        fake,
        sched,
        m,
        reachable,
    }
}

fn job(system: &str) -> JobSpec {
    JobSpec {
        client: "c".into(),
        system: system.into(),
        required_features: vec![],
        ..Default::default()
    }
}

fn queue(
    s: &Arc<Scheduler>,
    system: &str,
) -> tokio::sync::oneshot::Receiver<Result<crate::scheduler::Slot, crate::scheduler::Error>> {
    match s.try_acquire(job(system)).expect("queued, not refused") {
        Acquired::Queued { rx, .. } => rx,
        Acquired::Now(_) => panic!("no backend should be free"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_aarch64_job_launches_the_arm_template_tagged_and_with_its_user_data() {
    let mut r = rig(config(100.0)).await;
    let _rx = queue(&r.sched, "aarch64-linux");
    r.m.tick().await;
    let live = r.fake.live();
    assert_eq!(live.len(), 1);
    let spec = &live[0].spec;
    assert_eq!(spec.template, "arm");
    assert_eq!(spec.relay_id, "relay-t");
    assert_eq!(spec.instance_type, "c7g.large");
    assert_eq!(spec.market, Market::OnDemand);
    let (builder, host) = super::userdata::extract(&spec.user_data).unwrap();
    assert_eq!(builder, BUILDER);
    let host = russh::keys::PrivateKey::from_openssh(&host).unwrap();
    let t = r.m.tracked().next().unwrap();
    assert_eq!(
        t.host_key.key_data(),
        host.public_key().key_data(),
        "the pinned key is the one in the user data"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reachable_instance_joins_and_serves_the_waiting_job() {
    let mut r = rig(config(100.0)).await;
    let mut rx = queue(&r.sched, "aarch64-linux");
    r.m.tick().await; // launched (pending)
    r.m.tick().await; // running, probe ok → backend
    let slot = rx.try_recv().expect("granted").expect("a slot");
    assert_eq!(slot.backend().name, "ec2-arm-0");
    assert_eq!(
        slot.backend().max_jobs,
        4,
        "max_jobs defaults to the vCPU count"
    );
    let listed = r.fake.live()[0].inst.private_ip.clone().unwrap();
    match &slot.backend().uri {
        crate::config::BackendUri::Ssh {
            user, host, port, ..
        } => assert_eq!(
            (user.as_str(), host.as_str(), *port),
            ("nix-relay", listed.as_str(), 22),
            "reached as ssh_user at the instance's own address, port 22"
        ),
        other => panic!("not an SSH backend: {other:?}"),
    }
    assert_eq!(r.m.tracked().next().unwrap().phase, Phase::Joined);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_instance_does_not_join_and_is_terminated_after_its_boot_timeout() {
    let mut r = rig(config(100.0)).await;
    r.reachable.store(false, Ordering::SeqCst);
    let _rx = queue(&r.sched, "aarch64-linux");
    r.m.tick().await;
    r.m.tick().await;
    assert_eq!(r.m.tracked().next().unwrap().phase, Phase::Booting);
    tokio::time::advance(Duration::from_secs(601)).await;
    r.m.tick().await;
    let all = r.fake.instances.lock().unwrap().clone();
    assert_eq!(all[0].inst.state, InstanceState::Terminated);
}

#[tokio::test(start_paused = true)]
async fn an_idle_instance_is_terminated_after_idle_grace_and_not_before() {
    let mut r = rig(config(100.0)).await;
    let mut rx = queue(&r.sched, "aarch64-linux");
    r.m.tick().await;
    r.m.tick().await;
    let slot = rx.try_recv().unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(3600)).await;
    r.m.tick().await;
    assert_eq!(r.fake.live().len(), 1, "busy for an hour: kept");
    drop(slot);
    r.m.tick().await;
    tokio::time::advance(Duration::from_secs(299)).await;
    r.m.tick().await;
    assert_eq!(r.fake.live().len(), 1, "idle 299 s of 300: kept");
    tokio::time::advance(Duration::from_secs(2)).await;
    r.m.tick().await;
    assert!(r.fake.live().is_empty(), "idle past idle_grace: terminated");
    assert_eq!(r.m.tracked().count(), 0);
    let snap = r.sched.snapshot();
    assert!(snap.backends.iter().all(|b| b.name != "ec2-arm-0"));
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_terminates_even_a_busy_instance() {
    let mut r = rig(config(100.0)).await;
    let mut rx = queue(&r.sched, "aarch64-linux");
    r.m.tick().await;
    r.m.tick().await;
    let _slot = rx.try_recv().unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(4 * 3600)).await;
    r.m.tick().await;
    assert!(r.fake.live().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_vanished_instance_is_forgotten_and_its_work_relaunches() {
    let mut r = rig(config(100.0)).await;
    let mut rx = queue(&r.sched, "aarch64-linux");
    r.m.tick().await;
    r.m.tick().await;
    let slot = rx.try_recv().unwrap().unwrap();
    let id = r.m.tracked().next().unwrap().id.clone();
    r.fake.interrupt(&id);
    // The session's build fails over: its slot goes, the job queues again.
    drop(slot);
    r.m.tick().await;
    assert_eq!(
        r.m.tracked().count(),
        0,
        "the vanished instance is forgotten"
    );
    let _rx2 = queue(&r.sched, "aarch64-linux");
    r.m.tick().await;
    let live = r.fake.live();
    assert_eq!(live.len(), 1, "a replacement was launched");
    assert_ne!(live[0].inst.id, id);
}

#[tokio::test(start_paused = true)]
async fn the_budget_refuses_a_launch_it_cannot_cover() {
    // arm: 0.3 $/h × 4 h max_lifetime = 1.2 $ worst case.
    let mut r = rig(config(1.0)).await;
    let mut rx = queue(&r.sched, "aarch64-linux");
    r.m.tick().await;
    assert!(r.fake.live().is_empty());
    assert!(!r.fake.calls.lock().unwrap().contains(&"RunInstances"));
    let granted = rx.try_recv().expect("answered, not left waiting");
    assert!(
        granted.is_err(),
        "the job fails: only the withheld template could serve it"
    );
}

#[tokio::test(start_paused = true)]
async fn cost_accrues_per_template_from_instance_seconds() {
    let mut r = rig(config(100.0)).await;
    let mut rx = queue(&r.sched, "aarch64-linux");
    r.m.tick().await;
    r.m.tick().await;
    let _slot = rx.try_recv().unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(3600)).await;
    r.m.tick().await;
    let c = &r.m.ledger().per_template()["arm"];
    assert!((c.instance_seconds - 3600.0).abs() < 1.0, "{c:?}");
    assert!((c.dollars - 0.3).abs() < 0.001, "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn after_a_crash_the_next_relay_terminates_the_leftovers() {
    let fake = Arc::new(Fake::new(4));
    let mut first = rig_with(config(100.0), fake.clone()).await;
    let _rx = queue(&first.sched, "aarch64-linux");
    first.m.tick().await;
    assert_eq!(fake.live().len(), 1);
    drop(first); // kill -9: nothing terminated
    let mut second = rig_with(config(100.0), fake.clone()).await;
    second.m.tick().await;
    assert!(
        fake.live().is_empty(),
        "the untracked instance was terminated"
    );
}

#[tokio::test(start_paused = true)]
async fn throttling_is_retried_with_backoff() {
    let mut r = rig(config(100.0)).await;
    let _rx = queue(&r.sched, "aarch64-linux");
    let throttled = ApiError::from_code("RequestLimitExceeded", "slow down");
    assert_eq!(throttled.kind, ErrorKind::Throttled);
    r.fake
        .errors
        .lock()
        .unwrap()
        .extend([throttled.clone(), throttled]);
    let t0 = tokio::time::Instant::now();
    r.m.tick().await;
    assert_eq!(r.fake.live().len(), 1, "launched after two throttled calls");
    assert_eq!(
        t0.elapsed(),
        Duration::from_millis(250 + 500),
        "backed off 250 then 500 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fatal_error_is_not_retried() {
    let mut r = rig(config(100.0)).await;
    let _rx = queue(&r.sched, "aarch64-linux");
    let before = r.fake.calls.lock().unwrap().len();
    let fatal = ApiError::from_code("AuthFailure", "bad credentials");
    assert_eq!(fatal.kind, ErrorKind::Fatal);
    r.fake.errors.lock().unwrap().push_back(fatal);
    r.m.tick().await;
    let calls = r.fake.calls.lock().unwrap()[before..].to_vec();
    assert_eq!(
        calls,
        ["DescribeInstances"],
        "one call, then the tick gives up"
    );
    r.m.tick().await;
    assert_eq!(r.fake.live().len(), 1, "the next tick works again");
}

#[tokio::test(start_paused = true)]
async fn an_x86_type_in_an_aarch64_template_refuses_the_start() {
    let mut cfg = config(100.0);
    cfg.templates[1].instance_type = "c7i.large".into();
    let sched = Scheduler::new(vec![], 100);
    let probe: Probe = Arc::new(|_| Box::pin(async { true }));
    let fake = Arc::new(Fake::new(4));
    let mut m = Manager::new(
        fake,
        cfg,
        sched,
        BUILDER.into(),
        probe,
        SystemTime::UNIX_EPOCH,
    );
    let msg = m.start().await.unwrap_err().to_string();
    for part in [
        "template arm",
        "c7i.large",
        "supports x86_64",
        "aarch64-linux",
    ] {
        assert!(msg.contains(part), "{part} missing from: {msg}");
    }
}

#[tokio::test(start_paused = true)]
async fn no_spot_capacity_falls_back_to_on_demand_charged_at_the_on_demand_price() {
    let mut cfg = config(100.0);
    cfg.templates[1].spot = true;
    cfg.templates[1].on_demand_price_per_hour = Some(0.9);
    let mut r = rig(cfg).await;
    let _rx = queue(&r.sched, "aarch64-linux");
    *r.fake.no_spot.lock().unwrap() = true;
    r.m.tick().await;
    let live = r.fake.live();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].spec.market, Market::OnDemand);
    let calls = r.fake.calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().filter(|c| **c == "RunInstances").count(),
        2,
        "spot, then on-demand"
    );
    let t = r.m.tracked().next().unwrap();
    assert_eq!((t.market, t.price_per_hour), (Market::OnDemand, 0.9));
    tokio::time::advance(Duration::from_secs(3600)).await;
    r.m.tick().await;
    let c = &r.m.ledger().per_template()["arm"];
    assert!((c.dollars - 0.9).abs() < 0.01, "an hour on-demand: {c:?}");
}

#[tokio::test(start_paused = true)]
async fn the_jobs_a_launch_is_for_are_told_template_type_market_reason_and_estimate() {
    let mut cfg = config(100.0);
    cfg.templates[1].spot = true;
    let mut r = rig(cfg).await;
    let mut told = r.sched.launch_notices(&job("aarch64-linux"));
    let mut x86 = r.sched.launch_notices(&job("x86_64-linux"));
    let _rx = queue(&r.sched, "aarch64-linux");
    let _rx2 = queue(&r.sched, "aarch64-linux");
    *r.fake.no_spot.lock().unwrap() = true;
    r.m.tick().await;
    let n = told.next().await.unwrap();
    assert_eq!(
        n.text(),
        "launching an EC2 instance (template arm, c7g.large, on-demand (no spot capacity: \
         InsufficientInstanceCapacity)) for this build: no static backend serves aarch64-linux; \
         boot estimate 120 s"
    );
    drop(r);
    assert!(
        told.next().await.is_none(),
        "one notice for the group's one launch"
    );
    assert!(
        x86.next().await.is_none(),
        "nothing launched for x86_64-linux"
    );
}

#[tokio::test(start_paused = true)]
async fn a_spot_instance_is_charged_at_the_spot_price() {
    let mut cfg = config(100.0);
    cfg.templates[1].spot = true;
    cfg.templates[1].on_demand_price_per_hour = Some(0.9);
    let mut r = rig(cfg).await;
    let _rx = queue(&r.sched, "aarch64-linux");
    r.m.tick().await;
    assert_eq!(r.fake.live()[0].spec.market, Market::Spot);
    let t = r.m.tracked().next().unwrap();
    assert_eq!((t.market, t.price_per_hour), (Market::Spot, 0.3));
}

#[tokio::test(start_paused = true)]
async fn a_spot_template_launches_only_if_its_on_demand_fallback_fits_the_budget() {
    // 4 h max_lifetime: spot 0.3 $/h needs 1.2 $, on-demand 0.9 $/h 3.6 $.
    let mut cfg = config(2.0);
    cfg.templates[1].spot = true;
    cfg.templates[1].on_demand_price_per_hour = Some(0.9);
    let mut r = rig(cfg).await;
    let rx = queue(&r.sched, "aarch64-linux");
    r.m.tick().await;
    assert!(r.fake.live().is_empty(), "a fallback could not be paid");
    let refused = rx.await.unwrap().err().expect("withheld: the job fails");
    assert!(refused.to_string().contains("aarch64-linux"), "{refused}");
}

#[tokio::test(start_paused = true)]
async fn the_days_spend_survives_a_restart_and_the_budget_still_holds() {
    // arm: 0.3 $/h, 4 h max_lifetime: 1.2 $ worst case; budget 2 $.
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::new(4));
    let mut first = rig_full(config(2.0), fake.clone(), Some(dir.path()), WALL).await;
    let mut rx = queue(&first.sched, "aarch64-linux");
    first.m.tick().await;
    first.m.tick().await;
    let _slot = rx.try_recv().unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(4 * 3600)).await;
    first.m.tick().await; // max_lifetime: terminated, 1.2 $ spent
    assert!(fake.live().is_empty());
    drop(first);
    let later = WALL + Duration::from_secs(4 * 3600);
    let mut second = rig_full(config(2.0), fake.clone(), Some(dir.path()), later).await;
    let spent = second.m.ledger().spent_on(100);
    assert!((spent - 1.2).abs() < 0.001, "restored spend {spent}");
    let mut rx = queue(&second.sched, "aarch64-linux");
    second.m.tick().await;
    assert!(fake.live().is_empty(), "0.8 $ left cannot cover 1.2 $");
    assert!(rx.try_recv().expect("answered").is_err());
    let runs = fake
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| **c == "RunInstances")
        .count();
    assert_eq!(runs, 1, "only the first relay launched");
}

#[tokio::test(start_paused = true)]
async fn an_instance_open_at_a_crash_is_charged_until_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::new(4));
    let mut first = rig_full(config(100.0), fake.clone(), Some(dir.path()), WALL).await;
    let _rx = queue(&first.sched, "aarch64-linux");
    first.m.tick().await; // launched: on disk at once
    tokio::time::advance(Duration::from_secs(3600)).await;
    first.m.tick().await; // 1 h accrued: 0.3 $
    tokio::time::advance(Duration::from_secs(3600)).await;
    drop(first); // kill -9 an hour later: that hour never accrued
    let later = WALL + Duration::from_secs(2 * 3600);
    let mut second = rig_full(config(100.0), fake.clone(), Some(dir.path()), later).await;
    let spent = second.m.ledger().spent_on(100);
    assert!((spent - 0.6).abs() < 0.001, "2 h at 0.3 $/h, got {spent}");
    second.m.tick().await;
    assert!(fake.live().is_empty(), "the leftover was terminated");
}

#[tokio::test(start_paused = true)]
async fn yesterdays_spend_does_not_count_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::new(4));
    let mut first = rig_full(config(2.0), fake.clone(), Some(dir.path()), WALL).await;
    let mut rx = queue(&first.sched, "aarch64-linux");
    first.m.tick().await;
    first.m.tick().await;
    let _slot = rx.try_recv().unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(4 * 3600)).await;
    first.m.tick().await;
    drop(first);
    let next_day = WALL + Duration::from_secs(86_400);
    let mut second = rig_full(config(2.0), fake.clone(), Some(dir.path()), next_day).await;
    assert_eq!(second.m.ledger().spent_on(101), 0.0);
    let _rx = queue(&second.sched, "aarch64-linux");
    second.m.tick().await;
    assert_eq!(fake.live().len(), 1, "a new day, a new budget");
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_ledger_launches_nothing_today() {
    let dir = tempfile::tempdir().unwrap();
    let file = super::ledger_file::path(dir.path());
    std::fs::write(&file, b"not json").unwrap();
    let mut r = rig_full(
        config(100.0),
        Arc::new(Fake::new(4)),
        Some(dir.path()),
        WALL,
    )
    .await;
    assert_eq!(r.m.ledger().spent_on(100), 100.0);
    let mut rx = queue(&r.sched, "aarch64-linux");
    r.m.tick().await;
    assert!(r.fake.live().is_empty());
    assert!(rx.try_recv().expect("answered").is_err());
    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(saved.contains("\"spent\":100"), "{saved}");
}
