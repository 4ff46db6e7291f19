//! A build as a worker client sees it: one build activity of the relay's
//! (`building '…' via nix-relay`), the build's log as `buildLogLine`
//! results under it, and — when the backend speaks the worker protocol —
//! the backend's own activities, typed, renumbered into the session's ids
//! ([`ClientActs`]): the backend's top-level build activity becomes the
//! relay's (its phase, progress and other results land there, as they
//! would building on the backend directly), every other activity is nested
//! under the one it was under, or under the relay's. Ids never collide
//! between flights or clients: each session numbers its own.

use std::collections::HashMap;

use tokio::io::{AsyncBufRead, AsyncWrite};

use super::{Error, OpError, WorkerSession};
use crate::backend::Options;
use crate::session::build::{BuildEvent, BuildHandle, Pending};
use crate::session::log::LineSplitter;
use crate::wire::build::{BasicDerivation, BuildResult};
use crate::wire::store_path::StorePath;
use crate::wire::worker::Reply;
use crate::wire::worker::stderr::{ACT_BUILD, Field, StderrMsg};
use crate::wire::worker::values::WorkerBuildResult;

impl<R, W> WorkerSession<R, W>
where
    R: AsyncBufRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// A fresh activity id of this session's.
    pub(super) fn new_activity(&mut self) -> u64 {
        let id = self.next_activity;
        self.next_activity += 1;
        id
    }

    pub(super) async fn build_derivation(
        &mut self,
        drv_path: StorePath,
        drv: BasicDerivation,
    ) -> Result<Result<(), OpError>, Error> {
        self.pending = None;
        let act = self.new_activity();
        self.reply(&[build_activity(act, &drv_path)], None).await?;
        let (client, gone) = (&self.client, &self.gone);
        let options = Options {
            substitute: self.substitute,
            ..self.options.clone()
        };
        let build = self.core.build(client, &drv_path, &drv, options, gone);
        let handle = build.await;
        let (result, pending, tail) = self.stream(handle, ClientActs::new(act)).await?;
        self.pending = pending;
        let reply = Reply::Build(WorkerBuildResult::from(result));
        self.reply(&tail, Some(reply)).await?;
        Ok(Ok(()))
    }

    /// Writes a build's events to the client as they come; its result, its
    /// outputs, and the messages that close its activities.
    async fn stream(
        &mut self,
        mut build: BuildHandle,
        mut acts: ClientActs,
    ) -> Result<(BuildResult, Option<Pending>, Vec<StderrMsg>), Error> {
        while let Some(event) = build.next().await {
            if let BuildEvent::Done { result, pending } = event {
                return Ok((result, pending, acts.finish()));
            }
            let msgs = acts.event(event, &mut self.next_activity);
            if !msgs.is_empty() {
                self.reply(&msgs, None).await?;
            }
        }
        Ok((crate::session::handle::lost(), None, acts.finish()))
    }
}

/// The activity a build's log lines go under, as a Nix daemon starts it.
pub(super) fn build_activity(id: u64, drv_path: &StorePath) -> StderrMsg {
    StderrMsg::StartActivity {
        id,
        level: 3,
        kind: ACT_BUILD,
        text: format!("building '{drv_path}' via nix-relay").into_bytes(),
        fields: vec![
            Field::Str(drv_path.as_str().into()),
            Field::Str(Vec::new()),
            Field::Int(1),
            Field::Int(1),
        ],
        parent: 0,
    }
}

/// One build's activities as one worker client sees them.
pub(super) struct ClientActs {
    /// The relay's build activity (started by the session).
    act: u64,
    /// The flight's activity ids → this client's.
    ids: HashMap<u64, u64>,
    /// This client's ids of the activities started and not stopped yet.
    open: Vec<u64>,
    lines: LineSplitter,
}

impl ClientActs {
    pub(super) fn new(act: u64) -> Self {
        ClientActs {
            act,
            ids: HashMap::new(),
            open: Vec::new(),
            lines: LineSplitter::default(),
        }
    }

    /// What the client gets for `event`; new ids come from `next_id`.
    pub(super) fn event(&mut self, event: BuildEvent, next_id: &mut u64) -> Vec<StderrMsg> {
        match event {
            BuildEvent::Log(b) => self.lines.push(self.act, &b),
            BuildEvent::Note(n) => {
                (self.lines).push(self.act, format!("nix-relay: {n}\n").as_bytes())
            }
            BuildEvent::Activity(m) => self.activity(&m, next_id).into_iter().collect(),
            BuildEvent::Done { .. } => Vec::new(),
        }
    }

    fn activity(&mut self, m: &StderrMsg, next_id: &mut u64) -> Option<StderrMsg> {
        match m.clone() {
            StderrMsg::StartActivity {
                id,
                level,
                kind,
                text,
                fields,
                parent,
            } => {
                if kind == ACT_BUILD && parent == 0 {
                    self.ids.insert(id, self.act);
                    return None;
                }
                let ours = *next_id;
                *next_id += 1;
                let parent = self.ids.get(&parent).copied().unwrap_or(self.act);
                self.ids.insert(id, ours);
                self.open.push(ours);
                Some(StderrMsg::StartActivity {
                    id: ours,
                    level,
                    kind,
                    text,
                    fields,
                    parent,
                })
            }
            StderrMsg::StopActivity { id } => {
                let ours = self.ids.remove(&id)?;
                self.open.retain(|&o| o != ours);
                (ours != self.act).then_some(StderrMsg::StopActivity { id: ours })
            }
            StderrMsg::Result { id, kind, fields } => Some(StderrMsg::Result {
                id: *self.ids.get(&id)?,
                kind,
                fields,
            }),
            _ => None,
        }
    }

    /// The end: the last partial line, every activity still open (the
    /// newest first), then the relay's build activity.
    pub(super) fn finish(&mut self) -> Vec<StderrMsg> {
        let mut msgs = self.lines.finish(self.act);
        msgs.extend((self.open.drain(..).rev()).map(|id| StderrMsg::StopActivity { id }));
        msgs.push(StderrMsg::StopActivity { id: self.act });
        msgs
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn start(id: u64, kind: u64, parent: u64) -> BuildEvent {
        BuildEvent::Activity(Arc::new(StderrMsg::StartActivity {
            id,
            level: 3,
            kind,
            text: b"t".to_vec(),
            fields: Vec::new(),
            parent,
        }))
    }

    fn result(id: u64) -> BuildEvent {
        BuildEvent::Activity(Arc::new(StderrMsg::Result {
            id,
            kind: 104,
            fields: vec![Field::Str(b"buildPhase".to_vec())],
        }))
    }

    fn ids(msgs: &[StderrMsg]) -> Vec<(u64, u64)> {
        msgs.iter()
            .map(|m| match m {
                StderrMsg::StartActivity { id, parent, .. } => (*id, *parent),
                StderrMsg::Result { id, .. } => (*id, u64::MAX),
                StderrMsg::StopActivity { id } => (*id, 0),
                m => panic!("{m:?}"),
            })
            .collect()
    }

    #[test]
    fn the_backends_build_activity_is_the_relays_and_the_rest_nests_under_it() {
        let mut next = 100;
        let mut acts = ClientActs::new(7);
        let mut got = Vec::new();
        for e in [
            start(1, ACT_BUILD, 0),
            result(1),
            start(2, 101, 1),
            start(3, 101, 2),
            start(4, 104, 0),
            result(2),
            result(9),
            BuildEvent::Activity(Arc::new(StderrMsg::StopActivity { id: 3 })),
            BuildEvent::Activity(Arc::new(StderrMsg::StopActivity { id: 1 })),
        ] {
            got.extend(acts.event(e, &mut next));
        }
        assert_eq!(
            ids(&got),
            [
                (7, u64::MAX),
                (100, 7),
                (101, 100),
                (102, 7),
                (100, u64::MAX),
                (101, 0)
            ],
            "the phase lands on the relay's activity, unknown ids are dropped"
        );
        assert_eq!(
            ids(&acts.finish()),
            [(102, 0), (100, 0), (7, 0)],
            "what is still open is closed, the newest first"
        );
    }
}
