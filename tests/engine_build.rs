//! The build engine in-process (feature `testing`): real relay core and
//! sessions, fake backends speaking the real protocols. Happy paths,
//! dedup and a failing build.

use std::time::Duration;

use nix_relay::config::Protocol;
use nix_relay::testing::drv;
use nix_relay::testing::fake::{Outcome, Script};
use nix_relay::testing::harness::{SYSTEM, TestRelay, fake_backend};
use nix_relay::wire::build::BuildStatus;
use nix_relay::wire::hash::Sha256Hash;

const SYS: &str = SYSTEM;
const WAIT: Duration = Duration::from_secs(10);

fn one_backend(uri: &str) -> String {
    fake_backend("a", uri, "max_jobs = 4\n")
}

/// Uploads a source, builds a derivation on it, fetches the output; then a
/// second client gets it as a cache hit with no second fake build.
async fn build_fetch_then_cache_hit(client: Protocol, backend_uri: &str) {
    let script = Script::default().log(&["unpacking hello", "compiling hello"]);
    let t = TestRelay::start(&one_backend(backend_uri), &[("a", script)]).await;
    let (src, src_nar) = drv::source("hello-src", b"int main() {}", &[]);
    let (drv_path, d) = drv::derivation("hello", SYS, std::slice::from_ref(&src.path));
    let out = drv::out_path(&d);

    let mut c = t.client(client, "alice").await;
    c.upload(&src, &src_nar).await.unwrap();
    let res = c.build(&drv_path, &d).await.unwrap();
    assert_eq!(res.status, BuildStatus::Built, "log:\n{}", c.log());
    c.wait_log("compiling hello", WAIT).await;
    let nar = c.fetch(&out).await.unwrap();

    let fake = t.fake("a");
    let built = fake.info(&out).expect("the fake built the output");
    assert_eq!(Sha256Hash::digest(&nar), built.nar_hash);
    let stored = t.wait_stored(&out, WAIT).await;
    assert_eq!(
        (stored.nar_hash, stored.nar_size),
        (built.nar_hash, built.nar_size)
    );
    let rec = fake.record();
    assert_eq!(
        rec.uploaded,
        std::slice::from_ref(&src.path),
        "the input went to the fake"
    );
    assert_eq!(rec.builds_started, std::slice::from_ref(&drv_path));

    let mut c2 = t.client(client, "bob").await;
    let res = c2.build(&drv_path, &d).await.unwrap();
    assert_eq!(res.status, BuildStatus::AlreadyValid, "log:\n{}", c2.log());
    assert_eq!(c2.fetch(&out).await.unwrap(), nar);
    assert_eq!(fake.record().builds_started.len(), 1, "no second build");
    c.close().await.unwrap();
    c2.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_client_serve_backend_builds_logs_stores_and_caches() {
    build_fetch_then_cache_hit(Protocol::Serve, "fake://a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_client_worker_backend_builds_logs_stores_and_caches() {
    build_fetch_then_cache_hit(Protocol::Worker, "fake-ng://a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_client_serve_backend_builds_logs_stores_and_caches() {
    build_fetch_then_cache_hit(Protocol::Worker, "fake://a").await;
}

/// Three clients of mixed protocols build one fresh derivation at once:
/// one fake build, every client gets the same valid output (its narHash
/// the fake's), the other two say they attached.
async fn three_clients_share_one_build(uri: &str, protocols: [Protocol; 3]) {
    let script = Script::default()
        .log(&["slow build"])
        .taking(Duration::from_millis(500));
    let t = TestRelay::start(&one_backend(uri), &[("a", script)]).await;
    let (drv_path, d) = drv::derivation("shared", SYS, &[]);
    let out = drv::out_path(&d);
    let mut clients = Vec::new();
    for (i, p) in protocols.into_iter().enumerate() {
        clients.push(t.client(p, &format!("c{i}")).await);
    }
    let builds = clients.iter_mut().map(|c| {
        let (drv_path, d, out) = (&drv_path, &d, &out);
        async move {
            let r = c.build(drv_path, d).await.unwrap();
            assert!(r.status.is_success(), "{r:?}\nlog:\n{}", c.log());
            c.fetch(out).await.unwrap()
        }
    });
    let nars = futures_util::future::join_all(builds).await;
    let fake = t.fake("a");
    assert_eq!(
        fake.record().builds_started,
        std::slice::from_ref(&drv_path),
        "exactly one fake build"
    );
    let built = fake.info(&out).expect("the fake built the output");
    for nar in &nars {
        assert_eq!(
            Sha256Hash::digest(nar),
            built.nar_hash,
            "{uri}: a client got another NAR"
        );
    }
    assert_eq!(t.wait_stored(&out, WAIT).await.nar_hash, built.nar_hash);
    let attach =
        format!("attached to the build of '{drv_path}' already running for another client");
    let (attached, started): (Vec<_>, Vec<_>) =
        (clients.iter()).partition(|c| c.log().contains(&attach));
    assert_eq!(
        (attached.len(), started.len()),
        (2, 1),
        "{uri}: the other two attached"
    );
    // A client that attaches later reads the log from then on only.
    started[0].wait_log("slow build", WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_clients_share_one_serve_fake_build() {
    use Protocol::{Serve, Worker};
    three_clients_share_one_build("fake://a", [Serve, Worker, Serve]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_clients_share_one_worker_fake_build() {
    use Protocol::{Serve, Worker};
    three_clients_share_one_build("fake-ng://a", [Worker, Serve, Worker]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_build_reports_the_failure_and_the_fakes_log() {
    for (client, uri) in [
        (Protocol::Serve, "fake://a"),
        (Protocol::Worker, "fake-ng://a"),
    ] {
        let script = Script::default()
            .log(&["error: undefined reference to `main'"])
            .outcome(Outcome::Fail("builder failed with exit code 1".into()));
        let t = TestRelay::start(&one_backend(uri), &[("a", script)]).await;
        let (drv_path, d) = drv::derivation("broken", SYS, &[]);
        let mut c = t.client(client, "alice").await;
        let res = c.build(&drv_path, &d).await.unwrap();
        assert_eq!(res.status, BuildStatus::PermanentFailure, "{client}/{uri}");
        let msg = String::from_utf8_lossy(&res.error_msg);
        assert!(msg.contains("exit code 1"), "{msg}");
        c.wait_log("undefined reference", WAIT).await;
        assert!(t.stored(&drv::out_path(&d)).await.is_none());
        assert_eq!(
            t.fake("a").record().builds_finished,
            std::slice::from_ref(&drv_path)
        );
        // Kept for `nix log` (the cache's log/, served over HTTP).
        let deadline = tokio::time::Instant::now() + WAIT;
        let kept = loop {
            let kept = t.relay.store().build_log(&drv_path, None).await.unwrap();
            if kept.is_some() || tokio::time::Instant::now() > deadline {
                break kept.unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let kept = String::from_utf8_lossy(&kept);
        assert!(kept.contains("undefined reference"), "kept log: {kept}");
    }
}

/// Nix 2.26 over ssh-ng fetches a build's other outputs over a second
/// connection: every output a session reported built is valid and
/// servable at once from any session of that client, before the first
/// session fetched it or the relay stored it.
async fn outputs_are_servable_from_a_second_session(client: Protocol, backend_uri: &str) {
    let t = TestRelay::start(&one_backend(backend_uri), &[("a", Script::default())]).await;
    let (drv_path, d) = drv::multi_output("multi", SYS, &["out", "dev", "lib", "doc"]);
    let outs = d.output_paths().unwrap();

    let mut first = t.client(client, "alice").await;
    let res = first.build(&drv_path, &d).await.unwrap();
    assert_eq!(res.status, BuildStatus::Built, "log:\n{}", first.log());

    let mut second = t.client(client, "alice").await;
    let infos = second.path_infos(&outs).await.unwrap();
    assert_eq!(
        infos.len(),
        outs.len(),
        "every output valid for the second session"
    );
    let fake = t.fake("a");
    for out in &outs[1..] {
        let nar = second.fetch(out).await.unwrap();
        assert_eq!(Sha256Hash::digest(&nar), fake.info(out).unwrap().nar_hash);
    }
    let nar = first.fetch(&outs[0]).await.unwrap();
    assert_eq!(
        Sha256Hash::digest(&nar),
        fake.info(&outs[0]).unwrap().nar_hash
    );

    first.close().await.unwrap();
    second.close().await.unwrap();
    for out in &outs {
        t.wait_stored(out, WAIT).await;
    }
    assert_eq!(fake.record().builds_started.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_outputs_are_servable_from_a_second_session_at_once() {
    outputs_are_servable_from_a_second_session(Protocol::Worker, "fake-ng://a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_outputs_are_servable_from_a_second_session_at_once() {
    outputs_are_servable_from_a_second_session(Protocol::Serve, "fake://a").await;
}

/// Two different content-addressed derivations (floating outputs, no
/// output path yet) are refused with a message saying why, and never
/// share a flight or reach a backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floating_content_addressed_derivations_are_refused_clearly() {
    let t = TestRelay::start(&one_backend("fake-ng://a"), &[("a", Script::default())]).await;
    let mut c = t.client(Protocol::Worker, "alice").await;
    for name in ["ca-one", "ca-two"] {
        let (drv_path, mut d) = drv::derivation(name, SYS, &[]);
        d.outputs[0].path.clear();
        d.outputs[0].hash_algo = "r:sha256".into();
        let res = c.build(&drv_path, &d).await.unwrap();
        assert_eq!(res.status, BuildStatus::MiscFailure);
        let msg = String::from_utf8_lossy(&res.error_msg);
        assert!(msg.contains("__contentAddressed"), "{msg}");
    }
    assert!(t.fake("a").record().builds_started.is_empty());
}
