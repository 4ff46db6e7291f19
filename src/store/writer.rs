//! Streaming a NAR into the store: parse, hash and write in one pass, then
//! verify, fsync and rename. See the module doc of `store` for the layout.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

use super::{Error, NarInfo, Store, io_err};
use crate::wire::nar::{NarLimits, NarParser};
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How [`NarWriter::commit`] treats the hash and size in the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The metadata declares them: they must match the bytes.
    Declared,
    /// The stream carried none (export stream): take the computed ones.
    Computed,
}

pub struct NarWriter {
    store: Store,
    tmp: PathBuf,
    file: BufWriter<tokio::fs::File>,
    parser: NarParser,
}

impl NarWriter {
    pub(super) async fn create(store: Store, limits: NarLimits) -> Result<NarWriter, Error> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = store
            .root
            .join("tmp")
            .join(format!("{}-{n}.nar", std::process::id()));
        let f = tokio::fs::File::create(&tmp)
            .await
            .map_err(io_err("creating", &tmp))?;
        Ok(NarWriter {
            store,
            tmp,
            file: BufWriter::with_capacity(256 << 10, f),
            parser: NarParser::new(limits),
        })
    }

    pub fn is_done(&self) -> bool {
        self.parser.is_done()
    }

    /// Parses a prefix of `buf` and appends it to the file; returns its length.
    pub async fn feed(&mut self, buf: &[u8], path: &StorePath) -> Result<usize, Error> {
        let n = self.parser.feed(buf).map_err(|source| Error::Nar {
            path: path.clone(),
            source,
        })?;
        self.file
            .write_all(&buf[..n])
            .await
            .map_err(io_err("writing", &self.tmp))?;
        Ok(n)
    }

    /// Streams one NAR from `r` into the store file, copying the same bytes
    /// to `tee` if given. Stops exactly at the end of the NAR.
    pub async fn pump<R, W>(
        &mut self,
        r: &mut R,
        mut tee: Option<&mut W>,
        path: &StorePath,
    ) -> Result<(), Error>
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let nar_err = |source| Error::Nar {
            path: path.clone(),
            source,
        };
        while !self.is_done() {
            let buf = r
                .fill_buf()
                .await
                .map_err(|e| nar_err(crate::wire::Error::read("NAR", e)))?;
            if buf.is_empty() {
                return Err(nar_err(crate::wire::Error::UnexpectedEof { field: "NAR" }));
            }
            let n = self.feed(buf, path).await?;
            if let Some(t) = tee.as_mut() {
                t.write_all(&buf[..n])
                    .await
                    .map_err(|e| nar_err(crate::wire::Error::Write(e)))?;
            }
            r.consume(n);
        }
        Ok(())
    }

    /// Verifies the NAR, makes it durable and publishes the entry.
    pub async fn commit(
        mut self,
        mut info: ValidPathInfo,
        verify: Verify,
    ) -> Result<ValidPathInfo, Error> {
        let parser = std::mem::replace(&mut self.parser, NarParser::new(NarLimits::default()));
        let summary = parser.finish().map_err(|source| Error::Nar {
            path: info.path.clone(),
            source,
        })?;
        if verify == Verify::Declared
            && (summary.sha256 != info.nar_hash || summary.size != info.nar_size)
        {
            return Err(Error::Mismatch {
                path: info.path.clone(),
                expected: format!(
                    "{} ({} bytes)",
                    info.nar_hash.to_nix32_prefixed(),
                    info.nar_size
                ),
                got: format!(
                    "{} ({} bytes)",
                    summary.sha256.to_nix32_prefixed(),
                    summary.size
                ),
            });
        }
        info.nar_hash = summary.sha256;
        info.nar_size = summary.size;
        self.file
            .flush()
            .await
            .map_err(io_err("flushing", &self.tmp))?;
        self.file
            .get_ref()
            .sync_all()
            .await
            .map_err(io_err("syncing", &self.tmp))?;
        let url = Store::nar_rel_url(&info.nar_hash);
        let nar_path = self.store.root.join(&url);
        tokio::fs::rename(&self.tmp, &nar_path)
            .await
            .map_err(io_err("publishing", &nar_path))?;
        let narinfo = NarInfo {
            store_path: info.path.clone(),
            url,
            compression: "none".into(),
            file_hash: Some(info.nar_hash),
            file_size: Some(info.nar_size),
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
            references: info.references.iter().cloned().collect(),
            deriver: info.deriver.clone(),
            system: None,
            sigs: info.sigs.clone(),
            ca: info.ca.clone(),
        };
        self.store.publish_narinfo(&narinfo).await?;
        Ok(info)
    }
}

impl Store {
    async fn publish_narinfo(&self, n: &NarInfo) -> Result<(), Error> {
        let seq = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}-{seq}.narinfo", std::process::id()));
        let dest = self.narinfo_path(n.store_path.hash_part());
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(io_err("creating", &tmp))?;
        f.write_all(n.render().as_bytes())
            .await
            .map_err(io_err("writing", &tmp))?;
        f.sync_all().await.map_err(io_err("syncing", &tmp))?;
        drop(f);
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(io_err("publishing", &dest))?;
        let dir = tokio::fs::File::open(&self.root)
            .await
            .map_err(io_err("opening", &self.root))?;
        dir.sync_all().await.map_err(io_err("syncing", &self.root))
    }
}

impl Drop for NarWriter {
    fn drop(&mut self) {
        // An abandoned upload leaves nothing behind; after a commit the
        // temp file has been renamed and this is a no-op.
        if let Err(e) = std::fs::remove_file(&self.tmp)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %self.tmp.display(), error = %e, "could not remove abandoned upload");
        }
    }
}
