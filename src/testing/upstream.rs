//! A binary cache on 127.0.0.1 standing in for an upstream such as
//! cache.nixos.org: written by the relay's own store code (any
//! compression), signed by a test key, served by the relay's own HTTP
//! cache router, every request counted; NAR requests can be held
//! ([`TestCache::hold_nars`]), or their bodies after the first chunk
//! ([`TestCache::hold_nar_tails`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use tokio::sync::watch;

use crate::store::signing::SecretKey;
use crate::store::{Compression, Provenance, Scope, Settings, Store, Verify};
use crate::wire::nar::NarLimits;
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;

/// The key a [`TestCache`] signs with unless told otherwise.
pub fn cache_key() -> SecretKey {
    SecretKey::from_seed("upstream-test-1", [7; 32])
}

pub struct TestCache {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub key: SecretKey,
    store: Store,
    requests: Arc<Mutex<Vec<String>>>,
    open: watch::Sender<Hold>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl TestCache {
    /// A cache compressing with `compression`, signing with [`cache_key`].
    pub async fn start(compression: Compression) -> TestCache {
        TestCache::start_signed(compression, cache_key()).await
    }

    pub async fn start_signed(compression: Compression, key: SecretKey) -> TestCache {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = Settings {
            compression,
            signer: Some(Arc::new(key.clone())),
            ..Default::default()
        };
        let store = Store::open(dir.path(), settings).expect("test cache store");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (open, open_rx) = watch::channel(Hold::Open);
        let seen = requests.clone();
        let layer = middleware::from_fn(move |req: Request, next: Next| {
            let (seen, mut open) = (seen.clone(), open_rx.clone());
            async move { count_and_hold(req, next, seen, &mut open).await }
        });
        let router = crate::http::router(crate::http::HttpState::new(dir.path())).layer(layer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = crate::http::serve(listener, router).await;
        });
        TestCache {
            url,
            key,
            store,
            requests,
            open,
            task,
            _dir: dir,
        }
    }

    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// Publishes a source path `name` holding `contents` (see
    /// [`super::drv::source`]), signed; returns its info.
    pub async fn add(&self, name: &str, contents: &[u8], refs: &[StorePath]) -> ValidPathInfo {
        let (info, _) = super::drv::source(name, contents, refs);
        self.add_at(&info.path, contents, refs).await
    }

    /// Publishes `path` as a regular file holding `contents`, signed.
    pub async fn add_at(
        &self,
        path: &StorePath,
        contents: &[u8],
        refs: &[StorePath],
    ) -> ValidPathInfo {
        let (mut info, nar) = super::drv::source("x", contents, refs);
        info.path = path.clone();
        let mut w = self.store.begin(NarLimits::default()).await.expect("begin");
        let none = None::<&mut tokio::io::Sink>;
        w.pump(&mut &nar[..], none, &info.path).await.expect("pump");
        let prov = Provenance::Built {
            backend: "test".into(),
        };
        (w.commit(info, Verify::Declared, &Scope::Public, &prov)
            .await)
            .expect("commit")
    }

    /// The stored NAR file of `path` (to corrupt it).
    pub async fn nar_file(&self, path: &StorePath) -> PathBuf {
        let n = self.store.narinfo(path, None).await.expect("narinfo");
        self.root().join(n.expect("in the test cache").url)
    }

    /// How many requests so far had a path starting with `prefix`
    /// (`/nar/`, `/<hash>.narinfo`).
    pub fn requests(&self, prefix: &str) -> usize {
        let seen = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().filter(|p| p.starts_with(prefix)).count()
    }

    /// NAR requests wait (counted, unanswered) until [`Self::release_nars`].
    pub fn hold_nars(&self) {
        self.open.send_replace(Hold::Nars);
    }

    /// NAR bodies send their first chunk, then wait until
    /// [`Self::release_nars`].
    pub fn hold_nar_tails(&self) {
        self.open.send_replace(Hold::Tails);
    }

    pub fn release_nars(&self) {
        self.open.send_replace(Hold::Open);
    }
}

impl Drop for TestCache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What NAR requests wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Open,
    Nars,
    Tails,
}

async fn count_and_hold(
    req: Request,
    next: Next,
    seen: Arc<Mutex<Vec<String>>>,
    open: &mut watch::Receiver<Hold>,
) -> Response {
    let path = req.uri().path().to_owned();
    let nar = path.starts_with("/nar/");
    seen.lock().unwrap_or_else(|e| e.into_inner()).push(path);
    if !nar {
        return next.run(req).await;
    }
    let _ = open.wait_for(|h| *h != Hold::Nars).await;
    let response = next.run(req).await;
    if *open.borrow() != Hold::Tails {
        return response;
    }
    let (parts, body) = response.into_parts();
    let state = (body.into_data_stream(), open.clone(), 0usize);
    let held = futures_util::stream::unfold(state, |(mut body, mut open, n)| async move {
        use futures_util::StreamExt;
        if n == 1 {
            let _ = open.wait_for(|h| *h == Hold::Open).await;
        }
        let chunk = body.next().await?;
        Some((chunk, (body, open, n + 1)))
    });
    Response::from_parts(parts, axum::body::Body::from_stream(held))
}

/// `http://127.0.0.1:<port>` of a listener that accepts connections (the
/// kernel does) but never answers; keep the listener alive.
pub async fn silent_upstream() -> (String, tokio::net::TcpListener) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    (format!("http://{}", l.local_addr().expect("addr")), l)
}

/// `http://127.0.0.1:<port>` of a socket bound but not listening: it
/// refuses connections, and the port stays ours (keep the socket alive).
pub fn closed_upstream() -> (String, tokio::net::TcpSocket) {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    (format!("http://{}", s.local_addr().expect("addr")), s)
}
