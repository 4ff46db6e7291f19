//! A worker-protocol session: a Nix client's `nix-daemon --stdio` (ssh-ng://).
//!
//! The same core as the serve session (`super::serve`): queries answered
//! from the relay store, uploads streamed into it, BuildDerivation through
//! [`super::build`] (cache hit, dedup, or a backend), outputs teed from the
//! backend on NarFromPath. What differs is the framing: every reply is a
//! STDERR stream ended by `STDERR_LAST` (then the result) or `STDERR_ERROR`,
//! and build logs travel in-band as activity messages.
//!
//! Invariant: after an op has been read whole, any failure the client can
//! be told about goes out as `STDERR_ERROR` and the session continues; a
//! failure while the op's own bytes are still unread (an unknown op, a
//! broken frame) ends the session, because the stream can no longer be
//! trusted to be in sync.

use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncWrite, BufReader};
use tokio_util::sync::CancellationToken;
use tracing::debug;

mod derived;

mod build;

use super::build::Pending;
use super::{ClientId, Core, CoreError, Error};
use crate::backend::Options;
use crate::error_chain;
use crate::wire::build::BuildOptions;
use crate::wire::path_info::ValidPathInfo;
use crate::wire::serve::send;
use crate::wire::store_path::StorePath;
use crate::wire::worker::framed::FramedReader;
use crate::wire::worker::stderr::{StderrMsg, WorkerError, read_read_reply};
use crate::wire::worker::{
    NarUpload, Reply, Request, Trust, WorkerCodec, WorkerVersion, server_handshake,
};

#[path = "worker_store.rs"]
mod store_ops;

/// Bytes asked for per `STDERR_READ` from 1.21–1.22 clients.
const READ_CHUNK: u64 = 64 << 10;

pub struct WorkerSession<R, W> {
    core: Arc<Core>,
    r: R,
    w: W,
    client: ClientId,
    gone: CancellationToken,
    version: WorkerVersion,
    /// The client's SetOptions, for its builds.
    options: Options,
    /// The substitute flag of the client's last QueryValidPaths (a build
    /// hook's, from `builders-use-substitutes`), for a BuildDerivation.
    substitute: bool,
    pending: Option<Pending>,
    next_activity: u64,
    /// AddTempRoot/AddPermRoot: pinned against eviction until the end.
    roots: Vec<crate::store::Pin>,
}

/// An op that failed after it was read whole: the client hears why (as
/// `STDERR_ERROR`) and the session goes on.
#[derive(Debug, thiserror::Error)]
enum OpError {
    #[error("path '{0}' is not valid on nix-relay")]
    NotHere(StorePath),
    #[error("path '{0}' is not valid")]
    NotValid(StorePath),
    #[error("only trusted clients may add signatures")]
    UntrustedSignatures,
    #[error("{0} bytes after the NAR in AddToStoreNar")]
    AfterNar(u64),
    #[error("{0} unexpected bytes at the end of AddMultipleToStore")]
    AfterMultiple(u64),
    #[error("the NAR of {0} ends before its narSize")]
    ShortNar(StorePath),
    /// Why BuildPaths cannot build (a remote-store build refused or failed).
    #[error("{0}")]
    Unbuildable(String),
    #[error("{0} bytes after the payload of AddToStore")]
    AfterPayload(u64),
    #[error("AddToStore")]
    Ca(#[source] crate::wire::Error),
    #[error("AddToStore: a flat payload over {0} bytes (the wire string limit)")]
    FlatTooLarge(usize),
    #[error("nix-relay does not support the worker operation {0:?} ({n})", n = *.0 as u64)]
    Unsupported(crate::wire::worker::Op),
    #[error("nix-relay's store cannot collect garbage that way: {0}")]
    Gc(&'static str),
    #[error("you are not privileged to {0} (not a trusted client of nix-relay)")]
    NotTrusted(&'static str),
    #[error(
        "AddToStore before protocol 1.25 (Nix < 2.4): nix-relay takes only NAR-hashed sha256 \
         adds; a flat fixed-output add needs a newer client"
    )]
    LegacyFlat,
    #[error("more than {0} roots in one session")]
    TooManyRoots(usize),
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// Runs one session to its end. `Ok` on a clean end of the client's input.
pub async fn run<R, W>(
    core: Arc<Core>,
    r: R,
    w: W,
    client: ClientId,
    gone: CancellationToken,
) -> Result<(), Error>
where
    R: AsyncBufRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let mut s = WorkerSession {
        core,
        r,
        w,
        client,
        gone,
        version: WorkerVersion::LATEST,
        options: Options::default(),
        substitute: false,
        pending: None,
        next_activity: u64::from(std::process::id()) << 32,
        roots: Vec::new(),
    };
    s.serve().await
}

impl<R, W> WorkerSession<R, W>
where
    R: AsyncBufRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    async fn serve(&mut self) -> Result<(), Error> {
        let limit = self.core.limits().handshake_timeout;
        let hs = handshake(&mut self.r, &mut self.w, limit).await?;
        self.version = hs.version;
        debug!(version = %format_args!("{}.{}", hs.version.major(), hs.version.minor()), "worker handshake done");
        self.reply(&[StderrMsg::Last], None).await?;
        let codec = self.codec();
        loop {
            let req = match codec.read_request(&mut self.r).await {
                Ok(Some(req)) => req,
                Ok(None) => return Ok(()),
                Err(e) => {
                    // The op's bytes cannot be skipped: say why, then stop.
                    let msg = format!("nix-relay: {}", error_chain(&e));
                    let _ = self.reply(&[error(&msg)], None).await;
                    return Err(e.into());
                }
            };
            debug!(op = ?req.op(), "request");
            match self.handle(req).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.reply(&[error(&error_chain(&e))], None).await?,
                Err(fatal) => {
                    let _ = self.reply(&[error(&error_chain(&fatal))], None).await;
                    return Err(fatal);
                }
            }
        }
    }

    fn codec(&self) -> WorkerCodec {
        WorkerCodec::new(self.version, self.core.limits().wire())
    }

    /// Writes `msgs` and, after a final `STDERR_LAST`, the reply.
    async fn reply(&mut self, msgs: &[StderrMsg], reply: Option<Reply>) -> Result<(), Error> {
        let buf = self.codec().encode_reply(msgs, reply.as_ref());
        Ok(send(&mut self.w, &buf).await?)
    }

    async fn ok(&mut self, reply: Reply) -> Result<Result<(), OpError>, Error> {
        self.reply(&[], Some(reply)).await?;
        Ok(Ok(()))
    }

    async fn handle(&mut self, req: Request) -> Result<Result<(), OpError>, Error> {
        match req {
            Request::SetOptions(o) => {
                self.options = options_from(o);
                self.ok(Reply::None).await
            }
            Request::IsValidPath { path } => {
                let valid = self.lookup(&path).await?.is_some();
                self.ok(Reply::Bool(valid)).await
            }
            Request::QueryValidPaths { paths, substitute } => {
                self.substitute = substitute;
                let (client, pending) = (&self.client, self.pending.as_ref());
                let valid = (self.core.query_valid(client, pending, paths, substitute)).await?;
                self.ok(Reply::Paths(valid)).await
            }
            Request::QueryPathInfo { path } => self.query_path_info(path).await,
            Request::QuerySubstitutablePaths { paths } => {
                let found = self.core.substitutable(&self.client, &paths).await?;
                self.ok(Reply::Paths(found.into_iter().map(|(p, _)| p).collect()))
                    .await
            }
            Request::QueryReferrers { path } => self.query_referrers(path).await,
            Request::QueryValidDerivers { path } => self.query_valid_derivers(path).await,
            Request::QueryPathFromHashPart { hash_part } => {
                self.path_from_hash_part(hash_part).await
            }
            Request::AddTempRoot { path } => self.add_root(path, Reply::Ack).await,
            Request::AddIndirectRoot { .. } => self.ok(Reply::Ack).await,
            Request::AddSignatures { path, sigs } => self.add_signatures(path, sigs).await,
            Request::AddPermRoot { path, gc_root } => {
                self.add_root(path, Reply::Str(gc_root)).await
            }
            Request::Store(op) => self.store_op(op).await,
            Request::EnsurePath { path } => match self.lookup(&path).await? {
                Some(_) => self.ok(Reply::Ack).await,
                None => Ok(Err(OpError::NotHere(path))),
            },
            Request::AddToStoreNar { info, .. } => self.add_to_store_nar(info).await,
            Request::AddMultipleToStore { .. } => self.add_multiple().await,
            Request::NarFromPath { path } => self.nar_from_path(path).await,
            Request::BuildDerivation { drv_path, drv, .. } => {
                self.build_derivation(drv_path, drv).await
            }
            Request::BuildPaths { paths, mode } => self.build_paths(paths, mode, false).await,
            Request::BuildPathsWithResults { paths, mode } => {
                self.build_paths(paths, mode, true).await
            }
            Request::QueryMissing { paths } => self.query_missing(paths).await,
            Request::QueryDerivationOutputMap { drv_path } => self.output_map(drv_path).await,
            Request::QueryRealisation { .. } => self.ok(Reply::Strings(Vec::new())).await,
            Request::RegisterDrvOutput(_) => self.ok(Reply::None).await,
            Request::AddBuildLog { drv_path } => self.add_build_log(drv_path).await,
            Request::AddToStore {
                name,
                cam_str,
                refs,
                ..
            } => self.add_to_store_ca(name, cam_str, refs).await,
            Request::AddToStoreLegacy(a) => {
                match store_ops::add_legacy(&self.core, &self.client, &a, &mut self.r).await? {
                    Ok(path) => self.ok(Reply::Str(path.as_str().into())).await,
                    Err(e) => Ok(Err(e)),
                }
            }
        }
    }

    /// Metadata of `path` as this client sees it (see [`Core::path_info`]).
    async fn lookup(&self, path: &StorePath) -> Result<Option<ValidPathInfo>, Error> {
        let (client, pending) = (&self.client, self.pending.as_ref());
        Ok(self.core.path_info(client, pending, path).await?)
    }

    async fn add_signatures(
        &mut self,
        path: StorePath,
        sigs: Vec<String>,
    ) -> Result<Result<(), OpError>, Error> {
        if !self.client.trusted {
            return Ok(Err(OpError::UntrustedSignatures));
        }
        if self.core.add_signatures(&self.client, &path, &sigs).await? {
            self.ok(Reply::Ack).await
        } else {
            Ok(Err(OpError::NotHere(path)))
        }
    }

    async fn query_path_info(&mut self, path: StorePath) -> Result<Result<(), OpError>, Error> {
        let info = self.lookup(&path).await?;
        if info.is_none() && !self.version.has_found_flag() {
            return Ok(Err(OpError::NotValid(path)));
        }
        self.ok(Reply::PathInfo(info)).await
    }

    async fn add_to_store_nar(
        &mut self,
        info: ValidPathInfo,
    ) -> Result<Result<(), OpError>, Error> {
        if self.codec().nar_upload() == NarUpload::Pulled {
            return self.add_pulled(info).await;
        }
        let limits = self.core.limits().wire();
        let mut framed = BufReader::new(FramedReader::new(&mut self.r, &limits));
        let stored = self.core.upload(&self.client, info, &mut framed).await;
        // Whatever happened, the frames must be consumed to the end.
        let rest = framed.into_inner().drain().await?;
        match stored {
            Ok(_) if rest == 0 => self.ok(Reply::None).await,
            Ok(_) => Ok(Err(OpError::AfterNar(rest))),
            Err(e) => Ok(Err(e.into())),
        }
    }

    /// 1.21–1.22: the NAR is pulled from the client with `STDERR_READ`.
    async fn add_pulled(&mut self, info: ValidPathInfo) -> Result<Result<(), OpError>, Error> {
        let mut writer = self.core.begin_upload().await?;
        let limits = self.core.limits().wire();
        let mut left = info.nar_size;
        while left > 0 {
            self.reply(&[StderrMsg::Read(left.min(READ_CHUNK))], None)
                .await?;
            let chunk = read_read_reply(&mut self.r, READ_CHUNK, &limits).await?;
            if chunk.is_empty() || chunk.len() as u64 > left {
                return Err(Error::Refused("client sent a wrong-sized NAR chunk".into()));
            }
            let fed = writer
                .feed(&chunk, &info.path)
                .await
                .map_err(CoreError::from)?;
            if fed != chunk.len() {
                return Ok(Err(OpError::ShortNar(info.path)));
            }
            left -= chunk.len() as u64;
        }
        match self.core.commit_upload(&self.client, writer, info).await {
            Ok(_) => self.ok(Reply::None).await,
            Err(e) => Ok(Err(e.into())),
        }
    }

    async fn add_multiple(&mut self) -> Result<Result<(), OpError>, Error> {
        let limits = self.core.limits().wire();
        let mut framed = BufReader::new(FramedReader::new(&mut self.r, &limits));
        let stored = store_many(&self.core, &self.client, &mut framed).await;
        let rest = framed.into_inner().drain().await?;
        match stored {
            Ok(n) if rest == 0 => {
                debug!(paths = n, "AddMultipleToStore stored");
                self.ok(Reply::None).await
            }
            Ok(_) => Ok(Err(OpError::AfterMultiple(rest))),
            Err(e) => Ok(Err(e.into())),
        }
    }

    async fn nar_from_path(&mut self, path: StorePath) -> Result<Result<(), OpError>, Error> {
        let (client, pending) = (&self.client, self.pending.as_ref());
        let nar = match self.core.export(client, pending, &path).await {
            Ok(nar) => nar,
            Err(e) if e.missing().is_some() => return Ok(Err(OpError::NotValid(path))),
            Err(e) => return Err(e.into()),
        };
        self.reply(&[], Some(Reply::Nar)).await?;
        nar.send(&self.core, &mut self.w).await?;
        Ok(Ok(()))
    }
}

/// Tells a worker client why it is refused, in-band: the handshake, then
/// `STDERR_ERROR` where Nix waits for its first STDERR stream, so the
/// client's terminal shows `error: nix-relay: …` rather than "disconnected
/// unexpectedly". Bounded by `limit`.
pub async fn refuse<R, W>(
    mut r: R,
    mut w: W,
    reason: &str,
    limit: std::time::Duration,
) -> Result<(), Error>
where
    R: AsyncBufRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let hs = handshake(&mut r, &mut w, limit).await?;
    let codec = WorkerCodec::new(hs.version, crate::wire::Limits::default());
    let msg = error(&format!("nix-relay: {reason}"));
    Ok(send(&mut w, &codec.encode_reply(&[msg], None)).await?)
}

/// The server side of the worker handshake, within `limit`.
async fn handshake<R, W>(
    r: &mut R,
    w: &mut W,
    limit: std::time::Duration,
) -> Result<crate::wire::worker::ServerHandshake, Error>
where
    R: AsyncBufRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let version = concat!("nix-relay ", env!("CARGO_PKG_VERSION"));
    let hs = server_handshake(r, w, WorkerVersion::LATEST, version, Trust::Trusted);
    Ok(tokio::time::timeout(limit, hs)
        .await
        .map_err(|_| Error::Refused(format!("no worker handshake within {limit:?}")))??)
}

fn error(msg: &str) -> StderrMsg {
    StderrMsg::Error(WorkerError::new(msg.as_bytes().to_vec()))
}

/// The content of an AddMultipleToStore stream: count, then per path its
/// info (1.16 layout) and NAR.
async fn store_many<B: AsyncBufRead + Unpin>(
    core: &Core,
    client: &ClientId,
    r: &mut B,
) -> Result<u64, CoreError> {
    // The content's layout does not depend on the version.
    let codec = WorkerCodec::new(WorkerVersion::LATEST, core.limits().wire());
    let n = codec.read_add_multiple_count(r).await?;
    for _ in 0..n {
        let info = codec.read_upload_path_info(r).await?;
        core.upload(client, info, r).await?;
    }
    Ok(n)
}

/// A worker client's SetOptions as a build's options: the limits the
/// relay enforces as serve-style options, and the client's own settings
/// as they are (for a worker backend, `backend::worker::client_options`).
fn options_from(o: crate::wire::worker::options::ClientOptions) -> Options {
    let get = |k: &str| {
        o.overrides
            .iter()
            .find(|(name, _)| name == k)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    let build = BuildOptions {
        max_silent_time: get("max-silent-time").unwrap_or(o.max_silent_time),
        build_timeout: get("timeout").unwrap_or(0),
        max_log_size: get("max-build-log-size").unwrap_or(0),
        nr_repeats: 0,
        enforce_determinism: false,
        keep_failed: o.keep_failed,
    };
    // A remote-store build (BuildPaths) substitutes as the client's
    // `use-substitutes` says; a hook's BuildDerivation overrides it.
    Options {
        build,
        substitute: o.use_substitutes,
        worker: Some(Arc::new(o)),
    }
}
