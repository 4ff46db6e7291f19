//! Issue item 4: a backend that is down or never answers delays a build by
//! at most one connect timeout when another eligible backend exists. The
//! steps are those of `session::build`: claim a slot, connect (the real
//! `backend::connect`), report the outcome, retry on a fresh slot.

use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

use super::tests::{backend, job, now, queued};
use super::*;
use crate::config::BackendUri;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The fastest backend (tried first), over SSH to `port` on loopback.
fn fast_ssh(port: u16, dir: &Path) -> Backend {
    let key_file = dir.join("id");
    let key = crate::keys::load_or_create_host_key(&key_file).expect("a client key");
    let mut b = backend("dead", &["x"], 4);
    b.uri = BackendUri::Ssh {
        user: "root".into(),
        host: "127.0.0.1".into(),
        port,
        protocol: crate::config::Protocol::Serve,
    };
    b.ssh_key = Some(key_file);
    b.host_key = Some(key.public_key().clone());
    b.speed_factor = 9.0;
    b.connect_timeout = CONNECT_TIMEOUT;
    b
}

/// One attempt as `session::build` makes it: the backend it ran on and
/// whether the connection worked.
async fn attempt(s: &Arc<Scheduler>) -> (String, bool) {
    let slot = now(s.try_acquire(job("x")).unwrap());
    let conn = crate::backend::connect(slot.backend(), None, crate::wire::Limits::default()).await;
    s.report_connect(&slot.backend().name, conn.is_ok());
    (slot.backend().name.clone(), conn.is_ok())
}

async fn delay_until_elsewhere(dead: Backend) -> Duration {
    let s = Scheduler::new(vec![dead, backend("ok", &["x"], 1)], 10);
    let t0 = Instant::now();
    assert_eq!(attempt(&s).await, ("dead".into(), false), "fastest first");
    let retry = now(s.try_acquire(job("x")).unwrap());
    assert_eq!(retry.backend().name, "ok", "the retry goes elsewhere");
    let took = t0.elapsed();
    let (_, mut rx) = queued(s.try_acquire(job("x")).unwrap());
    assert!(
        rx.try_recv().is_err(),
        "while it backs off the next job waits for a live slot rather than trying it"
    );
    drop(retry);
    assert_eq!(rx.try_recv().unwrap().unwrap().backend().name, "ok");
    took
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_never_answers_costs_one_connect_timeout_at_most() {
    let dir = tempfile::tempdir().unwrap();
    // Bound, never accepted: the kernel completes the TCP handshake and the
    // SSH banner never comes.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let took = delay_until_elsewhere(fast_ssh(port, dir.path())).await;
    assert!(took <= CONNECT_TIMEOUT, "{took:?}");
    drop(silent);
}

#[tokio::test(start_paused = true)]
async fn a_backend_on_a_closed_port_costs_no_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let took = delay_until_elsewhere(fast_ssh(port, dir.path())).await;
    assert!(took < CONNECT_TIMEOUT, "{took:?}");
}
