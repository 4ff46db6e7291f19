//! The store side of a NAR being written: one blocking thread per
//! [`super::NarWriter`], fed through a bounded queue, computes the NAR hash
//! (the only time each byte is hashed), compresses, hashes the file and
//! writes it, then fsyncs. The reader of the NAR (the tee to a client, an
//! upload) only tokenizes and queues, so a client's bytes never wait on
//! hashing, compression or the disk, unless the store side falls a whole
//! queue behind.
//!
//! Falling behind: the reader then waits for the store side (backpressure;
//! each NAR's wait is recorded in `nix_relay_nar_store_wait_seconds`). Memory
//! stays bounded ([`QUEUE_CHUNKS`] × [`CHUNK_BYTES`] per writer) and the
//! entry stays complete and verified; a client is slowed only to the pace
//! of one core compressing and one file being written. Dropping the entry
//! instead would cost every later client a rebuild. CPU is bounded too: one
//! thread per NAR being written, whatever the link's speed.
//!
//! A failure of the store side (a full disk) stops it; the reader's next
//! [`Spool::send`] returns its error, naming the step and the file.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::Digest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::writer::Compression;
use super::{Error, io_err};
use crate::wire::hash::Sha256Hash;
use crate::wire::nar::NarSummary;

/// Chunks queued between a NAR's reader and its store side.
pub const QUEUE_CHUNKS: usize = 16;
/// Largest chunk queued: a reader's buffer is split into pieces this big.
pub const CHUNK_BYTES: usize = 256 << 10;
/// The file's write buffer.
const FILE_BUF: usize = 256 << 10;
/// xz's level (only with `compression = "xz"`; Nix's default).
const XZ_LEVEL: u32 = 6;
/// zstd's level: its fastest ordinary level, as before the store side had
/// its own thread.
const ZSTD_LEVEL: i32 = 1;

enum Msg {
    Data(Bytes),
    /// The NAR is complete: finish the file. Without it (the writer was
    /// dropped) the store side gives up without an fsync.
    End,
}

/// What the store side wrote.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spooled {
    /// Hash and size of the NAR itself, computed once, on the store side.
    pub nar: NarSummary,
    /// Hash and size of the (compressed) file.
    pub file_hash: Sha256Hash,
    pub file_size: u64,
}

/// The reader's handle on the store side.
pub(super) struct Spool {
    tx: Option<mpsc::Sender<Msg>>,
    task: Option<JoinHandle<Result<Spooled, Error>>>,
    tmp: PathBuf,
    /// How long the reader waited on a full queue.
    waited: Duration,
}

impl Drop for Spool {
    fn drop(&mut self) {
        if !self.waited.is_zero() {
            crate::metrics::nar_store_waited(self.waited);
        }
    }
}

impl Spool {
    /// Starts the store side writing to `file` (at `tmp`).
    pub fn start(file: std::fs::File, tmp: PathBuf, compression: Compression, gate: Gate) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        let path = tmp.clone();
        let task = tokio::task::spawn_blocking(move || run(rx, file, &path, compression, &gate));
        Spool {
            tx: Some(tx),
            task: Some(task),
            tmp,
            waited: Duration::ZERO,
        }
    }

    /// Queues a copy of `buf`; waits only while the queue is full. Fails
    /// with the store side's error once it has failed.
    pub async fn send(&mut self, buf: &[u8]) -> Result<(), Error> {
        for piece in buf.chunks(CHUNK_BYTES) {
            self.push(Msg::Data(Bytes::copy_from_slice(piece))).await?;
        }
        Ok(())
    }

    /// As [`Spool::send`] without the copy.
    pub async fn send_shared(&mut self, buf: Bytes) -> Result<(), Error> {
        let mut at = 0;
        while at < buf.len() {
            let end = (at + CHUNK_BYTES).min(buf.len());
            self.push(Msg::Data(buf.slice(at..end))).await?;
            at = end;
        }
        Ok(())
    }

    async fn push(&mut self, msg: Msg) -> Result<(), Error> {
        let Some(tx) = &self.tx else {
            return Err(self.gone("the NAR was already finished"));
        };
        let msg = match tx.try_send(msg) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(m)) => m,
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(self.failure().await),
        };
        let t0 = Instant::now();
        let sent = tx.send(msg).await;
        self.waited += t0.elapsed();
        match sent {
            Ok(()) => Ok(()),
            Err(_) => Err(self.failure().await),
        }
    }

    /// The NAR is complete: waits for the store side to write, hash and
    /// fsync the rest.
    pub async fn finish(&mut self) -> Result<Spooled, Error> {
        self.push(Msg::End).await?;
        self.tx = None;
        self.join().await
    }

    /// The store side stopped early: its error.
    async fn failure(&mut self) -> Error {
        self.tx = None;
        match self.join().await {
            Err(e) => e,
            Ok(_) => self.gone("the store side ended before the NAR did"),
        }
    }

    async fn join(&mut self) -> Result<Spooled, Error> {
        let Some(task) = self.task.take() else {
            return Err(self.gone("the store side was already joined"));
        };
        match task.await {
            Ok(r) => r,
            Err(e) => Err(self.gone(&format!("the store side's thread failed: {e}"))),
        }
    }

    fn gone(&self, why: &str) -> Error {
        io_err("writing", &self.tmp)(std::io::Error::other(why.to_owned()))
    }
}

/// The store side's thread.
fn run(
    mut rx: mpsc::Receiver<Msg>,
    file: std::fs::File,
    tmp: &Path,
    compression: Compression,
    gate: &Gate,
) -> Result<Spooled, Error> {
    let write = io_err("writing", tmp);
    let out = Counted::new(BufWriter::with_capacity(FILE_BUF, file));
    let mut sink = Sink::new(out, compression).map_err(io_err("starting compression of", tmp))?;
    let mut nar = sha2::Sha256::new();
    let mut nar_size = 0u64;
    loop {
        gate.pass();
        match rx.blocking_recv() {
            Some(Msg::Data(b)) => {
                nar.update(&b);
                nar_size += b.len() as u64;
                if let Err(e) = sink.write_all(&b) {
                    return Err(write(e));
                }
            }
            Some(Msg::End) => break,
            None => return Err(write(std::io::Error::other("the NAR was abandoned"))),
        }
    }
    let out = sink.finish().map_err(io_err("writing", tmp))?;
    let (file, file_hash, file_size) = out.into_parts().map_err(io_err("writing", tmp))?;
    file.sync_all().map_err(io_err("syncing", tmp))?;
    Ok(Spooled {
        nar: NarSummary {
            size: nar_size,
            sha256: Sha256Hash(nar.finalize().into()),
        },
        file_hash,
        file_size,
    })
}

/// Counts and hashes what is written to the file: its FileHash and FileSize.
struct Counted {
    inner: BufWriter<std::fs::File>,
    hasher: sha2::Sha256,
    size: u64,
}

impl Counted {
    fn new(inner: BufWriter<std::fs::File>) -> Self {
        Counted {
            inner,
            hasher: sha2::Sha256::new(),
            size: 0,
        }
    }

    fn into_parts(self) -> std::io::Result<(std::fs::File, Sha256Hash, u64)> {
        let file = self.inner.into_inner().map_err(|e| e.into_error())?;
        Ok((file, Sha256Hash(self.hasher.finalize().into()), self.size))
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

enum Sink {
    Plain(Counted),
    Zstd(zstd::stream::write::Encoder<'static, Counted>),
    Xz(liblzma::write::XzEncoder<Counted>),
}

impl Sink {
    fn new(out: Counted, compression: Compression) -> std::io::Result<Self> {
        Ok(match compression {
            Compression::None => Sink::Plain(out),
            Compression::Zstd => Sink::Zstd(zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?),
            Compression::Xz => Sink::Xz(liblzma::write::XzEncoder::new(out, XZ_LEVEL)),
        })
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.write_all(b),
            Sink::Zstd(w) => w.write_all(b),
            Sink::Xz(w) => w.write_all(b),
        }
    }

    /// Ends the compressed stream; the file's buffer is flushed by
    /// [`Counted::into_parts`].
    fn finish(self) -> std::io::Result<Counted> {
        match self {
            Sink::Plain(w) => Ok(w),
            Sink::Zstd(w) => w.finish(),
            Sink::Xz(w) => w.finish(),
        }
    }
}

/// Lets tests hold the store side back (unit tests only; otherwise
/// it never waits): it takes a permit before each chunk.
#[derive(Clone, Default)]
pub(crate) struct Gate(#[cfg(test)] Option<std::sync::Arc<GateState>>);

#[cfg(test)]
#[derive(Default)]
pub struct GateState {
    permits: std::sync::Mutex<usize>,
    cv: std::sync::Condvar,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

impl Gate {
    fn pass(&self) {
        #[cfg(test)]
        if let Some(s) = &self.0 {
            let mut n = s.permits.lock().unwrap_or_else(|e| e.into_inner());
            while *n == 0 {
                n = s.cv.wait(n).unwrap_or_else(|e| e.into_inner());
            }
            *n -= 1;
        }
    }
}

#[cfg(test)]
impl Gate {
    /// A gate with no permits: the store side takes nothing until opened.
    pub fn closed() -> Self {
        Gate(Some(std::sync::Arc::default()))
    }

    /// Lets `n` more chunks through.
    pub fn open(&self, n: usize) {
        if let Some(s) = &self.0 {
            *s.permits.lock().unwrap_or_else(|e| e.into_inner()) += n;
            s.cv.notify_all();
        }
    }
}

#[cfg(test)]
impl super::Store {
    /// This store's writers' store sides wait at `gate`.
    pub(crate) fn gated(mut self, gate: Gate) -> Self {
        self.gate = gate;
        self
    }
}
