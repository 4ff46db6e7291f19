//! The stall watch in paused time, through the same plumbing a backend
//! connection uses ([`crate::ssh::client::pipe_channel`]): a fake channel
//! (messages fed by the test) and a fake keepalive peer, read by a real
//! serve-protocol client running BuildDerivation.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use russh::ChannelMsg;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::sync::mpsc;

use super::*;
use crate::backend::{ConnReader, ConnWriter, ServeClient};
use crate::session::build::BuildError;
use crate::ssh::ChannelSource;
use crate::ssh::client::pipe_channel;
use crate::wire::build::{BasicDerivation, BuildOptions, BuildResult, BuildStatus};
use crate::wire::serve::ServeVersion;
use crate::wire::store_path::StorePath;

const WATCH: Watch = Watch {
    keepalive_interval: Duration::from_secs(5),
    stall_timeout: Duration::from_secs(300),
};

/// The backend's end of the channel: messages the relay will read.
struct FakeChannel(mpsc::UnboundedReceiver<ChannelMsg>);

impl ChannelSource for FakeChannel {
    async fn next(&mut self) -> Option<ChannelMsg> {
        self.0.recv().await
    }
}

/// A backend's sshd: answers keepalives at once until frozen, then never.
#[derive(Default)]
struct FakeSshd {
    frozen: AtomicBool,
}

impl Pinger for FakeSshd {
    async fn ping(&self) -> bool {
        if self.frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        true
    }
}

struct Backend {
    to_relay: mpsc::UnboundedSender<ChannelMsg>,
    sshd: Arc<FakeSshd>,
    /// What the relay wrote; kept open, never read.
    _from_relay: tokio::io::DuplexStream,
}

impl Backend {
    fn log_line(&self) {
        let data = Bytes::from_static(b"building...\n");
        self.to_relay
            .send(ChannelMsg::ExtendedData { data, ext: 1 })
            .unwrap();
    }
}

/// A serve client over a watched fake channel, past its handshake.
fn connect() -> (ServeClient<ConnReader, ConnWriter>, Backend, Watched) {
    let (to_relay, rx) = mpsc::unbounded_channel();
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let log = crate::buildlog::LogSwitch::default();
    let sshd = Arc::new(FakeSshd::default());
    let watch = (sshd.clone(), WATCH, "fake".to_string());
    let piped = pipe_channel(FakeChannel(rx), ours, Some(log), Some(watch));
    let r: ConnReader = BufReader::new(piped.stdout);
    let limits = crate::wire::Limits::default();
    let client = ServeClient::new(r, piped.stdin, ServeVersion::LATEST, limits);
    let backend = Backend {
        to_relay,
        sshd,
        _from_relay: theirs,
    };
    (client, backend, piped.watched.expect("watched"))
}

fn drv() -> (StorePath, BasicDerivation) {
    let path = StorePath::parse("/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-hello.drv").unwrap();
    let drv = BasicDerivation {
        outputs: Vec::new(),
        input_srcs: Vec::new(),
        platform: "aarch64-linux".into(),
        builder: b"/bin/sh".to_vec(),
        args: Vec::new(),
        env: Vec::new(),
    };
    (path, drv)
}

type Outcome = (crate::wire::Result<BuildResult>, Instant);

/// Runs BuildDerivation in its own task; yields its result and when.
fn build(mut client: ServeClient<ConnReader, ConnWriter>) -> tokio::task::JoinHandle<Outcome> {
    tokio::spawn(async move {
        let (path, drv) = drv();
        let r = client
            .build_derivation(&path, &drv, BuildOptions::default())
            .await;
        (r, Instant::now())
    })
}

#[tokio::test(start_paused = true)]
async fn a_frozen_backend_is_lost_exactly_one_stall_timeout_after_its_last_sign_of_life() {
    let (client, backend, watched) = connect();
    let t0 = Instant::now();
    let building = build(client);
    backend.log_line();
    // Keepalives at 5 s, 10 s, … are answered; the one at 100 s is the last.
    tokio::time::sleep(Duration::from_secs(102)).await;
    backend.sshd.frozen.store(true, Ordering::SeqCst);
    tokio::time::sleep_until(t0 + Duration::from_secs(399)).await;
    assert!(!building.is_finished(), "given up before the stall timeout");
    assert!(!watched.stalled.is_cancelled());
    let hour = Duration::from_secs(3600);
    let Ok(done) = tokio::time::timeout(hour, building).await else {
        panic!("a frozen backend hung the build for an hour");
    };
    let (r, at) = done.unwrap();
    assert_eq!(
        at - t0,
        Duration::from_secs(400),
        "100 s + backend_stall_timeout"
    );
    let e = r.expect_err("the build must fail");
    let crate::wire::Error::Read { source, .. } = &e else {
        panic!("expected a read error, got {e:?}");
    };
    assert_eq!(source.kind(), std::io::ErrorKind::TimedOut);
    assert!(source.to_string().contains("stalled"), "{source}");
    assert!(
        BuildError::Build(e).is_infrastructure(),
        "a stalled backend is a lost backend: retried elsewhere"
    );
    assert!(watched.stalled.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_keeps_logging_is_not_cut_even_without_keepalive_answers() {
    let (client, backend, watched) = connect();
    backend.sshd.frozen.store(true, Ordering::SeqCst);
    let building = build(client);
    for _ in 0..30 {
        backend.log_line();
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert!(
        !building.is_finished(),
        "30 min of logging, never silent 300 s"
    );
    let mut reply = Vec::new();
    BuildResult::failure(BuildStatus::Built, "").write_serve(&mut reply, 7);
    let data = Bytes::from(reply);
    backend.to_relay.send(ChannelMsg::Data { data }).unwrap();
    let (r, _) = building.await.unwrap();
    assert_eq!(r.expect("built").status, BuildStatus::Built);
    assert!(!watched.stalled.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn a_full_pipe_the_relay_does_not_read_is_not_the_backends_silence() {
    let (mut client, backend, watched) = connect();
    backend.sshd.frozen.store(true, Ordering::SeqCst);
    let chunk = Bytes::from(vec![0u8; 256 << 10]);
    let total = 2 * crate::ssh::PIPE_BYTES;
    for _ in 0..total / chunk.len() {
        let data = chunk.clone();
        backend.to_relay.send(ChannelMsg::Data { data }).unwrap();
    }
    // The pipe fills and the pump waits on the relay for 20 minutes.
    tokio::time::sleep(Duration::from_secs(1200)).await;
    assert!(!watched.stalled.is_cancelled(), "the relay's own backlog");
    let mut buf = vec![0u8; total];
    let r = client.r.read_exact(&mut buf).await;
    assert!(r.is_ok(), "everything sent arrives: {r:?}");
    let read_at = Instant::now();
    // Now the relay waits and the backend is silent: that is a stall.
    let hour = Duration::from_secs(3600);
    let cut = tokio::time::timeout(hour, watched.stalled.cancelled()).await;
    assert!(cut.is_ok(), "a silent backend was never cut");
    assert_eq!(Instant::now() - read_at, WATCH.stall_timeout);
}
