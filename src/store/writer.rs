//! Streaming a NAR into the store: the reader's side tokenizes (the NAR's
//! end and format rules) and, with a tee, writes each chunk to the client
//! first; the store side ([`super::spool`], its own thread behind a bounded
//! queue) hashes, compresses and writes. Then verify, fsync and rename.
//! See the module doc of `store`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use async_compression::tokio::bufread::{XzDecoder, ZstdDecoder};
use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::spool::{Spool, Spooled};
use super::{Error, NarInfo, NarReader, Provenance, Scope, Store, fingerprint, io_err};
use crate::wire::nar::{NarLimits, NarParser, NarSummary};
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How NAR files are compressed on disk (and served over HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// zstd at its fastest ordinary level (1): the store side compresses
    /// while an output streams to the client, so speed matters more than
    /// the last percent.
    #[default]
    Zstd,
    Xz,
    None,
}

impl Compression {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "zstd" => Some(Compression::Zstd),
            "xz" => Some(Compression::Xz),
            "none" => Some(Compression::None),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::None => "none",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Compression::Zstd => ".nar.zst",
            Compression::Xz => ".nar.xz",
            Compression::None => ".nar",
        }
    }
}

pub(super) fn decompressor(
    name: &str,
    raw: BufReader<tokio::fs::File>,
) -> Result<NarReader, Error> {
    const CAP: usize = 256 << 10;
    Ok(match name {
        "none" => Box::new(raw),
        "zstd" => Box::new(BufReader::with_capacity(CAP, ZstdDecoder::new(raw))),
        "xz" => Box::new(BufReader::with_capacity(CAP, XzDecoder::new(raw))),
        other => return Err(Error::Compression(other.to_owned())),
    })
}

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
    /// Tokenizes only: the store side hashes.
    parser: NarParser,
    spool: Spool,
    /// Set by [`NarWriter::summary`]: the store side has finished.
    spooled: Option<Spooled>,
}

impl NarWriter {
    pub(super) async fn create(store: Store, limits: NarLimits) -> Result<NarWriter, Error> {
        let tmp = tmp_path(&store, "nar");
        let f = tokio::fs::File::create(&tmp)
            .await
            .map_err(io_err("creating", &tmp))?;
        let f = f.into_std().await;
        let spool = Spool::start(
            f,
            tmp.clone(),
            store.settings.compression,
            store.gate.clone(),
        );
        Ok(NarWriter {
            store,
            tmp,
            parser: NarParser::unhashed(limits),
            spool,
            spooled: None,
        })
    }

    pub fn is_done(&self) -> bool {
        self.parser.is_done()
    }

    /// Parses a prefix of `buf` and queues it for the file; returns its length.
    pub async fn feed(&mut self, buf: &[u8], path: &StorePath) -> Result<usize, Error> {
        let n = self.tokenize(buf, path)?;
        self.spool.send(&buf[..n]).await?;
        Ok(n)
    }

    /// The prefix of `buf` that belongs to the NAR, checked.
    fn tokenize(&mut self, buf: &[u8], path: &StorePath) -> Result<usize, Error> {
        self.parser.feed(buf).map_err(|source| Error::Nar {
            path: path.clone(),
            source,
        })
    }

    /// Streams one NAR from `r` into the store file, copying the same bytes
    /// to `tee` if given: each chunk goes to `tee` first, then to the store
    /// side's queue (waiting only while it is full). Stops exactly at the
    /// end of the NAR.
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
        while !self.is_done() {
            let buf = filled(r, path).await?;
            let n = self.tokenize(buf, path)?;
            if let Some(t) = tee.as_mut() {
                t.write_all(&buf[..n]).await.map_err(|e| Error::Nar {
                    path: path.clone(),
                    source: crate::wire::Error::Write(e),
                })?;
            }
            self.spool.send(&buf[..n]).await?;
            r.consume(n);
        }
        Ok(())
    }

    /// As [`NarWriter::pump`], handing each chunk to `each` (before the
    /// store side's queue) as shared bytes instead of writing it to a tee.
    pub async fn pump_shared<R>(
        &mut self,
        r: &mut R,
        path: &StorePath,
        mut each: impl FnMut(&Bytes),
    ) -> Result<(), Error>
    where
        R: AsyncBufRead + Unpin + ?Sized,
    {
        while !self.is_done() {
            let buf = Bytes::copy_from_slice(filled(r, path).await?);
            let n = self.tokenize(&buf, path)?;
            let prefix = buf.slice(..n);
            each(&prefix);
            self.spool.send_shared(prefix).await?;
            r.consume(n);
        }
        Ok(())
    }

    /// The hash and size of the complete NAR, before [`NarWriter::commit`]
    /// (a content-addressed path is computed from them): waits for the
    /// store side to finish the file (written, fsynced). Fails if the NAR
    /// is incomplete; nothing may be fed after.
    pub async fn summary(&mut self, path: &StorePath) -> Result<NarSummary, Error> {
        Ok(self.finish_spool(path).await?.nar)
    }

    async fn finish_spool(&mut self, path: &StorePath) -> Result<Spooled, Error> {
        if let Some(s) = self.spooled {
            return Ok(s);
        }
        let size = self.parser.end().map_err(|source| Error::Nar {
            path: path.clone(),
            source,
        })?;
        let s = self.spool.finish().await?;
        if s.nar.size != size {
            let why = format!("the store side got {} of {size} NAR bytes", s.nar.size);
            return Err(io_err("writing", &self.tmp)(std::io::Error::other(why)));
        }
        self.spooled = Some(s);
        Ok(s)
    }

    /// Verifies the NAR, makes it durable and publishes the entry in
    /// `scope`. Public entries are signed with the relay's key.
    pub async fn commit(
        mut self,
        mut info: ValidPathInfo,
        verify: Verify,
        scope: &Scope,
        provenance: &Provenance,
    ) -> Result<ValidPathInfo, Error> {
        let spooled = self.finish_spool(&info.path).await?;
        let summary = spooled.nar;
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
        // Only what the narinfo format can hold, and only signatures that
        // verify (a malformed one never does): a peer's junk is never stored.
        if let Some(ca) = &info.ca {
            super::metadata::check_ca(ca).map_err(|source| Error::BadMetadata {
                path: info.path.clone(),
                source,
            })?;
        }
        let sigs = std::mem::take(&mut info.sigs);
        info.sigs = (sigs.into_iter())
            .filter(|s| self.store.sig_verifies(&info, s))
            .collect();
        let (file_hash, file_size) = (spooled.file_hash, spooled.file_size);
        let dir = self.store.scope_dir(scope);
        for sub in ["nar", "meta"] {
            let d = dir.join(sub);
            tokio::fs::create_dir_all(&d)
                .await
                .map_err(io_err("creating", &d))?;
        }
        let compression = self.store.settings.compression;
        let url = format!("nar/{}{}", file_hash.to_nix32(), compression.extension());
        let nar_path = dir.join(&url);
        let new_file = !tokio::fs::try_exists(&nar_path).await.unwrap_or(false);
        tokio::fs::rename(&self.tmp, &nar_path)
            .await
            .map_err(io_err("publishing", &nar_path))?;
        if new_file {
            self.store.account(file_size);
        }
        if *scope == Scope::Public
            && let Some(key) = &self.store.settings.signer
        {
            let sig = key.sign(&fingerprint(&info));
            if !info.sigs.contains(&sig) {
                info.sigs.push(sig);
            }
        }
        let narinfo = NarInfo {
            store_path: info.path.clone(),
            url,
            compression: compression.name().into(),
            file_hash: Some(file_hash),
            file_size: Some(file_size),
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
            references: info.references.iter().cloned().collect(),
            deriver: info.deriver.clone(),
            system: None,
            sigs: info.sigs.clone(),
            ca: info.ca.clone(),
        };
        let hash = info.path.hash_part();
        let store = &self.store;
        store
            .publish(
                &dir.join("meta").join(format!("{hash}.prov")),
                provenance.render().as_bytes(),
            )
            .await?;
        store
            .publish(
                &dir.join(format!("{hash}.narinfo")),
                narinfo.render().as_bytes(),
            )
            .await?;
        store.committed(scope, hash);
        Ok(info)
    }
}

/// `r`'s next buffered bytes: an error if it fails or ends (a NAR's end is
/// the tokenizer's to find, never the reader's).
async fn filled<'a, R>(r: &'a mut R, path: &StorePath) -> Result<&'a [u8], Error>
where
    R: AsyncBufRead + Unpin + ?Sized,
{
    let nar_err = |source| Error::Nar {
        path: path.clone(),
        source,
    };
    let buf = r
        .fill_buf()
        .await
        .map_err(|e| nar_err(crate::wire::Error::read("NAR", e)))?;
    if buf.is_empty() {
        return Err(nar_err(crate::wire::Error::UnexpectedEof { field: "NAR" }));
    }
    Ok(buf)
}

fn tmp_path(store: &Store, ext: &str) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    store
        .root
        .join("tmp")
        .join(format!("{}-{n}.{ext}", std::process::id()))
}

impl Store {
    /// Adds a new NAR file to the running total and, above the cap, starts
    /// an eviction in the background.
    fn account(&self, bytes: u64) {
        let total = self.usage.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(max) = self.settings.max_size
            && total > max
        {
            let store = self.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.evict_to(max) {
                    tracing::warn!(error = %e, "eviction failed");
                }
            });
        }
    }

    /// Writes `dest` atomically and durably: temp file, fsync, rename, fsync dir.
    /// On failure (a full disk, say) the temp file is removed again and
    /// `dest` is untouched.
    pub(super) async fn publish(&self, dest: &std::path::Path, bytes: &[u8]) -> Result<(), Error> {
        let tmp = tmp_path(self, "part");
        if let Err(e) = write_durably(&tmp, dest, bytes).await {
            if let Err(rm) = tokio::fs::remove_file(&tmp).await
                && rm.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %tmp.display(), error = %rm, "could not remove a temp file");
            }
            return Err(e);
        }
        let dir = dest.parent().unwrap_or(&self.root);
        let d = tokio::fs::File::open(dir)
            .await
            .map_err(io_err("opening", dir))?;
        d.sync_all().await.map_err(io_err("syncing", dir))
    }
}

/// `tmp` written and fsynced, then renamed to `dest`.
async fn write_durably(
    tmp: &std::path::Path,
    dest: &std::path::Path,
    bytes: &[u8],
) -> Result<(), Error> {
    let mut f = tokio::fs::File::create(tmp)
        .await
        .map_err(io_err("creating", tmp))?;
    f.write_all(bytes).await.map_err(io_err("writing", tmp))?;
    f.sync_all().await.map_err(io_err("syncing", tmp))?;
    drop(f);
    tokio::fs::rename(tmp, dest)
        .await
        .map_err(io_err("publishing", dest))
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
