//! Last use in the bucket: when the relay serves an entry (a local hit or
//! one pulled from the bucket), its narinfo's LastModified is brought to
//! now if it is older than [`REFRESH_AFTER`] (CopyObject onto itself), so
//! the bucket's eviction (`evict`) sees the entry as recently used. In the
//! background, behind a queue of [`REFRESH_QUEUE`]; each relay checks one
//! entry at most once per `refresh_after`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Bucket;

/// A narinfo is refreshed when older than this.
pub const REFRESH_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Narinfos waiting to be checked; when full, uses are not recorded.
pub const REFRESH_QUEUE: usize = 1024;
/// Narinfos whose last check is remembered; above, all are forgotten.
pub const MAX_CHECKED: usize = 65_536;

/// Records uses; cheap to clone.
#[derive(Clone, Debug)]
pub struct Refresher {
    tx: mpsc::Sender<String>,
    /// When this relay last checked a narinfo key.
    checked: Arc<Mutex<HashMap<String, Instant>>>,
    refresh_after: Duration,
}

impl Refresher {
    /// Starts the refresh task. Needs a Tokio runtime.
    pub fn start(bucket: Arc<Bucket>, refresh_after: Duration) -> Refresher {
        let (tx, rx) = mpsc::channel(REFRESH_QUEUE);
        tokio::spawn(run(bucket, rx, refresh_after));
        Refresher {
            tx,
            checked: Default::default(),
            refresh_after,
        }
    }

    /// The entry `hash` of scope directory `dir` ("" or `private/<dir>`)
    /// was used: its narinfo is checked unless it was within
    /// `refresh_after`. Never blocks.
    pub fn used(&self, dir: &str, hash: &str) {
        let key = if dir.is_empty() {
            format!("{hash}.narinfo")
        } else {
            format!("{dir}/{hash}.narinfo")
        };
        let now = Instant::now();
        {
            let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
            let recent = checked.get(&key).is_some_and(|t| {
                !self.refresh_after.is_zero() && now.duration_since(*t) < self.refresh_after
            });
            if recent {
                return;
            }
            if checked.len() >= MAX_CHECKED {
                checked.clear();
            }
            checked.insert(key.clone(), now);
        }
        if let Err(e) = self.tx.try_send(key) {
            // Not checked after all: the next use tries again.
            let key = e.into_inner();
            (self.checked.lock().unwrap_or_else(|e| e.into_inner())).remove(&key);
            tracing::debug!(hash, "S3 refresh queue full: this use is not recorded");
        }
    }
}

async fn run(bucket: Arc<Bucket>, mut rx: mpsc::Receiver<String>, refresh_after: Duration) {
    while let Some(key) = rx.recv().await {
        if let Err(e) = refresh_if_old(&bucket, &key, refresh_after).await {
            tracing::warn!("S3 refresh: {}", crate::error_chain(&e));
        }
    }
}

/// Refreshes `key` if it is older than `age`: whether it did.
pub async fn refresh_if_old(
    bucket: &Bucket,
    key: &str,
    age: Duration,
) -> Result<bool, super::Error> {
    let Some(o) = bucket.stat(key).await? else {
        return Ok(false);
    };
    let now = SystemTime::now();
    let old = (o.modified).is_none_or(|t| now.duration_since(t).is_ok_and(|d| d >= age));
    if !old {
        return Ok(false);
    }
    let done = bucket.refresh(key).await?;
    if done {
        crate::metrics::s3_refreshed();
        tracing::debug!(key, "S3 narinfo refreshed (used)");
    }
    Ok(done)
}
