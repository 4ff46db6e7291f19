//! Framed streams: `(u64 len>0 · len raw bytes)* · u64 0`, no padding.
//!
//! [`FramedReader`] yields the payload bytes and reports end of stream at
//! the terminator; a frame longer than the limit is an error, and
//! [`FramedReader::drain`] then still skips to the terminator (without
//! buffering) so the connection stays in sync. [`FramedWriter`] cuts what
//! it is given into frames of at most `frame_size` bytes; its buffer never
//! grows beyond one frame. [`FramedWriter::finish`] writes the terminator.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use futures_util::FutureExt;

use super::super::primitives::{put_u64, read_u64};
use super::super::{Error, Limits, Result};

/// Frame size the relay writes (what Nix's FramedSink uses, 32 KiB).
pub const DEFAULT_FRAME_SIZE: usize = 32 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// Reading a frame header; `have` bytes of it are in `hdr`.
    Header { hdr: [u8; 8], have: u8 },
    /// Inside a frame with `remaining` bytes left.
    Frame { remaining: u64 },
    /// The terminator has been read.
    Done,
}

pub struct FramedReader<R> {
    inner: R,
    state: ReadState,
    max_frame: u64,
}

impl<R: AsyncRead + Unpin> FramedReader<R> {
    /// Frames longer than `limits.max_string_bytes` are refused.
    pub fn new(inner: R, limits: &Limits) -> Self {
        FramedReader {
            inner,
            state: ReadState::Header {
                hdr: [0; 8],
                have: 0,
            },
            max_frame: limits.max_string_bytes as u64,
        }
    }

    /// True once the terminator has been read.
    pub fn is_done(&self) -> bool {
        self.state == ReadState::Done
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Skips everything up to and including the terminator, whatever the
    /// frame sizes (also after a frame over the limit). Returns the number
    /// of payload bytes skipped.
    pub async fn drain(&mut self) -> Result<u64> {
        self.max_frame = u64::MAX;
        let mut skipped = 0;
        let mut scratch = [0u8; 8192];
        loop {
            let n = self
                .read(&mut scratch)
                .await
                .map_err(|e| Error::read("framed stream", e))?;
            if n == 0 {
                return Ok(skipped);
            }
            skipped += n as u64;
        }
    }

    fn poll_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let ReadState::Header { mut hdr, mut have } = self.state else {
            return Poll::Ready(Ok(()));
        };
        while have < 8 {
            let mut rb = ReadBuf::new(&mut hdr[usize::from(have)..]);
            let res = Pin::new(&mut self.inner).poll_read(cx, &mut rb);
            let n = rb.filled().len() as u8;
            have += n;
            self.state = ReadState::Header { hdr, have };
            ready!(res)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        let len = decode_u64(&hdr)?;
        self.state = match len {
            0 => ReadState::Done,
            remaining => ReadState::Frame { remaining },
        };
        if len > self.max_frame {
            let msg = format!(
                "frame of {len} bytes exceeds the limit of {}",
                self.max_frame
            );
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, msg)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FramedReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.state {
                ReadState::Done => return Poll::Ready(Ok(())),
                ReadState::Header { .. } => ready!(this.poll_header(cx))?,
                ReadState::Frame { remaining } => {
                    if out.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let want = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(out.remaining());
                    let dst = out.initialize_unfilled_to(want);
                    let mut rb = ReadBuf::new(dst);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    out.advance(n);
                    this.state = match remaining - n as u64 {
                        0 => ReadState::Header {
                            hdr: [0; 8],
                            have: 0,
                        },
                        remaining => ReadState::Frame { remaining },
                    };
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// Decodes a complete header through the primitives (reading a slice
/// never waits).
fn decode_u64(hdr: &[u8; 8]) -> io::Result<u64> {
    read_u64(&mut &hdr[..], "frame length")
        .now_or_never()
        .ok_or_else(|| io::Error::other("slice read pending"))?
        .map_err(io::Error::other)
}

/// Writes frames of at most `frame_size` payload bytes.
pub struct FramedWriter<W> {
    inner: W,
    frame_size: usize,
    /// The frame being filled (8-byte header slot + payload), or being
    /// written out when `sent` is `Some`.
    buf: Vec<u8>,
    sent: Option<usize>,
}

const HDR: usize = 8;

impl<W: AsyncWrite + Unpin> FramedWriter<W> {
    pub fn new(inner: W, frame_size: usize) -> Self {
        let frame_size = frame_size.max(1);
        let mut buf = Vec::with_capacity(HDR + frame_size);
        buf.resize(HDR, 0);
        FramedWriter {
            inner,
            frame_size,
            buf,
            sent: None,
        }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Flushes the pending frame, writes the terminator and flushes.
    pub async fn finish(&mut self) -> Result<()> {
        self.flush().await.map_err(Error::Write)?;
        let mut end = Vec::with_capacity(HDR);
        put_u64(&mut end, 0);
        self.inner.write_all(&end).await.map_err(Error::Write)?;
        self.inner.flush().await.map_err(Error::Write)
    }

    fn payload_len(&self) -> usize {
        self.buf.len() - HDR
    }

    /// Seals the current frame (if any payload) for writing out.
    fn seal(&mut self) {
        if self.sent.is_none() && self.payload_len() > 0 {
            let mut hdr = Vec::with_capacity(HDR);
            put_u64(&mut hdr, self.payload_len() as u64);
            self.buf[..HDR].copy_from_slice(&hdr);
            self.sent = Some(0);
        }
    }

    /// Writes out a sealed frame, then starts an empty one.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(sent) = self.sent {
            if sent == self.buf.len() {
                self.buf.truncate(HDR);
                self.sent = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent = Some(sent + n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for FramedWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        let n = data.len().min(this.frame_size - this.payload_len());
        this.buf.extend_from_slice(&data[..n]);
        if this.payload_len() == this.frame_size {
            this.seal();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        this.seal();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
