//! Builders substitute: when the client allows it (the substitute flag of
//! its QueryValidPaths, which Nix sets from `builders-use-substitutes`),
//! the backend gets the inputs its own caches have from there, and the
//! relay pushes only the rest over SSH. When the client does not, the
//! relay pushes everything, and a worker backend is told not to
//! substitute.

use std::time::Duration;

use nix_relay::config::Protocol;
use nix_relay::testing::drv;
use nix_relay::testing::fake::Script;
use nix_relay::testing::harness::{SYSTEM, TestRelay, fake_backend};
use nix_relay::wire::build::BuildStatus;

const WAIT: Duration = Duration::from_secs(10);

/// Two sources on the relay, one of them also in the backend's cache; a
/// derivation using both, built with the client's `substitute` flag.
async fn build_with(client: Protocol, backend_uri: &str, substitute: bool) {
    let conf = fake_backend("a", backend_uri, "max_jobs = 2\n");
    let t = TestRelay::start(&conf, &[("a", Script::default())]).await;
    let (cached, cached_nar) = drv::source("in-a-cache", &[7u8; 4096], &[]);
    let (local, local_nar) = drv::source("only-on-the-laptop", b"local", &[]);
    t.fake("a").cache(cached.clone(), cached_nar.clone());
    let inputs = [cached.path.clone(), local.path.clone()];
    let (drv_path, d) = drv::derivation("uses-both", SYSTEM, &inputs);

    let mut c = t.client(client, "alice").await;
    c.upload(&cached, &cached_nar).await.unwrap();
    c.upload(&local, &local_nar).await.unwrap();
    let valid = c.client.query_valid_paths(inputs.to_vec(), substitute);
    assert_eq!(valid.await.unwrap().len(), 2, "both uploaded");
    let res = c.build(&drv_path, &d).await.unwrap();
    assert_eq!(res.status, BuildStatus::Built, "log:\n{}", c.log());

    let rec = t
        .fake("a")
        .wait_for("built", WAIT, |r| !r.builds_finished.is_empty())
        .await;
    if substitute {
        assert_eq!(
            rec.substituted,
            std::slice::from_ref(&cached.path),
            "from its cache"
        );
        assert_eq!(
            rec.uploaded,
            std::slice::from_ref(&local.path),
            "only the rest pushed"
        );
        c.wait_log("the backend substituted 1 input(s)", WAIT).await;
    } else {
        assert!(
            rec.substituted.is_empty(),
            "not allowed: {:?}",
            rec.substituted
        );
        assert_eq!(rec.uploaded.len(), 2, "everything pushed");
        assert!(!c.log().contains("substituted"), "log:\n{}", c.log());
    }
    if let Some(o) = rec.options.last() {
        assert_eq!(
            o.use_substitutes, substitute,
            "the worker backend's setting"
        );
    }
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serve_client_allowing_substitutes_has_the_serve_backend_substitute() {
    build_with(Protocol::Serve, "fake://a", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_client_allowing_substitutes_has_the_worker_backend_substitute() {
    build_with(Protocol::Worker, "fake-ng://a", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serve_client_not_allowing_substitutes_gets_everything_pushed() {
    build_with(Protocol::Serve, "fake://a", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_client_not_allowing_substitutes_gets_a_non_substituting_backend() {
    build_with(Protocol::Worker, "fake-ng://a", false).await;
}

/// A pooled session that built before still substitutes: `nix-store
/// --serve` turns substitution off for good once it ran a build (the relay
/// asks on a fresh session instead), and a daemon keeps the last build's
/// SetOptions (the relay sends this build's first).
async fn a_session_that_built_before_still_substitutes(uri: &str, protocol: Protocol) {
    let conf = fake_backend("a", uri, "max_jobs = 1\n");
    let t = TestRelay::start(&conf, &[("a", Script::default())]).await;
    let (first, first_nar) = drv::source("first-input", b"first", &[]);
    let (d1_path, d1) = drv::derivation("first", SYSTEM, std::slice::from_ref(&first.path));
    let mut c = t.client(protocol, "alice").await;
    c.upload(&first, &first_nar).await.unwrap();
    assert_eq!(
        c.build(&d1_path, &d1).await.unwrap().status,
        BuildStatus::Built
    );
    c.fetch(&drv::out_path(&d1)).await.unwrap();
    c.close().await.unwrap();
    // the first build's session back in the pool: the second reuses it
    let pooled = async {
        while t.relay.pool().idle_count("a") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, pooled)
        .await
        .expect("the session pooled");
    let conns = t.fake("a").record().connections;
    let mut c = t.client(protocol, "alice").await;
    let (cached, cached_nar) = drv::source("cached-later", &[3u8; 2048], &[]);
    t.fake("a").cache(cached.clone(), cached_nar.clone());
    c.upload(&cached, &cached_nar).await.unwrap();
    let (d2_path, d2) = drv::derivation("second", SYSTEM, std::slice::from_ref(&cached.path));
    let valid = c.client.query_valid_paths(vec![cached.path.clone()], true);
    assert_eq!(valid.await.unwrap().len(), 1);
    let res = c.build(&d2_path, &d2).await.unwrap();
    assert_eq!(res.status, BuildStatus::Built, "log:\n{}", c.log());
    let rec = t.fake("a").record();
    assert_eq!(
        rec.substituted,
        std::slice::from_ref(&cached.path),
        "substituted"
    );
    assert!(
        !rec.uploaded.contains(&cached.path),
        "not pushed: {:?}",
        rec.uploaded
    );
    let fresh = rec.connections - conns;
    let want = u64::from(protocol == Protocol::Serve);
    assert_eq!(fresh, want, "sessions opened for the second build");
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serve_session_that_built_before_still_gets_its_backend_to_substitute() {
    a_session_that_built_before_still_substitutes("fake://a", Protocol::Serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_session_that_built_before_still_gets_its_backend_to_substitute() {
    a_session_that_built_before_still_substitutes("fake-ng://a", Protocol::Worker).await;
}
