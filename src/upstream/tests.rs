//! Upstream lookups and fetches against a signed binary cache on loopback
//! (`testing::upstream::TestCache`, written by the relay's own store code).

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::outbound::BaseUrl;
use crate::store::signing::SecretKey;
use crate::store::{Compression, Provenance, Settings};
use crate::testing::upstream::{TestCache, cache_key, closed_upstream, silent_upstream};

fn relay_key() -> SecretKey {
    SecretKey::from_seed("relay-test-1", [3; 32])
}

/// A relay store trusting `trusted`, and its upstream `urls`.
fn relay(dir: &std::path::Path, urls: &[&str], trusted: SecretKey) -> Arc<Upstream> {
    let settings = Settings {
        signer: Some(Arc::new(relay_key())),
        trusted_keys: vec![trusted.public()],
        ..Default::default()
    };
    let store = Store::open(dir, settings).unwrap();
    let cfg = crate::config::Upstream {
        urls: urls.iter().map(|u| BaseUrl::parse(u).unwrap()).collect(),
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_millis(500),
        stall_timeout: Duration::from_millis(500),
        negative_ttl: Duration::from_secs(3600),
    };
    Upstream::new(&cfg, store, NarLimits::default()).unwrap()
}

#[tokio::test]
async fn a_path_signed_by_a_trusted_key_is_found_others_are_absent() {
    let cache = TestCache::start(Compression::Zstd).await;
    let info = cache.add("hello", b"hello upstream", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let u = relay(dir.path(), &[&cache.url], cache_key());
    let found = u.lookup(&info.path).await.expect("found");
    assert_eq!(found.narinfo.nar_hash, info.nar_hash);
    assert_eq!(found.key, "upstream-test-1");
    let absent = crate::testing::drv::store_path("nowhere", "nowhere");
    assert!(u.lookup(&absent).await.is_none());

    let other = tempfile::tempdir().unwrap();
    let distrusting = relay(
        other.path(),
        &[&cache.url],
        SecretKey::from_seed("x-1", [5; 32]),
    );
    assert!(
        distrusting.lookup(&info.path).await.is_none(),
        "no trusted signature: absent"
    );
    assert!(
        !distrusting.fetch(&info.path).await.unwrap(),
        "and never fetched"
    );
    assert!(
        distrusting
            .store
            .narinfo(&info.path, None)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_narinfo_naming_another_path_is_absent() {
    let cache = TestCache::start(Compression::None).await;
    let real = cache.add("real", b"real", &[]).await;
    let asked = crate::testing::drv::store_path("asked", "asked");
    let text = std::fs::read(
        cache
            .root()
            .join(format!("{}.narinfo", real.path.hash_part())),
    )
    .unwrap();
    std::fs::write(
        cache.root().join(format!("{}.narinfo", asked.hash_part())),
        text,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let u = relay(dir.path(), &[&cache.url], cache_key());
    assert!(u.lookup(&asked).await.is_none());
    assert!(!u.fetch(&asked).await.unwrap());
    assert!(u.lookup(&real.path).await.is_some(), "the real one is fine");
}

#[tokio::test]
async fn fetch_stores_the_closure_verified_whatever_the_compression() {
    for compression in [Compression::Xz, Compression::Zstd, Compression::None] {
        let cache = TestCache::start(compression).await;
        let dep = cache.add("dep", b"a dependency", &[]).await;
        let top = cache
            .add("top", b"refers to dep", std::slice::from_ref(&dep.path))
            .await;
        let dir = tempfile::tempdir().unwrap();
        let u = relay(dir.path(), &[&cache.url], cache_key());
        assert!(u.fetch(&top.path).await.unwrap(), "{compression:?}");
        for want in [&dep, &top] {
            let got = u
                .store
                .path_info(&want.path, None)
                .await
                .unwrap()
                .expect("stored");
            assert_eq!((got.nar_hash, got.nar_size), (want.nar_hash, want.nar_size));
            assert_eq!(got.references, want.references);
            let names: Vec<&str> = got
                .sigs
                .iter()
                .filter_map(|s| s.split(':').next())
                .collect();
            assert_eq!(
                names,
                ["upstream-test-1", "relay-test-1"],
                "{compression:?}"
            );
        }
        let prov = std::fs::read_to_string(
            dir.path()
                .join(format!("meta/{}.prov", top.path.hash_part())),
        );
        let want = "signed key=upstream-test-1\n".to_owned();
        assert_eq!(prov.unwrap(), want);
        let _ = Provenance::Signed { key: want };
        let (_, mut nar) = u.store.open_nar(&top.path, None).await.unwrap();
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut nar, &mut bytes)
            .await
            .unwrap();
        assert_eq!(
            bytes,
            crate::testing::drv::source("top", b"refers to dep", &[]).1
        );
    }
}

#[tokio::test]
async fn a_corrupted_nar_is_not_stored_and_the_error_says_so() {
    let cache = TestCache::start(Compression::None).await;
    let info = cache.add("bad", b"hello upstream", &[]).await;
    let file = cache.nar_file(&info.path).await;
    let nar = std::fs::read(&file).unwrap();
    let at = nar.windows(5).position(|w| w == b"hello").unwrap();
    let mut bad = nar.clone();
    bad[at] = b'j';
    std::fs::write(&file, bad).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let u = relay(dir.path(), &[&cache.url], cache_key());
    let e = u.fetch(&info.path).await.unwrap_err();
    let msg = crate::error_chain(&*e);
    assert!(msg.contains("does not match"), "{msg}");
    assert!(msg.contains(info.path.as_str()), "{msg}");
    assert!(u.store.narinfo(&info.path, None).await.unwrap().is_none());
}

#[tokio::test]
async fn concurrent_fetches_of_one_path_download_it_once() {
    let cache = TestCache::start(Compression::Zstd).await;
    let info = cache.add("shared", &[42; 100_000], &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let u = relay(dir.path(), &[&cache.url], cache_key());
    cache.hold_nars();
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (u, p) = (u.clone(), info.path.clone());
            tokio::spawn(async move { u.fetch(&p).await })
        })
        .collect();
    // Every caller waits on the one download, held at the server (or, were
    // the fetches not shared, a second download arrives).
    let hash = info.path.hash_part();
    while !(cache.requests("/nar/") > 1 || cache.requests("/nar/") == 1 && u.waiting(hash) == 8) {
        tokio::task::yield_now().await;
    }
    cache.release_nars();
    for c in callers {
        assert!(c.await.unwrap().unwrap());
    }
    assert_eq!(cache.requests("/nar/"), 1);
    assert_eq!(
        cache.requests(&format!("/{}", info.path.hash_part())),
        1,
        "one narinfo request too"
    );
}

#[tokio::test]
async fn a_down_upstream_is_skipped_and_a_silent_one_times_out() {
    let cache = TestCache::start(Compression::Zstd).await;
    let info = cache.add("there", b"there", &[]).await;
    let (closed, _socket) = closed_upstream();
    let (silent, _listener) = silent_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let u = relay(dir.path(), &[&closed, &silent, &cache.url], cache_key());
    assert!(u.lookup(&info.path).await.is_some(), "the third answers");
    assert_eq!(u.down(), 2, "the closed port and the silent one");
    let absent = crate::testing::drv::store_path("absent", "absent");
    assert!(u.lookup(&absent).await.is_none());
    let asked = format!("/{}", absent.hash_part());
    assert_eq!(cache.requests(&asked), 1);
    assert!(u.lookup(&absent).await.is_none());
    assert_eq!(
        cache.requests(&asked),
        2,
        "not remembered while an upstream is down"
    );

    let alone = tempfile::tempdir().unwrap();
    let only_silent = relay(alone.path(), &[&silent], cache_key());
    assert!(
        !only_silent.fetch(&info.path).await.unwrap(),
        "a timeout is a miss"
    );
}

#[tokio::test]
async fn a_miss_is_remembered() {
    let cache = TestCache::start(Compression::Zstd).await;
    let dir = tempfile::tempdir().unwrap();
    let u = relay(dir.path(), &[&cache.url], cache_key());
    let absent = crate::testing::drv::store_path("absent", "absent");
    let asked = format!("/{}", absent.hash_part());
    assert!(u.lookup(&absent).await.is_none());
    assert!(
        u.lookup_many(std::slice::from_ref(&absent))
            .await
            .is_empty()
    );
    assert_eq!(cache.requests(&asked), 1);
}

#[tokio::test]
async fn a_nar_that_never_comes_fails_within_the_timeout() {
    let cache = TestCache::start(Compression::Zstd).await;
    let info = cache.add("late", b"late", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let u = relay(dir.path(), &[&cache.url], cache_key());
    cache.hold_nars();
    let e = u.fetch(&info.path).await.unwrap_err();
    let msg = crate::error_chain(&*e);
    assert!(msg.contains("did not answer a NAR request"), "{msg}");
    cache.release_nars();
    assert!(
        u.fetch(&info.path).await.unwrap(),
        "a later fetch tries again"
    );
}
