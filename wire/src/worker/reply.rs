//! Op results (what follows `STDERR_LAST`), typed per request; the table
//! is in [`super::request`].

use tokio::io::AsyncRead;

use super::super::path_info::ValidPathInfo;
use super::super::primitives::*;
use super::super::store_path::StorePath;
use super::super::{Limits, Result};
use super::WorkerVersion;
use super::codec::WorkerCodec;
use super::request::Request;
use super::store_ops::SubstitutableInfo;
use super::values::{
    QueryMissingReply, WorkerBuildResult, write_keyed_build_results, write_worker_path_info,
    write_worker_valid_path_info,
};

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
    /// QuerySubstitutablePathInfo: `u64 0` (none) or `u64 1` · the info.
    SubstitutableInfo(Option<SubstitutableInfo>),
    /// QuerySubstitutablePathInfos: `u64 n` · n × (path · info).
    SubstitutableInfos(Vec<(StorePath, SubstitutableInfo)>),
    /// CollectGarbage: paths deleted, bytes freed (then an obsolete `u64 0`).
    Gc {
        paths: Vec<String>,
        bytes_freed: u64,
    },
    /// FindRoots: (link, target) pairs.
    Roots(Vec<(String, StorePath)>),
}

impl Reply {
    /// Reads the result of `req` (after its `STDERR_LAST`): the same
    /// decoder as [`WorkerCodec::read_reply`].
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut R,
        req: &Request,
        version: WorkerVersion,
        limits: &Limits,
    ) -> Result<Reply> {
        WorkerCodec::new(version, *limits).read_reply(r, req).await
    }

    pub fn write(&self, buf: &mut Vec<u8>, version: WorkerVersion) {
        match self {
            Reply::None | Reply::Nar => {}
            Reply::Ack => put_u64(buf, 1),
            Reply::Bool(b) => put_bool(buf, *b),
            Reply::Paths(p) => put_paths(buf, p.iter()),
            Reply::Str(s) => put_str(buf, s),
            Reply::PathInfo(info) => {
                if version.has_found_flag() {
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
            Reply::SubstitutableInfo(None) => put_u64(buf, 0),
            Reply::SubstitutableInfo(Some(info)) => {
                put_u64(buf, 1);
                info.write(buf);
            }
            Reply::SubstitutableInfos(v) => {
                put_u64(buf, v.len() as u64);
                for (path, info) in v {
                    put_str(buf, path.as_str());
                    info.write(buf);
                }
            }
            Reply::Gc { paths, bytes_freed } => {
                put_strings(buf, paths);
                put_u64(buf, *bytes_freed);
                put_u64(buf, 0);
            }
            Reply::Roots(v) => {
                put_u64(buf, v.len() as u64);
                for (link, target) in v {
                    put_str(buf, link);
                    put_str(buf, target.as_str());
                }
            }
        }
    }
}
