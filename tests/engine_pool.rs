//! Warm backend sessions in-process (feature `testing`): a build after
//! another reuses the pooled session instead of connecting again.

use std::time::Duration;

use nix_relay::config::Protocol;
use nix_relay::testing::drv;
use nix_relay::testing::fake::Script;
use nix_relay::testing::harness::{SYSTEM, TestRelay, fake_backend};
use nix_relay::wire::build::BuildStatus;

const SYS: &str = SYSTEM;
const WAIT: Duration = Duration::from_secs(10);

/// Waits until the pool holds `n` idle sessions of backend `name`.
async fn wait_idle(t: &TestRelay, name: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while t.relay.pool().idle_count(name) != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: {} idle sessions, not {n}",
            t.relay.pool().idle_count(name)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_build_reuses_the_warm_backend_session() {
    for (client, scheme) in [(Protocol::Serve, "fake"), (Protocol::Worker, "fake-ng")] {
        let config = fake_backend("a", &format!("{scheme}://a"), "");
        let t = TestRelay::start(&config, &[("a", Script::default())]).await;
        let fake = t.fake("a");
        for (i, name) in ["leaf-1", "leaf-2"].into_iter().enumerate() {
            let (p, d) = drv::derivation(name, SYS, &[]);
            let mut c = t.client(client, "lab").await;
            let res = c.build(&p, &d).await.unwrap();
            assert_eq!(res.status, BuildStatus::Built, "log:\n{}", c.log());
            assert!(!c.fetch(&drv::out_path(&d)).await.unwrap().is_empty());
            c.close().await.unwrap();
            // The build's session goes back to the pool once its outputs
            // are in the relay's store.
            wait_idle(&t, "a", 1).await;
            assert_eq!(fake.record().builds_finished.len(), i + 1);
        }
        let rec = fake.record();
        assert_eq!(
            (rec.connections, rec.handshakes),
            (1, 1),
            "{scheme}: one backend session for both builds: {rec:?}"
        );
    }
}
