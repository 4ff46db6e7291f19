//! A fake's `nix-store --serve --write`: the server side of the serve
//! protocol, encoded by [`crate::wire`]. The build log goes to stderr.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::fake::{Fake, Script};
use crate::wire::serve::{self, Reply, Request, ServeCodec};
use crate::wire::store_path::StorePath;
use crate::wire::{Error, Limits, Result};

/// Serves one connection until the relay hangs up or the script cuts it.
pub(super) async fn run<R, W, E>(fake: &Arc<Fake>, mut r: R, mut w: W, mut stderr: E) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    if fake.script().connect == super::fake::Connect::HangHandshake {
        return std::future::pending().await;
    }
    let version = serve::server_handshake(&mut r, &mut w).await?;
    fake.note(|rec| rec.handshakes += 1);
    let codec = ServeCodec::new(version, Limits::default());
    // As `nix-store --serve`: a BuildDerivation turns use-substitutes off
    // for the rest of the process.
    let mut built = false;
    while let Some(req) = codec.read_request(&mut r).await? {
        let script = fake.script();
        let reply = match req {
            Request::QueryValidPaths {
                paths, substitute, ..
            } => Reply::Paths(fake.query_valid(&paths, substitute && !built)),
            Request::QueryPathInfos { paths } => {
                Reply::PathInfos(paths.iter().filter_map(|p| fake.info(p)).collect())
            }
            Request::AddToStoreNar { info } => {
                let nar = receive(&mut r, info.nar_size, script.cut_upload_after).await?;
                fake.add(info, nar);
                Reply::Ack
            }
            Request::DumpStorePath { path } => {
                if !send_nar(fake, &script, &mut w, &path).await? {
                    return Ok(()); // cut after the first bytes
                }
                continue;
            }
            Request::BuildDerivation { drv_path, drv, .. } => {
                built = true;
                let mut guard = fake.start_build(&drv_path);
                for line in &script.log {
                    let line = format!("{line}\n");
                    stderr
                        .write_all(line.as_bytes())
                        .await
                        .map_err(Error::Write)?;
                }
                stderr.flush().await.map_err(Error::Write)?;
                fake.at_gate(&script).await;
                if let Some(f) = script.flood {
                    super::fake_flood::serve(fake, f, &mut stderr).await?;
                }
                stderr.flush().await.map_err(Error::Write)?;
                let Some(result) = fake.finish_build(&script, &mut guard, &drv).await else {
                    return Ok(());
                };
                Reply::Build(result)
            }
            other => {
                // No error channel: say why on stderr and hang up, like Nix.
                let msg = format!("fake {}: unsupported {:?}\n", fake.name(), other.command());
                let _ = stderr.write_all(msg.as_bytes()).await;
                return Ok(());
            }
        };
        serve::send(&mut w, &codec.encode_reply(&reply)).await?;
    }
    Ok(())
}

/// The `size` bytes of an upload's NAR, or `Err` once `cut` bytes came.
pub(super) async fn receive<R: AsyncRead + Unpin>(
    r: &mut R,
    size: u64,
    cut: Option<u64>,
) -> Result<Vec<u8>> {
    let take = cut.map_or(size, |c| c.min(size));
    let mut nar = Vec::new();
    (&mut *r)
        .take(take)
        .read_to_end(&mut nar)
        .await
        .map_err(|e| Error::read("upload NAR", e))?;
    if cut.is_some_and(|c| c < size) || (nar.len() as u64) < size {
        return Err(Error::Protocol("the fake cut the upload".into()));
    }
    Ok(nar)
}

/// Sends `path`'s NAR (a byte garbled at `garble_output_at`), or its first
/// `cut_output_after` bytes and hangs up.
pub(super) async fn send_nar<W: AsyncWrite + Unpin>(
    fake: &Fake,
    script: &Script,
    w: &mut W,
    path: &StorePath,
) -> Result<bool> {
    let Some(mut nar) = fake.nar(path) else {
        return Err(Error::Protocol(format!("fake: {path} is not valid")));
    };
    if let Some(b) = (script.garble_output_at)
        .and_then(|at| usize::try_from(at).ok())
        .and_then(|at| std::sync::Arc::make_mut(&mut nar).get_mut(at))
    {
        *b ^= 0xff;
    }
    let n = script
        .cut_output_after
        .map_or(nar.len(), |c| nar.len().min(c as usize));
    w.write_all(&nar[..n]).await.map_err(Error::Write)?;
    w.flush().await.map_err(Error::Write)?;
    Ok(n == nar.len())
}
