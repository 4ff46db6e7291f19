//! The relay store as a cache, in-process (feature `testing`): a
//! derivation built once is answered from the relay store for every later
//! client, whatever its protocol, with no backend build and the output
//! served from the relay's own copy.

use std::time::Duration;

use nix_relay::config::Protocol;
use nix_relay::testing::drv;
use nix_relay::testing::fake::Script;
use nix_relay::testing::harness::{SYSTEM, TestRelay, fake_backend};
use nix_relay::wire::build::BuildStatus;
use nix_relay::wire::hash::Sha256Hash;

const SYS: &str = SYSTEM;
const WAIT: Duration = Duration::from_secs(10);
const HIT: &str = "nix-relay: cache hit: every output is in the relay store";

/// Builds once from a serve client, then the fake loses the output; later
/// clients of both protocols, and the first client's name again (a client
/// that deleted its copy), get cache hits and the same NAR.
async fn later_clients_hit_the_cache(uri: &str) {
    let config = fake_backend("a", uri, "");
    let t = TestRelay::start(&config, &[("a", Script::default())]).await;
    let (drv_path, d) = drv::derivation("cached", SYS, &[]);
    let out = drv::out_path(&d);
    let mut first = t.client(Protocol::Serve, "alice").await;
    let res = first.build(&drv_path, &d).await.unwrap();
    assert_eq!(res.status, BuildStatus::Built, "log:\n{}", first.log());
    let nar = first.fetch(&out).await.unwrap();
    first.close().await.unwrap();
    let stored = t.wait_stored(&out, WAIT).await;
    assert_eq!(stored.nar_hash, Sha256Hash::digest(&nar));
    // From here on only the relay store has the output.
    let fake = t.fake("a");
    fake.forget(&out);
    let later = [
        (Protocol::Worker, "bob"),
        (Protocol::Serve, "carol"),
        (Protocol::Worker, "alice"),
        (Protocol::Serve, "alice"),
    ];
    for (protocol, name) in later {
        let mut c = t.client(protocol, name).await;
        let res = c.build(&drv_path, &d).await.unwrap();
        assert_eq!(
            res.status,
            BuildStatus::AlreadyValid,
            "{protocol} {name}:\n{}",
            c.log()
        );
        c.wait_log(HIT, WAIT).await;
        let got = c.fetch(&out).await.unwrap();
        assert_eq!(
            Sha256Hash::digest(&got),
            stored.nar_hash,
            "{protocol} {name}"
        );
        c.close().await.unwrap();
    }
    assert_eq!(fake.record().builds_started, [drv_path], "no second build");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_built_derivation_is_a_cache_hit_for_every_later_client_serve_backend() {
    later_clients_hit_the_cache("fake://a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_built_derivation_is_a_cache_hit_for_every_later_client_worker_backend() {
    later_clients_hit_the_cache("fake-ng://a").await;
}
