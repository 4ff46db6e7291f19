//! Build logs, kept as a binary cache keeps them: each derivation's last
//! log, zstd-compressed, served over HTTP at `/log/<drv base name>` (what
//! Nix's `BinaryCacheStore::getBuildLog` fetches; `nix log`).
//!
//! ```text
//! <root>/log/<hash>-<name>.drv.zst              public (served)
//! <root>/private/<client>/log/<…>.drv.zst       an untrusted client's build
//! ```
//! Bounds: one log keeps its last [`MAX_ONE_LOG`] bytes (a line says how
//! many were dropped before them); all logs together stay under
//! `[cache] max_stored_log_bytes` compressed (default
//! [`DEFAULT_MAX_LOG_BYTES`]), the oldest removed first after each write
//! (a scan of the log directories; 0 keeps no logs). Written durably like
//! a narinfo (temp file, fsync, rename): a reader sees a whole log or none.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_compression::tokio::bufread::ZstdDecoder;
use async_compression::tokio::write::ZstdEncoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Error, Scope, Store, io_err};
use crate::wire::store_path::StorePath;

/// Total compressed bytes of stored logs when the config names none.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 256 << 20;
/// Uncompressed bytes kept of one log (its end).
pub const MAX_ONE_LOG: usize = 16 << 20;
const SUFFIX: &str = ".zst";
/// Room for the dropped-bytes line on top of [`MAX_ONE_LOG`].
const NOTE_SLACK: usize = 4096;

fn log_file(scope_dir: &Path, drv: &StorePath) -> PathBuf {
    scope_dir
        .join("log")
        .join(format!("{}{SUFFIX}", drv.base_name()))
}

/// A log arriving in pieces, of which only the last [`MAX_ONE_LOG`] bytes
/// are kept (memory stays under twice that).
#[derive(Debug, Default)]
pub struct LogTail {
    buf: Vec<u8>,
    dropped: u64,
}

impl LogTail {
    pub fn push(&mut self, piece: &[u8]) {
        self.buf.extend_from_slice(piece);
        if self.buf.len() > 2 * MAX_ONE_LOG {
            self.cut();
        }
    }

    fn cut(&mut self) {
        let cut = self.buf.len().saturating_sub(MAX_ONE_LOG);
        self.buf.drain(..cut);
        self.dropped += cut as u64;
    }

    /// The kept bytes, after a line saying how many were dropped (if any).
    pub fn finish(mut self) -> Vec<u8> {
        self.cut();
        if self.dropped == 0 {
            return self.buf;
        }
        let note = format!(
            "[nix-relay: {} earlier bytes of this log were dropped]\n",
            self.dropped
        );
        let mut v = note.into_bytes();
        v.extend_from_slice(&self.buf);
        v
    }
}

/// The last [`MAX_ONE_LOG`] bytes of `log` ([`LogTail`]).
fn bounded(log: &[u8]) -> Vec<u8> {
    let mut t = LogTail::default();
    t.push(log);
    t.finish()
}

async fn compress(log: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = ZstdEncoder::new(Vec::new());
    enc.write_all(log).await?;
    enc.shutdown().await?;
    Ok(enc.into_inner())
}

/// Reads and decompresses a stored log; `None` if there is none. At most
/// [`MAX_ONE_LOG`] + [`NOTE_SLACK`] bytes are ever decompressed.
async fn read_log(file: &Path) -> Result<Option<Vec<u8>>, Error> {
    let raw = match tokio::fs::read(file).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("reading", file)(e)),
    };
    let dec = ZstdDecoder::new(tokio::io::BufReader::new(&raw[..]));
    let mut out = Vec::new();
    dec.take((MAX_ONE_LOG + NOTE_SLACK) as u64)
        .read_to_end(&mut out)
        .await
        .map_err(io_err("decompressing", file))?;
    Ok(Some(out))
}

/// The public log of the derivation with base name `base` (the HTTP
/// cache's `/log/<base>`); `None` if `base` is no store path base name or
/// there is no log.
pub async fn public_log(root: &Path, base: &str) -> Result<Option<Vec<u8>>, Error> {
    match StorePath::from_base_name(base) {
        Ok(drv) => read_log(&log_file(root, &drv)).await,
        Err(_) => Ok(None),
    }
}

impl Store {
    fn max_log_bytes(&self) -> u64 {
        self.settings.max_log_bytes.unwrap_or(DEFAULT_MAX_LOG_BYTES)
    }

    /// Keeps `log` as the last build log of `drv` in `scope` (replacing an
    /// older one), bounded as the module says.
    pub async fn put_build_log(
        &self,
        drv: &StorePath,
        log: &[u8],
        scope: &Scope,
    ) -> Result<(), Error> {
        if self.max_log_bytes() == 0 {
            return Ok(());
        }
        let file = log_file(&self.scope_dir(scope), drv);
        let dir = file.parent().unwrap_or(&self.root).to_owned();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_err("creating", &dir))?;
        // A log already bounded (LogTail) is stored as it is.
        let log = if log.len() > MAX_ONE_LOG + NOTE_SLACK {
            std::borrow::Cow::Owned(bounded(log))
        } else {
            std::borrow::Cow::Borrowed(log)
        };
        let packed = compress(&log)
            .await
            .map_err(io_err("compressing a log for", &file))?;
        self.publish(&file, &packed).await?;
        let store = self.clone();
        let trimmed = tokio::task::spawn_blocking(move || store.trim_logs()).await;
        match trimmed {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(removed = n, "old build logs removed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "trimming stored build logs"),
            Err(e) => tracing::warn!(error = %e, "trimming stored build logs"),
        }
        Ok(())
    }

    /// The last build log of `drv` that `client` may read (public first).
    pub async fn build_log(
        &self,
        drv: &StorePath,
        client: Option<&str>,
    ) -> Result<Option<Vec<u8>>, Error> {
        for scope in [
            Some(Scope::Public),
            client.map(|c| Scope::Private(c.to_owned())),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(log) = read_log(&log_file(&self.scope_dir(&scope), drv)).await? {
                return Ok(Some(log));
            }
        }
        Ok(None)
    }

    /// Removes the oldest logs until all fit the bound; returns how many.
    fn trim_logs(&self) -> std::io::Result<usize> {
        let mut logs: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        for dir in self.scope_dirs()? {
            let Ok(rd) = std::fs::read_dir(dir.join("log")) else {
                continue;
            };
            for e in rd {
                let e = e?;
                let m = e.metadata()?;
                logs.push((
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                    e.path(),
                ));
            }
        }
        let mut total: u64 = logs.iter().map(|l| l.1).sum();
        logs.sort();
        let mut removed = 0;
        for (_, size, path) in logs {
            if total <= self.max_log_bytes() {
                break;
            }
            std::fs::remove_file(&path)?;
            total -= size;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drv(n: u8) -> StorePath {
        let c = char::from(crate::wire::hash::NIX32_ALPHABET[usize::from(n)]);
        let h: String = std::iter::repeat_n(c, 32).collect();
        StorePath::from_base_name(&format!("{h}-x.drv")).unwrap()
    }

    #[tokio::test]
    async fn logs_roundtrip_compressed_and_scoped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let log = b"line one\nline two\n".repeat(1000);
        store
            .put_build_log(&drv(0), &log, &Scope::Public)
            .await
            .unwrap();
        let file = dir
            .path()
            .join("log")
            .join(format!("{}.zst", drv(0).base_name()));
        assert!(std::fs::metadata(&file).unwrap().len() < log.len() as u64 / 10);
        assert_eq!(store.build_log(&drv(0), None).await.unwrap().unwrap(), log);
        let base = drv(0).base_name().to_owned();
        assert_eq!(public_log(dir.path(), &base).await.unwrap().unwrap(), log);
        assert!(public_log(dir.path(), "../meta").await.unwrap().is_none());

        let private = Scope::Private("eve".into());
        store
            .put_build_log(&drv(1), b"secret", &private)
            .await
            .unwrap();
        assert!(store.build_log(&drv(1), None).await.unwrap().is_none());
        assert!(
            store
                .build_log(&drv(1), Some("bob"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store
                .build_log(&drv(1), Some("eve"))
                .await
                .unwrap()
                .unwrap(),
            b"secret"
        );
        assert!(
            public_log(dir.path(), drv(1).base_name())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn one_log_keeps_its_end_and_all_logs_stay_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let settings = super::super::Settings {
            max_log_bytes: Some(3000),
            ..Default::default()
        };
        let store = Store::open(dir.path(), settings).unwrap();
        let mut big = vec![b'x'; MAX_ONE_LOG + 10];
        big.extend_from_slice(b"THE END");
        assert!(bounded(&big).starts_with(b"[nix-relay: 17 earlier bytes"));
        assert!(bounded(&big).ends_with(b"THE END"));
        // Incompressible logs of ~1 KiB each: the cap holds two or three.
        for n in 0..6u8 {
            let mut x: u32 = 0x9e37_79b9 ^ u32::from(n);
            let log: Vec<u8> = (0..1024)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x >> 8) as u8
                })
                .collect();
            store
                .put_build_log(&drv(n), &log, &Scope::Public)
                .await
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let sizes: u64 = std::fs::read_dir(dir.path().join("log"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(sizes <= 3000, "{sizes}");
        assert!(
            store.build_log(&drv(5), None).await.unwrap().is_some(),
            "newest kept"
        );
        assert!(
            store.build_log(&drv(0), None).await.unwrap().is_none(),
            "oldest dropped"
        );
    }
}
