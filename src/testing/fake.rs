//! Fake builders: in-process stand-ins for a backend's `nix-store --serve
//! --write` or `nix-daemon --stdio`, speaking the real protocols server
//! side (every byte through [`crate::wire`]) over `tokio::io::duplex`
//! pipes.
//!
//! A [`Fake`] has a [`Script`] (how it connects, what a build logs,
//! outputs and how it ends, where it cuts the pipe) and a store of its own
//! (what was uploaded to it and what it built), and keeps a [`Record`] of
//! what happened for assertions. [`register`] puts it in the process-wide
//! registry under a key; a backend `fake://KEY` (serve) or `fake-ng://KEY`
//! (worker) connects to it through [`connect`], which `backend::connect`
//! calls. Keys must be unique per test ([`crate::testing::harness`] makes
//! them so), so parallel tests never share a fake.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::Protocol;
use crate::wire::build::{BasicDerivation, BuildResult, BuildStatus};
use crate::wire::hash::Sha256Hash;
use crate::wire::nar::{NarNode, encode_nar};
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;

/// How a connection attempt goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect {
    Accept,
    /// The connect fails at once (connection refused).
    Refuse,
    /// Accepted, then the handshake is never answered.
    HangHandshake,
}

/// How a build ends, after its log and duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Outputs made, `Built`.
    Succeed,
    /// `PermanentFailure` with this message, no outputs.
    Fail(String),
    /// Never answers (until the connection is dropped).
    Hang,
    /// The fake closes the connection mid-build (after the log).
    Cut,
}

/// What a fake backend does; the same for every connection and build.
#[derive(Debug, Clone)]
pub struct Script {
    pub connect: Connect,
    /// Lines the build writes to its log (serve: stderr; worker: in band).
    pub log: Vec<String>,
    /// How long a build takes after its log (at least a few ms, so a serve
    /// build's stderr is forwarded before its result, as over SSH).
    pub duration: Duration,
    pub outcome: Outcome,
    /// Output contents by output name; others get a file naming the path.
    pub outputs: HashMap<String, NarNode>,
    /// Close the connection after this many NAR bytes of an upload.
    pub cut_upload_after: Option<u64>,
    /// Close the connection after sending this many bytes of an output NAR.
    pub cut_output_after: Option<u64>,
    /// Flip the bits of the output NAR's byte at this offset as it is
    /// sent (the path info still describes the real NAR).
    pub garble_output_at: Option<u64>,
    /// A log flood after the log lines ([`super::fake_flood`]).
    pub flood: Option<super::fake_flood::Flood>,
    /// Phases a worker fake's build announces (`RESULT setPhase` on its
    /// build activity), each with a nested activity started and stopped
    /// in it.
    pub phases: Vec<String>,
    /// After its log lines, a build waits for [`Fake::release`] (then its
    /// flood, then its end).
    pub gate: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            connect: Connect::Accept,
            log: Vec::new(),
            duration: Duration::from_millis(20),
            outcome: Outcome::Succeed,
            outputs: HashMap::new(),
            cut_upload_after: None,
            cut_output_after: None,
            garble_output_at: None,
            flood: None,
            phases: Vec::new(),
            gate: false,
        }
    }
}

impl Script {
    pub fn log(mut self, lines: &[&str]) -> Self {
        self.log = lines.iter().map(|l| (*l).to_owned()).collect();
        self
    }
    pub fn taking(mut self, d: Duration) -> Self {
        self.duration = d;
        self
    }
    pub fn outcome(mut self, o: Outcome) -> Self {
        self.outcome = o;
        self
    }
    pub fn connect(mut self, c: Connect) -> Self {
        self.connect = c;
        self
    }
    pub fn output(mut self, name: &str, node: NarNode) -> Self {
        self.outputs.insert(name.to_owned(), node);
        self
    }
    pub fn cut_upload_after(mut self, n: u64) -> Self {
        self.cut_upload_after = Some(n);
        self
    }
    pub fn cut_output_after(mut self, n: u64) -> Self {
        self.cut_output_after = Some(n);
        self
    }
    pub fn garble_output_at(mut self, offset: u64) -> Self {
        self.garble_output_at = Some(offset);
        self
    }
    pub fn phases(mut self, phases: &[&str]) -> Self {
        self.phases = phases.iter().map(|p| (*p).to_owned()).collect();
        self
    }
    pub fn gate(mut self) -> Self {
        self.gate = true;
        self
    }
}

/// What a fake saw, for assertions.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Connection attempts (refused ones included).
    pub connections: u64,
    pub handshakes: u64,
    pub builds_started: Vec<StorePath>,
    pub builds_finished: Vec<StorePath>,
    /// Builds whose connection was dropped before they finished.
    pub builds_cancelled: Vec<StorePath>,
    /// Paths uploaded to it whole.
    pub uploaded: Vec<StorePath>,
    /// Every byte the relay sent it.
    pub bytes_received: u64,
    /// Bytes of a log flood written to the relay.
    pub flood_bytes: u64,
    /// The settings of each SetOptions (worker fakes).
    pub options: Vec<crate::wire::worker::ClientOptions>,
    /// Builds that reached the gate ([`Script::gate`]).
    pub at_gate: u64,
    /// Paths it substituted from its cache ([`Fake::cache`]).
    pub substituted: Vec<StorePath>,
}

type Stored = (ValidPathInfo, Arc<Vec<u8>>);

/// One fake backend: its script, store and record.
pub struct Fake {
    name: String,
    script: Mutex<Script>,
    store: Mutex<HashMap<StorePath, Stored>>,
    /// What its substituters have ([`Fake::cache`]).
    cache: Mutex<HashMap<StorePath, Stored>>,
    record: tokio::sync::watch::Sender<Record>,
    /// Opened by [`Fake::release`].
    gate: tokio::sync::watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fake {
    pub fn new(name: &str, script: Script) -> Arc<Fake> {
        Arc::new(Fake {
            name: name.to_owned(),
            script: Mutex::new(script),
            store: Default::default(),
            cache: Default::default(),
            record: tokio::sync::watch::Sender::new(Record::default()),
            gate: tokio::sync::watch::Sender::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Replaces the script for connections and builds from now on.
    pub fn set_script(&self, s: Script) {
        *lock(&self.script) = s;
    }

    pub fn script(&self) -> Script {
        lock(&self.script).clone()
    }

    pub fn record(&self) -> Record {
        self.record.borrow().clone()
    }

    /// Waits until `pred` holds for the record; panics naming `what` after
    /// `within`.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Record) -> bool,
    ) -> Record {
        let mut rx = self.record.subscribe();
        match tokio::time::timeout(within, rx.wait_for(|r| pred(r))).await {
            Ok(Ok(r)) => r.clone(),
            _ => panic!(
                "fake {}: not {what} within {within:?}: {:?}",
                self.name,
                self.record()
            ),
        }
    }

    /// Lets every build waiting at its gate ([`Script::gate`]) go on, and
    /// every later one pass it.
    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    /// Where a build with a gate waits for [`Fake::release`].
    pub(super) async fn at_gate(&self, script: &Script) {
        if script.gate {
            self.note(|r| r.at_gate += 1);
            let mut open = self.gate.subscribe();
            let _ = open.wait_for(|o| *o).await;
        }
    }

    /// Deletes `path` from the fake's store (a backend that lost it).
    pub fn forget(&self, path: &StorePath) {
        lock(&self.store).remove(path);
    }

    /// Whether the fake's store has `path`.
    pub fn has(&self, path: &StorePath) -> bool {
        lock(&self.store).contains_key(path)
    }

    pub(super) fn note(&self, f: impl FnOnce(&mut Record)) {
        self.record.send_modify(f);
    }

    /// Puts a path in the fake's substituters: a QueryValidPaths with the
    /// substitute flag then substitutes it, as `nix-store --serve` and
    /// `nix-daemon` do.
    pub fn cache(&self, info: ValidPathInfo, nar: Vec<u8>) {
        lock(&self.cache).insert(info.path.clone(), (info, Arc::new(nar)));
    }

    /// QueryValidPaths: with `substitute`, what the cache has is
    /// substituted first.
    pub(super) fn query_valid(&self, paths: &[StorePath], substitute: bool) -> Vec<StorePath> {
        if substitute {
            for p in paths {
                let hit = lock(&self.cache).get(p).cloned();
                if let Some(entry) = hit.filter(|_| !self.has(p)) {
                    lock(&self.store).insert(p.clone(), entry);
                    self.note(|r| r.substituted.push(p.clone()));
                }
            }
        }
        self.valid(paths)
    }

    pub(super) fn valid(&self, paths: &[StorePath]) -> Vec<StorePath> {
        let store = lock(&self.store);
        paths
            .iter()
            .filter(|p| store.contains_key(*p))
            .cloned()
            .collect()
    }

    /// The fake store's info for `path`.
    pub fn info(&self, path: &StorePath) -> Option<ValidPathInfo> {
        lock(&self.store).get(path).map(|(i, _)| i.clone())
    }

    pub(super) fn nar(&self, path: &StorePath) -> Option<Arc<Vec<u8>>> {
        lock(&self.store).get(path).map(|(_, n)| n.clone())
    }

    pub(super) fn add(&self, info: ValidPathInfo, nar: Vec<u8>) {
        let path = info.path.clone();
        lock(&self.store).insert(path.clone(), (info, Arc::new(nar)));
        self.note(|r| r.uploaded.push(path));
    }

    /// The build's result after its log and duration; a success puts the
    /// outputs in the fake's store. `None`: cut the connection.
    pub(super) async fn finish_build(
        &self,
        script: &Script,
        guard: &mut BuildGuard,
        drv: &BasicDerivation,
    ) -> Option<BuildResult> {
        tokio::time::sleep(script.duration).await;
        let result = match &script.outcome {
            Outcome::Succeed => {
                self.make_outputs(script, guard.drv_path.clone(), drv);
                let mut r = BuildResult::failure(BuildStatus::Built, "");
                r.times_built = 1;
                r
            }
            Outcome::Fail(msg) => BuildResult::failure(BuildStatus::PermanentFailure, msg.clone()),
            Outcome::Hang => std::future::pending().await,
            Outcome::Cut => {
                guard.done = true;
                return None;
            }
        };
        guard.done = true;
        let path = guard.drv_path.clone();
        self.note(|r| r.builds_finished.push(path));
        Some(result)
    }

    fn make_outputs(&self, script: &Script, drv_path: StorePath, drv: &BasicDerivation) {
        for o in &drv.outputs {
            let Ok(path) = StorePath::parse(&o.path) else {
                continue;
            };
            let node = script.outputs.get(&o.name).cloned().unwrap_or_else(|| {
                let contents = format!("built by a fake for {path}\n").into_bytes();
                NarNode::Regular {
                    executable: false,
                    contents,
                }
            });
            let nar = encode_nar(&node);
            let info = ValidPathInfo {
                path: path.clone(),
                deriver: Some(drv_path.clone()),
                nar_hash: Sha256Hash::digest(&nar),
                references: Default::default(),
                registration_time: 0,
                nar_size: nar.len() as u64,
                ultimate: true,
                sigs: Vec::new(),
                ca: None,
            };
            lock(&self.store).insert(path, (info, Arc::new(nar)));
        }
    }

    /// Records a build as started; the guard records it cancelled if it
    /// is dropped (the connection went away) before it is done.
    pub(super) fn start_build(self: &Arc<Self>, drv_path: &StorePath) -> BuildGuard {
        let p = drv_path.clone();
        self.note(|r| r.builds_started.push(p));
        BuildGuard {
            fake: self.clone(),
            drv_path: drv_path.clone(),
            done: false,
        }
    }
}

pub(super) struct BuildGuard {
    fake: Arc<Fake>,
    pub(super) drv_path: StorePath,
    pub(super) done: bool,
}

impl Drop for BuildGuard {
    fn drop(&mut self) {
        if !self.done {
            let p = self.drv_path.clone();
            self.fake.note(|r| r.builds_cancelled.push(p));
        }
    }
}

static NET: LazyLock<Mutex<HashMap<String, Arc<Fake>>>> = LazyLock::new(Default::default);

/// A fake's place in the registry; dropping it unregisters the fake.
pub struct Registration(String);

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&NET).remove(&self.0);
    }
}

/// Makes `fake` reachable as `fake://KEY` / `fake-ng://KEY`.
/// Panics if `key` is taken.
pub fn register(key: &str, fake: Arc<Fake>) -> Registration {
    let old = lock(&NET).insert(key.to_owned(), fake);
    assert!(old.is_none(), "fake backend key {key} registered twice");
    Registration(key.to_owned())
}

/// The relay's end of a connection to a fake.
pub struct FakeConn {
    pub stdout: Box<dyn AsyncRead + Send + Sync + Unpin>,
    pub stdin: Box<dyn AsyncWrite + Send + Sync + Unpin>,
    /// The fake's stderr (a serve fake's build log).
    pub stderr: DuplexStream,
    /// Dropping it ends the fake's side of the connection.
    pub stop: DropGuard,
    /// The fake's task: finished once it closed the connection.
    pub ended: tokio::task::JoinHandle<()>,
}

/// Bytes in flight per pipe direction.
const PIPE: usize = 64 << 10;

/// Connects to the fake registered under `key`, speaking `protocol`.
pub fn connect(key: &str, protocol: Protocol) -> std::io::Result<FakeConn> {
    use std::io::{Error, ErrorKind};
    let fake = lock(&NET).get(key).cloned();
    let fake =
        fake.ok_or_else(|| Error::new(ErrorKind::ConnectionRefused, format!("no fake {key}")))?;
    fake.note(|r| r.connections += 1);
    if fake.script().connect == Connect::Refuse {
        return Err(ErrorKind::ConnectionRefused.into());
    }
    let (client, server) = tokio::io::duplex(PIPE);
    let (err_client, err_server) = tokio::io::duplex(PIPE);
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    let token = CancellationToken::new();
    let stop = token.clone().drop_guard();
    let sr = Counting {
        inner: sr,
        fake: fake.clone(),
    };
    let run = async move {
        let serving = async {
            match protocol {
                Protocol::Serve => super::fake_serve::run(&fake, sr, sw, err_server).await,
                Protocol::Worker => super::fake_worker::run(&fake, sr, sw).await,
            }
        };
        tokio::select! {
            _ = token.cancelled() => {}
            r = serving => if let Err(e) = r {
                tracing::debug!(fake = fake.name(), "fake connection ended: {e}");
            },
        }
    };
    Ok(FakeConn {
        stdout: Box::new(cr),
        stdin: Box::new(cw),
        stderr: err_client,
        stop,
        ended: tokio::spawn(run),
    })
}

/// Counts what the relay sends into [`Record::bytes_received`].
pub(super) struct Counting<R> {
    inner: R,
    fake: Arc<Fake>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.fake.note(|r| r.bytes_received += n);
        }
        r
    }
}
