//! [`Client`]: the operations a session needs from a backend, whichever
//! protocol the backend speaks.
//!
//! Each operation marks the client busy until it has read the whole reply,
//! so an operation that failed or was abandoned halfway (a timeout, a
//! cancelled build) leaves it busy: [`Client::is_idle`] is then false and
//! the pool never hands the connection out again.

use tokio::io::AsyncRead;

use super::Options;
use super::{ConnReader, ConnWriter, ServeClient, WorkerClient};
use crate::buildlog::EventSink;
use crate::wire::Result;
use crate::wire::build::{BasicDerivation, BuildResult};
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;

pub enum Client {
    /// `nix-store --serve --write`: the build log is the process's stderr.
    Serve(ServeClient<ConnReader, ConnWriter>),
    /// `nix-daemon --stdio`: the build log comes in-band.
    Worker(WorkerClient<ConnReader, ConnWriter>),
}

impl Client {
    /// The paths among `paths` the backend has; with `substitute`, after
    /// it substituted what its own caches have.
    pub async fn query_valid_paths(
        &mut self,
        paths: Vec<StorePath>,
        substitute: bool,
    ) -> Result<Vec<StorePath>> {
        self.set_busy(true);
        let r = match self {
            Client::Serve(c) => c.query_valid_paths(paths, substitute).await,
            Client::Worker(c) => c.query_valid_paths(paths, substitute).await,
        };
        self.settle(r)
    }

    /// The infos of the valid paths among `paths`.
    pub async fn query_path_infos(&mut self, paths: Vec<StorePath>) -> Result<Vec<ValidPathInfo>> {
        self.set_busy(true);
        let r = match self {
            Client::Serve(c) => c.query_path_infos(paths).await,
            Client::Worker(c) => c.query_path_infos(paths).await,
        };
        self.settle(r)
    }

    /// Uploads one path; `nar` must yield exactly `info.nar_size` bytes.
    pub async fn add_to_store_nar<N: AsyncRead + Unpin>(
        &mut self,
        info: &ValidPathInfo,
        nar: &mut N,
    ) -> Result<()> {
        self.set_busy(true);
        let r = match self {
            Client::Serve(c) => c.add_to_store_nar(info, nar).await,
            Client::Worker(c) => c.add_to_store_nar(info, nar).await,
        };
        self.settle(r)
    }

    /// Builds `drv`. A worker backend's events go to `log` as they are
    /// read; a serve backend's log already flows there from its stderr
    /// (the connection's switch).
    pub async fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &BasicDerivation,
        options: &Options,
        log: &dyn EventSink,
    ) -> Result<BuildResult> {
        self.set_busy(true);
        let r = match self {
            Client::Serve(c) => c.build_derivation(drv_path, drv, options.build).await,
            Client::Worker(c) => c.build_derivation(drv_path, drv, options, log).await,
        };
        self.settle(r)
    }

    /// Asks for a NAR; the caller then reads it from [`Client::reader`] and
    /// calls [`Client::nar_read`] once it has read all of it.
    pub async fn dump_store_path(&mut self, path: &StorePath) -> Result<()> {
        self.set_busy(true);
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

    /// The NAR asked for with [`Client::dump_store_path`] was read to its end.
    pub fn nar_read(&mut self) {
        self.set_busy(false);
    }

    /// The paths among `paths` the backend has after it substituted what
    /// its own caches have: a worker backend first gets the build's
    /// options (`use-substitutes` on: a session's last SetOptions, an
    /// earlier build's, may have turned it off).
    pub async fn query_substituting(
        &mut self,
        paths: Vec<StorePath>,
        options: &Options,
    ) -> Result<Vec<StorePath>> {
        self.set_busy(true);
        let r = match self {
            Client::Serve(c) => c.query_valid_paths(paths, true).await,
            Client::Worker(c) => match c.set_options(options, None).await {
                Ok(()) => c.query_valid_paths(paths, true).await,
                Err(e) => Err(e),
            },
        };
        self.settle(r)
    }

    /// Whether a substitute flag still works on this session: not on a
    /// `nix-store --serve` that ran a build (see `ServeClient::built`).
    pub fn substitutes(&self) -> bool {
        match self {
            Client::Serve(c) => !c.built,
            Client::Worker(_) => true,
        }
    }

    /// No operation is half done: the connection is at a request boundary
    /// and may serve another build.
    pub fn is_idle(&self) -> bool {
        match self {
            Client::Serve(c) => !c.busy,
            Client::Worker(c) => !c.busy,
        }
    }

    fn set_busy(&mut self, busy: bool) {
        match self {
            Client::Serve(c) => c.busy = busy,
            Client::Worker(c) => c.busy = busy,
        }
    }

    fn settle<T>(&mut self, r: Result<T>) -> Result<T> {
        if r.is_ok() {
            self.set_busy(false);
        }
        r
    }
}
