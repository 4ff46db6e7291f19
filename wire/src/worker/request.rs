//! Worker requests: `u64 op` · body, one variant per op the relay serves.
//!
//! ```text
//!  1 IsValidPath            str path                                → u64 bool
//!  6 QueryReferrers         str path                                → set<path>
//!  7 AddToStore   [≥1.25]   str name · str camStr · set<path> refs · u64 repair
//!                           PAYLOAD framed dump (NAR or flat bytes) → ValidPathInfo
//!                 [<1.25]   LegacyAddToStore  PAYLOAD raw NAR       → str path
//!  9 BuildPaths             list<str derivedPath> · [≥1.15 u64 mode] → u64 1
//! 10 EnsurePath             str path                                → u64 1
//! 11 AddTempRoot            str path                                → u64 1
//! 12 AddIndirectRoot        str path (outside the store)            → u64 1
//! 19 SetOptions             ClientOptions                           → (nothing)
//! 26 QueryPathInfo          str path                → [≥1.17 u64 found] · UnkeyedValidPathInfo
//! 29 QueryPathFromHashPart  str hashPart                            → str path ("" none)
//! 31 QueryValidPaths        set<path> · [≥1.27 u64 substitute]      → set<path>
//! 32 QuerySubstitutablePaths set<path>                              → set<path>
//! 33 QueryValidDerivers     str path                                → set<path>
//! 36 BuildDerivation        str drvPath · BasicDerivation · u64 mode → BuildResult
//! 38 NarFromPath            str path                 → (after STDERR_LAST) raw NAR
//! 39 AddToStoreNar          ValidPathInfo (1.16 layout) · u64 repair · u64 dontCheckSigs
//!                           PAYLOAD NAR: [≥1.23] framed | [1.21–1.22] pulled by the
//!                           server with STDERR_READ, the client answering str chunks → (nothing)
//! 40 QueryMissing           list<str derivedPath>                   → QueryMissingReply
//! 41 QueryDerivationOutputMap str drvPath           → u64 n · n × (str name · str path/"")
//! 42 RegisterDrvOutput      DrvOutputRegistration                   → (nothing)
//! 43 QueryRealisation       str "sha256:<hex>!<out>" → list<str> ([<1.31] paths | [≥1.31] JSON)
//! 44 AddMultipleToStore     u64 repair · u64 dontCheckSigs
//!                           PAYLOAD framed: u64 n · n × (ValidPathInfo 1.16 · raw NAR) → (nothing)
//! 45 AddBuildLog            str drvPath (BASE NAME) PAYLOAD framed log bytes → u64 1
//! 46 BuildPathsWithResults  list<str derivedPath> · u64 mode        → KeyedBuildResults
//! 37 AddSignatures          str path · set<str> sigs                → u64 1
//! 47 AddPermRoot            str path · str gcRoot                   → str gcRoot
//! ```
//! Maintenance and obsolete ops (8, 13, 14, 18, 20–23, 28, 30, 34, 35):
//! [`super::store_ops`], as `Request::Store`.
//! Ops exist from: 41 ≥1.22, 42/43 ≥1.27, 44/45 ≥1.32, 46 ≥1.34, 47 ≥1.36.
//! DerivedPaths stay strings: `path`, `drv!out1,out2`, and from 1.30 `drv!*`.
//! [`Request::read`] never consumes a PAYLOAD; the caller streams it
//! (see [`super::framed`]).

use tokio::io::AsyncRead;

use super::super::build::BasicDerivation;
use super::super::path_info::ValidPathInfo;
use super::super::primitives::*;
use super::super::store_path::StorePath;
use super::super::{Error, Limits, Result};
use super::options::{ClientOptions, DrvOutputRegistration, LegacyAddToStore};
use super::store_ops::StoreOp;
use super::values::{PATH_INFO_LAYOUT, read_upload_path_info, write_worker_valid_path_info};
use super::{Op, WorkerVersion};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    IsValidPath {
        path: StorePath,
    },
    QueryReferrers {
        path: StorePath,
    },
    AddToStore {
        name: String,
        cam_str: String,
        refs: Vec<StorePath>,
        repair: bool,
    },
    AddToStoreLegacy(LegacyAddToStore),
    BuildPaths {
        paths: Vec<String>,
        mode: u64,
    },
    EnsurePath {
        path: StorePath,
    },
    AddTempRoot {
        path: StorePath,
    },
    AddIndirectRoot {
        path: String,
    },
    SetOptions(ClientOptions),
    QueryPathInfo {
        path: StorePath,
    },
    QueryPathFromHashPart {
        hash_part: String,
    },
    QueryValidPaths {
        paths: Vec<StorePath>,
        substitute: bool,
    },
    QuerySubstitutablePaths {
        paths: Vec<StorePath>,
    },
    QueryValidDerivers {
        path: StorePath,
    },
    BuildDerivation {
        drv_path: StorePath,
        drv: BasicDerivation,
        mode: u64,
    },
    NarFromPath {
        path: StorePath,
    },
    AddToStoreNar {
        info: ValidPathInfo,
        repair: bool,
        dont_check_sigs: bool,
    },
    QueryMissing {
        paths: Vec<String>,
    },
    QueryDerivationOutputMap {
        drv_path: StorePath,
    },
    RegisterDrvOutput(DrvOutputRegistration),
    QueryRealisation {
        id: String,
    },
    AddMultipleToStore {
        repair: bool,
        dont_check_sigs: bool,
    },
    /// The path travels as a base name.
    AddBuildLog {
        drv_path: StorePath,
    },
    BuildPathsWithResults {
        paths: Vec<String>,
        mode: u64,
    },
    AddPermRoot {
        path: StorePath,
        gc_root: String,
    },
    AddSignatures {
        path: StorePath,
        sigs: Vec<String>,
    },
    Store(StoreOp),
}

/// Minor version from which each op exists (all others: ≤ 1.21).
fn op_since(op: Op) -> u8 {
    match op {
        Op::QueryDerivationOutputMap => 22,
        Op::RegisterDrvOutput | Op::QueryRealisation => 27,
        Op::AddMultipleToStore | Op::AddBuildLog => 32,
        Op::BuildPathsWithResults => 34,
        Op::AddPermRoot => 36,
        _ => 0,
    }
}

async fn read_mode<R: AsyncRead + Unpin>(r: &mut R) -> Result<u64> {
    match read_u64(r, "buildMode").await? {
        m @ 0..=2 => Ok(m),
        value => Err(Error::BadValue {
            field: "buildMode",
            value,
        }),
    }
}

async fn read_derived<R: AsyncRead + Unpin>(r: &mut R, limits: &Limits) -> Result<Vec<String>> {
    read_strings(r, "derivedPaths", limits).await
}

impl Request {
    pub fn op(&self) -> Op {
        use Request as R;
        match self {
            R::IsValidPath { .. } => Op::IsValidPath,
            R::QueryReferrers { .. } => Op::QueryReferrers,
            R::AddToStore { .. } | R::AddToStoreLegacy(_) => Op::AddToStore,
            R::BuildPaths { .. } => Op::BuildPaths,
            R::EnsurePath { .. } => Op::EnsurePath,
            R::AddTempRoot { .. } => Op::AddTempRoot,
            R::AddIndirectRoot { .. } => Op::AddIndirectRoot,
            R::SetOptions(_) => Op::SetOptions,
            R::QueryPathInfo { .. } => Op::QueryPathInfo,
            R::QueryPathFromHashPart { .. } => Op::QueryPathFromHashPart,
            R::QueryValidPaths { .. } => Op::QueryValidPaths,
            R::QuerySubstitutablePaths { .. } => Op::QuerySubstitutablePaths,
            R::QueryValidDerivers { .. } => Op::QueryValidDerivers,
            R::BuildDerivation { .. } => Op::BuildDerivation,
            R::NarFromPath { .. } => Op::NarFromPath,
            R::AddToStoreNar { .. } => Op::AddToStoreNar,
            R::QueryMissing { .. } => Op::QueryMissing,
            R::QueryDerivationOutputMap { .. } => Op::QueryDerivationOutputMap,
            R::RegisterDrvOutput(_) => Op::RegisterDrvOutput,
            R::QueryRealisation { .. } => Op::QueryRealisation,
            R::AddMultipleToStore { .. } => Op::AddMultipleToStore,
            R::AddBuildLog { .. } => Op::AddBuildLog,
            R::BuildPathsWithResults { .. } => Op::BuildPathsWithResults,
            R::AddPermRoot { .. } => Op::AddPermRoot,
            R::AddSignatures { .. } => Op::AddSignatures,
            R::Store(s) => s.op(),
        }
    }

    /// Reads the next request; `Ok(None)` on a clean end of stream between
    /// requests. A payload that follows the request is left unread.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut R,
        version: WorkerVersion,
        limits: &Limits,
    ) -> Result<Option<Request>> {
        let Some(code) = read_u64_or_eof(r, "op").await? else {
            return Ok(None);
        };
        let op = Op::from_u64(code)
            .filter(|op| version.minor() >= op_since(*op))
            .ok_or(Error::UnknownCommand(code))?;
        Self::read_body(r, op, version, limits).await.map(Some)
    }

    async fn read_body<R: AsyncRead + Unpin>(
        r: &mut R,
        op: Op,
        version: WorkerVersion,
        limits: &Limits,
    ) -> Result<Request> {
        let minor = version.minor();
        if let Some(s) = StoreOp::read(r, op, version, limits).await? {
            return Ok(Request::Store(s));
        }
        Ok(match op {
            Op::AddToStore if minor >= 25 => Request::AddToStore {
                name: read_string(r, "name", Limits::MAX_PATH_BYTES).await?,
                cam_str: read_string(r, "camStr", 256).await?,
                refs: read_paths(r, "references", limits).await?,
                repair: read_bool(r, "repair").await?,
            },
            Op::AddToStore => Request::AddToStoreLegacy(LegacyAddToStore::read(r).await?),
            Op::BuildPaths => Request::BuildPaths {
                paths: read_derived(r, limits).await?,
                mode: if minor >= 15 { read_mode(r).await? } else { 0 },
            },
            Op::SetOptions => Request::SetOptions(ClientOptions::read(r, version, limits).await?),
            Op::QueryValidPaths => Request::QueryValidPaths {
                paths: read_paths(r, "paths", limits).await?,
                substitute: minor >= 27 && read_bool(r, "substitute").await?,
            },
            Op::BuildDerivation => Request::BuildDerivation {
                drv_path: read_path(r, "drvPath").await?,
                drv: BasicDerivation::read(r, limits).await?,
                mode: read_mode(r).await?,
            },
            Op::AddToStoreNar => Request::AddToStoreNar {
                info: read_upload_path_info(r, limits).await?,
                repair: read_bool(r, "repair").await?,
                dont_check_sigs: read_bool(r, "dontCheckSigs").await?,
            },
            Op::RegisterDrvOutput => {
                Request::RegisterDrvOutput(DrvOutputRegistration::read(r, version, limits).await?)
            }
            Op::AddMultipleToStore => Request::AddMultipleToStore {
                repair: read_bool(r, "repair").await?,
                dont_check_sigs: read_bool(r, "dontCheckSigs").await?,
            },
            Op::BuildPathsWithResults => Request::BuildPathsWithResults {
                paths: read_derived(r, limits).await?,
                mode: read_mode(r).await?,
            },
            Op::AddPermRoot => Request::AddPermRoot {
                path: read_path(r, "path").await?,
                gc_root: read_string(r, "gcRoot", Limits::MAX_PATH_BYTES).await?,
            },
            Op::AddSignatures => Request::AddSignatures {
                path: read_path(r, "path").await?,
                sigs: read_strings(r, "sigs", limits).await?,
            },
            _ => Self::read_simple(r, op, limits).await?,
        })
    }

    /// Ops whose body is one path, string or list.
    async fn read_simple<R: AsyncRead + Unpin>(
        r: &mut R,
        op: Op,
        limits: &Limits,
    ) -> Result<Request> {
        const MAX: usize = Limits::MAX_PATH_BYTES;
        Ok(match op {
            Op::IsValidPath => Request::IsValidPath {
                path: read_path(r, "path").await?,
            },
            Op::QueryReferrers => Request::QueryReferrers {
                path: read_path(r, "path").await?,
            },
            Op::EnsurePath => Request::EnsurePath {
                path: read_path(r, "path").await?,
            },
            Op::AddTempRoot => Request::AddTempRoot {
                path: read_path(r, "path").await?,
            },
            Op::AddIndirectRoot => Request::AddIndirectRoot {
                path: read_string(r, "path", MAX).await?,
            },
            Op::QueryPathInfo => Request::QueryPathInfo {
                path: read_path(r, "path").await?,
            },
            Op::QueryPathFromHashPart => Request::QueryPathFromHashPart {
                hash_part: read_string(r, "hashPart", MAX).await?,
            },
            Op::QuerySubstitutablePaths => Request::QuerySubstitutablePaths {
                paths: read_paths(r, "paths", limits).await?,
            },
            Op::QueryValidDerivers => Request::QueryValidDerivers {
                path: read_path(r, "path").await?,
            },
            Op::NarFromPath => Request::NarFromPath {
                path: read_path(r, "path").await?,
            },
            Op::QueryMissing => Request::QueryMissing {
                paths: read_derived(r, limits).await?,
            },
            Op::QueryDerivationOutputMap => Request::QueryDerivationOutputMap {
                drv_path: read_path(r, "drvPath").await?,
            },
            Op::QueryRealisation => Request::QueryRealisation {
                id: read_string(r, "drvOutputId", MAX).await?,
            },
            Op::AddBuildLog => Request::AddBuildLog {
                drv_path: StorePath::from_base_name(&read_string(r, "drvPath", MAX).await?)?,
            },
            other => return Err(Error::UnknownCommand(other as u64)),
        })
    }

    /// Encodes `u64 op` and the body for `version` (which must allow the
    /// op; AddToStore/AddToStoreLegacy and RegisterDrvOutput's forms are
    /// the caller's choice, as [`Request::read`] makes it).
    pub fn write(&self, buf: &mut Vec<u8>, version: WorkerVersion) {
        put_u64(buf, self.op() as u64);
        if !self.write_simple(buf) {
            self.write_body(buf, version);
        }
    }

    fn write_body(&self, buf: &mut Vec<u8>, version: WorkerVersion) {
        let minor = version.minor();
        match self {
            Request::AddToStore {
                name,
                cam_str,
                refs,
                repair,
            } => {
                put_str(buf, name);
                put_str(buf, cam_str);
                put_paths(buf, refs.iter());
                put_bool(buf, *repair);
            }
            Request::AddToStoreLegacy(a) => a.write(buf),
            Request::BuildPaths { paths, mode } => {
                put_strings(buf, paths);
                if minor >= 15 {
                    put_u64(buf, *mode);
                }
            }
            Request::SetOptions(o) => o.write(buf, version),
            Request::QueryValidPaths { paths, substitute } => {
                put_paths(buf, paths.iter());
                if minor >= 27 {
                    put_bool(buf, *substitute);
                }
            }
            Request::BuildDerivation {
                drv_path,
                drv,
                mode,
            } => {
                put_str(buf, drv_path.as_str());
                drv.write(buf);
                put_u64(buf, *mode);
            }
            Request::AddToStoreNar {
                info,
                repair,
                dont_check_sigs,
            } => {
                write_worker_valid_path_info(buf, info, PATH_INFO_LAYOUT);
                put_bool(buf, *repair);
                put_bool(buf, *dont_check_sigs);
            }
            Request::RegisterDrvOutput(reg) => reg.write(buf),
            Request::AddMultipleToStore {
                repair,
                dont_check_sigs,
            } => {
                put_bool(buf, *repair);
                put_bool(buf, *dont_check_sigs);
            }
            Request::BuildPathsWithResults { paths, mode } => {
                put_strings(buf, paths);
                put_u64(buf, *mode);
            }
            Request::AddPermRoot { path, gc_root } => {
                put_str(buf, path.as_str());
                put_str(buf, gc_root);
            }
            Request::AddSignatures { path, sigs } => {
                put_str(buf, path.as_str());
                put_strings(buf, sigs);
            }
            Request::Store(s) => s.write(buf, version),
            _ => unreachable!("simple requests are written by write_simple"),
        }
    }

    /// Writes the body of a one-field request; false for the others.
    fn write_simple(&self, buf: &mut Vec<u8>) -> bool {
        use Request as R;
        match self {
            R::IsValidPath { path }
            | R::QueryReferrers { path }
            | R::EnsurePath { path }
            | R::AddTempRoot { path }
            | R::QueryPathInfo { path }
            | R::QueryValidDerivers { path }
            | R::NarFromPath { path }
            | R::QueryDerivationOutputMap { drv_path: path } => put_str(buf, path.as_str()),
            R::AddIndirectRoot { path: s }
            | R::QueryPathFromHashPart { hash_part: s }
            | R::QueryRealisation { id: s } => put_str(buf, s),
            R::QuerySubstitutablePaths { paths } => put_paths(buf, paths.iter()),
            R::QueryMissing { paths } => put_strings(buf, paths),
            R::AddBuildLog { drv_path } => put_str(buf, drv_path.base_name()),
            _ => return false,
        }
        true
    }
}
