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

use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncWrite};
use tracing::debug;

use super::build::{BuildEvent, BuildHandle, Pending};
use super::derived::Event;
use super::{ClientId, Core, Error};
use crate::buildlog::{LogEvent, LogSink};
use crate::wire::build::{BuildOptions, BuildResult, BuildStatus};
use crate::wire::derivation::DerivedPath;
use crate::wire::export;
use crate::wire::serve::{self, Reply, Request, ServeCodec, ServeVersion};
use crate::wire::store_path::StorePath;
use tokio_util::sync::CancellationToken;

pub struct ServeSession<R, W> {
    core: Arc<Core>,
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
    /// The substitute flag of the client's last QueryValidPaths (Nix sets
    /// it from `builders-use-substitutes` when it copies a build's inputs).
    substitute: bool,
}

/// Runs one session to its end. `Ok` on a clean end of the client's input.
pub async fn run<R, W>(
    core: Arc<Core>,
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
        core,
        r,
        w,
        log,
        writable,
        client,
        version: ServeVersion::LATEST,
        pending: None,
        gone,
        substitute: false,
    };
    s.serve().await
}

impl<R, W> ServeSession<R, W>
where
    R: AsyncBufRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    async fn serve(&mut self) -> Result<(), Error> {
        let limit = self.core.limits().handshake_timeout;
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
        ServeCodec::new(self.version, self.core.limits().wire())
    }

    async fn reply(&mut self, reply: Reply) -> Result<(), Error> {
        let buf = self.codec().encode_reply(&reply);
        Ok(serve::send(&mut self.w, &buf).await?)
    }

    async fn handle(&mut self, req: Request) -> Result<(), Error> {
        let (core, client, pending) = (&self.core, &self.client, self.pending.as_ref());
        match req {
            Request::QueryValidPaths {
                paths, substitute, ..
            } => {
                self.substitute = substitute;
                let valid = core.query_valid(client, pending, paths, substitute).await?;
                self.reply(Reply::Paths(valid)).await
            }
            Request::QueryPathInfos { paths } => {
                let infos = core.query_infos(client, pending, paths).await?;
                self.reply(Reply::PathInfos(infos)).await
            }
            Request::DumpStorePath { path } => {
                let nar = core.export(client, pending, &path).await?;
                Ok(nar.send(core, &mut self.w).await?)
            }
            Request::ImportPaths => self.import_paths().await,
            Request::ExportPaths { paths, .. } => self.export_paths(paths).await,
            Request::BuildPaths { paths, options } => self.build_paths(paths, options).await,
            Request::QueryClosure { paths, .. } => {
                let closure = core.closure(client, &paths).await?;
                self.reply(Reply::Paths(closure)).await
            }
            Request::BuildDerivation {
                drv_path,
                drv,
                options,
            } => {
                self.need_write("BuildDerivation")?;
                self.pending = None;
                let (client, gone) = (&self.client, &self.gone);
                let mut options: crate::backend::Options = options.into();
                options.substitute = self.substitute;
                let build = (self.core).build(client, &drv_path, &drv, options, gone);
                let handle = build.await;
                let result = self.stream(handle).await;
                self.reply(Reply::Build(result)).await
            }
            Request::AddToStoreNar { info } => {
                self.need_write("AddToStoreNar")?;
                let path = info.path.clone();
                let scope = core.upload(client, info, &mut self.r).await?;
                debug!(%path, ?scope, "upload stored");
                self.reply(Reply::Ack).await
            }
        }
    }

    /// A build's events to the client's stderr, as text; its result, and
    /// its outputs kept for the client to fetch.
    async fn stream(&mut self, mut build: BuildHandle) -> BuildResult {
        while let Some(event) = build.next().await {
            match event {
                BuildEvent::Done { result, pending } => {
                    self.pending = pending;
                    return result;
                }
                event => {
                    if let Some(text) = event.text() {
                        // A gone client only means nobody reads its log.
                        let _ = self.log.send(text).await;
                    }
                }
            }
        }
        super::handle::lost()
    }

    async fn import_paths(&mut self) -> Result<(), Error> {
        self.need_write("ImportPaths")?;
        let limits = self.core.limits().wire();
        let placeholder = StorePath::parse("/nix/store/00000000000000000000000000000000-import")?;
        while export::read_next(&mut self.r).await? {
            let nar = self.core.receive(&mut self.r, &placeholder).await?;
            let trailer = export::read_trailer(&mut self.r, &limits).await?;
            self.core.commit_import(&self.client, nar, trailer).await?;
        }
        self.reply(Reply::Ack).await
    }

    async fn export_paths(&mut self, paths: Vec<StorePath>) -> Result<(), Error> {
        for p in self.core.export_order(&self.client, &paths).await? {
            let (info, mut nar) = self.core.nar(&self.client, &p).await?;
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
        let req = super::derived::Request::read(&self.core, &self.client, wanted).await?;
        let mut run = req.run(&self.core, &self.client, &self.gone, options.into());
        while let Some(event) = run.next().await {
            let text = match event {
                Event::Started(drv) => LogEvent::Note(format!("building '{drv}'").into()).text(),
                Event::Build(_, e) => e.text(),
                Event::Finished(..) => None,
            };
            if let Some(text) = text {
                let _ = self.log.send(text).await;
            }
        }
        let results = req.results(run);
        Ok(results)
    }
}
