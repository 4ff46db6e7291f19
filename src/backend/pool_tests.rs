//! Pool bookkeeping against real `nix-store --serve --write` subprocesses
//! (`local` backends on a chroot store in a tempdir). Sessions are opened
//! in real time; the clock is then paused for expiry and bounds.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::backend::Client;
use crate::buildlog::{Discard, EventSink};
use crate::config::BackendUri;

/// Whether `tool --version` runs. Without it the test is skipped with a
/// note, except under CI (`CI` set), where a missing tool fails the test:
/// a test that did not run must not pass there.
fn require(tool: &str) -> bool {
    let ok = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !under_ci(),
            "{tool} is not installed and CI is set: this test must run (tests/setup.sh installs it)"
        );
        eprintln!("skipping: {tool} is not installed");
    }
    ok
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

fn backend(store: &std::path::Path, name: &str) -> Backend {
    Backend {
        name: name.into(),
        uri: BackendUri::Local,
        ssh_key: None,
        host_key: None,
        systems: vec!["x86_64-linux".into()],
        max_jobs: 4,
        speed_factor: 1.0,
        supported_features: Vec::new(),
        mandatory_features: Vec::new(),
        connect_timeout: Duration::from_secs(30),
        store: Some(store.display().to_string()),
        untrusted_clients: false,
    }
}

fn pool(max_idle: usize) -> Arc<Pool> {
    Pool::new(PoolLimits {
        max_idle,
        idle_timeout: Duration::from_secs(60),
        watch: crate::ssh::stall::Watch::default(),
    })
}

fn log() -> Arc<dyn EventSink> {
    Arc::new(Discard)
}

async fn checkout(p: &Arc<Pool>, b: &Backend) -> (Lease, Kind) {
    p.checkout(b, log(), crate::wire::Limits::default())
        .await
        .expect("starting nix-store --serve")
}

/// Sessions opened in real time, then handed back.
async fn warm(p: &Arc<Pool>, b: &Backend, n: usize) {
    let mut leases = Vec::new();
    for _ in 0..n {
        leases.push(checkout(p, b).await.0);
    }
    drop(leases);
}

#[tokio::test]
async fn a_session_handed_back_serves_the_next_build_without_a_new_connection() {
    if !require("nix-store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (p, b) = (pool(2), backend(dir.path(), "b1"));
    let (mut lease, kind) = checkout(&p, &b).await;
    assert_eq!(kind, Kind::New);
    assert_eq!(
        lease.client.query_valid_paths(vec![], false).await.unwrap(),
        []
    );
    drop(lease);
    assert_eq!(p.idle_count("b1"), 1);
    let (mut lease, kind) = checkout(&p, &b).await;
    assert_eq!(kind, Kind::Reused);
    assert_eq!(p.idle_count("b1"), 0, "checked out, not idle");
    assert_eq!(
        lease.client.query_valid_paths(vec![], false).await.unwrap(),
        []
    );
}

#[tokio::test]
async fn idle_sessions_are_bounded_per_backend_and_kept_apart_by_backend() {
    if !require("nix-store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = pool(2);
    let (b1, b2) = (backend(dir.path(), "b1"), backend(dir.path(), "b2"));
    warm(&p, &b1, 3).await;
    warm(&p, &b2, 1).await;
    assert_eq!(p.idle_count("b1"), 2);
    assert_eq!(p.idle_count("b2"), 1);
    p.forget("b1");
    assert_eq!((p.idle_count("b1"), p.idle_count("b2")), (0, 1));
    let off = pool(0);
    warm(&off, &b1, 1).await;
    assert_eq!(off.idle_count("b1"), 0, "max_idle 0 turns pooling off");
}

#[tokio::test]
async fn a_changed_backend_configuration_never_gets_an_old_session() {
    if !require("nix-store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = pool(2);
    let b = backend(dir.path(), "b1");
    warm(&p, &b, 1).await;
    let mut changed = b.clone();
    changed.max_jobs = 8;
    assert_eq!(checkout(&p, &changed).await.1, Kind::New);
}

#[tokio::test]
async fn idle_sessions_close_after_the_idle_timeout() {
    if !require("nix-store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (p, b) = (pool(2), backend(dir.path(), "b1"));
    // Opening the session needs the real clock (its handshake has a timeout).
    warm(&p, &b, 1).await;
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(p.idle_count("b1"), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    // The reaper timer set at check-in has fired.
    tokio::task::yield_now().await;
    assert_eq!(p.idle_count("b1"), 0);
}

#[tokio::test]
async fn a_session_idle_for_long_is_probed_and_reused_if_it_answers() {
    if !require("nix-store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (p, b) = (pool(2), backend(dir.path(), "b1"));
    warm(&p, &b, 1).await;
    tokio::time::pause();
    tokio::time::advance(PROBE_AFTER + Duration::from_secs(1)).await;
    // The probe talks to the process: real time again.
    tokio::time::resume();
    assert_eq!(checkout(&p, &b).await.1, Kind::Reused);
}

#[tokio::test]
async fn a_session_left_mid_operation_is_closed_not_pooled() {
    if !require("nix-store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (p, b) = (pool(2), backend(dir.path(), "b1"));
    let (mut lease, _) = checkout(&p, &b).await;
    let path = crate::wire::store_path::StorePath::parse(
        "/nix/store/00000000000000000000000000000000-absent",
    )
    .unwrap();
    // Asked for a NAR, never read it: the stream is mid-reply.
    lease.client.dump_store_path(&path).await.unwrap();
    assert!(!lease.client.is_idle());
    drop(lease);
    assert_eq!(p.idle_count("b1"), 0);
    assert_eq!(checkout(&p, &b).await.1, Kind::New);
}

#[tokio::test]
async fn a_session_whose_process_died_is_discarded_at_checkout() {
    if !require("nix-store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (p, b) = (pool(2), backend(dir.path(), "b1"));
    warm(&p, &b, 1).await;
    let mut idle = p.take(&key(&b)).expect("one idle session");
    // An unknown serve command makes `nix-store --serve` exit.
    let Client::Serve(c) = &mut idle.conn.client else {
        panic!("a local backend speaks the serve protocol");
    };
    c.w.write_all(&[0xff; 8]).await.unwrap();
    c.w.flush().await.unwrap();
    let mut rest = Vec::new();
    c.r.read_to_end(&mut rest).await.unwrap();
    while idle.conn.transport_open() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.lock().entry(key(&b)).or_default().push(idle);
    let (_fresh, kind) = checkout(&p, &b).await;
    assert_eq!(kind, Kind::New);
    assert_eq!(p.idle_count("b1"), 0, "the dead session was dropped");
}

#[tokio::test]
async fn a_worker_protocol_session_is_reused_the_same_way() {
    if !require("nix-daemon") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = pool(2);
    let mut b = backend(dir.path(), "ng");
    b.uri = BackendUri::LocalWorker;
    let (mut lease, kind) = checkout(&p, &b).await;
    assert_eq!(kind, Kind::New);
    assert!(matches!(lease.client, Client::Worker(_)));
    assert_eq!(
        lease.client.query_valid_paths(vec![], false).await.unwrap(),
        []
    );
    drop(lease);
    let (mut lease, kind) = checkout(&p, &b).await;
    assert_eq!(kind, Kind::Reused);
    assert_eq!(
        lease.client.query_valid_paths(vec![], false).await.unwrap(),
        []
    );
}

/// An sshd that answers keepalives, or one that no longer does.
struct Sshd(bool);

impl crate::ssh::stall::Pinger for Sshd {
    async fn ping(&self) -> bool {
        if !self.0 {
            std::future::pending::<()>().await;
        }
        true
    }
}

/// Warms one session and watches it as if it were an SSH session whose
/// sshd does (`answers`) or does not answer keepalives; then `idle` passes.
async fn watched_idle(p: &Arc<Pool>, b: &Backend, answers: bool, idle: Duration) {
    use crate::ssh::stall::{Alive, Watch, spawn};
    warm(p, b, 1).await;
    tokio::time::pause();
    let mut entry = p.take(&key(b)).expect("one idle session");
    let watch = Watch {
        keepalive_interval: Duration::from_secs(1),
        stall_timeout: Duration::from_secs(5),
    };
    let pinger = Arc::new(Sshd(answers));
    entry.conn.watched = Some(spawn(pinger, Alive::default(), watch, b.name.clone()));
    p.lock().entry(key(b)).or_default().push(entry);
    tokio::time::sleep(idle).await;
    // A new session needs the real clock (its handshake has a timeout).
    tokio::time::resume();
}

#[tokio::test]
async fn an_idle_session_whose_keepalives_go_unanswered_is_not_handed_out() {
    if !require("nix-store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (p, b) = (pool(2), backend(dir.path(), "b1"));
    // Shorter than PROBE_AFTER: only the keepalives can tell.
    watched_idle(&p, &b, false, Duration::from_secs(6)).await;
    let (_fresh, kind) = checkout(&p, &b).await;
    assert_eq!(kind, Kind::New, "the stalled session was handed out");
    assert_eq!(p.idle_count("b1"), 0, "the stalled session was dropped");
}

#[tokio::test]
async fn an_idle_session_whose_keepalives_are_answered_is_reused() {
    if !require("nix-store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (p, b) = (pool(2), backend(dir.path(), "b1"));
    watched_idle(&p, &b, true, Duration::from_secs(6)).await;
    assert_eq!(checkout(&p, &b).await.1, Kind::Reused);
}
