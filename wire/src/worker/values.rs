//! Worker encodings of shared values.
//!
//! ```text
//! UnkeyedValidPathInfo = str deriver ("" none) · str narHash (hex, no prefix; any spelling read)
//!                        · set<path> references · u64 registrationTime · u64 narSize
//!                        · [V ≥ 1.16 u64 ultimate · set<str> sigs · str ca ("" none)]
//! ValidPathInfo        = str path · UnkeyedValidPathInfo   (AddMultipleToStore, AddToStoreNar: always 1.16 layout)
//! BuildResult          = u64 status · str errorMsg
//!                        · [V ≥ 1.29 u64 timesBuilt · u64 isNonDeterministic · u64 startTime · u64 stopTime]
//!                        · [V ≥ 1.37 cpuUser · cpuSystem   (each u64 0 | u64 1 · u64 µs, signed)]
//!                        · [V ≥ 1.28 u64 n · n × (str "sha256:<hex>!<out>" · str realisationJson)]
//! KeyedBuildResults    = u64 n · n × (str derivedPath · BuildResult)      (BuildPathsWithResults)
//! QueryMissing reply   = set<path> willBuild · set<path> willSubstitute · set<path> unknown
//!                        · u64 downloadSize · u64 narSize
//! ```

use tokio::io::AsyncRead;

use super::super::build::{BuildResult, BuildStatus};
use super::super::hash::Sha256Hash;
use super::super::path_info::ValidPathInfo;
use super::super::primitives::*;
use super::super::store_path::StorePath;
use super::super::{Error, Limits, Result};
use super::WorkerVersion;

/// The layout AddMultipleToStore and AddToStoreNar always use.
pub const PATH_INFO_LAYOUT: WorkerVersion = WorkerVersion::new(1, 16);

/// UnkeyedValidPathInfo of `path` (QueryPathInfo reply).
pub async fn read_worker_path_info<R: AsyncRead + Unpin>(
    r: &mut R,
    path: StorePath,
    version: WorkerVersion,
    limits: &Limits,
) -> Result<ValidPathInfo> {
    let deriver = read_opt_path(r, "deriver").await?;
    let nar_hash = Sha256Hash::parse_any(&read_string(r, "narHash", 256).await?)?;
    let mut info = ValidPathInfo {
        path,
        deriver,
        nar_hash,
        references: read_path_set(r, "references", limits).await?,
        registration_time: read_u64(r, "registrationTime").await?,
        nar_size: read_u64(r, "narSize").await?,
        ultimate: false,
        sigs: Vec::new(),
        ca: None,
    };
    if version.minor() >= 16 {
        info.ultimate = read_bool(r, "ultimate").await?;
        info.sigs = read_strings(r, "sigs", limits).await?;
        info.ca = read_opt_string(r, "ca").await?;
    }
    Ok(info)
}

pub fn write_worker_path_info(buf: &mut Vec<u8>, info: &ValidPathInfo, version: WorkerVersion) {
    put_opt_path(buf, info.deriver.as_ref());
    put_str(buf, &info.nar_hash.to_hex());
    put_paths(buf, info.references.iter());
    put_u64(buf, info.registration_time);
    put_u64(buf, info.nar_size);
    if version.minor() >= 16 {
        put_bool(buf, info.ultimate);
        put_strings(buf, &info.sigs);
        put_str(buf, info.ca.as_deref().unwrap_or(""));
    }
}

/// ValidPathInfo: the path, then the unkeyed info.
pub async fn read_worker_valid_path_info<R: AsyncRead + Unpin>(
    r: &mut R,
    version: WorkerVersion,
    limits: &Limits,
) -> Result<ValidPathInfo> {
    let path = read_path(r, "path").await?;
    read_worker_path_info(r, path, version, limits).await
}

pub fn write_worker_valid_path_info(
    buf: &mut Vec<u8>,
    info: &ValidPathInfo,
    version: WorkerVersion,
) {
    put_str(buf, info.path.as_str());
    write_worker_path_info(buf, info, version);
}

/// A ValidPathInfo announcing a NAR the receiver will take (AddToStoreNar,
/// AddMultipleToStore entries): the 1.16 layout, which is byte for byte the
/// serve AddToStoreNar header, with narSize 1..=max_nar_bytes.
pub async fn read_upload_path_info<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &Limits,
) -> Result<ValidPathInfo> {
    ValidPathInfo::read_add_header(r, limits).await
}

/// A worker BuildResult: the shared [`BuildResult`] plus the CPU times of
/// 1.37 (µs, signed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerBuildResult {
    pub base: BuildResult,
    pub cpu_user: Option<i64>,
    pub cpu_system: Option<i64>,
}

impl From<BuildResult> for WorkerBuildResult {
    fn from(base: BuildResult) -> Self {
        WorkerBuildResult {
            base,
            cpu_user: None,
            cpu_system: None,
        }
    }
}

async fn read_opt_micros<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
) -> Result<Option<i64>> {
    match read_u64(r, field).await? {
        0 => Ok(None),
        // Two's complement: the cast is the wire's reinterpretation.
        1 => Ok(Some(read_u64(r, field).await? as i64)),
        value => Err(Error::BadValue { field, value }),
    }
}

fn put_opt_micros(buf: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => put_u64(buf, 0),
        Some(us) => {
            put_u64(buf, 1);
            put_u64(buf, us as u64);
        }
    }
}

impl WorkerBuildResult {
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut R,
        version: WorkerVersion,
        limits: &Limits,
    ) -> Result<Self> {
        let minor = version.minor();
        let raw = read_u64(r, "build status").await?;
        let status = BuildStatus::from_u64(raw).ok_or(Error::BadValue {
            field: "build status",
            value: raw,
        })?;
        let msg = read_bytes(r, "errorMsg", limits.max_string_bytes).await?;
        let mut res = WorkerBuildResult::from(BuildResult::failure(status, msg));
        let b = &mut res.base;
        if minor >= 29 {
            b.times_built = read_u64(r, "timesBuilt").await?;
            b.is_non_deterministic = read_bool(r, "isNonDeterministic").await?;
            b.start_time = read_u64(r, "startTime").await?;
            b.stop_time = read_u64(r, "stopTime").await?;
        }
        if minor >= 37 {
            res.cpu_user = read_opt_micros(r, "cpuUser").await?;
            res.cpu_system = read_opt_micros(r, "cpuSystem").await?;
        }
        if minor >= 28 {
            let n = read_len(r, "builtOutputs", limits.max_collection_len).await?;
            for _ in 0..n {
                let id = read_string(r, "drvOutputId", Limits::MAX_PATH_BYTES).await?;
                let json = read_string(r, "realisation", limits.max_string_bytes).await?;
                res.base.built_outputs.push((id, json));
            }
        }
        Ok(res)
    }

    pub fn write(&self, buf: &mut Vec<u8>, version: WorkerVersion) {
        let minor = version.minor();
        let b = &self.base;
        put_u64(buf, b.status as u64);
        put_bytes(buf, &b.error_msg);
        if minor >= 29 {
            put_u64(buf, b.times_built);
            put_bool(buf, b.is_non_deterministic);
            put_u64(buf, b.start_time);
            put_u64(buf, b.stop_time);
        }
        if minor >= 37 {
            put_opt_micros(buf, self.cpu_user);
            put_opt_micros(buf, self.cpu_system);
        }
        if minor >= 28 {
            put_u64(buf, b.built_outputs.len() as u64);
            for (id, json) in &b.built_outputs {
                put_str(buf, id);
                put_str(buf, json);
            }
        }
    }
}

/// BuildPathsWithResults reply: one result per requested DerivedPath.
pub async fn read_keyed_build_results<R: AsyncRead + Unpin>(
    r: &mut R,
    version: WorkerVersion,
    limits: &Limits,
) -> Result<Vec<(String, WorkerBuildResult)>> {
    let n = read_len(r, "build results", limits.max_collection_len).await?;
    let mut v = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let path = read_string(r, "derivedPath", limits.max_string_bytes).await?;
        v.push((path, WorkerBuildResult::read(r, version, limits).await?));
    }
    Ok(v)
}

pub fn write_keyed_build_results(
    buf: &mut Vec<u8>,
    results: &[(String, WorkerBuildResult)],
    version: WorkerVersion,
) {
    put_u64(buf, results.len() as u64);
    for (path, res) in results {
        put_str(buf, path);
        res.write(buf, version);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryMissingReply {
    pub will_build: Vec<StorePath>,
    pub will_substitute: Vec<StorePath>,
    pub unknown: Vec<StorePath>,
    pub download_size: u64,
    pub nar_size: u64,
}

impl QueryMissingReply {
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R, limits: &Limits) -> Result<Self> {
        Ok(QueryMissingReply {
            will_build: read_paths(r, "willBuild", limits).await?,
            will_substitute: read_paths(r, "willSubstitute", limits).await?,
            unknown: read_paths(r, "unknown", limits).await?,
            download_size: read_u64(r, "downloadSize").await?,
            nar_size: read_u64(r, "narSize").await?,
        })
    }

    pub fn write(&self, buf: &mut Vec<u8>) {
        put_paths(buf, self.will_build.iter());
        put_paths(buf, self.will_substitute.iter());
        put_paths(buf, self.unknown.iter());
        put_u64(buf, self.download_size);
        put_u64(buf, self.nar_size);
    }
}

pub use super::reply::Reply;
