//! The unit a build log travels in between tasks: bounded queues of byte
//! chunks, each at most [`MAX_LOG_LINE`] bytes. A leaf module (it imports
//! nothing of the crate) so the SSH layer, the backends and the sessions can
//! all speak it without depending on each other.

use bytes::Bytes;
use tokio::sync::mpsc;

/// Where a build log goes: a bounded queue of stderr chunks, each at most
/// [`MAX_LOG_LINE`] bytes.
pub type LogSink = mpsc::Sender<Bytes>;

/// The most log bytes in one chunk on a [`LogSink`], one `STDERR_NEXT` or
/// one `buildLogLine`: a longer line is cut into pieces of this size.
pub const MAX_LOG_LINE: usize = 64 << 10;

/// `chunk` in pieces of at most [`MAX_LOG_LINE`] bytes (no copies).
pub fn log_pieces(chunk: Bytes) -> impl Iterator<Item = Bytes> {
    let n = chunk.len().div_ceil(MAX_LOG_LINE);
    (0..n).map(move |i| chunk.slice(i * MAX_LOG_LINE..((i + 1) * MAX_LOG_LINE).min(chunk.len())))
}
