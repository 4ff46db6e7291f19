//! The build engine's fault paths in-process (feature `testing`): retry on
//! another backend when one is unreachable or dies mid-build, and
//! cancellation of the backend build when its client goes away, a cut or
//! garbled output download; the relay store stays consistent throughout.

use std::time::Duration;

use nix_relay::config::Protocol;
use nix_relay::error_chain;
use nix_relay::testing::drv;
use nix_relay::testing::fake::{Connect, Outcome, Script};
use nix_relay::testing::harness::{SYSTEM, TestRelay, fake_backend};
use nix_relay::wire::build::BuildStatus;
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::nar::{NarNode, encode_nar};

const SYS: &str = SYSTEM;
const WAIT: Duration = Duration::from_secs(10);

/// `a` (fast, so placed first) and `b`, both fakes of the given protocol.
fn two_backends(scheme: &str) -> String {
    let mut s = String::new();
    for (name, speed) in [("a", 4.0), ("b", 1.0)] {
        let extra = format!("speed_factor = {speed}\nconnect_timeout = \"1s\"\n");
        s += &fake_backend(name, &format!("{scheme}://{name}"), &extra);
    }
    s
}

/// `a` fails as `broken` scripts it, while a client of protocol `client`
/// builds on a 1 MiB input it uploaded; the build must succeed on `b`
/// (output there, not on `a`), `a` be marked down and the relay store be
/// consistent.
async fn retried_on_b(client: Protocol, scheme: &str, broken: Script) -> TestRelay {
    let t = TestRelay::start(
        &two_backends(scheme),
        &[("a", broken), ("b", Script::default())],
    )
    .await;
    let (src, src_nar) = drv::source("big-src", &[7u8; 1 << 20], &[]);
    let (drv_path, d) = drv::derivation("retried", SYS, std::slice::from_ref(&src.path));
    let mut c = t.client(client, "alice").await;
    c.upload(&src, &src_nar).await.unwrap();
    let res = c.build(&drv_path, &d).await.unwrap();
    assert_eq!(res.status, BuildStatus::Built, "log:\n{}", c.log());
    c.wait_log("retrying elsewhere", WAIT).await;
    assert_eq!(t.fake("b").record().builds_started, [drv_path]);
    assert!(t.fake("a").record().connections >= 1, "a was tried first");
    assert_eq!(t.backend_state("a"), "down");
    assert_eq!(t.backend_state("b"), "up");
    let out = drv::out_path(&d);
    let nar = c.fetch(&out).await.unwrap();
    assert_eq!(
        Some(Sha256Hash::digest(&nar)),
        t.fake("b").info(&out).map(|i| i.nar_hash)
    );
    assert!(!t.fake("a").has(&out), "the output is on the failed a");
    t.wait_stored(&out, WAIT).await;
    assert_eq!(t.assert_store_consistent(WAIT).await, 2, "input and output");
    t
}

/// Each client protocol with each backend protocol.
const PAIRS: [(Protocol, &str); 4] = [
    (Protocol::Serve, "fake"),
    (Protocol::Worker, "fake-ng"),
    (Protocol::Serve, "fake-ng"),
    (Protocol::Worker, "fake"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_is_marked_down_and_the_build_retries_elsewhere() {
    for scheme in ["fake", "fake-ng"] {
        let refuse = Script::default().connect(Connect::Refuse);
        let t = retried_on_b(Protocol::Serve, scheme, refuse).await;
        assert!(t.fake("a").record().builds_started.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_cut_mid_build_is_marked_down_and_the_build_retries_elsewhere() {
    for (client, scheme) in PAIRS {
        let cut = Script::default().log(&["half way"]).outcome(Outcome::Cut);
        let t = retried_on_b(client, scheme, cut).await;
        let rec = t.fake("a").record();
        assert_eq!(rec.builds_started.len(), 1);
        assert!(rec.builds_finished.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_cut_mid_upload_is_marked_down_and_the_build_retries_elsewhere() {
    for (client, scheme) in PAIRS {
        let cut = Script::default().cut_upload_after(300 << 10);
        let t = retried_on_b(client, scheme, cut).await;
        let rec = t.fake("a").record();
        assert!(
            rec.uploaded.is_empty() && rec.builds_started.is_empty(),
            "{rec:?}"
        );
        assert!(rec.bytes_received >= 300 << 10, "{rec:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_hanging_in_its_handshake_times_out_and_the_build_retries_elsewhere() {
    let hang = Script::default().connect(Connect::HangHandshake);
    let t = retried_on_b(Protocol::Serve, "fake", hang).await;
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
        let within = Duration::from_secs(5);
        let rec = fake
            .wait_for("cancelled", within, |r| r.builds_cancelled.len() == 1)
            .await;
        assert!(rec.builds_finished.is_empty());
        assert!(
            t.fake("b").record().builds_started.is_empty(),
            "not retried"
        );
    }
}

fn one_backend(uri: &str) -> String {
    fake_backend("a", uri, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_cut_mid_download_fails_the_client_stores_nothing_and_a_rebuild_succeeds() {
    let big = NarNode::Regular {
        executable: false,
        contents: vec![3u8; 1 << 20],
    };
    for (client, scheme) in PAIRS {
        let good = Script::default().output("out", big.clone());
        let cut = good.clone().cut_output_after(300 << 10);
        let t = TestRelay::start(&one_backend(&format!("{scheme}://a")), &[("a", cut)]).await;
        let (drv_path, d) = drv::derivation("downloaded", SYS, &[]);
        let out = drv::out_path(&d);
        let mut c = t.client(client, "alice").await;
        let res = c.build(&drv_path, &d).await.unwrap();
        assert_eq!(res.status, BuildStatus::Built, "log:\n{}", c.log());
        let fetched = tokio::time::timeout(WAIT, c.fetch(&out)).await;
        let err = fetched
            .expect("the client hung")
            .expect_err("a cut NAR was accepted");
        eprintln!("{client}/{scheme}: the client got: {}", error_chain(&err));
        assert!(t.stored(&out).await.is_none(), "a cut output was stored");
        assert_eq!(t.assert_store_consistent(WAIT).await, 0);

        t.fake("a").set_script(good);
        let mut c2 = t.client(client, "bob").await;
        let res = c2.build(&drv_path, &d).await.unwrap();
        assert!(res.status.is_success(), "{res:?}\nlog:\n{}", c2.log());
        assert_eq!(c2.fetch(&out).await.unwrap(), encode_nar(&big));
        t.wait_stored(&out, WAIT).await;
        assert_eq!(t.assert_store_consistent(WAIT).await, 1);
    }
}

/// A client handshake (`serve`: 2.6; `serve-huge`: 2.6 then
/// QueryValidPaths of 2^60 paths; `worker`: 1.21), then an unknown op and
/// 64 KiB of seeded pseudo-random bytes.
fn garbage(kind: &str) -> Vec<u8> {
    let head: &[u64] = match kind {
        "serve" => &[0x390C9DEB, 0x206],
        "serve-huge" => &[0x390C9DEB, 0x206, 1, 0, 0, 1 << 60],
        _ => &[0x6E697863, 0x115, 0, 0],
    };
    let mut b: Vec<u8> = head.iter().flat_map(|w| w.to_le_bytes()).collect();
    b.extend(0xDEADBEEFu64.to_le_bytes());
    let mut x = 9u64;
    b.extend((0..65536).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_handshake_ends_the_session_with_an_error_and_spares_other_builds() {
    let slow = Script::default().taking(Duration::from_millis(800));
    let t = TestRelay::start(&one_backend("fake://a"), &[("a", slow)]).await;
    let (drv_path, d) = drv::derivation("bystander", SYS, &[]);
    let mut c = t.client(Protocol::Worker, "bob").await;
    let building = tokio::spawn(async move { (c.build(&drv_path, &d).await, c) });
    t.fake("a")
        .wait_for("building", WAIT, |r| r.builds_started.len() == 1)
        .await;
    for (kind, protocol, why) in [
        ("serve", Protocol::Serve, "unknown command 3735928559"),
        ("serve-huge", Protocol::Serve, "exceeds the limit"),
        ("worker", Protocol::Worker, "unknown command 3735928559"),
    ] {
        let raw = t.raw_session(protocol, "mallory");
        let end = raw.feed(&garbage(kind), WAIT).await;
        let error = end
            .error
            .unwrap_or_else(|| panic!("{kind}: the session ended cleanly"));
        eprintln!("{kind}: session failed: {error}; stderr: {}", end.stderr);
        assert!(error.contains(why), "{kind}: {error}");
    }
    let (res, c) = building.await.unwrap();
    let res = res.unwrap();
    assert_eq!(res.status, BuildStatus::Built, "log:\n{}", c.log());
    assert_eq!(t.fake("a").record().builds_finished.len(), 1);
    assert_eq!(t.backend_state("a"), "up");
}

/// A backend whose output NAR is not what it declared: a garbled
/// `contents` byte (the NAR parses, its hash is wrong) or a garbled magic
/// (it does not parse). Either way the relay stores nothing and the client
/// cannot take the bytes for the path: it gets an error, or (the hash is
/// only known once every byte went out) bytes whose hash is not the
/// declared one, which Nix checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_output_from_the_backend_is_not_stored_and_the_client_cannot_take_it() {
    let big = NarNode::Regular {
        executable: false,
        contents: vec![5u8; 1 << 20],
    };
    let nar_len = encode_nar(&big).len() as u64;
    for (what, at) in [("contents", nar_len - 100), ("magic", 10)] {
        for (client, scheme) in PAIRS {
            let bad = Script::default()
                .output("out", big.clone())
                .garble_output_at(at);
            let t = TestRelay::start(&one_backend(&format!("{scheme}://a")), &[("a", bad)]).await;
            let (drv_path, d) = drv::derivation(&format!("garbled-{what}"), SYS, &[]);
            let out = drv::out_path(&d);
            let mut c = t.client(client, "alice").await;
            let res = c.build(&drv_path, &d).await.unwrap();
            assert_eq!(res.status, BuildStatus::Built, "log:\n{}", c.log());
            let declared = t.fake("a").info(&out).unwrap().nar_hash;
            let fetched = tokio::time::timeout(WAIT, c.fetch(&out)).await;
            match fetched.expect("the client hung") {
                Err(e) => eprintln!(
                    "{what} {client}/{scheme}: the client got: {}",
                    error_chain(&e)
                ),
                Ok(nar) => {
                    assert_eq!(what, "contents", "a NAR that does not parse went out whole");
                    assert_ne!(
                        Sha256Hash::digest(&nar),
                        declared,
                        "{what} {client}/{scheme}"
                    );
                }
            }
            assert!(
                t.stored(&out).await.is_none(),
                "{what} {client}/{scheme}: stored"
            );
            assert_eq!(t.assert_store_consistent(WAIT).await, 0);
        }
    }
}
