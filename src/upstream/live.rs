//! Pull-through while fetching. The HTTP cache answers a narinfo only
//! upstream has at once, with an entry of the relay's own (upstream's
//! NarHash, NarSize and references, signed by the relay's key,
//! `Compression: none`, URL `nar/live/<hash>.nar`), and serves that URL
//! from the fetch in flight: each chunk, decompressed and passed by the NAR
//! tokenizer, goes to the fetch's readers from a window of the last
//! [`LIVE_WINDOW`] bytes in memory, then to the store side, so a
//! substituter gets the bytes as the relay gets them rather than after the
//! whole NAR is stored. A reader that falls out of the window (or comes
//! after the start has left it) goes on from the stored entry once it is
//! stored. Once the entry is stored the URL is served from the store,
//! decompressed; if the store no longer has it, it is fetched again.
//! Nothing is fetched for a narinfo alone: only a NAR request starts a
//! fetch (a `nix path-info` over a whole closure downloads nothing).
//!
//! Trust: a live NAR reaches the substituter before the relay has verified
//! it; the substituter checks it against the signed NarHash itself (every
//! Nix does), and a body whose fetch fails is cut short with an error, never
//! ended early as if complete. The store takes the NAR only verified.
//! Bounds: [`LIVE_WINDOW`] bytes per fetch in flight (readers share its
//! chunks); a reader waits at most as long as the fetch, which the stall
//! timeout bounds.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncBufRead;
use tokio::sync::watch;
use tokio_util::io::ReaderStream;

use super::{Error, Upstream, lock};
use crate::store::{NarWriter, Scope};
use crate::wire::store_path::StorePath;

/// Bytes read per chunk from a stored NAR.
pub const LIVE_CHUNK: usize = 256 << 10;
/// The most recent bytes of a fetch in flight kept in memory for its readers.
pub const LIVE_WINDOW: usize = 8 << 20;

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

/// The last bytes of a fetch: `chunks` start at offset `start`.
#[derive(Default)]
struct Window {
    start: u64,
    chunks: VecDeque<Bytes>,
    held: usize,
}

/// One fetch's window, followed by its readers.
pub(super) struct Live {
    nar_size: u64,
    window: Mutex<Window>,
    progress: watch::Sender<Progress>,
}

impl Live {
    pub(super) fn new(nar_size: u64) -> Live {
        Live {
            nar_size,
            window: Mutex::default(),
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

    /// Appends the NAR's next bytes, dropping the oldest beyond the window.
    fn push(&self, chunk: Bytes) {
        let written = {
            let mut w = lock(&self.window);
            w.held += chunk.len();
            w.chunks.push_back(chunk);
            while w.held > LIVE_WINDOW && w.chunks.len() > 1 {
                let old = w.chunks.pop_front().unwrap_or_default();
                w.held -= old.len();
                w.start += old.len() as u64;
            }
            w.start + w.held as u64
        };
        self.progress.send_modify(|p| p.written = written);
    }

    /// The bytes from `pos` on (at most one chunk; empty if there are none
    /// yet); None if `pos` has left the window.
    fn at(&self, pos: u64) -> Option<Bytes> {
        let w = lock(&self.window);
        let mut off = w.start;
        if pos < off {
            return None;
        }
        for c in &w.chunks {
            let end = off + c.len() as u64;
            if pos < end {
                return Some(c.slice((pos - off) as usize..));
            }
            off = end;
        }
        Some(Bytes::new())
    }
}

/// Streams one NAR from `nar` into the store writer `w`, each checked chunk
/// to `live`'s readers first.
pub(super) async fn pump_live<R>(
    w: &mut NarWriter,
    nar: &mut R,
    live: &Live,
    path: &StorePath,
) -> Result<(), Error>
where
    R: AsyncBufRead + Unpin + ?Sized,
{
    let pumped = w.pump_shared(nar, path, |c| live.push(c.clone())).await;
    pumped.map_err(|e| super::fetch::store_err(path, e))
}

/// Paths a backend may substitute from the relay (see [`Upstream::expect`]).
pub(super) struct Group {
    paths: Vec<StorePath>,
    started: AtomicBool,
}

/// Unmarks its paths when dropped.
pub struct Expected {
    up: Arc<Upstream>,
    group: Arc<Group>,
}

impl Drop for Expected {
    fn drop(&mut self) {
        let mut expected = lock(&self.up.expected);
        for p in &self.group.paths {
            let hash = p.hash_part();
            if expected
                .get(hash)
                .is_some_and(|g| Arc::ptr_eq(g, &self.group))
            {
                expected.remove(hash);
            }
        }
    }
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
    pub async fn live_narinfo(self: &Arc<Self>, hash: &str) -> Option<String> {
        let found = self.lookup_hash(hash).await?;
        self.asked(hash);
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
                // A fetch with no window (a build's input) was in flight: wait for it.
                let _ = rx.wait_for(Option::is_some).await;
            }
        }
        Ok(None)
    }

    /// Marks `paths` (references first) as a build's inputs a backend is
    /// about to be asked to substitute: if the backend asks the relay's
    /// HTTP cache for one of them while the guard lives (so it substitutes
    /// from the relay), all of them are fetched side by side from then on,
    /// rather than each only after its references as a substituter asks.
    /// A backend that substitutes from elsewhere costs no fetch.
    pub fn expect(self: &Arc<Self>, paths: Vec<StorePath>) -> Expected {
        let group = Arc::new(Group {
            paths,
            started: AtomicBool::new(false),
        });
        let mut expected = lock(&self.expected);
        for p in &group.paths {
            expected.insert(p.hash_part().to_owned(), group.clone());
        }
        Expected {
            up: self.clone(),
            group,
        }
    }

    /// A narinfo of `hash` was asked for: its group's prefetch starts.
    fn asked(self: &Arc<Self>, hash: &str) {
        let Some(group) = lock(&self.expected).get(hash).cloned() else {
            return;
        };
        if group.started.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::debug!(
            paths = group.paths.len(),
            "prefetching inputs from upstream"
        );
        let this = self.clone();
        tokio::spawn(async move {
            for p in &group.paths {
                if let Some(found) = this.lookup(p).await
                    && found.narinfo.nar_size <= this.nar_limits.max_nar_bytes
                {
                    drop(this.start(found, false, true));
                }
            }
        });
    }

    /// The window of `hash`'s fetch in flight, followed from its start;
    /// None if there is none, its start has left the window, or its fetch
    /// ended without streaming (the caller reads the store).
    async fn follow(self: &Arc<Self>, hash: &str) -> Result<Option<LiveNar>, Error> {
        let Some(live) = lock(&self.lives).get(hash).cloned() else {
            return Ok(None);
        };
        let mut rx = live.progress.subscribe();
        let p = *(rx.wait_for(|p| p.written > 0 || p.end.is_some()).await)
            .map_err(|_| Error::Lost(hash.to_owned()))?;
        if p.written == 0 || live.at(0).is_none() {
            let p = *(rx.wait_for(|p| p.end.is_some()).await)
                .map_err(|_| Error::Lost(hash.to_owned()))?;
            return match p.end {
                Some(End::Failed) => Err(Error::Lost(hash.to_owned())),
                _ => Ok(None),
            };
        }
        let size = live.nar_size;
        let reader = Follower {
            up: self.clone(),
            hash: hash.to_owned(),
            live,
            rx,
            pos: 0,
            stored: None,
        };
        let body = futures_util::stream::try_unfold(reader, Follower::next);
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

type Body = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A reader of a live NAR: from the window, or, once it has fallen out of
/// it, from the stored entry (skipping what it already sent).
struct Follower {
    up: Arc<Upstream>,
    hash: String,
    live: Arc<Live>,
    rx: watch::Receiver<Progress>,
    /// Bytes sent so far.
    pos: u64,
    /// The stored entry and how much of it is still to skip.
    stored: Option<(Body, u64)>,
}

impl Follower {
    /// The next chunk; an error if the fetch ends before the NAR's last byte.
    async fn next(mut self) -> io::Result<Option<(Bytes, Follower)>> {
        let size = self.live.nar_size;
        while self.pos < size {
            let chunk = match &mut self.stored {
                Some(_) => self.next_in_store().await?,
                None => self.next_in_window().await?,
            };
            if let Some(c) = chunk {
                let c = c.slice(..c.len().min((size - self.pos) as usize));
                self.pos += c.len() as u64;
                return Ok(Some((c, self)));
            }
        }
        Ok(None)
    }

    /// The window's next bytes; None once the reader has left the window
    /// (it goes on from the store).
    async fn next_in_window(&mut self) -> io::Result<Option<Bytes>> {
        let pos = self.pos;
        let p = *(self
            .rx
            .wait_for(|p| p.written > pos || p.end.is_some())
            .await)
            .map_err(|_| io::Error::other("the fetch from upstream went away"))?;
        match self.live.at(pos) {
            Some(c) if !c.is_empty() => Ok(Some(c)),
            Some(_) => Err(io::Error::other(format!(
                "the fetch from upstream ended after {} of {} bytes",
                p.written, self.live.nar_size
            ))),
            None => {
                let p = *(self.rx.wait_for(|p| p.end.is_some()).await)
                    .map_err(|_| io::Error::other("the fetch from upstream went away"))?;
                if p.end == Some(End::Failed) {
                    return Err(io::Error::other("the fetch from upstream failed"));
                }
                let nar = self.up.stored_nar(&self.hash).await;
                let nar = nar.map_err(|e| io::Error::other(crate::error_chain(&e)))?;
                let nar = nar.ok_or_else(|| io::Error::other("the stored entry is gone"))?;
                self.stored = Some((nar.body, pos));
                Ok(None)
            }
        }
    }

    /// The stored entry's next bytes past those already sent.
    async fn next_in_store(&mut self) -> io::Result<Option<Bytes>> {
        let Some((body, skip)) = &mut self.stored else {
            return Ok(None);
        };
        loop {
            let Some(c) = body.next().await.transpose()? else {
                return Err(io::Error::other(
                    "the stored NAR is shorter than its NarSize",
                ));
            };
            if (c.len() as u64) <= *skip {
                *skip -= c.len() as u64;
                continue;
            }
            let c = c.slice(*skip as usize..);
            *skip = 0;
            return Ok(Some(c));
        }
    }
}

/// Ends a fetch's window as failed unless it was ended (a fetch task that
/// fails or is dropped never leaves a reader waiting).
pub(super) struct LiveGuard(pub Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.end(false);
    }
}

impl super::Found {
    pub(super) fn hash(&self) -> &str {
        self.narinfo.store_path.hash_part()
    }
}
