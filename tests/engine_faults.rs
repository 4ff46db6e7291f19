//! The build engine's fault paths in-process (feature `testing`): retry on
//! another backend when one is unreachable or dies mid-build, and
//! cancellation of the backend build when its client goes away.

use std::time::Duration;

use nix_relay::config::Protocol;
use nix_relay::testing::drv;
use nix_relay::testing::fake::{Connect, Outcome, Script};
use nix_relay::testing::harness::TestRelay;
use nix_relay::wire::build::BuildStatus;

const SYS: &str = "x86_64-linux";
const WAIT: Duration = Duration::from_secs(10);

/// `a` (fast, so placed first) and `b`, both fakes of the given protocol.
fn two_backends(scheme: &str) -> String {
    let mut s = String::new();
    for (name, speed) in [("a", 4.0), ("b", 1.0)] {
        s += &format!(
            "[[backend]]\nname = \"{name}\"\nuri = \"{scheme}://{name}\"\nsystems = [\"{SYS}\"]\n\
             speed_factor = {speed}\nconnect_timeout = \"1s\"\n"
        );
    }
    s
}

/// `a` fails as `broken` scripts it; the build must succeed on `b` and
/// `a` be marked down.
async fn retried_on_b(scheme: &str, broken: Script) -> TestRelay {
    let t = TestRelay::start(
        &two_backends(scheme),
        &[("a", broken), ("b", Script::default())],
    )
    .await;
    let (src, src_nar) = drv::source("big-src", &[7u8; 8192], &[]);
    let (drv_path, d) = drv::derivation("retried", SYS, std::slice::from_ref(&src.path));
    let mut c = t.client(Protocol::Serve, "alice").await;
    c.upload(&src, &src_nar).await.unwrap();
    let res = c.build(&drv_path, &d).await.unwrap();
    assert_eq!(res.status, BuildStatus::Built, "log:\n{}", c.log());
    c.wait_log("retrying elsewhere", WAIT).await;
    assert_eq!(t.fake("b").record().builds_started, [drv_path]);
    assert!(t.fake("a").record().connections >= 1, "a was tried first");
    assert_eq!(t.backend_state("a"), "down");
    assert_eq!(t.backend_state("b"), "up");
    let nar = c.fetch(&drv::out_path(&d)).await.unwrap();
    assert!(!nar.is_empty());
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_is_marked_down_and_the_build_retries_elsewhere() {
    for scheme in ["fake", "fake-ng"] {
        let t = retried_on_b(scheme, Script::default().connect(Connect::Refuse)).await;
        assert!(t.fake("a").record().builds_started.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_cut_mid_build_is_marked_down_and_the_build_retries_elsewhere() {
    for scheme in ["fake", "fake-ng"] {
        let cut = Script::default().log(&["half way"]).outcome(Outcome::Cut);
        let t = retried_on_b(scheme, cut).await;
        let rec = t.fake("a").record();
        assert_eq!(rec.builds_started.len(), 1);
        assert!(rec.builds_finished.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_cut_mid_upload_is_marked_down_and_the_build_retries_elsewhere() {
    for scheme in ["fake", "fake-ng"] {
        let t = retried_on_b(scheme, Script::default().cut_upload_after(1000)).await;
        let rec = t.fake("a").record();
        assert!(
            rec.uploaded.is_empty() && rec.builds_started.is_empty(),
            "{rec:?}"
        );
        assert!(rec.bytes_received >= 1000, "{rec:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_hanging_in_its_handshake_times_out_and_the_build_retries_elsewhere() {
    let hang = Script::default().connect(Connect::HangHandshake);
    let t = retried_on_b("fake", hang).await;
    assert_eq!(t.fake("a").record().handshakes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_client_cancels_the_backend_build() {
    for (client, scheme) in [(Protocol::Serve, "fake"), (Protocol::Worker, "fake-ng")] {
        let hang = Script::default().log(&["forever"]).outcome(Outcome::Hang);
        let t = TestRelay::start(
            &two_backends(scheme),
            &[("a", hang), ("b", Script::default())],
        )
        .await;
        let (drv_path, d) = drv::derivation("endless", SYS, &[]);
        let mut c = t.client(client, "alice").await;
        let building = tokio::spawn(async move { c.build(&drv_path, &d).await });
        let fake = t.fake("a");
        fake.wait_for("building", WAIT, |r| r.builds_started.len() == 1)
            .await;
        building.abort();
        let rec = fake
            .wait_for("cancelled", WAIT, |r| r.builds_cancelled.len() == 1)
            .await;
        assert!(rec.builds_finished.is_empty());
        assert!(
            t.fake("b").record().builds_started.is_empty(),
            "not retried"
        );
    }
}
