//! [`Client`]: the operations a session needs from a backend, whichever
//! protocol the backend speaks.

use tokio::io::AsyncRead;

use super::{ConnReader, ConnWriter, ServeClient, WorkerClient};
use crate::ssh::LogSink;
use crate::wire::Result;
use crate::wire::build::{BasicDerivation, BuildOptions, BuildResult};
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;

pub enum Client {
    /// `nix-store --serve --write`: the build log is the process's stderr.
    Serve(ServeClient<ConnReader, ConnWriter>),
    /// `nix-daemon --stdio`: the build log comes in-band.
    Worker(WorkerClient<ConnReader, ConnWriter>),
}

impl Client {
    /// The paths among `paths` the backend has.
    pub async fn query_valid_paths(&mut self, paths: Vec<StorePath>) -> Result<Vec<StorePath>> {
        match self {
            Client::Serve(c) => c.query_valid_paths(paths).await,
            Client::Worker(c) => c.query_valid_paths(paths).await,
        }
    }

    /// The infos of the valid paths among `paths`.
    pub async fn query_path_infos(&mut self, paths: Vec<StorePath>) -> Result<Vec<ValidPathInfo>> {
        match self {
            Client::Serve(c) => c.query_path_infos(paths).await,
            Client::Worker(c) => c.query_path_infos(paths).await,
        }
    }

    /// Uploads one path; `nar` must yield exactly `info.nar_size` bytes.
    pub async fn add_to_store_nar<N: AsyncRead + Unpin>(
        &mut self,
        info: &ValidPathInfo,
        nar: &mut N,
    ) -> Result<()> {
        match self {
            Client::Serve(c) => c.add_to_store_nar(info, nar).await,
            Client::Worker(c) => c.add_to_store_nar(info, nar).await,
        }
    }

    /// Builds `drv`. A worker backend's log goes to `log` line by line;
    /// a serve backend's log already flows there from its stderr.
    pub async fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &BasicDerivation,
        options: BuildOptions,
        log: &LogSink,
    ) -> Result<BuildResult> {
        match self {
            Client::Serve(c) => c.build_derivation(drv_path, drv, options).await,
            Client::Worker(c) => c.build_derivation(drv_path, drv, options, log).await,
        }
    }

    /// Asks for a NAR; the caller then reads it from [`Client::reader`].
    pub async fn dump_store_path(&mut self, path: &StorePath) -> Result<()> {
        match self {
            Client::Serve(c) => c.dump_store_path(path).await,
            Client::Worker(c) => c.dump_store_path(path).await,
        }
    }

    /// Where a NAR asked for with [`Client::dump_store_path`] arrives.
    pub fn reader(&mut self) -> &mut ConnReader {
        match self {
            Client::Serve(c) => &mut c.r,
            Client::Worker(c) => &mut c.r,
        }
    }
}
