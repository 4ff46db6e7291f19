//! The bucket's size cap (`[cache] store_max_size`): least-recently-used
//! eviction, run by every relay on the bucket (at start, then every
//! [`EVICT_INTERVAL`]).
//!
//! The bucket keeps no access time, so an entry's last use is its narinfo's
//! LastModified: a relay that serves an entry refreshes it (`refresh`). A
//! pass lists the bucket ([`Bucket::list_objects`]), reads each narinfo's
//! NAR key (remembered by key and ETag), sums the NAR objects' sizes and:
//!
//! * deletes NARs no narinfo refers to that are older than the guard age
//!   (orphans of a crash or of an earlier eviction);
//! * deletes narinfos whose NAR is gone (checked again just before; no
//!   age guard: an upload writes the NAR first);
//! * while the sum is above the cap, deletes the least recently used
//!   entries older than the guard age (whose narinfo was read): the narinfo **first**, then its
//!   provenance, then its NAR if no other narinfo refers to it and it was
//!   not refreshed since the listing.
//!
//! Two relays' passes at once delete at most the same objects twice
//! (harmless). A relay whose upload finds the NAR already in the bucket
//! refreshes it before writing its narinfo, and checks it is still there
//! after (`mirror::upload_entry`), so a pass never leaves that narinfo
//! without its NAR for longer than until the uploader's check or the next
//! pass (which deletes a narinfo whose NAR is gone).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;

use super::list::Object;
use super::{Bucket, Error};

/// How often a relay runs a pass (and once at start).
pub const EVICT_INTERVAL: Duration = Duration::from_secs(600);
/// Narinfo GETs in flight during a pass.
pub const NARINFO_READS_IN_FLIGHT: usize = 8;
/// The largest narinfo a pass reads.
pub const MAX_NARINFO_BYTES: u64 = 1 << 20;
/// Narinfos whose NAR key is remembered between passes; above, all are
/// forgotten (the next pass reads them again).
pub const MAX_REMEMBERED: usize = 1 << 20;

/// What a pass may delete.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The cap on the NAR objects' total size.
    pub max_size: u64,
    /// Nothing modified more recently than this is deleted (an upload in
    /// progress, an entry just written or refreshed).
    pub guard: Duration,
}

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Entries (narinfos) evicted as least recently used.
    pub evicted: usize,
    /// NARs no narinfo referred to, deleted.
    pub orphans: usize,
    /// Narinfos whose NAR was gone, deleted.
    pub dangling: usize,
    /// NAR bytes deleted.
    pub freed: u64,
    /// The NAR objects' total size after the pass.
    pub bucket_bytes: u64,
}

/// An entry in a listing: its narinfo, and its NAR's key if it was read.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub narinfo: Object,
    pub nar: Option<String>,
}

/// What to delete, decided from one listing.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    pub orphans: Vec<Object>,
    /// Narinfo keys whose NAR the listing lacks, with that NAR's key.
    pub dangling: Vec<(String, String)>,
    /// LRU victims: the narinfo key, and its NAR if it was the last user.
    pub evict: Vec<(String, Option<Object>)>,
    /// The NARs' total size once the plan is done.
    pub total: u64,
}

/// The scope prefix ("" or `private/<dir>/`) and hash of a narinfo key.
pub(super) fn narinfo_key(key: &str) -> Option<(&str, &str)> {
    let rest_at = match key.strip_prefix("private/") {
        Some(r) => "private/".len() + r.find('/')? + 1,
        None => 0,
    };
    let hash = key[rest_at..].strip_suffix(".narinfo")?;
    (!hash.is_empty() && !hash.contains('/')).then(|| (&key[..rest_at], hash))
}

/// Whether `key` is a NAR (`[private/<dir>/]nar/…`).
fn is_nar(key: &str) -> bool {
    let rest = match key.strip_prefix("private/") {
        Some(r) => r.split_once('/').map_or("", |(_, r)| r),
        None => key,
    };
    rest.starts_with("nar/")
}

/// The provenance key of a narinfo key.
pub(super) fn prov_key(narinfo: &str) -> Option<String> {
    let (scope, hash) = narinfo_key(narinfo)?;
    Some(format!("{scope}meta/{hash}.prov"))
}

fn older(o: &Object, guard: Duration, now: SystemTime) -> bool {
    (o.modified).is_some_and(|t| now.duration_since(t).is_ok_and(|d| d >= guard))
}

/// Decides a pass from a listing. `resolved`: every narinfo's NAR was read
/// (else no NAR counts as an orphan: an unread narinfo may refer to it).
pub(super) fn plan(
    entries: &[Entry],
    nars: &[Object],
    resolved: bool,
    policy: Policy,
    now: SystemTime,
) -> Plan {
    let mut out = Plan {
        total: nars.iter().map(|o| o.size).sum(),
        ..Plan::default()
    };
    let by_key: HashMap<&str, &Object> = nars.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut users: HashMap<&str, usize> = HashMap::new();
    for e in entries {
        if let Some(n) = &e.nar {
            *users.entry(n.as_str()).or_default() += 1;
            // No age guard: an upload writes its NAR first, and the pass
            // checks the NAR is still absent just before the delete.
            if !by_key.contains_key(n.as_str()) {
                out.dangling.push((e.narinfo.key.clone(), n.clone()));
            }
        }
    }
    for o in nars {
        if resolved && !users.contains_key(o.key.as_str()) && older(o, policy.guard, now) {
            out.total -= o.size;
            out.orphans.push(o.clone());
        }
    }
    let mut lru: Vec<&Entry> = entries.iter().collect();
    lru.sort_by_key(|e| e.narinfo.modified.unwrap_or(now));
    for e in lru {
        if out.total <= policy.max_size || !older(&e.narinfo, policy.guard, now) {
            break;
        }
        if e.nar.is_none() {
            // Unread (an error, or not the relay's): deleting it frees
            // nothing the pass can count.
            continue;
        }
        let mut nar = None;
        if let Some(n) = &e.nar
            && let Some(left) = users.get_mut(n.as_str())
        {
            *left -= 1;
            if *left == 0
                && let Some(o) = by_key.get(n.as_str())
            {
                out.total -= o.size;
                nar = Some((*o).clone());
            }
        }
        out.evict.push((e.narinfo.key.clone(), nar));
    }
    out
}

/// Runs passes over one bucket, remembering narinfos' NAR keys.
#[derive(Debug)]
pub struct Evictor {
    bucket: Arc<Bucket>,
    policy: Policy,
    /// (narinfo key, ETag) → NAR key.
    known: Mutex<HashMap<(String, String), String>>,
}

/// The state of a listing: its narinfos resolved, its NARs.
struct Listing {
    entries: Vec<Entry>,
    nars: Vec<Object>,
    resolved: bool,
}

impl Evictor {
    pub fn new(bucket: Arc<Bucket>, policy: Policy) -> Evictor {
        Evictor {
            bucket,
            policy,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Starts the periodic passes (the first now). Needs a Tokio runtime.
    pub fn start(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVICT_INTERVAL);
            loop {
                tick.tick().await;
                match self.pass().await {
                    Ok(p) => tracing::debug!(?p, "S3 eviction pass"),
                    Err(e) => tracing::warn!("S3 eviction pass: {}", crate::error_chain(&e)),
                }
            }
        })
    }

    /// One pass: lists the bucket, deletes what [`plan`] says.
    pub async fn pass(&self) -> Result<Pass, Error> {
        let listing = self.listing().await?;
        let now = SystemTime::now();
        let p = plan(
            &listing.entries,
            &listing.nars,
            listing.resolved,
            self.policy,
            now,
        );
        let mut done = Pass::default();
        for o in &p.orphans {
            if self.delete_nar_if_old(o, now).await? {
                done.orphans += 1;
                done.freed += o.size;
            }
        }
        for (narinfo, nar) in &p.dangling {
            if self.bucket.stat(nar).await?.is_none() {
                self.delete_entry(narinfo).await?;
                done.dangling += 1;
            }
        }
        for (narinfo, nar) in &p.evict {
            self.delete_entry(narinfo).await?;
            done.evicted += 1;
            if let Some(o) = nar
                && self.delete_nar_if_old(o, now).await?
            {
                done.freed += o.size;
            }
        }
        let before: u64 = listing.nars.iter().map(|o| o.size).sum();
        done.bucket_bytes = before.saturating_sub(done.freed);
        crate::metrics::s3_evicted(done.evicted, done.orphans, done.dangling, done.freed);
        crate::metrics::s3_bucket_bytes(done.bucket_bytes);
        if done.evicted + done.orphans + done.dangling > 0 {
            tracing::info!(
                evicted = done.evicted,
                orphans = done.orphans,
                dangling = done.dangling,
                freed = done.freed,
                bucket_bytes = done.bucket_bytes,
                "S3 eviction pass"
            );
        }
        Ok(done)
    }

    /// The narinfo first, then its provenance.
    async fn delete_entry(&self, narinfo: &str) -> Result<(), Error> {
        self.bucket.delete(narinfo).await?;
        if let Some(prov) = prov_key(narinfo) {
            self.bucket.delete(&prov).await?;
        }
        Ok(())
    }

    /// Deletes the NAR `o` unless it changed since the listing or is now
    /// younger than the guard (an uploader refreshed it to reuse it).
    async fn delete_nar_if_old(&self, o: &Object, now: SystemTime) -> Result<bool, Error> {
        match self.bucket.stat(&o.key).await? {
            Some(cur) if cur.modified == o.modified && older(&cur, self.policy.guard, now) => {
                self.bucket.delete(&o.key).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn listing(&self) -> Result<Listing, Error> {
        let objects = self.bucket.list_objects("").await?;
        let mut narinfos = Vec::new();
        let mut nars = Vec::new();
        for o in objects {
            if narinfo_key(&o.key).is_some() {
                narinfos.push(o);
            } else if is_nar(&o.key) {
                nars.push(o);
            }
        }
        let reads = futures_util::stream::iter(narinfos)
            .map(|o| async move {
                let nar = self.nar_of(&o).await;
                (o, nar)
            })
            .buffer_unordered(NARINFO_READS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        let mut resolved = true;
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        for (narinfo, nar) in reads {
            match nar {
                Ok(Some(nar)) => {
                    seen.insert((narinfo.key.clone(), narinfo.etag.clone()));
                    entries.push(Entry {
                        narinfo,
                        nar: Some(nar),
                    });
                }
                Ok(None) => {} // deleted since the listing
                Err(e) => {
                    tracing::warn!("S3 eviction: {}", crate::error_chain(&e));
                    resolved = false;
                    entries.push(Entry { narinfo, nar: None });
                }
            }
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|k, _| seen.contains(k));
        Ok(Listing {
            entries,
            nars,
            resolved,
        })
    }

    /// The NAR key of the narinfo `o` (remembered, else read): None if it
    /// is gone.
    async fn nar_of(&self, o: &Object) -> Result<Option<String>, Error> {
        let id = (o.key.clone(), o.etag.clone());
        if let Some(n) = self.lock_known().get(&id) {
            return Ok(Some(n.clone()));
        }
        let Some(body) = self.bucket.get_bytes(&o.key, MAX_NARINFO_BYTES).await? else {
            return Ok(None);
        };
        let bad = || Error::Reply {
            op: "GetObject",
            key: o.key.clone(),
            what: "a narinfo the relay can parse",
        };
        let text = String::from_utf8(body).map_err(|_| bad())?;
        let info = crate::store::NarInfo::parse(&text).map_err(|_| bad())?;
        let (scope, _) = narinfo_key(&o.key).ok_or_else(bad)?;
        let nar = format!("{scope}{}", info.url);
        let mut known = self.lock_known();
        if known.len() >= MAX_REMEMBERED {
            known.clear();
        }
        known.insert(id, nar.clone());
        Ok(Some(nar))
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
#[path = "evict_tests.rs"]
mod tests;
