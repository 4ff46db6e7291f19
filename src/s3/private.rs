//! Private scopes read back: an untrusted client's entries are uploaded
//! under `private/<client dir>/…`; another relay on the bucket pulls them,
//! for that client only, into the same local private scope.
//!
//! A private entry carries no signature by a trusted key (it holds what an
//! untrusted client uploaded, or built from that), and the bucket is
//! writable by more than the relays' keys guard. So the uploading relay
//! signs, with its key, the entry's fingerprint **bound to its scope**
//! ([`scope_message`]), and puts that signature in the entry's provenance
//! object (`scope-sig <sig>`); a relay pulls an entry only if that
//! signature verifies against its own key or a trusted one. The binding
//! keeps the signature from making the entry public (a narinfo signature
//! covers the bare fingerprint) or moving it to another client's scope.
//! The NAR is then checked against the narinfo's hash and size by the
//! store's writer, as every entry is.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_compression::tokio::bufread::{XzDecoder, ZstdDecoder};
use tokio::io::{AsyncBufRead, BufReader};
use tokio::time::Instant;

use super::{Bucket, Error};
use crate::store::{NarInfo, Provenance, Scope, Store, Verify};
use crate::wire::nar::NarLimits;
use crate::wire::store_path::StorePath;

/// The largest narinfo or provenance object read.
pub const MAX_META_BYTES: u64 = 1 << 20;
/// How long "the bucket has no such private entry" is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Absent answers remembered; above, all are forgotten.
pub const MAX_ABSENT: usize = 65_536;
/// Paths one pull brings in at most (the entry and its references).
pub const MAX_CLOSURE: usize = 100_000;
/// The prefix of the provenance line holding the scope signature.
pub const SCOPE_SIG: &str = "scope-sig ";

/// What a relay signs to vouch for an entry of the private scope `dir`
/// (`private/<client dir>`): not a narinfo fingerprint, so the signature
/// makes nothing public.
pub fn scope_message(dir: &str, fingerprint: &str) -> String {
    format!("nix-relay-private-scope;{dir};{fingerprint}")
}

/// Reads a bucket's private entries into a store; one per relay.
#[derive(Debug)]
pub struct Private {
    bucket: Arc<Bucket>,
    store: Store,
    limits: NarLimits,
    stall: Duration,
    /// Narinfo keys found absent, until when.
    absent: Mutex<HashMap<String, Instant>>,
}

type Pulled<'a> = Pin<Box<dyn Future<Output = Result<bool, Error>> + Send + 'a>>;

/// Where a reference not in the bucket's private scope may come from (the
/// public upstreams): whether the store has it now.
pub type Fallback = dyn Fn(StorePath) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync;

impl Private {
    /// `stall`: a NAR body silent this long fails the pull.
    pub fn new(bucket: Arc<Bucket>, store: Store, limits: NarLimits, stall: Duration) -> Private {
        Private {
            bucket,
            store,
            limits,
            stall,
            absent: Mutex::new(HashMap::new()),
        }
    }

    /// Makes `path` visible to `client` if it is not: pulled with its
    /// references from `client`'s private scope in the bucket (a reference
    /// not there must be visible to `client` already, or be fetched by
    /// `public` into the public scope; `path` itself is not). Ok(true) if `client` sees `path` now.
    pub async fn pull(
        &self,
        client: &str,
        path: &StorePath,
        public: &Fallback,
    ) -> Result<bool, Error> {
        let mut budget = MAX_CLOSURE;
        self.pull_in(client, path, (public, false), &mut budget)
            .await
    }

    fn pull_in<'a>(
        &'a self,
        client: &'a str,
        path: &'a StorePath,
        (public, is_ref): (&'a Fallback, bool),
        budget: &'a mut usize,
    ) -> Pulled<'a> {
        Box::pin(async move {
            if self.sees(client, path).await? {
                return Ok(true);
            }
            let Some(info) = self.trusted_narinfo(client, path).await? else {
                return Ok(is_ref && public(path.clone()).await);
            };
            *budget = budget.saturating_sub(1);
            if *budget == 0 {
                return Ok(false);
            }
            for r in info.references.iter().filter(|r| *r != path) {
                if !self.pull_in(client, r, (public, true), budget).await? {
                    tracing::info!(%path, reference = %r, "private entry in the bucket: a reference is nowhere");
                    return Ok(false);
                }
            }
            self.download(client, &info).await?;
            tracing::info!(%path, client, "pulled from the bucket's private scope");
            Ok(true)
        })
    }

    async fn sees(&self, client: &str, path: &StorePath) -> Result<bool, Error> {
        (self.store.contains(path, Some(client)).await).map_err(store_err("looking up", path))
    }

    /// The narinfo of `path` in `client`'s scope, if there and vouched for
    /// by a scope signature of a trusted key.
    async fn trusted_narinfo(
        &self,
        client: &str,
        path: &StorePath,
    ) -> Result<Option<NarInfo>, Error> {
        let dir = Store::scope_prefix(&Scope::Private(client.to_owned()));
        let key = format!("{dir}/{}.narinfo", path.hash_part());
        if self.known_absent(&key) {
            return Ok(None);
        }
        let Some(body) = self.bucket.get_bytes(&key, MAX_META_BYTES).await? else {
            self.remember_absent(key);
            return Ok(None);
        };
        let refuse = |why: &str| {
            tracing::warn!(key, "private entry in the bucket ignored: {why}");
            Ok(None)
        };
        let Some(info) = std::str::from_utf8(&body)
            .ok()
            .and_then(|t| NarInfo::parse(t).ok())
        else {
            return refuse("its narinfo does not parse");
        };
        if info.store_path != *path || !matches!(info.compression.as_str(), "none" | "xz" | "zstd")
        {
            return refuse("another path, or an unknown compression");
        }
        if info.url.contains("..") || info.url.starts_with('/') || info.url.contains("://") {
            return refuse("its URL is not a plain relative path");
        }
        let prov_key = format!("{dir}/meta/{}.prov", path.hash_part());
        let prov = self.bucket.get_bytes(&prov_key, MAX_META_BYTES).await?;
        let prov = prov
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .unwrap_or_default();
        let fp = crate::store::fingerprint(&crate::store::to_path_info(&info));
        if !self.vouched(&dir, &fp, &prov) {
            return refuse("no scope signature by the relay's or a trusted key");
        }
        Ok(Some(info))
    }

    fn vouched(&self, dir: &str, fingerprint: &str, prov: &str) -> bool {
        let settings = self.store.settings();
        let own = settings.signer.as_ref().map(|k| k.public());
        let message = scope_message(dir, fingerprint);
        let sigs = prov.lines().filter_map(|l| l.strip_prefix(SCOPE_SIG));
        let keys: Vec<_> = settings.trusted_keys.iter().chain(own.as_ref()).collect();
        sigs.into_iter()
            .any(|s| keys.iter().any(|k| k.verifies(&message, s.trim())))
    }

    fn known_absent(&self, key: &str) -> bool {
        let absent = self.absent.lock().unwrap_or_else(|e| e.into_inner());
        absent.get(key).is_some_and(|t| Instant::now() < *t)
    }

    fn remember_absent(&self, key: String) {
        let mut absent = self.absent.lock().unwrap_or_else(|e| e.into_inner());
        if absent.len() >= MAX_ABSENT {
            absent.clear();
        }
        absent.insert(key, Instant::now() + NEGATIVE_TTL);
    }

    /// Streams the NAR into the store's private scope of `client`, verified.
    async fn download(&self, client: &str, info: &NarInfo) -> Result<(), Error> {
        let path = &info.store_path;
        let local = |step| store_err(step, path);
        let limit = self.limits.max_nar_bytes;
        if info.nar_size > limit {
            let (path, size) = (path.clone(), info.nar_size);
            return Err(Error::TooLarge { path, size, limit });
        }
        let dir = Store::scope_prefix(&Scope::Private(client.to_owned()));
        let key = format!("{dir}/{}", info.url);
        let reply = self.bucket.get(&key).await?;
        if reply.status != 200 {
            let (op, status) = ("GetObject", reply.status);
            let message = String::new();
            return Err(Error::Status {
                op,
                key,
                status,
                message,
            });
        }
        let raw = reply.into_reader(self.stall);
        let mut nar: Pin<Box<dyn AsyncBufRead + Send>> = match info.compression.as_str() {
            "xz" => Box::pin(BufReader::new(XzDecoder::new(raw))),
            "zstd" => Box::pin(BufReader::new(ZstdDecoder::new(raw))),
            _ => raw,
        };
        let mut w = self
            .store
            .begin(self.limits)
            .await
            .map_err(local("storing"))?;
        let none = None::<&mut tokio::io::Sink>;
        w.pump(&mut nar, none, path)
            .await
            .map_err(local("storing"))?;
        let prov = Provenance::Uploaded {
            client: client.to_owned(),
            trusted: false,
        };
        let scope = Scope::Private(client.to_owned());
        let pi = crate::store::to_path_info(info);
        (w.commit(pi, Verify::Declared, &scope, &prov).await).map_err(local("storing"))?;
        Ok(())
    }
}

fn store_err(step: &'static str, path: &StorePath) -> impl FnOnce(crate::store::Error) -> Error {
    let path = path.clone();
    move |source| Error::Store { step, path, source }
}
