//! A flight's events for the sessions attached to it ([`Backlog`]): the
//! newest, at most `max` bytes of them, kept only while some reader has
//! not seen them, and the log's start for clients attaching late.
//! Publishing never waits: a reader that falls behind loses the oldest
//! events and is told how many bytes it missed ([`Recv::Dropped`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::buildlog::{LogEvent, log_pieces};

/// The first bytes of a flight's events a client attaching mid-build gets.
pub const LOG_REPLAY_BYTES: usize = 64 << 10;

pub struct Backlog {
    ring: Mutex<Ring>,
    /// The log's first [`LOG_REPLAY_BYTES`], for clients attaching late.
    start: Mutex<Start>,
    more: Notify,
    max: usize,
}

#[derive(Default)]
struct Start {
    events: Vec<LogEvent>,
    bytes: usize,
    /// Nothing more is added: the next event did not fit.
    full: bool,
}

impl Start {
    /// Keeps `e` (log bytes: as much of them as fits) while there is room;
    /// what is kept is always a prefix of the log.
    fn keep(&mut self, e: &LogEvent) {
        self.full |= self.bytes >= LOG_REPLAY_BYTES;
        if self.full {
            return;
        }
        let room = LOG_REPLAY_BYTES - self.bytes;
        let size = e.size();
        match e {
            LogEvent::Log(b) if b.len() > room => {
                self.events.push(LogEvent::Log(b.slice(..room)));
                self.bytes += room;
                self.full = true;
            }
            _ if size > room => self.full = true,
            e => {
                self.events.push(e.clone());
                self.bytes += size;
            }
        }
    }
}

#[derive(Default)]
struct Ring {
    /// Each event with the log offset of its first byte.
    events: VecDeque<(u64, LogEvent)>,
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
        while let Some((start, e)) = self.events.front() {
            if start + e.size() as u64 > seen && self.bytes <= max {
                break;
            }
            self.bytes -= e.size();
            self.events.pop_front();
        }
        self.head = self.events.front().map_or(self.tail, |(start, _)| *start);
    }

    fn push(&mut self, e: LogEvent) {
        let size = e.size();
        let start = self.tail;
        self.events.push_back((start, e));
        self.tail += size as u64;
        self.bytes += size;
    }
}

/// What a reader gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    Event(LogEvent),
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
            start: Mutex::new(Start::default()),
            more: Notify::new(),
            max,
        })
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `event` (log bytes in pieces of at most
    /// [`MAX_LOG_LINE`](crate::buildlog::MAX_LOG_LINE)); never waits.
    pub fn publish(&self, event: LogEvent) {
        let mut ring = self.ring();
        let mut start = self.start.lock().unwrap_or_else(|e| e.into_inner());
        let mut add = |e: LogEvent| {
            start.keep(&e);
            ring.push(e);
        };
        match event {
            LogEvent::Log(b) => log_pieces(b).for_each(|p| add(LogEvent::Log(p))),
            e => add(e),
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
        let mut replay: VecDeque<Recv> = start.events.iter().cloned().map(Recv::Event).collect();
        let replayed = start.bytes as u64;
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

    /// Bytes published so far.
    pub fn published(&self) -> u64 {
        self.ring().tail
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
    /// The next event or gap, or `None` when there is nothing new yet.
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
            let i = ring.events.partition_point(|(start, _)| *start <= pos) - 1;
            let (start, e) = &ring.events[i];
            (start + e.size() as u64, Recv::Event(e.clone()))
        };
        ring.readers.insert(self.id, next);
        ring.trim(b.max);
        Some(got)
    }

    /// Waits for the next event or gap (cancel-safe: nothing is taken
    /// until it is returned).
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
