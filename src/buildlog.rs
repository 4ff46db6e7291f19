//! What a build says on its way from a backend to the clients. A leaf
//! module (it imports nothing of the crate but `wire`'s message types) so
//! the SSH layer, the backends and the sessions can all speak it without
//! depending on each other.
//!
//! * [`LogEvent`]: log bytes (chunks of at most [`MAX_LOG_LINE`]), a typed
//!   worker-protocol activity message, or a line of the relay's own;
//! * [`EventSink`]: where a backend's events go, synchronously: publishing
//!   never waits (the flight's sink, `session::log`, drops the oldest
//!   events for a client that falls behind instead);
//! * [`LogSwitch`]: a connection's current sink, switched per build (a
//!   pooled connection outlives a build; between builds its output goes
//!   nowhere);
//! * [`LogSink`]: the bounded queue of stderr bytes a client session's
//!   front end drains to the client (the last hop).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::wire::worker::stderr::{ACT_BUILD, StderrMsg};

/// A client's stderr: a bounded queue of chunks, each at most
/// [`MAX_LOG_LINE`] bytes, that the front end writes to the channel.
pub type LogSink = mpsc::Sender<Bytes>;

/// The most log bytes in one chunk on a [`LogSink`], one `STDERR_NEXT` or
/// one `buildLogLine`: a longer line is cut into pieces of this size.
pub const MAX_LOG_LINE: usize = 64 << 10;

/// `chunk` in pieces of at most [`MAX_LOG_LINE`] bytes (no copies).
pub fn log_pieces(chunk: Bytes) -> impl Iterator<Item = Bytes> {
    let n = chunk.len().div_ceil(MAX_LOG_LINE);
    (0..n).map(move |i| chunk.slice(i * MAX_LOG_LINE..((i + 1) * MAX_LOG_LINE).min(chunk.len())))
}

/// One thing a build says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// Log bytes as the builder wrote them (a serve backend's stderr, a
    /// worker backend's log lines and `STDERR_NEXT` text, newline-ended).
    Log(Bytes),
    /// A worker backend's activity message other than a log line:
    /// `START_ACTIVITY`, `STOP_ACTIVITY`, `RESULT` (phase, progress, …).
    Activity(Arc<StderrMsg>),
    /// A line of the relay's own, without its `nix-relay: ` prefix.
    Note(Arc<str>),
}

impl LogEvent {
    /// The event as stderr text, for a client that gets no typed
    /// activities (a serve client) and for the kept log: bytes as they
    /// are, a note as `nix-relay: …` on its own line, a build activity's
    /// start as its text (`building '…'`), nothing for other activities.
    pub fn text(&self) -> Option<Bytes> {
        match self {
            LogEvent::Log(b) => Some(b.clone()),
            LogEvent::Note(n) => Some(Bytes::from(format!("nix-relay: {n}\n"))),
            LogEvent::Activity(m) => match &**m {
                StderrMsg::StartActivity { kind, text, .. }
                    if *kind == ACT_BUILD && !text.is_empty() =>
                {
                    let mut v = text.clone();
                    if !v.ends_with(b"\n") {
                        v.push(b'\n');
                    }
                    Some(v.into())
                }
                _ => None,
            },
        }
    }

    /// Roughly how many bytes the event holds (what a backlog counts).
    pub fn size(&self) -> usize {
        match self {
            LogEvent::Log(b) => b.len(),
            LogEvent::Note(n) => n.len() + 12,
            LogEvent::Activity(m) => activity_size(m),
        }
    }
}

fn activity_size(m: &StderrMsg) -> usize {
    use crate::wire::worker::stderr::Field;
    let fields = |f: &[Field]| -> usize {
        f.iter()
            .map(|f| match f {
                Field::Str(s) => s.len() + 8,
                Field::Int(_) => 8,
            })
            .sum()
    };
    32 + match m {
        StderrMsg::StartActivity {
            text, fields: f, ..
        } => text.len() + fields(f),
        StderrMsg::Result { fields: f, .. } => fields(f),
        _ => 0,
    }
}

/// Where a backend's build events go. Never waits.
pub trait EventSink: Send + Sync {
    fn publish(&self, event: LogEvent);
}

/// A sink that drops everything (what nobody reads).
pub struct Discard;

impl EventSink for Discard {
    fn publish(&self, _: LogEvent) {}
}

/// A sink that keeps every event (for tests and tools that read a
/// build's events after it).
#[derive(Default)]
pub struct Collect(Mutex<Vec<LogEvent>>);

impl Collect {
    /// The events so far, taken.
    pub fn take(&self) -> Vec<LogEvent> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The text of the events so far ([`LogEvent::text`]), taken.
    pub fn take_text(&self) -> String {
        let text: Vec<u8> = (self.take().iter())
            .filter_map(LogEvent::text)
            .flat_map(|b| b.to_vec())
            .collect();
        String::from_utf8_lossy(&text).into_owned()
    }
}

impl EventSink for Collect {
    fn publish(&self, event: LogEvent) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }
}

/// A connection's current [`EventSink`]: the build using it now, or
/// nothing while it is idle.
#[derive(Clone, Default)]
pub struct LogSwitch(Arc<Mutex<Option<Arc<dyn EventSink>>>>);

impl LogSwitch {
    /// A switch pointing at `sink`.
    pub fn to(sink: Option<Arc<dyn EventSink>>) -> Self {
        LogSwitch(Arc::new(Mutex::new(sink)))
    }

    /// Sends what comes from now on to `sink` (`None`: nowhere).
    pub fn set(&self, sink: Option<Arc<dyn EventSink>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = sink;
    }

    /// Log bytes (a process's stderr), in pieces of at most [`MAX_LOG_LINE`].
    pub fn log(&self, bytes: Bytes) {
        let target = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(t) = target {
            for piece in log_pieces(bytes) {
                t.publish(LogEvent::Log(piece));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_sends_to_its_current_sink_only() {
        let (a, b) = (Arc::new(Collect::default()), Arc::new(Collect::default()));
        let switch = LogSwitch::to(Some(a.clone()));
        switch.log(Bytes::from_static(b"one\n"));
        switch.set(None);
        switch.log(Bytes::from_static(b"lost\n"));
        switch.set(Some(b.clone()));
        switch.log(Bytes::from(vec![b'x'; MAX_LOG_LINE + 1]));
        assert_eq!(a.take(), [LogEvent::Log("one\n".into())]);
        let b = b.take();
        assert_eq!(b.len(), 2, "cut at MAX_LOG_LINE");
        assert_eq!(
            b.iter().map(LogEvent::size).sum::<usize>(),
            MAX_LOG_LINE + 1
        );
    }

    #[test]
    fn text_renders_notes_and_build_starts_and_skips_other_activities() {
        let note = LogEvent::Note("waiting".into());
        assert_eq!(note.text().unwrap(), "nix-relay: waiting\n");
        let start = |kind| {
            LogEvent::Activity(Arc::new(StderrMsg::StartActivity {
                id: 1,
                level: 3,
                kind,
                text: b"building 'x'".to_vec(),
                fields: Vec::new(),
                parent: 0,
            }))
        };
        assert_eq!(start(ACT_BUILD).text().unwrap(), "building 'x'\n");
        assert_eq!(start(ACT_BUILD + 1).text(), None);
        let stop = LogEvent::Activity(Arc::new(StderrMsg::StopActivity { id: 1 }));
        assert_eq!(stop.text(), None);
    }
}
