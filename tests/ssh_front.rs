//! The SSH front end's decisions, driven by a real russh client over an
//! in-memory stream: only public-key auth, only the Nix execs, every other
//! SSH-layer request (pty, env, X11, agent, port forwarding, subsystems,
//! shells) refused, and a client that never starts a session is cut after
//! `handshake_timeout`.

use std::sync::Arc;
use std::time::Duration;

use nix_relay::config::{Client, Limits};
use nix_relay::front::server::{FrontEnd, config, serve_connection};
use nix_relay::scheduler::Scheduler;
use nix_relay::session::Core;
use nix_relay::store::Store;
use russh::client;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use russh::{ChannelMsg, Disconnect};
use tokio::sync::Semaphore;

struct AnyHost;

impl client::Handler for AnyHost {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

fn key(seed: u8) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
}

/// A front end with one known client (key seed 1) and no backends.
fn front(dir: &std::path::Path, limits: Limits) -> Arc<FrontEnd> {
    let store = Store::open(dir, Default::default()).unwrap();
    let relay = Arc::new(Core::new(store, Scheduler::new(vec![], 10), limits, false));
    Arc::new(FrontEnd {
        relay,
        clients: Arc::new(vec![Client {
            name: "lab".into(),
            key: key(1).public_key().clone(),
            trusted: true,
            timeouts: Default::default(),
        }]),
        sessions: Arc::new(Semaphore::new(8)),
        handshakes: Arc::new(Semaphore::new(limits.max_handshakes as usize)),
    })
}

/// Starts a connection to a fresh front end; returns the client's handle.
async fn connect(dir: &std::path::Path) -> client::Handle<AnyHost> {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let fe = front(dir, Limits::default());
    tokio::spawn(serve_connection(fe, config(key(9)), theirs, "test".into()));
    client::connect_stream(Arc::new(client::Config::default()), ours, AnyHost)
        .await
        .unwrap()
}

async fn login(dir: &std::path::Path) -> client::Handle<AnyHost> {
    let mut h = connect(dir).await;
    let auth = h
        .authenticate_publickey("nix", PrivateKeyWithHashAlg::new(Arc::new(key(1)), None))
        .await
        .unwrap();
    assert!(auth.success(), "the known key must log in");
    h
}

/// Reads a channel until its reply to a request (Success / Failure).
async fn reply(ch: &mut russh::Channel<client::Msg>) -> ChannelMsg {
    loop {
        let m = ch.wait().await.expect("channel closed before a reply");
        if matches!(m, ChannelMsg::Success | ChannelMsg::Failure) {
            return m;
        }
    }
}

/// Reads a channel to its end: (stderr text, exit status).
async fn outcome(ch: &mut russh::Channel<client::Msg>) -> (String, Option<u32>) {
    let (mut err, mut status) = (Vec::new(), None);
    while let Some(m) = ch.wait().await {
        match m {
            ChannelMsg::ExtendedData { data, ext: 1 } => err.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    (String::from_utf8_lossy(&err).into_owned(), status)
}

#[tokio::test]
async fn password_keyboard_interactive_and_unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = connect(dir.path()).await;
    let pw = h.authenticate_password("nix", "hunter2").await.unwrap();
    assert!(!pw.success(), "password auth accepted");
    let kbd = h
        .authenticate_keyboard_interactive_start("nix", None)
        .await
        .unwrap();
    assert!(
        matches!(kbd, client::KeyboardInteractiveAuthResponse::Failure { .. }),
        "keyboard-interactive not refused: {kbd:?}"
    );
    let unknown = h
        .authenticate_publickey("nix", PrivateKeyWithHashAlg::new(Arc::new(key(2)), None))
        .await
        .unwrap();
    assert!(!unknown.success(), "an unknown key logged in");
    let _ = h.disconnect(Disconnect::ByApplication, "", "").await;
}

#[tokio::test]
async fn pty_env_x11_and_agent_requests_get_a_failure_reply() {
    let dir = tempfile::tempdir().unwrap();
    let h = login(dir.path()).await;
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    assert!(matches!(reply(&mut ch).await, ChannelMsg::Failure), "pty");
    ch.set_env(true, "LD_PRELOAD", "/tmp/evil.so")
        .await
        .unwrap();
    assert!(matches!(reply(&mut ch).await, ChannelMsg::Failure), "env");
    ch.request_x11(true, false, "MIT-MAGIC-COOKIE-1", "00", 0)
        .await
        .unwrap();
    assert!(matches!(reply(&mut ch).await, ChannelMsg::Failure), "x11");
    ch.agent_forward(true).await.unwrap();
    assert!(matches!(reply(&mut ch).await, ChannelMsg::Failure), "agent");
}

#[tokio::test]
async fn port_forwarding_is_refused_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let h = login(dir.path()).await;
    let local = h
        .channel_open_direct_tcpip("127.0.0.1", 22, "127.0.0.1", 5555)
        .await;
    assert!(local.is_err(), "a direct-tcpip channel was opened");
    let remote = h.tcpip_forward("127.0.0.1", 0).await;
    assert!(
        matches!(remote, Err(russh::Error::RequestDenied)),
        "tcpip-forward not denied: {remote:?}"
    );
}

#[tokio::test]
async fn shells_subsystems_and_other_commands_exit_1_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let h = login(dir.path()).await;
    let mut sftp = h.channel_open_session().await.unwrap();
    sftp.request_subsystem(true, "sftp").await.unwrap();
    let (err, status) = outcome(&mut sftp).await;
    assert_eq!(status, Some(1));
    assert!(err.contains("subsystem \"sftp\" is not served"), "{err}");
    for cmd in ["bash", "nix-store --serve; rm -rf /"] {
        let mut ch = h.channel_open_session().await.unwrap();
        ch.exec(true, cmd).await.unwrap();
        let (err, status) = outcome(&mut ch).await;
        assert_eq!(status, Some(1), "{cmd}");
        assert!(err.starts_with("nix-relay: "), "{cmd}: {err}");
        assert_eq!(err.lines().count(), 1, "{cmd}: {err}");
    }
    let mut shell = h.channel_open_session().await.unwrap();
    shell.request_shell(true).await.unwrap();
    let (err, status) = outcome(&mut shell).await;
    assert_eq!(status, Some(1));
    assert!(err.contains("no shell here"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_speaks_is_cut_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        handshake_timeout: Duration::from_secs(7),
        ..Limits::default()
    };
    let (_silent, theirs) = tokio::io::duplex(1 << 16);
    let fe = front(dir.path(), limits);
    let t0 = tokio::time::Instant::now();
    serve_connection(fe, config(key(9)), theirs, "silent".into()).await;
    assert!(t0.elapsed() >= Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn a_logged_in_client_that_never_execs_is_cut_too() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        handshake_timeout: Duration::from_secs(7),
        ..Limits::default()
    };
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let fe = front(dir.path(), limits);
    let conn = tokio::spawn(serve_connection(fe, config(key(9)), theirs, "idle".into()));
    let mut h = client::connect_stream(Arc::new(client::Config::default()), ours, AnyHost)
        .await
        .unwrap();
    let auth = h
        .authenticate_publickey("nix", PrivateKeyWithHashAlg::new(Arc::new(key(1)), None))
        .await
        .unwrap();
    assert!(auth.success());
    let _idle = h.channel_open_session().await.unwrap();
    conn.await.unwrap();
    assert!(h.is_closed() || h.channel_open_session().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn connections_beyond_max_handshakes_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        handshake_timeout: Duration::from_secs(7),
        max_handshakes: 1,
        ..Limits::default()
    };
    let fe = front(dir.path(), limits);
    let (_silent, first) = tokio::io::duplex(1 << 16);
    let first = tokio::spawn(serve_connection(
        fe.clone(),
        config(key(9)),
        first,
        "first".into(),
    ));
    tokio::task::yield_now().await;
    let (_other, second) = tokio::io::duplex(1 << 16);
    serve_connection(fe, config(key(9)), second, "second".into()).await;
    assert!(
        !first.is_finished(),
        "the second connection waited for the first one's deadline"
    );
    first.await.unwrap();
}

/// Log lines written while the returned guard lives (this thread's tasks:
/// `#[tokio::test]` runs everything on the test thread).
fn capture_logs() -> (
    Arc<std::sync::Mutex<Vec<u8>>>,
    tracing::subscriber::DefaultGuard,
) {
    #[derive(Clone)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Sink(buf.clone());
    let sub = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || sink.clone())
        .finish();
    (buf, tracing::subscriber::set_default(sub))
}

#[tokio::test]
async fn a_client_that_hangs_up_is_logged_as_disconnected_not_as_a_deadline() {
    let (logs, _guard) = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let h = login(dir.path()).await;
    for cmd in ["nix-daemon --stdio", "nix-store --serve --write"] {
        let ch = h.channel_open_session().await.unwrap();
        ch.exec(true, cmd).await.unwrap();
        // the worker hello's first word, then gone
        ch.data(&0x6e69_7863u64.to_le_bytes()[..]).await.unwrap();
        ch.close().await.unwrap();
    }
    let text = || String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    for _ in 0..500 {
        if text().matches("session ended").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = text();
    assert_eq!(text.matches("session ended").count(), 2, "{text}");
    assert!(!text.contains("deadline passed"), "{text}");
    assert!(!text.contains("session failed"), "{text}");
}
