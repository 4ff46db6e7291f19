//! The upload queue: entries the local store committed go to the bucket,
//! NAR first, provenance, narinfo last; and the start-up cleanup (stale
//! multipart uploads aborted, public entries the bucket lacks queued).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::{Bucket, Error, PART_SIZE, QUEUE_LEN, UPLOAD_TIMEOUT};
use crate::store::signing::SecretKey;
use crate::store::{NarInfo, Store};

/// An entry to upload: its scope directory ("" or `private/<dir>`) and hash.
type Entry = (String, String);

/// The mirror of a store in a bucket; cheap to clone.
#[derive(Clone, Debug)]
pub struct Mirror {
    tx: mpsc::Sender<Entry>,
    /// Entries queued or uploading.
    pending: Arc<watch::Sender<usize>>,
}

impl Mirror {
    /// Hooks to `store`'s commits and starts the upload task, which first
    /// does the start-up cleanup: multipart uploads older than `stale_age`
    /// aborted, `nix-cache-info` written if absent, public entries the
    /// bucket lacks queued (if the bucket is `capped`, only those committed
    /// after its oldest narinfo's last use: older ones were evicted there,
    /// not lost in a crash). Needs a Tokio runtime.
    pub fn start(bucket: Arc<Bucket>, store: Store, stale_age: Duration, capped: bool) -> Mirror {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        // The start-up cleanup counts as one pending entry.
        let mirror = Mirror {
            tx,
            pending: Arc::new(watch::Sender::new(1)),
        };
        crate::metrics::s3_queue_depth(1);
        let m = mirror.clone();
        store.set_on_commit(Arc::new(move |dir: &str, hash: &str| {
            m.enqueue(dir, hash);
        }));
        let m = mirror.clone();
        tokio::spawn(async move {
            m.clean_up(&bucket, &store, stale_age, capped).await;
            done_one(&m.pending);
            let signer = store.settings().signer.clone();
            let root = store.root().to_owned();
            run(bucket, (root, signer), rx, m.pending.clone()).await;
        });
        mirror
    }

    async fn clean_up(&self, bucket: &Bucket, store: &Store, stale_age: Duration, capped: bool) {
        if let Err(e) = abort_stale(bucket, stale_age).await {
            tracing::warn!("S3 start-up: {}", crate::error_chain(&e));
        }
        let info = store.root().join("nix-cache-info");
        if let Err(e) = put_info(bucket, &info).await {
            tracing::warn!("S3 start-up: {}", crate::error_chain(&e));
        }
        match missing_public(bucket, store, capped).await {
            Ok(hashes) => hashes.iter().for_each(|h| self.enqueue("", h)),
            Err(e) => tracing::warn!("S3 start-up repair: {}", crate::error_chain(&e)),
        }
    }

    fn enqueue(&self, dir: &str, hash: &str) {
        self.pending.send_modify(|n| *n += 1);
        crate::metrics::s3_queue_depth(*self.pending.borrow());
        if self.tx.try_send((dir.to_owned(), hash.to_owned())).is_err() {
            done_one(&self.pending);
            crate::metrics::s3_upload_failed("queue_full");
            tracing::warn!(
                hash,
                "S3 upload queue full: the entry waits for the next start's repair"
            );
        }
    }

    /// Waits until every entry queued so far is uploaded (or failed).
    pub async fn flushed(&self) {
        let mut rx = self.pending.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One pending entry done (uploaded, failed, or not queued).
fn done_one(pending: &watch::Sender<usize>) {
    pending.send_modify(|n| *n = n.saturating_sub(1));
    crate::metrics::s3_queue_depth(*pending.borrow());
}

/// The step a failed upload stopped at, for the failure metric.
fn failed_step(e: &Error) -> &'static str {
    match e {
        Error::Local { .. } => "local",
        Error::Timeout { .. } => "timeout",
        Error::Call { key, .. }
        | Error::Stream { key, .. }
        | Error::Status { key, .. }
        | Error::Reply { key, .. } => {
            if key.ends_with(".narinfo") {
                "narinfo"
            } else if key.ends_with(".prov") {
                "prov"
            } else {
                "nar"
            }
        }
        Error::Url { .. } | Error::Store { .. } | Error::TooLarge { .. } => "local",
    }
}

async fn run(
    bucket: Arc<Bucket>,
    (root, signer): (std::path::PathBuf, Option<Arc<SecretKey>>),
    mut rx: mpsc::Receiver<Entry>,
    pending: Arc<watch::Sender<usize>>,
) {
    while let Some((dir, hash)) = rx.recv().await {
        let up = upload_entry(&bucket, (&root, signer.as_deref()), &dir, &hash);
        match tokio::time::timeout(UPLOAD_TIMEOUT, up).await {
            Ok(Ok(Some(bytes))) => {
                crate::metrics::s3_uploaded(bytes);
                tracing::debug!(hash, dir, bytes, "uploaded to S3");
            }
            Ok(Ok(None)) => tracing::debug!(hash, dir, "gone before its S3 upload"),
            Ok(Err(e)) => {
                crate::metrics::s3_upload_failed(failed_step(&e));
                tracing::warn!("S3 upload of {hash}: {}", crate::error_chain(&e));
            }
            Err(_) => {
                crate::metrics::s3_upload_failed("timeout");
                tracing::warn!(hash, "S3 upload took over {UPLOAD_TIMEOUT:?}");
            }
        }
        done_one(&pending);
    }
}

fn key_of(dir: &str, rel: &str) -> String {
    if dir.is_empty() {
        rel.to_owned()
    } else {
        format!("{dir}/{rel}")
    }
}

fn local<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Local {
        step,
        path: path.to_owned(),
        source,
    }
}

/// Uploads one committed entry of the store at `root`: NAR (unless the
/// bucket has that file already), provenance, narinfo last: the bytes
/// sent, or None if it left the local store before (evicted). A private
/// entry's provenance carries `signer`'s scope signature
/// (`private::scope_message`), without which no relay pulls it.
pub async fn upload_entry(
    bucket: &Bucket,
    (root, signer): (&Path, Option<&SecretKey>),
    dir: &str,
    hash: &str,
) -> Result<Option<u64>, Error> {
    let base = root.join(dir);
    let ni_path = base.join(format!("{hash}.narinfo"));
    let text = match tokio::fs::read_to_string(&ni_path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(local("reading", &ni_path)(e)),
    };
    let Ok(info) = NarInfo::parse(&text) else {
        return Err(local("parsing", &ni_path)(std::io::Error::other(
            "bad narinfo",
        )));
    };
    let nar_key = key_of(dir, &info.url);
    let nar_path = base.join(&info.url);
    // A NAR already there (another entry's, or a path built twice) is
    // refreshed: young, an eviction pass leaves it alone (`evict`).
    let mut sent = 0;
    let there = match bucket.refresh(&nar_key).await {
        Ok(there) => there,
        // CopyObject stops at 5 GiB: a bigger NAR is only checked.
        Err(e) => {
            tracing::debug!("{}", crate::error_chain(&e));
            bucket.exists(&nar_key).await?
        }
    };
    if !there {
        match upload_nar(bucket, &nar_key, &nar_path).await? {
            Some(n) => sent += n,
            None => return Ok(None),
        }
    }
    let prov = base.join("meta").join(format!("{hash}.prov"));
    sent += text.len() as u64;
    if let Ok(mut p) = tokio::fs::read(&prov).await {
        if let Some(k) = signer.filter(|_| !dir.is_empty()) {
            let fp = crate::store::fingerprint(&crate::store::to_path_info(&info));
            let sig = k.sign(&super::private::scope_message(dir, &fp));
            p.extend_from_slice(format!("{}{sig}\n", super::private::SCOPE_SIG).as_bytes());
        }
        sent += p.len() as u64;
        bucket
            .put(&key_of(dir, &format!("meta/{hash}.prov")), p.into())
            .await?;
    }
    bucket
        .put(&key_of(dir, &format!("{hash}.narinfo")), text.into())
        .await?;
    // An eviction pass that listed the NAR before the refresh may have
    // deleted it since: then it goes up again.
    if !bucket.exists(&nar_key).await? {
        tracing::info!(
            key = nar_key,
            "S3 NAR deleted under a new narinfo: uploading it again"
        );
        match upload_nar(bucket, &nar_key, &nar_path).await? {
            Some(n) => sent += n,
            None => {
                // Evicted here too: the narinfo must not stay without its NAR.
                bucket
                    .delete(&key_of(dir, &format!("{hash}.narinfo")))
                    .await?;
                return Ok(None);
            }
        }
    }
    Ok(Some(sent))
}

/// [`upload_file`], None if the local file is gone (evicted).
async fn upload_nar(bucket: &Bucket, key: &str, path: &Path) -> Result<Option<u64>, Error> {
    match upload_file(bucket, key, path).await {
        Err(Error::Local { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        r => r.map(Some),
    }
}

/// Fills `buf` from `r` up to [`PART_SIZE`] bytes (less only at the end).
async fn read_part(r: &mut tokio::fs::File, path: &Path) -> Result<Bytes, Error> {
    let mut buf = BytesMut::with_capacity(PART_SIZE);
    while buf.len() < PART_SIZE {
        let n = r.read_buf(&mut buf).await.map_err(local("reading", path))?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

/// Uploads the file at `path` to `key`: one PutObject if it fits in a
/// part, else a multipart upload (one part in memory at a time), aborted
/// if a step fails. Nothing is visible at `key` until the end. The bytes
/// sent.
pub async fn upload_file(bucket: &Bucket, key: &str, path: &Path) -> Result<u64, Error> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(local("opening", path))?;
    let first = read_part(&mut f, path).await?;
    if first.len() < PART_SIZE {
        let n = first.len() as u64;
        return bucket.put(key, first).await.map(|()| n);
    }
    let id = bucket.create_multipart(key).await?;
    let mut sent = first.len() as u64;
    let parts = async {
        let mut parts = vec![(1, bucket.upload_part(key, &id, 1, first).await?)];
        loop {
            let part = read_part(&mut f, path).await?;
            if part.is_empty() {
                return Ok::<_, Error>(parts);
            }
            sent += part.len() as u64;
            let n = parts.len() as u32 + 1;
            parts.push((n, bucket.upload_part(key, &id, n, part).await?));
        }
    };
    let done = match parts.await {
        Ok(parts) => bucket.complete(key, &id, &parts).await.map(|()| sent),
        Err(e) => Err(e),
    };
    if done.is_err()
        && let Err(e) = bucket.abort(key, &id).await
    {
        tracing::warn!("{}", crate::error_chain(&e));
    }
    done
}

/// Aborts incomplete multipart uploads initiated over `age` ago (or at an
/// unknown time): a dead relay's. How many.
pub async fn abort_stale(bucket: &Bucket, age: Duration) -> Result<usize, Error> {
    let now = SystemTime::now();
    let mut n = 0;
    for u in bucket.list_uploads().await? {
        let old = u
            .initiated
            .is_none_or(|t| now.duration_since(t).is_ok_and(|d| d >= age));
        if old {
            bucket.abort(&u.key, &u.id).await?;
            tracing::info!(key = u.key, "aborted a stale S3 multipart upload");
            n += 1;
        }
    }
    Ok(n)
}

async fn put_info(bucket: &Bucket, info: &Path) -> Result<(), Error> {
    let body = tokio::fs::read(info)
        .await
        .map_err(local("reading", info))?;
    bucket
        .put_if_absent("nix-cache-info", body.into())
        .await
        .map(drop)
}

/// The hash parts of the local public entries the bucket has no narinfo
/// for; if `capped`, only those committed after the bucket's oldest narinfo
/// was last used (an entry evicted there was used before all that remain).
async fn missing_public(
    bucket: &Bucket,
    store: &Store,
    capped: bool,
) -> Result<Vec<String>, Error> {
    let objects = bucket.list_objects("").await?;
    let narinfos = || (objects.iter()).filter(|o| o.key.ends_with(".narinfo"));
    let there: std::collections::HashSet<&str> = narinfos()
        .filter_map(|o| o.key.strip_suffix(".narinfo"))
        .filter(|k| !k.contains('/'))
        .collect();
    let cutoff = narinfos()
        .filter_map(|o| o.modified)
        .min()
        .filter(|_| capped);
    let root = store.root();
    let mut rd = tokio::fs::read_dir(root)
        .await
        .map_err(local("listing", root))?;
    let mut out = Vec::new();
    while let Some(e) = rd.next_entry().await.map_err(local("listing", root))? {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(h) = name.strip_suffix(".narinfo") else {
            continue;
        };
        let committed = e.metadata().await.and_then(|m| m.modified()).ok();
        let evicted = cutoff.zip(committed).is_some_and(|(c, t)| t <= c);
        if !there.contains(h) && !evicted {
            out.push(h.to_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{Error, failed_step};

    #[test]
    fn a_failed_upload_is_counted_at_the_step_of_its_key() {
        let status = |key: &str| Error::Status {
            op: "PutObject",
            key: key.into(),
            status: 500,
            message: String::new(),
        };
        assert_eq!(failed_step(&status("nar/abc.nar.zst")), "nar");
        assert_eq!(failed_step(&status("private/c/meta/abc.prov")), "prov");
        assert_eq!(failed_step(&status("private/c/abc.narinfo")), "narinfo");
        let local = Error::Local {
            step: "reading",
            path: "/x".into(),
            source: std::io::Error::other("x"),
        };
        assert_eq!(failed_step(&local), "local");
        let timeout = Error::Timeout {
            key: "abc.narinfo".into(),
            limit: super::UPLOAD_TIMEOUT,
        };
        assert_eq!(failed_step(&timeout), "timeout");
    }
}
