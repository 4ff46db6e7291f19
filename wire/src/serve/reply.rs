//! Serve replies (server → client), typed per request, and [`ServeCodec`]:
//! the negotiated version and limits, so a session or a backend client
//! encodes and decodes with one value and never spells a version gate.
//!
//! ```text
//!   QueryValidPaths, QueryClosure   set<path>
//!   QueryPathInfos                  (str path · record)* · str ""   (path_info.rs)
//!   ImportPaths, AddToStoreNar      u64 1
//!   BuildPaths                      u64 0 | u64 status · str errorMsg
//!   BuildDerivation                 BuildResult (build.rs, gated on the minor)
//!   DumpStorePath, ExportPaths      a raw stream, not a message
//! ```

use tokio::io::AsyncRead;

use super::super::build::{BuildResult, BuildStatus};
use super::super::path_info::ValidPathInfo;
use super::super::primitives::*;
use super::super::store_path::StorePath;
use super::super::{Error, Limits, Result};
use super::{Command, Request, ServeVersion};

/// One reply, as the relay's serve session sends it and its backend client
/// reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// QueryValidPaths, QueryClosure.
    Paths(Vec<StorePath>),
    /// QueryPathInfos: one record per known path.
    PathInfos(Vec<ValidPathInfo>),
    /// ImportPaths, AddToStoreNar.
    Ack,
    /// BuildPaths: `None` when every path is valid, else the failure.
    BuildPaths(Option<BuildResult>),
    /// BuildDerivation.
    Build(BuildResult),
    /// DumpStorePath, ExportPaths: the caller streams what follows.
    Stream,
}

/// The negotiated serve version and the bounds on what a peer may send:
/// every encode and decode of a session or a backend client goes through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeCodec {
    pub version: ServeVersion,
    pub limits: Limits,
}

impl ServeCodec {
    pub fn new(version: ServeVersion, limits: Limits) -> Self {
        ServeCodec { version, limits }
    }

    /// The next request; `Ok(None)` on a clean end of stream.
    pub async fn read_request<R: AsyncRead + Unpin>(&self, r: &mut R) -> Result<Option<Request>> {
        Request::read(r, self.version, &self.limits).await
    }

    pub fn encode_request(&self, req: &Request) -> Vec<u8> {
        let mut buf = Vec::new();
        req.write(&mut buf, self.version);
        buf
    }

    pub fn encode_reply(&self, reply: &Reply) -> Vec<u8> {
        let mut buf = Vec::new();
        reply.write(&mut buf, self.version);
        buf
    }

    /// The reply to a request of kind `cmd`.
    pub async fn read_reply<R: AsyncRead + Unpin>(&self, r: &mut R, cmd: Command) -> Result<Reply> {
        Ok(match cmd {
            Command::QueryValidPaths | Command::QueryClosure => {
                Reply::Paths(self.read_paths(r).await?)
            }
            Command::QueryPathInfos => Reply::PathInfos(self.read_path_infos(r).await?),
            Command::ImportPaths => self
                .read_ack(r, "ImportPaths reply")
                .await
                .map(|_| Reply::Ack)?,
            Command::AddToStoreNar => self
                .read_ack(r, "AddToStoreNar reply")
                .await
                .map(|_| Reply::Ack)?,
            Command::BuildPaths => Reply::BuildPaths(self.read_build_paths(r).await?),
            Command::BuildDerivation => Reply::Build(self.read_build_result(r).await?),
            Command::DumpStorePath | Command::ExportPaths => Reply::Stream,
        })
    }

    /// QueryValidPaths / QueryClosure reply.
    pub async fn read_paths<R: AsyncRead + Unpin>(&self, r: &mut R) -> Result<Vec<StorePath>> {
        read_paths(r, "valid paths", &self.limits).await
    }

    /// QueryPathInfos reply: records until `""`, at most
    /// `max_collection_len` of them.
    pub async fn read_path_infos<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
    ) -> Result<Vec<ValidPathInfo>> {
        let (minor, limits) = (self.version.minor(), &self.limits);
        let mut infos = Vec::new();
        loop {
            let path = read_string(r, "path info path", Limits::MAX_PATH_BYTES).await?;
            if path.is_empty() {
                return Ok(infos);
            }
            if infos.len() >= limits.max_collection_len {
                return Err(Error::TooLong {
                    field: "path infos",
                    len: infos.len() as u64 + 1,
                    max: limits.max_collection_len as u64,
                });
            }
            let path = StorePath::parse(&path)?;
            let (info, _download_size) =
                ValidPathInfo::read_serve_record(r, path, minor, limits).await?;
            infos.push(info);
        }
    }

    /// The `u64 1` acknowledging ImportPaths and AddToStoreNar.
    pub async fn read_ack<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
        field: &'static str,
    ) -> Result<()> {
        match read_u64(r, field).await? {
            1 => Ok(()),
            v => Err(Error::BadValue { field, value: v }),
        }
    }

    /// BuildPaths reply: `None` for `u64 0`.
    pub async fn read_build_paths<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
    ) -> Result<Option<BuildResult>> {
        let status = read_u64(r, "status").await?;
        if status == 0 {
            return Ok(None);
        }
        let status = BuildStatus::from_u64(status).ok_or(Error::BadValue {
            field: "status",
            value: status,
        })?;
        let msg = read_bytes(r, "errorMsg", self.limits.max_string_bytes).await?;
        Ok(Some(BuildResult::failure(status, msg)))
    }

    /// BuildDerivation reply.
    pub async fn read_build_result<R: AsyncRead + Unpin>(&self, r: &mut R) -> Result<BuildResult> {
        BuildResult::read_serve(r, self.version.minor(), &self.limits).await
    }
}

impl Reply {
    pub fn write(&self, buf: &mut Vec<u8>, version: ServeVersion) {
        let minor = version.minor();
        match self {
            Reply::Paths(paths) => put_paths(buf, paths.iter()),
            Reply::PathInfos(infos) => {
                for info in infos {
                    info.write_serve_record(buf, info.nar_size, minor);
                }
                put_str(buf, "");
            }
            Reply::Ack => put_u64(buf, 1),
            Reply::BuildPaths(None) => put_u64(buf, 0),
            Reply::BuildPaths(Some(failure)) => {
                put_u64(buf, failure.status as u64);
                put_bytes(buf, &failure.error_msg);
            }
            Reply::Build(result) => result.write_serve(buf, minor),
            Reply::Stream => {}
        }
    }
}
