//! Load in-process (feature `testing`): 100 concurrent client sessions,
//! serve and worker, over three fake backends (serve and worker), each
//! uploading a source, building a fresh derivation on it and fetching the
//! output. One test: it measures the process's peak RSS.

use std::collections::HashSet;
use std::time::Duration;

use nix_relay::config::Protocol;
use nix_relay::testing::drv;
use nix_relay::testing::fake::Script;
use nix_relay::testing::harness::{SYSTEM, TestRelay, fake_backend};
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::store_path::StorePath;

const SYS: &str = SYSTEM;
const WAIT: Duration = Duration::from_secs(10);
const SESSIONS: usize = 100;
const BACKENDS: [(&str, &str); 3] = [("a", "fake"), ("b", "fake-ng"), ("c", "fake")];

fn config() -> String {
    let mut s = String::new();
    for (name, scheme) in BACKENDS {
        // 34 slots each: 100 builds at once need all three.
        s += &fake_backend(name, &format!("{scheme}://{name}"), "max_jobs = 34\n");
    }
    s
}

/// Session `i`: upload, build, fetch; the output and its NAR's hash, or
/// why it failed.
async fn one_session(t: &TestRelay, i: usize) -> Result<(StorePath, Sha256Hash), String> {
    let protocol = if i.is_multiple_of(2) {
        Protocol::Worker
    } else {
        Protocol::Serve
    };
    let mut c = t.client(protocol, &format!("client{}", i % 3)).await;
    let (src, nar) = drv::source(&format!("load-src-{i}"), format!("{i}").as_bytes(), &[]);
    let (drv_path, d) = drv::derivation(&format!("load-{i}"), SYS, std::slice::from_ref(&src.path));
    let out = drv::out_path(&d);
    c.upload(&src, &nar)
        .await
        .map_err(|e| format!("{i}: upload: {e}"))?;
    let res = c
        .build(&drv_path, &d)
        .await
        .map_err(|e| format!("{i}: build: {e}"))?;
    if !res.status.is_success() {
        return Err(format!("{i}: {res:?}\n{}", c.log()));
    }
    let got = c
        .fetch(&out)
        .await
        .map_err(|e| format!("{i}: fetch: {e}"))?;
    c.close().await.map_err(|e| format!("{i}: session: {e}"))?;
    Ok((out, Sha256Hash::digest(&got)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_sessions_over_three_backends_all_succeed_and_store_every_output() {
    let slow = Script::default().taking(Duration::from_millis(300));
    let fakes: Vec<_> = BACKENDS.iter().map(|(n, _)| (*n, slow.clone())).collect();
    let t = TestRelay::start(&config(), &fakes).await;
    let sessions = (0..SESSIONS).map(|i| one_session(&t, i));
    let results = futures_util::future::join_all(sessions).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {SESSIONS} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let outs: HashSet<_> = results.iter().flatten().map(|(o, _)| o.clone()).collect();
    assert_eq!(outs.len(), SESSIONS, "distinct outputs");
    for (out, hash) in results.iter().flatten() {
        assert_eq!(&t.wait_stored(out, WAIT).await.nar_hash, hash, "{out}");
    }
    let per: Vec<usize> = BACKENDS
        .iter()
        .map(|(n, _)| t.fake(n).record().builds_started.len())
        .collect();
    assert_eq!(
        per.iter().sum::<usize>(),
        SESSIONS,
        "one build each: {per:?}"
    );
    assert!(
        per.iter().all(|&n| n > 0),
        "not every backend built: {per:?}"
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = hwm.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(kib <= 256 << 10, "peak RSS {} MiB > 256 MiB", kib >> 10);
}
