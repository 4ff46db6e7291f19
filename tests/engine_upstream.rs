//! The relay substitutes from an upstream binary cache, in-process (feature
//! `testing`; issue 16, items 3 and 4): a signed cache on loopback
//! (`testing::upstream::TestCache`), the real core with fake backends.
//! Clients' queries count what upstream has (when they allow substitution),
//! a build's input that only upstream has is fetched and pushed (unless
//! the backend substitutes it itself: then it is never fetched), and a client
//! gets the NAR of such a path. The HTTP cache's pull-through: engine_pull_through.

use nix_relay::config::Protocol;
use nix_relay::store::Compression;
use nix_relay::testing::drv;
use nix_relay::testing::fake::Script;
use nix_relay::testing::harness::{SYSTEM, TestRelay, fake_backend};
use nix_relay::testing::upstream::{TestCache, cache_key};
use nix_relay::wire::build::BuildStatus;
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::store_path::StorePath;
use nix_relay::wire::worker::{Reply, Request, StoreOp};

async fn relay_with(cache: &TestCache, uri: &str) -> TestRelay {
    let config = format!(
        "{}\n[cache]\nupstream = [\"{}\"]\ntrusted_public_keys = [\"{}\"]\n",
        fake_backend("a", uri, ""),
        cache.url,
        cache_key().public()
    );
    TestRelay::start(&config, &[("a", Script::default())]).await
}

#[tokio::test]
async fn query_valid_paths_counts_upstream_only_when_the_client_substitutes() {
    let cache = TestCache::start(Compression::Zstd).await;
    let up = cache.add("up", b"upstream only", &[]).await;
    let t = relay_with(&cache, "fake-ng://a").await;
    let mut c = t.client(Protocol::Worker, "alice").await;
    for (substitute, want) in [(false, vec![]), (true, vec![up.path.clone()])] {
        let paths = vec![up.path.clone()];
        let reply = c.call(Request::QueryValidPaths { paths, substitute }).await;
        assert_eq!(
            reply.unwrap(),
            Reply::Paths(want),
            "substitute {substitute}"
        );
    }
    let paths = vec![up.path.clone()];
    let reply = c.call(Request::QuerySubstitutablePaths { paths }).await;
    assert_eq!(reply.unwrap(), Reply::Paths(vec![up.path.clone()]));
    let paths = vec![up.path.to_string()];
    let Reply::Missing(m) = c.call(Request::QueryMissing { paths }).await.unwrap() else {
        panic!("not a QueryMissing reply");
    };
    assert_eq!(
        (m.will_substitute, m.unknown),
        (vec![up.path.clone()], vec![])
    );
    assert_eq!(m.nar_size, up.nar_size);
    let absent = drv::store_path("absent", "nowhere");
    let paths = vec![
        (up.path.clone(), String::new()),
        (absent.clone(), String::new()),
    ];
    let op = StoreOp::QuerySubstitutablePathInfos { paths };
    let Reply::SubstitutableInfos(infos) = c.call(Request::Store(op)).await.unwrap() else {
        panic!("not a QuerySubstitutablePathInfos reply");
    };
    assert_eq!(infos.len(), 1, "{infos:?}");
    let (path, info) = &infos[0];
    assert_eq!((path, info.nar_size), (&up.path, up.nar_size));
    assert!(info.download_size > 0);
    for (path, found) in [(up.path.clone(), true), (absent, false)] {
        let op = StoreOp::QuerySubstitutablePathInfo { path };
        let reply = c.call(Request::Store(op)).await.unwrap();
        assert!(matches!(reply, Reply::SubstitutableInfo(i) if i.is_some() == found));
    }
    assert!(t.stored(&up.path).await.is_none(), "queries fetch nothing");
    // The serve protocol's flag reaches the same core call.
    let core = &t.relay;
    let alice = nix_relay::session::ClientId {
        name: "alice".into(),
        trusted: true,
    };
    let paths = vec![up.path.clone()];
    assert!(
        core.query_valid(&alice, None, paths.clone(), false)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        core.query_valid(&alice, None, paths, true)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// The input is only upstream (its reference too): the relay fetches both
/// and pushes them to the backend, which builds.
async fn a_build_input_only_upstream_is_fetched_and_pushed(uri: &str, protocol: Protocol) {
    let cache = TestCache::start(Compression::Xz).await;
    let dep = cache.add("dep", b"dep", &[]).await;
    let input = cache
        .add("input", b"input", std::slice::from_ref(&dep.path))
        .await;
    let t = relay_with(&cache, uri).await;
    let (drv_path, d) = drv::derivation("consumer", SYSTEM, std::slice::from_ref(&input.path));
    let mut c = t.client(protocol, "alice").await;
    let res = c.build(&drv_path, &d).await.unwrap();
    assert_eq!(res.status, BuildStatus::Built, "log:\n{}", c.log());
    for p in [&dep.path, &input.path] {
        assert!(t.fake("a").has(p), "{p} pushed to the backend");
        assert!(t.stored(p).await.is_some(), "{p} in the relay store");
    }
}

#[tokio::test]
async fn a_build_input_only_upstream_is_fetched_and_pushed_serve() {
    a_build_input_only_upstream_is_fetched_and_pushed("fake://a", Protocol::Serve).await;
}

#[tokio::test]
async fn a_build_input_only_upstream_is_fetched_and_pushed_worker() {
    a_build_input_only_upstream_is_fetched_and_pushed("fake-ng://a", Protocol::Worker).await;
}

/// The client allows substitutes and the backend's own cache has the
/// upstream-only input: the backend substitutes it, and the relay never
/// downloads its NAR (it stays upstream, looked up only).
async fn an_upstream_input_the_backend_substitutes_is_not_fetched(uri: &str, protocol: Protocol) {
    let cache = TestCache::start(Compression::Zstd).await;
    let input = cache.add("in-both-caches", b"shared input", &[]).await;
    let t = relay_with(&cache, uri).await;
    let (_, nar) = drv::source("in-both-caches", b"shared input", &[]);
    t.fake("a").cache(input.clone(), nar);
    let (drv_path, d) = drv::derivation("sub", SYSTEM, std::slice::from_ref(&input.path));
    let mut c = t.client(protocol, "alice").await;
    let valid = c.client.query_valid_paths(vec![input.path.clone()], true);
    assert_eq!(
        valid.await.unwrap(),
        std::slice::from_ref(&input.path),
        "valid: upstream has it"
    );
    let res = c.build(&drv_path, &d).await.unwrap();
    assert_eq!(res.status, BuildStatus::Built, "log:\n{}", c.log());
    let substituted = t.fake("a").record().substituted;
    assert_eq!(substituted, std::slice::from_ref(&input.path));
    assert!(t.fake("a").record().uploaded.is_empty(), "nothing pushed");
    assert_eq!(cache.requests("/nar/"), 0, "the relay downloaded no NAR");
    assert!(
        t.stored(&input.path).await.is_none(),
        "not fetched into the relay"
    );
}

#[tokio::test]
async fn an_upstream_input_the_serve_backend_substitutes_is_not_fetched() {
    an_upstream_input_the_backend_substitutes_is_not_fetched("fake://a", Protocol::Serve).await;
}

#[tokio::test]
async fn an_upstream_input_the_worker_backend_substitutes_is_not_fetched() {
    an_upstream_input_the_backend_substitutes_is_not_fetched("fake-ng://a", Protocol::Worker).await;
}

#[tokio::test]
async fn an_input_nowhere_still_fails_clearly() {
    let cache = TestCache::start(Compression::Zstd).await;
    let t = relay_with(&cache, "fake://a").await;
    let (missing, _) = drv::source("missing", b"nowhere", &[]);
    let (drv_path, d) = drv::derivation("orphan", SYSTEM, std::slice::from_ref(&missing.path));
    let mut c = t.client(Protocol::Serve, "alice").await;
    let res = c.build(&drv_path, &d).await.unwrap();
    assert_eq!(res.status, BuildStatus::MiscFailure);
    let msg = String::from_utf8_lossy(&res.error_msg);
    let want = format!("input {} is not in the relay store", missing.path);
    assert!(msg.contains(&want), "{msg}");
    assert!(msg.contains("no upstream cache has it"), "{msg}");
}

#[tokio::test]
async fn a_client_gets_the_nar_of_a_path_only_upstream_has() {
    let cache = TestCache::start(Compression::Zstd).await;
    let up = cache.add("wanted", b"fetched for a client", &[]).await;
    let t = relay_with(&cache, "fake://a").await;
    let mut c = t.client(Protocol::Serve, "alice").await;
    let nar = c.fetch(&up.path).await.unwrap();
    assert_eq!(Sha256Hash::digest(&nar), up.nar_hash);
}

#[tokio::test]
async fn a_derivation_whose_output_upstream_has_is_a_cache_hit() {
    let cache = TestCache::start(Compression::Zstd).await;
    let (drv_path, d) = drv::derivation("prebuilt", SYSTEM, &[]);
    let out = drv::out_path(&d);
    let info = cache.add_at(&out, b"built by hydra", &[]).await;
    let t = relay_with(&cache, "fake://a").await;
    let mut c = t.client(Protocol::Serve, "alice").await;
    let res = c.build(&drv_path, &d).await.unwrap();
    assert_eq!(res.status, BuildStatus::AlreadyValid, "log:\n{}", c.log());
    assert!(
        t.fake("a").record().builds_started.is_empty(),
        "no backend build"
    );
    let nar = c.fetch(&out).await.unwrap();
    assert_eq!(Sha256Hash::digest(&nar), info.nar_hash);
}

#[tokio::test]
async fn query_missing_substitutes_the_outputs_upstream_has_instead_of_building() {
    use nix_relay::testing::drv_aterm::drv_file;
    let cache = TestCache::start(Compression::Zstd).await;
    let a = drv_file("qm-leaf-a", SYSTEM, &["out"], &[]);
    let b = drv_file("qm-leaf-b", SYSTEM, &["out"], &[]);
    let top = drv_file("qm-top", SYSTEM, &["out"], &[&a, &b]);
    cache.add_at(&a.out("out"), b"a built by hydra", &[]).await;
    let t = relay_with(&cache, "fake-ng://a").await;
    let mut c = t.client(Protocol::Worker, "alice").await;
    for d in [&a, &b, &top] {
        c.upload(&d.info, &d.nar).await.unwrap();
    }
    let mut build = vec![b.path.clone(), top.path.clone()];
    build.sort();
    assert_eq!(
        missing(&mut c, &top).await,
        (build, vec![a.out("out")]),
        "a leaf's output"
    );
    cache
        .add_at(&top.out("out"), b"top built by hydra", &[])
        .await;
    let t2 = relay_with(&cache, "fake-ng://a").await;
    let mut c = t2.client(Protocol::Worker, "alice").await;
    for d in [&a, &b, &top] {
        c.upload(&d.info, &d.nar).await.unwrap();
    }
    assert_eq!(
        missing(&mut c, &top).await,
        (vec![], vec![top.out("out")]),
        "the top's output: nothing below it is needed"
    );
}

/// QueryMissing of `drv!out`: (will build, sorted; will substitute).
async fn missing(
    c: &mut nix_relay::testing::harness::TestClient,
    drv: &nix_relay::testing::drv_aterm::DrvFile,
) -> (Vec<StorePath>, Vec<StorePath>) {
    let paths = vec![format!("{}!out", drv.path)];
    let Reply::Missing(mut m) = c.call(Request::QueryMissing { paths }).await.unwrap() else {
        panic!("not a QueryMissing reply");
    };
    m.will_build.sort();
    (m.will_build, m.will_substitute)
}
