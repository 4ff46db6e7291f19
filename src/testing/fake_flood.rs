//! Log floods for fakes: a build that writes a huge log without a newline,
//! in chunks, never holding more than one chunk (a fake must not be what
//! uses the memory a flood test measures).

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::fake::{Fake, Script};
use crate::wire::worker::WorkerVersion;
use crate::wire::worker::stderr::StderrMsg;
use crate::wire::{Error, Result};

/// A log of this many `x` bytes, never a newline, after the script's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    /// Serve: on stderr in chunks; worker: one `STDERR_NEXT` per chunk.
    Chunks(u64),
    /// Worker: one `STDERR_NEXT` message this long, as nix-daemon sends a
    /// line it never saw end (serve: as [`Flood::Chunks`]).
    OneMessage(u64),
}

impl Flood {
    pub fn bytes(self) -> u64 {
        match self {
            Flood::Chunks(n) | Flood::OneMessage(n) => n,
        }
    }
}

impl Script {
    pub fn flood(mut self, f: Flood) -> Self {
        self.flood = Some(f);
        self
    }
}

const CHUNK: usize = 64 << 10;
static XS: [u8; CHUNK] = [b'x'; CHUNK];

/// Writes `total` bytes of `x` in chunks through `write`, counting them in
/// [`super::fake::Record::flood_bytes`].
async fn chunks<W: AsyncWrite + Unpin>(
    fake: &Fake,
    total: u64,
    w: &mut W,
    frame: impl Fn(&[u8]) -> Vec<u8>,
) -> Result<()> {
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(CHUNK as u64) as usize;
        w.write_all(&frame(&XS[..n])).await.map_err(Error::Write)?;
        sent += n as u64;
        fake.note(|r| r.flood_bytes += n as u64);
    }
    w.flush().await.map_err(Error::Write)
}

/// A serve fake's flood, on its stderr.
pub(super) async fn serve<E: AsyncWrite + Unpin>(
    fake: &Fake,
    flood: Flood,
    stderr: &mut E,
) -> Result<()> {
    chunks(fake, flood.bytes(), stderr, <[u8]>::to_vec).await
}

/// A worker fake's flood, in band.
pub(super) async fn worker<W: AsyncWrite + Unpin>(
    fake: &Fake,
    flood: Flood,
    w: &mut W,
    v: WorkerVersion,
) -> Result<()> {
    match flood {
        Flood::Chunks(total) => {
            let frame = |c: &[u8]| {
                let mut buf = Vec::with_capacity(c.len() + 24);
                StderrMsg::Next(c.to_vec()).write(&mut buf, v);
                buf
            };
            chunks(fake, total, w, frame).await
        }
        Flood::OneMessage(total) => {
            let (head, pad) = StderrMsg::next_streamed(total);
            w.write_all(&head).await.map_err(Error::Write)?;
            chunks(fake, total, w, <[u8]>::to_vec).await?;
            w.write_all(pad).await.map_err(Error::Write)?;
            w.flush().await.map_err(Error::Write)
        }
    }
}
