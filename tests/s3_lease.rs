//! Cross-relay leases (`s3::lease`) against moto on loopback: while relay A
//! builds a derivation, relay B asked for the same one waits for A's
//! outputs in the bucket and answers with a cache hit, with no build of its
//! own (A's lease outlives its build while the outputs are uploaded); a
//! dead relay's expired lease is taken over; a failed build's lease goes.

use std::time::Duration;

use nix_relay::config::Protocol;
use nix_relay::s3::lease::Leases;
use nix_relay::testing::drv;
use nix_relay::testing::fake::{Outcome, Script};
use nix_relay::testing::harness::{SYSTEM, TestRelay};
use nix_relay::wire::build::BuildStatus;

#[path = "s3_moto/moto.rs"]
mod moto;

const WAIT: Duration = Duration::from_secs(30);

async fn relay_on(m: &moto::Moto, bucket: &str, trust: Option<String>, s: Script) -> TestRelay {
    moto::relay_on_bucket(m, bucket, trust, "", s).await
}

/// Polls `cond` until it holds; panics after [`WAIT`] (a hang, not a
/// timing assertion).
async fn until<F: AsyncFn() -> bool>(what: &str, cond: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_second_relay_waits_for_the_first_relays_build_instead_of_building() {
    let Some(m) = moto::moto() else { return };
    nix_relay::s3::use_test_credentials("testing", "testing");
    let bucket = m.bucket("lease").await;
    let a = relay_on(&m, "lease", None, Script::default().gate()).await;
    let key = a.relay.store().settings().signer.clone().unwrap().public();
    let b = relay_on(&m, "lease", Some(key.to_string()), Script::default()).await;
    let (drv_path, d) = drv::derivation("leased", SYSTEM, &[]);
    let out = drv::out_path(&d);

    let mut ca = a.client(Protocol::Serve, "alice").await;
    let (dp, dd, o) = (drv_path.clone(), d.clone(), out.clone());
    let on_a = tokio::spawn(async move {
        let res = ca.build(&dp, &dd).await.unwrap();
        assert!(res.status.is_success(), "A: {:?}\n{}", res.status, ca.log());
        let nar = ca.fetch(&o).await.unwrap();
        ca.close().await.unwrap();
        nar
    });
    until("A builds", async || {
        !a.fake("a").record().builds_started.is_empty()
    })
    .await;
    let lease = Leases::key(&drv_path);
    assert!(bucket.exists(&lease).await.unwrap(), "A holds the lease");

    let mut cb = b.client(Protocol::Serve, "bob").await;
    let (dp, dd) = (drv_path.clone(), d.clone());
    let on_b = tokio::spawn(async move {
        let res = cb.build(&dp, &dd).await.unwrap();
        let log = cb.log();
        (res.status, log, cb)
    });
    // B's flight says it waits (its first and only log line).
    until("B waits", async || {
        (b.relay.flights().snapshot().iter()).any(|f| f.log_bytes > 0)
    })
    .await;
    a.fake("a").release();
    let nar = on_a.await.unwrap();
    a.wait_stored(&out, WAIT).await;
    moto::mirror_of(&a).flushed().await;
    let (status, log, mut cb) = on_b.await.unwrap();
    assert_eq!(status, BuildStatus::AlreadyValid, "log:\n{log}");
    assert!(
        log.contains("waiting for its outputs in the bucket"),
        "{log}"
    );
    assert!(
        b.fake("a").record().builds_started.is_empty(),
        "no build on B"
    );
    assert_eq!(cb.fetch(&out).await.unwrap(), nar);
    cb.close().await.unwrap();
    let left = bucket.get_bytes(&lease, 4096).await.unwrap().unwrap();
    let left = String::from_utf8(left).unwrap();
    assert!(
        left.starts_with("relay ") && left.contains("expires "),
        "{left}"
    );
}

#[tokio::test]
async fn a_dead_relays_expired_lease_is_taken_over() {
    let Some(m) = moto::moto() else { return };
    nix_relay::s3::use_test_credentials("testing", "testing");
    let bucket = m.bucket("expired").await;
    let (drv_path, d) = drv::derivation("orphaned", SYSTEM, &[]);
    let lease = Leases::key(&drv_path);
    bucket
        .put(&lease, "relay dead\nexpires 1\n".into())
        .await
        .unwrap();
    let a = relay_on(&m, "expired", None, Script::default()).await;
    let mut c = a.client(Protocol::Serve, "alice").await;
    let res = c.build(&drv_path, &d).await.unwrap();
    assert!(res.status.is_success(), "{:?}\n{}", res.status, c.log());
    assert_eq!(a.fake("a").record().builds_started, [drv_path]);
    c.close().await.unwrap();
    let left = bucket.get_bytes(&lease, 4096).await.unwrap().unwrap();
    assert!(!left.starts_with(b"relay dead\n"), "A's lease now");
}

#[tokio::test]
async fn a_failed_builds_lease_is_deleted() {
    let Some(m) = moto::moto() else { return };
    nix_relay::s3::use_test_credentials("testing", "testing");
    let bucket = m.bucket("failed").await;
    let fails = Script::default().gate().outcome(Outcome::Fail("no".into()));
    let a = relay_on(&m, "failed", None, fails).await;
    let (drv_path, d) = drv::derivation("failing", SYSTEM, &[]);
    let mut c = a.client(Protocol::Serve, "alice").await;
    let (dp, dd) = (drv_path.clone(), d.clone());
    let build = tokio::spawn(async move { (c.build(&dp, &dd).await.unwrap(), c) });
    until("A builds", async || {
        !a.fake("a").record().builds_started.is_empty()
    })
    .await;
    let lease = Leases::key(&drv_path);
    assert!(bucket.exists(&lease).await.unwrap(), "held while building");
    a.fake("a").release();
    let (res, c) = build.await.unwrap();
    assert!(!res.status.is_success(), "{:?}", res.status);
    c.close().await.unwrap();
    until("the lease deleted", async || {
        !bucket.exists(&lease).await.unwrap()
    })
    .await;
}
