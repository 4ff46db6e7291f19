//! Fetching paths from upstream into the store's public scope: references
//! first, one fetch per path however many ask. See the module doc.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_compression::tokio::bufread::{XzDecoder, ZstdDecoder};
use tokio::io::{AsyncBufRead, BufReader};
use tokio::sync::watch;

use super::live::{Live, LiveGuard, pump_live};
use super::{Error, Found, Outcome, Upstream, lock};
use crate::store::{Provenance, Scope, Verify};
use crate::wire::store_path::StorePath;

/// Read buffer behind a decompressor.
const DECODED_BUF: usize = 256 << 10;

type Boxed = Pin<Box<dyn Future<Output = Outcome> + Send>>;

impl Upstream {
    /// Makes sure `path` is in the store's public scope, fetching it (and
    /// its references) from upstream if it is not there yet: Ok(true) if it
    /// is there now, Ok(false) if no upstream has it (trusted).
    pub async fn fetch(self: &Arc<Self>, path: &StorePath) -> Outcome {
        if self.in_store(path).await? {
            return Ok(true);
        }
        match self.lookup(path).await {
            Some(found) => self.fetch_found(found, true).await,
            None => Ok(false),
        }
    }

    async fn in_store(&self, path: &StorePath) -> Result<bool, Arc<Error>> {
        let found = self.store.narinfo(path, None).await;
        Ok(found.map_err(|e| store_err(path, e))?.is_some())
    }

    fn fetch_boxed(self: Arc<Self>, path: StorePath) -> Boxed {
        Box::pin(async move { self.fetch(&path).await })
    }

    /// Joins the fetch of `found`'s path in flight, or starts it.
    async fn fetch_found(self: &Arc<Self>, found: Arc<Found>, refs_first: bool) -> Outcome {
        let path = found.narinfo.store_path.to_string();
        let mut rx = self.start(found, refs_first, false);
        match rx.wait_for(Option::is_some).await {
            Ok(v) => (*v)
                .clone()
                .unwrap_or_else(|| Err(Arc::new(Error::Lost(path)))),
            Err(_) => Err(Arc::new(Error::Lost(path))),
        }
    }

    /// The fetch of `found`'s path in flight, or a new one in a task of its
    /// own (with a window readers can follow if `live`, see `live`): a
    /// receiver of its result.
    pub(super) fn start(
        self: &Arc<Self>,
        found: Arc<Found>,
        refs_first: bool,
        live: bool,
    ) -> watch::Receiver<Option<Outcome>> {
        let hash = found.hash().to_owned();
        let mut flights = lock(&self.flights);
        if let Some(tx) = flights.get(&hash) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        flights.insert(hash.clone(), tx.clone());
        let live = live.then(|| {
            let l = Live::new(found.narinfo.nar_size);
            let l = Arc::new(l);
            lock(&self.lives).insert(hash.clone(), l.clone());
            LiveGuard(l)
        });
        let this = self.clone();
        tokio::spawn(async move {
            let window = live.as_ref().map(|g| &*g.0);
            let outcome = this.fetch_now(&found, refs_first, window).await;
            let outcome = outcome.map_err(Arc::new);
            if let Some(g) = &live {
                g.0.end(outcome.is_ok());
                lock(&this.lives).remove(&hash);
            }
            if let Err(e) = &outcome {
                tracing::warn!("{}", crate::error_chain(e));
                this.forget(&hash);
            }
            lock(&this.flights).remove(&hash);
            let _ = tx.send(Some(outcome));
        });
        rx
    }

    /// References first (if `refs_first`), then the NAR.
    async fn fetch_now(
        self: &Arc<Self>,
        found: &Found,
        refs_first: bool,
        live: Option<&Live>,
    ) -> Result<bool, Error> {
        let path = &found.narinfo.store_path;
        if self
            .in_store(path)
            .await
            .map_err(|e| reference_err(path, e))?
        {
            return Ok(true);
        }
        let refs: Vec<StorePath> = (found.narinfo.references.iter())
            .filter(|r| refs_first && *r != path)
            .cloned()
            .collect();
        let each = refs.iter().map(|r| self.clone().fetch_boxed(r.clone()));
        let fetched = futures_util::future::join_all(each).await;
        for (r, got) in refs.iter().zip(fetched) {
            match got {
                Ok(true) => {}
                Ok(false) => {
                    crate::metrics::upstream_fetch_failed("reference");
                    return Err(Error::MissingReference {
                        path: path.clone(),
                        reference: r.clone(),
                    });
                }
                Err(e) => {
                    crate::metrics::upstream_fetch_failed("reference");
                    return Err(reference_err(path, e));
                }
            }
        }
        let _permit = self.nars.acquire().await;
        self.download(found, live).await.inspect_err(|e| {
            crate::metrics::upstream_fetch_failed(failure_reason(e));
        })?;
        crate::metrics::upstream_nar_bytes(found.narinfo.nar_size);
        tracing::info!(%path, bytes = found.narinfo.nar_size, "fetched from upstream");
        Ok(true)
    }

    /// Streams the NAR of `found` into the store, verified (and into
    /// `live`'s window as it comes, if given).
    async fn download(&self, found: &Found, live: Option<&Live>) -> Result<(), Error> {
        let n = &found.narinfo;
        let path = &n.store_path;
        let limit = self.nar_limits.max_nar_bytes;
        if n.nar_size > limit {
            let size = n.nar_size;
            return Err(Error::TooLarge {
                path: path.clone(),
                size,
                limit,
            });
        }
        let base = &self.caches[found.cache].url;
        let url = format!("{base}/{}", n.url);
        let net = |source| Error::Network {
            url: url.clone(),
            source,
        };
        let timeout = self.cfg.timeout;
        let reply = match tokio::time::timeout(timeout, self.get(found.cache, &n.url)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(net(crate::outbound::Error::Timeout {
                    host: base.host.clone(),
                    what: "answer a NAR request",
                    limit: timeout,
                }));
            }
        };
        if reply.status != 200 {
            let status = reply.status;
            return Err(Error::Status { url, status });
        }
        let raw = reply.into_reader(self.cfg.stall_timeout);
        let mut nar: Pin<Box<dyn AsyncBufRead + Send>> = match n.compression.as_str() {
            "xz" => Box::pin(BufReader::with_capacity(DECODED_BUF, XzDecoder::new(raw))),
            "zstd" => Box::pin(BufReader::with_capacity(DECODED_BUF, ZstdDecoder::new(raw))),
            _ => raw,
        };
        let store_err = |e| store_err(path, e);
        let mut w = self.store.begin(self.nar_limits).await.map_err(store_err)?;
        match live {
            Some(live) => pump_live(&mut w, &mut nar, live, path).await?,
            None => {
                let none = None::<&mut tokio::io::Sink>;
                w.pump(&mut nar, none, path).await.map_err(store_err)?;
            }
        }
        let prov = Provenance::Signed {
            key: found.key.clone(),
        };
        let info = found.info();
        (w.commit(info, Verify::Declared, &Scope::Public, &prov)
            .await)
            .map_err(store_err)?;
        Ok(())
    }
}

pub(super) fn store_err(path: &StorePath, source: crate::store::Error) -> Error {
    Error::Store {
        path: path.clone(),
        source,
    }
}

fn reference_err(path: &StorePath, source: Arc<Error>) -> Error {
    Error::Reference {
        path: path.clone(),
        source,
    }
}

/// The `reason` label of a failed download.
fn failure_reason(e: &Error) -> &'static str {
    match e {
        Error::Store {
            source: crate::store::Error::Mismatch { .. },
            ..
        } => "mismatch",
        Error::Store {
            source: crate::store::Error::Nar { .. },
            ..
        } => "nar",
        Error::Store { .. } => "store",
        Error::TooLarge { .. } => "too_large",
        _ => "network",
    }
}

impl Upstream {
    /// How many callers await the fetch of `hash` in flight (tests).
    pub fn waiting(&self, hash: &str) -> usize {
        lock(&self.flights)
            .get(hash)
            .map_or(0, |tx| tx.receiver_count())
    }
}
