//! Cross-relay leases: in-flight dedup between relays sharing a bucket.
//!
//! Before building a public derivation, a relay writes
//! `leases/<drv hash part>` with `If-None-Match: *` (only one writer wins):
//! its id and an expiry [`LEASE_TTL`] ahead, renewed every
//! [`RENEW_EVERY`] while it builds; after a successful build it is kept
//! [`BUILT_GRACE`] longer (the outputs are on their way to the bucket),
//! after a failed one deleted. A relay that
//! finds a live lease waits for the holder's outputs to appear in the
//! bucket instead of building; when the lease ends without them (the
//! build failed) or expires (its relay died: nobody renews it), the waiter
//! takes the lease itself. A lease is an optimisation: two relays that
//! race on an expired lease may both build, which costs a build, not
//! correctness (the outputs are the same content).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Bucket, Error};
use crate::wire::store_path::StorePath;

/// A lease's lifetime without renewal: how long a dead relay's lease holds
/// others back.
pub const LEASE_TTL: Duration = Duration::from_secs(90);
/// How often a holder renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(30);
/// How long a lease outlives a successful build: the outputs reach the
/// bucket after the build (stored as its client copies them out, then
/// uploaded), and a waiter keeps waiting for them meanwhile.
pub const BUILT_GRACE: Duration = Duration::from_secs(300);
/// How often a waiter looks for the outputs and the lease.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// The longest a relay waits for another relay's build (which may sit in
/// that relay's queue first); then it builds itself.
pub const MAX_WAIT: Duration = Duration::from_secs(2 * 3600);
/// The largest lease object read.
const MAX_LEASE_BYTES: u64 = 4096;

/// A relay's leases on one bucket.
#[derive(Debug)]
pub struct Leases {
    bucket: Arc<Bucket>,
    /// This relay, as written in its leases.
    id: String,
    ttl: Duration,
}

/// What [`Leases::acquire`] found.
#[derive(Debug)]
pub enum Acquired {
    /// This relay holds the lease until the guard is dropped.
    Mine(Held),
    /// Another relay holds it, live.
    Theirs { relay: String },
}

/// A lease held: renewed in the background, deleted on drop unless
/// [`Held::built`] said otherwise.
#[derive(Debug)]
pub struct Held {
    renew: tokio::task::JoinHandle<()>,
    bucket: Arc<Bucket>,
    key: String,
    id: String,
}

impl Held {
    /// The build succeeded: the lease stays [`BUILT_GRACE`] more, so the
    /// relays waiting keep waiting for the outputs, then expires.
    pub async fn built(mut self) {
        self.renew.abort();
        let until = SystemTime::now() + BUILT_GRACE;
        let key = std::mem::take(&mut self.key);
        if let Err(e) = self.bucket.put(&key, body(&self.id, until).into()).await {
            tracing::warn!("S3 lease after the build: {}", crate::error_chain(&e));
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renew.abort();
        if self.key.is_empty() {
            return;
        }
        let (bucket, key) = (self.bucket.clone(), std::mem::take(&mut self.key));
        tokio::spawn(async move {
            if let Err(e) = bucket.delete(&key).await {
                tracing::warn!("S3 lease release: {}", crate::error_chain(&e));
            }
        });
    }
}

/// A lease object's body.
fn body(id: &str, until: SystemTime) -> String {
    let secs = until
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("relay {id}\nexpires {secs}\n")
}

/// The holder and expiry in a lease body; None if it does not parse.
fn parse(text: &str) -> Option<(String, SystemTime)> {
    let mut relay = None;
    let mut expires = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("relay", v)) => relay = Some(v.to_owned()),
            Some(("expires", v)) => expires = v.parse().ok(),
            _ => {}
        }
    }
    Some((relay?, UNIX_EPOCH + Duration::from_secs(expires?)))
}

impl Leases {
    /// Leases of the relay `id` (unique among the relays on the bucket).
    pub fn new(bucket: Arc<Bucket>, id: String, ttl: Duration) -> Leases {
        Leases { bucket, id, ttl }
    }

    pub fn key(drv: &StorePath) -> String {
        format!("leases/{}", drv.hash_part())
    }

    /// Takes the lease of `drv` unless another relay holds it, live; an
    /// expired or unreadable lease is deleted and taken over.
    pub async fn acquire(&self, drv: &StorePath) -> Result<Acquired, Error> {
        let key = Leases::key(drv);
        for _ in 0..3 {
            let until = SystemTime::now() + self.ttl;
            let mine = body(&self.id, until);
            if self.bucket.put_if_absent(&key, mine.into()).await? {
                return Ok(Acquired::Mine(self.held(key)));
            }
            match self.holder(&key).await? {
                Some((relay, until)) if until > SystemTime::now() => {
                    return Ok(Acquired::Theirs { relay });
                }
                // Expired (its relay died), unreadable, or gone since.
                _ => self.bucket.delete(&key).await?,
            }
        }
        // Other relays keep taking it over between our delete and PUT.
        let relay = "another relay (contended)".to_owned();
        Ok(Acquired::Theirs { relay })
    }

    /// Whether a relay holds a live lease on `drv` (this one too: another
    /// flight of the same derivation here, with other outputs wanted,
    /// builds it; a waiter keeps waiting rather than polling to take it).
    pub async fn held_live(&self, drv: &StorePath) -> Result<bool, Error> {
        let live = self.holder(&Leases::key(drv)).await?;
        Ok(live.is_some_and(|(_, until)| until > SystemTime::now()))
    }

    async fn holder(&self, key: &str) -> Result<Option<(String, SystemTime)>, Error> {
        let text = self.bucket.get_bytes(key, MAX_LEASE_BYTES).await?;
        Ok(text.and_then(|t| parse(&String::from_utf8_lossy(&t))))
    }

    fn held(&self, key: String) -> Held {
        let (bucket, id, ttl) = (self.bucket.clone(), self.id.clone(), self.ttl);
        let k = key.clone();
        let renew = tokio::spawn(async move {
            let every = RENEW_EVERY.min(ttl / 3);
            loop {
                tokio::time::sleep(every).await;
                let until = SystemTime::now() + ttl;
                if let Err(e) = bucket.put(&k, body(&id, until).into()).await {
                    tracing::warn!("S3 lease renewal: {}", crate::error_chain(&e));
                }
            }
        });
        let (bucket, id) = (self.bucket.clone(), self.id.clone());
        Held {
            renew,
            bucket,
            key,
            id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{body, parse};
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_lease_body_reads_back() {
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            parse(&body("relay-a-1:42", t)),
            Some(("relay-a-1:42".into(), t))
        );
        assert_eq!(parse("relay x\n"), None, "no expiry");
        assert_eq!(parse("expires 12\n"), None, "no holder");
    }
}
