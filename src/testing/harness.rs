//! The relay core in-process: [`TestRelay`] opens the production core
//! ([`crate::cli::open_relay`]: store in a tempdir, scheduler, pool,
//! limits) from a TOML config whose backends are fakes, and
//! [`TestClient`] is one client session (the real `session::serve::run` or
//! `session::worker::run`) over an in-memory pipe, driven by the relay's
//! own protocol clients ([`crate::backend::Client`]). No sockets, no SSH,
//! no subprocesses.
//!
//! ```ignore
//! let t = TestRelay::start(r#"
//!     [[backend]]
//!     name = "a"
//!     uri = "fake://a"
//!     systems = ["x86_64-linux"]
//! "#, &[("a", Script::default().log(&["hello"]))]).await;
//! let mut c = t.client(Protocol::Serve, "alice").await;
//! let (drv_path, drv) = drv::derivation("hello", "x86_64-linux", &[]);
//! assert_eq!(c.build(&drv_path, &drv).await?.status, BuildStatus::Built);
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::BufReader;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::fake::{Fake, Registration, Script, register};
use crate::backend::Options;
use crate::backend::{Client, ConnReader, ConnWriter, ServeClient, WorkerClient};
use crate::buildlog::{EventSink, LogEvent, LogSink};
use crate::config::{BackendUri, Config, Protocol};
use crate::session::{ClientId, Core};
use crate::wire::build::{BasicDerivation, BuildResult};
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;
use crate::wire::worker::stderr::StderrMsg;
use crate::wire::{Limits, Result};

/// The system the test derivations and fake backends are for.
pub const SYSTEM: &str = "x86_64-linux";

/// A `[[backend]]` table: fake `name` at `uri` (`fake://NAME` or
/// `fake-ng://NAME`) building for [`SYSTEM`], then the TOML lines `extra`.
pub fn fake_backend(name: &str, uri: &str, extra: &str) -> String {
    format!("[[backend]]\nname = \"{name}\"\nuri = \"{uri}\"\nsystems = [\"{SYSTEM}\"]\n{extra}")
}

mod ops;

/// A relay core whose backends are fakes. Dropping it unregisters them.
pub struct TestRelay {
    pub relay: Arc<Core>,
    fakes: HashMap<String, Arc<Fake>>,
    tick: tokio::task::JoinHandle<()>,
    _registrations: Vec<Registration>,
    _dir: tempfile::TempDir,
}

/// Makes each test relay's registry keys unique in the process.
static NEXT: AtomicU64 = AtomicU64::new(0);

impl TestRelay {
    /// Starts a relay from `config` (TOML without `[server]`: the state dir
    /// is a fresh tempdir). Every `fake://NAME` / `fake-ng://NAME` backend
    /// needs a script in `fakes` under NAME. Panics on a bad config.
    pub async fn start(config: &str, fakes: &[(&str, Script)]) -> TestRelay {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::parse(config, Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("{}", crate::error_chain(&e)));
        config.server.state_dir = dir.path().join("state");
        config.cache.signing_key = dir.path().join("cache-priv-key.pem");
        let prefix = format!("relay-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let by_name: HashMap<String, Arc<Fake>> = fakes
            .iter()
            .map(|(n, s)| ((*n).to_owned(), Fake::new(n, s.clone())))
            .collect();
        let mut registrations = Vec::new();
        for b in &mut config.backends {
            if let BackendUri::Fake { name, .. } = &mut b.uri {
                let fake = by_name
                    .get(name.as_str())
                    .unwrap_or_else(|| panic!("backend {}: no script for fake {name}", b.name));
                *name = format!("{prefix}/{name}");
                registrations.push(register(name, fake.clone()));
            }
        }
        let relay = crate::cli::open_relay(&config).unwrap_or_else(|e| panic!("{e:#}"));
        let tick = crate::cli::spawn_scheduler_tick(relay.scheduler().clone());
        TestRelay {
            relay,
            fakes: by_name,
            tick,
            _registrations: registrations,
            _dir: dir,
        }
    }

    /// The fake scripted as `name`.
    pub fn fake(&self, name: &str) -> &Arc<Fake> {
        (self.fakes.get(name)).unwrap_or_else(|| panic!("no fake {name}"))
    }

    /// The scheduler's view of backend `name`: `up`, `down`, `probing`, `unknown`.
    pub fn backend_state(&self, name: &str) -> &'static str {
        let snap = self.relay.scheduler().snapshot();
        let b = snap.backends.iter().find(|b| b.name == name);
        b.unwrap_or_else(|| panic!("no backend {name}")).state
    }

    /// The relay store's info for `path` (public scope).
    pub async fn stored(&self, path: &StorePath) -> Option<ValidPathInfo> {
        (self.relay.store().path_info(path, None).await).unwrap_or_else(|e| panic!("store: {e}"))
    }

    /// Waits until `path` is in the relay store; panics after `within`.
    pub async fn wait_stored(
        &self,
        path: &StorePath,
        within: std::time::Duration,
    ) -> ValidPathInfo {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.stored(path).await {
                return i;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} not stored within {within:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// A trusted client session speaking `protocol`, past its handshake.
    pub async fn client(&self, protocol: Protocol, name: &str) -> TestClient {
        let id = ClientId {
            name: name.to_owned(),
            trusted: true,
        };
        TestClient::open(&self.relay, protocol, id).await
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.tick.abort();
    }
}

/// One client session over an in-memory pipe. Dropping it hangs up (the
/// session sees its channel gone, as when an SSH client disconnects).
pub struct TestClient {
    pub client: Client,
    pub(super) log: Arc<ClientLog>,
    session: tokio::task::JoinHandle<std::result::Result<(), crate::session::Error>>,
    _gone: DropGuard,
}

const PIPE: usize = 256 << 10;

impl TestClient {
    pub async fn open(relay: &Arc<Core>, protocol: Protocol, id: ClientId) -> TestClient {
        let (c, s) = tokio::io::duplex(PIPE);
        let (sr, sw) = tokio::io::split(s);
        let log = Arc::new(ClientLog::default());
        let log_tx = collect_log(log.clone());
        let gone = CancellationToken::new();
        let (relay, sr) = (relay.clone(), BufReader::new(sr));
        let session = match protocol {
            Protocol::Serve => {
                let run = crate::session::serve::run(
                    relay,
                    sr,
                    sw,
                    log_tx.clone(),
                    true,
                    id,
                    gone.clone(),
                );
                tokio::spawn(run)
            }
            Protocol::Worker => {
                tokio::spawn(crate::session::worker::run(relay, sr, sw, id, gone.clone()))
            }
        };
        let (cr, cw) = tokio::io::split(c);
        let mut r: ConnReader = BufReader::new(Box::new(cr));
        let mut w: ConnWriter = Box::new(cw);
        let limits = Limits::default();
        let client = match protocol {
            Protocol::Serve => {
                let v = crate::wire::serve::client_handshake(&mut r, &mut w).await;
                Client::Serve(ServeClient::new(r, w, v.expect("serve handshake"), limits))
            }
            Protocol::Worker => {
                let latest = crate::wire::worker::WorkerVersion::LATEST;
                let hs = crate::wire::worker::client_handshake(&mut r, &mut w, latest, &limits);
                let v = hs.await.expect("worker handshake").version;
                Client::Worker(WorkerClient::new(r, w, v, limits))
            }
        };
        TestClient {
            client,
            log,
            session,
            _gone: gone.drop_guard(),
        }
    }

    /// Uploads one path (its NAR) to the relay.
    pub async fn upload(&mut self, info: &ValidPathInfo, nar: &[u8]) -> Result<()> {
        self.client.add_to_store_nar(info, &mut &nar[..]).await
    }

    /// BuildDerivation with default options; the log collects in [`Self::log`].
    pub async fn build(
        &mut self,
        drv_path: &StorePath,
        drv: &BasicDerivation,
    ) -> Result<BuildResult> {
        let (client, log) = (&mut self.client, &*self.log);
        let options = Options::default();
        client.build_derivation(drv_path, drv, &options, log).await
    }

    /// One worker-protocol request and its reply (a worker client only);
    /// STDERR text goes to [`Self::log`].
    pub async fn call(
        &mut self,
        req: crate::wire::worker::Request,
    ) -> Result<crate::wire::worker::Reply> {
        match &mut self.client {
            Client::Worker(w) => w.call(req, Some(&*self.log)).await,
            Client::Serve(_) => panic!("call: not a worker client"),
        }
    }

    /// QueryPathInfos / QueryPathInfo: what the relay says of `paths`.
    pub async fn path_infos(&mut self, paths: &[StorePath]) -> Result<Vec<ValidPathInfo>> {
        self.client.query_path_infos(paths.to_vec()).await
    }

    /// The NAR of `path` (DumpStorePath / NarFromPath), read to its end.
    pub async fn fetch(&mut self, path: &StorePath) -> Result<Vec<u8>> {
        self.client.dump_store_path(path).await?;
        let mut nar = Vec::new();
        let limits = crate::wire::nar::NarLimits::default();
        crate::wire::nar::copy_nar(self.client.reader(), &mut nar, limits).await?;
        self.client.nar_read();
        Ok(nar)
    }

    /// Everything the session wrote to the client's log so far (serve:
    /// stderr; worker: the in-band lines).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&lock(&self.log.text)).into_owned()
    }

    /// The activity messages (start, stop, results other than log lines)
    /// a worker client got so far, as it got them.
    pub fn activities(&self) -> Vec<StderrMsg> {
        lock(&self.log.activities).clone()
    }

    /// Waits until the log contains `needle`; panics after `within`.
    pub async fn wait_log(&self, needle: &str, within: std::time::Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{needle:?} not in the client's log within {within:?}:\n{log}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Hangs up cleanly and returns how the session ended.
    pub async fn close(self) -> std::result::Result<(), crate::session::Error> {
        let TestClient {
            client, session, ..
        } = self;
        drop(client);
        session
            .await
            .unwrap_or_else(|e| panic!("session task: {e}"))
    }
}

/// What a test client's session told it: its log as text (serve:
/// stderr; worker: the in-band lines, a build activity's start as its
/// text) and, for a worker client, the activity messages.
#[derive(Default)]
pub(super) struct ClientLog {
    text: Mutex<Vec<u8>>,
    activities: Mutex<Vec<StderrMsg>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventSink for ClientLog {
    fn publish(&self, event: LogEvent) {
        if let LogEvent::Activity(m) = &event {
            lock(&self.activities).push((**m).clone());
        }
        if let Some(t) = event.text() {
            lock(&self.text).extend_from_slice(&t);
        }
    }
}

/// A serve session's stderr queue, whose chunks collect in `log`.
fn collect_log(log: Arc<ClientLog>) -> LogSink {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(256);
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            lock(&log.text).extend_from_slice(&chunk);
        }
    });
    tx
}
