//! Upstream binary caches (`[cache] upstream = [urls]`): the relay
//! substitutes from them, for its clients' queries, a build's inputs and
//! its own HTTP cache (pull-through).
//!
//! * `lookup` — `GET <url>/<hash>.narinfo` from each upstream in order,
//!   parsed by the store's strict parser; a narinfo counts only if it names
//!   the path asked for, its compression is one the relay reads (none, xz,
//!   zstd), its URL is relative and one of its signatures verifies against
//!   `[cache] trusted_public_keys`. Answers are remembered (found:
//!   [`POSITIVE_TTL`]; absent: `upstream_negative_ttl`; at most
//!   [`MAX_KNOWN`] entries); at most [`LOOKUPS_IN_FLIGHT`] requests at a
//!   time. An upstream that fails (network, timeout, an unexpected status)
//!   is skipped for [`DOWN_FOR`], so a down upstream answers misses at once.
//! * `fetch` — puts a path, its references first, in the store's public
//!   scope through the store's verified writer (NarHash and NarSize must
//!   match the narinfo; provenance `signed`), the NAR streamed and
//!   decompressed on the way (memory bounded whatever its size). Concurrent
//!   fetches of one path run once: later callers await the first's result
//!   (the fetch runs in its own task, so a caller that goes away does not
//!   abort it). At most [`FETCHES_IN_FLIGHT`] NAR downloads at a time.
//! * `live` — the HTTP cache's pull-through: live entries whose NAR is
//!   streamed to its readers while it is fetched, and the prefetch of a
//!   build's inputs a backend substitutes from the relay (see its doc).
//!
//! Invariant: nothing enters the store from upstream without a signature by
//! a trusted key and a NAR matching its signed hash and size, and then only
//! in the public scope; every request is bounded in time (connect, narinfo,
//! NAR headers, NAR stall) and size (narinfo [`MAX_NARINFO_BYTES`], NAR
//! `max_nar_size`).

mod closure;
mod fetch;
mod live;
mod lookup;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::outbound::BaseUrl;
use crate::store::{NarInfo, Store};
use crate::wire::nar::NarLimits;
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;
pub use closure::Reach;
pub use live::{Expected, LIVE_CHUNK, LIVE_WINDOW, LiveNar, live_url};

/// Narinfo requests in flight at once (a QueryValidPaths of 300 paths is
/// 300 / 16 round trips deep, not 300).
pub const LOOKUPS_IN_FLIGHT: usize = 16;
/// NAR downloads in flight at once.
pub const FETCHES_IN_FLIGHT: usize = 16;
/// The largest narinfo read.
pub const MAX_NARINFO_BYTES: u64 = 1 << 20;
/// Lookup answers remembered; above, expired ones are dropped, then all.
pub const MAX_KNOWN: usize = 65_536;
/// How long a found narinfo is remembered.
pub const POSITIVE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a failing upstream is skipped.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fetching {url}")]
    Network {
        url: String,
        #[source]
        source: crate::outbound::Error,
    },
    #[error("fetching {url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{path} from upstream: NarSize {size} is over max_nar_size {limit}")]
    TooLarge {
        path: StorePath,
        size: u64,
        limit: u64,
    },
    #[error("storing {path} fetched from upstream")]
    Store {
        path: StorePath,
        #[source]
        source: crate::store::Error,
    },
    #[error("{path} refers to {reference}, which no upstream has")]
    MissingReference {
        path: StorePath,
        reference: StorePath,
    },
    #[error("fetching the references of {path}")]
    Reference {
        path: StorePath,
        #[source]
        source: Arc<Error>,
    },
    #[error("the fetch of {0} ended without a result")]
    Lost(String),
    #[error("reading the S3 bucket")]
    S3(#[source] crate::s3::Error),
    #[error("reading the stored entry of {hash}")]
    Stored {
        hash: String,
        #[source]
        source: crate::store::Error,
    },
}

/// A path an upstream has, signed by a trusted key.
#[derive(Debug)]
pub struct Found {
    /// As the upstream serves it (`url` relative to that upstream).
    pub narinfo: NarInfo,
    /// The name of the trusted key whose signature verified.
    pub key: String,
    /// Which upstream (index into the configured list).
    cache: usize,
}

impl Found {
    pub fn info(&self) -> ValidPathInfo {
        crate::store::to_path_info(&self.narinfo)
    }

    /// What a client downloads: the compressed size if known, else the NAR's.
    pub fn download_size(&self) -> u64 {
        self.narinfo.file_size.unwrap_or(self.narinfo.nar_size)
    }
}

/// One configured upstream.
struct Cache {
    url: BaseUrl,
    down_until: Mutex<Option<Instant>>,
    /// The relay's own bucket (`[cache] store = "s3://…"`): read with
    /// signed GETs, its entries trusted with the relay's own key too.
    s3: Option<Arc<crate::s3::Bucket>>,
}

/// How long a bucket's "absent" is remembered at most: another relay may
/// upload the path any time.
pub const BUCKET_NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// A remembered lookup answer.
struct Known {
    found: Option<Arc<Found>>,
    until: Instant,
}

type Outcome = Result<bool, Arc<Error>>;
/// A lookup in flight: its answer, once there.
type Asking = Arc<tokio::sync::OnceCell<Option<Arc<Found>>>>;

/// The configured upstreams and what the relay learned from them.
pub struct Upstream {
    caches: Vec<Cache>,
    store: Store,
    client: crate::outbound::Client,
    cfg: crate::config::Upstream,
    nar_limits: NarLimits,
    known: Mutex<HashMap<String, Known>>,
    /// Lookups in flight, by hash part.
    asking: Mutex<HashMap<String, Asking>>,
    lookups: Semaphore,
    nars: Semaphore,
    /// Fetches in flight, by hash part: their result, once there.
    flights: Mutex<HashMap<String, Arc<watch::Sender<Option<Outcome>>>>>,
    /// The windows of fetches in flight for the HTTP cache, by hash part.
    lives: Mutex<HashMap<String, Arc<live::Live>>>,
    /// Inputs backends are being asked to substitute, by hash part.
    expected: Mutex<HashMap<String, Arc<live::Group>>>,
    /// The mirror to the bucket, if one is configured.
    mirror: Option<crate::s3::Mirror>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.caches.iter().map(|c| c.url.to_string()).collect();
        f.debug_struct("Upstream").field("urls", &urls).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Upstream {
    /// Upstreams `cfg.urls` for `store` (whose trusted keys decide what is
    /// trusted); None if there is none.
    pub fn new(
        cfg: &crate::config::Upstream,
        store: Store,
        nar_limits: NarLimits,
    ) -> Option<Arc<Upstream>> {
        Upstream::with_bucket(cfg, store, nar_limits, None)
    }

    /// As [`Upstream::new`], with the relay's bucket (and its mirror) as
    /// the first source.
    pub fn with_bucket(
        cfg: &crate::config::Upstream,
        store: Store,
        nar_limits: NarLimits,
        bucket: Option<(Arc<crate::s3::Bucket>, crate::s3::Mirror)>,
    ) -> Option<Arc<Upstream>> {
        if cfg.urls.is_empty() && bucket.is_none() {
            return None;
        }
        let (s3, mirror) = bucket.map_or((None, None), |(b, m)| (Some(b), Some(m)));
        let mut cfg = cfg.clone();
        if s3.is_some() {
            cfg.negative_ttl = cfg.negative_ttl.min(BUCKET_NEGATIVE_TTL);
        }
        let own = s3.iter().map(|b| Cache {
            url: b.location().base_url(),
            down_until: Mutex::new(None),
            s3: Some(b.clone()),
        });
        let caches = own
            .chain(cfg.urls.iter().map(|url| Cache {
                url: url.clone(),
                down_until: Mutex::new(None),
                s3: None,
            }))
            .collect();
        Some(Arc::new(Upstream {
            caches,
            store,
            client: crate::outbound::Client::new(cfg.connect_timeout),
            cfg,
            nar_limits,
            known: Default::default(),
            asking: Default::default(),
            lookups: Semaphore::new(LOOKUPS_IN_FLIGHT),
            nars: Semaphore::new(FETCHES_IN_FLIGHT),
            flights: Default::default(),
            lives: Default::default(),
            expected: Default::default(),
            mirror,
        }))
    }

    /// The mirror to the relay's bucket, if any.
    pub fn mirror(&self) -> Option<&crate::s3::Mirror> {
        self.mirror.as_ref()
    }

    /// GETs `rel` from upstream `i` (signed if it is the bucket).
    async fn get(&self, i: usize, rel: &str) -> Result<crate::outbound::Reply, Error> {
        let cache = &self.caches[i];
        match &cache.s3 {
            Some(b) => b.get(rel).await.map_err(Error::S3),
            None => (self.client.get(&cache.url, rel).await).map_err(|source| Error::Network {
                url: format!("{}/{rel}", cache.url),
                source,
            }),
        }
    }

    /// The upstream URLs, in order.
    pub fn urls(&self) -> Vec<String> {
        self.caches.iter().map(|c| c.url.to_string()).collect()
    }

    /// How many upstreams are being skipped as down now.
    pub fn down(&self) -> usize {
        let now = Instant::now();
        (self.caches.iter())
            .filter(|c| lock(&c.down_until).is_some_and(|t| now < t))
            .count()
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests;
