//! The build log's way from a backend to the clients, bounded in bytes
//! everywhere:
//!
//! * every chunk on a [`LogSink`] is at most [`MAX_LOG_LINE`] bytes, and
//!   [`LineSplitter`] cuts a line longer than that into pieces for ssh-ng
//!   clients (one `buildLogLine` each), so a line without a newline is never
//!   buffered whole;
//! * a flight's log ([`FlightLog`]) is one synchronous sink: every event
//!   of its backend attempts and its own notes go, as they come, to a
//!   [`Backlog`] of at most [`LOG_BACKLOG_BYTES`] for its attached clients
//!   (a client that falls further behind loses the oldest part and is told
//!   how many bytes it missed; neither the build nor the other clients
//!   wait for it) and to the kept copy for `nix log`;
//! * each backend attempt's sink ([`AttemptSink`]) enforces max-log-size
//!   on what the backend sends and records its activity for
//!   max-silent-time: the client's value if it set one and it is smaller,
//!   else `[limits] max_log_size` ([`effective_max_log_size`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

pub use super::backlog::{Backlog, LOG_REPLAY_BYTES, LogReader, Recv};
use super::watchdog::Activity;
pub use crate::buildlog::MAX_LOG_LINE;
use crate::buildlog::{EventSink, LogEvent};
use crate::store::logs::LogTail;
use crate::wire::worker::stderr::{Field, RES_BUILD_LOG_LINE, StderrMsg};

/// Log bytes a flight keeps for attached clients that fall behind.
pub const LOG_BACKLOG_BYTES: usize = 4 << 20;

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

/// A flight's log: the one sink every backend attempt publishes into
/// (through its [`AttemptSink`]) and the flight's own notes go to. Each
/// event goes, synchronously, to the [`Backlog`] the attached sessions read
/// and to the kept copy (`store::logs::LogTail`, written to the cache's
/// `log/` when the build ends).
pub struct FlightLog {
    backlog: Arc<Backlog>,
    kept: Mutex<LogTail>,
    /// Flight-wide activity ids: a retry's ids never collide with the
    /// attempt's before it.
    next_id: AtomicU64,
}

impl FlightLog {
    pub fn new() -> Arc<FlightLog> {
        Arc::new(FlightLog {
            backlog: Backlog::new(LOG_BACKLOG_BYTES),
            kept: Mutex::new(LogTail::default()),
            next_id: AtomicU64::new(1),
        })
    }

    /// Bytes of log and activity events published so far.
    pub fn bytes(&self) -> u64 {
        self.backlog.published()
    }

    /// Adds `event` for every attached session and to the kept copy.
    pub fn publish(&self, event: LogEvent) {
        if let Some(text) = event.text() {
            self.kept
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(&text);
        }
        self.backlog.publish(event);
    }

    /// A line of the relay's own (`nix-relay: …` on a client's terminal).
    pub fn note(&self, msg: impl std::fmt::Display) {
        self.publish(LogEvent::Note(msg.to_string().into()));
    }

    /// A reader from the log's start (see [`Backlog::subscribe`]).
    pub fn subscribe(&self) -> LogReader {
        self.backlog.subscribe()
    }

    /// Bytes the backlog holds now.
    pub fn held(&self) -> usize {
        self.backlog.held()
    }

    /// The kept copy so far, taken (what `nix log` shows).
    pub fn take_kept(&self) -> Vec<u8> {
        std::mem::take(&mut *self.kept.lock().unwrap_or_else(|e| e.into_inner())).finish()
    }

    /// The sink of one backend attempt: it records every event as
    /// `activity` (max-silent-time, `watchdog`) and passes them on until
    /// more than `max` log bytes came through; then it passes nothing more
    /// and the token is cancelled (max-log-size).
    pub fn attempt(
        self: &Arc<Self>,
        max: u64,
        activity: Activity,
    ) -> (Arc<AttemptSink>, CancellationToken) {
        let over = CancellationToken::new();
        let sink = AttemptSink {
            log: self.clone(),
            max,
            seen: AtomicU64::new(0),
            over: over.clone(),
            activity,
            ids: Mutex::new(HashMap::new()),
        };
        (Arc::new(sink), over)
    }
}

/// See [`FlightLog::attempt`]. Activity ids are renumbered into the
/// flight's (the backend's own may repeat on another attempt).
pub struct AttemptSink {
    log: Arc<FlightLog>,
    max: u64,
    seen: AtomicU64,
    over: CancellationToken,
    activity: Activity,
    /// The backend's activity ids → the flight's.
    ids: Mutex<HashMap<u64, u64>>,
}

impl EventSink for AttemptSink {
    fn publish(&self, event: LogEvent) {
        self.activity.touch();
        if let LogEvent::Log(b) = &event {
            let n = b.len() as u64;
            if self.seen.fetch_add(n, Ordering::Relaxed).saturating_add(n) > self.max {
                self.over.cancel();
            }
        }
        if self.over.is_cancelled() {
            return;
        }
        match event {
            LogEvent::Activity(m) => {
                if let Some(m) = self.renumber(&m) {
                    self.log.publish(LogEvent::Activity(Arc::new(m)));
                }
            }
            e => self.log.publish(e),
        }
    }
}

impl AttemptSink {
    /// `m` with the flight's ids; `None` for an activity never started.
    fn renumber(&self, m: &StderrMsg) -> Option<StderrMsg> {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        Some(match m.clone() {
            StderrMsg::StartActivity {
                id,
                level,
                kind,
                text,
                fields,
                parent,
            } => {
                let ours = self.log.next_id.fetch_add(1, Ordering::Relaxed);
                ids.insert(id, ours);
                let parent = (parent != 0)
                    .then(|| ids.get(&parent).copied())
                    .flatten()
                    .unwrap_or(0);
                StderrMsg::StartActivity {
                    id: ours,
                    level,
                    kind,
                    text,
                    fields,
                    parent,
                }
            }
            StderrMsg::StopActivity { id } => StderrMsg::StopActivity {
                id: ids.remove(&id)?,
            },
            StderrMsg::Result { id, kind, fields } => StderrMsg::Result {
                id: *ids.get(&id)?,
                kind,
                fields,
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
