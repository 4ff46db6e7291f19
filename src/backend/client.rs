//! Serve-protocol client: the relay driving a backend's `nix-store --serve`.
//! One request at a time; every method sends a request and reads its reply.

use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire::build::{BasicDerivation, BuildOptions, BuildResult};
use crate::wire::path_info::ValidPathInfo;
use crate::wire::serve::{self, Request, ServeCodec, ServeVersion};
use crate::wire::store_path::StorePath;
use crate::wire::{Error, Limits, Result};

pub struct ServeClient<R, W> {
    pub r: R,
    pub w: W,
    pub version: ServeVersion,
    limits: Limits,
    /// An operation started and has not been read to its end.
    pub(super) busy: bool,
    /// A build ran on this session: `nix-store --serve` then has
    /// `use-substitutes` off for the rest of its life (its BuildDerivation
    /// sets it so), and a substitute flag does nothing.
    pub(super) built: bool,
}

impl<R: AsyncBufRead + AsyncRead + Unpin, W: AsyncWrite + Unpin> ServeClient<R, W> {
    pub fn new(r: R, w: W, version: ServeVersion, limits: Limits) -> Self {
        ServeClient {
            r,
            w,
            version,
            limits,
            busy: false,
            built: false,
        }
    }

    fn codec(&self) -> ServeCodec {
        ServeCodec::new(self.version, self.limits)
    }

    async fn request(&mut self, req: &Request) -> Result<()> {
        let buf = self.codec().encode_request(req);
        serve::send(&mut self.w, &buf).await
    }

    /// The paths among `paths` the backend has; with `substitute`, after
    /// `nix-store --serve` substituted what its caches have.
    pub async fn query_valid_paths(
        &mut self,
        paths: Vec<StorePath>,
        substitute: bool,
    ) -> Result<Vec<StorePath>> {
        self.request(&Request::QueryValidPaths {
            lock: false,
            substitute,
            paths,
        })
        .await?;
        self.codec().read_paths(&mut self.r).await
    }

    pub async fn query_path_infos(&mut self, paths: Vec<StorePath>) -> Result<Vec<ValidPathInfo>> {
        self.request(&Request::QueryPathInfos { paths }).await?;
        self.codec().read_path_infos(&mut self.r).await
    }

    /// Uploads one path; `nar` must yield exactly `info.nar_size` bytes.
    pub async fn add_to_store_nar<N: AsyncRead + Unpin>(
        &mut self,
        info: &ValidPathInfo,
        nar: &mut N,
    ) -> Result<()> {
        let buf = self
            .codec()
            .encode_request(&Request::AddToStoreNar { info: info.clone() });
        self.w.write_all(&buf).await.map_err(Error::Write)?;
        let mut limited = nar.take(info.nar_size);
        let n = tokio::io::copy(&mut limited, &mut self.w)
            .await
            .map_err(|e| Error::read("NAR from relay store", e))?;
        if n != info.nar_size {
            return Err(Error::UnexpectedEof {
                field: "NAR from relay store",
            });
        }
        self.w.flush().await.map_err(Error::Write)?;
        let codec = self.codec();
        codec.read_ack(&mut self.r, "AddToStoreNar reply").await
    }

    pub async fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &BasicDerivation,
        options: BuildOptions,
    ) -> Result<BuildResult> {
        self.built = true;
        self.request(&Request::BuildDerivation {
            drv_path: drv_path.clone(),
            drv: drv.clone(),
            options,
        })
        .await?;
        self.codec().read_build_result(&mut self.r).await
    }

    /// Asks for a NAR; the caller then reads it from `self.r`.
    pub async fn dump_store_path(&mut self, path: &StorePath) -> Result<()> {
        self.request(&Request::DumpStorePath { path: path.clone() })
            .await
    }
}
