//! A build as a session sees it ([`BuildHandle`]): a typed stream of
//! [`BuildEvent`]s — the flight's log bytes, a worker backend's
//! activities, the relay's own notes — ended by its result. The events
//! come straight from the flight's backlog (`session::log`): a session
//! reads them in its own task and writes them to its client, so between a
//! backend and a client there is the backlog and the client's outbound
//! queue, nothing else.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::flight::{Attachment, Outcome};
use super::log::{LogReader, Recv};
use super::outputs::Finished;
use crate::buildlog::LogEvent;
use crate::wire::build::{BuildResult, BuildStatus};
use crate::wire::store_path::StorePath;
use crate::wire::worker::stderr::StderrMsg;

/// What a session keeps after a successful build: its claim on the
/// flight, and the outputs it can stream from the backend.
pub struct Pending {
    pub finished: Arc<tokio::sync::Mutex<Finished>>,
    pub(super) attachment: Attachment,
}

impl Pending {
    /// Whether `path` is one of this build's outputs.
    pub fn holds(&self, path: &StorePath) -> bool {
        self.attachment.flight.key.outputs.contains(path)
    }
}

/// One thing a build says, in order.
pub enum BuildEvent {
    /// Log bytes (at most `MAX_LOG_LINE` of them).
    Log(Bytes),
    /// A worker backend's activity message (start, stop, result other
    /// than a log line), its ids the flight's.
    Activity(Arc<StderrMsg>),
    /// A line of the relay's own, without the `nix-relay: ` prefix.
    Note(String),
    /// The end: the result, and the outputs to stream after a success.
    Done {
        result: BuildResult,
        pending: Option<Pending>,
    },
}

impl BuildEvent {
    /// A log event as a build event.
    fn of(e: LogEvent) -> Self {
        match e {
            LogEvent::Log(b) => BuildEvent::Log(b),
            LogEvent::Activity(m) => BuildEvent::Activity(m),
            LogEvent::Note(n) => BuildEvent::Note(n.to_string()),
        }
    }

    /// The event as stderr text (what a serve client gets), see
    /// [`LogEvent::text`]; nothing for the end.
    pub fn text(&self) -> Option<Bytes> {
        match self {
            BuildEvent::Log(b) => Some(b.clone()),
            BuildEvent::Activity(m) => LogEvent::Activity(m.clone()).text(),
            BuildEvent::Note(n) => LogEvent::Note(n.as_str().into()).text(),
            BuildEvent::Done { .. } => None,
        }
    }
}

/// A build in progress for one session; dropping it detaches the session
/// (the last one gone cancels the build, see `session::flight`).
pub struct BuildHandle {
    queued: VecDeque<BuildEvent>,
    live: Option<Live>,
}

/// The flight a handle is attached to.
struct Live {
    reader: LogReader,
    outcome: watch::Receiver<Option<Outcome>>,
    attachment: Attachment,
    gone: CancellationToken,
}

impl BuildHandle {
    /// A build answered at once (a cache hit, a refusal): `notes`, then
    /// `result`.
    pub(super) fn done(notes: Vec<String>, result: BuildResult) -> Self {
        let mut queued: VecDeque<_> = notes.into_iter().map(BuildEvent::Note).collect();
        queued.push_back(BuildEvent::Done {
            result,
            pending: None,
        });
        BuildHandle { queued, live: None }
    }

    /// `notes`, then the flight `attachment` is attached to, read by
    /// `reader` (subscribed before the flight could publish anything),
    /// until its outcome or until the client is `gone`.
    pub(super) fn attached(
        notes: Vec<String>,
        attachment: Attachment,
        reader: LogReader,
        gone: CancellationToken,
    ) -> Self {
        let outcome = attachment.flight.outcome.subscribe();
        let live = Live {
            reader,
            outcome,
            attachment,
            gone,
        };
        BuildHandle {
            queued: notes.into_iter().map(BuildEvent::Note).collect(),
            live: Some(live),
        }
    }

    /// The next event; `None` after [`BuildEvent::Done`]. Every event the
    /// flight published before its outcome comes before `Done`. A client
    /// that fell behind the backlog hears how many bytes it missed; one
    /// that attached mid-build gets the log's start and how much went by.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<BuildEvent> {
        if let Some(e) = self.queued.pop_front() {
            return Some(e);
        }
        let live = self.live.as_mut()?;
        let ended = loop {
            if live.outcome.borrow_and_update().is_some() {
                break None;
            }
            tokio::select! {
                r = live.reader.recv() => return Some(event(r)),
                changed = live.outcome.changed() => if changed.is_err() { break Some(lost()) },
                _ = live.gone.cancelled() => {
                    break Some(BuildResult::failure(BuildStatus::MiscFailure, "client gone"))
                }
            }
        };
        if ended.is_none()
            && let Some(r) = live.reader.try_recv()
        {
            return Some(event(r));
        }
        let live = self.live.take()?;
        Some(match ended {
            Some(result) => BuildEvent::Done {
                result,
                pending: None,
            },
            None => {
                let outcome = live.outcome.borrow().clone().unwrap_or_else(|| Outcome {
                    result: lost(),
                    finished: None,
                });
                BuildEvent::Done {
                    result: outcome.result,
                    pending: outcome.finished.map(|finished| Pending {
                        finished,
                        attachment: live.attachment,
                    }),
                }
            }
        })
    }
}

/// The result of a build whose flight ended without one.
pub(super) fn lost() -> BuildResult {
    BuildResult::failure(
        BuildStatus::MiscFailure,
        "nix-relay: the build task ended without a result",
    )
}

/// What a reader got, as an event; a gap is said as a note.
fn event(r: Recv) -> BuildEvent {
    match r {
        Recv::Event(e) => BuildEvent::of(e),
        Recv::Skipped(n) => BuildEvent::Note(format!("attached mid-build: {n} log bytes went by")),
        Recv::Dropped(n) => BuildEvent::Note(format!(
            "{n} bytes of log dropped (this client fell behind)"
        )),
    }
}
