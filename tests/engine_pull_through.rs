//! The HTTP cache pulls through from upstream (feature `testing`; issue 16,
//! item 4): a narinfo only upstream has is answered at once as a live entry
//! of the relay's (signed by it, uncompressed, `nar/live/<hash>.nar`); the
//! NAR request fetches, streams what arrives to every reader from one
//! fetch, and stores it verified; later requests are served from the store.
//! A signed cache on loopback (`testing::upstream::TestCache`), the real core.

use std::time::Duration;

use nix_relay::http::cache::{HttpState, router, serve};
use nix_relay::http::client::http_request;
use nix_relay::outbound::{BaseUrl, Client};
use nix_relay::store::{Compression, NarInfo};
use nix_relay::testing::drv;
use nix_relay::testing::fake::Script;
use nix_relay::testing::harness::{TestRelay, fake_backend};
use nix_relay::testing::upstream::{TestCache, cache_key};
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::path_info::ValidPathInfo;

const WAIT: Duration = Duration::from_secs(20);

struct Served {
    t: TestRelay,
    base: String,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A relay with `cache` as its upstream, its HTTP cache on loopback.
async fn serve_relay(cache: &TestCache) -> Served {
    let config = format!(
        "{}\n[cache]\nupstream = [\"{}\"]\ntrusted_public_keys = [\"{}\"]\n",
        fake_backend("a", "fake://a", ""),
        cache.url,
        cache_key().public()
    );
    let t = TestRelay::start(&config, &[("a", Script::default())]).await;
    let mut state = HttpState::new(t.relay.store().root());
    state.upstream = t.relay.upstream().cloned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(serve(listener, router(state)));
    Served { t, base, server }
}

impl Served {
    async fn narinfo(&self, path: &ValidPathInfo) -> (u16, Option<NarInfo>) {
        let url = format!("{}/{}.narinfo", self.base, path.path.hash_part());
        let (status, body) = http_request("GET", &url).await.unwrap();
        (status, NarInfo::parse(&body).ok())
    }

    /// GETs `rel` with the relay's own HTTP client: status and the whole
    /// body, or the error a cut-short body gives.
    async fn get(&self, rel: &str) -> (u16, Result<Vec<u8>, String>) {
        let reply = Client::new(WAIT)
            .get(&BaseUrl::parse(&self.base).unwrap(), rel)
            .await
            .unwrap();
        let status = reply.status;
        let body = reply.bytes(1 << 30, WAIT).await;
        (status, body.map_err(|e| nix_relay::error_chain(&e)))
    }
}

#[tokio::test]
async fn a_narinfo_only_upstream_has_is_served_at_once_as_a_live_entry_signed_by_the_relay() {
    let cache = TestCache::start(Compression::Xz).await;
    let dep = cache.add("dep", b"dep", &[]).await;
    let up = cache.add("served", b"served", std::slice::from_ref(&dep.path));
    let up = up.await;
    let s = serve_relay(&cache).await;
    let (status, info) = s.narinfo(&up).await;
    assert_eq!(status, 200);
    let info = info.expect("a narinfo");
    assert_eq!((&info.store_path, info.nar_hash), (&up.path, up.nar_hash));
    assert_eq!(info.references, vec![dep.path.clone()]);
    let hash = up.path.hash_part();
    assert_eq!(info.url, format!("nar/live/{hash}.nar"));
    assert_eq!(info.compression, "none");
    let relay_key = s.t.relay.store().settings().signer.clone().unwrap();
    let fp = nix_relay::store::fingerprint(&up);
    assert!(
        info.sigs
            .iter()
            .any(|sig| relay_key.public().verifies(&fp, sig))
    );
    assert!(
        info.sigs
            .iter()
            .any(|sig| sig.starts_with("upstream-test-1:"))
    );
    assert_eq!(
        cache.requests("/nar/"),
        0,
        "a narinfo alone fetches nothing"
    );
    assert!(s.t.stored(&up.path).await.is_none());
}

#[tokio::test]
async fn the_live_nar_is_fetched_once_stored_verified_and_then_served_from_the_store() {
    let cache = TestCache::start(Compression::Xz).await;
    let dep = cache.add("dep", b"dep", &[]).await;
    let up = cache.add(
        "served",
        b"served by the relay",
        std::slice::from_ref(&dep.path),
    );
    let up = up.await;
    let s = serve_relay(&cache).await;
    let (_, info) = s.narinfo(&up).await;
    let (status, body) = s.get(&info.unwrap().url).await;
    assert_eq!(status, 200);
    assert_eq!(Sha256Hash::digest(&body.unwrap()), up.nar_hash);
    assert_eq!(cache.requests("/nar/"), 1);
    let stored = s.t.wait_stored(&up.path, WAIT).await;
    assert_eq!(stored.nar_hash, up.nar_hash);
    assert!(
        s.t.stored(&dep.path).await.is_none(),
        "a reference waits until asked for"
    );

    let (status, info) = s.narinfo(&up).await;
    assert_eq!(status, 200);
    let info = info.unwrap();
    assert!(
        info.url.ends_with(".nar.zst"),
        "the stored entry now: {}",
        info.url
    );
    let live = format!("nar/live/{}.nar", up.path.hash_part());
    let (status, body) = s.get(&live).await;
    assert_eq!(
        status, 200,
        "a live URL a substituter remembers still works"
    );
    assert_eq!(Sha256Hash::digest(&body.unwrap()), up.nar_hash);
    assert_eq!(cache.requests("/nar/"), 1, "from the store, not upstream");
}

#[tokio::test]
async fn readers_that_come_while_a_nar_is_fetched_share_one_fetch() {
    let cache = TestCache::start(Compression::Zstd).await;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let up = cache.add("big", &big, &[]).await;
    let s = serve_relay(&cache).await;
    cache.hold_nars();
    let live = format!("nar/live/{}.nar", up.path.hash_part());
    let readers: Vec<_> = (0..3).map(|_| s.get(&live)).collect();
    let release = async {
        while cache.requests("/nar/") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cache.release_nars();
    };
    let (got, ()) = tokio::join!(futures_util::future::join_all(readers), release);
    for (status, body) in got {
        assert_eq!(status, 200);
        assert_eq!(Sha256Hash::digest(&body.unwrap()), up.nar_hash);
    }
    assert_eq!(cache.requests("/nar/"), 1, "one fetch for three readers");
    s.t.wait_stored(&up.path, WAIT).await;
}

#[tokio::test]
async fn a_nar_upstream_serves_broken_is_never_a_whole_body_and_never_stored() {
    let cache = TestCache::start(Compression::None).await;
    let up = cache
        .add("broken", b"the contents upstream signed", &[])
        .await;
    let file = cache.nar_file(&up.path).await;
    let nar = std::fs::read(&file).unwrap();
    let cut = nar.len() - 40;
    std::fs::write(&file, [&nar[..cut], &[0xff; 40][..]].concat()).unwrap();
    let s = serve_relay(&cache).await;
    let live = format!("nar/live/{}.nar", up.path.hash_part());
    let (status, body) = s.get(&live).await;
    assert!(
        status != 200 || body.is_err(),
        "status {status}, a whole body: {body:?}"
    );
    assert!(s.t.stored(&up.path).await.is_none());
    let (status, info) = s.narinfo(&up).await;
    assert_eq!(status, 200);
    assert_eq!(
        info.unwrap().compression,
        "none",
        "still only the live entry"
    );
}

#[tokio::test]
async fn a_path_no_upstream_has_is_a_quick_remembered_404() {
    let cache = TestCache::start(Compression::Zstd).await;
    let s = serve_relay(&cache).await;
    let absent = drv::store_path("absent", "absent");
    let hash = absent.hash_part();
    let url = format!("{}/{hash}.narinfo", s.base);
    for _ in 0..2 {
        assert_eq!(http_request("GET", &url).await.unwrap().0, 404);
    }
    assert_eq!(
        cache.requests(&format!("/{hash}")),
        1,
        "a miss is remembered"
    );
    assert_eq!(s.get(&format!("nar/live/{hash}.nar")).await.0, 404);
    assert_eq!(s.get("nar/live/not-a-hash.nar").await.0, 404);
}

#[tokio::test]
async fn a_substituter_gets_the_first_bytes_before_upstream_has_sent_the_rest() {
    use tokio::io::AsyncReadExt;
    let cache = TestCache::start(Compression::None).await;
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let up = cache.add("streamed", &big, &[]).await;
    let s = serve_relay(&cache).await;
    cache.hold_nar_tails();
    let live = format!("nar/live/{}.nar", up.path.hash_part());
    let reply = Client::new(WAIT)
        .get(&BaseUrl::parse(&s.base).unwrap(), &live)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let mut body = reply.into_reader(WAIT);
    let mut head = vec![0; 4096];
    body.read_exact(&mut head).await.unwrap();
    assert!(
        s.t.stored(&up.path).await.is_none(),
        "the first bytes came while upstream still held the rest"
    );
    cache.release_nars();
    let mut rest = Vec::new();
    body.read_to_end(&mut rest).await.unwrap();
    head.extend_from_slice(&rest);
    assert_eq!(Sha256Hash::digest(&head), up.nar_hash);
    s.t.wait_stored(&up.path, WAIT).await;
}

#[tokio::test]
async fn a_reader_that_falls_behind_the_window_goes_on_from_the_stored_entry() {
    use tokio::io::AsyncReadExt;
    let cache = TestCache::start(Compression::None).await;
    let size = 3 * nix_relay::upstream::LIVE_WINDOW as u32;
    let big: Vec<u8> = (0..size).map(|i| (i * 31 % 253) as u8).collect();
    let up = cache.add("slow-reader", &big, &[]).await;
    let s = serve_relay(&cache).await;
    let live = format!("nar/live/{}.nar", up.path.hash_part());
    let reply = Client::new(WAIT)
        .get(&BaseUrl::parse(&s.base).unwrap(), &live)
        .await
        .unwrap();
    let mut body = reply.into_reader(WAIT);
    let mut got = vec![0; 4096];
    body.read_exact(&mut got).await.unwrap();
    // the reader pauses; the fetch goes on to the end without it
    s.t.wait_stored(&up.path, WAIT).await;
    body.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len() as u64, up.nar_size);
    assert_eq!(Sha256Hash::digest(&got), up.nar_hash);
    assert_eq!(cache.requests("/nar/"), 1);
}

#[tokio::test]
async fn a_builds_inputs_are_fetched_side_by_side_once_its_backend_asks_the_relay_for_one() {
    let cache = TestCache::start(Compression::Zstd).await;
    let a = cache.add("a", b"bottom", &[]).await;
    let b = cache
        .add("b", b"middle", std::slice::from_ref(&a.path))
        .await;
    let c = cache.add("c", b"top", std::slice::from_ref(&b.path)).await;
    let s = serve_relay(&cache).await;
    let up = s.t.relay.upstream().unwrap().clone();
    let paths = vec![a.path.clone(), b.path.clone(), c.path.clone()];
    let expected = up.expect(paths);
    assert_eq!(
        cache.requests("/nar/"),
        0,
        "nothing before the backend asks"
    );
    // a substituter asks for the top first (its references come later)
    assert_eq!(s.narinfo(&c).await.0, 200);
    for p in [&a, &b, &c] {
        s.t.wait_stored(&p.path, WAIT).await;
    }
    assert_eq!(cache.requests("/nar/"), 3, "each once");
    drop(expected);
    let d = cache.add("d", b"not an input", &[]).await;
    assert_eq!(s.narinfo(&d).await.0, 200);
    assert_eq!(
        cache.requests("/nar/"),
        3,
        "no longer expected: nothing fetched"
    );
}
