//! Harness additions for the fault tests: builds with the client's own
//! options, the relay store's consistency, and raw client sessions that a
//! test feeds bytes of its choosing (garbage after a handshake).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::harness::{TestClient, TestRelay};
use crate::config::Protocol;
use crate::session::ClientId;
use crate::store::narinfo::NarInfo;
use crate::wire::Result;
use crate::wire::build::{BasicDerivation, BuildOptions, BuildResult};
use crate::wire::hash::Sha256Hash;
use crate::wire::store_path::StorePath;

impl TestClient {
    /// BuildDerivation with the client's `options` (max-silent-time,
    /// timeout, ...); the log collects in [`Self::log`].
    pub async fn build_with(
        &mut self,
        drv_path: &StorePath,
        drv: &BasicDerivation,
        options: BuildOptions,
    ) -> Result<BuildResult> {
        let (client, log) = (&mut self.client, &*self.log);
        let options = crate::backend::Options::from(options);
        client.build_derivation(drv_path, drv, &options, log).await
    }
}

impl TestRelay {
    /// Asserts the relay store is consistent, as after a crash-free run:
    /// its `tmp/` empties within `within` (abandoned writes are removed)
    /// and every narinfo (public and private) names a NAR file of its
    /// FileSize and FileHash. Returns how many narinfos there are.
    pub async fn assert_store_consistent(&self, within: Duration) -> usize {
        let root = self.relay.store().root().to_owned();
        let tmp = root.join("tmp");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left: Vec<_> = std::fs::read_dir(&tmp)
                .unwrap_or_else(|e| panic!("{}: {e}", tmp.display()))
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<_>>()
                .unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
            if left.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the store's tmp/ still holds {left:?} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut dirs = vec![root.clone()];
        if let Ok(private) = std::fs::read_dir(root.join("private")) {
            dirs.extend(private.flatten().map(|e| e.path()));
        }
        let mut n = 0;
        for dir in dirs {
            for e in std::fs::read_dir(&dir).expect("store dir").flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "narinfo") {
                    check_narinfo(&dir, &p);
                    n += 1;
                }
            }
        }
        n
    }

    /// A trusted client session speaking `protocol` with no client in
    /// front: the test writes and reads its bytes itself.
    pub fn raw_session(&self, protocol: Protocol, name: &str) -> RawSession {
        let (c, s) = tokio::io::duplex(256 << 10);
        let (sr, sw) = tokio::io::split(s);
        let (relay, sr) = (self.relay.clone(), BufReader::new(sr));
        let id = ClientId {
            name: name.to_owned(),
            trusted: true,
        };
        let gone = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let into = stderr.clone();
        tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                into.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk);
            }
        });
        let session = match protocol {
            Protocol::Serve => tokio::spawn(crate::session::serve::run(
                relay,
                sr,
                sw,
                tx,
                true,
                id,
                gone.clone(),
            )),
            Protocol::Worker => {
                tokio::spawn(crate::session::worker::run(relay, sr, sw, id, gone.clone()))
            }
        };
        RawSession {
            io: c,
            session,
            stderr,
            _gone: gone.drop_guard(),
        }
    }
}

/// The narinfo `file` in `dir` names an existing NAR of its FileSize and
/// FileHash.
fn check_narinfo(dir: &std::path::Path, file: &std::path::Path) {
    let text = std::fs::read_to_string(file).expect("narinfo");
    let ni = NarInfo::parse(&text).unwrap_or_else(|e| panic!("{}: {e:?}", file.display()));
    let nar = dir.join(&ni.url);
    let bytes =
        std::fs::read(&nar).unwrap_or_else(|e| panic!("{} names {}: {e}", file.display(), ni.url));
    if let Some(size) = ni.file_size {
        assert_eq!(bytes.len() as u64, size, "{}: FileSize", file.display());
    }
    if let Some(h) = ni.file_hash {
        assert_eq!(
            Sha256Hash::digest(&bytes),
            h,
            "{}: FileHash",
            file.display()
        );
    }
}

/// A client session whose bytes the test writes itself.
pub struct RawSession {
    /// The client's end of the session's pipe.
    pub io: DuplexStream,
    pub session: tokio::task::JoinHandle<std::result::Result<(), crate::session::Error>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    _gone: DropGuard,
}

/// How a [`RawSession`] ended after [`RawSession::feed`].
pub struct RawEnd {
    /// Everything the session wrote to the client.
    pub out: Vec<u8>,
    /// The session's error (what the SSH front reports as
    /// `nix-relay: error: ...` and logs as `session failed`), rendered
    /// with its causes; `None` if it ended cleanly.
    pub error: Option<String>,
    /// What a serve session wrote to its stderr.
    pub stderr: String,
}

impl RawSession {
    /// Writes `bytes` (ignoring a pipe the session closed) while reading
    /// what it answers, until the session ends; panics if it has not
    /// within `within`.
    pub async fn feed(self, bytes: &[u8], within: Duration) -> RawEnd {
        let RawSession {
            io,
            session,
            stderr,
            _gone,
        } = self;
        let (mut r, mut w) = tokio::io::split(io);
        let write = async {
            let _ = w.write_all(bytes).await;
        };
        let mut out = Vec::new();
        let read = async {
            let _ = r.read_to_end(&mut out).await;
        };
        let ended = async {
            tokio::join!(write, read);
            session.await
        };
        let res = tokio::time::timeout(within, ended)
            .await
            .unwrap_or_else(|_| panic!("the session was still open after {within:?}"))
            .unwrap_or_else(|e| panic!("session task: {e}"));
        let stderr =
            String::from_utf8_lossy(&stderr.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        RawEnd {
            out,
            error: res.err().map(|e| crate::error_chain(&e)),
            stderr,
        }
    }
}
