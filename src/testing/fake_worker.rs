//! A fake's `nix-daemon --stdio`: the server side of the worker protocol,
//! encoded by [`crate::wire`]. The build log goes in band, as build-log
//! lines of one build activity.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::fake::{Connect, Fake};
use super::fake_serve::send_nar;
use crate::wire::worker::stderr::{
    ACT_BUILD, ACT_UNKNOWN, LVL_INFO, RES_BUILD_LOG_LINE, RES_SET_PHASE,
};
use crate::wire::worker::{
    Field, FramedReader, NarUpload, Reply, Request, StderrMsg, Trust, WorkerCodec, WorkerError,
    WorkerVersion, server_handshake,
};
use crate::wire::{Error, Limits, Result};

/// Serves one connection until the relay hangs up or the script cuts it.
pub(super) async fn run<R, W>(fake: &Arc<Fake>, mut r: R, mut w: W) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if fake.script().connect == Connect::HangHandshake {
        return std::future::pending().await;
    }
    let nix = "nix-relay fake";
    let v = server_handshake(&mut r, &mut w, WorkerVersion::LATEST, nix, Trust::Trusted)
        .await?
        .version;
    let codec = WorkerCodec::new(v, Limits::default());
    send(&mut w, &codec, &[StderrMsg::Last], None).await?;
    fake.note(|rec| rec.handshakes += 1);
    // As nix-daemon: a SetOptions' use-substitutes lasts until the next.
    let mut use_substitutes = true;
    while let Some(req) = codec.read_request(&mut r).await? {
        let script = fake.script();
        let reply = match req {
            Request::SetOptions(o) => {
                use_substitutes = o.use_substitutes;
                fake.note(|rec| rec.options.push(o));
                Reply::None
            }
            Request::QueryValidPaths {
                paths, substitute, ..
            } => Reply::Paths(fake.query_valid(&paths, substitute && use_substitutes)),
            Request::QueryPathInfo { path } => Reply::PathInfo(fake.info(&path)),
            Request::AddToStoreNar { info, .. } if codec.nar_upload() == NarUpload::Framed => {
                let mut framed = FramedReader::new(&mut r, &codec.limits);
                let nar =
                    super::fake_serve::receive(&mut framed, info.nar_size, script.cut_upload_after)
                        .await?;
                if framed.drain().await? != 0 {
                    return Err(Error::Protocol("upload longer than its narSize".into()));
                }
                fake.add(info, nar);
                Reply::None
            }
            Request::BuildDerivation { drv_path, drv, .. } => {
                let mut guard = fake.start_build(&drv_path);
                let text = format!("building '{drv_path}'").into_bytes();
                send(&mut w, &codec, &[activity(text)], None).await?;
                send(&mut w, &codec, &phases(&script.phases), None).await?;
                for line in &script.log {
                    send(&mut w, &codec, &[log_line(line)], None).await?;
                }
                fake.at_gate(&script).await;
                if let Some(f) = script.flood {
                    super::fake_flood::worker(fake, f, &mut w, v).await?;
                }
                let Some(result) = fake.finish_build(&script, &mut guard, &drv).await else {
                    return Ok(());
                };
                send(&mut w, &codec, &[StderrMsg::StopActivity { id: 1 }], None).await?;
                Reply::Build(result.into())
            }
            Request::NarFromPath { path } => {
                send(&mut w, &codec, &[], Some(Reply::Nar)).await?;
                if !send_nar(fake, &script, &mut w, &path).await? {
                    return Ok(()); // cut after the first bytes
                }
                continue;
            }
            other => {
                let msg = format!("fake {}: unsupported {:?}", fake.name(), other.op());
                send(
                    &mut w,
                    &codec,
                    &[StderrMsg::Error(WorkerError::new(msg))],
                    None,
                )
                .await?;
                continue;
            }
        };
        send(&mut w, &codec, &[], Some(reply)).await?;
    }
    Ok(())
}

fn activity(text: Vec<u8>) -> StderrMsg {
    StderrMsg::StartActivity {
        id: 1,
        level: LVL_INFO,
        kind: ACT_BUILD,
        text,
        fields: Vec::new(),
        parent: 0,
    }
}

/// Each phase as `RESULT setPhase` on the build activity, with a nested
/// activity (id 2) started and stopped in it.
fn phases(phases: &[String]) -> Vec<StderrMsg> {
    let mut msgs = Vec::new();
    for p in phases {
        msgs.push(StderrMsg::Result {
            id: 1,
            kind: RES_SET_PHASE,
            fields: vec![Field::Str(p.as_bytes().to_vec())],
        });
        msgs.push(StderrMsg::StartActivity {
            id: 2,
            level: LVL_INFO,
            kind: ACT_UNKNOWN,
            text: format!("in {p}").into_bytes(),
            fields: Vec::new(),
            parent: 1,
        });
        msgs.push(StderrMsg::StopActivity { id: 2 });
    }
    msgs
}

fn log_line(line: &str) -> StderrMsg {
    StderrMsg::Result {
        id: 1,
        kind: RES_BUILD_LOG_LINE,
        fields: vec![Field::Str(line.as_bytes().to_vec())],
    }
}

/// Writes `msgs`, then (with a reply) `STDERR_LAST` and the reply.
async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    codec: &WorkerCodec,
    msgs: &[StderrMsg],
    reply: Option<Reply>,
) -> Result<()> {
    crate::wire::serve::send(w, &codec.encode_reply(msgs, reply.as_ref())).await
}
