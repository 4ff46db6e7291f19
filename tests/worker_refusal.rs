//! A refused worker client (too many sessions) hears why in-band: the
//! handshake completes, then `STDERR_ERROR` carries the reason, which Nix
//! prints ("error: nix-relay: too many sessions…") instead of "daemon
//! disconnected unexpectedly". Checked with real Nix 2.34 too (README).

use std::time::Duration;

use nix_relay::wire::Limits;
use nix_relay::wire::worker::{WorkerVersion, client_handshake};
use tokio::io::BufReader;

#[tokio::test]
async fn a_refused_worker_client_gets_the_reason_after_the_handshake() {
    let (client, server) = tokio::io::duplex(64 << 10);
    let (sr, sw) = tokio::io::split(server);
    let refusing = tokio::spawn(nix_relay::session::worker::refuse(
        BufReader::new(sr),
        sw,
        "too many sessions; try again later",
        Duration::from_secs(5),
    ));
    let (mut cr, mut cw) = tokio::io::split(client);
    let hs = client_handshake(&mut cr, &mut cw, WorkerVersion::LATEST, &Limits::default()).await;
    let err = hs
        .expect_err("the handshake ends in the refusal")
        .to_string();
    assert!(err.contains("nix-relay: too many sessions"), "{err}");
    refusing.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_refused_client_that_never_says_hello_is_let_go() {
    let (_client, server) = tokio::io::duplex(64 << 10);
    let (sr, sw) = tokio::io::split(server);
    let r = nix_relay::session::worker::refuse(
        BufReader::new(sr),
        sw,
        "no",
        Duration::from_millis(100),
    );
    let e = r.await.unwrap_err().to_string();
    assert!(e.contains("no worker handshake within"), "{e}");
}
