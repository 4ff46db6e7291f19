//! The build log's way from a backend to the clients, bounded in bytes
//! everywhere:
//!
//! * every chunk on a [`LogSink`] is at most [`MAX_LOG_LINE`] bytes, and
//!   [`LineSplitter`] cuts a line longer than that into pieces for ssh-ng
//!   clients (one `buildLogLine` each), so a line without a newline is never
//!   buffered whole;
//! * a flight keeps at most [`LOG_BACKLOG_BYTES`] of log for its attached
//!   clients ([`Backlog`]); a client that falls further behind loses the
//!   oldest part and is told how many bytes it missed, and neither the build
//!   nor the other clients wait for it;
//! * [`limited`] enforces max-log-size on what a backend sends (and
//!   records the backend's activity for max-silent-time, in the same task): the
//!   client's value if it set one and it is smaller, else
//!   `[limits] max_log_size` ([`effective_max_log_size`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::watchdog::Activity;
pub use crate::buildlog::MAX_LOG_LINE;
use crate::buildlog::{LogSink, log_pieces};
use crate::wire::worker::stderr::{Field, RES_BUILD_LOG_LINE, StderrMsg};

/// Log bytes a flight keeps for attached clients that fall behind.
pub const LOG_BACKLOG_BYTES: usize = 4 << 20;
/// The first log bytes of a flight a client attaching mid-build gets.
pub const LOG_REPLAY_BYTES: usize = 64 << 10;

/// Turns log bytes into one `RESULT buildLogLine` per line; a line longer
/// than [`MAX_LOG_LINE`] goes out in pieces of that size.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    /// The last piece was cut at the bound: a newline right after it ends
    /// that line, not another (empty) one.
    cut: bool,
}

impl LineSplitter {
    pub fn push(&mut self, act: u64, mut chunk: &[u8]) -> Vec<StderrMsg> {
        let mut out = Vec::new();
        while !chunk.is_empty() {
            let room = MAX_LOG_LINE - self.partial.len();
            let window = &chunk[..room.min(chunk.len())];
            // `contains` is std's memchr; the scan is only for a hit.
            let nl = if window.contains(&b'\n') {
                window.iter().position(|&b| b == b'\n')
            } else {
                None
            };
            let (take, line_done) = match nl {
                Some(i) => (i, true),
                None => (
                    window.len(),
                    self.partial.len() + window.len() == MAX_LOG_LINE,
                ),
            };
            let after_cut = std::mem::replace(&mut self.cut, false) && take == 0;
            self.append(&chunk[..take]);
            chunk = &chunk[take + usize::from(nl.is_some())..];
            if line_done && !(after_cut && nl.is_some()) {
                self.cut = nl.is_none();
                out.push(line(act, std::mem::take(&mut self.partial)));
            }
        }
        out
    }

    /// Appends, never letting the buffer's capacity exceed a line's bound.
    fn append(&mut self, bytes: &[u8]) {
        let need = self.partial.len() + bytes.len();
        if need > self.partial.capacity() {
            let want = need.max(self.partial.capacity() * 2).min(MAX_LOG_LINE);
            self.partial.reserve_exact(want - self.partial.len());
        }
        self.partial.extend_from_slice(bytes);
    }

    pub fn finish(&mut self, act: u64) -> Vec<StderrMsg> {
        if self.partial.is_empty() {
            Vec::new()
        } else {
            vec![line(act, std::mem::take(&mut self.partial))]
        }
    }
}

fn line(act: u64, text: Vec<u8>) -> StderrMsg {
    StderrMsg::Result {
        id: act,
        kind: RES_BUILD_LOG_LINE,
        fields: vec![Field::Str(text)],
    }
}

/// A flight's log for the sessions attached to it: the newest bytes, at
/// most `max` of them, kept only while some reader has not seen them.
pub struct Backlog {
    ring: Mutex<Ring>,
    /// The log's first [`LOG_REPLAY_BYTES`], for clients attaching late.
    start: Mutex<Vec<Bytes>>,
    more: Notify,
    max: usize,
}

#[derive(Default)]
struct Ring {
    /// Each chunk with the log offset of its first byte.
    chunks: VecDeque<(u64, Bytes)>,
    /// Offset of the first byte kept.
    head: u64,
    /// Bytes published so far.
    tail: u64,
    bytes: usize,
    /// Each reader's next offset.
    readers: HashMap<u64, u64>,
    next_reader: u64,
}

impl Ring {
    /// Drops what every reader has seen, then the oldest beyond `max`.
    fn trim(&mut self, max: usize) {
        let seen = self.readers.values().copied().min().unwrap_or(self.tail);
        while let Some((start, c)) = self.chunks.front() {
            if start + c.len() as u64 > seen && self.bytes <= max {
                break;
            }
            self.bytes -= c.len();
            self.chunks.pop_front();
        }
        self.head = self.chunks.front().map_or(self.tail, |(start, _)| *start);
    }
}

/// What a reader gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    Chunk(Bytes),
    /// This many bytes were dropped before the reader got to them.
    Dropped(u64),
    /// This many bytes, after the log's start, went by before the reader
    /// attached.
    Skipped(u64),
}

impl Backlog {
    pub fn new(max: usize) -> Arc<Backlog> {
        Arc::new(Backlog {
            ring: Mutex::new(Ring::default()),
            start: Mutex::new(Vec::new()),
            more: Notify::new(),
            max,
        })
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `chunk` (in pieces of at most [`MAX_LOG_LINE`]); never waits.
    pub fn publish(&self, chunk: Bytes) {
        let mut ring = self.ring();
        let mut start = self.start.lock().unwrap_or_else(|e| e.into_inner());
        for piece in log_pieces(chunk) {
            let len = piece.len();
            if ring.tail < LOG_REPLAY_BYTES as u64 {
                let room = LOG_REPLAY_BYTES - ring.tail as usize;
                start.push(piece.slice(..len.min(room)));
            }
            let start = ring.tail;
            ring.chunks.push_back((start, piece));
            ring.tail += len as u64;
            ring.bytes += len;
        }
        ring.trim(self.max);
        drop((ring, start));
        self.more.notify_waiters();
    }

    /// A reader that gets the log's start (its first
    /// [`LOG_REPLAY_BYTES`]), how much went by after that, then everything
    /// published from now on.
    pub fn subscribe(self: &Arc<Self>) -> LogReader {
        let mut ring = self.ring();
        let id = ring.next_reader;
        ring.next_reader += 1;
        let tail = ring.tail;
        ring.readers.insert(id, tail);
        let start = self.start.lock().unwrap_or_else(|e| e.into_inner());
        let mut replay: VecDeque<Recv> = start.iter().cloned().map(Recv::Chunk).collect();
        let replayed: u64 = start.iter().map(|c| c.len() as u64).sum();
        if tail > replayed {
            replay.push_back(Recv::Skipped(tail - replayed));
        }
        LogReader {
            backlog: self.clone(),
            id,
            replay,
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.ring().bytes
    }
}

/// One session's place in a flight's [`Backlog`]; dropping it lets go.
pub struct LogReader {
    backlog: Arc<Backlog>,
    id: u64,
    /// What the reader gets before the live log.
    replay: VecDeque<Recv>,
}

impl LogReader {
    /// The next chunk or gap, or `None` when there is nothing new yet.
    pub fn try_recv(&mut self) -> Option<Recv> {
        if let Some(r) = self.replay.pop_front() {
            return Some(r);
        }
        let b = &self.backlog;
        let mut ring = b.ring();
        let pos = *ring.readers.get(&self.id)?;
        let (next, got) = if pos < ring.head {
            (ring.head, Recv::Dropped(ring.head - pos))
        } else if pos >= ring.tail {
            return None;
        } else {
            let i = ring.chunks.partition_point(|(start, _)| *start <= pos) - 1;
            let (start, c) = &ring.chunks[i];
            (start + c.len() as u64, Recv::Chunk(c.clone()))
        };
        ring.readers.insert(self.id, next);
        ring.trim(b.max);
        Some(got)
    }

    /// Waits for the next chunk or gap.
    pub async fn recv(&mut self) -> Recv {
        let backlog = self.backlog.clone();
        loop {
            let more = backlog.more.notified();
            tokio::pin!(more);
            more.as_mut().enable();
            if let Some(r) = self.try_recv() {
                return r;
            }
            more.await;
        }
    }
}

impl Drop for LogReader {
    fn drop(&mut self) {
        let mut ring = self.backlog.ring();
        ring.readers.remove(&self.id);
        ring.trim(self.backlog.max);
    }
}

/// The max-log-size a build runs under: the client's, if it set one that
/// is smaller than the relay's.
pub fn effective_max_log_size(client: u64, relay: u64) -> u64 {
    match client {
        0 => relay,
        c => c.min(relay),
    }
}

/// The message a build stopped for its log gets, worded like Nix's.
pub fn limit_message(max: u64) -> String {
    format!("nix-relay: the build was killed after writing more than {max} bytes of log output")
}

/// The sink a backend attempt's log goes into: one task that records each
/// chunk as `activity` (max-silent-time, `watchdog`) and forwards to `log`
/// until more than `max` bytes came through; then it forwards nothing more
/// and the token is cancelled (max-log-size).
pub fn limited(log: &LogSink, max: u64, activity: Activity) -> (LogSink, CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let over = CancellationToken::new();
    let (log, flag) = (log.clone(), over.clone());
    tokio::spawn(async move {
        let mut seen = 0u64;
        while let Some(chunk) = rx.recv().await {
            activity.touch();
            seen = seen.saturating_add(chunk.len() as u64);
            if seen > max {
                flag.cancel();
            } else {
                // A gone client only means nobody reads the log.
                let _ = log.send(chunk).await;
            }
        }
    });
    (tx, over)
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
