//! A serve-protocol session: a Nix client's `nix-store --serve [--write]`.
//!
//! Queries are answered from the relay store, uploads stream into it, and
//! BuildDerivation goes to a backend ([`super::build`]). Outputs a build
//! produced stay on the backend until the client asks for them; then they
//! stream to the client and into the store in one pass (the tee). Outputs
//! the client never asks for are fetched into the store when the session
//! ends, so every build lands in the store.
//!
//! Invariant: a response is written only after its request was read
//! whole, and a failure that the serve protocol cannot express (it has no
//! error channel) ends the session with the reason on the client's stderr.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWrite};
use tracing::debug;

use super::build::{self, Pending};
use super::{ClientId, Error, Relay};
use crate::buildlog::LogSink;
use crate::store::{Verify, topo_sort};
use crate::wire::build::{BuildOptions, BuildResult, BuildStatus};
use crate::wire::derivation::DerivedPath;
use crate::wire::export;
use crate::wire::path_info::ValidPathInfo;
use crate::wire::serve::{self, Reply, Request, ServeCodec, ServeVersion};
use crate::wire::store_path::StorePath;
use tokio_util::sync::CancellationToken;

pub struct ServeSession<R, W> {
    relay: Arc<Relay>,
    r: R,
    w: W,
    log: LogSink,
    writable: bool,
    client: ClientId,
    version: ServeVersion,
    /// The last build's outputs, streamable from its backend.
    pending: Option<Pending>,
    /// Fires when the client's channel is gone.
    gone: CancellationToken,
}

/// Runs one session to its end. `Ok` on a clean end of the client's input.
pub async fn run<R, W>(
    relay: Arc<Relay>,
    r: R,
    w: W,
    log: LogSink,
    writable: bool,
    client: ClientId,
    gone: CancellationToken,
) -> Result<(), Error>
where
    R: AsyncBufRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let mut s = ServeSession {
        relay,
        r,
        w,
        log,
        writable,
        client,
        version: ServeVersion::LATEST,
        pending: None,
        gone,
    };
    s.serve().await
}

impl<R, W> ServeSession<R, W>
where
    R: AsyncBufRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    async fn serve(&mut self) -> Result<(), Error> {
        let limit = self.relay.limits.handshake_timeout;
        self.version =
            tokio::time::timeout(limit, serve::server_handshake(&mut self.r, &mut self.w))
                .await
                .map_err(|_| Error::Refused(format!("no serve handshake within {limit:?}")))??;
        debug!(version = %self.version, "serve handshake done");
        let codec = self.codec();
        while let Some(req) = codec.read_request(&mut self.r).await? {
            debug!(command = ?req.command(), "request");
            self.handle(req).await?;
        }
        Ok(())
    }

    fn need_write(&self, what: &'static str) -> Result<(), Error> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly(what))
        }
    }

    fn codec(&self) -> ServeCodec {
        ServeCodec::new(self.version, self.relay.limits.wire())
    }

    async fn reply(&mut self, reply: Reply) -> Result<(), Error> {
        let buf = self.codec().encode_reply(&reply);
        Ok(serve::send(&mut self.w, &buf).await?)
    }

    async fn handle(&mut self, req: Request) -> Result<(), Error> {
        match req {
            Request::QueryValidPaths { paths, .. } => self.query_valid_paths(paths).await,
            Request::QueryPathInfos { paths } => self.query_path_infos(paths).await,
            Request::DumpStorePath { path } => self.dump_store_path(path).await,
            Request::ImportPaths => self.import_paths().await,
            Request::ExportPaths { paths, .. } => self.export_paths(paths).await,
            Request::BuildPaths { paths, options } => self.build_paths(paths, options).await,
            Request::QueryClosure { paths, .. } => self.query_closure(paths).await,
            Request::BuildDerivation {
                drv_path,
                drv,
                options,
            } => {
                self.need_write("BuildDerivation")?;
                self.pending = None;
                let (result, pending) = build::run(
                    &self.relay,
                    &self.log,
                    &self.client,
                    &self.gone,
                    &drv_path,
                    &drv,
                    options,
                )
                .await;
                self.pending = pending;
                self.reply(Reply::Build(result)).await
            }
            Request::AddToStoreNar { info } => self.add_to_store_nar(info).await,
        }
    }

    /// Metadata from the store, or from a finished build's pending outputs.
    async fn lookup(&self, path: &StorePath) -> Result<Option<ValidPathInfo>, Error> {
        super::lookup(&self.relay, self.pending.as_ref(), &self.client, path).await
    }

    async fn query_valid_paths(&mut self, paths: Vec<StorePath>) -> Result<(), Error> {
        let mut valid = Vec::new();
        for p in paths {
            if self.lookup(&p).await?.is_some() {
                valid.push(p);
            }
        }
        self.reply(Reply::Paths(valid)).await
    }

    async fn query_path_infos(&mut self, paths: Vec<StorePath>) -> Result<(), Error> {
        let mut infos = Vec::new();
        for p in paths {
            if let Some(i) = self.lookup(&p).await? {
                infos.push(i);
            }
        }
        self.reply(Reply::PathInfos(infos)).await
    }

    async fn dump_store_path(&mut self, path: StorePath) -> Result<(), Error> {
        let client = &self.client;
        if let Some(h) = super::holder(&self.relay, self.pending.as_ref(), client, &path) {
            let mut finished = h.finished.lock().await;
            if finished.outputs.contains_key(&path) {
                finished
                    .fetch(&self.relay, &path, Some(&mut self.w))
                    .await?;
                return Ok(());
            }
        }
        let (info, mut nar) = self
            .relay
            .store
            .open_nar(&path, Some(&self.client.name))
            .await?;
        crate::metrics::nar_bytes(crate::metrics::Direction::ToClient, info.nar_size);
        tokio::io::copy_buf(&mut nar, &mut self.w)
            .await
            .map_err(crate::wire::Error::Write)?;
        Ok(serve::send(&mut self.w, &[]).await?)
    }

    async fn add_to_store_nar(&mut self, info: ValidPathInfo) -> Result<(), Error> {
        self.need_write("AddToStoreNar")?;
        let mut writer = self.relay.store.begin(self.relay.limits.nar()).await?;
        let mut limited = (&mut self.r).take(info.nar_size);
        writer
            .pump(&mut limited, None::<&mut W>, &info.path)
            .await?;
        if limited.limit() != 0 {
            return Err(Error::Refused(format!(
                "NAR of {} ended {} bytes before the declared narSize",
                info.path,
                limited.limit()
            )));
        }
        let path = info.path.clone();
        let scope = super::commit_upload(&self.relay, &self.client, writer, info).await?;
        debug!(%path, ?scope, "upload stored");
        self.reply(Reply::Ack).await
    }

    async fn import_paths(&mut self) -> Result<(), Error> {
        self.need_write("ImportPaths")?;
        let limits = self.relay.limits.wire();
        while export::read_next(&mut self.r).await? {
            let mut writer = self.relay.store.begin(self.relay.limits.nar()).await?;
            let placeholder =
                StorePath::parse("/nix/store/00000000000000000000000000000000-import")?;
            writer
                .pump(&mut self.r, None::<&mut W>, &placeholder)
                .await?;
            let t = export::read_trailer(&mut self.r, &limits).await?;
            let info = ValidPathInfo {
                path: t.path,
                deriver: t.deriver,
                nar_hash: crate::wire::hash::Sha256Hash([0; 32]),
                references: t.references,
                registration_time: 0,
                nar_size: 0,
                ultimate: false,
                sigs: Vec::new(),
                ca: None,
            };
            let (name, trusted) = (&self.client.name, self.client.trusted);
            (self.relay.store)
                .commit_upload(writer, info, Verify::Computed, name, trusted)
                .await?;
        }
        self.reply(Reply::Ack).await
    }

    async fn export_paths(&mut self, paths: Vec<StorePath>) -> Result<(), Error> {
        let mut refs = HashMap::new();
        for p in &paths {
            let info = self
                .relay
                .store
                .path_info(p, Some(&self.client.name))
                .await?
                .ok_or_else(|| crate::store::Error::Missing(p.clone()))?;
            refs.insert(p.clone(), info.references);
        }
        for p in topo_sort(&refs) {
            let (info, mut nar) = self
                .relay
                .store
                .open_nar(&p, Some(&self.client.name))
                .await?;
            let mut buf = Vec::new();
            export::write_next(&mut buf, true);
            serve::send(&mut self.w, &buf).await?;
            tokio::io::copy_buf(&mut nar, &mut self.w)
                .await
                .map_err(crate::wire::Error::Write)?;
            let mut buf = Vec::new();
            export::write_trailer(
                &mut buf,
                &export::ExportTrailer {
                    path: p.clone(),
                    references: info.references.into_iter().collect(),
                    deriver: info.deriver,
                },
            );
            serve::send(&mut self.w, &buf).await?;
        }
        let mut buf = Vec::new();
        export::write_next(&mut buf, false);
        Ok(serve::send(&mut self.w, &buf).await?)
    }

    async fn query_closure(&mut self, paths: Vec<StorePath>) -> Result<(), Error> {
        let (closure, _) = self
            .relay
            .store
            .closure_sorted(&paths, Some(&self.client.name))
            .await?;
        let sorted: std::collections::BTreeSet<_> = closure.into_iter().collect();
        self.reply(Reply::Paths(sorted.into_iter().collect())).await
    }

    /// BuildPaths: opaque paths must be valid; derivations (`drv!out`,
    /// copied to the relay first) are built like a remote store's
    /// ([`super::derived`]), their logs on the client's stderr. Any
    /// failure is answered with a failure status and message.
    async fn build_paths(
        &mut self,
        paths: Vec<String>,
        options: BuildOptions,
    ) -> Result<(), Error> {
        self.need_write("BuildPaths")?;
        let failure = match self.build_derived(&paths, options).await {
            Ok(results) => (paths.iter().zip(&results))
                .filter(|(_, r)| !r.status.is_success())
                .map(|(p, r)| format!("{p}: {}", String::from_utf8_lossy(&r.error_msg)))
                .reduce(|a, b| format!("{a}; {b}")),
            Err(e) => Some(crate::error_chain(&e)),
        };
        let failure = failure.map(|msg| BuildResult::failure(BuildStatus::MiscFailure, msg));
        self.reply(Reply::BuildPaths(failure)).await
    }

    async fn build_derived(
        &mut self,
        paths: &[String],
        options: BuildOptions,
    ) -> Result<Vec<BuildResult>, Error> {
        let wanted = (paths.iter())
            .map(|p| DerivedPath::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let req = super::derived::Request::read(&self.relay, &self.client, wanted).await?;
        let (events, mut rx) = tokio::sync::mpsc::channel(64);
        let log = self.log.clone();
        let forward = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                match ev {
                    super::derived::Event::Started(drv) => {
                        super::say(&log, format!("building '{drv}'")).await
                    }
                    super::derived::Event::Log(_, chunk) => {
                        let _ = log.send(chunk).await;
                    }
                    super::derived::Event::Finished(..) => {}
                }
            }
        });
        let results = (req.build(&self.relay, &self.client, &self.gone, options, &events)).await;
        drop(events);
        let _ = forward.await;
        Ok(results)
    }
}
