//! Pull-through while fetching. The HTTP cache answers a narinfo only
//! upstream has at once, with an entry of the relay's own (upstream's
//! NarHash, NarSize and references, signed by the relay's key,
//! `Compression: none`, URL `nar/live/<hash>.nar`), and serves that URL
//! from the fetch in flight: each chunk, decompressed and passed by the NAR
//! tokenizer, is appended to a spool file that readers follow, so a
//! substituter gets the bytes as the relay gets them rather than after the
//! whole NAR is stored. Once the entry is stored the URL is served from the
//! store, decompressed; if the store no longer has it, it is fetched again.
//! Nothing is fetched for a narinfo alone: only a NAR request starts a
//! fetch (a `nix path-info` over a whole closure downloads nothing).
//!
//! Trust: a live NAR reaches the substituter before the relay has verified
//! it; the substituter checks it against the signed NarHash itself (every
//! Nix does), and a body whose fetch fails is cut short with an error, never
//! ended early as if complete. The store takes the NAR only verified.
//! Bounds: the spool is a file (memory per reader is one
//! [`LIVE_CHUNK`]), removed when the fetch and its last reader are done; a
//! reader waits at most as long as the fetch, which the stall timeout bounds.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::io::ReaderStream;

use super::{Error, Found, Upstream, lock};
use crate::store::{NarWriter, Scope};
use crate::wire::store_path::StorePath;

/// Bytes read per chunk from a spool or a stored NAR.
pub const LIVE_CHUNK: usize = 256 << 10;

static SPOOLS: AtomicU64 = AtomicU64::new(0);

/// A live NAR's URL, relative to the cache.
pub fn live_url(hash: &str) -> String {
    format!("nar/live/{hash}.nar")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The fetch stored the entry (or found it stored).
    Stored,
    Failed,
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    written: u64,
    end: Option<End>,
}

/// One fetch's spool, followed by its readers.
pub(super) struct Live {
    spool: PathBuf,
    nar_size: u64,
    progress: watch::Sender<Progress>,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.spool)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(file = %self.spool.display(), error = %e, "could not remove a live spool");
        }
    }
}

impl Live {
    pub(super) fn new(store_root: &std::path::Path, hash: &str, nar_size: u64) -> Live {
        let n = SPOOLS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{n}-{hash}.live", std::process::id());
        Live {
            spool: store_root.join("tmp").join(name),
            nar_size,
            progress: watch::Sender::new(Progress::default()),
        }
    }

    /// The fetch is over: readers finish (stored) or fail. The first call counts.
    pub(super) fn end(&self, stored: bool) {
        let end = if stored { End::Stored } else { End::Failed };
        self.progress.send_if_modified(|p| {
            let first = p.end.is_none();
            p.end.get_or_insert(end);
            first
        });
    }
}

/// Streams one NAR from `nar` into the store writer `w` and, chunk by
/// chunk, into `live`'s spool (written and flushed before readers are told).
pub(super) async fn pump_live<R>(
    w: &mut NarWriter,
    nar: &mut R,
    live: &Live,
    path: &StorePath,
) -> Result<(), Error>
where
    R: AsyncBufRead + Unpin + ?Sized,
{
    let spool_err = |source| Error::Spool {
        path: path.clone(),
        source,
    };
    let store_err = |e| super::fetch::store_err(path, e);
    let mut out = (tokio::fs::File::create(&live.spool).await).map_err(spool_err)?;
    let mut written = 0u64;
    while !w.is_done() {
        let buf = nar.fill_buf().await.map_err(|e| {
            store_err(crate::store::Error::Nar {
                path: path.clone(),
                source: crate::wire::Error::read("NAR", e),
            })
        })?;
        if buf.is_empty() {
            return Err(store_err(crate::store::Error::Nar {
                path: path.clone(),
                source: crate::wire::Error::UnexpectedEof { field: "NAR" },
            }));
        }
        let n = w.feed(buf, path).await.map_err(store_err)?;
        out.write_all(&buf[..n]).await.map_err(spool_err)?;
        out.flush().await.map_err(spool_err)?;
        written += n as u64;
        live.progress.send_modify(|p| p.written = written);
        nar.consume(n);
    }
    Ok(())
}

/// A NAR served at a live URL: its size and its body.
pub struct LiveNar {
    pub size: u64,
    /// Followed from a fetch in flight (else read from the store).
    pub live: bool,
    pub body: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
}

impl Upstream {
    /// The narinfo the HTTP cache serves for `hash` when the store lacks
    /// it: upstream's trusted entry as a live entry of the relay's (see the
    /// module doc); None if no upstream has it (or it is over `max_nar_size`).
    pub async fn live_narinfo(&self, hash: &str) -> Option<String> {
        let found = self.lookup_hash(hash).await?;
        if found.narinfo.nar_size > self.nar_limits.max_nar_bytes {
            return None;
        }
        let mut n = found.narinfo.clone();
        n.url = live_url(hash);
        n.compression = "none".into();
        (n.file_hash, n.file_size) = (None, None);
        if let Some(key) = &self.store.settings().signer {
            let sig = key.sign(&crate::store::fingerprint(&found.info()));
            if !n.sigs.contains(&sig) {
                n.sigs.push(sig);
            }
        }
        Some(n.render())
    }

    /// The NAR behind `nar/live/<hash>.nar`: followed while its fetch is in
    /// flight, else read from the store, else fetched (and followed); None
    /// if no upstream has it either.
    pub async fn live_nar(self: &Arc<Self>, hash: &str) -> Result<Option<LiveNar>, Error> {
        for _ in 0..2 {
            if let Some(nar) = self.follow(hash).await? {
                return Ok(Some(nar));
            }
            if let Some(nar) = self.stored_nar(hash).await? {
                return Ok(Some(nar));
            }
            let Some(found) = self.lookup_hash(hash).await else {
                return Ok(None);
            };
            if found.narinfo.nar_size > self.nar_limits.max_nar_bytes {
                return Ok(None);
            }
            let mut rx = self.start(found, false, true);
            if !lock(&self.lives).contains_key(hash) {
                // A fetch with no spool (a build's input) was in flight: wait for it.
                let _ = rx.wait_for(Option::is_some).await;
            }
        }
        Ok(None)
    }

    /// The spool of `hash`'s fetch in flight, once it has bytes; None if
    /// there is none or its fetch ended without writing one.
    async fn follow(&self, hash: &str) -> Result<Option<LiveNar>, Error> {
        let Some(live) = lock(&self.lives).get(hash).cloned() else {
            return Ok(None);
        };
        let mut rx = live.progress.subscribe();
        let p = *(rx.wait_for(|p| p.written > 0 || p.end.is_some()).await)
            .map_err(|_| Error::Lost(hash.to_owned()))?;
        match p.end {
            _ if p.written > 0 => {}
            Some(End::Failed) => return Err(Error::Lost(hash.to_owned())),
            _ => return Ok(None),
        }
        let size = live.nar_size;
        let body = futures_util::stream::try_unfold((live, rx, None, 0u64), read_spool);
        Ok(Some(LiveNar {
            size,
            live: true,
            body: Box::pin(body),
        }))
    }

    /// The stored public entry of `hash`, decompressed.
    async fn stored_nar(&self, hash: &str) -> Result<Option<LiveNar>, Error> {
        let store_err = |e| Error::Stored {
            hash: hash.to_owned(),
            source: e,
        };
        let Some(info) = self.store.public_narinfo(hash).await.map_err(store_err)? else {
            return Ok(None);
        };
        let reader = (self.store.open_nar_of(&Scope::Public, &info).await).map_err(store_err)?;
        Ok(Some(LiveNar {
            size: info.nar_size,
            live: false,
            body: Box::pin(ReaderStream::with_capacity(reader, LIVE_CHUNK)),
        }))
    }
}

type SpoolState = (
    Arc<Live>,
    watch::Receiver<Progress>,
    Option<tokio::fs::File>,
    u64,
);

/// The next chunk of a spool at `pos`, waiting for the fetch to write it;
/// an error if the fetch ends before the NAR's last byte is there.
async fn read_spool(
    (live, mut rx, file, pos): SpoolState,
) -> io::Result<Option<(Bytes, SpoolState)>> {
    if pos >= live.nar_size {
        return Ok(None);
    }
    let p = *(rx.wait_for(|p| p.written > pos || p.end.is_some()).await)
        .map_err(|_| io::Error::other("the fetch from upstream went away"))?;
    if p.written <= pos {
        let (got, size) = (p.written, live.nar_size);
        return Err(io::Error::other(format!(
            "the fetch from upstream ended after {got} of {size} bytes"
        )));
    }
    let mut f = match file {
        Some(f) => f,
        None => tokio::fs::File::open(&live.spool).await?,
    };
    let want = (p.written.min(live.nar_size) - pos).min(LIVE_CHUNK as u64) as usize;
    let mut buf = vec![0; want];
    f.read_exact(&mut buf).await?;
    let next = pos + want as u64;
    Ok(Some((Bytes::from(buf), (live, rx, Some(f), next))))
}

/// Ends a fetch's spool as failed unless it was ended (a fetch task that
/// fails or is dropped never leaves a reader waiting).
pub(super) struct LiveGuard(pub Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.end(false);
    }
}

impl Found {
    pub(super) fn hash(&self) -> &str {
        self.narinfo.store_path.hash_part()
    }
}
