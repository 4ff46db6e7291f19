//! The relay's own build watchdog in-process (feature `testing`): a
//! wedged backend (mid-build, sending nothing) cannot hang the client; the
//! relay gives the build up per the client's max-silent-time or timeout
//! and drops the backend's session, which cancels its build.
//!
//! The watchdog's grace beyond the client's limit (10 s in production) is
//! shortened for this whole test binary.

use std::time::{Duration, Instant};

use nix_relay::config::Protocol;
use nix_relay::testing::drv;
use nix_relay::testing::fake::{Outcome, Script};
use nix_relay::testing::harness::{SYSTEM, TestRelay, fake_backend};
use nix_relay::testing::knobs;
use nix_relay::wire::build::{BuildOptions, BuildStatus};

const SYS: &str = SYSTEM;
const WAIT: Duration = Duration::from_secs(5);

/// Builds on a fake that logs a line and then hangs, with the client's
/// `options`; the build must end `TimedOut` saying `why` (to the client's
/// log too) and the fake's build be cancelled.
async fn wedged_backend_times_out(options: BuildOptions, why: &str) {
    knobs::set_watchdog_grace(Duration::from_millis(200));
    for (client, scheme) in [(Protocol::Serve, "fake"), (Protocol::Worker, "fake-ng")] {
        let wedged = Script::default().log(&["started"]).outcome(Outcome::Hang);
        let config = fake_backend("a", &format!("{scheme}://a"), "");
        let t = TestRelay::start(&config, &[("a", wedged)]).await;
        let (drv_path, d) = drv::derivation("wedged", SYS, &[]);
        let mut c = t.client(client, "alice").await;
        let t0 = Instant::now();
        let res = tokio::time::timeout(WAIT, c.build_with(&drv_path, &d, options))
            .await
            .expect("the client hung on a wedged backend")
            .unwrap();
        assert_eq!(
            res.status,
            BuildStatus::TimedOut,
            "{client}/{scheme}: {res:?}"
        );
        let msg = String::from_utf8_lossy(&res.error_msg);
        assert!(msg.contains(why), "{msg}");
        c.wait_log(why, WAIT).await;
        let rec = t.fake("a").record();
        assert_eq!(rec.builds_started, std::slice::from_ref(&drv_path));
        t.fake("a")
            .wait_for("cancelled", WAIT, |r| {
                r.builds_cancelled == [drv_path.clone()]
            })
            .await;
        assert!(t.stored(&drv::out_path(&d)).await.is_none());
        eprintln!("{client}/{scheme}: timed out after {:?}", t0.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedged_backend_is_timed_out_per_the_clients_max_silent_time_and_its_build_cancelled() {
    let options = BuildOptions {
        max_silent_time: 1,
        ..BuildOptions::default()
    };
    wedged_backend_times_out(options, "no output for 1 seconds").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedged_backend_is_timed_out_per_the_clients_build_timeout_and_its_build_cancelled() {
    let options = BuildOptions {
        build_timeout: 1,
        ..BuildOptions::default()
    };
    wedged_backend_times_out(options, "timed out after 1 seconds").await;
}

/// A client that sends no limits (an ssh-ng build hook never does) gets
/// the relay's `[limits]` ones; a `[[client]]` entry's own win over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sending_no_limits_get_the_relays_and_their_own_win() {
    knobs::set_watchdog_grace(Duration::from_millis(200));
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGsl9bcFHoLUq3ANWXnbW6LpSeLX/vfMeDfPmkl2aNB1";
    let config = format!(
        "[limits]\nbuild_timeout = \"1s\"\n\n[[client]]\nname = \"patient\"\nkey = \"{key}\"\nbuild_timeout = \"0s\"\nmax_silent_time = \"2s\"\n\n{}",
        fake_backend("a", "fake-ng://a", "max_jobs = 4\n")
    );
    let wedged = Script::default().log(&["started"]).outcome(Outcome::Hang);
    let t = TestRelay::start(&config, &[("a", wedged)]).await;

    let (drv_path, d) = drv::derivation("limits-default", SYS, &[]);
    let mut c = t.client(Protocol::Worker, "alice").await;
    let res = tokio::time::timeout(WAIT, c.build(&drv_path, &d))
        .await
        .expect("hung")
        .unwrap();
    assert_eq!(res.status, BuildStatus::TimedOut, "{res:?}");
    assert!(String::from_utf8_lossy(&res.error_msg).contains("timed out after 1 seconds"));

    let (drv_path, d) = drv::derivation("limits-own", SYS, &[]);
    let mut p = t.client(Protocol::Worker, "patient").await;
    let res = tokio::time::timeout(WAIT, p.build(&drv_path, &d))
        .await
        .expect("hung")
        .unwrap();
    assert_eq!(res.status, BuildStatus::TimedOut, "{res:?}");
    let msg = String::from_utf8_lossy(&res.error_msg);
    assert!(
        msg.contains("no output for 2 seconds"),
        "its own max_silent_time: {msg}"
    );

    // A client that sends its own limit keeps it.
    let (drv_path, d) = drv::derivation("limits-sent", SYS, &[]);
    let sent = BuildOptions {
        build_timeout: 3,
        ..BuildOptions::default()
    };
    let res = tokio::time::timeout(WAIT, c.build_with(&drv_path, &d, sent))
        .await
        .expect("hung")
        .unwrap();
    let msg = String::from_utf8_lossy(&res.error_msg);
    assert!(
        msg.contains("timed out after 3 seconds"),
        "the client's own, not the relay's 1 s: {msg}"
    );
}
