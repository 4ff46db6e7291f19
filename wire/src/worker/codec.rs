//! [`WorkerCodec`]: the negotiated worker version and the bounds on what a
//! peer may send, with every encode and decode a session or a backend
//! client needs. The version gates live here and in the message types,
//! each once; callers ask the codec ([`WorkerCodec::nar_upload`],
//! [`WorkerVersion::has_found_flag`]) instead of comparing minors.

use tokio::io::AsyncRead;

use super::super::path_info::ValidPathInfo;
use super::super::primitives::*;
use super::super::store_path::StorePath;
use super::super::{Error, Limits, Result};
use super::reply::Reply;
use super::request::Request;
use super::stderr::StderrMsg;
use super::store_ops::{StoreOp, SubstitutableInfo};
use super::values::{
    QueryMissingReply, WorkerBuildResult, read_keyed_build_results, read_upload_path_info,
    read_worker_path_info, read_worker_valid_path_info,
};
use super::{Op, WorkerVersion};

/// How AddToStoreNar's NAR travels after the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarUpload {
    /// ≥ 1.23: framed (`(u64 len · bytes)* · u64 0`).
    Framed,
    /// 1.21 – 1.22: the server pulls it with `STDERR_READ`, the client
    /// answering each with a chunk.
    Pulled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerCodec {
    pub version: WorkerVersion,
    pub limits: Limits,
}

impl WorkerCodec {
    pub fn new(version: WorkerVersion, limits: Limits) -> Self {
        WorkerCodec { version, limits }
    }

    pub fn nar_upload(&self) -> NarUpload {
        if self.version.frames_nar_upload() {
            NarUpload::Framed
        } else {
            NarUpload::Pulled
        }
    }

    /// The next request; `Ok(None)` on a clean end of stream between
    /// requests. A payload that follows is left unread.
    pub async fn read_request<R: AsyncRead + Unpin>(&self, r: &mut R) -> Result<Option<Request>> {
        Request::read(r, self.version, &self.limits).await
    }

    pub fn encode_request(&self, req: &Request) -> Vec<u8> {
        let mut buf = Vec::new();
        req.write(&mut buf, self.version);
        buf
    }

    /// `msgs`, then (with a reply) `STDERR_LAST` and the reply.
    pub fn encode_reply(&self, msgs: &[StderrMsg], reply: Option<&Reply>) -> Vec<u8> {
        let mut buf = Vec::new();
        for m in msgs {
            m.write(&mut buf, self.version);
        }
        if let Some(r) = reply {
            StderrMsg::Last.write(&mut buf, self.version);
            r.write(&mut buf, self.version);
        }
        buf
    }

    pub async fn read_stderr<R: AsyncRead + Unpin>(&self, r: &mut R) -> Result<StderrMsg> {
        StderrMsg::read(r, self.version, &self.limits).await
    }

    /// A backend's STDERR message, log text capped
    /// ([`StderrMsg::read_log_capped`]); also the bytes dropped.
    pub async fn read_stderr_log_capped<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
    ) -> Result<(StderrMsg, u64)> {
        StderrMsg::read_log_capped(r, self.version, &self.limits).await
    }

    /// The result of `req` (after its `STDERR_LAST`).
    pub async fn read_reply<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
        req: &Request,
    ) -> Result<Reply> {
        let (version, limits) = (self.version, &self.limits);
        const MAX: usize = Limits::MAX_PATH_BYTES;
        Ok(match req {
            Request::AddToStore { .. } => {
                Reply::AddedPath(read_worker_valid_path_info(r, version, limits).await?)
            }
            Request::AddToStoreLegacy(_)
            | Request::QueryPathFromHashPart { .. }
            | Request::AddPermRoot { .. } => Reply::Str(read_string(r, "path", MAX).await?),
            Request::IsValidPath { .. } => Reply::Bool(read_bool(r, "valid").await?),
            Request::QueryPathInfo { path } => {
                Reply::PathInfo(self.read_path_info(r, path.clone()).await?)
            }
            Request::BuildDerivation { .. } => Reply::Build(self.read_build_result(r).await?),
            Request::BuildPathsWithResults { .. } => {
                Reply::BuildResults(read_keyed_build_results(r, version, limits).await?)
            }
            Request::QueryMissing { .. } => {
                Reply::Missing(QueryMissingReply::read(r, limits).await?)
            }
            Request::QueryDerivationOutputMap { .. } => self.read_output_map(r).await?,
            Request::QueryRealisation { .. } => {
                Reply::Strings(read_strings(r, "realisations", limits).await?)
            }
            Request::NarFromPath { .. } => Reply::Nar,
            Request::Store(s) => self.read_store_reply(r, s).await?,
            other => self.read_plain(r, other.op()).await?,
        })
    }

    async fn read_plain<R: AsyncRead + Unpin>(&self, r: &mut R, op: Op) -> Result<Reply> {
        Ok(match op {
            Op::SetOptions | Op::AddToStoreNar | Op::AddMultipleToStore | Op::RegisterDrvOutput => {
                Reply::None
            }
            Op::QueryValidPaths
            | Op::QuerySubstitutablePaths
            | Op::QueryReferrers
            | Op::QueryValidDerivers => Reply::Paths(self.read_paths(r).await?),
            _ => match read_u64(r, "ack").await? {
                1 => Reply::Ack,
                value => {
                    return Err(Error::BadValue {
                        field: "ack",
                        value,
                    });
                }
            },
        })
    }

    /// The results of [`StoreOp`]s. A substitutable path info is read only
    /// as "none" (the relay never sends one).
    async fn read_store_reply<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
        op: &StoreOp,
    ) -> Result<Reply> {
        const MAX: usize = Limits::MAX_PATH_BYTES;
        Ok(match op {
            StoreOp::AddTextToStore { .. } | StoreOp::QueryDeriver { .. } => {
                Reply::Str(read_string(r, "path", MAX).await?)
            }
            StoreOp::QueryDerivationOutputs { .. } | StoreOp::QueryAllValidPaths => {
                Reply::Paths(self.read_paths(r).await?)
            }
            StoreOp::QueryDerivationOutputNames { .. } => {
                Reply::Strings(read_strings(r, "outputs", &self.limits).await?)
            }
            StoreOp::VerifyStore { .. } => Reply::Bool(read_bool(r, "errors").await?),
            StoreOp::QuerySubstitutablePathInfo { .. } => {
                Reply::SubstitutableInfo(match read_u64(r, "substitutable").await? {
                    0 => None,
                    1 => Some(SubstitutableInfo::read(r, &self.limits).await?),
                    value => {
                        let field = "substitutable";
                        return Err(Error::BadValue { field, value });
                    }
                })
            }
            StoreOp::QuerySubstitutablePathInfos { .. } => {
                let n = read_len(r, "substitutable infos", self.limits.max_collection_len).await?;
                let mut v = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let path = read_path(r, "substitutable path").await?;
                    v.push((path, SubstitutableInfo::read(r, &self.limits).await?));
                }
                Reply::SubstitutableInfos(v)
            }
            StoreOp::CollectGarbage(_) => {
                let paths = read_strings(r, "deleted paths", &self.limits).await?;
                let bytes_freed = read_u64(r, "bytesFreed").await?;
                read_u64(r, "obsolete").await?;
                Reply::Gc { paths, bytes_freed }
            }
            StoreOp::FindRoots => {
                let n = read_len(r, "roots", self.limits.max_collection_len).await?;
                let mut v = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let link = read_string(r, "root link", MAX).await?;
                    v.push((link, read_path(r, "root target").await?));
                }
                Reply::Roots(v)
            }
            StoreOp::SyncWithGc | StoreOp::OptimiseStore => self.read_plain(r, op.op()).await?,
        })
    }

    /// QueryValidPaths (and the other path-set replies).
    pub async fn read_paths<R: AsyncRead + Unpin>(&self, r: &mut R) -> Result<Vec<StorePath>> {
        read_paths(r, "paths", &self.limits).await
    }

    /// QueryPathInfo: `None` when the path is not valid (a found flag from
    /// 1.17; before, the server answers with an error instead).
    pub async fn read_path_info<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
        path: StorePath,
    ) -> Result<Option<ValidPathInfo>> {
        if self.version.has_found_flag() && !read_bool(r, "found").await? {
            return Ok(None);
        }
        read_worker_path_info(r, path, self.version, &self.limits)
            .await
            .map(Some)
    }

    /// BuildDerivation.
    pub async fn read_build_result<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
    ) -> Result<WorkerBuildResult> {
        WorkerBuildResult::read(r, self.version, &self.limits).await
    }

    async fn read_output_map<R: AsyncRead + Unpin>(&self, r: &mut R) -> Result<Reply> {
        let n = read_len(r, "output map", self.limits.max_collection_len).await?;
        let mut v = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let name = read_string(r, "output name", Limits::MAX_PATH_BYTES).await?;
            v.push((name, read_opt_path(r, "output path").await?));
        }
        Ok(Reply::OutputMap(v))
    }

    /// The start of AddMultipleToStore's framed content: the path count,
    /// bounded by `max_collection_len`; each path then follows as
    /// [`WorkerCodec::read_upload_path_info`] and its NAR.
    pub async fn read_add_multiple_count<R: AsyncRead + Unpin>(&self, r: &mut R) -> Result<u64> {
        const FIELD: &str = "AddMultipleToStore count";
        let n = read_u64(r, FIELD).await?;
        let max = self.limits.max_collection_len as u64;
        if n > max {
            return Err(Error::TooLong {
                field: FIELD,
                len: n,
                max,
            });
        }
        Ok(n)
    }

    /// The info announcing an uploaded NAR (AddToStoreNar's request,
    /// AddMultipleToStore's entries).
    pub async fn read_upload_path_info<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
    ) -> Result<ValidPathInfo> {
        read_upload_path_info(r, &self.limits).await
    }
}
