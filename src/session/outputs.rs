//! The output tee: a finished build's outputs are streamed from the
//! backend into the store and, when a client asks, to that client in the
//! same pass (hash verified, compressed, signed narinfo written last).

use std::collections::BTreeMap;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};

use super::{Core, CoreError};
use crate::backend::Lease;
use crate::error_chain as chain;
use crate::metrics::Direction;
use crate::store::{Provenance, Scope, Verify};
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;

/// A successful build whose outputs are (partly) still on the backend.
pub struct Finished {
    pub backend: String,
    pub(super) conn: Lease,
    pub outputs: BTreeMap<StorePath, ValidPathInfo>,
    pub(super) scope: Scope,
    /// Set when a fetch broke off: an output is lost from this build, so
    /// nobody new may attach to its flight (they build again).
    pub(super) spoiled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Finished {
    /// Streams one output from the backend into the store, and to `tee`.
    pub async fn fetch<W: AsyncWrite + Unpin>(
        &mut self,
        relay: &Core,
        path: &StorePath,
        tee: Option<&mut W>,
    ) -> Result<(), CoreError> {
        let r = self.fetch_one(relay, path, tee).await;
        if r.is_err() {
            self.spoiled
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        r
    }

    async fn fetch_one<W: AsyncWrite + Unpin>(
        &mut self,
        relay: &Core,
        path: &StorePath,
        mut tee: Option<&mut W>,
    ) -> Result<(), CoreError> {
        let Some(info) = self.outputs.remove(path) else {
            return Err(crate::store::Error::Missing(path.clone()).into());
        };
        let from_backend = |source| CoreError::Output {
            path: path.clone(),
            backend: self.backend.clone(),
            source,
        };
        if !self.conn.client.is_idle() {
            // An earlier transfer was abandoned halfway: the stream is
            // out of step, so nothing more can be read from it.
            let why = "the session was left mid-transfer".to_owned();
            return Err(from_backend(crate::wire::Error::Protocol(why)));
        }
        let tee_used = tee.is_some();
        let client = &mut self.conn.client;
        client.dump_store_path(path).await.map_err(from_backend)?;
        let mut writer = relay.store.begin(relay.limits.nar()).await?;
        let pumped = writer.pump(client.reader(), tee.as_deref_mut(), path).await;
        match pumped {
            Err(crate::store::Error::Nar { source, .. }) => return Err(from_backend(source)),
            r => r?,
        }
        client.nar_read();
        if let Some(t) = tee {
            t.flush().await.map_err(crate::wire::Error::Write)?;
        }
        let prov = Provenance::Built {
            backend: self.backend.clone(),
        };
        let info = writer
            .commit(info, Verify::Declared, &self.scope, &prov)
            .await?;
        crate::metrics::nar_bytes(Direction::FromBackend, info.nar_size);
        if tee_used {
            crate::metrics::nar_bytes(Direction::ToClient, info.nar_size);
        }
        Ok(())
    }

    /// Stores every output nobody fetched yet.
    pub async fn settle(&mut self, relay: &Core) {
        let left: Vec<StorePath> = self.outputs.keys().cloned().collect();
        for path in left {
            match self.fetch(relay, &path, None::<&mut tokio::io::Sink>).await {
                Ok(()) => info!(%path, backend = %self.backend, "output stored"),
                Err(e) => {
                    warn!(%path, backend = %self.backend, error = %chain(&e), "could not store output")
                }
            }
        }
    }
}
