//! Op results (what follows `STDERR_LAST`), typed per request; the table
//! is in [`super::request`].

use tokio::io::AsyncRead;

use super::super::path_info::ValidPathInfo;
use super::super::primitives::*;
use super::super::store_path::StorePath;
use super::super::{Error, Limits, Result};
use super::request::Request;
use super::values::{
    QueryMissingReply, WorkerBuildResult, read_keyed_build_results, read_worker_path_info,
    read_worker_valid_path_info, write_keyed_build_results, write_worker_path_info,
    write_worker_valid_path_info,
};
use super::{Op, WorkerVersion};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// SetOptions, AddToStoreNar, AddMultipleToStore, RegisterDrvOutput.
    None,
    /// `u64 1`: BuildPaths, EnsurePath, AddTempRoot, AddIndirectRoot, AddBuildLog.
    Ack,
    /// IsValidPath.
    Bool(bool),
    /// QueryValidPaths, QuerySubstitutablePaths, QueryReferrers, QueryValidDerivers.
    Paths(Vec<StorePath>),
    /// QueryPathFromHashPart ("" = none), AddPermRoot, AddToStore < 1.25.
    Str(String),
    /// QueryPathInfo (`None`: not valid; only expressible at V ≥ 1.17).
    PathInfo(Option<ValidPathInfo>),
    /// AddToStore ≥ 1.25.
    AddedPath(ValidPathInfo),
    Build(WorkerBuildResult),
    BuildResults(Vec<(String, WorkerBuildResult)>),
    Missing(QueryMissingReply),
    /// QueryDerivationOutputMap: output name → path ("" on the wire = unknown).
    OutputMap(Vec<(String, Option<StorePath>)>),
    /// QueryRealisation: store paths (< 1.31) or Realisation JSON (≥ 1.31).
    Strings(Vec<String>),
    /// NarFromPath: a raw NAR follows, left unread.
    Nar,
}

async fn read_ack<R: AsyncRead + Unpin>(r: &mut R) -> Result<Reply> {
    match read_u64(r, "ack").await? {
        1 => Ok(Reply::Ack),
        value => Err(Error::BadValue {
            field: "ack",
            value,
        }),
    }
}

async fn read_output_map<R: AsyncRead + Unpin>(r: &mut R, limits: &Limits) -> Result<Reply> {
    let n = read_len(r, "output map", limits.max_collection_len).await?;
    let mut v = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let name = read_string(r, "output name", Limits::MAX_PATH_BYTES).await?;
        v.push((name, read_opt_path(r, "output path").await?));
    }
    Ok(Reply::OutputMap(v))
}

async fn read_path_info<R: AsyncRead + Unpin>(
    r: &mut R,
    path: &StorePath,
    version: WorkerVersion,
    limits: &Limits,
) -> Result<Reply> {
    if version.minor() >= 17 && !read_bool(r, "found").await? {
        return Ok(Reply::PathInfo(None));
    }
    let info = read_worker_path_info(r, path.clone(), version, limits).await?;
    Ok(Reply::PathInfo(Some(info)))
}

impl Reply {
    /// Reads the result of `req` (after its `STDERR_LAST`).
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut R,
        req: &Request,
        version: WorkerVersion,
        limits: &Limits,
    ) -> Result<Reply> {
        const MAX: usize = Limits::MAX_PATH_BYTES;
        Ok(match req {
            Request::AddToStore { .. } => {
                Reply::AddedPath(read_worker_valid_path_info(r, version, limits).await?)
            }
            Request::AddToStoreLegacy(_)
            | Request::QueryPathFromHashPart { .. }
            | Request::AddPermRoot { .. } => Reply::Str(read_string(r, "path", MAX).await?),
            Request::IsValidPath { .. } => Reply::Bool(read_bool(r, "valid").await?),
            Request::QueryPathInfo { path } => read_path_info(r, path, version, limits).await?,
            Request::BuildDerivation { .. } => {
                Reply::Build(WorkerBuildResult::read(r, version, limits).await?)
            }
            Request::BuildPathsWithResults { .. } => {
                Reply::BuildResults(read_keyed_build_results(r, version, limits).await?)
            }
            Request::QueryMissing { .. } => {
                Reply::Missing(QueryMissingReply::read(r, limits).await?)
            }
            Request::QueryDerivationOutputMap { .. } => read_output_map(r, limits).await?,
            Request::QueryRealisation { .. } => {
                Reply::Strings(read_strings(r, "realisations", limits).await?)
            }
            Request::NarFromPath { .. } => Reply::Nar,
            other => Self::read_plain(r, other.op(), limits).await?,
        })
    }

    async fn read_plain<R: AsyncRead + Unpin>(r: &mut R, op: Op, limits: &Limits) -> Result<Reply> {
        Ok(match op {
            Op::SetOptions | Op::AddToStoreNar | Op::AddMultipleToStore | Op::RegisterDrvOutput => {
                Reply::None
            }
            Op::QueryValidPaths
            | Op::QuerySubstitutablePaths
            | Op::QueryReferrers
            | Op::QueryValidDerivers => Reply::Paths(read_paths(r, "paths", limits).await?),
            _ => read_ack(r).await?,
        })
    }

    pub fn write(&self, buf: &mut Vec<u8>, version: WorkerVersion) {
        match self {
            Reply::None | Reply::Nar => {}
            Reply::Ack => put_u64(buf, 1),
            Reply::Bool(b) => put_bool(buf, *b),
            Reply::Paths(p) => put_paths(buf, p.iter()),
            Reply::Str(s) => put_str(buf, s),
            Reply::PathInfo(info) => {
                if version.minor() >= 17 {
                    put_bool(buf, info.is_some());
                }
                if let Some(info) = info {
                    write_worker_path_info(buf, info, version);
                }
            }
            Reply::AddedPath(info) => write_worker_valid_path_info(buf, info, version),
            Reply::Build(res) => res.write(buf, version),
            Reply::BuildResults(v) => write_keyed_build_results(buf, v, version),
            Reply::Missing(m) => m.write(buf),
            Reply::OutputMap(m) => {
                put_u64(buf, m.len() as u64);
                for (name, path) in m {
                    put_str(buf, name);
                    put_opt_path(buf, path.as_ref());
                }
            }
            Reply::Strings(v) => put_strings(buf, v),
        }
    }
}
