//! The cache's shared, durable copy on S3-compatible storage
//! (`[cache] store = "s3://bucket?region=…&endpoint=…"`): Garage, MinIO,
//! Ceph RGW, AWS S3.
//!
//! * `client` — the few S3 REST calls the relay makes, signed with SigV4 on
//!   the `aws` layer (path-style addressing: `<endpoint>/<bucket>/<key>`):
//!   PutObject (optionally `If-None-Match: *`), HeadObject, DeleteObject,
//!   GetObject (streamed through `outbound`), the multipart calls and
//!   ListMultipartUploads.
//! * `mirror` — after the local store commits an entry (either scope), a
//!   bounded background queue uploads it to the bucket under the same
//!   relative keys as on disk: the NAR (multipart from the local file,
//!   [`PART_SIZE`] bytes in memory at a time), the provenance object, and
//!   the narinfo **last**. At start, multipart uploads older than
//!   [`STALE_UPLOAD_AGE`] are aborted, and public entries the bucket lacks
//!   (a crash between the local commit and the upload) are uploaded again
//!   (with a cap, only those newer than the bucket's oldest narinfo).
//! * `evict` — the bucket's size cap (`[cache] store_max_size`): periodic
//!   passes delete the least recently used entries (narinfo first), NARs
//!   no narinfo refers to and narinfos whose NAR is gone; `refresh` makes
//!   a used entry's narinfo young again (its LastModified is its last use).
//! * `private` — an untrusted client's entries read back from its prefix,
//!   vouched for by a scope signature in their provenance object.
//! * `lease` — `leases/<drv hash>` (conditional PUT, renewed, expiring):
//!   one relay builds a public derivation, the others wait for its outputs.
//! * Reading: the bucket is the first source of `upstream` (signed GETs),
//!   trusted with the relay's own key, so a local miss pulls the entry into
//!   the local store, verified, single-flight.
//!
//! Invariant: the bucket never holds a narinfo whose NAR is not there in
//! full — a NAR is visible only once its single PUT or its multipart
//! Complete returned, and the narinfo is written after it. A relay killed
//! mid-upload leaves at most an incomplete multipart upload (invisible to
//! readers, aborted by the next start) or an orphan NAR.

pub mod client;
pub mod evict;
pub mod lease;
mod list;
pub mod mirror;
pub mod private;
pub mod refresh;

use std::time::Duration;

pub use client::Bucket;
pub use list::Object;
pub use mirror::Mirror;

/// A multipart upload's part (S3's minimum is 5 MiB but for the last one).
pub const PART_SIZE: usize = 8 << 20;
/// NARs up to this size go up in one PutObject.
pub const SINGLE_PUT_MAX: u64 = PART_SIZE as u64;
/// Incomplete multipart uploads older than this are aborted at start (a
/// live relay's upload in progress is younger: parts go up every few
/// seconds, and a whole NAR within [`UPLOAD_TIMEOUT`]).
pub const STALE_UPLOAD_AGE: Duration = Duration::from_secs(3600);
/// One entry's upload, whole.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(1800);
/// Entries waiting for upload; when full, an entry is left to the next
/// start's repair (and counted).
pub const QUEUE_LEN: usize = 4096;
/// The largest listing or error reply read.
pub const MAX_XML_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("[cache] store {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("S3 {op} {key:?}")]
    Call {
        op: &'static str,
        key: String,
        #[source]
        source: crate::aws::Error,
    },
    #[error("S3 {op} {key:?}: streaming the object")]
    Stream {
        op: &'static str,
        key: String,
        #[source]
        source: crate::outbound::Error,
    },
    #[error("S3 {op} {key:?}: HTTP status {status}: {message}")]
    Status {
        op: &'static str,
        key: String,
        status: u16,
        message: String,
    },
    #[error("S3 {op} {key:?}: the reply lacks {what}")]
    Reply {
        op: &'static str,
        key: String,
        what: &'static str,
    },
    #[error("{step} {}", path.display())]
    Local {
        step: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("uploading {key:?} took over {limit:?}")]
    Timeout { key: String, limit: Duration },
    #[error("{step} {path} pulled from the bucket")]
    Store {
        step: &'static str,
        path: crate::wire::store_path::StorePath,
        #[source]
        source: crate::store::Error,
    },
    #[error("{path} in the bucket: NarSize {size} is over max_nar_size {limit}")]
    TooLarge {
        path: crate::wire::store_path::StorePath,
        size: u64,
        limit: u64,
    },
}

/// The bucket at `loc` (credentials from the AWS chain: environment,
/// shared files, …), the mirror of `store` to it, started, the refresh of
/// entries `store` uses, and the eviction passes if `max_size` is set.
pub fn open(
    loc: Location,
    store: crate::store::Store,
    max_size: Option<u64>,
) -> (std::sync::Arc<Bucket>, Mirror) {
    let creds = credentials();
    let bucket = std::sync::Arc::new(Bucket::new(loc, creds));
    let capped = max_size.is_some();
    let mirror = Mirror::start(bucket.clone(), store.clone(), STALE_UPLOAD_AGE, capped);
    let refresher = refresh::Refresher::start(bucket.clone(), refresh::REFRESH_AFTER);
    store.set_on_use(std::sync::Arc::new(move |dir: &str, hash: &str| {
        refresher.used(dir, hash);
    }));
    if let Some(max_size) = max_size {
        let guard = STALE_UPLOAD_AGE;
        evict::Evictor::new(bucket.clone(), evict::Policy { max_size, guard }).start();
    }
    (bucket, mirror)
}

fn credentials() -> crate::aws::Provider {
    #[cfg(feature = "testing")]
    if let Some(c) = TEST_CREDENTIALS.get() {
        return crate::aws::Provider::fixed(c.clone());
    }
    crate::aws::Provider::chain(crate::aws::creds::Env::process())
}

#[cfg(feature = "testing")]
static TEST_CREDENTIALS: std::sync::OnceLock<crate::aws::Credentials> = std::sync::OnceLock::new();

/// Fixed credentials for every bucket [`open`]ed in this process (the moto
/// tests: a test cannot set environment variables without `unsafe`).
#[cfg(feature = "testing")]
pub fn use_test_credentials(access_key: &str, secret: &str) {
    let _ = TEST_CREDENTIALS.set(crate::aws::Credentials {
        access_key_id: access_key.into(),
        secret_access_key: secret.into(),
        session_token: None,
        expires: None,
    });
}

/// Fixed credentials (tests, benches).
pub fn fixed_credentials(access_key: &str, secret: &str) -> crate::aws::Provider {
    crate::aws::Provider::fixed(crate::aws::Credentials {
        access_key_id: access_key.into(),
        secret_access_key: secret.into(),
        session_token: None,
        expires: None,
    })
}

/// Where the bucket is: `s3://bucket?region=…&endpoint=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    pub region: String,
    /// `http(s)://host[:port]`; AWS's `https://s3.<region>.amazonaws.com`
    /// when not given.
    pub endpoint: crate::aws::Endpoint,
}

impl Location {
    /// Parses `s3://bucket?region=us-east-1&endpoint=http://127.0.0.1:9000`.
    pub fn parse(url: &str) -> Result<Location, Error> {
        let bad = |reason: &str| Error::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or(bad("must start with s3://"))?;
        let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
        let valid = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(b);
        if bucket.len() < 3 || bucket.len() > 63 || !bucket.bytes().all(|b| valid(&b)) {
            return Err(bad(
                "the bucket name must be 3-63 characters of a-z 0-9 . -",
            ));
        }
        let (mut region, mut endpoint) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("region", v)) if !v.is_empty() => region = Some(v.to_owned()),
                Some(("endpoint", v)) => endpoint = Some(v.to_owned()),
                _ => {
                    return Err(bad(&format!(
                        "unknown parameter {pair:?} (region, endpoint)"
                    )));
                }
            }
        }
        let region = region.unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint =
            crate::aws::Endpoint::parse(&endpoint).map_err(|e| bad(&format!("endpoint: {e}")))?;
        Ok(Location {
            bucket: bucket.to_owned(),
            region,
            endpoint,
        })
    }

    /// The base URL objects are read from (`<endpoint>/<bucket>`).
    pub fn base_url(&self) -> crate::outbound::BaseUrl {
        crate::outbound::BaseUrl {
            https: self.endpoint.https,
            host: self.endpoint.host.clone(),
            port: self.endpoint.port,
            path: format!("/{}", self.bucket),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.endpoint.https { "https" } else { "http" };
        let ep = format!("{scheme}://{}", self.endpoint.authority());
        write!(
            f,
            "s3://{}?region={}&endpoint={ep}",
            self.bucket, self.region
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Location;

    #[test]
    fn locations() {
        let l = Location::parse("s3://nix-cache?region=eu-west-1&endpoint=http://127.0.0.1:9000")
            .unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.region.as_str()),
            ("nix-cache", "eu-west-1")
        );
        assert_eq!(l.endpoint.port, 9000);
        assert_eq!(l.base_url().to_string(), "http://127.0.0.1:9000/nix-cache");
        let l = Location::parse("s3://abc").unwrap();
        assert_eq!(l.endpoint.host, "s3.us-east-1.amazonaws.com");
        for bad in [
            "http://abc",
            "s3://AB",
            "s3://a/b",
            "s3://abc?profile=x",
            "s3://abc?endpoint=ftp://x",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }
}
