//! Narinfo lookups: each upstream in order, trusted answers only,
//! remembered, bounded in flight. See the module doc.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::{Cache, DOWN_FOR, Error, Found, Known, MAX_KNOWN, MAX_NARINFO_BYTES, POSITIVE_TTL};
use super::{Upstream, lock};
use crate::store::NarInfo;
use crate::wire::store_path::StorePath;

/// The compressions a fetch can undo.
const COMPRESSIONS: [&str; 3] = ["none", "xz", "zstd"];

impl Cache {
    fn is_down(&self) -> bool {
        lock(&self.down_until).is_some_and(|t| Instant::now() < t)
    }

    fn mark_down(&self) {
        *lock(&self.down_until) = Some(Instant::now() + DOWN_FOR);
    }
}

impl Upstream {
    /// `path` if an upstream has it, signed by a trusted key.
    pub async fn lookup(&self, path: &StorePath) -> Option<Arc<Found>> {
        let found = self.lookup_hash(path.hash_part()).await?;
        if found.narinfo.store_path != *path {
            tracing::debug!(%path, served = %found.narinfo.store_path, "upstream narinfo names another path");
            return None;
        }
        Some(found)
    }

    /// Each of `paths` some upstream has (at most [`super::LOOKUPS_IN_FLIGHT`]
    /// requests at a time).
    pub async fn lookup_many(&self, paths: &[StorePath]) -> HashMap<StorePath, Arc<Found>> {
        let each = paths
            .iter()
            .map(|p| async move { self.lookup(p).await.map(|f| (p.clone(), f)) });
        futures_util::future::join_all(each)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The path whose hash part is `hash`, if an upstream has it (trusted).
    /// Concurrent lookups of one hash make one request.
    pub async fn lookup_hash(&self, hash: &str) -> Option<Arc<Found>> {
        if let Some(k) = self.known(hash) {
            return k;
        }
        let cell = lock(&self.asking)
            .entry(hash.to_owned())
            .or_default()
            .clone();
        let found = cell.get_or_init(|| self.ask_all(hash)).await.clone();
        let mut asking = lock(&self.asking);
        if asking.get(hash).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            asking.remove(hash);
        }
        found
    }

    /// Each upstream in order until one has `hash`.
    async fn ask_all(&self, hash: &str) -> Option<Arc<Found>> {
        let _permit = self.lookups.acquire().await.ok()?;
        if let Some(k) = self.known(hash) {
            return k;
        }
        let mut all_answered = true;
        for (i, cache) in self.caches.iter().enumerate() {
            if cache.is_down() {
                all_answered = false;
                continue;
            }
            match self.ask(i, hash).await {
                Ok(Some(found)) => {
                    let found = Arc::new(found);
                    self.remember(hash, Some(found.clone()));
                    return Some(found);
                }
                Ok(None) => {}
                Err(e) => {
                    self.count(i, "error");
                    let secs = DOWN_FOR.as_secs();
                    tracing::warn!("{}; skipping it for {secs}s", crate::error_chain(&e));
                    cache.mark_down();
                    all_answered = false;
                }
            }
        }
        // "Absent" is remembered only when every upstream said so.
        if all_answered {
            self.remember(hash, None);
        }
        None
    }

    /// Counts a narinfo lookup's `result` at upstream `i` (and as a bucket
    /// read if `i` is the bucket).
    fn count(&self, i: usize, result: &'static str) {
        crate::metrics::upstream_narinfo(result);
        if self.caches[i].s3.is_some() {
            crate::metrics::s3_read(result);
        }
    }

    /// One upstream's trusted narinfo for `hash`; Ok(None) if it has none
    /// (404, 403) or none it could be trusted with; Err if it failed.
    async fn ask(&self, i: usize, hash: &str) -> Result<Option<Found>, Error> {
        let base = &self.caches[i].url;
        let url = format!("{base}/{hash}.narinfo");
        let net = |source| Error::Network {
            url: url.clone(),
            source,
        };
        let limit = self.cfg.timeout;
        let request = async {
            let reply = self.get(i, &format!("{hash}.narinfo")).await?;
            match reply.status {
                200 => Ok(Some(
                    (reply.bytes(MAX_NARINFO_BYTES, limit).await).map_err(net)?,
                )),
                404 | 403 => Ok(None),
                status => Err(Error::Status {
                    url: url.clone(),
                    status,
                }),
            }
        };
        let body = match tokio::time::timeout(limit, request).await {
            Err(_) => {
                return Err(net(crate::outbound::Error::Timeout {
                    host: base.host.clone(),
                    what: "answer a narinfo request",
                    limit,
                }));
            }
            Ok(r) => r?,
        };
        let Some(body) = body else {
            self.count(i, "miss");
            return Ok(None);
        };
        let found = self.trust(i, hash, &url, &body);
        self.count(i, if found.is_some() { "hit" } else { "untrusted" });
        Ok(found)
    }

    /// The narinfo `body` from upstream `i`, if it is usable and trusted.
    fn trust(&self, i: usize, hash: &str, url: &str, body: &[u8]) -> Option<Found> {
        let refuse = |why: &str| {
            tracing::debug!(url, "upstream narinfo ignored: {why}");
            None
        };
        let Ok(text) = std::str::from_utf8(body) else {
            return refuse("not UTF-8");
        };
        let narinfo = match NarInfo::parse(text) {
            Ok(n) => n,
            Err(e) => return refuse(&e.to_string()),
        };
        if narinfo.store_path.hash_part() != hash {
            return refuse("it names another path");
        }
        if !COMPRESSIONS.contains(&narinfo.compression.as_str()) {
            return refuse("unsupported compression");
        }
        if !relative_url(&narinfo.url) {
            return refuse("its URL is not a plain relative path");
        }
        let fp = crate::store::fingerprint(&crate::store::to_path_info(&narinfo));
        let trusted = &self.store.settings().trusted_keys;
        let own = (self.caches[i].s3.is_some())
            .then(|| self.store.settings().signer.as_ref().map(|k| k.public()))
            .flatten();
        let Some(key) = (trusted.iter().chain(own.as_ref()))
            .find(|k| narinfo.sigs.iter().any(|s| k.verifies(&fp, s)))
            .map(|k| k.name().to_owned())
        else {
            return refuse("no signature by a trusted key");
        };
        Some(Found {
            narinfo,
            key,
            cache: i,
        })
    }

    /// A remembered answer: Some(found or not) unless unknown or expired.
    fn known(&self, hash: &str) -> Option<Option<Arc<Found>>> {
        let known = lock(&self.known);
        let k = known.get(hash)?;
        (Instant::now() < k.until).then(|| k.found.clone())
    }

    fn remember(&self, hash: &str, found: Option<Arc<Found>>) {
        let now = Instant::now();
        let ttl = if found.is_some() {
            POSITIVE_TTL
        } else {
            self.cfg.negative_ttl
        };
        let mut known = lock(&self.known);
        if known.len() >= MAX_KNOWN {
            known.retain(|_, k| now < k.until);
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
        }
        let until = now + ttl;
        known.insert(hash.to_owned(), Known { found, until });
    }

    /// Forgets what was learned about `hash` (a fetch found it changed).
    pub(super) fn forget(&self, hash: &str) {
        lock(&self.known).remove(hash);
    }
}

/// `nar/…`-like: relative, no scheme, no `..`, no query.
fn relative_url(url: &str) -> bool {
    !url.starts_with('/')
        && !url.contains("://")
        && !url.contains(['?', '#', '\\'])
        && url
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}
