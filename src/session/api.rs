//! The core's operations on store paths, as both protocol fronts call
//! them: queries (a finished build's outputs still on its backend count,
//! see [`Core::path_info`]), uploads into the store under the trust rules,
//! and NARs out ([`Core::export`]: from a finished build's backend through
//! the tee, else from the store). Builds are in `build`, remote-store
//! builds in `derived`.

use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::build::Pending;
use super::flight::Attachment;
use super::outputs::Finished;
use super::{ClientId, Core, CoreError};
use crate::store::{NarReader, NarWriter, Pin, Scope, Verify, topo_sort};
use crate::wire::export::ExportTrailer;
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;

/// The finished build still holding a path on its backend, with a claim
/// that keeps it from settling while the caller fetches.
pub struct Holder {
    finished: Arc<tokio::sync::Mutex<Finished>>,
    _claim: Option<Attachment>,
}

/// A NAR on its way to a client ([`Core::export`]); [`NarOut::send`]
/// writes it.
pub struct NarOut(Out);

enum Out {
    /// An output still on its backend: teed to the client and the store.
    Held {
        finished: tokio::sync::OwnedMutexGuard<Finished>,
        _claim: Option<Attachment>,
        path: StorePath,
    },
    Stored(ValidPathInfo, NarReader),
}

impl NarOut {
    /// Writes the NAR to `w` and flushes.
    pub async fn send<W: AsyncWrite + Unpin>(
        self,
        core: &Core,
        w: &mut W,
    ) -> Result<(), CoreError> {
        match self.0 {
            Out::Held {
                mut finished, path, ..
            } => finished.fetch(core, &path, Some(w)).await,
            Out::Stored(info, mut nar) => {
                crate::metrics::nar_bytes(crate::metrics::Direction::ToClient, info.nar_size);
                let write = crate::wire::Error::Write;
                tokio::io::copy_buf(&mut nar, w).await.map_err(write)?;
                w.flush().await.map_err(write)?;
                Ok(())
            }
        }
    }
}

impl CoreError {
    /// The path a store lookup found missing, if that is the error.
    pub fn missing(&self) -> Option<&StorePath> {
        match self {
            CoreError::Store(crate::store::Error::Missing(p)) => Some(p),
            _ => None,
        }
    }
}

impl Core {
    /// The finished build still holding `path` on its backend, as `client`
    /// sees it: its own last build's (`pending`), else any finished
    /// flight's. An output a session reported built is servable at once
    /// from every session (Nix 2.26 fetches a build's outputs over a second
    /// connection).
    fn holder(
        &self,
        client: &ClientId,
        pending: Option<&Pending>,
        path: &StorePath,
    ) -> Option<Holder> {
        if let Some(p) = pending
            && p.holds(path)
        {
            let finished = p.finished.clone();
            return Some(Holder {
                finished,
                _claim: None,
            });
        }
        let (claim, finished) = self.flights.holding(path, &client.name)?;
        Some(Holder {
            finished,
            _claim: Some(claim),
        })
    }

    /// Metadata of `path` as `client` sees it: an output of a finished
    /// build still on the backend, else the relay store.
    pub async fn path_info(
        &self,
        client: &ClientId,
        pending: Option<&Pending>,
        path: &StorePath,
    ) -> Result<Option<ValidPathInfo>, CoreError> {
        if let Some(h) = self.holder(client, pending, path)
            && let Some(i) = h.finished.lock().await.outputs.get(path)
        {
            return Ok(Some(i.clone()));
        }
        Ok(self.store.path_info(path, Some(&client.name)).await?)
    }

    /// The paths among `paths` that `client` sees as valid; with
    /// `substitute` (the client's flag), also those an upstream cache has
    /// (fetched when a build or a client needs them), in one batched lookup.
    pub async fn query_valid(
        &self,
        client: &ClientId,
        pending: Option<&Pending>,
        paths: Vec<StorePath>,
        substitute: bool,
    ) -> Result<Vec<StorePath>, CoreError> {
        let mut valid = Vec::new();
        let mut absent = Vec::new();
        for p in paths {
            if self.path_info(client, pending, &p).await?.is_some() {
                valid.push(p);
            } else {
                absent.push(p);
            }
        }
        if substitute && let Some(u) = &self.upstream {
            let found = u.lookup_many(&absent).await;
            valid.extend(absent.into_iter().filter(|p| found.contains_key(p)));
        }
        Ok(valid)
    }

    /// The paths among `paths` that `client` does not see in the store but
    /// an upstream cache has, with what the upstream says of them.
    pub async fn substitutable(
        &self,
        client: &ClientId,
        paths: &[StorePath],
    ) -> Result<Vec<(StorePath, Arc<crate::upstream::Found>)>, CoreError> {
        let Some(u) = &self.upstream else {
            return Ok(Vec::new());
        };
        let mut absent = Vec::new();
        for p in paths {
            if !self.store.contains(p, Some(&client.name)).await? {
                absent.push(p.clone());
            }
        }
        let mut found = u.lookup_many(&absent).await;
        Ok((absent.into_iter())
            .filter_map(|p| found.remove(&p).map(|f| (p, f)))
            .collect())
    }

    /// Fetches `path` from upstream into the store (public) if it is not
    /// there: true if it is there now.
    pub async fn substitute(&self, path: &StorePath) -> Result<bool, CoreError> {
        match &self.upstream {
            Some(u) => Ok(u.fetch(path).await?),
            None => Ok(false),
        }
    }

    /// The infos of the paths among `paths` that `client` sees as valid.
    pub async fn query_infos(
        &self,
        client: &ClientId,
        pending: Option<&Pending>,
        paths: Vec<StorePath>,
    ) -> Result<Vec<ValidPathInfo>, CoreError> {
        let mut infos = Vec::new();
        for p in paths {
            infos.extend(self.path_info(client, pending, &p).await?);
        }
        Ok(infos)
    }

    /// The closure of `paths` in the store, sorted by name.
    pub async fn closure(
        &self,
        client: &ClientId,
        paths: &[StorePath],
    ) -> Result<Vec<StorePath>, CoreError> {
        let store = &self.store;
        let (closure, _) = store.closure_sorted(paths, Some(&client.name)).await?;
        let sorted: std::collections::BTreeSet<_> = closure.into_iter().collect();
        Ok(sorted.into_iter().collect())
    }

    /// `paths` (each in the store) in the order an export sends them:
    /// references first.
    pub async fn export_order(
        &self,
        client: &ClientId,
        paths: &[StorePath],
    ) -> Result<Vec<StorePath>, CoreError> {
        let mut refs = std::collections::HashMap::new();
        for p in paths {
            let info = self.store.path_info(p, Some(&client.name)).await?;
            let info = info.ok_or_else(|| crate::store::Error::Missing(p.clone()))?;
            refs.insert(p.clone(), info.references);
        }
        Ok(topo_sort(&refs))
    }

    /// The stored NAR of `path`, as `client` sees it, and its metadata; a
    /// path only upstream has is fetched first.
    pub async fn nar(
        &self,
        client: &ClientId,
        path: &StorePath,
    ) -> Result<(ValidPathInfo, NarReader), CoreError> {
        let opened = self.store.open_nar(path, Some(&client.name)).await;
        let (info, nar) = match opened {
            Err(crate::store::Error::Missing(_))
                if self.pull_private(client, path).await || self.substitute(path).await? =>
            {
                self.store.open_nar(path, Some(&client.name)).await?
            }
            r => r?,
        };
        Ok((crate::store::to_path_info(&info), nar))
    }

    /// The NAR of `path` for `client`: an output of a finished build still
    /// on its backend (fetched through the tee: to the client and into the
    /// store in one pass), else from the store. Fails before anything is
    /// written when the path is nowhere.
    pub async fn export(
        &self,
        client: &ClientId,
        pending: Option<&Pending>,
        path: &StorePath,
    ) -> Result<NarOut, CoreError> {
        if let Some(h) = self.holder(client, pending, path) {
            let finished = h.finished.lock_owned().await;
            if finished.outputs.contains_key(path) {
                return Ok(NarOut(Out::Held {
                    finished,
                    _claim: h._claim,
                    path: path.clone(),
                }));
            }
        }
        let (info, nar) = self.nar(client, path).await?;
        Ok(NarOut(Out::Stored(info, nar)))
    }

    /// Starts an upload: a NAR writer into the store.
    pub async fn begin_upload(&self) -> Result<NarWriter, CoreError> {
        Ok(self.store.begin(self.limits.nar()).await?)
    }

    /// Reads one NAR from `r` (exactly: it stops at the NAR's end) into
    /// the store, not yet published; `path` names it in errors.
    pub async fn receive<R: AsyncBufRead + Unpin>(
        &self,
        r: &mut R,
        path: &StorePath,
    ) -> Result<NarWriter, CoreError> {
        let mut writer = self.begin_upload().await?;
        writer.pump(r, None::<&mut tokio::io::Sink>, path).await?;
        Ok(writer)
    }

    /// Uploads `info`'s NAR, exactly `info.nar_size` bytes of `r`, where
    /// the trust rules put it ([`Core::commit_upload`]).
    pub async fn upload<R: AsyncBufRead + Unpin>(
        &self,
        client: &ClientId,
        info: ValidPathInfo,
        r: &mut R,
    ) -> Result<Scope, CoreError> {
        let mut limited = r.take(info.nar_size);
        let writer = self.receive(&mut limited, &info.path).await?;
        if limited.limit() != 0 {
            let (path, missing) = (info.path, limited.limit());
            return Err(CoreError::ShortNar { path, missing });
        }
        self.commit_upload(client, writer, info).await
    }

    /// Publishes an upload whose NAR `writer` has received, where the trust
    /// rules put it (`Store::commit_upload`: checked metadata, verified
    /// signatures, an existing public entry kept), and counts its bytes.
    pub async fn commit_upload(
        &self,
        client: &ClientId,
        writer: NarWriter,
        info: ValidPathInfo,
    ) -> Result<Scope, CoreError> {
        crate::metrics::nar_bytes(crate::metrics::Direction::FromClient, info.nar_size);
        let (name, trusted) = (&client.name, client.trusted);
        let store = &self.store;
        Ok((store.commit_upload(writer, info, Verify::Declared, name, trusted)).await?)
    }

    /// Publishes one path of an import (ImportPaths), its metadata from
    /// the export's trailer, its hash and size computed.
    pub async fn commit_import(
        &self,
        client: &ClientId,
        writer: NarWriter,
        t: ExportTrailer,
    ) -> Result<Scope, CoreError> {
        let info = ValidPathInfo {
            path: t.path,
            deriver: t.deriver,
            nar_hash: crate::wire::hash::Sha256Hash([0; 32]),
            references: t.references,
            registration_time: 0,
            nar_size: 0,
            ultimate: false,
            sigs: Vec::new(),
            ca: None,
        };
        let (name, trusted) = (&client.name, client.trusted);
        let store = &self.store;
        Ok((store.commit_upload(writer, info, Verify::Computed, name, trusted)).await?)
    }

    /// Publishes a content-addressed path (`Store::commit_ca`: public
    /// unless a reference is private), and counts its bytes.
    pub async fn commit_ca(
        &self,
        client: &ClientId,
        writer: NarWriter,
        info: ValidPathInfo,
    ) -> Result<ValidPathInfo, CoreError> {
        crate::metrics::nar_bytes(crate::metrics::Direction::FromClient, info.nar_size);
        tracing::debug!(path = %info.path, ca = ?info.ca, "content-addressed path added");
        let (name, trusted) = (&client.name, client.trusted);
        Ok(self.store.commit_ca(writer, info, name, trusted).await?)
    }

    /// Adds signatures to a path `client` sees; false if it sees none.
    pub async fn add_signatures(
        &self,
        client: &ClientId,
        path: &StorePath,
        sigs: &[String],
    ) -> Result<bool, CoreError> {
        let store = &self.store;
        Ok(store.add_signatures(path, sigs, Some(&client.name)).await?)
    }

    /// Every path `client` sees.
    pub async fn all_paths(&self, client: &ClientId) -> Result<Vec<StorePath>, CoreError> {
        Ok(self.store.all_paths(Some(&client.name)).await?)
    }

    /// The paths `client` sees that refer to `path`.
    pub async fn referrers(
        &self,
        client: &ClientId,
        path: &StorePath,
    ) -> Result<Vec<StorePath>, CoreError> {
        Ok(self.store.referrers(path, Some(&client.name)).await?)
    }

    /// The derivers of `path` that `client` sees as valid.
    pub async fn valid_derivers(
        &self,
        client: &ClientId,
        path: &StorePath,
    ) -> Result<Vec<StorePath>, CoreError> {
        Ok(self.store.valid_derivers(path, Some(&client.name)).await?)
    }

    /// The path `client` sees whose hash part is `hash_part`.
    pub async fn path_from_hash_part(
        &self,
        client: &ClientId,
        hash_part: &str,
    ) -> Result<Option<StorePath>, CoreError> {
        let store = &self.store;
        Ok(store
            .path_from_hash_part(hash_part, Some(&client.name))
            .await?)
    }

    /// Pins `paths` against eviction while the guard lives.
    pub fn pin(&self, paths: &[StorePath]) -> Pin {
        self.store.pin(paths)
    }

    /// Keeps `log` as `drv`'s build log in `scope` (`nix log`).
    pub async fn put_build_log(
        &self,
        drv: &StorePath,
        log: &[u8],
        scope: &Scope,
    ) -> Result<(), CoreError> {
        Ok(self.store.put_build_log(drv, log, scope).await?)
    }
}
