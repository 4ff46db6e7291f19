//! The relay store: NARs + metadata on disk in Nix's binary-cache layout.
//!
//! ```text
//! <root>/nix-cache-info                  the public scope is a binary cache as is
//! <root>/<hashpart>.narinfo              its existence = the path is valid (public)
//! <root>/nar/<nix32 filehash>.nar[.zst|.xz]
//! <root>/meta/<hashpart>.prov            provenance: built / signed / uploaded (never served)
//! <root>/private/<client>/…              the same layout, per untrusted client
//! <root>/log/<drv base name>.zst         build logs (`logs`), served as /log/<base>
//! <root>/tmp/                            writes in progress (emptied on open)
//! ```
//! Trust (README, "The cache, and who sees what"): entries that were built
//! by a backend from public inputs, carry a signature by a trusted key, or
//! were uploaded by a trusted client are **public** and signed by the
//! relay's key. Unsigned uploads of an untrusted client, and outputs built
//! from them, live in that client's **private** scope: only that client
//! sees them.
//!
//! Invariant: an entry becomes visible only when complete. The NAR is
//! written to `tmp/`, its hash and size verified, fsynced and renamed into
//! `nar/`; then the provenance and, last, the narinfo are written the same
//! way. A crash leaves at most an orphan file, never a narinfo without its
//! NAR. Memory use is bounded: NARs are streamed in fixed-size chunks.
//!
//! Parts: [`NarWriter`] tokenizes a NAR as it is read (and can tee it to
//! a client, each chunk to the client first) and queues it to its store
//! side, `spool` (its own thread behind a bounded queue: the NAR hash,
//! computed once, compression, the file, fsync); [`signing`] reads and
//! writes Nix's `name:base64` keys and signs public entries; `evict` keeps
//! the store under `max_size` (LRU, with pins for running builds);
//! [`metadata`] checks every field before it goes into a narinfo.

mod ca;
mod evict;
mod hook;
mod index;
pub mod logs;
pub mod metadata;
pub mod narinfo;
pub mod signing;
mod spool;
mod writer;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufRead, BufReader};

use crate::wire::nar::NarLimits;
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;
pub use ca::flat_nar;
pub use evict::Pin;
pub use hook::OnCommit;
pub use narinfo::NarInfo;
use signing::{PublicKey, SecretKey};
pub use writer::{Compression, NarWriter, Verify};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step} {}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("NAR of {path} does not match: expected {expected}, got {got}")]
    Mismatch {
        path: StorePath,
        expected: String,
        got: String,
    },
    #[error("streaming the NAR of {path}")]
    Nar {
        path: StorePath,
        #[source]
        source: crate::wire::Error,
    },
    #[error("reading metadata of {path}")]
    BadNarInfo {
        path: PathBuf,
        #[source]
        source: narinfo::ParseError,
    },
    #[error("{0} is not in the relay store")]
    Missing(StorePath),
    #[error("unsupported compression {0:?} in a narinfo")]
    Compression(String),
    #[error("metadata of {path} refused")]
    BadMetadata {
        path: StorePath,
        #[source]
        source: metadata::BadField,
    },
}

pub(crate) fn io_err<'a>(
    step: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

/// Who can see an entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Public,
    /// Private to the client of this name.
    Private(String),
}

/// Where an entry came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    Built { backend: String },
    Signed { key: String },
    Uploaded { client: String, trusted: bool },
}

/// The scope and provenance of an upload by `client` that is public or
/// private to it as `public` says.
fn uploaded(client: &str, trusted: bool, public: bool) -> (Scope, Provenance) {
    let scope = if public {
        Scope::Public
    } else {
        Scope::Private(client.to_owned())
    };
    let prov = Provenance::Uploaded {
        client: client.to_owned(),
        trusted,
    };
    (scope, prov)
}

impl Provenance {
    fn render(&self) -> String {
        match self {
            Provenance::Built { backend } => format!("built backend={backend}\n"),
            Provenance::Signed { key } => format!("signed key={key}\n"),
            Provenance::Uploaded { client, trusted } => {
                format!("uploaded client={client} trusted={trusted}\n")
            }
        }
    }
}

/// How the store treats what it is given.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub compression: Compression,
    /// Signs every public entry. None: entries are published unsigned.
    pub signer: Option<Arc<SecretKey>>,
    /// Uploads signed by one of these keys are public.
    pub trusted_keys: Vec<PublicKey>,
    /// Evict least recently used entries above this many NAR bytes.
    pub max_size: Option<u64>,
    /// Stored build logs' total compressed bytes; None: the default
    /// ([`logs::DEFAULT_MAX_LOG_BYTES`]); 0 keeps none.
    pub max_log_bytes: Option<u64>,
}

/// Handle to the on-disk store. Cheap to clone; all state is on disk.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    settings: Arc<Settings>,
    usage: Arc<evict::Usage>,
    hook: hook::Hook,
    /// Holds the store side of every write back (unit tests only).
    gate: spool::Gate,
}

/// The narinfo file `file`, parsed; None if there is none.
async fn read_narinfo(file: &Path) -> Result<Option<NarInfo>, Error> {
    let text = match tokio::fs::read_to_string(file).await {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("reading", file)(e)),
    };
    let info = NarInfo::parse(&text).map_err(|source| Error::BadNarInfo {
        path: file.to_owned(),
        source,
    })?;
    Ok(Some(info))
}

/// A NAR being read back, decompressed.
pub type NarReader = Box<dyn AsyncBufRead + Send + Sync + Unpin>;

impl Store {
    /// Opens (creating if needed) the store under `root`, discarding
    /// writes a previous run left unfinished.
    pub fn open(root: &Path, settings: Settings) -> Result<Store, Error> {
        for d in ["", "nar", "meta", "tmp", "private"] {
            let d = root.join(d);
            std::fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        let tmp = root.join("tmp");
        for e in std::fs::read_dir(&tmp).map_err(io_err("listing", &tmp))? {
            let p = e.map_err(io_err("listing", &tmp))?.path();
            std::fs::remove_file(&p).map_err(io_err("removing stale upload", &p))?;
        }
        let info = root.join("nix-cache-info");
        if !info.exists() {
            std::fs::write(
                &info,
                "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
            )
            .map_err(io_err("writing", &info))?;
        }
        let store = Store {
            root: root.to_owned(),
            settings: Arc::new(settings),
            usage: Default::default(),
            hook: Default::default(),
            gate: spool::Gate::default(),
        };
        store.measure().map_err(io_err("measuring", root))?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn scope_dir(&self, scope: &Scope) -> PathBuf {
        match scope {
            Scope::Public => self.root.clone(),
            Scope::Private(client) => self.root.join("private").join(dir_name(client)),
        }
    }

    async fn narinfo_in(&self, scope: &Scope, path: &StorePath) -> Result<Option<NarInfo>, Error> {
        let file = self
            .scope_dir(scope)
            .join(format!("{}.narinfo", path.hash_part()));
        let info = read_narinfo(&file).await?;
        Ok(info.filter(|i| i.store_path == *path))
    }

    /// The public entry whose hash part is `hash`, if there is one.
    pub async fn public_narinfo(&self, hash: &str) -> Result<Option<NarInfo>, Error> {
        let file = self.root.join(format!("{hash}.narinfo"));
        let info = read_narinfo(&file).await?;
        Ok(info.filter(|i| i.store_path.hash_part() == hash))
    }

    /// The entry for `path` visible to `client` (public first, then the
    /// client's private scope) and where it lives.
    pub async fn find(
        &self,
        path: &StorePath,
        client: Option<&str>,
    ) -> Result<Option<(Scope, NarInfo)>, Error> {
        if let Some(n) = self.narinfo_in(&Scope::Public, path).await? {
            return Ok(Some((Scope::Public, n)));
        }
        if let Some(c) = client {
            let scope = Scope::Private(c.to_owned());
            if let Some(n) = self.narinfo_in(&scope, path).await? {
                return Ok(Some((scope, n)));
            }
        }
        Ok(None)
    }

    pub async fn narinfo(
        &self,
        path: &StorePath,
        client: Option<&str>,
    ) -> Result<Option<NarInfo>, Error> {
        Ok(self.find(path, client).await?.map(|(_, n)| n))
    }

    pub async fn path_info(
        &self,
        path: &StorePath,
        client: Option<&str>,
    ) -> Result<Option<ValidPathInfo>, Error> {
        Ok(self.narinfo(path, client).await?.map(|n| to_path_info(&n)))
    }

    pub async fn contains(&self, path: &StorePath, client: Option<&str>) -> Result<bool, Error> {
        Ok(self.find(path, client).await?.is_some())
    }

    /// Opens the NAR of `path` for reading, decompressed.
    pub async fn open_nar(
        &self,
        path: &StorePath,
        client: Option<&str>,
    ) -> Result<(NarInfo, NarReader), Error> {
        let (scope, info) = self
            .find(path, client)
            .await?
            .ok_or_else(|| Error::Missing(path.clone()))?;
        let reader = self.open_nar_of(&scope, &info).await?;
        Ok((info, reader))
    }

    /// Opens the NAR of an entry already looked up (a [`Closure`]'s), for
    /// reading, decompressed.
    pub async fn open_nar_of(&self, scope: &Scope, info: &NarInfo) -> Result<NarReader, Error> {
        let dir = self.scope_dir(scope);
        self.touch(&dir, &info.store_path);
        let file = dir.join(&info.url);
        let f = tokio::fs::File::open(&file)
            .await
            .map_err(io_err("opening NAR", &file))?;
        let raw = BufReader::with_capacity(256 << 10, f);
        writer::decompressor(&info.compression, raw)
    }

    /// Starts storing a NAR; the entry appears when [`NarWriter::commit`]
    /// has verified it.
    pub async fn begin(&self, limits: NarLimits) -> Result<NarWriter, Error> {
        NarWriter::create(self.clone(), limits).await
    }

    /// Adds signatures to an entry `client` can see (as Nix's daemon does
    /// for trusted clients: the signatures are recorded, not verified, but
    /// each must be a well-formed `name:base64` signature).
    /// Returns false if the path is not in the store.
    pub async fn add_signatures(
        &self,
        path: &StorePath,
        sigs: &[String],
        client: Option<&str>,
    ) -> Result<bool, Error> {
        for s in sigs {
            metadata::check_sig(s).map_err(|source| Error::BadMetadata {
                path: path.clone(),
                source,
            })?;
        }
        let Some((scope, mut info)) = self.find(path, client).await? else {
            return Ok(false);
        };
        for s in sigs {
            if !info.sigs.contains(s) {
                info.sigs.push(s.clone());
            }
        }
        let file = self
            .scope_dir(&scope)
            .join(format!("{}.narinfo", path.hash_part()));
        self.publish(&file, info.render().as_bytes()).await?;
        Ok(true)
    }

    /// Publishes an upload whose NAR `writer` has received, where the trust
    /// rules put it ([`Store::classify_upload`]); returns that scope.
    ///
    /// Its metadata is checked first: a malformed signature or content
    /// address is refused ([`Error::BadMetadata`]), a well-formed signature
    /// that no trusted key (nor the relay's own) verifies is dropped. A path
    /// the store already has publicly is left as it is: the upload is a
    /// no-op and the public narinfo keeps its own metadata.
    pub async fn commit_upload(
        &self,
        writer: NarWriter,
        info: ValidPathInfo,
        verify: Verify,
        client: &str,
        trusted: bool,
    ) -> Result<Scope, Error> {
        metadata::check_info(&info).map_err(|source| Error::BadMetadata {
            path: info.path.clone(),
            source,
        })?;
        if self.narinfo_in(&Scope::Public, &info.path).await?.is_some() {
            tracing::debug!(path = %info.path, client, "already public: upload ignored");
            return Ok(Scope::Public);
        }
        let (scope, prov) = self.classify_upload(&info, client, trusted);
        writer.commit(info, verify, &scope, &prov).await?;
        Ok(scope)
    }

    /// Whether `sig` is a signature of `info` by a trusted key or the
    /// relay's own: the only signatures the store keeps from a peer.
    pub fn sig_verifies(&self, info: &ValidPathInfo, sig: &str) -> bool {
        let fp = fingerprint(info);
        let own = self.settings.signer.as_ref().map(|k| k.public());
        (self.settings.trusted_keys.iter())
            .chain(own.as_ref())
            .any(|k| k.verifies(&fp, sig))
    }

    /// Where an upload by `client` belongs, by the trust rules above.
    pub fn classify_upload(
        &self,
        info: &ValidPathInfo,
        client: &str,
        trusted: bool,
    ) -> (Scope, Provenance) {
        let fp = fingerprint(info);
        for key in &self.settings.trusted_keys {
            if info.sigs.iter().any(|s| key.verifies(&fp, s)) {
                return (
                    Scope::Public,
                    Provenance::Signed {
                        key: key.name().to_owned(),
                    },
                );
            }
        }
        uploaded(client, trusted, trusted)
    }

    /// Closure of `roots` over references, references before referrers,
    /// as `client` sees the store; also whether any of it is private.
    /// Fails if any path in it is missing.
    pub async fn closure_sorted(
        &self,
        roots: &[StorePath],
        client: Option<&str>,
    ) -> Result<(Vec<StorePath>, bool), Error> {
        let c = self.closure(roots, client).await?;
        Ok((c.paths(), c.private))
    }

    /// The closure of `roots` as `client` sees it, references first, each
    /// path's narinfo read once (a build reads its closure through this
    /// and nothing else).
    pub async fn closure(
        &self,
        roots: &[StorePath],
        client: Option<&str>,
    ) -> Result<Closure, Error> {
        let none = |_| -> Elsewhere { Box::pin(std::future::ready(None)) };
        let (closure, _) = self.closure_or(roots, client, none).await?;
        Ok(closure)
    }

    /// [`Store::closure`], where a path the store lacks is taken from
    /// `elsewhere` (public scope; e.g. an upstream's narinfo); also the
    /// paths so taken. A path in neither is `Err(Missing)`.
    pub async fn closure_or(
        &self,
        roots: &[StorePath],
        client: Option<&str>,
        mut elsewhere: impl FnMut(StorePath) -> Elsewhere,
    ) -> Result<(Closure, HashSet<StorePath>), Error> {
        let mut found: HashMap<StorePath, (Scope, NarInfo)> = HashMap::new();
        let mut refs: HashMap<StorePath, BTreeSet<StorePath>> = HashMap::new();
        let mut outside = HashSet::new();
        let mut todo: Vec<StorePath> = roots.to_vec();
        while let Some(p) = todo.pop() {
            if refs.contains_key(&p) {
                continue;
            }
            let (scope, info) = match self.find(&p, client).await? {
                Some(hit) => hit,
                None => {
                    let info = elsewhere(p.clone()).await;
                    let info = info.ok_or_else(|| Error::Missing(p.clone()))?;
                    outside.insert(p.clone());
                    (Scope::Public, info)
                }
            };
            let r: BTreeSet<StorePath> = info.references.iter().cloned().collect();
            todo.extend(r.iter().filter(|r| **r != p).cloned());
            refs.insert(p.clone(), r);
            found.insert(p, (scope, info));
        }
        let entries: Vec<(Scope, NarInfo)> = topo_sort(&refs)
            .into_iter()
            .filter_map(|p| found.remove(&p))
            .collect();
        let private = entries.iter().any(|(s, _)| *s != Scope::Public);
        Ok((Closure { entries, private }, outside))
    }
}

/// [`Store::closure_or`]'s source for a path the store lacks.
pub type Elsewhere = std::pin::Pin<Box<dyn std::future::Future<Output = Option<NarInfo>> + Send>>;

/// A closure in the relay store: each path with the scope it was found in
/// and its narinfo, references first.
#[derive(Debug, Clone, Default)]
pub struct Closure {
    pub entries: Vec<(Scope, NarInfo)>,
    /// Some of it is in the client's private scope.
    pub private: bool,
}

impl Closure {
    pub fn paths(&self) -> Vec<StorePath> {
        self.entries
            .iter()
            .map(|(_, n)| n.store_path.clone())
            .collect()
    }
}

/// A client name as a directory name: safe characters kept, others hex.
fn dir_name(client: &str) -> String {
    client
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

/// The narinfo fingerprint of a path's metadata (what signatures cover).
pub fn fingerprint(info: &ValidPathInfo) -> String {
    let refs: Vec<&str> = info.references.iter().map(StorePath::as_str).collect();
    format!(
        "1;{};{};{};{}",
        info.path,
        info.nar_hash.to_nix32_prefixed(),
        info.nar_size,
        refs.join(",")
    )
}

/// Depth-first post-order: every path after all of its references.
pub fn topo_sort(refs: &HashMap<StorePath, BTreeSet<StorePath>>) -> Vec<StorePath> {
    let mut keys: Vec<&StorePath> = refs.keys().collect();
    keys.sort();
    let mut done = HashSet::new();
    let mut entered = HashSet::new();
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let mut stack = vec![(k, false)];
        while let Some((p, expanded)) = stack.pop() {
            if expanded {
                if done.insert(p.clone()) {
                    out.push(p.clone());
                }
                continue;
            }
            // `entered` also breaks reference cycles a hostile upload could claim.
            if done.contains(p) || !entered.insert(p.clone()) {
                continue;
            }
            stack.push((p, true));
            for r in refs.get(p).into_iter().flatten() {
                if r != p && !done.contains(r) && refs.contains_key(r) {
                    stack.push((r, false));
                }
            }
        }
    }
    out
}

pub fn to_path_info(n: &NarInfo) -> ValidPathInfo {
    ValidPathInfo {
        path: n.store_path.clone(),
        deriver: n.deriver.clone(),
        nar_hash: n.nar_hash,
        references: n.references.iter().cloned().collect(),
        registration_time: 0,
        nar_size: n.nar_size,
        ultimate: false,
        sigs: n.sigs.clone(),
        ca: n.ca.clone(),
    }
}

#[cfg(test)]
mod tee_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trust_tests;
