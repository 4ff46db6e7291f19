//! Store operations of a worker session: content-addressed additions
//! (AddToStore ≥ 1.25, AddTextToStore), reverse queries, GC roots, build
//! logs, and the maintenance ops, each answered or refused by name.
//!
//! * AddToStore / AddTextToStore: the relay computes the path from the
//!   payload (`wire::content_address`); a flat or text payload (a `.drv`)
//!   is read whole, up to the wire string limit, a NAR is streamed. Trust:
//!   `Store::commit_ca` (self-verifying, so public unless a reference is
//!   private). The repair flag is ignored: an entry is never rewritten.
//! * Roots: AddTempRoot and AddPermRoot (trusted clients, as Nix) pin the
//!   path against LRU eviction until the session ends — the relay has no
//!   file system of the client's to keep a permanent root in;
//!   AddIndirectRoot names a file on the client's machine: acknowledged,
//!   nothing pinned.
//! * CollectGarbage: the relay store is a cache kept under
//!   `[cache] max_size` by LRU eviction; deleting dead paths deletes
//!   nothing (said on the client's terminal), the other actions are refused.
//! * AddBuildLog (trusted clients, as Nix): kept with the relay's own logs
//!   (`store::logs`), public.

use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWrite, BufReader};

use super::{OpError, WorkerSession};
use crate::session::{ClientId, Core, CoreError, Error};
use crate::store::logs::LogTail;
use crate::store::{Scope, flat_nar};
use crate::wire::content_address::CaMethod;
use crate::wire::hash::Sha256Hash;
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;
use crate::wire::worker::LegacyAddToStore;
use crate::wire::worker::framed::FramedReader;
use crate::wire::worker::store_ops::{GC_DELETE_DEAD, GcRequest, StoreOp, SubstitutableInfo};
use crate::wire::worker::{Reply, StderrMsg};

type OpResult = Result<Result<(), OpError>, Error>;

/// Most roots one session holds.
const MAX_SESSION_ROOTS: usize = 1 << 16;

fn payload_err(e: std::io::Error) -> OpError {
    OpError::Core(crate::wire::Error::read("AddToStore payload", e).into())
}

impl<R, W> WorkerSession<R, W>
where
    R: AsyncBufRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// What an upstream has of `paths` the store lacks.
    async fn substitutable_infos(
        &self,
        paths: Vec<StorePath>,
    ) -> Result<Vec<(StorePath, SubstitutableInfo)>, Error> {
        let found = self.core.substitutable(&self.client, &paths).await?;
        let info = |f: &crate::upstream::Found| SubstitutableInfo {
            deriver: f.narinfo.deriver.clone(),
            references: f.narinfo.references.clone(),
            download_size: f.download_size(),
            nar_size: f.narinfo.nar_size,
        };
        Ok(found.into_iter().map(|(p, f)| (p, info(&f))).collect())
    }

    pub(super) async fn store_op(&mut self, op: StoreOp) -> OpResult {
        match op {
            StoreOp::AddTextToStore { name, text, refs } => {
                let added =
                    add_flat(&self.core, &self.client, &name, CaMethod::Text, text, refs).await;
                match added {
                    Ok(info) => self.ok(Reply::Str(info.path.as_str().into())).await,
                    Err(e) => Ok(Err(e)),
                }
            }
            StoreOp::SyncWithGc => self.ok(Reply::Ack).await,
            StoreOp::QueryDeriver { path } => match self.lookup(&path).await? {
                Some(info) => {
                    let d = info.deriver.map(|d| d.as_str().to_owned());
                    self.ok(Reply::Str(d.unwrap_or_default())).await
                }
                None => Ok(Err(OpError::NotValid(path))),
            },
            StoreOp::QueryAllValidPaths => {
                let paths = self.core.all_paths(&self.client).await?;
                self.ok(Reply::Paths(paths)).await
            }
            // What upstream has (`[cache] upstream`), as QuerySubstitutablePaths.
            StoreOp::QuerySubstitutablePathInfo { path } => {
                let mut found = self.substitutable_infos(vec![path]).await?;
                self.ok(Reply::SubstitutableInfo(found.pop().map(|(_, i)| i)))
                    .await
            }
            StoreOp::QuerySubstitutablePathInfos { paths } => {
                let paths = paths.into_iter().map(|(p, _)| p).collect();
                let found = self.substitutable_infos(paths).await?;
                self.ok(Reply::SubstitutableInfos(found)).await
            }
            StoreOp::CollectGarbage(gc) => self.collect_garbage(gc).await,
            other => Ok(Err(OpError::Unsupported(other.op()))),
        }
    }

    async fn collect_garbage(&mut self, gc: GcRequest) -> OpResult {
        if gc.action != GC_DELETE_DEAD {
            return Ok(Err(OpError::Gc(
                "it only collects dead paths (nix-store --gc), and deletes none itself",
            )));
        }
        if gc.ignore_liveness {
            return Ok(Err(OpError::Gc("you are not allowed to ignore liveness")));
        }
        let note = "nix-relay: its store is a cache kept under [cache] max_size by \
                    least-recently-used eviction; nothing deleted\n";
        let reply = Reply::Gc {
            paths: Vec::new(),
            bytes_freed: 0,
        };
        self.reply(&[StderrMsg::Next(note.into())], Some(reply))
            .await?;
        Ok(Ok(()))
    }

    /// AddToStore ≥ 1.25: `name`, `cam` and `refs` read; the framed
    /// payload follows and is consumed whatever happens.
    pub(super) async fn add_to_store_ca(
        &mut self,
        name: String,
        cam: String,
        refs: Vec<StorePath>,
    ) -> OpResult {
        let limits = self.core.limits().wire();
        let mut framed = BufReader::new(FramedReader::new(&mut self.r, &limits));
        let added = add_ca(&self.core, &self.client, &name, &cam, refs, &mut framed).await;
        let rest = framed.into_inner().drain().await?;
        match added {
            Ok(info) if rest == 0 => self.ok(Reply::AddedPath(info)).await,
            Ok(_) => Ok(Err(OpError::AfterPayload(rest))),
            Err(e) => Ok(Err(e)),
        }
    }

    pub(super) async fn query_referrers(&mut self, path: StorePath) -> OpResult {
        let v = self.core.referrers(&self.client, &path).await?;
        self.ok(Reply::Paths(v)).await
    }

    pub(super) async fn query_valid_derivers(&mut self, path: StorePath) -> OpResult {
        let v = self.core.valid_derivers(&self.client, &path).await?;
        self.ok(Reply::Paths(v)).await
    }

    pub(super) async fn path_from_hash_part(&mut self, hash_part: String) -> OpResult {
        let p = self
            .core
            .path_from_hash_part(&self.client, &hash_part)
            .await?;
        let p = p.map(|p| p.as_str().to_owned()).unwrap_or_default();
        self.ok(Reply::Str(p)).await
    }

    /// AddTempRoot, AddPermRoot: pins `path` until the session ends.
    pub(super) async fn add_root(&mut self, path: StorePath, reply: Reply) -> OpResult {
        if matches!(reply, Reply::Str(_)) && !self.client.trusted {
            return Ok(Err(OpError::NotTrusted("create permanent roots")));
        }
        if self.roots.len() >= MAX_SESSION_ROOTS {
            return Ok(Err(OpError::TooManyRoots(MAX_SESSION_ROOTS)));
        }
        self.roots.push(self.core.pin(&[path]));
        self.ok(reply).await
    }

    /// AddBuildLog: the framed log is read (its last `MAX_ONE_LOG` bytes
    /// kept) and stored, if the client is trusted.
    pub(super) async fn add_build_log(&mut self, drv: StorePath) -> OpResult {
        let limits = self.core.limits().wire();
        let mut framed = FramedReader::new(&mut self.r, &limits);
        let mut tail = LogTail::default();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = framed
                .read(&mut buf)
                .await
                .map_err(|e| Error::from(crate::wire::Error::read("AddBuildLog payload", e)))?;
            if n == 0 {
                break;
            }
            if self.client.trusted {
                tail.push(&buf[..n]);
            }
        }
        if !self.client.trusted {
            return Ok(Err(OpError::NotTrusted("add build logs")));
        }
        let log = tail.finish();
        (self.core)
            .put_build_log(&drv, &log, &Scope::Public)
            .await?;
        self.ok(Reply::Ack).await
    }
}

/// AddToStore < 1.25 (Nix 2.3): a raw NAR follows, consumed here whatever
/// happens. NAR-hashed sha256 adds (`nix-store --add`, `builtins.path`) are
/// stored; a flat one is refused by name.
pub(super) async fn add_legacy<B: AsyncBufRead + Unpin>(
    core: &Core,
    client: &ClientId,
    a: &LegacyAddToStore,
    r: &mut B,
) -> Result<Result<StorePath, OpError>, Error> {
    let named = placeholder(&a.base_name);
    let errors_as = match &named {
        Ok(p) => p.clone(),
        Err(_) => placeholder("upload").map_err(|e| Error::Refused(e.to_string()))?,
    };
    // A NAR that does not parse leaves the stream out of step: fatal.
    let mut writer = core.receive(r, &errors_as).await?;
    let nar = writer.summary(&errors_as).await.map_err(CoreError::from)?;
    if let Err(e) = named {
        return Ok(Err(e));
    }
    if a.fixed && !(a.recursive && a.hash_algo == "sha256") {
        return Ok(Err(OpError::LegacyFlat));
    }
    let method = CaMethod::Recursive;
    let path = match method.store_path(&a.base_name, &nar.sha256, &[]) {
        Ok(p) => p,
        Err(e) => return Ok(Err(OpError::Ca(e))),
    };
    let info = ca_info(path, method, nar.sha256, nar, Vec::new());
    Ok(commit(core, client, writer, info).await.map(|i| i.path))
}

/// The framed payload of AddToStore into the store under its computed path.
async fn add_ca<B: AsyncBufRead + Unpin>(
    core: &Core,
    client: &ClientId,
    name: &str,
    cam: &str,
    refs: Vec<StorePath>,
    r: &mut B,
) -> Result<ValidPathInfo, OpError> {
    let method = CaMethod::parse(cam).map_err(OpError::Ca)?;
    if !method.takes_nar() {
        let max = core.limits().wire().max_string_bytes;
        let mut text = Vec::new();
        (&mut *r)
            .take(max as u64 + 1)
            .read_to_end(&mut text)
            .await
            .map_err(payload_err)?;
        if text.len() > max {
            return Err(OpError::FlatTooLarge(max));
        }
        return add_flat(core, client, name, method, text, refs).await;
    }
    let placeholder = placeholder(name)?;
    let mut writer = core.receive(r, &placeholder).await?;
    let nar = writer
        .summary(&placeholder)
        .await
        .map_err(CoreError::from)?;
    let path = method
        .store_path(name, &nar.sha256, &refs)
        .map_err(OpError::Ca)?;
    let info = ca_info(path, method, nar.sha256, nar, refs);
    commit(core, client, writer, info).await
}

/// A flat (or text) payload as the single-file NAR Nix stores for it.
async fn add_flat(
    core: &Core,
    client: &ClientId,
    name: &str,
    method: CaMethod,
    text: Vec<u8>,
    refs: Vec<StorePath>,
) -> Result<ValidPathInfo, OpError> {
    let hash = Sha256Hash::digest(&text);
    let path = method.store_path(name, &hash, &refs).map_err(OpError::Ca)?;
    let nar_bytes = flat_nar(text);
    let mut writer = core.receive(&mut &nar_bytes[..], &path).await?;
    let nar = writer.summary(&path).await.map_err(CoreError::from)?;
    let info = ca_info(path, method, hash, nar, refs);
    commit(core, client, writer, info).await
}

/// A path to name the payload by in errors before its real one is known
/// (also checks `name` as a store path name).
fn placeholder(name: &str) -> Result<StorePath, OpError> {
    StorePath::from_base_name(&format!("{}-{name}", "0".repeat(32))).map_err(OpError::Ca)
}

fn ca_info(
    path: StorePath,
    method: CaMethod,
    hash: Sha256Hash,
    nar: crate::wire::nar::NarSummary,
    refs: Vec<StorePath>,
) -> ValidPathInfo {
    ValidPathInfo {
        path,
        deriver: None,
        nar_hash: nar.sha256,
        references: refs.into_iter().collect(),
        registration_time: 0,
        nar_size: nar.size,
        ultimate: false,
        sigs: Vec::new(),
        ca: Some(method.render(&hash)),
    }
}

async fn commit(
    core: &Core,
    client: &ClientId,
    writer: crate::store::NarWriter,
    info: ValidPathInfo,
) -> Result<ValidPathInfo, OpError> {
    Ok(core.commit_ca(client, writer, info).await?)
}
